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

from ps_jax.eval import ap as ap_lib
from ps_jax.eval import bootstrap
from ps_jax.eval import cbgm as cbgm_lib
from ps_jax.eval import detection

FULL_SET = -1
CUHK_GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, FULL_SET)
TOP_K = (1, 5, 10)
# Small-box rule of OIM/SeqNet: iou_thresh = min(0.5, w*h / ((w+10)*(h+10))).
SMALL_BOX_PAD = 10.0
MAX_IOU_THRESH = 0.5
# Queries per matrix product; [chunk, num_dets] f32 similarities.
_QUERY_CHUNK = 128
# Below this fraction of all detections per query, gather the listed images'
# embeddings per query instead of multiplying against all detections. The
# gather moves D floats per detection and stops fitting in cache beyond a few
# MB, so it only wins for the small galleries (CUHK-SYSU 50 and 100: ~1%).
_GATHER_FRACTION = 0.03

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


@dataclasses.dataclass(frozen=True)
class _FlatGallery:
  """Kept detections of all images, concatenated (N detections in total)."""
  feats: np.ndarray      # [N, D] embeddings
  det_start: np.ndarray  # i64[G + 1] image i owns rows det_start[i]:[i+1]
  det_count: np.ndarray  # i64[G]
  cameras: np.ndarray    # i64[G]
  index_of: dict[str, int]
  # Target pairs: one per (labeled pid, image) with that pid, sorted by pid
  # then image; the first GT box of the pid in the image is the target box.
  pair_img: np.ndarray   # i64[T]
  pid_range: dict[int, tuple[int, int]]  # pid -> pairs [lo, hi)
  # Candidate detections (IoU >= small-box threshold with the target box) of
  # pair t: cand_det[cand_start[t]:cand_start[t + 1]].
  cand_start: np.ndarray  # i64[T + 1]
  cand_det: np.ndarray    # i64[C]

  @property
  def num_dets(self) -> int:
    return int(self.det_start[-1])


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


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of arange(s, s + l) for each (s, l), vectorized."""
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  seg_begin = np.cumsum(lengths) - lengths
  return (np.repeat(np.asarray(starts, np.int64) - seg_begin, lengths) +
          np.arange(total, dtype=np.int64))


def _flatten(gallery: Gallery, det_thresh: float,
             integer_gt_boxes: bool, cws: bool = False) -> _FlatGallery:
  """Concatenates kept detections and precomputes the target candidates;
  `cws` scales each detection's embedding by its score."""
  if gallery.feats is None:
    raise ValueError("Gallery.feats is None; search evaluation needs the "
                     "embeddings of the detections.")
  num_img = len(gallery.image_ids)
  boxes, feats, counts = [], [], np.zeros(num_img, np.int64)
  gt_box, gt_pid, gt_img = [], [], []
  dim = None
  for i in range(num_img):
    where = f"gallery image {i} ({gallery.image_ids[i]})"
    det = detection.check_dets(gallery.dets[i], where)
    feat = np.asarray(gallery.feats[i])
    if feat.size == 0 and det.shape[0] == 0:
      feat = np.zeros((0, dim or 0), feat.dtype)
    elif feat.ndim != 2 or feat.shape[0] != det.shape[0]:
      raise ValueError(f"{where}: {det.shape[0]} detections but feats of "
                       f"shape {feat.shape}; expected [n, D].")
    elif feat.size:
      if dim is not None and feat.shape[1] != dim:
        raise ValueError(f"{where}: feats have D={feat.shape[1]}, earlier "
                         f"images D={dim}.")
      dim = feat.shape[1]
    keep = det[:, 4] >= det_thresh
    counts[i] = int(keep.sum())
    if counts[i] < len(det):  # copy only when something is dropped
      det, feat = det[keep], feat[keep]
    if cws:
      feat = detection.cws_weighted(feat, det[:, 4], where)
    boxes.append(det[:, :4])
    feats.append(feat)
    b, p = detection.check_gt(gallery.gt_boxes[i], gallery.gt_pids[i], where)
    gt_box.append(b)
    gt_pid.append(p)
    gt_img.append(np.full(len(p), i, np.int64))
  dim = dim or 1
  dtype = np.result_type(np.float32, *[f.dtype for f in feats if f.size])
  det_boxes = np.concatenate([b.reshape(-1, 4) for b in boxes]).astype(
      np.float64, copy=False)
  all_feats = np.concatenate([f.reshape(-1, dim) for f in feats]).astype(
      dtype, copy=False)
  det_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  gt_box = np.concatenate(gt_box) if gt_box else np.zeros((0, 4))
  gt_pid = np.concatenate(gt_pid) if gt_pid else np.zeros(0, np.int64)
  gt_img = np.concatenate(gt_img) if gt_img else np.zeros(0, np.int64)
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
  dets_of_pairs = _ranges(det_start[pair_img], counts[pair_img])
  target = gt_box[pair_gt]
  iou = detection.reference_iou(det_boxes[dets_of_pairs], target[rep])
  ok = iou >= small_box_iou_thresh(target)[rep]
  cand_det = dets_of_pairs[ok]
  cand_start = np.concatenate(
      [[0], np.cumsum(np.bincount(rep[ok], minlength=pair_gt.size))])
  cameras = (np.full(num_img, -1, np.int64) if gallery.cameras is None else
             np.asarray(gallery.cameras, np.int64))
  return _FlatGallery(
      feats=np.ascontiguousarray(all_feats), det_start=det_start,
      det_count=counts, cameras=cameras,
      index_of={_name(n): i for i, n in enumerate(gallery.image_ids)},
      pair_img=pair_img, pid_range=pid_range,
      cand_start=cand_start.astype(np.int64), cand_det=cand_det)


