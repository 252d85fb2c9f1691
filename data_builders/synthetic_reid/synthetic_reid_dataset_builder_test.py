"""Tests of the synthetic re-ID crops builder and of the generator's keypoints.

Plain pytest (TFDS's DatasetBuilderTestCase needs TensorFlow): the `tiny`
config is built once per module into a temporary data_dir (about two
seconds) and read back with `as_data_source`, as the input pipeline does.

That adding keypoints changed no pixel, box or random draw of any scene is
pinned by the golden digests of `tests/data/synthetic_golden_test.py`
(images, boxes, pids and visible fractions of `tiny` and `default` scenes).
"""

import collections
import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image
import pytest

from data_builders import build
from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as scenes_builder)
from data_builders.synthetic_reid import synthetic_reid_dataset_builder as rb
from ps_jax.data import synthetic
from ps_jax.data.synthetic import config as synthetic_config
from ps_jax.data.synthetic import figures

NAME = "synthetic_reid"
CFG = rb.TINY
SPLITS = ("train", "query", "gallery")
HEAD, NECK, LEFT_HIP, RIGHT_HIP = range(4)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tiny_reid")
  build.build_dataset(NAME, "tiny", data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="module")
def records(tiny_dir):
  """split -> list of examples (dicts of numpy values), in record order."""
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  out = {}
  for split in SPLITS:
    source = builder.as_data_source(split)
    out[split] = [source[i] for i in range(len(source))]
  return out


@pytest.fixture(scope="module")
def layouts():
  """(scene split, index) -> the generator's layout of every tiny scene."""
  return {(split, i): synthetic.scene_layout(CFG, split, i)
          for split in synthetic.SPLITS for i in range(CFG.num_scenes(split))}


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def _where(image_id):
  """`test_000012_p3.jpg` -> ("test", 12, 3)."""
  split, scene, slot = _text(image_id)[:-4].split("_")
  return split, int(scene), int(slot[1:])


def _rounded_box(box_xyxy):
  """The crop edges, written out again: outwards to whole pixels."""
  x1, y1, x2, y2 = (float(v) for v in box_xyxy)
  return (int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)),
          int(np.ceil(y2)))


def _person_entity(lay, slot):
  """The layout entity that drew person `slot` (matched by its box)."""
  found = []
  for e in lay.entities:
    if e.person is None:
      continue
    box = np.asarray(e.box, np.float64).copy()
    box[0::2] = np.clip(box[0::2], 0, lay.width)
    box[1::2] = np.clip(box[1::2], 0, lay.height)
    if np.allclose(box.astype(np.float32), lay.boxes_xyxy[slot], atol=1e-4):
      found.append(e)
  assert len(found) == 1, (lay.image_id, slot, len(found))
  return found[0]


# The generator's keypoints.


def test_person_keypoints_follow_the_drawn_body():
  idents = synthetic.make_identities(CFG, "train")
  for n, ident in enumerate(idents):
    for facing in figures.FACINGS:
      h, cx, top = 50.0 + 7 * n, 40.0 + n, 3.0 + n
      kp = figures.person_keypoints(ident, facing, 0.3, h, cx, top)
      prims = figures.person_prims(ident, facing, 0.3, h, cx, top)
      assert kp.shape == (4, 2) and kp.dtype == np.float64
      assert kp[HEAD, 1] < kp[NECK, 1] < kp[LEFT_HIP, 1] == kp[RIGHT_HIP, 1]
      # Head top: the top of a head ellipse centred on the person.
      assert any(p[0] == "ellipse" and np.isclose(p[1][1], kp[HEAD, 1]) and
                 np.isclose((p[1][0] + p[1][2]) / 2, kp[HEAD, 0])
                 for p in prims), (n, facing)
      # Neck and hips: the torso, a trapezoid from the shoulder line (top
      # edge, centred on the neck) to the hip line (bottom edge).
      torso = [p[1] for p in prims if p[0] == "poly" and len(p[1]) == 4 and
               np.isclose(p[1][0][1], kp[NECK, 1]) and
               np.isclose(p[1][1][1], kp[NECK, 1]) and
               np.isclose(p[1][2][1], kp[LEFT_HIP, 1]) and
               np.isclose(p[1][3][1], kp[LEFT_HIP, 1])]
      assert len(torso) == 1, (n, facing)
      (tl, _), (tr, _), (br, _), (bl, _) = torso[0]
      assert np.isclose((tl + tr) / 2, kp[NECK, 0])
      # The person's left hip: image right facing the camera, image left
      # from the back, the hip line's centre in profile.
      left, right = {"front": (br, bl), "back": (bl, br)}.get(
          facing, ((bl + br) / 2, (bl + br) / 2))
      np.testing.assert_allclose(kp[[LEFT_HIP, RIGHT_HIP], 0], [left, right])


