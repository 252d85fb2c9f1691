"""Builds a fake CUHK-SYSU download and checks every stored value by hand.

The fake raw data comes from dummy_data/make_fake_raw.py; data_builders/
testing.py describes how the build is checked without TensorFlow (split
sizes, every feature decoded through `as_data_source`).
"""

from __future__ import annotations

import functools
import logging
import shutil

import numpy as np
from PIL import Image
import pytest
import scipy.io

from data_builders import raw_io
from data_builders import testing
from data_builders.cuhk_sysu import cuhk_sysu_dataset_builder as cuhk
from data_builders.cuhk_sysu.dummy_data import make_fake_raw
from data_builders.testing import image_ids, persons, read_split
from data_builders.testing import split_sizes, yxyx

SIZES = (50, 100, 500, 1000, 2000, 4000)


build_error = functools.partial(testing.build_error, cuhk.Builder)
built = testing.built_fixture(cuhk.Builder, make_fake_raw.write_fake_raw)


def test_split_sizes_and_metadata(built):
  builder, _ = built
  assert split_sizes(builder) == {"train": 3, "test": 4, "query": 2}
  md = builder.info.metadata
  assert md["num_train_ids"] == 3
  assert md["gallery_sizes"] == list(SIZES)
  assert md["protocol"] == "cuhk"
  # p55's box equals no Images.mat box, so it is left out of 0..K-1.
  assert md["train_pid_names"] == ["p100", "p7", "p9"]
  assert md["num_test_ids"] == 2 and md["num_queries"] == 2
  assert md["max_persons_per_image"] == 2  # s1's degenerate box not counted
  # The metadata survives a reload from disk.
  again = cuhk.Builder(data_dir=builder.data_dir_root,
                       file_format="array_record")
  assert again.info.metadata["num_train_ids"] == 3


def test_train_boxes_ids_and_order(built):
  builder, _ = built
  train = read_split(builder, "train")
  # SeqNet sorts train names as strings.
  assert image_ids(train) == ["s1.jpg", "s10.jpg", "s2.jpg"]
  boxes, pids = persons(train[0])
  # The degenerate [40, 10, 0, 5] box is dropped.
  np.testing.assert_allclose(boxes, [yxyx(2, 3, 12, 23, 64, 48),
                                     yxyx(30, 5, 42, 35, 64, 48)], atol=1e-6)
  assert pids == [0, 1]
  boxes, pids = persons(train[1])
  # uint8 box [200, 10, 80, 45]: x2 is 280, not (200 + 80) % 256 = 24.
  np.testing.assert_allclose(boxes, [yxyx(200, 10, 280, 55, 300, 60),
                                     yxyx(260, 5, 290, 45, 300, 60)],
                             atol=1e-6)
  assert pids == [0, 2]
  boxes, pids = persons(train[2])
  np.testing.assert_allclose(boxes, [yxyx(5, 5, 25, 45, 64, 64)], atol=1e-6)
  assert pids == [-1]
  for ex in train:
    assert ex["camera"] == -1 and ex["query_pid"] == -1
    assert all(len(ex[f"gallery_{n}"]) == 0 for n in SIZES)


def test_images_decode(built):
  builder, root = built
  train = read_split(builder, "train")
  s1 = train[0]["image"]
  assert s1.shape == (48, 64, 3) and s1.dtype == np.uint8
  # An RGB JPEG is stored byte for byte.
  original = np.asarray(Image.open(root / "Image" / "SSM" / "s1.jpg"))
  np.testing.assert_array_equal(s1, original)
  # The grayscale JPEG is re-encoded as RGB: three (nearly) equal channels.
  s2 = train[2]["image"].astype(np.int32)
  assert s2.shape == (64, 64, 3)
  assert np.abs(s2[..., 0] - s2[..., 1]).max() <= 2
  gray = np.asarray(Image.open(root / "Image" / "SSM" / "s2.jpg"), np.int32)
  assert np.abs(s2[..., 0] - gray).mean() < 2


