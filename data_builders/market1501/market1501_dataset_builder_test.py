"""Builds a fake Market-1501 download and checks every stored value.

The fake raw data comes from dummy_data/make_fake_raw.py; data_builders/
testing.py describes how the build is checked without TensorFlow.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from PIL import Image

from data_builders import raw_io
from data_builders import testing
from data_builders.market1501 import market1501_dataset_builder as market
from data_builders.market1501.dummy_data import make_fake_raw


build_error = functools.partial(testing.build_error, market.Builder)
built = testing.built_fixture(market.Builder, make_fake_raw.write_fake_raw)


def rows(builder, split):
  """(image_id, pid, camera) of every crop of `split`, in stored order."""
  return [(ex["image_id"].decode(), int(ex["pid"]), int(ex["camera"]))
          for ex in testing.read_split(builder, split)]


def test_splits_ids_and_cameras(built):
  builder, _ = built
  # Thumbs.db is ignored; gt_bbox/ is not a split.
  assert testing.split_sizes(builder) == {"train": 4, "query": 2, "gallery": 5}
  # Train ids 2, 7, 1500 -> 0, 1, 2 (ascending Market id).
  assert rows(builder, "train") == [
      ("0002_c1s1_000451_03.jpg", 0, 1), ("0002_c2s1_000301_01.jpg", 0, 2),
      ("0007_c3s2_000100_02.jpg", 1, 3), ("1500_c6s4_000010_01.jpg", 2, 6)]
  assert rows(builder, "query") == [
      ("0003_c1s1_000020_00.jpg", 3, 1), ("0010_c5s3_000050_00.jpg", 10, 5)]
  # Junk keeps -1 and distractors keep 0; the evaluation drops junk.
  assert rows(builder, "gallery") == [
      ("-1_c1s1_000401_03.jpg", -1, 1), ("0000_c1s1_000001_01.jpg", 0, 1),
      ("0003_c1s1_000020_02.jpg", 3, 1), ("0003_c2s1_000010_01.jpg", 3, 2),
      ("0010_c4s2_000123_04.jpg", 10, 4)]
  md = builder.info.metadata
  assert md["num_train_ids"] == 3 and md["train_pid_ids"] == [2, 7, 1500]
  assert md["protocol"] == "market1501"


def test_images_decode_byte_exact(built):
  builder, root = built
  ex = builder.as_data_source("query")[0]
  assert ex["image"].shape == (128, 64, 3)
  original = np.asarray(Image.open(root / "query" / ex["image_id"].decode()))
  np.testing.assert_array_equal(ex["image"], original)


def test_count_warnings_name_both_numbers(tmp_path, caplog):
  make_fake_raw.write_fake_raw(tmp_path / "m")
  with caplog.at_level(logging.WARNING):
    testing.build(market.Builder, tmp_path / "m", tmp_path / "d")
  assert "junk (-1) crops: found 1, the official release documents 3819" in (
      caplog.text)
  assert "ids: found 3, the official release documents 751" in caplog.text


def test_malformed_name_is_an_error_naming_the_file(tmp_path):
  root = make_fake_raw.write_fake_raw(
      tmp_path / "m", extra_files={"query": ["IMG_0001.jpg"]})
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(root / "query" / "IMG_0001.jpg") in msg


def test_corrupt_jpeg_names_the_file(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m")
  path = root / "bounding_box_test" / "0003_c2s1_000010_01.jpg"
  path.write_bytes(path.read_bytes()[:200])
  msg = build_error(tmp_path, raw_io.RawFormatError)
  assert str(path) in msg


def test_missing_folder_names_path_and_step(tmp_path):
  root = make_fake_raw.write_fake_raw(tmp_path / "m", skip_folders=["query"])
  msg = build_error(tmp_path, raw_io.RawFileMissingError)
  assert f"Missing {root / 'query'} " in msg and "step 2" in msg