def test_person_keypoints_rejects_an_unknown_facing():
  ident = synthetic.make_identities(CFG, "train")[0]
  with pytest.raises(ValueError, match="facing"):
    figures.person_keypoints(ident, "up", 0.0, 50.0, 10.0, 0.0)


def test_scene_keypoints_are_in_box_order(layouts):
  for (split, i), lay in list(layouts.items())[::7]:
    scene = synthetic.generate_scene(CFG, split, i)
    n = len(scene["pids"])
    assert scene["keypoints"].shape == (n, 4, 2)
    assert scene["keypoints"].dtype == np.float32
    np.testing.assert_array_equal(scene["keypoints"], lay.keypoints)
    for j in range(n):
      e = _person_entity(lay, j)
      assert figures.person_prims(*e.person) == e.prims
      np.testing.assert_allclose(
          lay.keypoints[j], figures.person_keypoints(*e.person), rtol=1e-6)


# The dataset.


def test_configs_are_those_of_the_scene_builder():
  scene_configs = scenes_builder.SyntheticPersonSearch.BUILDER_CONFIGS
  assert [(c.name, c.generator) for c in rb.SyntheticReid.BUILDER_CONFIGS] == (
      [(c.name, c.generator) for c in scene_configs])
  assert rb.SyntheticReid.DEFAULT_BUILDER_CONFIG_NAME == "default"
  assert rb.SyntheticReid.name == NAME
  # The query draw does not share a random stream with the generator.
  streams = {v for k, v in vars(synthetic_config).items()
             if k.endswith("_STREAM")}
  assert streams and rb.QUERY_STREAM not in streams


def test_splits_counts_and_metadata(tiny_dir, records, layouts):
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  meta = builder.info.metadata
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sizes == {s: len(records[s]) for s in SPLITS}
  assert sizes["train"] == meta["num_train_crops"]
  assert sizes["query"] == meta["num_queries"] >= 1
  assert sizes["gallery"] == meta["num_gallery"]
  gallery_pids = collections.Counter(int(r["pid"]) for r in records["gallery"])
  assert gallery_pids[rb.DISTRACTOR_PID] == meta["num_gallery_distractors"]
  assert gallery_pids[rb.JUNK_PID] == meta["num_gallery_junk"]
  assert meta["num_train_ids"] == CFG.num_train_ids
  assert meta["num_test_ids"] == CFG.num_test_ids
  assert meta["num_cameras"] == CFG.num_cameras
  assert meta["protocol"] == "market1501"
  assert meta["keypoints"] == ["head_top", "neck", "left_hip", "right_hip"]
  assert meta["source"] == "synthetic_person_search/tiny"
  # metadata.json stores tuples as lists.
  assert meta["generator"] == json.loads(json.dumps(dataclasses.asdict(CFG)))
  assert meta["num_train_ids_seen"] == len(
      {int(r["pid"]) for r in records["train"]})
  # Every box of every scene is a record, an unused unlabeled train person or
  # a skipped small box.
  boxes = {s: sum(len(lay.pids) for (sp, _), lay in layouts.items()
                  if sp == s) for s in synthetic.SPLITS}
  assert boxes["train"] == (sizes["train"] + meta["num_train_unlabeled_unused"]
                            + meta["num_skipped_small_train"])
  assert boxes["test"] == (sizes["query"] + sizes["gallery"]
                           + meta["num_skipped_small_test"])
  # Sorted by scene, then person slot; no crop twice.
  for split in SPLITS:
    where = [_where(r["image_id"]) for r in records[split]]
    assert where == sorted(where) and len(set(where)) == len(where)
    assert {w[0] for w in where} == {"train" if split == "train" else "test"}
  test_crops = [_where(r["image_id"]) for r in records["query"]
                + records["gallery"]]
  assert len(set(test_crops)) == len(test_crops)


