"""Tests of the procedural person-search scene generator."""

import collections
import dataclasses

import numpy as np
import pytest
from PIL import Image

from data_builders import build
from ps_jax.data import schema
from ps_jax.data import synthetic

# Small enough that every test renders in well under a second.
SMALL = synthetic.SyntheticConfig(
    seed=3, image_size_range=(64, 112), num_train_ids=8, num_test_ids=6,
    num_train_scenes=24, num_test_scenes=30, num_cameras=3,
    persons_per_scene=(1, 4), min_person_px=12, gallery_sizes=(8, 16),
    max_gallery_targets=3)


def _layouts(cfg, split):
  return [synthetic.scene_layout(cfg, split, i)
          for i in range(cfg.num_scenes(split))]


def _same_scene(a, b):
  assert a["image_id"] == b["image_id"]
  assert a["camera"] == b["camera"]
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["boxes_xyxy"], b["boxes_xyxy"])
  np.testing.assert_array_equal(a["pids"], b["pids"])


def test_same_seed_same_scene_even_with_cold_caches():
  first = synthetic.generate_scene(SMALL, "train", 5)
  synthetic.identities._IDENTITY_CACHE.clear()
  synthetic.render._NOISE_CACHE.clear()
  _same_scene(first, synthetic.generate_scene(SMALL, "train", 5))


def test_scene_does_not_depend_on_how_many_are_generated():
  few = dataclasses.replace(SMALL, num_train_scenes=8, num_test_scenes=17,
                            gallery_sizes=(8,))
  many = list(synthetic.generate_split(SMALL, "train", stop=8))
  for i, scene in enumerate(synthetic.generate_split(few, "train")):
    _same_scene(scene, many[i])
  _same_scene(next(synthetic.generate_split(SMALL, "test", start=12)),
              synthetic.generate_scene(few, "test", 12))


def test_other_seed_other_scenes():
  other = dataclasses.replace(SMALL, seed=4)
  a = synthetic.generate_scene(SMALL, "train", 0)["image"]
  b = synthetic.generate_scene(other, "train", 0)["image"]
  assert a.shape != b.shape or not np.array_equal(a, b)


@pytest.mark.parametrize("split", ["train", "test"])
def test_scene_arrays_and_boxes_inside_image(split):
  lo, hi = SMALL.image_size_range
  k, t = SMALL.num_train_ids, SMALL.num_test_ids
  lo_pid, hi_pid = (0, k) if split == "train" else (k, k + t)
  for i, scene in enumerate(synthetic.generate_split(SMALL, split)):
    img = scene["image"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    h, w = img.shape[:2]
    assert lo <= h <= hi and lo <= w <= hi
    assert scene["image_id"] == f"{split}_{i:06d}.jpg"
    assert 0 <= scene["camera"] < SMALL.num_cameras
    boxes, pids = scene["boxes_xyxy"], scene["pids"]
    assert boxes.dtype == np.float32 and boxes.shape == (len(pids), 4)
    assert pids.dtype == np.int32
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= w)
    assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= h)
    # Persons are at least min_person_px tall and mostly inside the image.
    assert np.all(boxes[:, 3] - boxes[:, 1] >= SMALL.min_person_px - 1)
    assert np.all(boxes[:, 2] - boxes[:, 0] >= 2)
    labeled = pids[pids >= 0]
    assert np.all((pids == schema.UNLABELED_PID) | (pids >= 0))
    assert np.all((labeled >= lo_pid) & (labeled < hi_pid))
    assert len(set(labeled.tolist())) == len(labeled)  # no one twice


def test_train_and_test_identities_are_disjoint():
  train = {int(p) for lay in _layouts(SMALL, "train") for p in lay.pids}
  test = {int(p) for lay in _layouts(SMALL, "test") for p in lay.pids}
  train.discard(-1)
  test.discard(-1)
  assert train and test and not train & test
  looks = [i.signature() for s in synthetic.SPLITS
           for i in synthetic.make_identities(SMALL, s)]
  assert len(set(looks)) == len(looks)


def test_every_train_identity_appears_and_some_people_are_unlabeled():
  pids = np.concatenate([lay.pids for lay in _layouts(SMALL, "train")])
  assert set(pids[pids >= 0].tolist()) == set(range(SMALL.num_train_ids))
  assert np.any(pids == schema.UNLABELED_PID)


def test_occlusion_happens_but_hidden_people_are_not_annotated():
  vis = np.concatenate([lay.visible for s in synthetic.SPLITS
                        for lay in _layouts(SMALL, s)])
  assert np.all((vis >= SMALL.min_visible) & (vis <= 1.0))
  assert np.any(vis < 0.9)  # partial occlusion by people or objects


def test_empty_scenes_are_rendered_with_no_boxes():
  empty = dataclasses.replace(SMALL, empty_scene_prob=1.0, max_distractors=0)
  scene = synthetic.generate_scene(empty, "train", 2)
  assert scene["boxes_xyxy"].shape == (0, 4) and scene["pids"].shape == (0,)
  assert scene["image"].std() > 0  # a textured background, not a blank
  counts = [len(lay.pids) for lay in _layouts(SMALL, "train")]
  assert min(counts) >= 0 and max(counts) <= SMALL.persons_per_scene[1]


