"""Builds a fake PRW download and checks every stored value by hand.

The fake raw data comes from dummy_data/make_fake_raw.py; data_builders/
testing.py describes how the build is checked without TensorFlow.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from PIL import Image
import pytest

from data_builders import raw_io
from data_builders import testing
from data_builders.prw import prw_dataset_builder as prw
from data_builders.prw.dummy_data import make_fake_raw
from data_builders.testing import image_ids, persons, read_split
from data_builders.testing import split_sizes, yxyx


build_error = functools.partial(testing.build_error, prw.Builder)
built = testing.built_fixture(prw.Builder, make_fake_raw.write_fake_raw)


def test_split_sizes_and_metadata(built):
  builder, _ = built
  assert split_sizes(builder) == {"train": 3, "test": 3, "query": 2}
  md = builder.info.metadata
  assert md["num_train_ids"] == 4
  assert md["train_pid_ids"] == [1, 5, 480, 932]
  assert md["gallery_sizes"] == [] and md["protocol"] == "prw"
  assert md["num_queries"] == 2 and md["num_test_ids"] == 2
  assert md["max_persons_per_image"] == 3
  assert not [k for k in builder.info.features if k.startswith("gallery_")]


def test_train_frames(built):
  builder, root = built
  train = read_split(builder, "train")
  assert image_ids(train) == [
      "c1s1_000151.jpg", "c1s1_000300.jpg", "c2s1_000010.jpg"]
  assert [int(ex["camera"]) for ex in train] == [1, 1, 2]
  boxes, pids = persons(train[0])
  np.testing.assert_allclose(boxes, [
      yxyx(2.5, 3.25, 13.0, 24.0, 64, 48),       # fractional
      yxyx(30, 5, 40, 25, 64, 48),               # id -2 -> -1
      # x = -1.703: x1 clipped to 0, x2 = x + w = 10.297 (the drawn box).
      yxyx(0, 4, 10.297, 34, 64, 48),
  ], atol=1e-6)
  assert pids == [1, -1, 3]  # PRW ids 5 and 932 -> train pids 1 and 3
  boxes, pids = persons(train[1])  # variable anno_file; id 1 twice, kept
  np.testing.assert_allclose(boxes, [yxyx(10, 10, 18, 26, 64, 48),
                                     yxyx(40, 10, 48, 26, 64, 48)], atol=1e-6)
  assert pids == [0, 0]
  boxes, pids = persons(train[2])  # variable anno_previous; clipped
  np.testing.assert_allclose(boxes, [yxyx(50, 20, 64, 48, 64, 48)], atol=1e-6)
  assert pids == [2]
  image = np.asarray(Image.open(root / "frames" / "c1s1_000151.jpg"))
  np.testing.assert_array_equal(train[0]["image"], image)
  assert all(int(ex["query_pid"]) == -1 for ex in train)


def test_test_frames_keep_prw_ids(built):
  builder, _ = built
  test = read_split(builder, "test")
  assert image_ids(test) == [
      "c3s2_000020.jpg", "c6s1_000033.jpg", "c2s1_000500.jpg"]
  assert [int(ex["camera"]) for ex in test] == [3, 6, 2]
  assert test[1]["image"].shape == (56, 72, 3)
  boxes, pids = persons(test[0])
  np.testing.assert_allclose(boxes, [yxyx(10, 10, 30, 40, 64, 48),
                                     yxyx(40, 5, 50, 25, 64, 48),
                                     yxyx(2, 30, 8, 42, 64, 48)], atol=1e-6)
  assert pids == [479, 5, -1]  # a training id in a test frame keeps its id
  boxes, pids = persons(test[1])
  np.testing.assert_allclose(boxes, [yxyx(3, 4, 23, 44, 72, 56),
                                     yxyx(30, 10, 45, 40, 72, 56)], atol=1e-6)
  assert pids == [479, 933]
  boxes, pids = persons(test[2])  # a frame without people is kept
  assert boxes.shape == (0, 4) and pids == []


def test_queries(built):
  builder, _ = built
  query = read_split(builder, "query")
  test = {ex["image_id"]: ex for ex in read_split(builder, "test")}
  assert image_ids(query) == ["c3s2_000020.jpg", "c6s1_000033.jpg"]
  assert [int(ex["query_pid"]) for ex in query] == [479, 933]
  assert [int(ex["camera"]) for ex in query] == [3, 6]
  np.testing.assert_allclose(query[0]["query_bbox"],
                             yxyx(9.5, 10.25, 29.5, 40.25, 64, 48), atol=1e-6)
  # Negative x in query_info.txt: clipped, x2 = x + w.
  np.testing.assert_allclose(query[1]["query_bbox"],
                             yxyx(0, 10, 13.297, 40, 72, 56), atol=1e-6)
  for ex in query:
    scene = test[ex["image_id"]]
    np.testing.assert_array_equal(persons(ex)[0], persons(scene)[0])
    assert persons(ex)[1] == persons(scene)[1]


@pytest.mark.parametrize("line_end", ["\r\n", "\n", "\r"])
def test_query_lines_any_line_end(tmp_path, line_end):
  root = make_fake_raw.write_fake_raw(tmp_path, line_end=line_end)
  queries = prw.parse_annotations(root).queries
  assert [(q.pid, q.frame) for q in queries] == [
      (479, "c3s2_000020"), (933, "c6s1_000033")]
  np.testing.assert_allclose(queries[1].box_xyxy, [-1.703, 10, 13.297, 40])


def test_count_warnings_name_both_numbers(tmp_path, caplog):
  root = make_fake_raw.write_fake_raw(tmp_path)
  with caplog.at_level(logging.WARNING):
    prw.parse_annotations(root)
  assert "found 4, the official release documents 483" in caplog.text
  assert "found 2, the official release documents 2057" in caplog.text


def test_missing_frame_image_names_image_and_list(tmp_path):
  make_fake_raw.write_fake_raw(tmp_path / "m", skip_frames=["c6s1_000033"])
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  root = tmp_path / "m" / make_fake_raw.ROOT_NAME
  assert str(root / "frames" / "c6s1_000033.jpg") in msg
  assert str(root / "frame_test.mat") in msg


@pytest.mark.parametrize("bad", ["../c6s1_000033", "/tmp/c6s1_000033",
                                 "frames/../../x"])
def test_frame_names_escaping_the_manual_dir_fail(tmp_path, bad):
  make_fake_raw.write_fake_raw(tmp_path / "m", test_names=[
      "c3s2_000020", bad, "c2s1_000500"])
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert "frame_test.mat" in msg and repr(bad) in msg


def test_truncated_annotation_names_the_file(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  path = root / "annotations" / "c6s1_000033.jpg.mat"
  path.write_bytes(path.read_bytes()[:150])
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(path) in msg


def test_unknown_annotation_variable_names_file_and_variants(tmp_path):
  root = make_fake_raw.write_fake_raw(
      tmp_path / "m", annotation_vars={"c2s1_000500": "boxes"})
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(root / "annotations" / "c2s1_000500.jpg.mat") in msg
  assert "box_new" in msg and "anno_previous" in msg and "'boxes'" in msg


def test_missing_query_info_names_path_and_step(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  (root / "query_info.txt").unlink()
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert str(root / "query_info.txt") in msg
  assert "step 3" in msg


@pytest.mark.parametrize("line,expect", [
    ("479 9.5 10.25 20.0 c3s2_000020", "line 2"),
    ("479 9.5 10.25 20.0 30.0 c1s1_000151", "not a test frame"),
    ("479 9.5 x 20.0 30.0 c3s2_000020", "line 2"),
    ("479 9.5 10.25 20.0 30.0 ../frames/c3s2_000020", "contains '..'"),
])
def test_bad_query_line_names_file_and_line(tmp_path, line, expect):
  root = make_fake_raw.write_fake_raw(
      tmp_path / "m", query_lines=[make_fake_raw.QUERY_LINES[0], line])
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(root / "query_info.txt") in msg
  assert expect in msg
