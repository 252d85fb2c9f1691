"""Person-search protocols: CUHK-SYSU (gallery lists) and PRW (all frames).

Reproduces `eval_search_cuhk` / `eval_search_prw` of SeqNet `eval_func.py`
(COAT copies it; AlignPS `tools/test_results*.py` and OIM `psdb.py` share the
core), see docs/evaluation.md; CBGM is an option (`cbgm.py`). Per query:

  * gallery detections with score >= `det_thresh` take part (SeqNet/COAT 0.5;
    AlignPS 0.2 on CUHK-SYSU, 0.15 on PRW); similarity = dot product of the
    (L2-normalized) embeddings;
  * a gallery image "contains the target" if one of its GT boxes carries the
    query's pid; the first such box is the target box (SeqNet reads the
    CUHK-SYSU box from the TestG entry; a builder that numbers the test
    identities from TestG50, as SeqNet's dataset does, yields the same box).
    `count_gt` counts these images, with or without kept detections;
  * in such an image the detection with the highest similarity among those
    with IoU >= min(0.5, w*h / ((w+10)*(h+10))) (w, h of the target box) is
    the single true positive (`count_tp`); every other detection is negative;
  * AP = scikit-learn AP over all the query's gallery detections, times
    recall = count_tp / count_gt; mAP is the mean over *all* queries, a query
    without any true match (count_tp == 0 or count_gt == 0) scoring 0;
  * top-k (k = 1, 5, 10) = 1 if a true positive is among the k most similar
    detections.

`cws=True`: Confidence Weighted Similarity (the PRW paper, as SeqNet
applies it), similarity x detection score (`detection.cws_weighted`).

CUHK-SYSU: the gallery of a query is its `TestG<n>` list of image ids
(`Queries.galleries[n]`). SeqNet quirks, reproduced by default:
  * duplicated entries in a list (`duplicates="seqnet"`): every entry adds to
    `count_gt` but an image's detections enter the ranking once (SeqNet skips
    names already seen). `"repeat"` adds them once per entry (OIM `psdb.py`,
    AlignPS), `"unique"` drops duplicate entries entirely;
  * the full set (gallery size -1 = `FULL_SET`) is the TestG50 list plus every
    other gallery image as pure negatives, the query's own image excluded.
    (`full_set_base` names another list size for datasets without TestG50
    lists, e.g. small synthetic ones.)
    SeqNet/COAT add the images of the TestG50 list a second time, as
    negatives (their `tested` set is filled only after the negatives were
    added), so each of them, true match included, also appears once with
    label 0 (`full_set="seqnet"`). OIM `psdb.py` adds every image once
    (`full_set="psdb"`).

PRW: the gallery is every test frame except the query's own
(`multi_view=False`, SeqNet/COAT/AlignPS default `ignore_cam_id=True`) or
only the frames of other cameras (`multi_view=True`).

Ties. AP follows scikit-learn (tied scores are one threshold). The
reference's top-k sorts with NumPy's unstable argsort, so its order among
equal similarities is arbitrary; here a true positive ranks after every tied
negative (a model with collapsed embeddings cannot score), but ahead of its
own duplicate copies: the SeqNet full-set copy of a true match has exactly its
similarity, and ranking it first would make every full-set top-k zero.

The query's own image is excluded where the reference excludes it: from the
full set's extra negatives and from PRW galleries. A TestG list that names
it (two queries of the official TestG100 do, and the CUHK-SYSU builder keeps
those entries) is ranked as listed, as the reference ranks it.

Inputs are plain NumPy (see `Gallery`, `Queries`). Boxes are xyxy in
original image pixels; `integer_gt_boxes=True` truncates GT boxes to
integers like the reference data (see `detection.truncate_boxes`).

How it is made fast is in docs/evaluation.md ("Speed").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ps_jax.eval import bootstrap
from ps_jax.eval import cbgm as cbgm_lib
from ps_jax.eval import detection
from ps_jax.eval import ranking

FULL_SET = -1
CUHK_GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, FULL_SET)
TOP_K = (1, 5, 10)
# Small-box rule of OIM/SeqNet: iou_thresh = min(0.5, w*h / ((w+10)*(h+10))).
SMALL_BOX_PAD = 10.0
MAX_IOU_THRESH = 0.5
# Queries per matrix product; [chunk, num_dets] f32 similarities.
_QUERY_CHUNK = 128
# Below this fraction of all detections per query, compute only the listed
# images' similarities, one product per gallery image for the queries that
# list it (`ranking.list_rows`), instead of multiplying every query against
# all detections. On the synthetic full-size CUHK-SYSU (one core, busy
# machine) it was ~8x faster at gallery 100 (~1% of the detections), ~3x at
# 500 (7%), ~1.5x at 1,000 (14%), ~1.2x at 2,000 (29%); gallery 4,000 (57%)
# multiplies.
_GATHER_FRACTION = 0.35

Duplicates = Literal["seqnet", "repeat", "unique"]
FullSet = Literal["seqnet", "psdb"]


@dataclasses.dataclass(frozen=True)
class Gallery:
  """Predictions and annotations of the G gallery images (the test split).

  Attributes:
    image_ids: G unique names (the schema's `image_id`).
    gt_boxes: G arrays float [m_i, 4], xyxy original pixels.
    gt_pids: G arrays int [m_i], >= 0 labeled, -1 unlabeled.
    dets: G arrays float [n_i, 5], (x1, y1, x2, y2, score), original pixels;
      [0, 5] (or an empty list) for an image without detections.
    feats: G arrays float [n_i, D], L2-normalized embeddings of `dets`
      (None for detection-only evaluation).
    cameras: int [G] camera index, -1 unknown (None: all unknown); only the
      PRW multi-view protocol reads it.
  """
  image_ids: Sequence[str]
  gt_boxes: Sequence[np.ndarray]
  gt_pids: Sequence[np.ndarray]
  dets: Sequence[np.ndarray]
  feats: Sequence[np.ndarray] | None = None
  cameras: np.ndarray | None = None

  def __post_init__(self):
    num = len(self.image_ids)
    for name in ("gt_boxes", "gt_pids", "dets", "feats"):
      value = getattr(self, name)
      if value is not None and len(value) != num:
        raise ValueError(f"Gallery.{name} has {len(value)} entries but "
                         f"image_ids has {num}; expected one per image.")
    if self.cameras is not None and np.shape(self.cameras) != (num,):
      raise ValueError(f"Gallery.cameras: expected shape ({num},), got "
                       f"{np.shape(self.cameras)}.")
    if len(set(map(_name, self.image_ids))) != num:
      raise ValueError("Gallery.image_ids: expected unique names.")


@dataclasses.dataclass(frozen=True)
class Queries:
  """The query persons. `Qn` below is the number of queries.

  Attributes:
    feats: float [Qn, D], L2-normalized embedding of each query person.
    image_ids: Qn names of the query images (matched against
      `Gallery.image_ids` to exclude the query's own image; a name not in the
      gallery excludes nothing).
    pids: int [Qn], the query identities (>= 0).
    cameras: int [Qn] (None: unknown); PRW multi-view only.
    galleries: CUHK-SYSU style only: gallery size -> Qn per-query lists of
      gallery images, each an int array of indices into the Gallery or a
      sequence of image ids (duplicates allowed, see the module docstring).
      The full set extends the lists of size 50 (`full_set_base`).
    boxes: float [Qn, 4] query boxes, xyxy original pixels (not read by the
      protocols; kept for callers that visualize results).
  """
  feats: np.ndarray
  image_ids: Sequence[str]
  pids: np.ndarray
  cameras: np.ndarray | None = None
  galleries: Mapping[int, Sequence[np.ndarray | Sequence[str]]] = (
      dataclasses.field(default_factory=dict))
  boxes: np.ndarray | None = None

  def __post_init__(self):
    feats = np.asarray(self.feats)
    if feats.ndim != 2:
      raise ValueError(f"Queries.feats: expected [Qn, D], got {feats.shape}.")
    num = feats.shape[0]
    for name in ("image_ids", "pids", "cameras", "boxes"):
      value = getattr(self, name)
      if value is not None and len(value) != num:
        raise ValueError(f"Queries.{name} has {len(value)} entries but feats "
                         f"has {num} rows; expected one per query.")
    for size, lists in self.galleries.items():
      if len(lists) != num:
        raise ValueError(f"Queries.galleries[{size}] has {len(lists)} lists; "
                         f"expected one per query ({num}).")
    if np.any(np.asarray(self.pids) < 0):
      raise ValueError("Queries.pids: expected labeled identities (>= 0).")


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """Search metrics, aggregate and per query.

  Attributes:
    mAP: mean over queries of `ap`.
    top_k: k -> fraction of queries with a true positive among the top k.
    ap: f64[Qn] AP of each query, already multiplied by its recall.
    hits: bool[Qn, len(TOP_K)].
    count_tp: i64[Qn] true positives (gallery images where the target was
      found among the kept detections).
    count_gt: i64[Qn] gallery images (entries) that contain the target.
  """
  mAP: float  # pylint: disable=invalid-name
  top_k: dict[int, float]
  ap: np.ndarray
  hits: np.ndarray
  count_tp: np.ndarray
  count_gt: np.ndarray

  def as_dict(self) -> dict[str, Any]:
    """mAP, top-k and the 95 % bootstrap intervals of mAP and top-1
    (`mAP_ci95`, `top1_ci95`: [low, high], queries resampled, seed 0)."""
    out: dict[str, Any] = {"mAP": self.mAP}
    out.update({f"top{k}": v for k, v in self.top_k.items()})
    out.update(bootstrap.intervals(
        {"mAP": self.ap, "top1": self.hits[:, TOP_K.index(1)]}))
    return out


_Flat = ranking.FlatGallery


def small_box_iou_thresh(boxes: np.ndarray) -> np.ndarray:
  """The target's IoU threshold min(0.5, w*h / ((w+10)*(h+10))).

  Args:
    boxes: float [..., 4] xyxy pixels of target boxes.

  Returns:
    f64[...] IoU needed to match each target.
  """
  boxes = np.asarray(boxes, np.float64)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return np.minimum(MAX_IOU_THRESH,
                    w * h / ((w + SMALL_BOX_PAD) * (h + SMALL_BOX_PAD)))


def _name(image_id: str | bytes | np.str_ | np.bytes_) -> str:
  """An image id as str (TFDS returns text features as bytes)."""
  if isinstance(image_id, (bytes, np.bytes_)):
    return image_id.decode("utf-8")
  return str(image_id)


def _where(gallery: Gallery, i: int) -> str:
  return f"gallery image {i} ({gallery.image_ids[i]})"


def _flatten(gallery: Gallery, det_thresh: float,
             integer_gt_boxes: bool, cws: bool = False) -> _Flat:
  """Concatenates kept detections and precomputes the target candidates;
  `cws` scales each detection's embedding by its score."""
  if gallery.feats is None:
    raise ValueError("Gallery.feats is None; search evaluation needs the "
                     "embeddings of the detections.")
  num_img = len(gallery.image_ids)
  dets, feats, gt_box, gt_pid = [], [], [], []
  dim = None
  for i in range(num_img):  # checks only; the work is on concatenations
    det = np.asarray(gallery.dets[i])
    if det.size == 0:
      det = np.zeros((0, 5), np.float32)
    elif det.ndim != 2 or det.shape[1] != 5:
      detection.check_dets(det, _where(gallery, i))
    feat = np.asarray(gallery.feats[i])
    if feat.ndim != 2 or feat.shape[0] != det.shape[0]:
      if feat.size or det.shape[0]:
        raise ValueError(f"{_where(gallery, i)}: {det.shape[0]} detections "
                         f"but feats of shape {feat.shape}; expected [n, D].")
    elif feat.size:
      if dim is not None and feat.shape[1] != dim:
        raise ValueError(f"{_where(gallery, i)}: feats have "
                         f"D={feat.shape[1]}, earlier images D={dim}.")
      dim = feat.shape[1]
    dets.append(det)
    if feat.size:
      feats.append(feat)
    b, p = detection.check_gt(gallery.gt_boxes[i], gallery.gt_pids[i],
                              _where(gallery, i))
    gt_box.append(b)
    gt_pid.append(p)
  dim = dim or 1
  dtype = np.result_type(np.float32, *[f.dtype for f in feats])
  det_all = (np.concatenate(dets) if dets else np.zeros((0, 5), np.float32))
  all_feats = (np.concatenate(feats).astype(dtype, copy=False) if feats else
               np.zeros((0, dim), dtype))
  det_count = np.fromiter(map(len, dets), np.int64, num_img)
  keep = det_all[:, 4] >= det_thresh
  counts = np.bincount(np.repeat(np.arange(num_img), det_count)[keep],
                       minlength=num_img).astype(np.int64)
  if not keep.all():  # copy only when something is dropped
    det_all, all_feats = det_all[keep], all_feats[keep]
  if cws:
    scores = det_all[:, 4]
    if len(scores) and (scores.min() < 0 or scores.max() > 1):
      bad = int(np.searchsorted(np.cumsum(counts),
                                np.flatnonzero((scores < 0) |
                                               (scores > 1))[0], "right"))
      lo = int(counts[:bad].sum())
      detection.cws_weighted(all_feats[lo:lo + counts[bad]],
                             scores[lo:lo + counts[bad]],
                             _where(gallery, bad))
    all_feats = all_feats * scores[:, None].astype(dtype)
  det_boxes = det_all[:, :4].astype(np.float64)
  det_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  gt_img = np.repeat(np.arange(num_img, dtype=np.int64),
                     [len(p) for p in gt_pid])
  gt_box = np.concatenate(gt_box) if gt_box else np.zeros((0, 4))
  gt_pid = np.concatenate(gt_pid) if gt_pid else np.zeros(0, np.int64)
  if integer_gt_boxes:
    gt_box = detection.truncate_boxes(gt_box)

  # One target pair per (pid, image): the first labeled box with that pid.
  labeled = np.flatnonzero(gt_pid >= 0)
  order = labeled[np.lexsort((labeled, gt_img[labeled], gt_pid[labeled]))]
  first = np.ones(order.size, bool)
  first[1:] = ((gt_pid[order][1:] != gt_pid[order][:-1]) |
               (gt_img[order][1:] != gt_img[order][:-1]))
  pair_gt = order[first]
  pair_img = gt_img[pair_gt]
  pair_pid = gt_pid[pair_gt]
  pids, lo, num = np.unique(pair_pid, return_index=True, return_counts=True)
  pid_range = {int(p): (int(a), int(a + n)) for p, a, n in zip(pids, lo, num)}

  # Candidates: the pair image's detections that overlap the target enough.
  rep = np.repeat(np.arange(pair_gt.size), counts[pair_img])
  dets_of_pairs = ranking.ranges(det_start[pair_img], counts[pair_img])
  target = gt_box[pair_gt]
  iou = detection.reference_iou(det_boxes[dets_of_pairs], target[rep])
  ok = iou >= small_box_iou_thresh(target)[rep]
  cand_det = dets_of_pairs[ok]
  cand_start = np.concatenate(
      [[0], np.cumsum(np.bincount(rep[ok], minlength=pair_gt.size))])
  cameras = (np.full(num_img, -1, np.int64) if gallery.cameras is None else
             np.asarray(gallery.cameras, np.int64))
  return _Flat(
      feats=np.ascontiguousarray(all_feats), det_start=det_start,
      det_count=counts, cameras=cameras,
      index_of={_name(n): i for i, n in enumerate(gallery.image_ids)},
      pair_img=pair_img, pid_range=pid_range,
      cand_start=cand_start.astype(np.int64), cand_det=cand_det)


def _query_feats(queries: Queries,
                 flat: _Flat) -> tuple[np.ndarray, _Flat]:
  """Query embeddings in the gallery's dtype (and D for an empty gallery)."""
  feats = np.asarray(queries.feats).astype(flat.feats.dtype)
  if flat.num_dets == 0:
    empty = np.zeros((0, feats.shape[1]), flat.feats.dtype)
    return feats, dataclasses.replace(flat, feats=empty)
  if feats.shape[1] != flat.feats.shape[1]:
    raise ValueError(f"Queries.feats have D={feats.shape[1]} but the gallery "
                     f"embeddings D={flat.feats.shape[1]}.")
  return feats, flat


def _concat(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`ranking.score` outputs of consecutive chunks of queries, joined."""
  empty = (np.zeros(0), np.zeros((0, len(TOP_K)), bool),
           np.zeros(0, np.int64))
  return tuple(np.concatenate(p) for p in zip(empty, *parts))


def _result(aps: np.ndarray, hits: np.ndarray, count_tp: np.ndarray,
            count_gt: np.ndarray) -> SearchResult:
  num = len(aps)
  top_k = {k: (float(hits[:, j].mean()) if num else 0.0)
           for j, k in enumerate(TOP_K)}
  return SearchResult(mAP=float(aps.mean()) if num else 0.0, top_k=top_k,
                      ap=aps, hits=hits, count_tp=count_tp,
                      count_gt=count_gt)


def gallery_indices(gallery: Gallery | Sequence[str],
                    lists: Sequence[np.ndarray | Sequence[str]],
                    where: str = "gallery list") -> list[np.ndarray]:
  """Per-query gallery lists as int indices into the gallery.

  Args:
    gallery: the Gallery or its image ids.
    lists: per query, an int array of indices (checked and passed through)
      or a sequence of image ids.
    where: name used in error messages.

  Returns:
    list of i64[L_q] arrays.
  """
  ids = gallery.image_ids if isinstance(gallery, Gallery) else gallery
  num = len(ids)
  index_of = None
  out = []
  for q, items in enumerate(lists):
    if len(items) == 0:
      out.append(np.zeros(0, np.int64))
      continue
    if isinstance(items, np.ndarray) and items.dtype.kind in "iu" or (
        isinstance(items[0], (int, np.integer))):
      arr = np.asarray(items, np.int64).reshape(-1)
      if arr.min() < 0 or arr.max() >= num:
        raise ValueError(f"{where} of query {q}: index out of range "
                         f"[0, {num}).")
    else:
      if index_of is None:
        index_of = {_name(n): i for i, n in enumerate(ids)}
      try:
        arr = np.fromiter((index_of[_name(n)] for n in items), np.int64,
                          count=len(items))
      except KeyError as e:
        raise ValueError(f"{where} of query {q}: image id {e} is not in the "
                         "gallery.") from None
    out.append(arr)
  return out


def eval_search_cuhk(gallery: Gallery, queries: Queries,
                     gallery_sizes: Sequence[int] = (100,), *,
                     det_thresh: float = 0.5, duplicates: Duplicates = "seqnet",
                     full_set: FullSet = "seqnet", full_set_base: int = 50,
                     integer_gt_boxes: bool = True, cws: bool = False,
                     cbgm: cbgm_lib.Context | None = None
                     ) -> dict[int, SearchResult]:
  """CUHK-SYSU protocol for each gallery size (see the module docstring).

  Evaluating several sizes in one call shares the gallery preparation and the
  similarity products between them.

  Args:
    gallery: the gallery images (the test split), with embeddings.
    queries: the queries with `galleries[n]` for every requested size n
      (size `full_set_base` for FULL_SET).
    gallery_sizes: sizes among 50, 100, 500, 1000, 2000, 4000 and FULL_SET
      (-1); any size present in `queries.galleries` works.
    det_thresh: keep gallery detections with score >= this.
    duplicates: "seqnet", "repeat" or "unique": duplicated gallery entries.
    full_set: "seqnet" or "psdb": the TestG50 images in the full set.
    full_set_base: the gallery size whose lists the full set extends (the
      reference: 50, TestG50).
    integer_gt_boxes: truncate GT boxes to integers like the reference data.
    cws: rank by similarity x detection score (module docstring).
    cbgm: re-score each query's listed images (`cbgm.py`).

  Returns:
    gallery size -> SearchResult.
  """
  if duplicates not in ("seqnet", "repeat", "unique"):
    raise ValueError(f"duplicates={duplicates!r}; expected 'seqnet', "
                     "'repeat' or 'unique'.")
  if full_set not in ("seqnet", "psdb"):
    raise ValueError(f"full_set={full_set!r}; expected 'seqnet' or 'psdb'.")
  for size in gallery_sizes:
    key = full_set_base if size == FULL_SET else size
    if key not in queries.galleries:
      raise ValueError(f"gallery size {size} needs Queries.galleries[{key}]; "
                       f"have sizes {sorted(queries.galleries)}.")
  flat = _flatten(gallery, det_thresh, integer_gt_boxes, cws)
  q_feats, flat = _query_feats(queries, flat)
  q_pids = np.asarray(queries.pids)
  q_img = np.array([flat.index_of.get(_name(n), -1)
                    for n in queries.image_ids], np.int64)
  num_q = len(q_pids)
  sizes = list(dict.fromkeys(gallery_sizes))
  lists = {}
  # Similarities to every detection (one product per chunk of queries) if
  # any size needs a large part of them; every size then reads them (the
  # product is paid anyway, and restricting a row costs less than the
  # per-image products of a mid-size gallery).
  use_matmul = False
  for size in sizes:
    key = full_set_base if size == FULL_SET else size
    lists[size] = gallery_indices(gallery, queries.galleries[key],
                                  f"galleries[{key}]")
    listed_dets = np.mean([flat.det_count[l].sum() for l in lists[size][:50]]
                          ) if num_q else 0.0
    use_matmul |= (size == FULL_SET or cbgm is not None or
                   listed_dets > _GATHER_FRACTION * flat.num_dets)
  targets = {size: ranking.cuhk_targets(flat, lists[size], q_pids, q_img,
                                        duplicates, size == FULL_SET,
                                        full_set)
             for size in sizes}
  if not use_matmul:
    return {size: _cuhk_gather(flat, targets[size], q_feats)
            for size in sizes}
  parts = {size: [] for size in sizes}
  for c0 in range(0, num_q, _QUERY_CHUNK):
    c1 = min(c0 + _QUERY_CHUNK, num_q)
    sims_chunk = q_feats[c0:c1] @ flat.feats.T  # [chunk, N]
    for size in sizes:
      parts[size].append(_cuhk_chunk(
          flat, targets[size], sims_chunk, c0, q_img, lists[size], cbgm,
          full=size == FULL_SET, full_set=full_set))
  return {size: _result(*_concat(parts[size]), targets[size]["count_gt"])
          for size in sizes}


def _cuhk_gather(flat: _Flat, tg: dict[str, np.ndarray],
                 q_feats: np.ndarray) -> SearchResult:
  """CUHK-SYSU lists ranked from padded rows of their similarities."""
  num_q = len(q_feats)
  rep = tg["det_mult"]
  row_q, row_img = np.repeat(tg["entry_q"], rep), np.repeat(
      tg["entry_img"], rep)
  first = np.cumsum(rep) - rep  # row entry of each entry's first copy
  row_len = np.bincount(row_q, weights=flat.det_count[row_img],
                        minlength=num_q)
  step = ranking.rows_per_chunk(num_q, int(row_len.max()) if num_q else 0)
  parts = []
  for c0 in range(0, num_q, step):
    c1 = min(c0 + step, num_q)
    e = ranking.chunk(row_q, c0, c1)
    values, col = ranking.list_rows(q_feats[c0:c1], flat.feats,
                                    flat.det_start, row_q[e] - c0,
                                    row_img[e], c1 - c0)
    s = ranking.chunk(tg["tp_q"], c0, c1)
    tp_q, pairs = tg["tp_q"][s], tg["tp_pair"][s]
    lengths, dets = ranking.candidates(flat, pairs)
    start = (col[first[tg["tp_entry"][s]] - e.start] -
             flat.det_start[flat.pair_img[pairs]])
    tp_score = ranking.segment_max(values[
        np.repeat(tp_q - c0, lengths), np.repeat(start, lengths) + dets],
                                   lengths)

    def count(t, n, v=values):
      return ranking.count_rows(lambda r: [(v[r], 1)], t, n)

    parts.append(ranking.score(tp_q - c0, tp_score, tg["tp_pos"][s],
                               tg["tp_total"][s], tg["count_gt"][c0:c1],
                               count, TOP_K))
  return _result(*_concat(parts), tg["count_gt"])


def _cuhk_chunk(flat: _Flat, tg: dict[str, np.ndarray],
                sims: np.ndarray, c0: int, q_img: np.ndarray,
                lists: Sequence[np.ndarray], cbgm: cbgm_lib.Context | None,
                *, full: bool, full_set: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """CUHK-SYSU scores of queries c0 ... from their [chunk, N] similarities.

  Returns:
    `ranking.score` of the chunk's queries.
  """
  c1 = c0 + len(sims)
  num_img = flat.det_count.size
  if cbgm is not None:
    sims = sims.copy()
    for r, q in enumerate(range(c0, c1)):
      imgs = np.unique(lists[q])
      sims[r] = cbgm_lib.rescore(
          sims[r], ranking.ranges(flat.det_start[imgs], flat.det_count[imgs]),
          flat.feats, flat.det_start, cbgm.feats[q], k1=cbgm.k1, k2=cbgm.k2)
  entries = ranking.chunk(tg["entry_q"], c0, c1)
  entry_q = tg["entry_q"][entries]
  entry_img = tg["entry_img"][entries]
  det_mult = tg["det_mult"][entries]

  def groups_of(r):
    q, row = c0 + r, sims[r]
    k = ranking.chunk(entry_q, q, q + 1)
    # Ranked copies per image beyond the full set's base copy: SeqNet ranks
    # the listed images again; psdb ranks them det_mult times in all.
    extra = np.zeros(num_img, np.int64)
    extra[entry_img[k]] = det_mult[k]
    if full and full_set == "psdb":
      extra[entry_img[k]] -= entry_img[k] != q_img[q]
    values = row
    if extra.size and extra.max() > 1:
      values = np.repeat(row, np.repeat(extra, flat.det_count))
    elif extra.size and extra.min() < 1:
      values = row[np.repeat(extra > 0, flat.det_count)]
    groups = [(values, 1)]
    if full:
      groups.append((row, 1))
      if q_img[q] >= 0:
        groups.append((row[flat.det_start[q_img[q]]:
                           flat.det_start[q_img[q] + 1]], -1))
    return groups

  s = ranking.chunk(tg["tp_q"], c0, c1)
  tp_q = tg["tp_q"][s]
  tp_score = ranking.best_candidates(sims, flat, c0, tp_q, tg["tp_pair"][s])
  return ranking.score(
      tp_q - c0, tp_score, tg["tp_pos"][s], tg["tp_total"][s],
      tg["count_gt"][c0:c1],
      lambda t, n: ranking.count_rows(groups_of, t, n), TOP_K)


def eval_search_prw(gallery: Gallery, queries: Queries, *,
                    det_thresh: float = 0.5, multi_view: bool = False,
                    integer_gt_boxes: bool = True, cws: bool = False,
                    cbgm: cbgm_lib.Context | None = None) -> SearchResult:
  """PRW protocol (see the module docstring).

  Args:
    gallery: every test frame, with embeddings (and cameras for
      `multi_view`).
    queries: the queries (cameras needed for `multi_view`).
    det_thresh: keep gallery detections with score >= this.
    multi_view: only frames from other cameras form the gallery (SeqNet's
      `ignore_cam_id=False`); default: every frame but the query's own.
    integer_gt_boxes: truncate GT boxes to integers like the reference data.
    cws: rank by similarity x detection score (module docstring).
    cbgm: re-score each query's gallery (`cbgm.py`).

  Returns:
    SearchResult.
  """
  flat = _flatten(gallery, det_thresh, integer_gt_boxes, cws)
  q_feats, flat = _query_feats(queries, flat)
  q_pids = np.asarray(queries.pids)
  num_q = len(q_pids)
  q_img = np.array([flat.index_of.get(_name(n), -1)
                    for n in queries.image_ids], np.int64)
  det_img = np.repeat(np.arange(flat.det_count.size), flat.det_count)
  pair_q, pair_t = ranking.query_pairs(flat, q_pids)
  keep = flat.pair_img[pair_t] != q_img[pair_q]
  if multi_view:
    if queries.cameras is None or gallery.cameras is None:
      raise ValueError("multi_view=True needs Queries.cameras and "
                       "Gallery.cameras.")
    q_cam = np.asarray(queries.cameras, np.int64)
    keep &= flat.cameras[flat.pair_img[pair_t]] != q_cam[pair_q]
    # Detections of each camera's frames, to subtract from the full ranking.
    det_cam = np.repeat(flat.cameras, flat.det_count)
    cam_dets = {int(c): np.flatnonzero(det_cam == c)
                for c in np.unique(flat.cameras)}
  pair_q, pair_t = pair_q[keep], pair_t[keep]
  count_gt = np.bincount(pair_q, minlength=num_q).astype(np.int64)
  has = ranking.has_candidates(flat, pair_t)
  tp_q, tp_pair = pair_q[has], pair_t[has]
  ones = np.ones(tp_q.size, np.int64)
  parts = []
  for c0 in range(0, num_q, _QUERY_CHUNK):
    c1 = min(c0 + _QUERY_CHUNK, num_q)
    sims = q_feats[c0:c1] @ flat.feats.T  # [chunk, N]
    for r, q in enumerate(range(c0, c1)):
      if cbgm is not None:  # every frame ranked for this query
        ranked = np.flatnonzero((det_img != q_img[q]) & (
            det_cam != q_cam[q] if multi_view else True))
        sims[r] = cbgm_lib.rescore(sims[r], ranked, flat.feats,
                                   flat.det_start, cbgm.feats[q], k1=cbgm.k1,
                                   k2=cbgm.k2)

    def groups_of(r, c0=c0, sims=sims):
      q = c0 + r
      groups = [(sims[r], 1)]
      subtract_own = q_img[q] >= 0
      if multi_view:
        cam = int(q_cam[q])
        if cam in cam_dets:
          groups.append((sims[r][cam_dets[cam]], -1))
        # The query frame is normally one of its camera's frames, already
        # subtracted with them.
        subtract_own &= flat.cameras[max(q_img[q], 0)] != cam
      if subtract_own:
        own = slice(flat.det_start[q_img[q]], flat.det_start[q_img[q] + 1])
        groups.append((sims[r][own], -1))
      return groups

    s = ranking.chunk(tp_q, c0, c1)
    tp_score = ranking.best_candidates(sims, flat, c0, tp_q[s], tp_pair[s])
    parts.append(ranking.score(
        tp_q[s] - c0, tp_score, ones[s], ones[s], count_gt[c0:c1],
        lambda t, n, g=groups_of: ranking.count_rows(g, t, n), TOP_K))
  return _result(*_concat(parts), count_gt)
