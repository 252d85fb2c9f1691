"""Tests of ps_jax.data.pipeline on an in-memory data source.

The source is a list of dicts exactly as a TFDS ArrayRecord data source
returns scene records (schema.py): `persons.bbox` a list of (4,) arrays,
`persons.pid` a list of ints, `image_id` bytes, `image` encoded bytes (as
`pipeline.data_source` serves them) or a decoded uint8 array.
"""

import io
import os
import re
import shutil

import grain
import numpy as np
import pytest
from PIL import Image

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as spsb)
from ps_jax.data import augment
from ps_jax.data import orientation
from ps_jax.data import pipeline

# The synthetic builder's version: the folder its datasets are built in.
_VERSION = str(spsb.SyntheticPersonSearch.VERSION)

SCALES = ((48, 64), (64, 96), (80, 128))
CANVASES = {augment.padded_size(s, 16) for s in SCALES}


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def make_source(n=10, *, seed=0, max_people=3, encode=True):
  """n scene records of varied sizes (both orientations, some empty)."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(n):
    h, w = (int(rng.integers(40, 90)), int(rng.integers(40, 120)))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    k = i % (max_people + 1)
    y1, x1 = rng.uniform(0, 0.6, k), rng.uniform(0, 0.6, k)
    boxes = [np.array([y1[j], x1[j], y1[j] + rng.uniform(0.1, 0.4),
                       x1[j] + rng.uniform(0.1, 0.4)], np.float32)
             for j in range(k)]
    pids = [np.int64(rng.integers(-1, 5)) for _ in range(k)]
    records.append({"image": _png(image) if encode else image,
                    "image_id": f"scene_{i:03d}.png".encode(),
                    "camera": np.int64(i % 2),
                    "persons": {"bbox": boxes, "pid": pids}})
  return records


def _cfg(**kw):
  c = dict(batch_size=2, train_scales=SCALES, test_scale=(64, 96),
           max_boxes=4, normalization="imagenet_rgb", size_divisor=16,
           num_threads=1, prefetch=1)
  c.update(kw)
  return pipeline.PipelineConfig(**c)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _iterator(source, cfg=None, seed=0, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return pipeline.train_iterator(source, cfg or _cfg(), seed, **kw)


def _original_boxes_px(record):
  h, w = Image.open(io.BytesIO(record["image"])).size[::-1]
  yxyx = np.asarray(record["persons"]["bbox"], np.float32).reshape(-1, 4)
  return yxyx[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32), (h, w)


def test_train_batch_keys_dtypes_and_content():
  source = make_source(10)
  cfg = _cfg()
  for batch in _take(_iterator(source, cfg), 6):
    assert set(batch) == set(pipeline.TRAIN_KEYS)
    b, hh, ww, _ = batch["image"].shape
    assert b == 2 and (hh, ww) in CANVASES
    expected = {"image": np.float32, "boxes_xyxy": np.float32,
                "pids": np.int32, "boxes_valid": np.bool_,
                "image_hw": np.int32, "orig_hw": np.int32,
                "scale": np.float32, "index": np.int32}
    for k, dt in expected.items():
      assert batch[k].dtype == dt, k
    assert batch["boxes_xyxy"].shape == (2, 4, 4)
    assert batch["scale"].shape == batch["index"].shape == (2,)
    for i in range(2):
      rec = source[batch["index"][i]]
      boxes, (h, w) = _original_boxes_px(rec)
      np.testing.assert_array_equal(batch["orig_hw"][i], [h, w])
      ih, iw = batch["image_hw"][i]
      assert ih <= hh and iw <= ww
      # Outside the resized content the canvas is the (normalized) pad 0.
      assert not batch["image"][i, ih:].any()
      assert not batch["image"][i, :, iw:].any()
      valid = batch["boxes_valid"][i]
      assert valid.sum() == len(boxes)
      assert not valid[len(boxes):].any()
      np.testing.assert_array_equal(batch["pids"][i][valid],
                                    rec["persons"]["pid"])
      np.testing.assert_array_equal(batch["pids"][i][~valid], -1)
      got = batch["boxes_xyxy"][i][valid]
      # Up to a horizontal flip, boxes are the originals scaled per axis.
      factors = np.array([iw / w, ih / h, iw / w, ih / h], np.float32)
      ref = boxes * factors
      ref_flip = np.stack([iw - ref[:, 2], ref[:, 1], iw - ref[:, 0],
                           ref[:, 3]], -1)
      assert (np.allclose(got, ref, atol=1e-3)
              or np.allclose(got, ref_flip, atol=1e-3))


def test_one_bucket_per_batch_from_seed_and_batch_index():
  cfg = _cfg(batch_size=3)
  batches = _take(_iterator(make_source(7), cfg, seed=5), 12)
  seen = set()
  for k, batch in enumerate(batches):
    bucket = SCALES[pipeline.bucket_index(5, k, len(SCALES))]
    assert batch["image"].shape[1:3] == augment.padded_size(bucket, 16)
    for hw in batch["image_hw"]:
      # The content fits the bucket itself, not only the padded canvas.
      assert hw[0] <= bucket[0] and hw[1] <= bucket[1]
    seen.add(bucket)
  assert seen == set(SCALES)
  # The draw depends on (seed, batch index) only.
  assert [pipeline.bucket_index(5, k, 3) for k in range(20)] == [
      pipeline.bucket_index(5, k, 3) for k in range(20)]
  assert [pipeline.bucket_index(5, k, 3) for k in range(20)] != [
      pipeline.bucket_index(6, k, 3) for k in range(20)]


def test_same_seed_same_batches_different_seed_differs():
  source = make_source(9)
  a = _take(_iterator(source, seed=3), 5)
  b = _take(_iterator(source, seed=3), 5)
  _assert_batches_equal(a, b)
  c = _take(_iterator(source, seed=4), 5)
  assert any(not np.array_equal(x["index"], y["index"])
             or x["image"].shape != y["image"].shape
             for x, y in zip(a, c))


def test_each_epoch_visits_every_record_once_and_reshuffles():
  source = make_source(8)
  batches = _take(_iterator(source, _cfg(batch_size=2), seed=1), 8)
  idx = np.concatenate([b["index"] for b in batches])
  assert sorted(idx[:8]) == list(range(8))
  assert sorted(idx[8:]) == list(range(8))
  assert list(idx[:8]) != list(idx[8:])


def test_restore_from_state_continues_exactly():
  source = make_source(7)
  it = _iterator(source, seed=2)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 6)  # crosses an epoch boundary (7 records, batch 2)
  fresh = _iterator(source, seed=2)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 6), expected)


def test_restore_through_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  source = make_source(6)
  it = _iterator(source, seed=0)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 3)
    fresh = _iterator(source, seed=0)
    mngr.restore(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 3), expected)


@pytest.mark.parametrize("portrait", [False, True])
@pytest.mark.parametrize("process_count", [2, 3])
def test_processes_split_the_one_process_batches(process_count, portrait):
  # The global stream (ps_jax.data.order): n processes of B examples read,
  # slice by slice, exactly the batches of one process of n x B, with the
  # same flips, buckets and images.
  source = make_source(7, seed=5)
  cfg = _cfg(batch_size=2, flip_prob=0.5, portrait_buckets=portrait)
  one = _take(_iterator(source, _cfg(batch_size=2 * process_count,
                                     flip_prob=0.5,
                                     portrait_buckets=portrait), seed=3), 5)
  per = [_take(_iterator(source, cfg, seed=3, process_index=p,
                         process_count=process_count), 5)
         for p in range(process_count)]
  joined = [{k: np.concatenate([bs[i][k] for bs in per]) for k in one[i]}
            for i in range(5)]
  _assert_batches_equal(joined, one)


def test_one_epoch_of_two_processes_covers_every_record_once():
  source = make_source(8)
  per = [_take(_iterator(source, _cfg(batch_size=1), seed=0,
                         process_index=p, process_count=2), 4)
         for p in range(2)]
  seen = [int(b["index"][0]) for bs in per for b in bs]
  assert sorted(seen) == list(range(8))


def test_processes_draw_the_same_buckets():
  source = make_source(9)
  shapes = [[b["image"].shape for b in _take(
      _iterator(source, seed=7, process_index=p, process_count=3), 8)]
            for p in range(3)]
  assert shapes[0] == shapes[1] == shapes[2]


def test_image_without_people_is_kept():
  source = make_source(4, max_people=3)  # record 0 has no people
  batches = _take(_iterator(source, _cfg(batch_size=4)), 1)
  row = list(batches[0]["index"]).index(0)
  assert not batches[0]["boxes_valid"][row].any()


def test_too_many_people_names_image_and_setting():
  source = make_source(4, max_people=3)  # record 3 has 3 people
  it = _iterator(source, _cfg(batch_size=4, max_boxes=2))
  with pytest.raises(ValueError, match=r"scene_003\.png.*max_boxes=2"):
    next(it)


def test_corrupt_image_names_the_image():
  source = make_source(4)
  source[2] = dict(source[2], image=b"\xff\xd8\xff garbage")
  it = _iterator(source, _cfg(batch_size=4))
  with pytest.raises(ValueError, match=r"scene_002\.png"):
    next(it)


def test_degenerate_box_dropped():
  source = make_source(1, max_people=0)
  # A 1-px-wide person in a >= 40-px image becomes < 1 px wide once the
  # image is shrunk into the 24x24 bucket.
  rec = dict(source[0])
  h, w = Image.open(io.BytesIO(rec["image"])).size[::-1]
  thin = np.array([0.1, 0.2, 0.5, 0.2 + 1.0 / w], np.float32)
  rec["persons"] = {"bbox": [thin, np.array([0.1, 0.1, 0.9, 0.9],
                                            np.float32)],
                    "pid": [np.int64(3), np.int64(4)]}
  cfg = _cfg(batch_size=1, train_scales=((24, 24),), test_scale=(24, 24),
             min_box_size=1.0)
  eval_batch = next(pipeline.eval_batches([rec], cfg, process_index=0,
                                          process_count=1))
  for batch in (eval_batch, next(_iterator([rec], cfg))):
    # Exactly one of the record's two boxes was dropped: the thin one.
    assert len(rec["persons"]["pid"]) - batch["boxes_valid"][0].sum() == 1
    np.testing.assert_array_equal(batch["boxes_valid"][0],
                                  [True, False, False, False])
    assert batch["pids"][0, 0] == 4


def test_decoded_and_encoded_sources_agree():
  a = _take(_iterator(make_source(5, encode=True), seed=1), 3)
  b = _take(_iterator(make_source(5, encode=False), seed=1), 3)
  _assert_batches_equal(a, b)


def test_eval_order_padding_and_round_trip():
  source = make_source(7)
  cfg = _cfg(eval_batch_size=3)
  batches = list(pipeline.eval_batches(source, cfg, process_index=0,
                                       process_count=1))
  assert len(batches) == 3 == pipeline.num_eval_batches(7, 3)
  assert all(set(b) == set(pipeline.EVAL_KEYS) for b in batches)
  valid = np.concatenate([b["example_valid"] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 7 + [False] * 2)
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index, list(range(7)) + [-1, -1])
  ids = np.concatenate([b["image_id"] for b in batches])
  assert list(ids[:7]) == [f"scene_{i:03d}.png" for i in range(7)]
  assert list(ids[7:]) == ["", ""]
  canvas = augment.padded_size((64, 96), 16)
  for b in batches:
    assert b["image"].shape == (3,) + canvas + (3,)
  last = batches[-1]
  assert not last["image"][1:].any() and not last["boxes_valid"][1:].any()
  assert (last["scale"][1:] == 1).all()
  # Boxes map back to the original pixels (exactly per axis; within half a
  # network pixel through 1 / scale). No flip in evaluation.
  for b in batches:
    for i in np.nonzero(b["example_valid"])[0]:
      boxes, (h, w) = _original_boxes_px(source[b["index"][i]])
      np.testing.assert_array_equal(b["orig_hw"][i], [h, w])
      ih, iw = b["image_hw"][i]
      s, size = augment.fit_scale((h, w), (64, 96))
      assert (ih, iw) == size and b["scale"][i] == pytest.approx(s)
      got = b["boxes_xyxy"][i][b["boxes_valid"][i]]
      back = got * np.array([w / iw, h / ih, w / iw, h / ih])
      np.testing.assert_allclose(back, boxes, atol=1e-3)
      np.testing.assert_allclose(got / b["scale"][i], boxes,
                                 atol=0.5 / b["scale"][i] + 1e-3)


def test_eval_is_deterministic_and_unaugmented():
  source = make_source(4)
  cfg = _cfg(eval_batch_size=2, flip_prob=1.0)
  a = list(pipeline.eval_batches(source, cfg, process_index=0,
                                 process_count=1))
  b = list(pipeline.eval_batches(source, cfg, process_index=0,
                                 process_count=1))
  _assert_batches_equal(a, b)
  rec = source[0]
  image = np.asarray(Image.open(io.BytesIO(rec["image"])))
  s, (nh, nw) = augment.fit_scale(image.shape[:2], (64, 96))
  ref = np.asarray(Image.fromarray(image).resize((nw, nh),
                                                 Image.Resampling.BILINEAR))
  ref = (ref - np.array(augment.IMAGENET_RGB_MEAN)) / np.array(
      augment.IMAGENET_RGB_STD)
  np.testing.assert_allclose(a[0]["image"][0, :nh, :nw], ref, atol=1e-4)


def test_eval_multi_process_lines_up():
  source = make_source(7)
  cfg = _cfg(eval_batch_size=2)
  per = [list(pipeline.eval_batches(source, cfg, process_index=p,
                                    process_count=2)) for p in range(2)]
  assert len(per[0]) == len(per[1]) == pipeline.num_eval_batches(7, 2, 2)
  idx = [np.concatenate([b["index"][b["example_valid"]] for b in bs])
         for bs in per]
  np.testing.assert_array_equal(idx[0], [0, 2, 4, 6])
  np.testing.assert_array_equal(idx[1], [1, 3, 5])


def test_config_from_section_and_overrides():
  common = pytest.importorskip("configs.common")
  section = common.data([(48, 64)], (64, 96), batch_size=8, max_boxes=5)
  cfg = pipeline.PipelineConfig.from_config(section, batch_size=4)
  assert cfg.batch_size == 4 and cfg.train_scales == ((48, 64),)
  assert cfg.test_scale == (64, 96) and cfg.per_process_eval_batch_size == 8
  with pytest.raises(ValueError, match="flip_prb"):
    pipeline.PipelineConfig.from_config(section, flip_prb=0.5)
  with pytest.raises(ValueError, match="normalization"):
    pipeline.PipelineConfig.from_config(section, normalization="rgb")
  with pytest.raises(ValueError, match="train_scales"):
    pipeline.PipelineConfig.from_config(section, train_scales=[])


def test_worker_processes_give_the_same_batches():
  source = make_source(6)
  expected = _take(_iterator(source, seed=4), 3)
  it = _iterator(source, _cfg(num_workers=1), seed=4)
  try:
    _assert_batches_equal(_take(it, 3), expected)
  finally:
    del it


def test_synthetic_tfds_source(tiny_synthetic_dir):
  from data_builders import build  # pylint: disable=g-import-not-at-top
  builder = build.load_builder("synthetic_person_search", "tiny",
                               data_dir=tiny_synthetic_dir)
  raw = pipeline.data_source(builder, "train")
  decoded = builder.as_data_source("train")
  assert isinstance(raw[0]["image"], bytes)  # JPEG left for us to decode
  assert decoded[0]["image"].dtype == np.uint8  # TFDS decoded it
  cfg = _cfg(batch_size=4, max_boxes=12, normalization="caffe_bgr",
             train_scales=((96, 128), (128, 160)), test_scale=(128, 160))
  a = _take(_iterator(raw, cfg, seed=1), 3)
  _assert_batches_equal(a, _take(_iterator(decoded, cfg, seed=1), 3))
  for batch in a:
    for i, r in enumerate(batch["index"]):
      ex = augment.decode(decoded[int(r)], int(r))
      np.testing.assert_array_equal(batch["orig_hw"][i], ex["orig_hw"])
      assert batch["boxes_valid"][i].sum() == len(ex["pids"])
  test = pipeline.data_source(builder, "test")
  batches = list(pipeline.eval_batches(test, cfg, process_index=0,
                                       process_count=1))
  ids = np.concatenate([b["image_id"][b["example_valid"]] for b in batches])
  assert list(ids) == [augment.decode(test[i], i)["image_id"]
                       for i in range(len(test))]
  # The query split has the scene fields too, so it batches the same way.
  query = pipeline.data_source(builder, "query")
  first = next(pipeline.eval_batches(query, cfg, process_index=0,
                                     process_count=1))
  assert first["image"].shape == (4, 128, 160, 3)


def test_scales_from_the_command_line_forms():
  assert pipeline.parse_scales("256x256, 320x480") == ((256, 256),
                                                       (320, 480))
  assert pipeline.parse_scales((96, 128)) == ((96, 128),)  # one bucket
  assert pipeline.parse_scales([[96, 128]]) == ((96, 128),)
  assert _cfg(test_scale="64X96").test_scale == (64, 96)
  for bad in ("", "256", "0x256", "256x256x3", [(96.5, 128)], 320):
    with pytest.raises(ValueError, match=r"data.train_scales="):
      pipeline.parse_scales(bad)


@pytest.mark.parametrize("field, value, expected", [
    ("batch_size", 0, "an integer >= 1"),
    ("max_boxes", 2.5, "an integer >= 1"),
    ("size_divisor", True, "an integer >= 1"),
    ("eval_batch_size", -1, "an integer >= 0"),
    ("min_box_size", -1.0, "a number >= 0"),
    ("flip_prob", float("nan"), r"a number in \[0, 1\]"),
    ("shuffle_seed", "0", "an integer"),
])
def test_bad_settings_name_the_field(field, value, expected):
  with pytest.raises(ValueError,
                     match=rf"data.{field}=.*; expected {expected}"):
    _cfg(**{field: value})


def _damaged_copy(tiny_synthetic_dir, tmp_path):
  """A private copy of the tiny dataset: (data_dir, the version folder)."""
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_synthetic_dir, data_dir)
  return data_dir, data_dir / "synthetic_person_search" / "tiny" / _VERSION


def _load(data_dir):
  from data_builders import build  # pylint: disable=g-import-not-at-top
  return build.load_builder("synthetic_person_search", "tiny",
                            data_dir=data_dir)


def _rebuild(data_dir):
  return re.escape("python -m data_builders build synthetic_person_search "
                   f"--config tiny --data_dir {data_dir} --overwrite")


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is truncated or not an ArrayRecord file"),
    ("empty", "is truncated or not an ArrayRecord file"),
    ("delete", "is missing"),
])
def test_a_damaged_split_file_is_named_when_the_split_is_opened(
    tiny_synthetic_dir, tmp_path, damage, message):
  data_dir, version = _damaged_copy(tiny_synthetic_dir, tmp_path)
  shard = version / "synthetic_person_search-test.array_record-00000-of-00001"
  if damage == "delete":
    shard.unlink()
  else:
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2 if damage == "truncate" else 0)
  builder = _load(data_dir)
  pipeline.data_source(builder, "train")  # the other splits are intact
  with pytest.raises(pipeline.DataError,
                     match=f"{re.escape(str(shard))} {message}; rebuild the "
                           f"dataset: {_rebuild(data_dir)}"):
    pipeline.data_source(builder, "test")


def test_a_corrupt_record_is_named_when_it_is_read(tiny_synthetic_dir,
                                                   tmp_path):
  data_dir, version = _damaged_copy(tiny_synthetic_dir, tmp_path)
  shard = version / "synthetic_person_search-train.array_record-00000-of-00001"
  with open(shard, "r+b") as f:  # garbage inside, the index intact
    f.seek(1000)
    f.write(b"\x5a" * 100_000)
  source = pipeline.data_source(_load(data_dir), "train")
  with pytest.raises(pipeline.DataError,
                     match=f"{re.escape(str(shard))}: record \\d+ of the "
                           f"'train' split cannot be read .*truncated or "
                           f"corrupt: rebuild the dataset: "
                           f"{_rebuild(data_dir)}"):
    for i in range(len(source)):
      source[i]  # pylint: disable=pointless-statement
  # Through the training pipeline the error keeps its type and message.
  with pytest.raises(pipeline.DataError, match=re.escape(str(shard))):
    _take(_iterator(source, _cfg(batch_size=4, max_boxes=12), seed=1), 20)
  with pytest.raises(IndexError):
    source[len(source)]  # pylint: disable=pointless-statement


@pytest.mark.parametrize("file, text, message", [
    ("dataset_info.json", "{garbage", "cannot be read"),
    ("dataset_info.json", "[]", "is not a JSON object"),
    ("dataset_info.json", "{}", "does not describe this dataset"),
    ("metadata.json", "", "cannot be read"),
])
def test_unreadable_metadata_is_named_with_the_rebuild_command(
    tiny_synthetic_dir, tmp_path, file, text, message):
  data_dir, version = _damaged_copy(tiny_synthetic_dir, tmp_path)
  (version / file).write_text(text)
  with pytest.raises(pipeline.DataError,
                     match=f"{re.escape(str(version / file))} {message}.*; "
                           f"rebuild the dataset: {_rebuild(data_dir)}"):
    _load(data_dir)


def test_the_rebuild_command_repairs_the_dataset(tiny_synthetic_dir,
                                                 tmp_path):
  from data_builders import build  # pylint: disable=g-import-not-at-top
  data_dir, version = _damaged_copy(tiny_synthetic_dir, tmp_path)
  assert build.variant_dir("synthetic_person_search", "tiny",
                           data_dir) == version
  (version / "dataset_info.json").write_text("{garbage")
  shard = version / "synthetic_person_search-test.array_record-00000-of-00001"
  shard.write_bytes(b"")
  assert build.main(["build", "synthetic_person_search", "--config", "tiny",
                     "--data_dir", str(data_dir), "--overwrite"]) == 0
  source = pipeline.data_source(_load(data_dir), "test")
  assert len(source) == 40 and source[39]["image_id"]


# Portrait buckets: images taller than wide get the transposed bucket and
# batches of their own (mmdet's GroupSampler), in training and evaluation.


def _portrait(source):
  return np.array([orientation.record_hw(r)[0] > orientation.record_hw(r)[1]
                   for r in source])


def test_record_hw_reads_encoded_and_decoded_images():
  encoded, decoded = make_source(5), make_source(5, encode=False)
  for e, d in zip(encoded, decoded):
    assert orientation.record_hw(e) == d["image"].shape[:2]
  np.testing.assert_array_equal(pipeline.portrait_flags(encoded),
                                _portrait(decoded))


@pytest.mark.parametrize("n_land, n_port, g", [(7, 3, 4), (8, 0, 4),
                                               (0, 5, 2), (1, 1, 3)])
def test_grouped_epoch_order_follows_the_group_sampler_rule(n_land, n_port,
                                                            g):
  portrait = np.array([False] * n_land + [True] * n_port)
  portrait = portrait[np.random.default_rng(0).permutation(len(portrait))]
  order = orientation.grouped_epoch_order(portrait, g, seed=3, epoch=0)
  expect_len = g * (-(-n_land // g) + -(-n_port // g))
  assert order.shape == (expect_len,)
  assert orientation.grouped_epoch_length(portrait, g) == expect_len
  rows = order.reshape(-1, g)
  for row in rows:  # each global batch is of one orientation
    assert len(set(portrait[row])) == 1
  # every record at least once per epoch; repeats only to fill a batch of
  # its own group
  assert set(order) == set(range(len(portrait)))
  for flag, size in ((False, n_land), (True, n_port)):
    members = order[portrait[order] == flag]
    assert len(members) == -(-size // g) * g
  again = orientation.grouped_epoch_order(portrait, g, seed=3, epoch=0)
  np.testing.assert_array_equal(order, again)
  other = orientation.grouped_epoch_order(portrait, g, seed=3, epoch=1)
  assert other.shape == order.shape
  if len(portrait) > 3:
    assert not np.array_equal(order, other)


def test_portrait_buckets_in_training():
  source = make_source(12, seed=5)
  portrait = _portrait(source)
  assert 2 <= portrait.sum() <= 10  # both orientations present
  cfg = _cfg(portrait_buckets=True, batch_size=2)
  batches = _take(_iterator(source, cfg, seed=1), 12)
  landscape_canvases = CANVASES
  portrait_canvases = {c[::-1] for c in CANVASES}
  for k, b in enumerate(batches):
    flags = portrait[b["index"]]
    assert len(set(flags)) == 1  # one orientation per batch
    bucket = cfg.train_scales[pipeline.bucket_index(1, k, len(SCALES))]
    if flags[0]:
      bucket = bucket[::-1]
    canvas = b["image"].shape[1:3]
    assert canvas == augment.padded_size(bucket, 16)
    assert canvas in (portrait_canvases if flags[0] else landscape_canvases)
    for i, r in enumerate(b["index"]):
      h, w = orientation.record_hw(source[r])
      s, size = augment.fit_scale((h, w), bucket)
      assert tuple(b["image_hw"][i]) == size
      # a portrait image's long side meets the bucket's long side
      assert max(size) == pytest.approx(max(h, w) * s, abs=0.5)
  # Restoring the iterator continues the grouped order exactly.
  it = _iterator(source, cfg, seed=1)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 7)
  fresh = _iterator(source, cfg, seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 7), expected)


def test_portrait_buckets_processes_agree_on_shapes():
  source = make_source(11, seed=5)
  cfg = _cfg(portrait_buckets=True, batch_size=2)
  per = [_take(_iterator(source, cfg, seed=2, process_index=p,
                         process_count=2), 6) for p in range(2)]
  for a, b in zip(*per):
    assert a["image"].shape == b["image"].shape
  # The two processes' slices of an epoch are disjoint parts of one order.
  order = orientation.grouped_epoch_order(_portrait(source), 4, 2, 0)
  got = np.stack([np.concatenate([b["index"] for b in bs]) for bs in per])
  n = min(len(order) // 2, got.shape[1])
  want = order.reshape(-1, 2, 2).transpose(1, 0, 2).reshape(2, -1)
  np.testing.assert_array_equal(got[:, :n], want[:, :n])


@pytest.mark.parametrize("process_count", [1, 2])
def test_portrait_buckets_in_evaluation(process_count):
  source = make_source(9, seed=5)
  portrait = _portrait(source)
  cfg = _cfg(portrait_buckets=True, eval_batch_size=2)
  per = [list(pipeline.eval_batches(source, cfg, process_index=p,
                                    process_count=process_count))
         for p in range(process_count)]
  assert len({len(bs) for bs in per}) == 1
  seen = []
  for batches in zip(*per):
    shapes = {b["image"].shape for b in batches}
    assert len(shapes) == 1  # the processes' slices line up
    for b in batches:
      idx = b["index"][b["example_valid"]]
      seen += idx.tolist()
      if len(idx):
        assert len(set(portrait[idx])) == 1
        bucket = (96, 64) if portrait[idx[0]] else (64, 96)
        assert b["image"].shape[1:3] == augment.padded_size(bucket, 16)
        for i in np.flatnonzero(b["example_valid"]):
          hw = orientation.record_hw(source[b["index"][i]])
          assert tuple(b["image_hw"][i]) == augment.fit_scale(hw, bucket)[1]
  assert sorted(seen) == list(range(9))


def test_portrait_buckets_need_landscape_buckets():
  with pytest.raises(ValueError, match="portrait_buckets"):
    _cfg(portrait_buckets=True, train_scales=((96, 64),))
  with pytest.raises(ValueError, match="test_scale"):
    _cfg(portrait_buckets=True, test_scale=(96, 64))
  with pytest.raises(ValueError, match="portrait_buckets"):
    _cfg(portrait_buckets=1)
