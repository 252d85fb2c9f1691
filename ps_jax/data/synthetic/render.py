"""Rendering: a scene layout to pixels, and the scene generators.

The background (camera style, clutter, ground lines) is drawn first, then the
entities far to near, then the camera's blur, tone curve, vignetting and
sensor noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

from ps_jax.data.synthetic import cameras
from ps_jax.data.synthetic import config
from ps_jax.data.synthetic import layout as layout_lib
from ps_jax.data.synthetic import primitives


def _background(cam: cameras.Camera, width: int, height: int, horizon: float,
                rng: np.random.Generator) -> Image.Image:
  """The camera's background style with random clutter, RGB."""
  yy = np.arange(height, dtype=np.float32)[:, None] / height  # [H, 1]
  top = np.asarray(cam.sky if cam.style in ("street", "park") else cam.wall,
                   np.float32)
  ground = np.asarray(cam.ground, np.float32)
  hz = horizon / height
  upper = top * (0.85 + 0.3 * yy / max(hz, 1e-3))
  lower = ground * (0.8 + 0.35 * (yy - hz) / max(1 - hz, 1e-3))
  column = np.where(yy < hz, upper, lower).astype(np.int16)  # [H, 3]
  # Blotchy low-frequency texture, mostly brightness with a little colour,
  # upsampled by PIL (far cheaper than full-size float noise).
  gh, gw = height // 24 + 2, width // 24 + 2
  coarse = (rng.uniform(-16, 16, (gh, gw, 1)) +
            rng.uniform(-5, 5, (gh, gw, 3)) + 128).astype(np.uint8)
  coarse = np.asarray(Image.fromarray(coarse).resize((width, height),
                                                     Image.BILINEAR))
  img = np.clip(column[:, None, :] + coarse.astype(np.int16) - 128, 0,
                255).astype(np.uint8)
  im = Image.fromarray(img)
  d = ImageDraw.Draw(im, "RGBA")
  acc = tuple(int(v) for v in cam.accent)
  rand_col = lambda: tuple(int(v) for v in rng.integers(30, 230, 3))  # noqa

  if cam.style == "station":
    # A tiled wall: grout lines first, posters and pillars over them.
    tile = max(4.0, 0.07 * height)
    grout = tuple(int(v * 0.8) for v in cam.wall) + (150,)
    for ty in np.arange(rng.uniform(0, tile), horizon, tile):
      d.line((0, ty, width, ty), fill=grout, width=1)
    for tx in np.arange(rng.uniform(0, tile), width, tile * 1.6):
      d.line((tx, 0, tx, horizon), fill=grout, width=1)
  if cam.style in ("street", "station", "mall"):
    # Facades with windows, shop fronts with signs, or posters on the wall.
    x = -rng.uniform(0, 40)
    while x < width:
      bw = rng.uniform(0.15, 0.4) * width
      bh = rng.uniform(0.5, 1.1) * horizon if cam.style == "street" else (
          horizon)
      base = np.asarray(cam.wall) * rng.uniform(0.7, 1.15)
      col = tuple(int(v) for v in np.clip(base, 0, 255))
      win = max(4.0, 0.06 * height)
      if cam.style == "street":
        d.rectangle((x, horizon - bh, x + bw - 2, horizon), fill=col)
        for wy in np.arange(horizon - bh + win * 0.6, horizon - win, win * 1.5):
          for wx in np.arange(x + win * 0.5, x + bw - win, win * 1.4):
            d.rectangle((wx, wy, wx + win * 0.7, wy + win * 0.9),
                        fill=(60, 70, 90) if rng.random() < 0.7 else
                        (230, 220, 160))
      elif cam.style == "mall":
        d.rectangle((x, horizon - bh, x + bw - 2, horizon), fill=col)
        d.rectangle((x + bw * 0.1, horizon - bh * 0.75, x + bw * 0.9,
                     horizon - bh * 0.05), fill=(175, 195, 205))
        d.rectangle((x + bw * 0.1, horizon - bh * 0.95, x + bw * 0.9,
                     horizon - bh * 0.82), fill=rand_col())
      elif rng.random() < 0.6:
        d.rectangle((x + bw * 0.25, horizon - bh * 0.8, x + bw * 0.75,
                     horizon - bh * 0.3), fill=rand_col())
      x += bw
  if cam.style == "park":
    for _ in range(int(rng.integers(3, 8))):
      tx, ts = rng.uniform(0, width), rng.uniform(0.15, 0.4) * horizon + 6
      d.rectangle((tx - ts * 0.08, horizon - ts * 1.2, tx + ts * 0.08,
                   horizon + ts * 0.05), fill=(90, 65, 40))
      g = (int(rng.integers(30, 70)), int(rng.integers(90, 150)),
           int(rng.integers(30, 70)))
      d.ellipse((tx - ts * 0.6, horizon - ts * 2.0, tx + ts * 0.6,
                 horizon - ts * 0.9), fill=g)
  if cam.style == "station":
    for px in np.arange(rng.uniform(0, 0.3) * width, width, 0.35 * width):
      d.rectangle((px, 0, px + 0.05 * width, height), fill=acc + (235,))

  # Ground: perspective lines to a vanishing point, crossing lines, clutter.
  vx = rng.uniform(0.2, 0.8) * width
  line = tuple(int(v * 0.75) for v in cam.ground) + (160,)
  for k in np.linspace(-2.0, 3.0, int(rng.integers(4, 10))):
    d.line((vx, horizon, vx + (k - 0.5) * width * 1.5, height), fill=line,
           width=1)
  t = 0.04
  while t < 1.0:
    gy = horizon + (height - horizon) * t
    d.line((0, gy, width, gy), fill=line, width=1)
    t *= 1.6 if cam.style != "park" else 3.0
  for _ in range(int(rng.integers(2, 7))):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    x1 = x0 + rng.uniform(4, 0.2 * width)
    y1 = y0 + rng.uniform(2, 0.12 * height)
    d.rectangle((x0, y0, x1, y1), fill=rand_col() + (
        int(rng.integers(60, 200)),))
  for _ in range(int(rng.integers(1, 4))):
    d.line((rng.uniform(0, width), rng.uniform(0, horizon),
            rng.uniform(0, width), rng.uniform(0, horizon)),
           fill=(50, 50, 55, 180), width=1)
  return im


