"""CUHK-SYSU person search, built from the official download.

Reads the official layout (docs/datasets.md, "CUHK-SYSU raw layout") exactly
as the reference loaders (SeqNet `datasets/cuhk_sysu.py`, psdb) read it, into
the common person-search schema of `ps_jax/data/schema.py`:

* `train`: every `Images.mat` image not in `pool.mat` (11,206), sorted by
  name. Labels come from `Train.mat` by exact box equality with the
  `Images.mat` box (first equal box wins, as SeqNet's `set_box_pid`);
  identity `Train(i)` that labels at least one box gets pid = its rank among
  such identities, so pids are 0..K-1 (K = 5,532 on the official files).
* `test`: the `pool.mat` images (6,978), in `pool.mat` order. A box gets the
  identity of the `TestG50.mat` query whose `Query` or `Gallery` box equals
  it; the test pid is the number in the query's `idname` (`p10581` ->
  10581). Other boxes are unlabeled (-1).
* `query`: the 2,900 `TestG50.mat` queries in file order, each with its scene
  (as in `test`), `query_bbox`, `query_pid` and `gallery_<n>`: the image
  names listed by `TestG<n>.mat` for that query, **exactly as listed**:
  duplicated entries and entries naming the query's own image are kept,
  because the reference evaluation counts them (docs/evaluation.md), and
  `query_subsets`: "occlusion" and "low_resolution" for the queries that
  `annotation/test/subset/Occlusion.mat` and `Resolution.mat` list, when the
  download has those files (`SUBSET_FILES`; their layout is unverified).

Boxes: `idlocate` is [x, y, w, h] in pixels; the box is [x, y, x + w, y + h]
(no ±1). Values are cast to float64 before the addition because loadmat
returns them as uint8 when all four are below 256. Boxes with w <= 0 or
h <= 0 are dropped (as the reference loaders do) and counted.

TFDS stores one feature set per builder, so the scene splits use the query
features too, with the "no query" values of `schema.not_a_query`.

Metadata (`builder.info.metadata`): `num_train_ids` (K), `gallery_sizes`,
`protocol` ("cuhk"), `train_pid_names` (the `idname` of each train pid),
`num_test_ids` (distinct query identities), `num_queries` and
`max_persons_per_image` (the most boxes in one image, for `max_boxes`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_builders import raw_io
from ps_jax.data import schema
from ps_jax.ops import boxes as box_ops

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)

# Sizes documented for the official release (docs/datasets.md). Only used
# to warn about incomplete downloads; every number the builder stores is
# counted from the files.
DOC_NUM_IMAGES = 18184
DOC_NUM_TRAIN_IMAGES = 11206
DOC_NUM_TEST_IMAGES = 6978
DOC_NUM_TRAIN_IDS = 5532
DOC_NUM_QUERIES = 2900

STEP_ARCHIVE = "step 2 (unpack the CUHK-SYSU archive)"
STEP_IMAGES = "step 2 (unpack the CUHK-SYSU archive: Image/SSM/)"
STEP_ANNOTATIONS = "step 3 (the annotation files inside the archive)"

_ANNOTATION = "annotation"
_IMAGE_DIR = ("Image", "SSM")
_TRAIN_TEST = ("annotation", "test", "train_test")
_SUBSET_DIR = ("annotation", "test", "subset")
# Hard-case query lists (the OIM paper's occlusion and low-resolution
# subsets): subset name -> (file, variable names tried, documented size).
# Their layout is not verified against the real archive: each is read as a
# struct array of queries like TestG50's (a `Query` struct per element, or
# the query's own `imname` / `idlocate` fields), and a query that is not a
# TestG50 query is an error that names the file.
SUBSET_FILES = {
    "occlusion": ("Occlusion.mat", ("Occlusion1", "Occlusion"), 187),
    "low_resolution": ("Resolution.mat", ("Test_Size", "Resolution"), 290),
}


@dataclasses.dataclass
class _Scene:
  """The boxes of one image and their labels while they are being assigned."""
  name: str
  boxes_xywh: np.ndarray  # f64[N, 4] [x, y, w, h] pixels, degenerate dropped.
  pids: list[int]         # N ints, -1 until a protocol file labels the box.


@dataclasses.dataclass
class _Query:
  """One query of a TestG file; the gallery is kept compact (the six files
  list 2,900 x 7,650 entries, almost all without a box)."""
  image: str
  box_xywh: np.ndarray    # f64[4]
  idname: str
  gallery: list[str]      # image names, as listed (duplicates included).
  gallery_gt: list[tuple[int, np.ndarray]]  # (entry index, f64[4]) with a box.


class Builder(tfds.core.GeneratorBasedBuilder):
  """CUHK-SYSU person search (Xiao et al., CVPR 2017)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": ("query_subsets: the occlusion and low-resolution query "
                "lists of annotation/test/subset/, when the download has "
                "them."),
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  CUHK-SYSU is distributed by its authors after a licence agreement; no
  program can download it.

  Step 1 (get the archive): follow the dataset link on
    https://github.com/ShuangLI59/person_search (the CUHK-SYSU project page)
    and download the archive (commonly `cuhk_sysu.zip` / `CUHK-SYSU.zip`).
  Step 2 (unpack the CUHK-SYSU archive): `unzip cuhk_sysu.zip`. It unpacks to
    one folder (commonly `dataset/`) holding `Image/SSM/s1.jpg ...
    s18184.jpg` and `annotation/`.
  Step 3 (the annotation files inside the archive): that folder must hold
      annotation/Images.mat
      annotation/pool.mat
      annotation/test/train_test/Train.mat
      annotation/test/train_test/TestG50.mat   (and TestG100, TestG500,
                                   TestG1000, TestG2000, TestG4000)
  Step 4: pass that folder (or the folder containing it) as the manual dir:
    python -m data_builders build cuhk_sysu --manual_dir /path/to/dataset
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=schema.query_features(GALLERY_SIZES, with_subsets=True),
        homepage="https://github.com/ShuangLI59/person_search",
        metadata=tfds.core.MetadataDict(),
        # Keep file order: queries in TestG50 order, tests in pool.mat order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = raw_io.find_root(dl_manager.manual_dir, markers=("annotation",),
                            candidates=("dataset", "cuhk_sysu", "CUHK-SYSU"),
                            step=STEP_ARCHIVE)
    image_dir = raw_io.require(root.joinpath(*_IMAGE_DIR), STEP_IMAGES,
                               is_dir=True)
    parsed = parse_annotations(root)
    self.info.metadata.update({
        "num_train_ids": len(parsed.train_pid_names),
        "gallery_sizes": list(GALLERY_SIZES),
        "protocol": "cuhk",
        "train_pid_names": list(parsed.train_pid_names),
        "num_test_ids": len(set(parsed.query_pids)),
        "num_queries": len(parsed.queries),
        # The most boxes in one image: a lower bound for `max_boxes`.
        "max_persons_per_image": max(
            (len(s.boxes_xywh) for s in parsed.scenes.values()), default=0),
    })
    images_mat = str(root / _ANNOTATION / "Images.mat")
    for name in parsed.train_names + parsed.test_names:
      # Fail before writing anything if an image is missing.
      path = raw_io.safe_join(image_dir, name, source=images_mat)
      if not path.is_file():
        raise raw_io.RawFileMissingError(
            f"Image {path} referred to by {images_mat} does not exist "
            f"(it comes from {STEP_IMAGES}).")
    return {split: self._generate_examples(image_dir, parsed, split)
            for split in ("train", "test", "query")}

  def _generate_examples(self, image_dir: epath.Path, parsed: "ParsedCuhk",
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if split == "query":
      return self._generate_queries(image_dir, parsed)
    names = parsed.train_names if split == "train" else parsed.test_names
    return self._generate_scenes(image_dir, parsed, names)

  def _scene(self, image_dir: epath.Path, parsed: "ParsedCuhk", name: str,
             dropped: list[str]) -> tuple[dict[str, Any], int, int]:
    scene = parsed.scenes[name]
    image, width, height = raw_io.load_image(
        raw_io.safe_join(image_dir, name, source=parsed.images_mat),
        source=parsed.images_mat)
    ex = schema.scene_example(image, name, width, height,
                              box_ops.xywh_to_xyxy(scene.boxes_xywh),
                              scene.pids, camera=schema.UNKNOWN_CAMERA,
                              dropped=dropped)
    return ex, width, height

  def _generate_scenes(self, image_dir: epath.Path, parsed: "ParsedCuhk",
                       names: Sequence[str]
                       ) -> Iterator[tuple[str, dict[str, Any]]]:
    dropped: list[str] = []
    for name in names:
      ex, _, _ = self._scene(image_dir, parsed, name, dropped)
      yield name, schema.not_a_query(ex, GALLERY_SIZES, with_subsets=True)
    raw_io.log_dropped("Boxes outside their image (dropped)", dropped)

  def _generate_queries(self, image_dir: epath.Path, parsed: "ParsedCuhk"
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    dropped: list[str] = []
    for i, q in enumerate(parsed.queries):
      scene, width, height = self._scene(image_dir, parsed, q.image, dropped)
      ex = schema.query_example(scene, box_ops.xywh_to_xyxy(q.box_xywh),
                                parsed.query_pids[i], width, height,
                                subsets=parsed.subsets[i])
      yield f"{i:05d}", with_galleries(ex, parsed.galleries[i])


def with_galleries(query: dict[str, Any], galleries: dict[int, list[str]]
                   ) -> dict[str, Any]:
  """Adds the gallery lists to a query example exactly as the files list them.

  `schema.query_example` rejects a gallery holding the query's own image, but
  two official TestG100 queries list it and the reference evaluation counts
  that entry, so the lists are attached here unchanged.
  """
  ex = dict(query)
  for n, ids in galleries.items():
    ex[f"gallery_{int(n)}"] = [str(i) for i in ids]
  return ex


@dataclasses.dataclass
class ParsedCuhk:
  """Everything the builder needs from the annotation files."""
  images_mat: str
  scenes: dict[str, _Scene]
  train_names: list[str]
  test_names: list[str]
  train_pid_names: list[str]
  queries: list[_Query]
  query_pids: list[int]
  galleries: list[dict[int, list[str]]]
  # Per query, the hard-case subsets it is in ([] where the download has no
  # subset files).
  subsets: list[list[str]] = dataclasses.field(default_factory=list)


def _records(value: Any, where: str) -> list[Any]:
  """Struct elements of a struct array, or of a cell array of structs."""
  arr = np.asarray(value)
  if arr.dtype == object:
    out = []
    for j, cell in enumerate(raw_io.cell_elements(arr, where)):
      out.extend(raw_io.struct_elements(cell, f"{where} cell {j + 1}"))
    return out
  return raw_io.struct_elements(arr, where)


def _box(record: Any, where: str) -> np.ndarray:
  """The `idlocate` of a struct element: f64[4], or f64[0] when empty."""
  value = raw_io.mat_field(record, "idlocate", where)
  arr = raw_io.mat_numbers(value, f"{where} idlocate")
  if arr.size not in (0, 4):
    raise raw_io.RawFormatError(
        f"{where}: idlocate has {arr.size} values, expected 4 ([x, y, w, h]) "
        f"or none.")
  return arr


def _read_images(path: epath.Path, image_dir: epath.Path
                 ) -> dict[str, _Scene]:
  """Images.mat: every image and its non-degenerate boxes.

  Every image name is checked to stay inside `image_dir` here, before any
  other file refers to it.
  """
  mat = raw_io.load_mat(path, STEP_ANNOTATIONS)
  img = raw_io.mat_var(mat, ("Img", "img"), path)
  scenes: dict[str, _Scene] = {}
  degenerate, bad_count = [], []
  for i, rec in enumerate(_records(img, f"{path} Img")):
    where = f"{path} Img({i + 1})"
    name = raw_io.mat_str(raw_io.mat_field(rec, "imname", where), where)
    raw_io.safe_join(image_dir, name, source=where)
    if name in scenes:
      raise raw_io.RawFormatError(f"{where}: image {name} is listed twice.")
    boxes = []
    elements = raw_io.struct_elements(raw_io.mat_field(rec, "box", where),
                                      f"{where} box")
    for j, b in enumerate(elements):
      box = _box(b, f"{where} box({j + 1})")
      if box.size == 4 and box[2] > 0 and box[3] > 0:
        boxes.append(box)
      else:
        degenerate.append(f"{name} box {j + 1} = {box.tolist()}")
    if "nAppear" in (rec.dtype.names or ()):
      n = raw_io.mat_numbers(rec["nAppear"], f"{where} nAppear")
      if n.size == 1 and int(n[0]) != len(elements):
        bad_count.append(f"{name}: nAppear {int(n[0])}, {len(elements)} boxes")
    scenes[name] = _Scene(name, np.asarray(boxes, np.float64).reshape(-1, 4),
                          [schema.UNLABELED_PID] * len(boxes))
  raw_io.log_dropped(f"{path}: boxes with w <= 0 or h <= 0 (dropped, as the "
                     "reference loaders do)", degenerate)
  raw_io.log_dropped(f"{path}: nAppear differs from the number of boxes",
                     bad_count)
  empty = [n for n, s in scenes.items() if not len(s.boxes_xywh)]
  raw_io.log_dropped(f"{path}: images without any valid box (kept as "
                     "background)", empty)
  return scenes


def _read_names(path: epath.Path) -> list[str]:
  """pool.mat: the cell array of gallery image names."""
  mat = raw_io.load_mat(path, STEP_ANNOTATIONS)
  pool = raw_io.mat_var(mat, ("pool", "Pool"), path)
  names = [raw_io.mat_str(c, f"{path} pool({j + 1})")
           for j, c in enumerate(raw_io.cell_elements(pool, f"{path} pool"))]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise raw_io.RawFormatError(f"{path}: images listed twice: {dup[:5]}")
  return names


def _read_train(path: epath.Path) -> list[tuple[str, list[tuple[str, Any]]]]:
  """Train.mat: (idname, [(image, f64[4] box), ...]) per identity."""
  mat = raw_io.load_mat(path, STEP_ANNOTATIONS)
  train = raw_io.mat_var(mat, ("Train", "train"), path)
  out = []
  for i, rec in enumerate(_records(train, f"{path} Train")):
    where = f"{path} Train({i + 1})"
    idname = raw_io.mat_str(raw_io.mat_field(rec, "idname", where), where)
    scenes = []
    elements = raw_io.struct_elements(raw_io.mat_field(rec, "scene", where),
                                      f"{where} scene")
    for j, s in enumerate(elements):
      w = f"{where} scene({j + 1})"
      scenes.append((raw_io.mat_str(raw_io.mat_field(s, "imname", w), w),
                     _box(s, w)))
    out.append((idname, scenes))
  return out


def _read_protocol(path: epath.Path, canonical: dict[str, str]
                   ) -> list[_Query]:
  """TestG<n>.mat: queries with their gallery entries, as listed.

  Read with loadmat(squeeze_me=True): with default arguments each of the
  11.6 million TestG4000 entries becomes three numpy arrays (about 1 KB per
  entry in memory, measured on a 400,000-entry file); squeezed, names are
  plain strings and the peak is several times lower. `canonical` maps an
  image name to one shared string object so the kept lists stay small.
  """
  mat = raw_io.load_mat(path, STEP_ANNOTATIONS, squeeze=True)
  stem = path.name.rsplit(".", 1)[0]
  var = raw_io.mat_var(mat, (stem, stem.lower(), stem.upper()), path)
  del mat
  queries = []
  for i, rec in enumerate(_records(var, f"{path} {stem}")):
    where = f"{path} {stem}({i + 1})"
    qrecs = raw_io.struct_elements(raw_io.mat_field(rec, "Query", where),
                                   f"{where}.Query")
    if len(qrecs) != 1:
      raise raw_io.RawFormatError(
          f"{where}.Query: expected one struct, got {len(qrecs)}.")
    q, qw = qrecs[0], f"{where}.Query"
    box = _box(q, qw)
    if box.size != 4:
      raise raw_io.RawFormatError(f"{qw}: the query has no box.")
    idname = (raw_io.mat_str(q["idname"], qw)
              if "idname" in (q.dtype.names or ()) else "")
    entries = raw_io.struct_elements(raw_io.mat_field(rec, "Gallery", where),
                                     f"{where}.Gallery")
    for field in ("imname", "idlocate"):
      if entries:
        raw_io.mat_field(entries[0], field, f"{where}.Gallery(1)")
    names, gts = [], []
    for j, g in enumerate(entries):
      name = g["imname"]
      if type(name) is not str:  # pylint: disable=unidiomatic-typecheck
        name = raw_io.mat_str(name, f"{where}.Gallery({j + 1})")
      names.append(canonical.get(name, name))
      if np.size(g["idlocate"]):  # most entries hold no box
        gts.append((j, _box(g, f"{where}.Gallery({j + 1})")))
    image = raw_io.mat_str(raw_io.mat_field(q, "imname", qw), qw)
    queries.append(_Query(canonical.get(image, image), box, idname, names,
                          gts))
  return queries


def _read_subset(path: epath.Path, names: Sequence[str],
                 queries: Sequence[_Query]) -> list[int]:
  """The TestG50 indices of the queries a subset file lists.

  Raises:
    RawFormatError: no variable of `names`, an element without a query box,
      or a query (image, box) that TestG50 does not have.
  """
  mat = raw_io.load_mat(path, STEP_ANNOTATIONS)
  var = raw_io.mat_var(mat, names, path)
  index = {(q.image, tuple(q.box_xywh.tolist())): i
           for i, q in enumerate(queries)}
  found = []
  for i, rec in enumerate(_records(var, f"{path} {names[0]}")):
    where = f"{path} {names[0]}({i + 1})"
    q = rec
    if "Query" in (rec.dtype.names or ()):
      qrecs = raw_io.struct_elements(rec["Query"], f"{where}.Query")
      if len(qrecs) != 1:
        raise raw_io.RawFormatError(
            f"{where}.Query: expected one struct, got {len(qrecs)}.")
      q, where = qrecs[0], f"{where}.Query"
    image = raw_io.mat_str(raw_io.mat_field(q, "imname", where), where)
    box = _box(q, where)
    key = (image, tuple(box.tolist()))
    if key not in index:
      raise raw_io.RawFormatError(
          f"{where}: query {image} {box.tolist()} is not a TestG50 query; "
          "expected the subset to list TestG50 queries (a struct array "
          "with `Query` elements, or with `imname` and `idlocate`)")
    found.append(index[key])
  return sorted(set(found))


def read_subsets(root: epath.Path, queries: Sequence[_Query]
                 ) -> list[list[str]]:
  """Per query, the `SUBSET_FILES` subsets it is in; files the download
  lacks are skipped (logged)."""
  subsets: list[list[str]] = [[] for _ in queries]
  folder = root.joinpath(*_SUBSET_DIR)
  for name, (file, names, documented) in SUBSET_FILES.items():
    path = folder / file
    if not path.is_file():
      logging.info("No %s: the %s subset is not reported.", path, name)
      continue
    members = _read_subset(path, names, queries)
    raw_io.warn_count(f"{path}: queries", len(members), documented)
    for i in members:
      subsets[i].append(name)
  return subsets


def _assign(scene: _Scene, box_xywh: np.ndarray, pid: int) -> str:
  """Labels the first box of `scene` equal to `box_xywh` with `pid`.

  Returns "ok", "missing" (no equal box) or "relabel" (the box had another
  pid; it is overwritten, as SeqNet's `set_box_pid` does).
  """
  if not len(scene.boxes_xywh):
    return "missing"
  hit = np.flatnonzero(np.all(scene.boxes_xywh == box_xywh[None], axis=1))
  if not hit.size:
    return "missing"
  k = int(hit[0])
  old, scene.pids[k] = scene.pids[k], pid
  return "relabel" if old not in (schema.UNLABELED_PID, pid) else "ok"


def _test_pid(idname: str, where: str) -> int:
  m = re.fullmatch(r"p(\d+)", idname.strip())
  if not m:
    raise raw_io.RawFormatError(
        f"{where}: query idname {idname!r} is not of the form p<number>.")
  return int(m.group(1))


def _check_protocol(path: epath.Path, listed: list[_Query],
                    base_mat: epath.Path, queries: list[_Query],
                    query_pids: list[int], scenes: dict[str, _Scene],
                    test_set: set[str], pool_mat: epath.Path) -> None:
  """Checks one TestG file against TestG50 and the test labels.

  Every TestG file must list the TestG50 queries in the same order, and name
  only test images. The reference evaluation takes each entry's gt box from
  the TestG file, so each such box must carry the query's pid in the stored
  scene: an unlabeled equal box is labeled now; disagreements are logged.
  """
  if len(listed) != len(queries):
    raise raw_io.RawFormatError(
        f"{path} lists {len(listed)} queries, {base_mat} lists "
        f"{len(queries)}; every TestG file lists the same queries.")
  extra, absent, conflict, own = [], [], [], 0
  for i, (q, q0) in enumerate(zip(listed, queries)):
    where = f"{path} query {i + 1}"
    if q.image != q0.image or not np.array_equal(q.box_xywh, q0.box_xywh):
      raise raw_io.RawFormatError(
          f"{where} ({q.image} {q.box_xywh.tolist()}) differs from "
          f"{base_mat} query {i + 1} ({q0.image} {q0.box_xywh.tolist()}).")
    bad = [name for name in q.gallery if name not in test_set]
    if bad:
      raise raw_io.RawFormatError(
          f"{where}: gallery image {bad[0]} is not a test image of "
          f"{pool_mat}.")
    own += q.gallery.count(q.image)
    pid = query_pids[i]
    for j, box in q.gallery_gt:
      name = q.gallery[j]
      s = scenes[name]
      hit = (np.flatnonzero(np.all(s.boxes_xywh == box[None], axis=1))
             if len(s.boxes_xywh) else np.zeros(0, np.int64))
      if not hit.size:
        absent.append(f"{where} {name} {box.tolist()}")
      elif s.pids[int(hit[0])] == schema.UNLABELED_PID:
        s.pids[int(hit[0])] = pid
        extra.append(f"{where} {name}")
      elif s.pids[int(hit[0])] != pid:
        conflict.append(f"{where} {name}: labeled "
                        f"{s.pids[int(hit[0])]} by {base_mat}")
  raw_io.log_dropped(f"{path}: gallery gt boxes labeled only by this file "
                     "(labeled now)", extra)
  raw_io.log_dropped(f"{path}: gallery gt boxes equal to no Images.mat box",
                     absent)
  raw_io.log_dropped(f"{path}: gallery gt boxes that {base_mat} gives to "
                     "another identity (label kept)", conflict)
  if own:
    logging.info("%s: %d gallery entries name the query's own image (kept, "
                 "as the reference evaluation uses them).", path, own)
  n = int(path.name[len("TestG"):-len(".mat")])
  sizes = sorted({len(q.gallery) for q in listed})
  if sizes and sizes != [n]:
    logging.warning("%s: gallery lengths %s, expected %d per query.", path,
                    sizes[:5], n)


def parse_annotations(root: epath.Path) -> ParsedCuhk:
  """Reads and cross-checks every annotation file of a CUHK-SYSU root."""
  ann = root / _ANNOTATION
  tt = root.joinpath(*_TRAIN_TEST)
  images_mat = ann / "Images.mat"
  scenes = _read_images(images_mat, root.joinpath(*_IMAGE_DIR))
  pool_mat = ann / "pool.mat"
  test_names = _read_names(pool_mat)
  for name in test_names:
    if name not in scenes:
      raise raw_io.RawFormatError(
          f"{pool_mat} lists image {name}, which {images_mat} does not have.")
  test_set = set(test_names)
  train_names = sorted(n for n in scenes if n not in test_set)

  # Train labels: provisional id = Train.mat index; kept ids renumbered later.
  train_mat = tt / "Train.mat"
  train = _read_train(train_mat)
  missing, relabel, in_test = [], [], []
  for i, (idname, occurrences) in enumerate(train):
    for name, box in occurrences:
      where = f"{train_mat} Train({i + 1}) {idname} in {name}"
      if name not in scenes:
        raise raw_io.RawFormatError(
            f"{where}: image {name} is not in {images_mat}.")
      if name in test_set:
        in_test.append(where)
        continue
      status = _assign(scenes[name], box, i) if box.size == 4 else "missing"
      if status == "missing":
        missing.append(f"{where} box {box.tolist()}")
      elif status == "relabel":
        relabel.append(where)
  raw_io.log_dropped(f"{train_mat}: boxes equal to no Images.mat box "
                     "(ignored)", missing)
  raw_io.log_dropped(f"{train_mat}: boxes already labeled by another "
                     "identity (relabeled, as SeqNet does)", relabel)
  raw_io.log_dropped(f"{train_mat}: occurrences in pool.mat test images "
                     "(ignored)", in_test)
  used = sorted({p for n in train_names for p in scenes[n].pids if p >= 0})
  remap = {old: new for new, old in enumerate(used)}
  for n in train_names:
    scenes[n].pids = [remap.get(p, schema.UNLABELED_PID)
                      for p in scenes[n].pids]
  unused = [train[i][0] for i in range(len(train)) if i not in remap]
  raw_io.log_dropped(f"{train_mat}: identities that label no training box "
                     "(left out of the pid range)", unused)
  train_pid_names = [train[old][0] for old in used]

  # Test labels from TestG50 (as the reference loaders), then the galleries.
  canonical = {n: n for n in test_names}
  base_mat = tt / f"TestG{GALLERY_SIZES[0]}.mat"
  queries = _read_protocol(base_mat, canonical)
  query_pids = []
  missing, relabel = [], []
  for i, q in enumerate(queries):
    where = f"{base_mat} query {i + 1}"
    pid = _test_pid(q.idname, where)
    query_pids.append(pid)
    for name, box in [(q.image, q.box_xywh)] + [
        (q.gallery[j], box) for j, box in q.gallery_gt]:
      if name not in test_set:
        raise raw_io.RawFormatError(
            f"{where}: image {name} is not a test image of {pool_mat}.")
      status = _assign(scenes[name], box, pid)
      if status == "missing":
        missing.append(f"{where} {name} {box.tolist()}")
      elif status == "relabel":
        relabel.append(f"{where} {name}")
  raw_io.log_dropped(f"{base_mat}: boxes equal to no Images.mat box "
                     "(not labeled)", missing)
  raw_io.log_dropped(f"{base_mat}: boxes already labeled by another query "
                     "(relabeled, as SeqNet does)", relabel)

  galleries: list[dict[int, list[str]]] = [{} for _ in queries]
  for n in GALLERY_SIZES:
    path = tt / f"TestG{n}.mat"
    listed = queries if n == GALLERY_SIZES[0] else _read_protocol(path,
                                                                  canonical)
    _check_protocol(path, listed, base_mat, queries, query_pids, scenes,
                    test_set, pool_mat)
    for i, q in enumerate(listed):
      galleries[i][n] = q.gallery

  raw_io.warn_count(f"{images_mat}: images", len(scenes), DOC_NUM_IMAGES)
  raw_io.warn_count(f"{pool_mat}: test images", len(test_names),
                    DOC_NUM_TEST_IMAGES)
  raw_io.warn_count("CUHK-SYSU train images", len(train_names),
                    DOC_NUM_TRAIN_IMAGES)
  raw_io.warn_count(f"{train_mat}: labeled training identities",
                    len(train_pid_names), DOC_NUM_TRAIN_IDS)
  raw_io.warn_count(f"{base_mat}: queries", len(queries), DOC_NUM_QUERIES)
  return ParsedCuhk(str(images_mat), scenes, train_names, test_names,
                    train_pid_names, queries, query_pids, galleries,
                    read_subsets(root, queries))
