"""Average precision as scikit-learn computes it, and ranking counts.

Conventions:
  * Scores are "higher is better" (similarities or detection confidences).
  * Ties follow scikit-learn's `average_precision_score`: all items with the
    same score form one operating point (one threshold), so tied positives
    and negatives are counted together, never in some arbitrary order.
  * Everything is host-side NumPy; nothing here touches JAX.

AP in scikit-learn is the step-wise integral of the precision-recall curve
over the distinct score thresholds t_1 > t_2 > ... :

    AP = sum_j (R(t_j) - R(t_{j-1})) * P(t_j),

with P(t) = #positives >= t / #items >= t and R(t) = #positives >= t / #pos.
Recall changes only at thresholds that are scores of positives, so AP only
needs, for each distinct positive score, the number of positives with that
score and the number of items scored at least as high
(`average_precision_at_positives`). The evaluation protocols use that form:
a gallery holds ~10^5 detections but a query has a handful of positives, so
counting beats sorting.
"""

from __future__ import annotations

import numpy as np

# Up to this many thresholds `count_at_least` makes one vectorized pass over
# the values per threshold (~12 us per 10^5 float32 values); with more, it
# keeps the values that reach the lowest threshold, then makes one pass per
# threshold over those, or, beyond _MANY_THRESHOLDS, sorts them once (~2.5 ms
# per 10^5 values on a 2026 EPYC core, about 200 passes). NumPy's searchsorted
# of many values into few thresholds is far slower than either (~100 ns per
# value).
_FEW_THRESHOLDS = 48
_MANY_THRESHOLDS = 200


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
  """Equal to `sklearn.metrics.average_precision_score(y_true, y_score)`.

  Args:
    y_true: bool or {0, 1} int [N], 1 marks a positive.
    y_score: float [N], higher ranks first. Ties are one threshold.

  Returns:
    AP in [0, 1]; 0.0 when there is no positive (scikit-learn also returns
    0 there, with a warning).

  Raises:
    ValueError: if the inputs are empty, differ in length, `y_true` holds
      values other than 0/1, or `y_score` is not finite.
  """
  y_true = np.asarray(y_true).reshape(-1)
  y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
  if y_true.shape != y_score.shape:
    raise ValueError(f"y_true has {y_true.size} entries but y_score has "
                     f"{y_score.size}; expected the same length.")
  if y_true.size == 0:
    raise ValueError("average_precision: y_true and y_score are empty.")
  if not np.isin(y_true, (0, 1)).all():
    raise ValueError("y_true: expected only 0/1 (or bool) labels, got "
                     f"{np.unique(y_true)[:5]}.")
  if not np.isfinite(y_score).all():
    raise ValueError("y_score: expected finite scores.")
  y_true = y_true.astype(bool)
  order = np.argsort(-y_score, kind="stable")
  s = y_score[order]
  # Last position of each group of equal scores: the operating points.
  last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
  tps = np.cumsum(y_true[order])[last]
  num_pos = tps[-1]
  if num_pos == 0:
    return 0.0
  precision = tps / (last + 1.0)
  recall_step = np.diff(tps, prepend=0) / num_pos
  return float(np.sum(recall_step * precision))


def average_precision_at_positives(num_pos_equal: np.ndarray,
                                   num_at_least: np.ndarray) -> float:
  """scikit-learn's AP from counts taken at the distinct positive scores.

  For distinct positive scores t_1 > t_2 > ... > t_J:

  Args:
    num_pos_equal: int or float [J], number (or total weight) of positives
      whose score equals t_j; all > 0.
    num_at_least: int or float [J], number of items, positives included,
      whose score is >= t_j (non-decreasing in j).

  Returns:
    AP in [0, 1]; 0.0 when J == 0.
  """
  num_pos_equal = np.asarray(num_pos_equal, dtype=np.float64).reshape(-1)
  num_at_least = np.asarray(num_at_least, dtype=np.float64).reshape(-1)
  if num_pos_equal.shape != num_at_least.shape:
    raise ValueError(
        f"num_pos_equal has {num_pos_equal.size} entries but num_at_least "
        f"has {num_at_least.size}; expected one per distinct positive score.")
  if num_pos_equal.size == 0:
    return 0.0
  cum_pos = np.cumsum(num_pos_equal)
  if np.any(num_at_least < cum_pos):
    raise ValueError("num_at_least: fewer items than positives at some "
                     "threshold; the counts must include the positives.")
  return float(np.sum(num_pos_equal * cum_pos / num_at_least) / cum_pos[-1])


def count_at_least(values: np.ndarray,
                   thresholds_desc: np.ndarray) -> np.ndarray:
  """How many values are >= each threshold.

  Comparisons are made in the values' dtype, so a threshold taken from
  `values` itself always counts its own entry.

  Args:
    values: float [N].
    thresholds_desc: float [J], strictly decreasing.

  Returns:
    int64 [J], `(values >= t_j).sum()` for each j.
  """
  values = np.asarray(values).reshape(-1)
  thresholds_desc = np.asarray(thresholds_desc).reshape(-1).astype(
      values.dtype)
  num = thresholds_desc.size
  if num == 0 or values.size == 0:
    return np.zeros(num, np.int64)
  if num <= _FEW_THRESHOLDS:
    return np.array([np.count_nonzero(values >= t) for t in thresholds_desc],
                    dtype=np.int64)
  # Many thresholds: only the values that reach the lowest one matter.
  candidates = values[values >= thresholds_desc[-1]]
  if num <= _MANY_THRESHOLDS:
    return np.array([np.count_nonzero(candidates >= t)
                     for t in thresholds_desc], dtype=np.int64)
  candidates = np.sort(candidates)
  below = np.searchsorted(candidates, thresholds_desc, side="left")
  return (candidates.size - below).astype(np.int64)
