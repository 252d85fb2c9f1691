"""Whole-protocol ranking steps of the person-search protocols.

`person_search.py` states the protocols; this module evaluates all queries
of one protocol with array operations instead of a loop over queries and
gallery images (docs/evaluation.md, "Speed"):

  * `list_entries`: every query's gallery list as unique (query, image)
    entries with their multiplicities, counted in dense tables;
  * `list_rows`: the similarities of each query to the detections of its
    listed images as padded rows, one small matrix product per gallery image
    (each image is listed by many queries) instead of gathering every
    query's ~2,000 embeddings;
  * `score`: AP x recall and top-k of all queries from padded rows of
    true-positive similarities, sorted once, and the number of ranked
    entries at or above each of them (`count_rows`).

Everything is host-side NumPy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ps_jax.eval import ap as ap_lib

# Padded [rows, L] similarity matrices hold at most this many entries.
_ROW_BUDGET = 1 << 23
# Dense [queries, G] count tables hold at most this many entries.
_TABLE_BUDGET = 1 << 20


@dataclasses.dataclass(frozen=True)
class FlatGallery:
  """Kept detections of all G gallery images, concatenated (N in total).

  Built by `person_search` from a `Gallery`.
  """
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


def query_pairs(flat: FlatGallery,
                q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every (query, target pair of the query's identity).

  Args:
    flat: the gallery.
    q_pids: int [Qn] query identities.

  Returns:
    (i64[P] query, sorted; i64[P] target pair).
  """
  span = np.array([flat.pid_range.get(int(p), (0, 0)) for p in q_pids],
                  np.int64).reshape(-1, 2)
  lengths = span[:, 1] - span[:, 0]
  return (np.repeat(np.arange(len(q_pids), dtype=np.int64), lengths),
          ranges(span[:, 0], lengths))


def has_candidates(flat: FlatGallery, pairs: np.ndarray) -> np.ndarray:
  """bool[T]: whether each target pair has a candidate detection."""
  return flat.cand_start[pairs + 1] > flat.cand_start[pairs]