def render_layout(cfg: config.SyntheticConfig,
                  layout: layout_lib.SceneLayout) -> np.ndarray:
  """The pixels of a scene layout, uint8[H, W, 3]."""
  rng = config.make_rng(cfg.seed, config.RENDER_STREAM,
                        config.SPLIT_CODE[layout.split], layout.index)
  cam = cameras.make_camera(cfg, layout.camera)
  w, h = layout.width, layout.height
  im = _background(cam, w, h, layout.horizon, rng)
  for e in layout.entities:
    primitives.draw_prims(im, e.prims)
  if cam.blur > 0:
    im = im.filter(ImageFilter.GaussianBlur(cam.blur * max(w, h) / 256))
  # The camera: gain and colour cast and gamma as one lookup table per
  # channel, then vignetting and sensor noise.
  levels = np.arange(256, dtype=np.float64) / 255.0
  lut = [np.clip(np.clip(levels * cam.gain * c, 0, 1) ** cam.gamma * 255 + 0.5,
                 0, 255).astype(np.uint8) for c in cam.cast]
  im = im.point(np.concatenate(lut).tolist())
  yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
  vignette = (1 - 0.12 * (xx ** 2 + yy ** 2)).astype(np.float32)[..., None]
  bank = _noise_bank(cfg)
  oy = int(rng.integers(bank.shape[0] - h + 1))
  ox = int(rng.integers(bank.shape[1] - w + 1))
  x = np.asarray(im, np.float32) * vignette + (
      bank[oy:oy + h, ox:ox + w] * np.float32(cam.noise))
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)


_NOISE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _noise_bank(cfg: config.SyntheticConfig) -> np.ndarray:
  """f32[S, S, 3] unit Gaussian noise, S > the largest image side.

  Each scene crops it at a random offset: drawing fresh Gaussian noise for
  every image was the slowest step of rendering.
  """
  side = cfg.image_size_range[1] + 64
  key = (cfg.seed, side)
  if key not in _NOISE_CACHE:
    _NOISE_CACHE[key] = config.make_rng(
        cfg.seed, config.RENDER_STREAM, 99).standard_normal(
            (side, side, 3), np.float32)
  return _NOISE_CACHE[key]


def generate_scene(cfg: config.SyntheticConfig, split: str, index: int
                   ) -> dict[str, Any]:
  """Scene `index` of `split`.

  Returns:
    A dict: `image` uint8[H, W, 3]; `image_id` str; `camera` int;
    `boxes_xyxy` f32[N, 4] absolute pixels; `pids` i32[N] (-1 unlabeled);
    `visible` f32[N] approximate unoccluded fraction of each box;
    `keypoints` f32[N, 4, 2] (x, y) image pixels of each person's head top,
    neck, left hip and right hip (`figures.person_keypoints`), not clipped.
  """
  layout = layout_lib.scene_layout(cfg, split, index)
  return {
      "image": render_layout(cfg, layout),
      "image_id": layout.image_id,
      "camera": layout.camera,
      "boxes_xyxy": layout.boxes_xyxy,
      "pids": layout.pids,
      "visible": layout.visible,
      "keypoints": layout.keypoints,
  }


def generate_split(cfg: config.SyntheticConfig, split: str, start: int = 0,
                   stop: int | None = None) -> Iterator[dict[str, Any]]:
  """Scenes start..stop-1 (default: all) of `split`, see `generate_scene`."""
  stop = cfg.num_scenes(split) if stop is None else stop
  for i in range(start, stop):
    yield generate_scene(cfg, split, i)