def _query_feats(queries: Queries,
                 flat: _FlatGallery) -> tuple[np.ndarray, _FlatGallery]:
  """Query embeddings in the gallery's dtype (and D for an empty gallery)."""
  feats = np.asarray(queries.feats).astype(flat.feats.dtype)
  if flat.num_dets == 0:
    empty = np.zeros((0, feats.shape[1]), flat.feats.dtype)
    return feats, dataclasses.replace(flat, feats=empty)
  if feats.shape[1] != flat.feats.shape[1]:
    raise ValueError(f"Queries.feats have D={feats.shape[1]} but the gallery "
                     f"embeddings D={flat.feats.shape[1]}.")
  return feats, flat


def _true_positive_scores(flat: _FlatGallery, pairs: np.ndarray,
                          sims: np.ndarray) -> np.ndarray:
  """Similarity of the true positive of each target pair that has one.

  Args:
    flat: the gallery.
    pairs: i64[T'] target pairs of the query inside its gallery.
    sims: [N] similarities of the query to every detection (only entries of
      the pairs' images are read).

  Returns:
    [T''] max similarity over each pair's candidates, for the pairs with at
    least one candidate (in `pairs` order).
  """
  starts = flat.cand_start[pairs]
  lengths = flat.cand_start[pairs + 1] - starts
  has = lengths > 0
  if not has.any():
    return np.zeros(0, sims.dtype)
  starts, lengths = starts[has], lengths[has]
  values = sims[flat.cand_det[_ranges(starts, lengths)]]
  offsets = np.cumsum(lengths) - lengths
  return np.maximum.reduceat(values, offsets)


