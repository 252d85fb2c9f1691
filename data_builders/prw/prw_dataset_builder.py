"""PRW (Person Re-identification in the Wild), built from the official download.

Reads the official layout (docs/datasets.md, "PRW raw layout") into the common
person-search schema of `ps_jax/data/schema.py`:

* `train`: the frames of `frame_train.mat` (`img_index_train`), in file
  order. Person ids >= 1 become contiguous pids 0..K-1 in ascending order of
  the PRW id (K = 483 on the official files: ids 1-478, 480-483 and 932);
  the PRW id of each pid is in the metadata.
* `test`: the frames of `frame_test.mat` (`img_index_test`), in file order,
  with the PRW ids unchanged (1..933).
* `query`: the lines of `query_info.txt` in file order, each with its frame
  (as in `test`), `query_bbox` and `query_pid`. PRW's protocol has no gallery
  lists: a query's gallery is every test frame but its own (and, in the
  cross-camera variant, every frame of another camera).

Conventions:
* Annotation rows are [id, x, y, w, h] (pixels, fractional, x/y may be
  negative). The box is [x, y, x + w, y + h] from the raw values, then
  clipped to the image. (SeqNet clips x, y, w, h at 0 *before* adding, which
  shifts x2 by |x| when x < 0; this builder keeps the drawn box.)
* id -2 ("identity uncertain") becomes -1 (unlabeled). Any other id < 1 is
  not documented; it also becomes -1 and is counted in a warning.
* A frame holding the same labeled id twice keeps both boxes (as SeqNet).
* camera: the number after `c` in the frame name (1..6, as PRW writes it).
* The per-frame variable is `box_new`, else `anno_file`, else
  `anno_previous` (the order the reference loaders use).
* `query_info.txt` has CRLF line ends; lines are split on any whitespace.

TFDS stores one feature set per builder, so the scene splits use the query
features too, with the "no query" values of `schema.not_a_query`.

Metadata (`builder.info.metadata`): `num_train_ids` (K), `gallery_sizes` ([]),
`protocol` ("prw"), `train_pid_ids` (the PRW id of each train pid),
`num_test_ids` (distinct query identities), `num_queries` and
`max_persons_per_image` (the most boxes in one frame, for `max_boxes`).
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

# Sizes documented for the official release (docs/datasets.md); only used
# to warn about incomplete downloads.
DOC_NUM_TRAIN_FRAMES = 5704
DOC_NUM_TEST_FRAMES = 6112
DOC_NUM_TRAIN_IDS = 483
DOC_NUM_TEST_IDS = 450
DOC_NUM_QUERIES = 2057

STEP_ARCHIVE = "step 2 (unpack PRW-v16.04.20.zip)"
STEP_FILES = "step 3 (the files inside PRW-v16.04.20/)"

ANNOTATION_VARS = ("box_new", "anno_file", "anno_previous")
PRW_UNCERTAIN_ID = -2
_CAMERA_RE = re.compile(r"^c(\d+)s(\d+)_")


@dataclasses.dataclass
class _Frame:
  name: str                # without ".jpg"
  camera: int
  boxes_xyxy: np.ndarray   # f64[N, 4] pixels, unclipped.
  ids: list[int]           # N PRW ids, -1 for unlabeled.
  source: str              # the frame list that names this frame.


@dataclasses.dataclass
class _Query:
  pid: int
  box_xyxy: np.ndarray     # f64[4] pixels, unclipped.
  frame: str


@dataclasses.dataclass
class ParsedPrw:
  frames: dict[str, _Frame]
  train_names: list[str]
  test_names: list[str]
  train_pid_ids: list[int]  # PRW id of each contiguous train pid.
  queries: list[_Query]
  query_source: str


class Builder(tfds.core.GeneratorBasedBuilder):
  """PRW person search (Zheng et al., CVPR 2017)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  PRW is distributed by its authors; no program can download it.

  Step 1 (get the archive): download PRW-v16.04.20.zip (2.67 GB) from the
    PRW project page (Baidu or Google Drive links),
    https://zheng-lab.cecs.anu.edu.au/Project/project_prw.html
  Step 2 (unpack PRW-v16.04.20.zip): `unzip PRW-v16.04.20.zip` gives one
    folder `PRW-v16.04.20/` holding `frames/` (11,816 jpg) and
    `annotations/` (one `<frame>.jpg.mat` per frame).
  Step 3 (the files inside PRW-v16.04.20/): the folder must hold
      frames/c1s1_000151.jpg ...        annotations/c1s1_000151.jpg.mat ...
      frame_train.mat   frame_test.mat   ID_train.mat   ID_test.mat
      query_info.txt
    (`query_box/` is not needed: the query crops are cut from the frames.)
  Step 4: pass that folder (or the folder containing it) as the manual dir:
    python -m data_builders build prw --manual_dir /path/to/PRW-v16.04.20
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=schema.query_features(()),
        homepage="https://zheng-lab.cecs.anu.edu.au/Project/project_prw.html",
        metadata=tfds.core.MetadataDict(),
        # Keep file order: frames as listed, queries as in query_info.txt.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = raw_io.find_root(dl_manager.manual_dir,
                            markers=("frames", "annotations"),
                            candidates=("PRW-v16.04.20", "PRW", "prw"),
                            step=STEP_ARCHIVE)
    parsed = parse_annotations(root)
    self.info.metadata.update({
        "num_train_ids": len(parsed.train_pid_ids),
        "gallery_sizes": [],
        "protocol": "prw",
        "train_pid_ids": list(parsed.train_pid_ids),
        "num_test_ids": len({q.pid for q in parsed.queries}),
        "num_queries": len(parsed.queries),
        # The most boxes in one frame: a lower bound for `max_boxes`.
        "max_persons_per_image": max(
            (len(f.ids) for f in parsed.frames.values()), default=0),
    })
    return {split: self._generate_examples(root, parsed, split)
            for split in ("train", "test", "query")}

  def _generate_examples(self, root: epath.Path, parsed: ParsedPrw,
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    dropped: list[str] = []
    remap = {prw_id: pid for pid, prw_id in enumerate(parsed.train_pid_ids)}
    if split == "query":
      for i, q in enumerate(parsed.queries):
        scene, width, height = _scene(root, parsed.frames[q.frame], None,
                                      dropped)
        yield f"{i:05d}", schema.query_example(scene, q.box_xyxy, q.pid,
                                               width, height)
    else:
      names = parsed.train_names if split == "train" else parsed.test_names
      for name in names:
        scene, _, _ = _scene(root, parsed.frames[name],
                             remap if split == "train" else None, dropped)
        yield name, schema.not_a_query(scene)
    raw_io.log_dropped(f"PRW {split}: boxes empty after clipping to the "
                       "image (dropped)", dropped)


def _scene(root: epath.Path, frame: _Frame, remap: dict[int, int] | None,
           dropped: list[str]) -> tuple[dict[str, Any], int, int]:
  """The scene example of a frame; `remap` maps PRW ids to train pids."""
  image, width, height = raw_io.load_image(
      raw_io.safe_join(root / "frames", frame.name + ".jpg",
                       source=frame.source), source=frame.source)
  if remap is None:
    pids = frame.ids
  else:
    pids = [remap[i] if i >= 0 else schema.UNLABELED_PID for i in frame.ids]
  ex = schema.scene_example(image, frame.name + ".jpg", width, height,
                            frame.boxes_xyxy, pids, camera=frame.camera,
                            dropped=dropped)
  return ex, width, height


def _frame_name(raw: str) -> str:
  """Frame names in the lists have no extension; tolerate one anyway."""
  raw = raw.strip()
  return raw[:-4] if raw.lower().endswith(".jpg") else raw


def _camera(name: str, source: str) -> int:
  m = _CAMERA_RE.match(name)
  if not m:
    raise raw_io.RawFormatError(
        f"{source}: frame name {name!r} is not of the form "
        f"c<camera>s<sequence>_<frame>.")
  return int(m.group(1))


def _read_frame_list(path: epath.Path, names: Sequence[str]) -> list[str]:
  mat = raw_io.load_mat(path, STEP_FILES)
  var = raw_io.mat_var(mat, names, path)
  out = []
  for j, cell in enumerate(raw_io.cell_elements(var, f"{path} {names[0]}")):
    out.append(_frame_name(raw_io.mat_str(cell, f"{path} {names[0]}({j + 1})")))
  dup = sorted({n for n in out if out.count(n) > 1})
  if dup:
    raise raw_io.RawFormatError(f"{path}: frames listed twice: {dup[:5]}")
  return out


def _read_ids(path: epath.Path, names: Sequence[str]) -> set[int]:
  mat = raw_io.load_mat(path, STEP_FILES)
  values = raw_io.mat_numbers(raw_io.mat_var(mat, names, path),
                              f"{path} {names[0]}")
  return {int(v) for v in values}


def _read_frame(root: epath.Path, name: str, source: str,
                odd_ids: list[str], duplicates: list[str]) -> _Frame:
  """One frame's annotation file: boxes and PRW ids (-2 -> -1)."""
  where = f"{source} frame {name}"
  raw_io.safe_join(root / "frames", name, source=source)  # before any use
  path = raw_io.safe_join(root / "annotations", name + ".jpg.mat",
                          source=source)
  if not path.is_file():
    raise raw_io.RawFileMissingError(
        f"Missing annotation file {path} for frame {name} listed in "
        f"{source}. It comes from {STEP_ARCHIVE} of the manual download "
        f"instructions.")
  mat = raw_io.load_mat(path, STEP_ARCHIVE)
  value = raw_io.mat_var(mat, ANNOTATION_VARS, path)
  arr = np.asarray(value)
  if arr.dtype.kind not in "biuf":
    raise raw_io.RawFormatError(
        f"{path}: expected a numeric (N, 5) matrix, got dtype {arr.dtype}.")
  arr = arr.astype(np.float64)
  if arr.size == 0:
    arr = arr.reshape(0, 5)
  if arr.ndim != 2 or arr.shape[1] != 5:
    raise raw_io.RawFormatError(
        f"{path}: expected an (N, 5) matrix of [id, x, y, w, h] rows, got "
        f"shape {arr.shape}.")
  if not np.all(np.isfinite(arr)):
    raise raw_io.RawFormatError(f"{path}: non-finite values.")
  raw_ids = arr[:, 0]
  if np.any(raw_ids != np.round(raw_ids)):
    raise raw_io.RawFormatError(f"{path}: non-integer person ids "
                                f"{raw_ids.tolist()}.")
  ids = []
  for v in raw_ids.astype(np.int64).tolist():
    if v >= 1:
      ids.append(v)
    else:
      if v != PRW_UNCERTAIN_ID:
        odd_ids.append(f"{path}: id {v}")
      ids.append(schema.UNLABELED_PID)
  labeled = [i for i in ids if i >= 0]
  if len(labeled) != len(set(labeled)):
    duplicates.append(f"{path}: ids {sorted(labeled)}")
  return _Frame(name, _camera(name, where), box_ops.xywh_to_xyxy(arr[:, 1:]),
                ids, source)


def _read_queries(path: epath.Path, test_names: set[str]) -> list[_Query]:
  """query_info.txt: `pid x y w h frame` per line (CRLF tolerated)."""
  queries = []
  for lineno, line in raw_io.read_text_lines(path, STEP_FILES):
    where = f"{path} line {lineno}"
    parts = line.split()
    if len(parts) != 6:
      raise raw_io.RawFormatError(
          f"{where}: expected 'pid x y w h frame', got {line!r}.")
    try:
      pid = int(parts[0])
      xywh = np.array([float(v) for v in parts[1:5]], np.float64)
    except ValueError as e:
      raise raw_io.RawFormatError(f"{where}: {e} in {line!r}.") from e
    frame = _frame_name(parts[5])
    raw_io.safe_join(path.parent / "frames", frame + ".jpg", source=where)
    if frame not in test_names:
      raise raw_io.RawFormatError(
          f"{where}: query frame {frame} is not a test frame of "
          f"frame_test.mat.")
    if pid < 0:
      raise raw_io.RawFormatError(f"{where}: query id {pid} must be >= 0.")
    queries.append(_Query(pid, box_ops.xywh_to_xyxy(xywh), frame))
  return queries


def parse_annotations(root: epath.Path) -> ParsedPrw:
  """Reads and cross-checks every annotation file of a PRW root."""
  train_mat, test_mat = root / "frame_train.mat", root / "frame_test.mat"
  train_names = _read_frame_list(train_mat, ("img_index_train",))
  test_names = _read_frame_list(test_mat, ("img_index_test",))
  both = sorted(set(train_names) & set(test_names))
  if both:
    raise raw_io.RawFormatError(
        f"{train_mat} and {test_mat} both list frames {both[:5]}.")
  id_train = _read_ids(root / "ID_train.mat", ("ID_train",))
  id_test = _read_ids(root / "ID_test.mat", ("ID_test2", "ID_test"))
  raw_io.require(root / "frames", STEP_ARCHIVE, is_dir=True)
  raw_io.require(root / "annotations", STEP_ARCHIVE, is_dir=True)

  frames: dict[str, _Frame] = {}
  odd_ids, duplicates = [], []
  for names, source in ((train_names, train_mat), (test_names, test_mat)):
    for name in names:
      frames[name] = _read_frame(root, name, str(source), odd_ids, duplicates)
  raw_io.log_dropped("PRW annotations: ids other than -2 and >= 1 (treated "
                     "as unlabeled)", odd_ids)
  if duplicates:
    logging.info("PRW: %d frames hold one labeled id twice (kept, as "
                 "SeqNet); first: %s", len(duplicates), duplicates[0])
  for name in train_names + test_names:
    path = raw_io.safe_join(root / "frames", name + ".jpg",
                            source=str(frames[name].source))
    if not path.is_file():
      raise raw_io.RawFileMissingError(
          f"Image {path} of frame {name} listed in {frames[name].source} "
          f"does not exist (it comes from {STEP_ARCHIVE}).")

  train_ids = sorted({i for n in train_names for i in frames[n].ids if i >= 0})
  test_ids = {i for n in test_names for i in frames[n].ids if i >= 0}
  query_path = root / "query_info.txt"
  queries = _read_queries(query_path, set(test_names))
  absent = [f"query {i + 1} id {q.pid} in {q.frame}"
            for i, q in enumerate(queries) if q.pid not in frames[q.frame].ids]
  raw_io.log_dropped(f"{query_path}: query ids absent from their frame's "
                     "annotations", absent)
  not_test = sorted({q.pid for q in queries} - id_test)
  raw_io.log_dropped(f"{query_path}: query ids not in ID_test.mat",
                     [str(i) for i in not_test])

  raw_io.warn_count(f"{train_mat}: train frames", len(train_names),
                    DOC_NUM_TRAIN_FRAMES)
  raw_io.warn_count(f"{test_mat}: test frames", len(test_names),
                    DOC_NUM_TEST_FRAMES)
  raw_io.warn_count("PRW labeled training identities (in the train frames)",
                    len(train_ids), DOC_NUM_TRAIN_IDS)
  raw_io.warn_count(f"{root / 'ID_train.mat'}: ids", len(id_train),
                    len(train_ids), "the train frames hold")
  raw_io.warn_count(f"{root / 'ID_test.mat'}: test ids", len(id_test),
                    DOC_NUM_TEST_IDS)
  raw_io.warn_count(f"{query_path}: queries", len(queries), DOC_NUM_QUERIES)
  extra = sorted(set(train_ids) - id_train)
  raw_io.log_dropped("PRW ids in train frames but not in ID_train.mat "
                     "(trained on anyway)", [str(i) for i in extra])
  logging.info("PRW: %d train ids, %d labeled ids in test frames, %d "
               "queries.", len(train_ids), len(test_ids), len(queries))
  return ParsedPrw(frames, train_names, test_names, train_ids, queries,
                   str(query_path))
