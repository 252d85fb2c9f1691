"""Tests of the safe raw-file helpers shared by the real-dataset builders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.io

from data_builders import raw_io


@pytest.mark.parametrize("name,rel", [
    ("s1.jpg", "s1.jpg"), ("a/./b.jpg", "a/b.jpg"), ("a\\b.jpg", "a/b.jpg"),
    (" c1s1_000151.jpg ", "c1s1_000151.jpg")])
def test_safe_join_keeps_relative_names(tmp_path, name, rel):
  assert raw_io.safe_join(tmp_path, name, source="x.mat") == tmp_path / rel


@pytest.mark.parametrize("name", [
    "", "..", "../a.jpg", "a/../../b.jpg", "/etc/passwd", "\\\\server\\x",
    "C:\\x.jpg", "c:/x.jpg", "a\\..\\..\\b"])
def test_safe_join_rejects_escaping_names(tmp_path, name):
  with pytest.raises(raw_io.RawFormatError) as e:
    raw_io.safe_join(tmp_path, name, source="anno/Images.mat Img(3)")
  assert "anno/Images.mat Img(3)" in str(e.value) and repr(name) in str(e.value)


def test_load_mat_reads_variables_and_wraps_scipy_errors(tmp_path):
  good = tmp_path / "good.mat"
  scipy.io.savemat(good, {"x": np.arange(300.0).reshape(3, 100)})
  assert list(raw_io.load_mat(good, "step 9")) == ["x"]
  data = good.read_bytes()
  cases = {
      "empty.mat": b"",
      "half.mat": data[: len(data) // 2],
      "head.mat": data[:130],
      "html.mat": b"<html>denied</html>" * 20,
      "v73.mat": b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b" " * 100,
  }
  for name, content in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(raw_io.RawFormatError) as e:
      raw_io.load_mat(path, "step 9")
    assert str(path) in str(e.value), name
  with pytest.raises(raw_io.RawFileMissingError) as e:
    raw_io.load_mat(tmp_path / "absent.mat", "step 9 (unpack)")
  assert str(tmp_path / "absent.mat") in str(e.value)
  assert "step 9 (unpack)" in str(e.value)


def test_mat_var_lists_names_present(tmp_path):
  with pytest.raises(raw_io.RawFormatError) as e:
    raw_io.mat_var({"foo": 1, "bar": 2}, ("box_new", "anno_file"), "f.mat")
  msg = str(e.value)
  assert "f.mat" in msg and "box_new" in msg and "'foo'" in msg
  assert raw_io.mat_var({"anno_file": 3}, ("box_new", "anno_file"), "") == 3


def test_numbers_are_float64_before_arithmetic(tmp_path):
  path = tmp_path / "b.mat"
  scipy.io.savemat(path, {"b": np.array([[200, 10, 80, 45]], np.uint8)})
  raw = raw_io.load_mat(path, "s")["b"]
  assert raw.dtype == np.uint8  # what loadmat gives for the official boxes
  box = raw_io.mat_numbers(raw, "b", size=4)
  assert box.dtype == np.float64 and box[0] + box[2] == 280.0
  with pytest.raises(raw_io.RawFormatError):
    raw_io.mat_numbers(raw, "b", size=5)
  with pytest.raises(raw_io.RawFormatError):
    raw_io.mat_numbers(np.array(["x"]), "b")


def test_mat_str_unwraps_cells():
  cell = np.empty((1, 1), dtype=object)
  cell[0, 0] = np.array(["s15538.jpg"])
  assert raw_io.mat_str(cell, "w") == "s15538.jpg"
  assert raw_io.mat_str(np.array(list("abc")), "w") == "abc"
  with pytest.raises(raw_io.RawFormatError):
    raw_io.mat_str(np.array([[1.0]]), "w")


@pytest.mark.parametrize("sep", ["\r\n", "\n", "\r"])
def test_read_text_lines_any_line_end(tmp_path, sep):
  path = tmp_path / "q.txt"
  path.write_bytes(("\ufeffa b" + sep + sep + "  c d  " + sep).encode())
  assert raw_io.read_text_lines(path, "s") == [(1, "a b"), (3, "c d")]


def test_find_root(tmp_path):
  (tmp_path / "PRW-v16.04.20" / "frames").mkdir(parents=True)
  (tmp_path / "PRW-v16.04.20" / "annotations").mkdir()
  assert raw_io.find_root(tmp_path, ("frames", "annotations"), (),
                          "s") == tmp_path / "PRW-v16.04.20"
  (tmp_path / "copy" / "frames").mkdir(parents=True)
  (tmp_path / "copy" / "annotations").mkdir()
  with pytest.raises(raw_io.RawFormatError):  # two roots: ambiguous
    raw_io.find_root(tmp_path, ("frames", "annotations"), (), "s")
  assert raw_io.find_root(tmp_path, ("frames", "annotations"), ("copy",),
                          "s") == tmp_path / "copy"


def test_warn_count_logs_both_numbers(caplog):
  with caplog.at_level(logging.WARNING):
    assert raw_io.warn_count("x.mat: ids", 482, 483) is False
    assert raw_io.warn_count("y.mat: ids", 7, 7) is True
  assert "x.mat: ids: found 482" in caplog.text and "483" in caplog.text
  assert "y.mat" not in caplog.text
