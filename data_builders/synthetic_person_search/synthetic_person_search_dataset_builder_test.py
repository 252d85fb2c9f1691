"""Tests of the synthetic person-search TFDS builder and the build entry point.

`tfds.testing.DatasetBuilderTestCase` needs TensorFlow and dill, which
ps_jax does not install, so these are plain pytest tests: build the `tiny`
config into a temporary data_dir (about a second) and read it back through
`as_data_source`, as the input pipeline does.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image
import pytest

from data_builders import build
from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as spsb)
from ps_jax.data import schema
from ps_jax.data import synthetic

NAME = "synthetic_person_search"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tiny")
  build.build_dataset(NAME, "tiny", data_dir=data_dir)
  return data_dir


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def test_split_sizes_and_metadata_after_reload(tiny_dir):
  cfg = spsb.TINY
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  num_queries = len(synthetic.generate_queries(cfg))
  assert splits == {"train": cfg.num_train_scenes,
                    "test": cfg.num_test_scenes, "query": num_queries}
  meta = builder.info.metadata
  assert meta["num_train_ids"] == cfg.num_train_ids
  assert meta["num_test_ids"] == cfg.num_test_ids
  assert meta["gallery_sizes"] == sorted(cfg.gallery_sizes)
  assert meta["protocol"] == "cuhk"
  assert meta["num_queries"] == num_queries
  assert meta["generator"]["seed"] == cfg.seed
  # load_builder made a new builder, whose _info knows only the static keys:
  # num_queries (set while building) can only come from metadata.json.
  assert os.path.exists(os.path.join(builder.data_dir, "metadata.json"))


def test_scene_records_match_the_generator(tiny_dir):
  cfg = spsb.TINY
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  for split in ("train", "test"):
    source = builder.as_data_source(split)
    assert len(source) == cfg.num_scenes(split)
    for i in (0, 1, len(source) - 1):
      ex = source[i]
      scene = synthetic.generate_scene(cfg, split, i)
      assert _text(ex["image_id"]) == scene["image_id"]  # record i = scene i
      assert ex["camera"] == scene["camera"]
      assert ex["image"].shape == scene["image"].shape
      assert ex["image"].dtype == np.uint8
      # The stored JPEG is the rendered image encoded once (PIL decodes it
      # the same way here and in TFDS); it is close to the rendered pixels.
      jpeg = Image.open(io.BytesIO(spsb.encode_jpeg(scene["image"])))
      np.testing.assert_array_equal(ex["image"], np.asarray(jpeg))
      err = np.abs(ex["image"].astype(int) - scene["image"].astype(int))
      assert err.mean() < 8.0
      boxes, pids = schema.decode_persons(ex)
      h, w = scene["image"].shape[:2]
      np.testing.assert_allclose(boxes * [h, w, h, w],
                                 scene["boxes_xyxy"][:, [1, 0, 3, 2]],
                                 atol=1e-3)
      np.testing.assert_array_equal(pids, scene["pids"])
      # Scenes carry the "no query" values.
      assert ex["query_pid"] == schema.UNLABELED_PID
      assert all(len(ex[f"gallery_{n}"]) == 0 for n in cfg.gallery_sizes)


def test_labeled_train_pids_index_the_lut(tiny_dir):
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  k = builder.info.metadata["num_train_ids"]
  train = builder.as_data_source("train")
  test = builder.as_data_source("test")
  train_pids = np.concatenate([schema.decode_persons(train[i])[1]
                               for i in range(len(train))])
  test_pids = np.concatenate([schema.decode_persons(test[i])[1]
                              for i in range(len(test))])
  labeled = train_pids[train_pids >= 0]
  assert labeled.size and labeled.min() >= 0 and labeled.max() < k
  assert not set(labeled.tolist()) & set(test_pids[test_pids >= 0].tolist())
  # Images with nobody in them are kept.
  assert any(len(schema.decode_persons(train[i])[1]) == 0
             for i in range(len(train)))


def test_query_records(tiny_dir):
  cfg = spsb.TINY
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  test = builder.as_data_source("test")
  by_id = {_text(test[i]["image_id"]): i for i in range(len(test))}
  queries = builder.as_data_source("query")
  assert len(queries) >= 1
  for i in range(len(queries)):
    q = queries[i]
    qid, pid = _text(q["image_id"]), int(q["query_pid"])
    assert qid in by_id and pid >= cfg.num_train_ids
    boxes, pids = schema.decode_persons(q)
    assert pid in pids.tolist()
    np.testing.assert_allclose(q["query_bbox"], boxes[pids.tolist().index(pid)],
                               atol=1e-6)
    for n in cfg.gallery_sizes:
      gallery = [_text(g) for g in q[f"gallery_{n}"]]
      assert len(gallery) == n and qid not in gallery
      assert all(g in by_id for g in gallery)
      holders = [g for g in gallery
                 if pid in schema.decode_persons(test[by_id[g]])[1]]
      assert holders  # the target is somewhere in every gallery


def test_query_subsets_mark_occluded_and_small_people(tiny_dir):
  """Each query's marks, recomputed from the scene layout: `occlusion` when
  less than 0.85 of the person is visible, `low_resolution` when the box is
  shorter than 80 px; scenes carry none."""
  cfg = spsb.TINY
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  queries = builder.as_data_source("query")
  seen = set()
  for i in range(len(queries)):
    q = queries[i]
    scene = int(_text(q["image_id"]).split("_")[1].split(".")[0])
    lay = synthetic.layout.scene_layout(cfg, "test", scene)
    j = lay.pids.tolist().index(int(q["query_pid"]))
    box = lay.boxes_xyxy[j]
    want = [name for name, hit in (
        ("occlusion", lay.visible[j] < 0.85),
        ("low_resolution", box[3] - box[1] < 80)) if hit]
    got = [_text(x) for x in q["query_subsets"]]
    assert got == want, i
    seen.update(got)
  assert seen == {"occlusion", "low_resolution"}  # both occur in `tiny`
  assert list(builder.as_data_source("test")[0]["query_subsets"]) == []


def test_same_seed_same_bytes(tiny_dir, tmp_path):
  again = build.build_dataset(NAME, "tiny", data_dir=tmp_path)
  first = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  for split in ("train", "query"):
    name = f"{NAME}-{split}.array_record-00000-of-00001"
    with open(os.path.join(first.data_dir, name), "rb") as a, open(
        os.path.join(again.data_dir, name), "rb") as b:
      assert a.read() == b.read()


def test_load_builder_reuses_a_built_dataset(tiny_dir):
  builder = build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  path = os.path.join(builder.data_dir,
                      f"{NAME}-train.array_record-00000-of-00001")
  before = os.stat(path).st_mtime_ns
  build.load_builder(NAME, "tiny", data_dir=tiny_dir)
  build.build_dataset(NAME, "tiny", data_dir=tiny_dir)
  assert os.stat(path).st_mtime_ns == before


def test_data_dir_from_environment(tiny_dir, monkeypatch):
  monkeypatch.setenv(build.DATA_DIR_ENV, str(tiny_dir))
  assert build.default_data_dir() == str(tiny_dir)
  builder = build.load_builder(NAME, "tiny")
  assert builder.data_dir.startswith(str(tiny_dir))


def test_custom_config_and_degenerate_boxes(tmp_path):
  config = spsb.SyntheticPersonSearchConfig(
      name="micro", generator=dataclasses.replace(
          spsb.TINY, num_train_scenes=6, num_test_scenes=25))
  builder = build.build_dataset(NAME, config, data_dir=tmp_path)
  assert builder.info.splits["train"].num_examples == 6

  scene = synthetic.generate_scene(config.generator, "train", 0)
  scene["boxes_xyxy"] = np.array([[5, 5, 5, 40], [4, 4, 30, 60],
                                  [500, 0, 600, 10]], np.float32)
  scene["pids"] = np.array([1, 2, -1], np.int32)
  dropped = []
  ex = spsb.scene_to_example(scene, dropped)
  assert [p["pid"] for p in ex["persons"]] == [2]
  assert len(dropped) == 2 and all(scene["image_id"] in d for d in dropped)


def test_command_line(tmp_path, capsys):
  assert build.main(["build", NAME, "--config", "tiny",
                     "--data_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "'train': 60" in out and "num_train_ids" in out
  assert build.main(["list"]) == 0
  assert "synthetic_person_search: configs ['tiny', 'default']" in (
      capsys.readouterr().out)
  with pytest.raises(SystemExit):
    build.main(["build", "no_such_dataset"])


def test_default_config_is_default(tmp_path):
  builder = build.builder_class(NAME)(data_dir=str(tmp_path))
  assert builder.builder_config.name == "default"
  assert builder.builder_config.generator == synthetic.SyntheticConfig()
  assert not builder.is_prepared()


def test_unknown_name():
  with pytest.raises(KeyError, match="no_such_dataset"):
    build.builder_class("no_such_dataset")