def _drawn_extent(prims, size):
  """Continuous xyxy extent of the pixels the primitives paint."""
  im = Image.new("RGB", size)
  synthetic.draw_prims(im, [p for p in prims if p[0] != "shadow"])
  ys, xs = np.nonzero(np.asarray(im).any(axis=2))
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.mark.parametrize("facing", synthetic.FACINGS)
def test_person_box_is_tight_around_the_drawn_person(facing):
  rng = np.random.default_rng(0)
  for _ in range(6):
    ident = synthetic.random_identity(rng)
    height = float(rng.uniform(30, 120))
    prims = synthetic.person_prims(ident, facing, float(rng.uniform()),
                                   height, 80.5, 10.25)
    box = synthetic.prims_box(prims)
    drawn = _drawn_extent(prims, (160, 150))
    # PIL rounds vertices to pixels: allow one pixel on each side.
    np.testing.assert_allclose(drawn, box, atol=1.5)
    assert box[3] - box[1] == pytest.approx(height)


def test_layout_boxes_are_the_clipped_extents_of_drawn_people():
  for lay in _layouts(SMALL, "test")[:10]:
    people = [e for e in lay.entities if e.pid is not None]
    assert len(people) == len(lay.pids)
    ext = np.array([synthetic.prims_box(e.prims) for e in people])
    ext = ext.reshape(-1, 4)
    ext[:, 0::2] = np.clip(ext[:, 0::2], 0, lay.width)
    ext[:, 1::2] = np.clip(ext[:, 1::2], 0, lay.height)
    got = sorted(map(tuple, lay.boxes_xyxy.astype(np.float64).round(3)))
    want = sorted(map(tuple, ext.round(3)))
    np.testing.assert_allclose(got, want, atol=1e-3)
    # Entities are drawn far to near.
    depths = [e.depth for e in lay.entities]
    assert depths == sorted(depths)


def test_cameras_differ_and_strength_zero_is_neutral():
  cams = [synthetic.make_camera(SMALL, c) for c in range(SMALL.num_cameras)]
  assert len({c.cast for c in cams}) == len(cams)
  assert len({c.style for c in cams}) > 1
  flat = synthetic.make_camera(
      dataclasses.replace(SMALL, camera_strength=0.0), 1)
  assert flat.gain == 1.0 and flat.gamma == 1.0 and flat.cast == (1, 1, 1)


def test_queries_follow_the_cuhk_protocol():
  layouts = _layouts(SMALL, "test")
  by_id = {lay.image_id: lay for lay in layouts}
  queries = synthetic.generate_queries(SMALL)
  assert queries
  assert len({q["query_pid"] for q in queries}) == len(queries)
  for q in queries:
    lay = layouts[q["index"]]
    pid = q["query_pid"]
    assert lay.image_id == q["image_id"] and lay.camera == q["camera"]
    assert SMALL.num_train_ids <= pid < SMALL.num_train_ids + SMALL.num_test_ids
    # The query box is the box of that person in the query image.
    j = int(np.flatnonzero(lay.pids == pid)[0])
    np.testing.assert_array_equal(q["query_box_xyxy"], lay.boxes_xyxy[j])
    targets = set(q["target_image_ids"])
    assert 1 <= len(targets) <= SMALL.max_gallery_targets
    previous = set()
    for n in sorted(SMALL.gallery_sizes):
      gallery = q["galleries"][n]
      assert len(gallery) == n == len(set(gallery))
      assert q["image_id"] not in gallery
      assert targets <= set(gallery)
      assert previous <= set(gallery)  # smaller galleries are subsets
      previous = set(gallery)
      for image_id in gallery:
        has = pid in by_id[image_id].pids
        assert has == (image_id in targets)  # distractors lack the target
        if has:
          assert by_id[image_id].camera != q["camera"]
  again = synthetic.generate_queries(SMALL)
  assert [(a["image_id"], a["query_pid"], a["galleries"]) for a in again] == [
      (b["image_id"], b["query_pid"], b["galleries"]) for b in queries]


@pytest.mark.parametrize("change, field", [
    (dict(image_size_range=(16, 64)), "image_size_range"),
    (dict(num_cameras=1), "num_cameras"),
    (dict(persons_per_scene=(3, 2)), "persons_per_scene"),
    (dict(gallery_sizes=(8, 30)), "gallery_sizes"),
    (dict(num_train_ids=0), "num_train_ids"),
    (dict(min_person_px=40), "min_person_px"),
])
def test_bad_config_names_the_field(change, field):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(SMALL, **change)


def test_bad_split_or_index():
  with pytest.raises(ValueError, match="split"):
    synthetic.generate_scene(SMALL, "val", 0)
  with pytest.raises(IndexError, match="scene 24 of train"):
    synthetic.generate_scene(SMALL, "train", 24)


def test_test_identities_reappear_across_cameras():
  seen = collections.defaultdict(set)
  for lay in _layouts(SMALL, "test"):
    for p in lay.pids[lay.pids >= 0]:
      seen[int(p)].add(lay.camera)
  assert sum(len(c) >= 2 for c in seen.values()) >= SMALL.num_test_ids // 2


def test_tiny_fixture_holds_the_tiny_build(tiny_synthetic_dir):
  builder = build.load_builder("synthetic_person_search", "tiny",
                               data_dir=tiny_synthetic_dir)
  assert builder.data_dir.startswith(tiny_synthetic_dir)
  assert builder.info.splits["train"].num_examples > 0
  assert builder.info.splits["query"].num_examples > 0