def test_test_split_labels(built):
  builder, _ = built
  test = read_split(builder, "test")
  assert image_ids(test) == [
      "s5.jpg", "s4.jpg", "s6.jpg", "s7.jpg"]  # pool.mat order
  expected = [
      ([yxyx(5, 5, 30, 45, 64, 64), yxyx(35, 8, 55, 48, 64, 64)],
       [2001, 2002]),
      ([yxyx(10, 10, 30, 40, 64, 64), yxyx(40, 20, 55, 50, 64, 64)],
       [2001, -1]),
      # [50, 10, 40, 30] reaches x = 90 in an 80 px wide image: clipped.
      ([yxyx(50, 10, 80, 40, 80, 64)], [2002]),
      ([yxyx(5, 5, 15, 15, 64, 64)], [-1]),
  ]
  for ex, (want_boxes, want_pids) in zip(test, expected):
    boxes, pids = persons(ex)
    np.testing.assert_allclose(boxes, want_boxes, atol=1e-6)
    assert pids == want_pids


def test_queries_and_galleries(built):
  builder, _ = built
  query = read_split(builder, "query")
  test = {ex["image_id"]: ex for ex in read_split(builder, "test")}
  assert image_ids(query) == ["s4.jpg", "s6.jpg"]
  assert [int(ex["query_pid"]) for ex in query] == [2001, 2002]
  np.testing.assert_allclose(query[0]["query_bbox"],
                             yxyx(10, 10, 30, 40, 64, 64), atol=1e-6)
  np.testing.assert_allclose(query[1]["query_bbox"],
                             yxyx(50, 10, 80, 40, 80, 64), atol=1e-6)
  # Lists exactly as in each TestG file: the duplicated s5 entry and q2's own
  # image s6 are kept.
  want = {
      50: [["s5", "s5", "s6", "s7"], ["s5", "s6", "s4", "s7"]],
      100: [["s5", "s5", "s6"], ["s5", "s6", "s4"]],
      500: [["s5", "s5"], ["s5", "s6"]],
      1000: [["s5", "s5", "s6"], ["s5", "s6", "s4"]],
      2000: [["s5"], ["s5"]],
      4000: [["s5", "s5", "s6", "s7"], ["s5", "s6", "s4", "s7"]],
  }
  for n, lists in want.items():
    for ex, names in zip(query, lists):
      assert [g.decode() for g in ex[f"gallery_{n}"]] == [
          f"{x}.jpg" for x in names], n
  # The query's scene is its test-split scene.
  for ex in query:
    scene = test[ex["image_id"]]
    np.testing.assert_array_equal(persons(ex)[0], persons(scene)[0])
    assert persons(ex)[1] == persons(scene)[1]
    np.testing.assert_array_equal(ex["image"], scene["image"])


def test_hard_case_subsets(built, tmp_path):
  builder, _ = built
  query = read_split(builder, "query")
  assert [[x.decode() for x in ex["query_subsets"]] for ex in query] == [
      ["low_resolution"], ["occlusion"]]
  # Without the subset files: no subsets, nothing fails.
  root = make_fake_raw.write_fake_raw(tmp_path / "none", subsets={})
  assert cuhk.parse_annotations(root).subsets == [[], []]
  # A listed query that TestG50 does not have: the file and what is expected.
  root = make_fake_raw.write_fake_raw(tmp_path / "bad", subsets={
      "Occlusion.mat": ("Occlusion1", [("p2001", "s4.jpg", [1, 1, 5, 5])],
                        True)})
  with pytest.raises(raw_io.RawFormatError,
                     match=r"Occlusion.mat Occlusion1\(1\).Query: query s4.jpg "
                           r"\[1.0, 1.0, 5.0, 5.0\] is not a TestG50 query"):
    cuhk.parse_annotations(root)
  root = make_fake_raw.write_fake_raw(tmp_path / "var", subsets={
      "Resolution.mat": ("Sizes", [make_fake_raw.QUERIES[0]], False)})
  with pytest.raises(raw_io.RawFormatError, match="Resolution.mat"):
    cuhk.parse_annotations(root)


