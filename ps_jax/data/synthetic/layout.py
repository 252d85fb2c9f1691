"""Scene layout: who stands where, what hides whom, and the boxes.

People are placed on a ground plane with perspective (farther people are
smaller and drawn first), partly occluded by people and objects; people
hidden more than `min_visible` allows are not drawn nor annotated.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from ps_jax.data import schema
from ps_jax.data.synthetic import cameras
from ps_jax.data.synthetic import config
from ps_jax.data.synthetic import figures
from ps_jax.data.synthetic import identities
from ps_jax.data.synthetic import primitives
from ps_jax.data.synthetic import props


@dataclasses.dataclass
class _Entity:
  depth: float  # foot y: larger is nearer, drawn later
  prims: list[primitives.Prim]
  box: np.ndarray  # f64[4] unclipped xyxy extent
  solid: np.ndarray  # f64[4] the part that hides what is behind it
  pid: int | None = None  # None: not a person (no box)
  labeled_box: np.ndarray | None = None
  # People only: f64[4, 2] (x, y) pixels of figures.KEYPOINTS, not clipped,
  # and the `figures.person_prims` arguments (ident, facing, stride, height,
  # cx, top) that drew `prims`.
  keypoints: np.ndarray | None = None
  person: tuple | None = None


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
    keypoints: f32[N, 4, 2] (x, y) image pixels of each person's
      `figures.KEYPOINTS` (head top, neck, left hip, right hip), in the order
      of the boxes, not clipped to the image.
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
  keypoints: np.ndarray
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


def scene_layout(cfg: config.SyntheticConfig, split: str, index: int
                 ) -> SceneLayout:
  """The layout (sizes, people, boxes, objects) of one scene, no pixels."""
  config.check_split(split)
  if not 0 <= index < cfg.num_scenes(split):
    raise IndexError(f"scene {index} of {split}: the split has "
                     f"{cfg.num_scenes(split)} scenes")
  rng = config.make_rng(cfg.seed, config.LAYOUT_STREAM,
                        config.SPLIT_CODE[split], index)
  lo, hi = cfg.image_size_range
  width, height = (int(v) for v in rng.integers(lo, hi + 1, 2))
  cam_id = int(rng.integers(cfg.num_cameras))
  cam = cameras.make_camera(cfg, cam_id)
  horizon = height * (cam.horizon + rng.uniform(-0.03, 0.03))
  scale = cam.scale * rng.uniform(0.92, 1.08)

  def size_at(foot_y):  # person height at a foot position (perspective)
    return scale * height * (foot_y - horizon) / (height - horizon)

  min_h = max(cfg.min_person_px, 0.2 * height)
  foot_min = horizon + min_h * (height - horizon) / (scale * height)
  idents = identities.make_identities(cfg, split)
  pid_offset = 0 if split == "train" else cfg.num_train_ids
  # Scene i's first person is identity perm[i mod K], so every identity
  # shows up about once per K scenes (unless that scene is empty or the
  # person ends up hidden), whatever the number of scenes.
  perm = config.make_rng(cfg.seed, config.PERM_STREAM,
                         config.SPLIT_CODE[split]).permutation(len(idents))

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
    ident = idents[k] if k >= 0 else identities.random_identity(rng)
    facing = figures.FACINGS[rng.integers(4)]
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
    prims = figures.person_prims(ident, facing, stride, h, 0.0, foot - h)
    ext = primitives.prims_box(prims)
    pw = ext[2] - ext[0]
    # Keep at least 70% of the person's width inside the image.
    cx = float(np.clip(cx, -ext[0] - 0.3 * pw, width - ext[2] + 0.3 * pw))
    prims = figures.person_prims(ident, facing, stride, h, cx, foot - h)
    box = primitives.prims_box(prims)
    # Pure computation from the same geometry: no random draw.
    keypoints = figures.person_keypoints(ident, facing, stride, h, cx,
                                         foot - h)
    core = np.array([cx - 0.3 * pw, box[1] + 0.02 * h, cx + 0.3 * pw, box[3]])
    pid = (k + pid_offset) if k >= 0 else schema.UNLABELED_PID
    if k >= 0:
      used.add(k)
    people.append(_Entity(foot, prims, box, core, pid, keypoints=keypoints,
                          person=(ident, facing, stride, h, cx, foot - h)))

    if rng.random() < cfg.occluder_prob:
      kind = props.OCCLUDER_KINDS[rng.integers(len(props.OCCLUDER_KINDS))]
      o_foot = min(foot + rng.uniform(0.01, 0.08) * height, height + 0.05 * h)
      o_size = size_at(o_foot)
      o_cx = cx + rng.choice([-1, 1]) * rng.uniform(0.2, 0.7) * (
          pw + (o_size if kind in ("car", "bench") else 0.0))
      o_prims = props.object_prims(
          kind, o_size, o_cx, o_foot,
          identities.CLOTH[rng.integers(len(identities.CLOTH))],
          int(rng.choice([-1, 1])))
      o_box = primitives.prims_box(o_prims)
      objects.append(_Entity(o_foot, o_prims, o_box, o_box))

  # Background furniture and person-like distractors (no boxes).
  for _ in range(int(rng.integers(0, 3))):
    kind = ("pole", "bin", "planter")[rng.integers(3)]
    foot = rng.uniform(foot_min, height)
    o_prims = props.object_prims(
        kind, size_at(foot), rng.uniform(0, width), foot,
        identities.CLOTH[rng.integers(len(identities.CLOTH))],
        int(rng.choice([-1, 1])))
    o_box = primitives.prims_box(o_prims)
    objects.append(_Entity(foot, o_prims, o_box, o_box))
  for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
    foot = rng.uniform(foot_min, height)
    look = identities.random_identity(rng)
    h = size_at(foot) * rng.uniform(0.85, 1.0)
    maker = (figures.mannequin_prims if rng.random() < 0.6 else
             figures.banner_prims)
    d_prims = maker(look, h, rng.uniform(0, width), foot - h)
    d_box = primitives.prims_box(d_prims)
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
      split=split, index=index, image_id=config.image_id(split, index),
      camera=cam_id, width=width, height=height, horizon=float(horizon),
      boxes_xyxy=boxes.astype(np.float32),
      pids=np.array([p.pid for p in kept], np.int32),
      visible=np.array(visible, np.float32),
      keypoints=np.array([p.keypoints for p in kept],
                         np.float32).reshape(-1, len(figures.KEYPOINTS), 2),
      entities=entities)