def test_train_pids_are_the_labeled_scene_pids(records, layouts):
  assert records["train"]
  for r in records["train"]:
    split, i, j = _where(r["image_id"])
    lay = layouts[(split, i)]
    assert 0 <= r["pid"] < CFG.num_train_ids
    assert r["pid"] == lay.pids[j] and r["camera"] == lay.camera
    assert np.isclose(r["visible"], lay.visible[j])


def test_every_query_has_a_good_match_in_the_gallery(records, layouts):
  k, t = CFG.num_train_ids, CFG.num_test_ids
  gallery = [(int(r["pid"]), int(r["camera"])) for r in records["gallery"]]
  query_pids = [int(r["pid"]) for r in records["query"]]
  assert len(set(query_pids)) == len(query_pids)  # one query per identity
  for r in records["query"]:
    pid, cam = int(r["pid"]), int(r["camera"])
    assert k <= pid < k + t  # never 0 (distractor) nor -1 (junk)
    assert r["visible"] >= rb.JUNK_VISIBLE
    assert any(p == pid and c != cam for p, c in gallery), r["image_id"]
    _, i, j = _where(r["image_id"])
    assert layouts[("test", i)].pids[j] == pid
  # Identities left without a query are seen by one camera only.
  cams = collections.defaultdict(set)
  for r in records["gallery"]:
    if r["pid"] >= k:
      cams[int(r["pid"])].add(int(r["camera"]))
  for pid, seen in cams.items():
    assert pid in query_pids or len(seen) == 1, pid


def test_gallery_distractors_and_junk(records, layouts):
  k, t = CFG.num_train_ids, CFG.num_test_ids
  pids = [int(r["pid"]) for r in records["gallery"]]
  assert rb.DISTRACTOR_PID in pids
  for r in records["gallery"]:
    _, i, j = _where(r["image_id"])
    scene_pid = int(layouts[("test", i)].pids[j])
    if r["pid"] == rb.DISTRACTOR_PID:
      assert scene_pid == -1  # an unlabeled test person
    elif r["pid"] == rb.JUNK_PID:
      assert k <= scene_pid < k + t and r["visible"] < rb.JUNK_VISIBLE
    else:
      assert r["pid"] == scene_pid and r["visible"] >= rb.JUNK_VISIBLE


def test_crops_are_the_rounded_boxes_of_the_scenes(records, layouts):
  scenes = {}
  for split in SPLITS:
    for n, r in enumerate(records[split]):
      scene_split, i, j = _where(r["image_id"])
      lay = layouts[(scene_split, i)]
      x0, y0, x1, y1 = _rounded_box(lay.boxes_xyxy[j])
      assert 0 <= x0 < x1 <= lay.width and 0 <= y0 < y1 <= lay.height
      assert r["image"].shape == (y1 - y0, x1 - x0, 3)
      assert min(x1 - x0, y1 - y0) >= rb.MIN_CROP_PX
      assert r["image"].dtype == np.uint8
      assert r["camera"] == lay.camera
      if n < 3:  # the pixels: the rendered scene cut, then JPEG-coded once
        key = (scene_split, i)
        if key not in scenes:
          scenes[key] = synthetic.generate_scene(CFG, scene_split, i)["image"]
        crop = scenes[key][y0:y1, x0:x1]
        jpeg = Image.open(io.BytesIO(scenes_builder.encode_jpeg(crop)))
        np.testing.assert_array_equal(r["image"], np.asarray(jpeg))


