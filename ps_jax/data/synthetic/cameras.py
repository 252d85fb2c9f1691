"""Cameras: the background style and image formation of each view.

A camera fixes the background style, horizon and person scale, brightness,
colour cast, gamma, sensor noise and blur; both splits share the cameras.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ps_jax.data.synthetic import config

_STYLES = ("street", "mall", "park", "station")


@dataclasses.dataclass(frozen=True)
class Camera:
  """Fixed viewing conditions of one camera."""
  style: str
  horizon: float  # fraction of the image height
  scale: float  # person height at the bottom edge, fraction of image height
  gain: float
  cast: tuple[float, float, float]
  gamma: float
  noise: float  # sensor noise std in grey levels
  blur: float  # Gaussian blur radius in pixels at 256 px
  sky: tuple[float, float, float]
  wall: tuple[float, float, float]
  ground: tuple[float, float, float]
  accent: tuple[float, float, float]


def make_camera(cfg: config.SyntheticConfig, index: int) -> Camera:
  """Camera `index` (the same in both splits)."""
  rng = config.make_rng(cfg.seed, config.CAMERA_STREAM, index)
  style = _STYLES[index % len(_STYLES)]
  tint = lambda base, j: tuple(  # noqa: E731
      float(v) for v in np.clip(np.asarray(base) + rng.uniform(-j, j, 3),
                                0, 255))
  grounds = {"street": (120, 118, 115), "mall": (190, 180, 165),
             "park": (90, 140, 70), "station": (150, 145, 140)}
  walls = {"street": (160, 140, 120), "mall": (215, 205, 190),
           "park": (70, 110, 60), "station": (200, 200, 190)}
  k = cfg.camera_strength
  return Camera(
      style=style,
      horizon=float(rng.uniform(0.3, 0.48)),
      scale=float(rng.uniform(0.5, 0.8)),
      gain=float(1 + k * rng.uniform(-0.3, 0.2)),
      cast=tuple(float(1 + k * v) for v in rng.uniform(-0.18, 0.18, 3)),
      gamma=float(1 + k * rng.uniform(-0.2, 0.25)),
      noise=float(rng.uniform(1.5, 7.0)),
      blur=float(rng.choice([0.0, 0.0, 0.6, 1.0])),
      sky=tint((150, 185, 225), 30),
      wall=tint(walls[style], 35),
      ground=tint(grounds[style], 25),
      accent=tint((128, 128, 128), 110),
  )