def _score(groups: Sequence[tuple[np.ndarray, int]], tp_scores: np.ndarray,
           tp_pos_weight: np.ndarray, tp_total_weight: np.ndarray,
           count_gt: int) -> tuple[float, np.ndarray]:
  """AP x recall and top-k hits of one query from counts.

  Args:
    groups: (similarities, sign) whose signed counts give, for any threshold,
      how many ranked entries (weighted) reach it.
    tp_scores: [P] similarity of each true-positive detection.
    tp_pos_weight: i64[P] how many positive entries each one stands for.
    tp_total_weight: i64[P] how many ranked entries (its positive copies plus
      duplicate negative copies) carry exactly its similarity.
    count_gt: entries of the gallery that contain the target.

  Returns:
    (AP x recall, bool[len(TOP_K)] hits).
  """
  count_tp = int(tp_pos_weight.sum())
  if count_tp == 0 or count_gt == 0:
    return 0.0, np.zeros(len(TOP_K), bool)
  thresholds, inverse = np.unique(-tp_scores, return_inverse=True)
  thresholds = -thresholds  # distinct positive similarities, descending
  pos_equal = np.bincount(inverse, weights=tp_pos_weight)
  at_least = np.zeros(thresholds.size, np.int64)
  for values, sign in groups:
    at_least += sign * ap_lib.count_at_least(values, thresholds)
  ap = ap_lib.average_precision_at_positives(pos_equal, at_least)
  # Rank of the best true positive (0-based): every entry scored higher and
  # every tied negative except the true positives' own copies.
  best = inverse == 0
  rank = at_least[0] - int(tp_total_weight[best].sum())
  hits = rank < np.asarray(TOP_K)
  return ap * count_tp / count_gt, hits


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
  # any size needs a large part of them; every size then reads them.
  use_matmul = False
  for size in sizes:
    key = full_set_base if size == FULL_SET else size
    lists[size] = gallery_indices(gallery, queries.galleries[key],
                                  f"galleries[{key}]")
    listed_dets = np.mean([flat.det_count[l].sum() for l in lists[size][:50]]
                          ) if num_q else 0.0
    use_matmul |= (size == FULL_SET or cbgm is not None or
                   listed_dets > _GATHER_FRACTION * flat.num_dets)
  out = {size: (np.zeros(num_q), np.zeros((num_q, len(TOP_K)), bool),
                np.zeros(num_q, np.int64), np.zeros(num_q, np.int64))
         for size in sizes}
  scratch = np.empty(flat.num_dets, flat.feats.dtype)
  for c0 in range(0, num_q, _QUERY_CHUNK):
    c1 = min(c0 + _QUERY_CHUNK, num_q)
    sims_chunk = (q_feats[c0:c1] @ flat.feats.T  # [chunk, N]
                  if use_matmul else None)
    for q in range(c0, c1):
      for size in sizes:
        sims = sims_chunk[q - c0] if use_matmul else None
        if cbgm is not None:
          imgs = np.unique(lists[size][q])
          sims = cbgm_lib.rescore(
              sims, _ranges(flat.det_start[imgs], flat.det_count[imgs]),
              flat.feats, flat.det_start, cbgm.feats[q], k1=cbgm.k1,
              k2=cbgm.k2)
        aps, hits, count_tp, count_gt = out[size]
        aps[q], hits[q], count_tp[q], count_gt[q] = _cuhk_query(
            flat, q_feats[q], int(q_pids[q]), int(q_img[q]), lists[size][q],
            sims, scratch, full=size == FULL_SET, duplicates=duplicates,
            full_set=full_set)
  return {size: _result(*out[size]) for size in sizes}