def candidates(flat: FlatGallery,
               pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Candidate detections of target pairs that all have some.

  Args:
    flat: the gallery.
    pairs: i64[T] target pairs.

  Returns:
    (i64[T] candidates per pair, i64[sum] the candidates, pair by pair).
  """
  lengths = flat.cand_start[pairs + 1] - flat.cand_start[pairs]
  return lengths, flat.cand_det[ranges(flat.cand_start[pairs], lengths)]


def best_candidates(sims: np.ndarray, flat: FlatGallery, c0: int,
                    tp_q: np.ndarray, tp_pair: np.ndarray) -> np.ndarray:
  """Similarity of each target pair's true positive (its best candidate).

  Args:
    sims: [chunk, N] similarities of queries c0 ... to every detection.
    flat: the gallery.
    c0: the query of the first row.
    tp_q: i64[T] query of each pair, in [c0, c0 + chunk).
    tp_pair: i64[T] target pairs, each with a candidate.

  Returns:
    [T] the highest similarity among each pair's candidates.
  """
  lengths, dets = candidates(flat, tp_pair)
  return segment_max(sims[np.repeat(tp_q - c0, lengths), dets], lengths)


def chunk(sorted_q: np.ndarray, c0: int, c1: int) -> slice:
  """The entries of queries [c0, c1) in an array sorted by query."""
  lo, hi = np.searchsorted(sorted_q, [c0, c1])
  return slice(int(lo), int(hi))


def cuhk_targets(flat: FlatGallery, lists: Sequence[np.ndarray],
                 q_pids: np.ndarray, q_img: np.ndarray, duplicates: str,
                 full: bool, full_set: str) -> dict[str, np.ndarray]:
  """The gallery entries and true positives of every CUHK-SYSU query.

  Args:
    flat: the gallery.
    lists: Qn per-query gallery lists (image indices).
    q_pids: int [Qn] query identities.
    q_img: i64[Qn] gallery index of each query image, -1 if none.
    duplicates, full_set: see `person_search.eval_search_cuhk`.
    full: the full-set protocol.

  Returns:
    entry_q, entry_img, det_mult: i64[E] the unique (query, image) entries,
    sorted, and the ranked copies of each; count_gt: i64[Qn]; tp_q, tp_pair,
    tp_entry, tp_pos, tp_total: i64[T] per listed target pair with a
    candidate: its query, pair, entry and weights (see `score`).
  """
  num_img = flat.det_count.size
  pair_q, pair_t = query_pairs(flat, q_pids)
  entry_q, entry_img, gt_mult, det_mult = list_entries(lists, num_img,
                                                       duplicates)
  at = lookup(entry_q, entry_img, pair_q, flat.pair_img[pair_t])
  listed = at >= 0
  pq, pt, at = pair_q[listed], pair_t[listed], at[listed]
  count_gt = np.bincount(pq, weights=gt_mult[at], minlength=q_img.size)
  has = has_candidates(flat, pt)
  pq, pt, at = pq[has], pt[has], at[has]
  tp_pos = det_mult[at]
  tp_total = tp_pos.copy()
  if full and full_set == "seqnet":  # the full set's copy of the image
    tp_total += flat.pair_img[pt] != q_img[pq]
  return {"entry_q": entry_q, "entry_img": entry_img, "det_mult": det_mult,
          "count_gt": count_gt.astype(np.int64), "tp_q": pq, "tp_pair": pt,
          "tp_entry": at, "tp_pos": tp_pos, "tp_total": tp_total}


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of arange(s, s + l) for each (s, l), vectorized.

  Args:
    starts: int [n].
    lengths: int [n], >= 0.

  Returns:
    i64[sum(lengths)].
  """
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  seg_begin = np.cumsum(lengths) - lengths
  return (np.repeat(np.asarray(starts, np.int64) - seg_begin, lengths) +
          np.arange(total, dtype=np.int64))


def list_entries(lists: Sequence[np.ndarray], num_img: int,
                 duplicates: str) -> tuple[np.ndarray, np.ndarray,
                                           np.ndarray, np.ndarray]:
  """Unique (query, image) entries of per-query gallery lists.

  Args:
    lists: Qn arrays i64[L_q] of image indices in [0, num_img), duplicates
      allowed.
    num_img: G, images in the gallery.
    duplicates: "seqnet", "repeat" or "unique" (see `person_search`).

  Returns:
    (query i64[E], image i64[E], sorted by query then image; gt_mult i64[E]
    entries counted in count_gt; det_mult i64[E] ranked copies of the
    image's detections).
  """
  num_q = len(lists)
  lengths = np.fromiter((len(l) for l in lists), np.int64, num_q)
  if lengths.sum() == 0 or num_img == 0:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty, empty
  # Count the entries of a chunk of queries in a dense [chunk, G] table:
  # cheaper than sorting the ~10^7 entries of the large galleries.
  step = max(1, _TABLE_BUDGET // num_img)
  query, image, count = [], [], []
  for c0 in range(0, num_q, step):
    c1 = min(c0 + step, num_q)
    flat = np.concatenate([np.asarray(l, np.int64).reshape(-1)
                           for l in lists[c0:c1]])
    flat += np.repeat(np.arange(c1 - c0, dtype=np.int64) * num_img,
                      lengths[c0:c1])
    table = np.bincount(flat, minlength=(c1 - c0) * num_img)
    nonzero = np.flatnonzero(table)
    rows, cols = np.divmod(nonzero, num_img)
    query.append(rows + c0)
    image.append(cols)
    count.append(table[nonzero])
  count = np.concatenate(count)
  ones = np.ones_like(count)
  gt_mult = ones if duplicates == "unique" else count
  det_mult = count if duplicates == "repeat" else ones
  return (np.concatenate(query).astype(np.int64, copy=False),
          np.concatenate(image).astype(np.int64, copy=False), gt_mult,
          det_mult)


def lookup(entry_q: np.ndarray, entry_img: np.ndarray, q: np.ndarray,
           img: np.ndarray) -> np.ndarray:
  """Index of each (query, image) among the entries, -1 where absent.

  Args:
    entry_q, entry_img: i64[E] unique entries sorted by query then image
      (`list_entries`).
    q, img: i64[n] the wanted (query, image) pairs.

  Returns:
    i64[n].
  """
  lo = np.searchsorted(entry_q, q, side="left")
  hi = np.searchsorted(entry_q, q, side="right")
  end = hi.copy()
  # Binary search of each image among its query's entries, all at once.
  while True:
    active = lo < hi
    if not active.any():
      break
    mid = (lo + hi) // 2
    less = entry_img[np.minimum(mid, entry_img.size - 1)] < img
    lo = np.where(active & less, mid + 1, lo)
    hi = np.where(active & ~less, mid, hi)
  found = lo < end
  found[found] = entry_img[lo[found]] == img[found]
  return np.where(found, lo, -1)


def list_rows(q_feats: np.ndarray, feats: np.ndarray, det_start: np.ndarray,
              row_q: np.ndarray, row_img: np.ndarray, num_rows: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Similarities of queries to the detections of listed images, as rows.

  Entry e puts the detections of image row_img[e] into row row_q[e], after
  those of the earlier entries of that row. The products are grouped by
  image: the rows listing an image get its similarities from one product,
  and an image listed twice in one row gets bit-equal values in both places.

  Args:
    q_feats: [R, D] one embedding per row.
    feats: [N, D] every gallery detection.
    det_start: i64[G + 1] image i owns detections det_start[i]:[i + 1].
    row_q: i64[E] the row of each entry, non-decreasing.
    row_img: i64[E] the image of each entry.
    num_rows: R.

  Returns:
    (values [R, L] in the embeddings' dtype, -inf after each row's entries;
    i64[E] the column where each entry's detections start).
  """
  count = det_start[row_img + 1] - det_start[row_img]
  row_len = np.bincount(row_q, weights=count, minlength=num_rows).astype(
      np.int64)
  row_begin = np.cumsum(row_len) - row_len
  col = np.cumsum(count) - count - row_begin[row_q]
  width = int(row_len.max()) if num_rows else 0
  out = np.full((num_rows, width), -np.inf, feats.dtype)
  if row_img.size == 0:
    return out, col
  order = np.argsort(row_img, kind="stable")
  img = row_img[order]
  # Entries grouped by image; the product of image i fills count[i] columns
  # of each of its rows, written in this grouped order.
  rows = row_q[order]  # non-decreasing within each image's group
  dest = ranges(rows * width + col[order], count[order])
  buffer = np.empty(dest.size, feats.dtype)
  bounds = np.flatnonzero(np.diff(img)) + 1
  starts = np.concatenate([[0], bounds])
  ends = np.concatenate([bounds, [img.size]])
  # A row listing an image twice (CUHK-SYSU's repeated entries) takes both
  # copies from one product row: BLAS may round two equal input rows
  # differently, and the copies must tie exactly. Copies are adjacent.
  copy = np.zeros(img.size, bool)
  copy[1:] = (rows[1:] == rows[:-1]) & (img[1:] == img[:-1])
  has_copies = np.logical_or.reduceat(copy, starts)
  offset = 0
  for lo, hi, copies in zip(starts.tolist(), ends.tolist(),
                            has_copies.tolist()):
    i = int(img[lo])
    g = feats[det_start[i]:det_start[i + 1]]
    size = (hi - lo) * g.shape[0]
    if size:
      if copies:
        first = ~copy[lo:hi]
        product = (q_feats[rows[lo:hi][first]] @ g.T)[np.cumsum(first) - 1]
      else:
        product = q_feats[rows[lo:hi]] @ g.T
      buffer[offset:offset + size] = product.reshape(-1)
      offset += size
  out.reshape(-1)[dest] = buffer
  return out, col


def rows_per_chunk(num_rows: int, width: int) -> int:
  """Rows per chunk so that [rows, width] stays within the memory budget."""
  return max(1, min(num_rows, _ROW_BUDGET // max(width, 1)))


def segment_max(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Max of consecutive segments of `values` (every length > 0)."""
  if lengths.size == 0:
    return np.zeros(0, values.dtype)
  return np.maximum.reduceat(values, np.cumsum(lengths) - lengths)


def count_rows(groups_of: Callable[[int], Sequence[tuple[np.ndarray, int]]],
               thresholds: np.ndarray, num: np.ndarray) -> np.ndarray:
  """Ranked entries at or above each row's thresholds.

  Args:
    groups_of: row -> (values, sign) pairs; the signed counts of the values
      that reach a threshold give the row's count for it.
    thresholds: [R, P] each row's thresholds, non-increasing in its first
      num[r] columns.
    num: i64[R] thresholds of each row.

  Returns:
    i64[R, P], 0 beyond num[r].
  """
  out = np.zeros(thresholds.shape, np.int64)
  for r in np.flatnonzero(num > 0).tolist():
    t = thresholds[r, :num[r]]
    for values, sign in groups_of(r):
      out[r, :num[r]] += sign * ap_lib.count_at_least(values, t)
  return out


def score(tp_row: np.ndarray, tp_score: np.ndarray, tp_pos: np.ndarray,
          tp_total: np.ndarray, count_gt: np.ndarray,
          count: Callable[[np.ndarray, np.ndarray], np.ndarray],
          top_k: Sequence[int]) -> tuple[np.ndarray, np.ndarray,
                                         np.ndarray]:
  """AP x recall, top-k hits and count_tp of R queries.

  Args:
    tp_row: i64[P] the query (row) of each true positive.
    tp_score: [P] its similarity (taken from the ranked values themselves).
    tp_pos: i64[P] > 0, the positive entries it stands for.
    tp_total: i64[P] entries ranked with exactly its similarity as copies of
      it (its positive copies and duplicate negative copies).
    count_gt: i64[R] entries of each query's gallery that hold the target.
    count: (thresholds [R, J], num i64[R]) -> i64[R, J] ranked entries at or
      above each of the first num[r] thresholds of row r (`count_rows`).
    top_k: the k of the top-k hits.

  Returns:
    (f64[R] AP x recall, bool[R, len(top_k)], i64[R] count_tp).
  """
  num_rows = count_gt.size
  count_tp = np.bincount(tp_row, weights=tp_pos, minlength=num_rows).astype(
      np.int64)
  aps = np.zeros(num_rows)
  hits = np.zeros((num_rows, len(top_k)), bool)
  if tp_row.size == 0:
    return aps, hits, count_tp
  # Rows of true positives, most similar first.
  order = np.lexsort((-tp_score, tp_row))
  row = tp_row[order]
  num = np.bincount(row, minlength=num_rows)
  col = np.arange(row.size) - (np.cumsum(num) - num)[row]
  width = int(num.max())
  thresholds = np.full((num_rows, width), np.inf, tp_score.dtype)
  weight = np.zeros((num_rows, width))
  total = np.zeros((num_rows, width), np.int64)
  thresholds[row, col] = tp_score[order]
  weight[row, col] = tp_pos[order]
  total[row, col] = tp_total[order]
  at_least = count(thresholds, num)
  # Tied positives are one threshold: each counts the positives of its whole
  # tie group (the cumulative count at the group's last column).
  cols = np.arange(width)
  last = np.ones((num_rows, width), bool)
  last[:, :-1] = thresholds[:, 1:] != thresholds[:, :-1]
  last |= cols >= (num - 1)[:, None]
  cum = np.cumsum(weight, axis=1)
  end = np.minimum.accumulate(np.where(last, cols, width)[:, ::-1],
                              axis=1)[:, ::-1]
  cum_end = np.take_along_axis(cum, np.minimum(end, width - 1), axis=1)
  valid = cols < num[:, None]
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(valid, weight * cum_end / at_least, 0.0)
  ok = (count_tp > 0) & (count_gt > 0)
  rows = np.flatnonzero(ok)
  aps[rows] = (terms[rows].sum(1) / cum[rows, -1] * count_tp[rows] /
               count_gt[rows])
  # Rank of the best true positive (0-based): every entry scored higher and
  # every tied negative, but not the copies of the tied true positives.
  best = valid & (thresholds == thresholds[:, :1])
  rank = at_least[:, 0] - np.where(best, total, 0).sum(1)
  hits[rows] = rank[rows, None] < np.asarray(top_k)
  return aps, hits, count_tp
