"""Procedural person-search scenes, deterministic from a seed.

Stylised street, mall, park and station scenes with several people, drawn
with PIL and numpy only, so the whole person-search task (detect, then
re-identify across cameras) is real but needs no download:

* Identities have a fixed appearance: upper and lower clothing colours from
  a shared palette (many identities share a colour, so a mean colour does not
  identify anyone), a clothing pattern (solid, stripes, checks, two-tone),
  sleeves, hair, shoes, build (height, width, head size) and accessories (hat,
  shoulder bag on one side, backpack). Train and test identities are disjoint
  (test pids continue after the K train pids).
* Cameras change the background style, horizon and person scale, brightness,
  colour cast, gamma, sensor noise and blur; each appearance of a person has
  its own facing direction (front, back, left, right), stride and size, so a
  bag or a backpack is seen from different sides.
* Scenes hold 0..N people placed on a ground plane with perspective (farther
  people are smaller and drawn first), partial occlusion by people and by
  objects (cars, benches, crates, planters, poles), cluttered textured
  backgrounds and person-like distractors without boxes (headless mannequins,
  two-coloured banners). Some people are unlabeled (pid -1, one-off looks).

Conventions:
  * `image` is uint8[H, W, 3] RGB.
  * `boxes_xyxy` is f32[N, 4] absolute pixels [x1, y1, x2, y2] of the image,
    the full extent of the drawn person (hat, bag and stride included) even
    where it is occluded, clipped to the image (as in CUHK-SYSU annotations).
  * `pids` is i32[N]: train ids in [0, K), test ids in [K, K + T), -1 for
    unlabeled people.
  * Randomness: every scene, identity, camera and query draws from its own
    `np.random.default_rng([seed, stream, ...])`, so scene i of a split is the
    same whatever other scenes are generated.
  * `image_id` is f"{split}_{index:06d}.jpg".
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
import dataclasses
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

from ps_jax.data import schema

SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}

# Random streams: the first entropy word after the seed, so that identities,
# cameras, scene layouts, scene textures and queries never share draws.
_IDENTITY, _CAMERA, _LAYOUT, _RENDER, _QUERY, _PERM = range(6)

# A shared, deliberately small clothing palette: many identities share their
# upper or lower colour, so re-identification has to combine cues.
_CLOTH = np.array([
    (25, 25, 30), (232, 232, 226), (128, 128, 132), (32, 42, 92),
    (45, 95, 200), (125, 170, 228), (190, 32, 38), (112, 28, 40),
    (34, 122, 56), (112, 120, 52), (232, 200, 44), (236, 122, 34),
    (232, 134, 172), (112, 52, 142), (112, 72, 42), (212, 192, 152),
    (34, 142, 142),
], np.float64)
_SKIN = np.array([(250, 214, 186), (232, 184, 150), (196, 140, 100),
                  (150, 100, 68), (100, 66, 44)], np.float64)
_HAIR = np.array([(20, 16, 14), (62, 40, 26), (112, 74, 40), (214, 184, 110),
                  (160, 160, 160), (150, 60, 30)], np.float64)
_SHOES = np.array([(20, 20, 20), (240, 240, 240), (90, 60, 40),
                   (60, 60, 70), (160, 40, 40)], np.float64)
PATTERNS = ("solid", "stripes", "checks", "two_tone")
FACINGS = ("front", "back", "left", "right")
_LOWER_KINDS = ("trousers", "trousers", "shorts", "skirt")
_STYLES = ("street", "mall", "park", "station")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and probabilities of a synthetic person-search dataset.

  Attributes:
    seed: root seed of every random stream.
    image_size_range: (min, max) height and width of an image in pixels;
      each image draws both independently.
    num_train_ids: K, labeled identities of `train` (pids 0..K-1).
    num_test_ids: T, identities of `test` (pids K..K+T-1).
    num_train_scenes, num_test_scenes: images per split.
    num_cameras: cameras shared by both splits.
    persons_per_scene: (min, max) people in a non-empty scene.
    empty_scene_prob: chance that a scene has nobody in it.
    unlabeled_prob: chance that a person after the first is unlabeled.
    occlusion_prob: chance that a person is placed beside (and partly behind
      or in front of) an earlier one.
    occluder_prob: chance, per person, of an object in front of them.
    max_distractors: most person-like distractors (no box) per scene.
    min_person_px: smallest person height in pixels.
    min_visible: people whose box is covered more than 1 - min_visible by
      nearer people or objects are not drawn (nor annotated).
    gallery_sizes: CUHK-SYSU-style gallery sizes of every query.
    max_gallery_targets: most images of the target person in a gallery.
    camera_strength: scales how far each camera's gain, colour cast and gamma
      stray from neutral (0: all cameras see the same colours).
  """
  seed: int = 0
  image_size_range: tuple[int, int] = (256, 384)
  num_train_ids: int = 150
  num_test_ids: int = 100
  num_train_scenes: int = 2000
  num_test_scenes: int = 500
  num_cameras: int = 6
  persons_per_scene: tuple[int, int] = (2, 7)
  empty_scene_prob: float = 0.04
  unlabeled_prob: float = 0.3
  occlusion_prob: float = 0.35
  occluder_prob: float = 0.2
  max_distractors: int = 2
  min_person_px: int = 24
  min_visible: float = 0.4
  gallery_sizes: tuple[int, ...] = (50, 100)
  max_gallery_targets: int = 4
  camera_strength: float = 0.6

  def __post_init__(self):
    lo, hi = self.image_size_range
    if not 32 <= lo <= hi:
      raise ValueError(f"image_size_range {self.image_size_range}: expected "
                       "32 <= min <= max")
    if self.num_train_ids < 1 or self.num_test_ids < 1:
      raise ValueError("num_train_ids and num_test_ids must be >= 1")
    if self.num_cameras < 2:
      raise ValueError(f"num_cameras={self.num_cameras}: need >= 2 so that "
                       "queries have targets from another camera")
    plo, phi = self.persons_per_scene
    if not 1 <= plo <= phi:
      raise ValueError(f"persons_per_scene {self.persons_per_scene}: "
                       "expected 1 <= min <= max")
    if not 1 <= self.min_person_px <= 0.4 * lo:
      # The nearest person is at least 0.46 of the image height tall.
      raise ValueError(f"min_person_px={self.min_person_px}: expected in "
                       f"[1, 0.4 * min image size = {0.4 * lo}]")
    if any(n < 2 or n >= self.num_test_scenes for n in self.gallery_sizes):
      raise ValueError(f"gallery_sizes {self.gallery_sizes}: each must be in "
                       f"[2, num_test_scenes={self.num_test_scenes})")
    if self.max_gallery_targets < 1:
      raise ValueError("max_gallery_targets must be >= 1")

  def num_scenes(self, split: str) -> int:
    _check_split(split)
    return self.num_train_scenes if split == "train" else self.num_test_scenes


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def _rng(*words: int) -> np.random.Generator:
  return np.random.default_rng([int(w) for w in words])