def test_protocol_variable_name_variant(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path, protocol_var={
      4000: "testg4000"})
  parsed = cuhk.parse_annotations(root)
  assert [g[4000] for g in parsed.galleries] == [
      ["s5.jpg", "s5.jpg", "s6.jpg", "s7.jpg"],
      ["s5.jpg", "s6.jpg", "s4.jpg", "s7.jpg"]]


def test_count_warnings_name_both_numbers(tmp_path, caplog):
  root = make_fake_raw.write_fake_raw(tmp_path)
  with caplog.at_level(logging.WARNING):
    cuhk.parse_annotations(root)
  text = caplog.text
  assert "labeled training identities: found 3" in text and "5532" in text
  assert "queries: found 2" in text and "2900" in text


def test_missing_image_names_image_and_annotation(tmp_path):
  make_fake_raw.write_fake_raw(tmp_path / "m", skip_images=["s7.jpg"])
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert str(tmp_path / "m" / "dataset" / "Image" / "SSM" / "s7.jpg") in msg
  assert "Images.mat" in msg


@pytest.mark.parametrize("bad", ["../../outside.jpg", "/etc/passwd",
                                 "SSM/../../s1.jpg", "C:\\x.jpg"])
def test_names_escaping_the_manual_dir_fail(tmp_path, bad):
  make_fake_raw.write_fake_raw(tmp_path / "m", image_names={"s2.jpg": bad})
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert "Images.mat" in msg and repr(bad) in msg


def test_truncated_mat_names_the_file(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  path = root / "annotation" / "test" / "train_test" / "Train.mat"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(path) in msg


def test_non_matlab_file_names_the_file(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  path = root / "annotation" / "pool.mat"
  path.write_text("<html>login required</html>\n" * 20)
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(path) in msg


def test_missing_protocol_file_names_path_and_step(tmp_path):
  make_fake_raw.write_fake_raw(tmp_path / "m", skip_gallery_sizes=[2000])
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert str(tmp_path / "m" / "dataset" / "annotation" / "test" /
             "train_test" / "TestG2000.mat") in msg
  assert "step 3" in msg


def test_wrong_manual_dir_names_expected_path_and_step(tmp_path):
  (tmp_path / "m" / "something_else").mkdir(parents=True)
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert str(tmp_path / "m" / "annotation") in msg and "step 2" in msg


def test_gallery_box_labeled_only_by_a_larger_protocol(tmp_path, monkeypatch,
                                                       caplog):
  base = make_fake_raw.galleries

  def galleries(n):
    lists = [list(g) for g in base(n)]
    if n == 100:  # q2's person also stands at s4's unlabeled box
      lists[1][2] = ("s4.jpg", [40, 20, 15, 30])
    return lists

  monkeypatch.setattr(make_fake_raw, "galleries", galleries)
  root = make_fake_raw.write_fake_raw(tmp_path)
  with caplog.at_level(logging.WARNING):
    parsed = cuhk.parse_annotations(root)
  assert parsed.scenes["s4.jpg"].pids == [2001, 2002]
  assert "TestG100.mat: gallery gt boxes labeled only by this file" in (
      caplog.text)


def test_pool_image_missing_from_images_mat_names_both(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  pool = np.empty((2, 1), dtype=object)
  pool[:, 0] = ["s5.jpg", "s99.jpg"]
  scipy.io.savemat(root / "annotation" / "pool.mat", {"pool": pool})
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert "pool.mat" in msg and "Images.mat" in msg and "s99.jpg" in msg


def test_missing_image_folder_names_path_and_step(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  shutil.rmtree(root / "Image")
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert str(root / "Image" / "SSM") in msg
  assert "step 2" in msg