def _cuhk_query(flat: _FlatGallery, q_feat: np.ndarray, q_pid: int,
                q_img: int, entries: np.ndarray, sims: np.ndarray | None,
                scratch: np.ndarray, *, full: bool, duplicates: str,
                full_set: str) -> tuple[float, np.ndarray, int, int]:
  """One query of the CUHK-SYSU protocol.

  Args:
    flat: the gallery.
    q_feat: [D] the query embedding.
    q_pid: the query identity.
    q_img: gallery index of the query image, -1 if none.
    entries: i64[L] the query's gallery list (indices, duplicates allowed).
    sims: [N] similarities to every detection, or None to compute those of
      the listed images only (into `scratch`, [N]).
    full: full-set protocol (every other image as extra negatives).
    duplicates, full_set: see `eval_search_cuhk`.

  Returns:
    (AP x recall, bool[len(TOP_K)] hits, count_tp, count_gt).
  """
  num_img = flat.det_count.size
  # Per gallery image: entries in the list, ranked copies of its detections
  # (`det_mult`), entries counted in count_gt (`gt_mult`), and its copy among
  # the full set's negatives (`base`).
  gt_mult = np.bincount(entries, minlength=num_img)
  listed = gt_mult > 0
  if duplicates == "unique":
    gt_mult = listed.astype(np.int64)
  det_mult = gt_mult if duplicates == "repeat" else listed.astype(np.int64)
  base = np.zeros(num_img, np.int64)
  if full:
    base[:] = 1
    if q_img >= 0:
      base[q_img] = 0
  # Ranked copies beyond the base ones: SeqNet ranks the listed images again;
  # psdb ranks them det_mult times in all.
  extra = det_mult if full_set == "seqnet" else det_mult - base * listed
  if sims is None:
    images = np.flatnonzero(listed)
    dets = _ranges(flat.det_start[images], flat.det_count[images])
    # einsum, not BLAS: a multithreaded OpenBLAS gemv on a busy machine can
    # take ~15 ms per call (thread hand-offs) instead of ~0.1 ms.
    values = np.einsum("nd,d->n", flat.feats[dets], q_feat)
    scratch[dets] = values
    sims = scratch
    counts, extra = flat.det_count[images], extra[images]
  else:
    values, counts = sims, flat.det_count
  # Copies of each detection in the ranking: usually 0 or 1, so a mask does.
  if extra.size and extra.max() > 1:
    values = np.repeat(values, np.repeat(extra, counts))
  elif extra.size and extra.min() < 1:
    values = values[np.repeat(extra > 0, counts)]
  groups = [(values, 1)]
  if full:
    groups.append((sims, 1))
    if q_img >= 0:
      groups.append((sims[flat.det_start[q_img]:flat.det_start[q_img + 1]],
                     -1))
  # Targets: the query identity's images that are in the list.
  lo, hi = flat.pid_range.get(q_pid, (0, 0))
  pairs = np.arange(lo, hi)
  pairs = pairs[listed[flat.pair_img[pairs]]]
  count_gt = int(gt_mult[flat.pair_img[pairs]].sum())
  tp_scores = _true_positive_scores(flat, pairs, sims)
  tp_img = flat.pair_img[pairs[flat.cand_start[pairs + 1] >
                               flat.cand_start[pairs]]]
  tp_pos = det_mult[tp_img]
  tp_total = tp_pos + (base[tp_img] if full_set == "seqnet" else 0)
  ap, hits = _score(groups, tp_scores, tp_pos, tp_total, count_gt)
  return ap, hits, int(tp_pos.sum()), count_gt


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
  if multi_view:
    if queries.cameras is None or gallery.cameras is None:
      raise ValueError("multi_view=True needs Queries.cameras and "
                       "Gallery.cameras.")
    q_cam = np.asarray(queries.cameras, np.int64)
    # Detections of each camera's frames, to subtract from the full ranking.
    det_cam = np.repeat(flat.cameras, flat.det_count)
    cam_dets = {int(c): np.flatnonzero(det_cam == c)
                for c in np.unique(flat.cameras)}
  det_img = np.repeat(np.arange(flat.det_count.size), flat.det_count)
  aps = np.zeros(num_q)
  hits = np.zeros((num_q, len(TOP_K)), bool)
  count_tp = np.zeros(num_q, np.int64)
  count_gt = np.zeros(num_q, np.int64)
  for c0 in range(0, num_q, _QUERY_CHUNK):
    c1 = min(c0 + _QUERY_CHUNK, num_q)
    sims_chunk = q_feats[c0:c1] @ flat.feats.T
    for q in range(c0, c1):
      sims = sims_chunk[q - c0]
      if cbgm is not None:  # every frame ranked for this query
        ranked = np.flatnonzero((det_img != q_img[q]) & (
            det_cam != q_cam[q] if multi_view else True))
        sims = cbgm_lib.rescore(sims, ranked, flat.feats, flat.det_start,
                                cbgm.feats[q], k1=cbgm.k1, k2=cbgm.k2)
      lo, hi = flat.pid_range.get(int(q_pids[q]), (0, 0))
      pairs = np.arange(lo, hi)
      imgs = flat.pair_img[pairs]
      keep = imgs != q_img[q]
      groups = [(sims, 1)]
      subtract_own = q_img[q] >= 0
      if multi_view:
        cam = int(q_cam[q])
        keep &= flat.cameras[imgs] != cam
        if cam in cam_dets:
          groups.append((sims[cam_dets[cam]], -1))
        # The query frame is normally one of its camera's frames, already
        # subtracted with them.
        subtract_own &= flat.cameras[max(q_img[q], 0)] != cam
      if subtract_own:
        own = slice(flat.det_start[q_img[q]], flat.det_start[q_img[q] + 1])
        groups.append((sims[own], -1))
      pairs = pairs[keep]
      count_gt[q] = pairs.size
      tp_scores = _true_positive_scores(flat, pairs, sims)
      ones = np.ones(tp_scores.size, np.int64)
      count_tp[q] = tp_scores.size
      aps[q], hits[q] = _score(groups, tp_scores, ones, ones,
                               int(count_gt[q]))
  return _result(aps, hits, count_tp, count_gt)
