"""Re-identification on cropped persons: Market-1501 CMC and mAP.

The Market-1501 protocol (official MATLAB code; layumi's
Person_reID_baseline_pytorch `evaluate_gpu.py`; torchreid `eval_market1501`):
per query, gallery images are ranked by similarity (dot product of
L2-normalized embeddings, the same order as Euclidean distance), then

  * junk entries are removed from the ranking: images whose pid is in
    `junk_pids` (Market's "-1" junk images) and images of the query's identity
    taken by the query's camera;
  * good entries are the query's identity seen by other cameras; everything
    else, distractors (Market pid 0) included, is a negative;
  * CMC(k) = 1 if a good entry is among the first k; AP from the positions
    r_0 < r_1 < ... (0-based, after junk removal) of the n good entries:
      "trapezoid" (official Market-1501 code, layumi):
        sum_i 1/n * ((i + 1)/(r_i + 1) + (i / r_i if r_i else 1)) / 2
      "step" (torchreid / fast-reid, the uninterpolated AP):
        sum_i 1/n * (i + 1)/(r_i + 1)
  * queries without any good entry are skipped (torchreid; layumi skips them
    too but still divides by the number of all queries, which
    `skip_queries_without_match=False` reproduces by counting them as 0).

Ties: the references sort with NumPy's unstable argsort; here a good entry
ranks after every negative with the same similarity, so collapsed embeddings
cannot score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ps_jax.eval import ap as ap_lib

CMC_RANKS = (1, 5, 10)
MARKET_JUNK_PIDS = (-1,)
_QUERY_CHUNK = 256

ApMethod = Literal["trapezoid", "step"]


@dataclasses.dataclass(frozen=True)
class ReidResult:
  """Market-1501 metrics.

  Attributes:
    mAP: mean AP over the counted queries.
    cmc: k -> CMC at rank k (fraction of counted queries).
    ap: f64[Qn] AP per query (0 for a query without a good entry).
    first_good: i64[Qn] 0-based rank of the first good entry, -1 if none.
    num_valid_queries: queries with at least one good entry (with
      `num_good`: with num_good > 0).
  """
  mAP: float  # pylint: disable=invalid-name
  cmc: dict[int, float]
  ap: np.ndarray
  first_good: np.ndarray
  num_valid_queries: int

  def as_dict(self) -> dict[str, float]:
    out = {"mAP": self.mAP}
    out.update({f"rank{k}": v for k, v in self.cmc.items()})
    return out


def _ap_from_positions(positions: np.ndarray, method: ApMethod) -> float:
  """AP from the sorted 0-based positions of the good entries."""
  n = positions.size
  i = np.arange(n, dtype=np.float64)
  precision = (i + 1) / (positions + 1.0)
  if method == "step":
    return float(precision.sum() / n)
  with np.errstate(divide="ignore", invalid="ignore"):
    old_precision = np.where(positions > 0, i / positions, 1.0)
  return float(((precision + old_precision) / 2).sum() / n)


def eval_reid_market(query_feats: np.ndarray,
                     query_pids: np.ndarray,
                     query_cams: np.ndarray,
                     gallery_feats: np.ndarray,
                     gallery_pids: np.ndarray,
                     gallery_cams: np.ndarray,
                     *,
                     junk_pids: Sequence[int] = MARKET_JUNK_PIDS,
                     ap_method: ApMethod = "trapezoid",
                     skip_queries_without_match: bool = True,
                     ranks: Sequence[int] = CMC_RANKS,
                     num_good: np.ndarray | None = None) -> ReidResult:
  """Market-1501 CMC and mAP (see the module docstring).

  Args:
    query_feats: float [Qn, D] L2-normalized query embeddings.
    query_pids: int [Qn] query identities (not in `junk_pids`).
    query_cams: int [Qn] query camera ids.
    gallery_feats: float [Gn, D] L2-normalized gallery embeddings.
    gallery_pids: int [Gn] gallery identities (distractors: any id that no
      query has, e.g. Market's 0).
    gallery_cams: int [Gn] gallery camera ids.
    junk_pids: gallery identities removed from every ranking.
    ap_method: "trapezoid" (official Market-1501) or "step" (torchreid).
    skip_queries_without_match: average over queries with a good entry only
      (True) or over all queries, the others scoring 0 (False).
    ranks: the CMC ranks to report.
    num_good: optional int [Qn], the number of good entries each query
      *should* find, when some of them are absent from the gallery (the
      PRW paper's protocol: ground-truth occurrences that no detection
      matched, `ps_jax.eval.prw_paper`). It is the AP's denominator, which
      caps recall; a query counts when num_good > 0, scoring 0 if none of
      its good entries is in the gallery. Must be >= the good entries
      present. None: the good entries present.

  Returns:
    ReidResult.
  """
  if ap_method not in ("trapezoid", "step"):
    raise ValueError(f"ap_method={ap_method!r}; expected 'trapezoid' or "
                     "'step'.")
  q_feats = np.asarray(query_feats)
  g_feats = np.asarray(gallery_feats)
  q_pids = np.asarray(query_pids, np.int64).reshape(-1)
  q_cams = np.asarray(query_cams, np.int64).reshape(-1)
  g_pids = np.asarray(gallery_pids, np.int64).reshape(-1)
  g_cams = np.asarray(gallery_cams, np.int64).reshape(-1)
  if q_feats.ndim != 2 or g_feats.ndim != 2 or (
      q_feats.shape[1] != g_feats.shape[1]):
    raise ValueError(f"query_feats {q_feats.shape} and gallery_feats "
                     f"{g_feats.shape}: expected [Qn, D] and [Gn, D].")
  if not len(q_pids) == len(q_cams) == len(q_feats):
    raise ValueError(f"query_pids ({len(q_pids)}), query_cams "
                     f"({len(q_cams)}) and query_feats ({len(q_feats)}) "
                     "differ in length.")
  if not len(g_pids) == len(g_cams) == len(g_feats):
    raise ValueError(f"gallery_pids ({len(g_pids)}), gallery_cams "
                     f"({len(g_cams)}) and gallery_feats ({len(g_feats)}) "
                     "differ in length.")
  if num_good is not None:
    num_good = np.asarray(num_good, np.int64).reshape(-1)
    if len(num_good) != len(q_pids):
      raise ValueError(f"num_good ({len(num_good)}) and query_pids "
                       f"({len(q_pids)}) differ in length.")
  junk_pids = np.asarray(junk_pids, np.int64)
  if np.isin(q_pids, junk_pids).any():
    raise ValueError(f"query_pids: a query has a junk pid {junk_pids}.")

  # Junk identities never enter any ranking: drop them once.
  keep = ~np.isin(g_pids, junk_pids)
  dtype = np.result_type(np.float32, q_feats.dtype, g_feats.dtype)
  g_feats = np.ascontiguousarray(g_feats[keep], dtype)
  q_feats = q_feats.astype(dtype)
  g_pids, g_cams = g_pids[keep], g_cams[keep]
  # Gallery entries of each identity, for the per-query good / junk split.
  order = np.argsort(g_pids, kind="stable")
  pids_sorted = g_pids[order]

  num_q = len(q_pids)
  aps = np.zeros(num_q)
  first_good = np.full(num_q, -1, np.int64)
  for c0 in range(0, num_q, _QUERY_CHUNK):
    sims_chunk = q_feats[c0:c0 + _QUERY_CHUNK] @ g_feats.T  # [chunk, Gn']
    for q in range(c0, min(c0 + _QUERY_CHUNK, num_q)):
      sims = sims_chunk[q - c0]
      lo, hi = np.searchsorted(pids_sorted, [q_pids[q], q_pids[q] + 1])
      same_id = order[lo:hi]
      good = same_id[g_cams[same_id] != q_cams[q]]
      if num_good is not None and good.size > num_good[q]:
        raise ValueError(f"num_good[{q}] = {num_good[q]} but the gallery "
                         f"holds {good.size} good entries for that query.")
      if good.size == 0:
        continue
      thresholds = np.unique(sims[good])[::-1]
      # Negatives reaching each good score: everything else minus the
      # query's identity (good entries and same-camera junk alike).
      at_least = (ap_lib.count_at_least(sims, thresholds) -
                  ap_lib.count_at_least(sims[same_id], thresholds))
      good_scores = np.sort(sims[good])[::-1]
      negatives_before = at_least[np.searchsorted(-thresholds, -good_scores)]
      positions = negatives_before + np.arange(good.size)
      first_good[q] = positions[0]
      aps[q] = _ap_from_positions(positions, ap_method)
      if num_good is not None:
        aps[q] *= good.size / num_good[q]
  found = first_good >= 0
  valid = found if num_good is None else num_good > 0
  denom = int(valid.sum()) if skip_queries_without_match else num_q
  if denom == 0:
    return ReidResult(0.0, {k: 0.0 for k in ranks}, aps, first_good, 0)
  cmc = {k: float(np.sum(found & (first_good < k)) / denom) for k in ranks}
  return ReidResult(float(aps.sum() / denom), cmc, aps, first_good,
                    int(valid.sum()))
