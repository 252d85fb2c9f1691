"""Writes a tiny fake CUHK-SYSU download in the exact official layout.

    python -m data_builders.cuhk_sysu.dummy_data.make_fake_raw /tmp/manual

creates /tmp/manual/dataset/{Image/SSM/*.jpg, annotation/...} with real MATLAB
v5 files (scipy.io.savemat) whose variables, struct fields and shapes are
those of the official files (docs/datasets.md, "CUHK-SYSU raw layout"), and
real JPEGs. The content is fixed so that the builder test can state every
expected box and id by hand; it contains the traps of the official files:

* boxes stored as uint8 whose x + w exceeds 255 (s10: x=200, w=80) next to
  a uint16 box (x=260): loadmat returns these dtypes for the official files
  too (there: doubles stored in compressed integer form);
* a degenerate box (w = 0) that must be dropped, and a box reaching past
  the right image border (s6) that must be clipped;
* a train identity (p55) whose box equals no Images.mat box, so it labels
  nothing and K is 3, not 4;
* a duplicated gallery entry and an entry naming the query's own image;
* a grayscale JPEG (s2) that the builder must store as RGB;
* train names whose string order differs from numeric order (s1, s10, s2)
  and a pool.mat order that is not sorted.

Keyword arguments of `write_fake_raw` switch on the error cases the test
needs (variable-name variant, bad names, missing files).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.io

from data_builders import testing

# name -> (width, height, grayscale)
IMAGES = {
    "s1.jpg": (64, 48, False),
    "s10.jpg": (300, 60, False),
    "s2.jpg": (64, 64, True),
    "s4.jpg": (64, 64, False),
    "s5.jpg": (64, 64, False),
    "s6.jpg": (80, 64, False),
    "s7.jpg": (64, 64, False),
}

# Images.mat boxes [x, y, w, h] per image, in file order, with their dtype.
BOXES = {
    "s1.jpg": [([2, 3, 10, 20], np.uint8), ([30, 5, 12, 30], np.uint8),
               ([40, 10, 0, 5], np.uint8)],
    "s10.jpg": [([200, 10, 80, 45], np.uint8), ([260, 5, 30, 40], np.uint16)],
    "s2.jpg": [([5, 5, 20, 40], np.uint8)],
    "s4.jpg": [([10, 10, 20, 30], np.uint8), ([40, 20, 15, 30], np.uint8)],
    "s5.jpg": [([5, 5, 25, 40], np.uint8), ([35, 8, 20, 40], np.uint8)],
    "s6.jpg": [([50, 10, 40, 30], np.uint8)],
    "s7.jpg": [([5, 5, 10, 10], np.uint8)],
}

POOL = ["s5.jpg", "s4.jpg", "s6.jpg", "s7.jpg"]

# Train.mat: idname -> [(image, [x, y, w, h])].
TRAIN = [
    ("p100", [("s1.jpg", [2, 3, 10, 20]), ("s10.jpg", [200, 10, 80, 45])]),
    ("p7", [("s1.jpg", [30, 5, 12, 30])]),
    ("p55", [("s2.jpg", [6, 5, 20, 40])]),  # equals no box: labels nothing
    ("p9", [("s10.jpg", [260, 5, 30, 40])]),
]

# Queries (idname, image, box) and their galleries per TestG size:
# [(image, box or None)], as listed (duplicates and own image included).
QUERIES = [("p2001", "s4.jpg", [10, 10, 20, 30]),
           ("p2002", "s6.jpg", [50, 10, 40, 30])]
_BASE_GALLERIES = [
    [("s5.jpg", [5, 5, 25, 40]), ("s5.jpg", [5, 5, 25, 40]), ("s6.jpg", None),
     ("s7.jpg", None)],
    [("s5.jpg", [35, 8, 20, 40]), ("s6.jpg", [50, 10, 40, 30]),
     ("s4.jpg", None), ("s7.jpg", None)],
]
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)

# The hard-case subset files (annotation/test/subset/), in the two layouts
# the builder accepts: Occlusion.mat lists the second query as a TestG-style
# `Query` struct, Resolution.mat the first with its own imname / idlocate.
SUBSETS = {"Occlusion.mat": ("Occlusion1", [QUERIES[1]], True),
           "Resolution.mat": ("Test_Size", [QUERIES[0]], False)}


def galleries(n: int) -> list[list[tuple[str, Any]]]:
  """The fake TestG<n> gallery of each query: larger sizes drop fillers."""
  if n == 50:
    return _BASE_GALLERIES
  # Different lists per file, so the test sees each file's own list; TestG2000
  # has one entry per query (a 1x1 struct, which loadmat may squeeze).
  keep = {100: 3, 500: 2, 1000: 3, 2000: 1, 4000: 4}[n]
  return [g[:keep] for g in _BASE_GALLERIES]


def _struct(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]
            ) -> np.ndarray:
  """A MATLAB (1, N) struct array for savemat."""
  arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
  for i, row in enumerate(rows):
    for f in fields:
      arr[0, i][f] = row[f]
  return arr


def _cell(items: Sequence[Any]) -> np.ndarray:
  """A MATLAB (N, 1) cell array for savemat."""
  arr = np.empty((len(items), 1), dtype=object)
  for i, item in enumerate(items):
    arr[i, 0] = item
  return arr


def _box(box: Sequence[int] | None, dtype: Any = None) -> np.ndarray:
  if box is None:
    return np.zeros((1, 0))  # what loadmat returns for an absent person
  if dtype is None:
    dtype = np.uint8 if max(box) < 256 else np.uint16
  return np.asarray([box], dtype)


def write_fake_raw(manual_dir: str | pathlib.Path, *,
                   image_names: Mapping[str, str] | None = None,
                   protocol_var: Mapping[int, str] | None = None,
                   skip_images: Sequence[str] = (),
                   skip_gallery_sizes: Sequence[int] = (),
                   subsets: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes the fake download under `manual_dir/dataset`; returns that root.

  Args:
    manual_dir: where to write (created).
    image_names: Images.mat `imname` overrides (e.g. {"s7.jpg": "../x.jpg"}).
    protocol_var: TestG<n>.mat variable-name overrides, e.g. {4000:
      "testg4000"} (the default is the file stem, as in the official files).
    skip_images: JPEGs not to write.
    skip_gallery_sizes: TestG<n>.mat files not to write.
    subsets: the subset files to write, {file: (variable, [(idname, image,
      box)], as a `Query` struct)}; default `SUBSETS`, {} for none.
  """
  root = pathlib.Path(manual_dir) / "dataset"
  image_names = dict(image_names or {})
  protocol_var = dict(protocol_var or {})
  for seed, (name, (w, h, gray)) in enumerate(IMAGES.items()):
    if name not in skip_images:
      testing.write_fake_jpeg(root / "Image" / "SSM" / name, w, h,
                              seed=seed, gray=gray)

  ann = root / "annotation"
  tt = ann / "test" / "train_test"
  tt.mkdir(parents=True, exist_ok=True)
  img_rows = []
  for name, boxes in BOXES.items():
    box_rows = [{"idlocate": _box(b, dt), "ishard": np.array([[0]], np.uint8)}
                for b, dt in boxes]
    img_rows.append({
        "imname": image_names.get(name, name),
        "nAppear": np.array([[len(boxes)]], np.uint8),
        "box": _struct(box_rows, ["idlocate", "ishard"]),
    })
  scipy.io.savemat(ann / "Images.mat",
                   {"Img": _struct(img_rows, ["imname", "nAppear", "box"])})
  scipy.io.savemat(ann / "pool.mat", {"pool": _cell(POOL)})

  train_cells = []
  for idname, scenes in TRAIN:
    scene = _struct([{"imname": n, "idlocate": _box(b),
                      "ishard": np.array([[0]], np.uint8)} for n, b in scenes],
                    ["imname", "idlocate", "ishard"])
    train_cells.append(_struct(
        [{"idname": idname, "nAppear": np.array([[len(scenes)]], np.uint8),
          "scene": scene}], ["idname", "nAppear", "scene"]))
  scipy.io.savemat(tt / "Train.mat", {"Train": _cell(train_cells)})

  for n in GALLERY_SIZES:
    if n in skip_gallery_sizes:
      continue
    rows = []
    for (idname, image, box), gallery in zip(QUERIES, galleries(n)):
      query = _struct([{"imname": image, "idlocate": _box(box),
                        "ishard": np.array([[0]], np.uint8),
                        "idname": idname}],
                      ["imname", "idlocate", "ishard", "idname"])
      gal = _struct([{"imname": g, "idlocate": _box(b),
                      "ishard": (np.array([[0]], np.uint8) if b is not None
                                 else np.zeros((1, 0)))} for g, b in gallery],
                    ["imname", "idlocate", "ishard"])
      rows.append({"Query": query, "Gallery": gal})
    var = protocol_var.get(n, f"TestG{n}")
    scipy.io.savemat(tt / f"TestG{n}.mat",
                     {var: _struct(rows, ["Query", "Gallery"])})

  subset_dir = ann / "test" / "subset"
  for file, (var, queries, nested) in (
      SUBSETS if subsets is None else subsets).items():
    fields = ["imname", "idlocate", "idname"]
    rows = [{"imname": image, "idlocate": _box(box), "idname": idname}
            for idname, image, box in queries]
    if nested:
      rows = [{"Query": _struct([r], fields)} for r in rows]
      fields = ["Query"]
    subset_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(subset_dir / file, {var: _struct(rows, fields)})
  return root


if __name__ == "__main__":
  testing.fake_raw_main(write_fake_raw, __doc__)