def test_keypoints_in_the_crops(records, layouts):
  for split in SPLITS:
    for r in records[split]:
      kp = r["keypoints"]
      assert kp.shape == (4, 2) and kp.dtype == np.float32
      assert kp[HEAD, 1] < kp[NECK, 1] < kp[LEFT_HIP, 1]
      assert kp[NECK, 1] < kp[RIGHT_HIP, 1]
      scene_split, i, j = _where(r["image_id"])
      lay = layouts[(scene_split, i)]
      x0, y0, x1, y1 = _rounded_box(lay.boxes_xyxy[j])
      if x0 > 0 and y0 > 0 and x1 < lay.width and y1 < lay.height:
        # An unclipped box holds the whole person.
        assert np.all((kp >= 0) & (kp <= 1)), r["image_id"]
      else:
        # A clipped one holds >= 70% of the person's width (layout.py), so
        # a keypoint is at most 0.3 / 0.7 of the crop outside it.
        assert np.all((kp >= -0.45) & (kp <= 1.45)), r["image_id"]


def test_keypoints_recomputed_from_the_drawn_person(records, layouts):
  checked = 0
  for split in SPLITS:
    for r in records[split][::3]:
      scene_split, i, j = _where(r["image_id"])
      lay = layouts[(scene_split, i)]
      e = _person_entity(lay, j)
      assert figures.person_prims(*e.person) == e.prims
      x0, y0, x1, y1 = _rounded_box(lay.boxes_xyxy[j])
      kp = figures.person_keypoints(*e.person)
      expected = np.stack([(kp[:, 0] - x0) / (x1 - x0),
                           (kp[:, 1] - y0) / (y1 - y0)], axis=1)
      np.testing.assert_allclose(r["keypoints"], expected, atol=1e-5)
      checked += 1
  assert checked >= 10


def test_plan_is_deterministic():
  a, counts_a = rb.plan_crops(CFG)
  b, counts_b = rb.plan_crops(CFG)
  assert counts_a == counts_b
  for split in SPLITS:
    assert len(a[split]) == len(b[split])
    for x, y in zip(a[split], b[split]):
      np.testing.assert_array_equal(x.keypoints, y.keypoints)
      assert dataclasses.replace(x, keypoints=None) == (
          dataclasses.replace(y, keypoints=None))


def test_same_config_same_bytes(tiny_dir, tmp_path):
  again = build.build_dataset(NAME, "tiny", data_dir=tmp_path)
  first = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  for split in SPLITS:
    name = f"{NAME}-{split}.array_record-00000-of-00001"
    with open(os.path.join(first.data_dir, name), "rb") as a, open(
        os.path.join(again.data_dir, name), "rb") as b:
      assert a.read() == b.read(), split


def test_crop_helpers():
  assert rb.crop_box(np.array([3.2, 0.0, 10.0, 20.5], np.float32)) == (
      3, 0, 10, 21)
  assert rb.crop_image_id("test_000123.jpg", 2) == "test_000123_p2.jpg"
  np.testing.assert_allclose(
      rb.crop_keypoints(np.array([[5.0, 10.0], [15.0, 0.0]]), (5, 0, 15, 20)),
      [[0.0, 0.5], [1.0, 0.0]])


def test_command_line(tiny_dir, capsys):
  assert build.main(["list"]) == 0
  assert "synthetic_reid: configs ['tiny', 'default']" in (
      capsys.readouterr().out)
  assert build.main(["build", NAME, "--config", "tiny",
                     "--data_dir", str(tiny_dir)]) == 0  # reuses it
  out = capsys.readouterr().out
  assert "'query'" in out and "num_queries" in out
