"""Dataset settings, splits, random streams and image ids.

Every scene, identity, camera and query draws from its own
`np.random.default_rng([seed, stream, ...])` (`make_rng`), so scene i of a
split is the same whatever other scenes are generated.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "test")
SPLIT_CODE = {"train": 0, "test": 1}

# Random streams: the first entropy word after the seed, so that identities,
# cameras, scene layouts, scene textures and queries never share draws.
(IDENTITY_STREAM, CAMERA_STREAM, LAYOUT_STREAM, RENDER_STREAM, QUERY_STREAM,
 PERM_STREAM) = range(6)


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
  num_test_ids: int = 600
  num_train_scenes: int = 2000
  num_test_scenes: int = 1000
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
    check_split(split)
    return self.num_train_scenes if split == "train" else self.num_test_scenes


def check_split(split: str) -> None:
  """Raises ValueError unless `split` is one of SPLITS."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def make_rng(*words: int) -> np.random.Generator:
  """The random stream of `words` (the seed, a stream, then indices)."""
  return np.random.default_rng([int(w) for w in words])


def image_id(split: str, index: int) -> str:
  """The image id of scene `index` of `split`."""
  return f"{split}_{index:06d}.jpg"