def image_id(split: str, index: int) -> str:
  """The image id of scene `index` of `split`."""
  return f"{split}_{index:06d}.jpg"


# ----------------------------------------------------------------- identities


@dataclasses.dataclass(frozen=True)
class Identity:
  """The fixed appearance of one person (colours are RGB in [0, 255])."""
  upper: tuple[float, float, float]
  upper2: tuple[float, float, float]
  pattern: str
  long_sleeves: bool
  lower: tuple[float, float, float]
  lower_kind: str
  skin: tuple[float, float, float]
  hair: tuple[float, float, float]
  long_hair: bool
  shoes: tuple[float, float, float]
  height: float
  width: float
  head: float
  hat: tuple[float, float, float] | None
  bag: tuple[float, float, float] | None
  bag_side: int
  backpack: tuple[float, float, float] | None

  def signature(self) -> tuple[Any, ...]:
    """The coarse look that no two labeled identities share."""
    return (self.upper, self.upper2 if self.pattern != "solid" else None,
            self.pattern, self.lower, self.hat is None, self.bag is None,
            self.backpack is None)


def _colour(rng: np.random.Generator, table: np.ndarray, jitter: float
            ) -> tuple[float, float, float]:
  c = table[rng.integers(len(table))] + rng.uniform(-jitter, jitter, 3)
  return tuple(float(v) for v in np.clip(c, 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
  """A random appearance drawn from `rng`."""
  upper_i = rng.integers(len(_CLOTH))
  upper2_i = (upper_i + rng.integers(1, len(_CLOTH))) % len(_CLOTH)
  jit = rng.uniform(-8, 8, (2, 3))
  pick = lambda table: _colour(rng, table, 8.0)  # noqa: E731
  return Identity(
      upper=tuple(np.clip(_CLOTH[upper_i] + jit[0], 0, 255).tolist()),
      upper2=tuple(np.clip(_CLOTH[upper2_i] + jit[1], 0, 255).tolist()),
      pattern=PATTERNS[rng.choice(4, p=[0.4, 0.22, 0.18, 0.2])],
      long_sleeves=bool(rng.random() < 0.6),
      lower=pick(_CLOTH),
      lower_kind=_LOWER_KINDS[rng.integers(len(_LOWER_KINDS))],
      skin=pick(_SKIN),
      hair=pick(_HAIR),
      long_hair=bool(rng.random() < 0.35),
      shoes=pick(_SHOES),
      height=float(rng.uniform(0.88, 1.1)),
      width=float(rng.uniform(0.85, 1.2)),
      head=float(rng.uniform(0.88, 1.15)),
      hat=pick(_CLOTH) if rng.random() < 0.2 else None,
      bag=pick(_CLOTH) if rng.random() < 0.3 else None,
      bag_side=int(rng.choice([-1, 1])),
      backpack=pick(_CLOTH) if rng.random() < 0.25 else None,
  )


def make_identities(cfg: SyntheticConfig, split: str) -> list[Identity]:
  """The labeled identities of a split, pid order (test: pid - K).

  Train and test identities are drawn together so that no two of them share
  a coarse look (`Identity.signature`).
  """
  _check_split(split)
  return _all_identities(cfg)[split]


_IDENTITY_CACHE: dict[tuple[int, int, int], dict[str, list[Identity]]] = {}


def _all_identities(cfg: SyntheticConfig) -> dict[str, list[Identity]]:
  key = (cfg.seed, cfg.num_train_ids, cfg.num_test_ids)
  if key not in _IDENTITY_CACHE:
    seen = set()
    out = {}
    for split, n in (("train", cfg.num_train_ids),
                     ("test", cfg.num_test_ids)):
      ids = []
      for k in range(n):
        for attempt in range(1000):
          ident = random_identity(
              _rng(cfg.seed, _IDENTITY, _SPLIT_CODE[split], k, attempt))
          if ident.signature() not in seen:
            break
        seen.add(ident.signature())
        ids.append(ident)
      out[split] = ids
    _IDENTITY_CACHE[key] = out
  return _IDENTITY_CACHE[key]


# -------------------------------------------------------------------- cameras


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


def make_camera(cfg: SyntheticConfig, index: int) -> Camera:
  """Camera `index` (the same in both splits)."""
  rng = _rng(cfg.seed, _CAMERA, index)
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


# ---------------------------------------------------------------- primitives

# A drawable is a list of primitives in image pixels:
#   ("poly", [(x, y), ...], rgb)   ("ellipse", (x0, y0, x1, y1), rgb)
#   ("line", [(x, y), ...], rgb, width)   ("shadow", (x0, y0, x1, y1))
Prim = tuple


def prims_box(prims: Sequence[Prim]) -> np.ndarray:
  """f64[4] xyxy extent of the primitives (shadows excluded)."""
  xs, ys = [], []
  for p in prims:
    if p[0] == "poly":
      xs += [q[0] for q in p[1]]
      ys += [q[1] for q in p[1]]
    elif p[0] == "ellipse":
      xs += [p[1][0], p[1][2]]
      ys += [p[1][1], p[1][3]]
    elif p[0] == "line":
      r = p[3] / 2
      xs += [q[0] - r for q in p[1]] + [q[0] + r for q in p[1]]
      ys += [q[1] for q in p[1]]
  return np.array([min(xs), min(ys), max(xs), max(ys)])


def _quad(x0a, x1a, ya, x0b, x1b, yb):
  """A quadrilateral with top edge x0a..x1a at ya, bottom x0b..x1b at yb."""
  return [(x0a, ya), (x1a, ya), (x1b, yb), (x0b, yb)]


def _patterned(top_l, top_r, y0, bot_l, bot_r, y1, ident: Identity,
               scale: float) -> list[Prim]:
  """A trapezoid (the torso) filled with the identity's pattern."""
  base, second = ident.upper, ident.upper2
  prims = [("poly", _quad(top_l, top_r, y0, bot_l, bot_r, y1), base)]

  def at(t, u):  # t across [0, 1] left to right, u down [0, 1]
    xl = top_l + (bot_l - top_l) * u
    xr = top_r + (bot_r - top_r) * u
    return (xl + (xr - xl) * t, y0 + (y1 - y0) * u)

  def cell(t0, t1, u0, u1, c):
    prims.append(("poly", [at(t0, u0), at(t1, u0), at(t1, u1), at(t0, u1)],
                  c))

  # Pattern periods scale with the person (about 7 bands over the torso) but
  # never drop below 2 px, so patterns survive on small people.
  n_bands = int(np.clip((y1 - y0) / max(2.0, 0.045 * scale), 2, 8))
  if ident.pattern == "stripes":
    for b in range(0, n_bands, 2):
      cell(0, 1, (b + 0.5) / n_bands, (b + 1.5) / n_bands, second)
  elif ident.pattern == "checks":
    cols = max(2, n_bands // 2)
    for b in range(n_bands):
      for c in range(cols):
        if (b + c) % 2:
          cell(c / cols, (c + 1) / cols, b / n_bands, (b + 1) / n_bands,
               second)
  elif ident.pattern == "two_tone":
    cell(0, 1, 0.5, 1, second)
  return prims


def person_prims(ident: Identity, facing: str, stride: float, height: float,
                 cx: float, top: float) -> list[Prim]:
  """The primitives of one person, `height` px tall, top-centre at (cx, top).

  Args:
    ident: the appearance.
    facing: one of FACINGS; "left"/"right" are seen in profile.
    stride: in [0, 1], how far the legs are apart (walking).
    height: person height in pixels (feet at top + height).
    cx, top: horizontal centre and top of the person in image pixels.
  """
  h = height
  x = lambda f: cx + f * h  # noqa: E731  (fractions of the height)
  y = lambda f: top + f * h  # noqa: E731
  prims: list[Prim] = []
  profile = facing in ("left", "right")
  fwd = -1.0 if facing == "left" else 1.0  # profile: the way the nose points
  wf = ident.width
  head_h = 0.125 * ident.head
  head_w = head_h * (0.72 if profile else 0.8)
  y_head = 0.03 if ident.hat is not None else 0.0
  y_sh = y_head + head_h + 0.012
  y_hip = y_sh + 0.33
  y_foot = 0.965
  sw = (0.085 if profile else 0.125) * wf  # half shoulder width
  hw = (0.075 if profile else 0.105) * wf  # half hip width
  aw = 0.05 * wf  # arm width
  # Image side of the bag: a person's left is on the image right when they
  # face the camera; in profile only one side is seen.
  if facing == "front":
    bag_x, bag_near = -ident.bag_side, True
  elif facing == "back":
    bag_x, bag_near = ident.bag_side, True
  else:
    bag_x, bag_near = -fwd * 0.3, (ident.bag_side == -1) == (facing == "left")

  prims.append(("shadow", (x(-0.16 - 0.1 * stride), y(0.95),
                           x(0.16 + 0.1 * stride), y(1.0))))
  # Behind the body: long hair, a backpack seen in profile, a far-side bag.
  if ident.long_hair and facing != "front":
    prims.append(("poly", _quad(x(-head_w / 2), x(head_w / 2),
                                y(y_head + head_h * 0.5), x(-head_w * 0.6),
                                x(head_w * 0.6), y(y_sh + 0.08)),
                  ident.hair))
  if ident.backpack is not None and profile:
    bx0 = -fwd * sw * 0.6
    bx1 = -fwd * (sw + 0.075)
    prims.append(("poly", _quad(x(min(bx0, bx1)), x(max(bx0, bx1)),
                                y(y_sh + 0.02), x(min(bx0, bx1)),
                                x(max(bx0, bx1)), y(y_sh + 0.2)),
                  ident.backpack))
  bag_prims = []
  if ident.bag is not None:
    bs = 0.11
    if profile:
      b0 = bag_x * sw - bs / 2
    else:
      b0 = bag_x * (sw + aw * 0.6) - (bs if bag_x < 0 else 0)
    bag_prims = [
        ("line", [(x(-bag_x * sw * 0.8), y(y_sh + 0.01)),
                  (x(b0 + bs / 2), y(y_hip - 0.08))], ident.bag,
         max(1.0, 0.012 * h)),
        ("poly", _quad(x(b0), x(b0 + bs), y(y_hip - 0.08), x(b0),
                       x(b0 + bs), y(y_hip + 0.03)), ident.bag)]
    if not bag_near:
      prims += bag_prims[1:]
      bag_prims = []

  # Legs and lower clothing.
  ankle = 0.045 * wf
  if profile:
    spread = 0.03 + 0.13 * stride
    legs = [(-spread, -spread + 0.07 * wf), (spread - 0.07 * wf, spread)]
    tops = [(-hw * 0.8, hw * 0.2), (-hw * 0.2, hw * 0.8)]
  else:
    spread = 0.04 * stride
    legs = [(-hw * 0.85 - spread, -hw * 0.85 + 2 * ankle - spread),
            (hw * 0.85 - 2 * ankle + spread, hw * 0.85 + spread)]
    tops = [(-hw, -0.006), (0.006, hw)]
  cut = {"trousers": 1.0, "shorts": 0.4, "skirt": 0.0}[ident.lower_kind]
  for (fl, fr), (tl, tr) in zip(legs, tops):
    y_cut = y_hip + (y_foot - y_hip) * cut
    mid = lambda a, b, t: a + (b - a) * t  # noqa: E731
    t = (y_cut - y_hip) / (y_foot - y_hip)
    if cut < 1.0:
      prims.append(("poly", _quad(x(mid(tl, fl, t)), x(mid(tr, fr, t)),
                                  y(y_cut), x(fl), x(fr), y(y_foot)),
                    ident.skin))
    if cut > 0.0:
      prims.append(("poly", _quad(x(tl), x(tr), y(y_hip - 0.01),
                                  x(mid(tl, fl, t)), x(mid(tr, fr, t)),
                                  y(y_cut)), ident.lower))
    toe = fwd * 0.04 if profile else 0.0
    prims.append(("poly", _quad(x(min(fl, fl + toe) - 0.005),
                                x(max(fr, fr + toe) + 0.005), y(y_foot - 0.012),
                                x(min(fl, fl + toe) - 0.005),
                                x(max(fr, fr + toe) + 0.005), y(1.0)),
                  ident.shoes))
  if ident.lower_kind == "skirt":
    prims.append(("poly", _quad(x(-hw * 1.02), x(hw * 1.02), y(y_hip - 0.01),
                                x(-hw * 1.5), x(hw * 1.5), y(y_hip + 0.2)),
                  ident.lower))

  # Arms (both in front/back views, drawn beside the torso), torso, head.
  def arm(xa, xb, swing):
    sleeve = ident.upper if ident.long_sleeves else ident.skin
    y_el = y_sh + 0.13
    y_hand = y_hip + 0.03
    if not ident.long_sleeves:
      prims.append(("poly", _quad(x(xa), x(xb), y(y_sh + 0.01), x(xa),
                                  x(xb), y(y_el)), ident.upper))
    prims.append(("poly", _quad(x(xa), x(xb),
                                y(y_el if not ident.long_sleeves else
                                  y_sh + 0.01),
                                x(xa + swing), x(xb + swing), y(y_hand - 0.03)),
                  sleeve))
    prims.append(("poly", _quad(x(xa + swing), x(xb + swing), y(y_hand - 0.03),
                                x(xa + swing), x(xb + swing), y(y_hand)),
                  ident.skin))

  if not profile:
    arm(-sw - aw * 0.7, -sw + aw * 0.3, -0.01)
    arm(sw - aw * 0.3, sw + aw * 0.7, 0.01)
  prims += _patterned(x(-sw), x(sw), y(y_sh), x(-hw), x(hw), y(y_hip), ident,
                      h)
  if ident.backpack is not None and not profile:
    if facing == "back":
      prims.append(("poly", _quad(x(-sw * 0.75), x(sw * 0.75), y(y_sh + 0.03),
                                  x(-sw * 0.7), x(sw * 0.7), y(y_sh + 0.22)),
                    ident.backpack))
    else:
      for s in (-1, 1):
        prims.append(("line", [(x(s * sw * 0.55), y(y_sh)),
                               (x(s * sw * 0.5), y(y_sh + 0.17))],
                      ident.backpack, max(1.0, 0.018 * h)))
  if profile:
    arm(-aw * 0.5, aw * 0.5, fwd * 0.06 * stride)
  prims += bag_prims

  # Neck and head.
  prims.append(("poly", _quad(x(-0.025), x(0.025), y(y_head + head_h * 0.8),
                              x(-0.025), x(0.025), y(y_sh + 0.005)),
                ident.skin))
  hx0, hx1 = x(-head_w / 2), x(head_w / 2)
  hy0, hy1 = y(y_head), y(y_head + head_h)
  if facing == "back":
    prims.append(("ellipse", (hx0, hy0, hx1, hy1), ident.hair))
  else:
    prims.append(("ellipse", (hx0, hy0, hx1, hy1), ident.skin))
    if facing == "front":
      prims.append(("poly", _quad(hx0, hx1, hy0 + head_h * h * 0.1,
                                  hx0, hx1, hy0 + head_h * h * 0.3),
                    ident.hair))
      prims.append(("ellipse", (hx0 + 0.05 * head_w * h, hy0,
                                hx1 - 0.05 * head_w * h,
                                hy0 + head_h * h * 0.45), ident.hair))
      if head_h * h >= 9:
        for s in (-1, 1):
          ex = cx + s * head_w * h * 0.2
          ey = hy0 + head_h * h * 0.55
          r = max(0.6, head_h * h * 0.06)
          prims.append(("ellipse", (ex - r, ey - r, ex + r, ey + r),
                        (30, 25, 25)))
    else:
      # Profile: hair over the back of the head, an eye and a nose in front.
      back0 = cx - fwd * head_w * h * 0.55
      prims.append(("poly", [(cx + fwd * head_w * h * 0.15, hy0),
                             (back0, hy0 + head_h * h * 0.15),
                             (back0, hy0 + head_h * h * 0.8),
                             (cx - fwd * head_w * h * 0.1,
                              hy0 + head_h * h * 0.55)], ident.hair))
      prims.append(("ellipse", (hx0, hy0, hx1, hy0 + head_h * h * 0.4),
                    ident.hair))
      nose_x = cx + fwd * head_w * h * 0.58
      prims.append(("poly", [(cx + fwd * head_w * h * 0.45,
                              hy0 + head_h * h * 0.45),
                             (nose_x, hy0 + head_h * h * 0.62),
                             (cx + fwd * head_w * h * 0.45,
                              hy0 + head_h * h * 0.68)], ident.skin))
      if head_h * h >= 9:
        ex = cx + fwd * head_w * h * 0.25
        ey = hy0 + head_h * h * 0.5
        r = max(0.6, head_h * h * 0.06)
        prims.append(("ellipse", (ex - r, ey - r, ex + r, ey + r),
                      (30, 25, 25)))
  if ident.hat is not None:
    prims.append(("ellipse", (x(-head_w * 0.55), y(0.0), x(head_w * 0.55),
                              y(y_head + head_h * 0.55)), ident.hat))
    if profile:
      b0, b1 = sorted((0.0, fwd * head_w * 0.95))
    else:
      b0, b1 = -head_w * 0.7, head_w * 0.7
    prims.append(("poly", _quad(x(b0), x(b1), y(y_head + head_h * 0.3),
                                x(b0), x(b1), y(y_head + head_h * 0.42)),
                  ident.hat))
  return prims


def mannequin_prims(ident: Identity, height: float, cx: float, top: float
                    ) -> list[Prim]:
  """A headless shop mannequin dressed like a person, on a stand (no box)."""
  h = height
  x = lambda f: cx + f * h  # noqa: E731
  y = lambda f: top + f * h  # noqa: E731
  sw, hw = 0.125 * ident.width, 0.1 * ident.width
  y_sh, y_hip = 0.12, 0.47
  grey = (150, 150, 155)
  prims = [("shadow", (x(-0.12), y(0.96), x(0.12), y(1.0))),
           ("poly", _quad(x(-0.012), x(0.012), y(0.7), x(-0.012), x(0.012),
                          y(0.98)), (60, 60, 60)),
           ("poly", _quad(x(-0.12), x(0.12), y(0.97), x(-0.12), x(0.12),
                          y(1.0)), (60, 60, 60)),
           ("poly", _quad(x(-0.02), x(0.02), y(0.0), x(-0.02), x(0.02),
                          y(y_sh)), grey)]
  if ident.lower_kind != "skirt":
    prims.append(("poly", _quad(x(-hw), x(hw), y(y_hip - 0.01), x(-hw * 0.7),
                                x(hw * 0.7), y(0.72)), ident.lower))
  else:
    prims.append(("poly", _quad(x(-hw), x(hw), y(y_hip - 0.01), x(-hw * 1.5),
                                x(hw * 1.5), y(0.66)), ident.lower))
  for s in (-1, 1):
    prims.append(("poly", _quad(x(s * sw), x(s * (sw + 0.045)), y(y_sh + 0.01),
                                x(s * (sw - 0.005)), x(s * (sw + 0.04)),
                                y(y_hip)), ident.upper))
  prims += _patterned(x(-sw), x(sw), y(y_sh), x(-hw), x(hw), y(y_hip), ident,
                      h)
  return prims


def banner_prims(ident: Identity, height: float, cx: float, top: float
                 ) -> list[Prim]:
  """A person-sized two-coloured banner on a post (no box)."""
  h = height
  w = 0.13 * ident.width * h
  split = top + h * 0.45
  return [("poly", _quad(cx - 0.01 * h, cx + 0.01 * h, top, cx - 0.01 * h,
                         cx + 0.01 * h, top + h), (70, 70, 75)),
          ("poly", _quad(cx - w, cx + w, top + 0.05 * h, cx - w, cx + w,
                         split), ident.upper),
          ("poly", _quad(cx - w * 0.8, cx + w * 0.8, split, cx - w * 0.8,
                         cx + w * 0.8, top + h * 0.8), ident.lower)]


def object_prims(kind: str, size: float, cx: float, bottom: float,
                 colour: Sequence[float], facing: int) -> list[Prim]:
  """A street object standing at (cx, bottom); `size` is a person height."""
  s = size
  c = tuple(colour)
  dark = (40, 40, 45)
  if kind == "car":
    ch, cw = 0.5 * s, 1.2 * s
    x0, x1 = cx - cw / 2, cx + cw / 2
    yb = bottom - 0.08 * s
    cab0 = cx - cw * (0.3 if facing > 0 else 0.15)
    cab1 = cx + cw * (0.15 if facing > 0 else 0.3)
    return [("shadow", (x0 - 0.05 * s, bottom - 0.05 * s, x1 + 0.05 * s,
                        bottom + 0.02 * s)),
            ("poly", [(cab0, yb - ch), (cab1, yb - ch),
                      (cab1 + 0.12 * s, yb - ch * 0.55),
                      (cab0 - 0.12 * s, yb - ch * 0.55)], c),
            ("poly", [(cab0 + 0.03 * s, yb - ch * 0.93),
                      (cab1 - 0.03 * s, yb - ch * 0.93),
                      (cab1 + 0.07 * s, yb - ch * 0.6),
                      (cab0 - 0.07 * s, yb - ch * 0.6)], (150, 190, 210)),
            ("poly", _quad(x0, x1, yb - ch * 0.58, x0, x1, yb), c),
            ("poly", _quad(x0, x1, yb - ch * 0.2, x0, x1, yb - ch * 0.14),
             dark),
            ("ellipse", (x0 + 0.1 * s, bottom - 0.2 * s, x0 + 0.3 * s,
                         bottom), dark),
            ("ellipse", (x1 - 0.3 * s, bottom - 0.2 * s, x1 - 0.1 * s,
                         bottom), dark)]
  if kind == "bench":
    w = 0.55 * s
    return [("poly", _quad(cx - w, cx + w, bottom - 0.42 * s, cx - w, cx + w,
                           bottom - 0.34 * s), c),
            ("poly", _quad(cx - w, cx + w, bottom - 0.26 * s, cx - w * 1.03,
                           cx + w * 1.03, bottom - 0.2 * s), c),
            ("line", [(cx - w * 0.85, bottom - 0.2 * s),
                      (cx - w * 0.85, bottom)], dark, max(1.0, 0.03 * s)),
            ("line", [(cx + w * 0.85, bottom - 0.2 * s),
                      (cx + w * 0.85, bottom)], dark, max(1.0, 0.03 * s))]
  if kind == "crate":
    w = 0.2 * s
    return [("shadow", (cx - w * 1.2, bottom - 0.04 * s, cx + w * 1.2,
                        bottom + 0.02 * s)),
            ("poly", _quad(cx - w, cx + w, bottom - 0.4 * s, cx - w, cx + w,
                           bottom), c),
            ("line", [(cx - w, bottom - 0.4 * s), (cx + w, bottom)], dark,
             max(1.0, 0.015 * s)),
            ("line", [(cx + w, bottom - 0.4 * s), (cx - w, bottom)], dark,
             max(1.0, 0.015 * s))]
  if kind == "planter":
    w = 0.25 * s
    return [("ellipse", (cx - w * 1.2, bottom - 0.5 * s, cx + w * 1.2,
                         bottom - 0.15 * s), (45, 110, 50)),
            ("ellipse", (cx - w * 0.8, bottom - 0.6 * s, cx + w * 0.6,
                         bottom - 0.3 * s), (60, 135, 60)),
            ("poly", _quad(cx - w, cx + w, bottom - 0.22 * s, cx - w * 0.8,
                           cx + w * 0.8, bottom), c)]
  if kind == "pole":
    w = max(1.0, 0.025 * s)
    return [("poly", _quad(cx - w, cx + w, bottom - 1.35 * s, cx - w, cx + w,
                           bottom), dark),
            ("poly", _quad(cx - w, cx + 0.2 * s * facing, bottom - 1.35 * s,
                           cx - w, cx + 0.2 * s * facing,
                           bottom - 1.3 * s), dark)]
  if kind == "bin":
    w = 0.13 * s
    return [("poly", _quad(cx - w, cx + w, bottom - 0.38 * s, cx - w * 0.85,
                           cx + w * 0.85, bottom), c),
            ("poly", _quad(cx - w * 1.1, cx + w * 1.1, bottom - 0.42 * s,
                           cx - w * 1.1, cx + w * 1.1, bottom - 0.37 * s),
             dark)]
  raise ValueError(f"unknown object kind {kind!r}")


OCCLUDER_KINDS = ("car", "bench", "crate", "planter", "pole")


# --------------------------------------------------------------------- layout


@dataclasses.dataclass
class _Entity:
  depth: float  # foot y: larger is nearer, drawn later
  prims: list[Prim]
  box: np.ndarray  # f64[4] unclipped xyxy extent
  solid: np.ndarray  # f64[4] the part that hides what is behind it
  pid: int | None = None  # None: not a person (no box)
  labeled_box: np.ndarray | None = None


@dataclasses.dataclass
class SceneLayout:
  """Everything about a scene but its pixels.

  Attributes:
    split, index, image_id, camera: where the scene comes from.
    width, height: image size in pixels.
    horizon: y of the horizon in pixels.
    boxes_xyxy: f32[N, 4] person boxes (pixels, clipped to the image).
    pids: i32[N] person ids (-1 unlabeled).
    visible: f32[N] approximate visible fraction of each box in [0, 1].
    entities: drawables sorted far to near (private to the renderer).
  """
  split: str
  index: int
  image_id: str
  camera: int
  width: int
  height: int
  horizon: float
  boxes_xyxy: np.ndarray
  pids: np.ndarray
  visible: np.ndarray
  entities: list[_Entity]


def _covered_fraction(box: np.ndarray, covers: Sequence[np.ndarray]) -> float:
  """Fraction of `box` inside the union of `covers` (a 12x24 sample grid)."""
  if not covers:
    return 0.0
  xs = np.linspace(box[0], box[2], 12)
  ys = np.linspace(box[1], box[3], 24)
  gx, gy = np.meshgrid(xs, ys)
  hit = np.zeros(gx.shape, bool)
  for c in covers:
    hit |= (gx >= c[0]) & (gx <= c[2]) & (gy >= c[1]) & (gy <= c[3])
  return float(hit.mean())


def scene_layout(cfg: SyntheticConfig, split: str, index: int) -> SceneLayout:
  """The layout (sizes, people, boxes, objects) of one scene, no pixels."""
  _check_split(split)
  if not 0 <= index < cfg.num_scenes(split):
    raise IndexError(f"scene {index} of {split}: the split has "
                     f"{cfg.num_scenes(split)} scenes")
  rng = _rng(cfg.seed, _LAYOUT, _SPLIT_CODE[split], index)
  lo, hi = cfg.image_size_range
  width, height = (int(v) for v in rng.integers(lo, hi + 1, 2))
  cam_id = int(rng.integers(cfg.num_cameras))
  cam = make_camera(cfg, cam_id)
  horizon = height * (cam.horizon + rng.uniform(-0.03, 0.03))
  scale = cam.scale * rng.uniform(0.92, 1.08)

  def size_at(foot_y):  # person height at a foot position (perspective)
    return scale * height * (foot_y - horizon) / (height - horizon)

  min_h = max(cfg.min_person_px, 0.2 * height)
  foot_min = horizon + min_h * (height - horizon) / (scale * height)
  idents = make_identities(cfg, split)
  pid_offset = 0 if split == "train" else cfg.num_train_ids
  # Scene i's first person is identity perm[i mod K], so every identity
  # shows up about once per K scenes (unless that scene is empty or the
  # person ends up hidden), whatever the number of scenes.
  perm = _rng(cfg.seed, _PERM, _SPLIT_CODE[split]).permutation(len(idents))

  people: list[_Entity] = []
  objects: list[_Entity] = []
  n_people = (0 if rng.random() < cfg.empty_scene_prob else
              int(rng.integers(cfg.persons_per_scene[0],
                               cfg.persons_per_scene[1] + 1)))
  used = set()
  for j in range(n_people):
    if j == 0:
      k = int(perm[index % len(idents)])
    elif rng.random() < cfg.unlabeled_prob or len(used) == len(idents):
      k = -1
    else:
      k = int(rng.choice([i for i in range(len(idents)) if i not in used]))
    ident = idents[k] if k >= 0 else random_identity(rng)
    facing = FACINGS[rng.integers(4)]
    stride = float(rng.uniform(0.0, 1.0)) if facing in ("left", "right") else (
        float(rng.uniform(0.0, 0.5)))
    if people and rng.random() < cfg.occlusion_prob:
      other = people[rng.integers(len(people))]
      foot = other.depth + rng.uniform(-0.08, 0.08) * height
      ow = other.box[2] - other.box[0]
      cx = (other.box[0] + other.box[2]) / 2 + (
          rng.choice([-1, 1]) * rng.uniform(0.35, 0.75) * ow)
    else:
      foot = rng.uniform(foot_min, height)
      cx = rng.uniform(0, width)
    foot = float(np.clip(foot, foot_min, height - 0.5))
    h = min(size_at(foot) * ident.height * rng.uniform(0.96, 1.04), foot - 1)
    prims = person_prims(ident, facing, stride, h, 0.0, foot - h)
    ext = prims_box(prims)
    pw = ext[2] - ext[0]
    # Keep at least 70% of the person's width inside the image.
    cx = float(np.clip(cx, -ext[0] - 0.3 * pw, width - ext[2] + 0.3 * pw))
    prims = person_prims(ident, facing, stride, h, cx, foot - h)
    box = prims_box(prims)
    core = np.array([cx - 0.3 * pw, box[1] + 0.02 * h, cx + 0.3 * pw, box[3]])
    pid = (k + pid_offset) if k >= 0 else schema.UNLABELED_PID
    if k >= 0:
      used.add(k)
    people.append(_Entity(foot, prims, box, core, pid))

    if rng.random() < cfg.occluder_prob:
      kind = OCCLUDER_KINDS[rng.integers(len(OCCLUDER_KINDS))]
      o_foot = min(foot + rng.uniform(0.01, 0.08) * height, height + 0.05 * h)
      o_size = size_at(o_foot)
      o_cx = cx + rng.choice([-1, 1]) * rng.uniform(0.2, 0.7) * (
          pw + (o_size if kind in ("car", "bench") else 0.0))
      o_prims = object_prims(kind, o_size, o_cx, o_foot,
                             _CLOTH[rng.integers(len(_CLOTH))],
                             int(rng.choice([-1, 1])))
      o_box = prims_box(o_prims)
      objects.append(_Entity(o_foot, o_prims, o_box, o_box))

  # Background furniture and person-like distractors (no boxes).
  for _ in range(int(rng.integers(0, 3))):
    kind = ("pole", "bin", "planter")[rng.integers(3)]
    foot = rng.uniform(foot_min, height)
    o_prims = object_prims(kind, size_at(foot), rng.uniform(0, width), foot,
                           _CLOTH[rng.integers(len(_CLOTH))],
                           int(rng.choice([-1, 1])))
    o_box = prims_box(o_prims)
    objects.append(_Entity(foot, o_prims, o_box, o_box))
  for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
    foot = rng.uniform(foot_min, height)
    look = random_identity(rng)
    h = size_at(foot) * rng.uniform(0.85, 1.0)
    maker = mannequin_prims if rng.random() < 0.6 else banner_prims
    d_prims = maker(look, h, rng.uniform(0, width), foot - h)
    d_box = prims_box(d_prims)
    objects.append(_Entity(foot, d_prims, d_box, d_box))

  # Drop people hidden behind nearer people and objects: annotators only box
  # people they can see, and a box over a car would teach the detector noise.
  everything = people + objects
  kept = []
  visible = []
  for p in people:
    covers = [e.solid for e in everything if e.depth > p.depth]
    vis = 1.0 - _covered_fraction(p.box, covers)
    if vis >= cfg.min_visible:
      kept.append(p)
      visible.append(vis)
  entities = sorted(kept + objects, key=lambda e: e.depth)
  boxes = np.array([p.box for p in kept], np.float64).reshape(-1, 4)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
  return SceneLayout(
      split=split, index=index, image_id=image_id(split, index),
      camera=cam_id, width=width, height=height, horizon=float(horizon),
      boxes_xyxy=boxes.astype(np.float32),
      pids=np.array([p.pid for p in kept], np.int32),
      visible=np.array(visible, np.float32), entities=entities)


# ------------------------------------------------------------------ rendering


def _background(cam: Camera, width: int, height: int, horizon: float,
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


def draw_prims(im: Image.Image, prims: Sequence[Prim]) -> None:
  """Draws primitives onto an RGB image in place (shadows blended)."""
  d = ImageDraw.Draw(im, "RGBA")
  for p in prims:
    kind = p[0]
    if kind == "shadow":
      d.ellipse(p[1], fill=(0, 0, 0, 70))
    elif kind == "poly":
      d.polygon(p[1], fill=tuple(int(v) for v in p[2]))
    elif kind == "ellipse":
      x0, y0, x1, y1 = p[1]
      d.ellipse((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)),
                fill=tuple(int(v) for v in p[2]))
    elif kind == "line":
      d.line(p[1], fill=tuple(int(v) for v in p[2]),
             width=int(round(p[3])))


def render_layout(cfg: SyntheticConfig, layout: SceneLayout) -> np.ndarray:
  """The pixels of a scene layout, uint8[H, W, 3]."""
  rng = _rng(cfg.seed, _RENDER, _SPLIT_CODE[layout.split], layout.index)
  cam = make_camera(cfg, layout.camera)
  w, h = layout.width, layout.height
  im = _background(cam, w, h, layout.horizon, rng)
  for e in layout.entities:
    draw_prims(im, e.prims)
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


def _noise_bank(cfg: SyntheticConfig) -> np.ndarray:
  """f32[S, S, 3] unit Gaussian noise, S > the largest image side.

  Each scene crops it at a random offset: drawing fresh Gaussian noise for
  every image was the slowest step of rendering.
  """
  side = cfg.image_size_range[1] + 64
  key = (cfg.seed, side)
  if key not in _NOISE_CACHE:
    _NOISE_CACHE[key] = _rng(cfg.seed, _RENDER, 99).standard_normal(
        (side, side, 3), np.float32)
  return _NOISE_CACHE[key]


def generate_scene(cfg: SyntheticConfig, split: str, index: int
                   ) -> dict[str, Any]:
  """Scene `index` of `split`.

  Returns:
    A dict: `image` uint8[H, W, 3]; `image_id` str; `camera` int;
    `boxes_xyxy` f32[N, 4] absolute pixels; `pids` i32[N] (-1 unlabeled);
    `visible` f32[N] approximate unoccluded fraction of each box.
  """
  layout = scene_layout(cfg, split, index)
  return {
      "image": render_layout(cfg, layout),
      "image_id": layout.image_id,
      "camera": layout.camera,
      "boxes_xyxy": layout.boxes_xyxy,
      "pids": layout.pids,
      "visible": layout.visible,
  }


def generate_split(cfg: SyntheticConfig, split: str, start: int = 0,
                   stop: int | None = None) -> Iterator[dict[str, Any]]:
  """Scenes start..stop-1 (default: all) of `split`, see `generate_scene`."""
  stop = cfg.num_scenes(split) if stop is None else stop
  for i in range(start, stop):
    yield generate_scene(cfg, split, i)


# -------------------------------------------------------------------- queries


def generate_queries(cfg: SyntheticConfig) -> list[dict[str, Any]]:
  """A CUHK-SYSU-style query protocol on the test identities.

  One query per test identity that is seen well enough somewhere (visible
  fraction >= 0.7, height >= 1.5 * min_person_px) and also appears in a scene
  of another camera. Each gallery of size n holds up to `max_gallery_targets`
  other-camera images of the target and n - (#targets) test images without
  the target; the query image is never in its gallery. Smaller galleries are
  prefixes of the larger one's distractors (same targets).

  Returns:
    A list, ordered by pid, of dicts: `index` (test scene of the query),
    `image_id`, `camera`, `query_box_xyxy` f32[4] pixels, `query_pid` int,
    `galleries` {n: [image_id, ...]} (shuffled), `target_image_ids` [str].
  """
  layouts = [scene_layout(cfg, "test", i) for i in range(cfg.num_test_scenes)]
  where = collections.defaultdict(list)  # pid -> [(scene, person)]
  for s, lay in enumerate(layouts):
    for j, pid in enumerate(lay.pids):
      if pid >= 0:
        where[int(pid)].append((s, j))
  queries = []
  for pid in sorted(where):
    rng = _rng(cfg.seed, _QUERY, pid)
    seen = where[pid]
    scenes_with = {s for s, _ in seen}
    good = []
    for s, j in seen:
      lay = layouts[s]
      box = lay.boxes_xyxy[j]
      others = [t for t in scenes_with if layouts[t].camera != lay.camera]
      if (lay.visible[j] >= 0.7 and box[3] - box[1] >= 1.5 * cfg.min_person_px
          and others):
        good.append((s, j))
    if not good:
      continue
    s, j = good[rng.integers(len(good))]
    cam = layouts[s].camera
    others = sorted(t for t in scenes_with if layouts[t].camera != cam)
    targets = sorted(rng.choice(others, min(len(others),
                                            cfg.max_gallery_targets),
                                replace=False).tolist())
    pool = np.array([t for t in range(cfg.num_test_scenes)
                     if t not in scenes_with], np.int64)
    n_max = max(cfg.gallery_sizes)
    if len(pool) < n_max - len(targets):
      continue
    distract = rng.permutation(pool)[:n_max - len(targets)]
    galleries = {}
    for n in sorted(cfg.gallery_sizes):
      members = np.concatenate([targets, distract[:n - len(targets)]])
      members = rng.permutation(members.astype(np.int64))
      galleries[n] = [layouts[t].image_id for t in members]
    queries.append({
        "index": s,
        "image_id": layouts[s].image_id,
        "camera": cam,
        "query_box_xyxy": layouts[s].boxes_xyxy[j].copy(),
        "query_pid": pid,
        "galleries": galleries,
        "target_image_ids": [layouts[t].image_id for t in targets],
    })
  return queries
