"""Tests for ps_jax/eval/bootstrap.py: percentile-bootstrap intervals."""

import numpy as np
import pytest

from ps_jax.eval import bootstrap
from ps_jax.eval import person_search as ps
from ps_jax.eval import report


def _slow_interval(values, seed, num_resamples, level):
  """Reference: one resample at a time, sorted means, linear quantiles."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(values), size=(num_resamples, len(values)))
  means = sorted(sum(values[i] for i in row) / len(row) for row in idx)

  def quantile(q):  # numpy's default "linear" method, by hand
    pos = q * (len(means) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(means) - 1)
    return means[lo] + (pos - lo) * (means[hi] - means[lo])

  tail = (1 - level) / 2
  return quantile(tail), quantile(1 - tail)


@pytest.mark.parametrize("n,seed,level", [(7, 0, 0.95), (50, 3, 0.9),
                                          (1, 1, 0.95)])
def test_matches_a_slow_reference(n, seed, level):
  values = np.random.default_rng(100 + n).random(n)
  idx = bootstrap.resample_indices(n, num_resamples=200, seed=seed)
  got = bootstrap.percentile_interval(values, idx, level=level)
  want = _slow_interval(values, seed, 200, level)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_agrees_with_the_normal_approximation_for_many_queries():
  # For a mean of 2,000 Bernoulli(0.4) hits the interval is close to
  # p +- 1.96 sqrt(p (1 - p) / n) = 0.4 +- 0.0215.
  values = (np.random.default_rng(0).random(2000) < 0.4).astype(float)
  out = bootstrap.intervals({"top1": values}, num_resamples=2000)
  low, high = out["top1_ci95"]
  p = values.mean()
  half = 1.96 * np.sqrt(p * (1 - p) / len(values))
  assert low < p < high
  assert abs((high - low) / 2 - half) < 0.1 * half


def test_constant_values_seeded_and_empty():
  assert bootstrap.intervals({"mAP": np.full(9, 0.25)}) == {
      "mAP_ci95": [0.25, 0.25]}
  values = np.random.default_rng(1).random(30)
  assert bootstrap.intervals({"a": values}) == bootstrap.intervals(
      {"a": values})
  assert bootstrap.intervals({"a": values}, seed=1) != bootstrap.intervals(
      {"a": values})
  assert bootstrap.intervals({"mAP": np.zeros(0)}) == {"mAP_ci95": [0.0, 0.0]}
  with pytest.raises(ValueError, match="different query counts"):
    bootstrap.intervals({"a": np.zeros(3), "b": np.zeros(4)})


def test_search_results_and_table_carry_the_intervals():
  ap = np.array([1.0, 0.5, 0.0, 0.25])
  hits = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 0], [1, 1, 1]], bool)
  res = ps.SearchResult(mAP=float(ap.mean()), top_k={1: 0.5, 5: 0.75,
                                                     10: 0.75},
                        ap=ap, hits=hits, count_tp=np.ones(4, np.int64),
                        count_gt=np.ones(4, np.int64)).as_dict()
  low, high = res["mAP_ci95"]
  assert 0.0 <= low <= res["mAP"] <= high <= 1.0
  low, high = res["top1_ci95"]
  assert 0.0 <= low <= 0.5 <= high <= 1.0
  table = report.format_table({"search/gallery_100": res, "det_thresh": 0.5,
                               "num_queries": 4, "num_gallery_images": 9})
  row = table.splitlines()[1]
  assert row.startswith("gallery_100") and "43.75" in row
  assert f"[{100 * res['mAP_ci95'][0]:.1f}, " in row
