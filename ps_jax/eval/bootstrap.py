"""Confidence intervals of per-query metrics by the bootstrap.

A protocol's mAP or top-1 is a mean over Q queries. Resampling the queries
with replacement B times and taking the 2.5 % and 97.5 % quantiles of the
resampled means gives a 95 % percentile-bootstrap interval: how much the
number would move on another draw of queries of the same kind. Seeded, so a
results file is reproducible; the same resamples serve every metric, so the
intervals of mAP and top-1 describe the same query draws.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NUM_RESAMPLES = 1000
LEVEL = 0.95


def resample_indices(num_queries: int, *, num_resamples: int = NUM_RESAMPLES,
                     seed: int = 0) -> np.ndarray:
  """i64[B, Q] query indices drawn with replacement, B resamples."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_queries, size=(num_resamples, num_queries))


def percentile_interval(values: np.ndarray, indices: np.ndarray, *,
                        level: float = LEVEL) -> tuple[float, float]:
  """(low, high) quantiles of the resampled means of `values`.

  Args:
    values: f[Q] per-query metric (AP, or 1.0 / 0.0 for a top-1 hit).
    indices: i64[B, Q] from `resample_indices`.
    level: the interval's coverage.
  """
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return 0.0, 0.0
  means = values[indices].mean(axis=1)
  tail = (1.0 - level) / 2.0
  low, high = np.quantile(means, [tail, 1.0 - tail])
  return float(low), float(high)


def intervals(metrics: Mapping[str, np.ndarray], *,
              num_resamples: int = NUM_RESAMPLES, seed: int = 0,
              level: float = LEVEL) -> dict[str, list[float]]:
  """`<name>_ci<level>` (e.g. mAP_ci95): [low, high] for each per-query
  metric, from one set of resamples (all metrics must have the same number
  of queries)."""
  sizes = {len(v) for v in metrics.values()}
  if len(sizes) > 1:
    raise ValueError(f"metrics have different query counts {sorted(sizes)}")
  num = sizes.pop() if sizes else 0
  suffix = f"_ci{round(100 * level)}"
  if num == 0:
    return {name + suffix: [0.0, 0.0] for name in metrics}
  idx = resample_indices(num, num_resamples=num_resamples, seed=seed)
  return {name + suffix: list(percentile_interval(v, idx, level=level))
          for name, v in metrics.items()}
