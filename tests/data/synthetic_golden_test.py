"""Golden hashes of the synthetic generator's output.

The synthetic benchmark is defined by the generator's exact output: a change
of one random draw or one drawing call changes every dataset built after it,
and results are no longer comparable with earlier runs. These tests pin
sha256 digests of a few scenes (pixels and annotations) and of the query
protocol of the two configs the TFDS builder builds, `tiny` and `default`.

If a change of the generator is intended, re-record the digests (printed in
the assertion message) and say in the commit that datasets must be rebuilt.
"""

import hashlib

import numpy as np
import pytest

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as builder_lib)
from ps_jax.data import synthetic

CONFIGS = {"tiny": builder_lib.TINY, "default": builder_lib.DEFAULT}
# A few scenes of each split, not only the first ones.
SCENES = (0, 1, 17)

SCENE_DIGESTS = {
    "tiny": "714a352d5deab56481fd09311ef21b3141957afb088121195d28415c1b565f12",
    "default":
        "636bd1cf3e1088382f298d8c7349997c70bf7f678e189de409f5be26c01d45f5",
}
QUERY_DIGESTS = {
    "tiny": "0507201090a5b3e4885ffc17ee12e18af85be5c4acae1dfeeb4b30ffe833d581",
    "default":
        "81d19291e094636303a42f65dff1af75c8f6227017132f4ce13a83f303fe9af8",
}


def _add_array(h, a: np.ndarray) -> None:
  a = np.ascontiguousarray(a)
  h.update(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.tobytes())


def _add_str(h, s) -> None:
  h.update(f"{len(str(s))}:{s};".encode())


def _scenes_digest(cfg: synthetic.SyntheticConfig) -> str:
  h = hashlib.sha256()
  for split in synthetic.SPLITS:
    for i in SCENES:
      scene = synthetic.generate_scene(cfg, split, i)
      _add_str(h, scene["image_id"])
      _add_str(h, scene["camera"])
      for key in ("image", "boxes_xyxy", "pids", "visible"):
        _add_array(h, scene[key])
  return h.hexdigest()


def _queries_digest(cfg: synthetic.SyntheticConfig) -> str:
  h = hashlib.sha256()
  for q in synthetic.generate_queries(cfg):
    for key in ("index", "image_id", "camera", "query_pid"):
      _add_str(h, q[key])
    _add_array(h, q["query_box_xyxy"])
    for n in sorted(q["galleries"]):
      _add_str(h, n)
      for image_id in q["galleries"][n]:
        _add_str(h, image_id)
    for image_id in q["target_image_ids"]:
      _add_str(h, image_id)
  return h.hexdigest()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scenes_match_golden_digest(name):
  got = _scenes_digest(CONFIGS[name])
  assert got == SCENE_DIGESTS[name], f"{name} scenes: sha256 {got}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_queries_match_golden_digest(name):
  got = _queries_digest(CONFIGS[name])
  assert got == QUERY_DIGESTS[name], f"{name} queries: sha256 {got}"
