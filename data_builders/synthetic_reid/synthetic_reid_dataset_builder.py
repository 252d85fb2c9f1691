"""Re-identification crops of the synthetic person-search benchmark.

The crop view of `synthetic_person_search`: every config has the name and
the generator settings of that builder's config (`synthetic_reid/default`
holds the people of `synthetic_person_search/default`), cut out of the
rendered scenes into the Market-1501 re-ID schema
(`market1501_dataset_builder.reid_features()`) plus four body keypoints and
the visible fraction of each person:

  image      JPEG (quality 90) of the crop, at its own size (no resize).
  image_id   str, `<scene>_p<slot>.jpg`, e.g. `test_000123_p2.jpg`: person
             `slot` (0-based, the order of the scene's boxes) of scene
             `test_000123.jpg`.
  pid        int32, see the splits below.
  camera     int32, the generator's camera index 0..C-1 (as in
             synthetic_person_search; Market writes 1..6).
  keypoints  float32[4, 2], (x, y) of head top, neck, left hip, right hip
             (`figures.person_keypoints`) as fractions of the crop's width
             and height; outside [0, 1] where the box was clipped by the
             image border.
  visible    float32, the layout's unoccluded fraction of the box.

Crops: the ground-truth box (clipped to the image) rounded outwards to whole
pixels, x0 = floor(x1), y0 = floor(y1), x1 = ceil(x2), y1 = ceil(y2), cut
from the rendered uint8 scene before any JPEG coding. A crop narrower or
shorter than MIN_CROP_PX (8) pixels is skipped (counted in the metadata).

Splits, each ordered by scene, then person slot:

* `train`: every labeled person of the `train` scenes, pid = the scene pid
  (0..K-1). Unlabeled train persons are not used.
* `query` / `gallery`, from the `test` scenes, Market-1501 style. Labeled
  crops keep their scene pid (K..K+T-1, never 0 or -1). Unlabeled persons go
  to the gallery as distractors (pid 0). Labeled crops with visible <
  JUNK_VISIBLE (0.5) go to the gallery as junk (pid -1, ignored by the
  evaluation). Every test identity whose other ("good") crops come from at
  least two cameras gives one query, drawn uniformly among its good crops
  with `make_rng(seed, QUERY_STREAM, pid)`; its other crops go to the
  gallery. Identities seen by one camera only are gallery-only. So every
  query has a good match (same pid, other camera) in the gallery.

Metadata (`builder.info.metadata`): `num_train_ids` (K), `num_test_ids`
(T), `protocol` ("market1501"), `keypoints` (the names, in order),
`num_cameras`, `source` ("synthetic_person_search/<config>"), `generator`
(the `SyntheticConfig` as a dict) and, once built, the counts of
`plan_crops`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
import dataclasses
from typing import Any

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_builders.market1501 import market1501_dataset_builder as market
from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as scenes_builder)
from ps_jax.data import synthetic
from ps_jax.data.synthetic import config as synthetic_config
from ps_jax.data.synthetic import figures

SOURCE = "synthetic_person_search"
SPLITS = ("train", "query", "gallery")
KEYPOINTS = figures.KEYPOINTS  # head_top, neck, left_hip, right_hip
JUNK_PID = market.JUNK_PID  # -1
DISTRACTOR_PID = market.DISTRACTOR_PID  # 0
JUNK_VISIBLE = 0.5  # labeled test crops less visible than this are junk
MIN_CROP_PX = 8  # smaller crops (either side) are skipped
# The query draw's random stream: not one of the generator's streams
# (ps_jax/data/synthetic/config.py numbers them 0..5), so no scene changes.
QUERY_STREAM = 101

# The configs of synthetic_person_search, same names, same generator.
TINY = scenes_builder.TINY
DEFAULT = scenes_builder.DEFAULT
SyntheticReidConfig = scenes_builder.SyntheticPersonSearchConfig


@dataclasses.dataclass(frozen=True)
class Crop:
  """One person crop of the dataset, without its pixels.

  Attributes:
    split: "train", "query" or "gallery".
    scene_split: the scene split it is cut from ("train" or "test").
    scene: index of the scene in `scene_split`.
    slot: index of the person in the scene's boxes.
    image_id: `<scene image id without .jpg>_p<slot>.jpg`.
    pid: the stored pid (see the module docstring).
    camera: the scene's camera.
    visible: the person's unoccluded fraction.
    box: (x0, y0, x1, y1) whole-pixel crop edges, `crop_box` of the box.
    keypoints: f32[4, 2] the KEYPOINTS as fractions of the crop.
  """
  split: str
  scene_split: str
  scene: int
  slot: int
  image_id: str
  pid: int
  camera: int
  visible: float
  box: tuple[int, int, int, int]
  keypoints: np.ndarray


def crop_box(box_xyxy: np.ndarray) -> tuple[int, int, int, int]:
  """A clipped pixel box [x1, y1, x2, y2] rounded outwards to whole pixels."""
  x0, y0 = (int(np.floor(v)) for v in box_xyxy[:2])
  x1, y1 = (int(np.ceil(v)) for v in box_xyxy[2:])
  return x0, y0, x1, y1


def crop_keypoints(keypoints_px: np.ndarray,
                   box: tuple[int, int, int, int]) -> np.ndarray:
  """f32[4, 2] image-pixel keypoints -> fractions of the crop `box`."""
  x0, y0, x1, y1 = box
  kp = np.asarray(keypoints_px, np.float64)
  return ((kp - [x0, y0]) / [x1 - x0, y1 - y0]).astype(np.float32)


def crop_image_id(scene_image_id: str, slot: int) -> str:
  """`test_000123.jpg`, 2 -> `test_000123_p2.jpg`."""
  stem = scene_image_id[:-4] if scene_image_id.endswith(".jpg") else (
      scene_image_id)
  return f"{stem}_p{slot}.jpg"


def _scene_crops(cfg: synthetic.SyntheticConfig, split: str
                 ) -> tuple[list[Crop], int]:
  """Every crop of the `split` scenes big enough to keep, with the scene pid
  (split "" for now), and how many boxes were too small."""
  crops, small = [], 0
  for i in range(cfg.num_scenes(split)):
    lay = synthetic.scene_layout(cfg, split, i)
    for j, (box_xyxy, pid, vis, kp) in enumerate(zip(
        lay.boxes_xyxy, lay.pids, lay.visible, lay.keypoints)):
      box = crop_box(box_xyxy)
      if min(box[2] - box[0], box[3] - box[1]) < MIN_CROP_PX:
        small += 1
        continue
      crops.append(Crop("", split, i, j, crop_image_id(lay.image_id, j),
                        int(pid), lay.camera, float(vis), box,
                        crop_keypoints(kp, box)))
  return crops, small


def plan_crops(cfg: synthetic.SyntheticConfig
               ) -> tuple[dict[str, list[Crop]], dict[str, Any]]:
  """The crops of every split (no pixels) and their counts.

  Deterministic: the same config gives the same crops in the same order
  (scene, then slot) and the same queries.

  Returns:
    ({"train": [...], "query": [...], "gallery": [...]}, counts), counts a
    dict of ints for the metadata.
  """
  train, train_small = _scene_crops(cfg, "train")
  train_labeled = [dataclasses.replace(c, split="train") for c in train
                   if c.pid >= 0]
  test, test_small = _scene_crops(cfg, "test")

  labeled = [c for c in test if c.pid >= 0]
  good = collections.defaultdict(list)  # pid -> crops that are not junk
  for c in labeled:
    if c.visible >= JUNK_VISIBLE:
      good[c.pid].append(c)
  queries = set()  # (scene, slot)
  for pid in sorted(good):
    crops = good[pid]
    if len({c.camera for c in crops}) < 2:
      continue
    # With two cameras or more, every good crop has a good crop of another
    # camera: any of them can be the query.
    rng = synthetic_config.make_rng(cfg.seed, QUERY_STREAM, pid)
    q = crops[int(rng.integers(len(crops)))]
    queries.add((q.scene, q.slot))

  query, gallery = [], []
  counts = collections.Counter()
  for c in test:
    if (c.scene, c.slot) in queries:
      query.append(dataclasses.replace(c, split="query"))
      continue
    if c.pid < 0:
      pid = DISTRACTOR_PID
      counts["num_gallery_distractors"] += 1
    elif c.visible < JUNK_VISIBLE:
      pid = JUNK_PID
      counts["num_gallery_junk"] += 1
    else:
      pid = c.pid
    gallery.append(dataclasses.replace(c, split="gallery", pid=pid))

  counts.update({
      "num_train_crops": len(train_labeled),
      "num_train_ids_seen": len({c.pid for c in train_labeled}),
      "num_train_unlabeled_unused": sum(c.pid < 0 for c in train),
      "num_queries": len(query),
      "num_gallery": len(gallery),
      "num_gallery_ids": len({c.pid for c in gallery
                              if c.pid not in (JUNK_PID, DISTRACTOR_PID)}),
      "num_skipped_small_train": train_small,
      "num_skipped_small_test": test_small,
  })
  for key in ("num_gallery_distractors", "num_gallery_junk"):
    counts.setdefault(key, 0)
  return ({"train": train_labeled, "query": query, "gallery": gallery},
          {k: int(v) for k, v in sorted(counts.items())})


def features() -> tfds.features.FeaturesDict:
  """The Market-1501 re-ID features plus `keypoints` and `visible`."""
  feats = dict(market.reid_features().items())
  feats["keypoints"] = tfds.features.Tensor(shape=(len(KEYPOINTS), 2),
                                            dtype=np.float32)
  feats["visible"] = tfds.features.Scalar(dtype=np.float32)
  return tfds.features.FeaturesDict(feats)


def crop_examples(cfg: synthetic.SyntheticConfig, crops: list[Crop]
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
  """(key, example) of each crop, in order; each scene is rendered once.

  `crops` must be grouped by scene (as `plan_crops` orders them).
  """
  scene = None
  for c in crops:
    if scene is None or (scene["split"], scene["index"]) != (c.scene_split,
                                                              c.scene):
      scene = synthetic.generate_scene(cfg, c.scene_split, c.scene)
      scene.update(split=c.scene_split, index=c.scene)
    if crop_box(scene["boxes_xyxy"][c.slot]) != c.box:
      raise AssertionError(f"{c.image_id}: the scene's box changed between "
                           "planning and rendering")
    x0, y0, x1, y1 = c.box
    yield c.image_id, {
        "image": scenes_builder.encode_jpeg(scene["image"][y0:y1, x0:x1]),
        "image_id": c.image_id,
        "pid": c.pid,
        "camera": c.camera,
        "keypoints": c.keypoints,
        "visible": np.float32(c.visible),
    }


class SyntheticReid(tfds.core.GeneratorBasedBuilder):
  """Person crops with keypoints from the synthetic person-search scenes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIG_CLASS = SyntheticReidConfig
  BUILDER_CONFIGS = [
      SyntheticReidConfig(
          name=c.name, generator=c.generator,
          description=f"Person crops of {SOURCE}/{c.name}: {c.description}")
      for c in scenes_builder.SyntheticPersonSearch.BUILDER_CONFIGS]
  DEFAULT_BUILDER_CONFIG_NAME = (
      scenes_builder.SyntheticPersonSearch.DEFAULT_BUILDER_CONFIG_NAME)

  @property
  def generator_config(self) -> synthetic.SyntheticConfig:
    return self.builder_config.generator

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.generator_config
    return self.dataset_info_from_configs(
        features=features(),
        metadata=tfds.core.MetadataDict(
            num_train_ids=cfg.num_train_ids,
            num_test_ids=cfg.num_test_ids,
            protocol="market1501",
            keypoints=list(KEYPOINTS),
            num_cameras=cfg.num_cameras,
            source=f"{SOURCE}/{self.builder_config.name}",
            generator=dataclasses.asdict(cfg)),
        # Scene, then person slot, in every split: reproducible.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated.
    cfg = self.generator_config
    plan, counts = plan_crops(cfg)
    if not plan["query"]:
      raise ValueError(f"config {self.builder_config.name!r}: no test "
                       "identity is seen by two cameras; use more test "
                       "scenes")
    self.info.metadata.update(counts)
    logging.info("synthetic_reid/%s: %s", self.builder_config.name, counts)
    return {split: self._generate_examples(plan[split]) for split in SPLITS}

  def _generate_examples(self, crops: list[Crop]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    return crop_examples(self.generator_config, crops)
