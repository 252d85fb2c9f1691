"""Tests for ps_jax.eval.ap against scikit-learn and brute force."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ps_jax.eval import ap as ap_lib


def _sklearn_ap(y_true, y_score):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "No positive class found"
    return average_precision_score(y_true, y_score)


def test_hand_computed():
  # Ranked: P N P N. Thresholds 0.9 (P=1/1, R=1/2) and 0.7 (P=2/3, R=1):
  # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
  assert ap_lib.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == (
      pytest.approx(5 / 6))


def test_tie_is_one_threshold():
  # One threshold holding a positive and a negative: precision 1/2, recall 1.
  assert ap_lib.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
  # Tied group above the rest: P N N(tied) then P:
  # t=0.9: tp=1, items=3 -> 1/3; t=0.1: tp=2, items=4 -> 1/2.
  # AP = 1/2 * 1/3 + 1/2 * 1/2 = 5/12.
  got = ap_lib.average_precision([1, 0, 0, 1], [0.9, 0.9, 0.9, 0.1])
  assert got == pytest.approx(5 / 12)


def test_no_positive_and_all_positive():
  assert ap_lib.average_precision([0, 0, 0], [0.1, 0.2, 0.3]) == 0.0
  assert ap_lib.average_precision([1, 1], [0.3, 0.3]) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_equals_sklearn_random(seed):
  rng = np.random.default_rng(seed)
  for _ in range(60):
    n = int(rng.integers(1, 300))
    y_true = rng.random(n) < rng.uniform(0.0, 0.6)
    # Coarse levels make ties frequent; continuous ones make them rare.
    levels = int(rng.choice([3, 10, 1000000]))
    y_score = np.round(rng.random(n) * levels) / levels
    want = _sklearn_ap(y_true, y_score)
    got = ap_lib.average_precision(y_true, y_score)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_at_positives_equals_sklearn(seed):
  rng = np.random.default_rng(seed)
  for _ in range(40):
    n = int(rng.integers(2, 200))
    y_true = rng.random(n) < 0.3
    y_true[0] = True
    y_score = np.round(rng.random(n) * 7) / 7
    thresholds = np.unique(y_score[y_true])[::-1]
    pos_equal = [np.sum(y_true & (y_score == t)) for t in thresholds]
    at_least = [np.sum(y_score >= t) for t in thresholds]
    got = ap_lib.average_precision_at_positives(pos_equal, at_least)
    np.testing.assert_allclose(got, _sklearn_ap(y_true, y_score), rtol=1e-12)


@pytest.mark.parametrize("num_thresholds", [0, 1, 3, 48, 49, 120])
def test_count_at_least_brute_force(num_thresholds):
  rng = np.random.default_rng(num_thresholds)
  values = np.round(rng.normal(size=500), 2).astype(np.float32)
  thresholds = np.unique(rng.choice(values, num_thresholds))[::-1]
  got = ap_lib.count_at_least(values, thresholds)
  want = [np.sum(values >= t) for t in thresholds]
  np.testing.assert_array_equal(got, want)
  assert got.shape == (thresholds.size,)


def test_count_at_least_empty_values():
  np.testing.assert_array_equal(
      ap_lib.count_at_least(np.zeros(0), np.array([1.0, 0.0])), [0, 0])


@pytest.mark.parametrize("y_true, y_score, match", [
    ([1, 0], [0.5], "same length"),
    ([], [], "empty"),
    ([2, 0], [0.1, 0.2], "0/1"),
    ([1, 0], [np.nan, 0.2], "finite"),
])
def test_bad_input(y_true, y_score, match):
  with pytest.raises(ValueError, match=match):
    ap_lib.average_precision(y_true, y_score)


def test_at_positives_rejects_inconsistent_counts():
  with pytest.raises(ValueError, match="include the positives"):
    ap_lib.average_precision_at_positives([2], [1])
