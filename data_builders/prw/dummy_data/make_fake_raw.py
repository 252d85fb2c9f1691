"""Writes a tiny fake PRW download in the exact official layout.

    python -m data_builders.prw.dummy_data.make_fake_raw /tmp/manual

creates /tmp/manual/PRW-v16.04.20/ with real JPEG frames, one MATLAB v5
`annotations/<frame>.jpg.mat` per frame (an (N, 5) double matrix of
[id, x, y, w, h] rows), the frame and id split files, and a CRLF
`query_info.txt`, as docs/datasets.md ("PRW raw layout") describes them.
The fixed content holds the traps of the official files:

* all three per-frame variable names (`box_new`, `anno_file`,
  `anno_previous`) and a frame without any box;
* fractional and negative coordinates (x = -1.703) and boxes reaching past
  the image border;
* id -2 (uncertain), the undocumented id 933, a labeled id twice in one
  frame, a training id (5) that also appears in a test frame;
* `ID_test.mat` holding `ID_test2` (not `ID_test`);
* a camera-6 frame of a different size.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.io

from data_builders import testing

ROOT_NAME = "PRW-v16.04.20"

# frame -> (width, height, annotation variable, rows [id, x, y, w, h]).
TRAIN_FRAMES = {
    "c1s1_000151": (64, 48, "box_new",
                    [[5, 2.5, 3.25, 10.5, 20.75], [-2, 30, 5, 10, 20],
                     [932, -1.703, 4, 12, 30]]),
    "c1s1_000300": (64, 48, "anno_file",
                    [[1, 10, 10, 8, 16], [1, 40, 10, 8, 16]]),
    "c2s1_000010": (64, 48, "anno_previous", [[480, 50, 20, 20, 40]]),
}
TEST_FRAMES = {
    "c3s2_000020": (64, 48, "box_new",
                    [[479, 10, 10, 20, 30], [5, 40, 5, 10, 20],
                     [-2, 2, 30, 6, 12]]),
    "c6s1_000033": (72, 56, "anno_file",
                    [[479, 3, 4, 20, 40], [933, 30, 10, 15, 30]]),
    "c2s1_000500": (64, 48, "box_new", []),
}
ID_TRAIN = [1, 5, 480, 932]
ID_TEST = [479, 933]
QUERY_LINES = [
    "479 9.5000 10.2500 20.0000 30.0000 c3s2_000020",
    "933 -1.7030 10.0000 15.0000 30.0000 c6s1_000033",
]


def _cell(items: Sequence[str]) -> np.ndarray:
  arr = np.empty((len(items), 1), dtype=object)
  for i, item in enumerate(items):
    arr[i, 0] = item
  return arr


def write_fake_raw(manual_dir: str | pathlib.Path, *,
                   test_names: Sequence[str] | None = None,
                   annotation_vars: Mapping[str, str] | None = None,
                   skip_frames: Sequence[str] = (),
                   query_lines: Sequence[str] | None = None,
                   line_end: str = "\r\n") -> pathlib.Path:
  """Writes the fake download under `manual_dir/PRW-v16.04.20`; returns it.

  Args:
    manual_dir: where to write (created).
    test_names: overrides the names stored in frame_test.mat.
    annotation_vars: per-frame variable-name overrides.
    skip_frames: frames whose JPEG is not written.
    query_lines: overrides the lines of query_info.txt.
    line_end: line terminator of query_info.txt (CRLF in the official file).
  """
  root = pathlib.Path(manual_dir) / ROOT_NAME
  annotation_vars = dict(annotation_vars or {})
  frames = {**TRAIN_FRAMES, **TEST_FRAMES}
  for seed, (name, (w, h, var, rows)) in enumerate(frames.items()):
    if name not in skip_frames:
      testing.write_fake_jpeg(root / "frames" / f"{name}.jpg", w, h,
                              seed=seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(rows, np.float64).reshape(-1, 5)
    scipy.io.savemat(root / "annotations" / f"{name}.jpg.mat",
                     {annotation_vars.get(name, var): matrix})
  scipy.io.savemat(root / "frame_train.mat",
                   {"img_index_train": _cell(list(TRAIN_FRAMES))})
  scipy.io.savemat(root / "frame_test.mat", {
      "img_index_test": _cell(list(test_names or TEST_FRAMES))})
  scipy.io.savemat(root / "ID_train.mat",
                   {"ID_train": np.asarray([ID_TRAIN], np.float64)})
  scipy.io.savemat(root / "ID_test.mat",
                   {"ID_test2": np.asarray([ID_TEST], np.float64)})
  lines = QUERY_LINES if query_lines is None else query_lines
  (root / "query_info.txt").write_bytes(
      "".join(line + line_end for line in lines).encode("ascii"))
  return root


if __name__ == "__main__":
  testing.fake_raw_main(write_fake_raw, __doc__)
