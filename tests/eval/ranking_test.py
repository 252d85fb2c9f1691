"""Tests of the whole-protocol ranking steps against slow loops."""

import collections

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ps_jax.eval import ap as ap_lib
from ps_jax.eval import ranking

TOP_K = (1, 5, 10)


def test_ranges():
  rng = np.random.default_rng(0)
  starts = rng.integers(0, 50, 20)
  lengths = rng.integers(0, 4, 20)
  want = np.concatenate([np.arange(s, s + l) for s, l in zip(starts, lengths)])
  np.testing.assert_array_equal(ranking.ranges(starts, lengths), want)
  assert ranking.ranges([3], [0]).shape == (0,)


@pytest.mark.parametrize("duplicates", ["seqnet", "repeat", "unique"])
def test_list_entries_counts_each_query_image(duplicates, monkeypatch):
  monkeypatch.setattr(ranking, "_TABLE_BUDGET", 30)  # several chunks
  rng = np.random.default_rng(1)
  num_img = 9
  lists = [rng.integers(0, num_img, rng.integers(0, 12)) for _ in range(13)]
  query, image, gt_mult, det_mult = ranking.list_entries(lists, num_img,
                                                         duplicates)
  want = collections.Counter((q, int(i)) for q, l in enumerate(lists)
                             for i in l)
  np.testing.assert_array_equal(np.stack([query, image], 1),
                                np.reshape(sorted(want), (-1, 2)))
  count = np.array([want[k] for k in sorted(want)])
  ones = np.ones_like(count)
  np.testing.assert_array_equal(
      gt_mult, ones if duplicates == "unique" else count)
  np.testing.assert_array_equal(
      det_mult, count if duplicates == "repeat" else ones)


def test_lookup():
  entry_q = np.array([0, 0, 0, 2, 2, 3])
  entry_img = np.array([1, 4, 7, 0, 4, 2])
  q = np.array([0, 0, 0, 1, 2, 2, 3, 3, 4])
  img = np.array([7, 1, 5, 1, 4, 9, 2, 0, 0])
  np.testing.assert_array_equal(ranking.lookup(entry_q, entry_img, q, img),
                                [2, 0, -1, -1, 4, -1, 5, -1, -1])
  empty = np.zeros(0, np.int64)
  np.testing.assert_array_equal(
      ranking.lookup(empty, empty, np.array([1]), np.array([0])), [-1])


def test_list_rows_match_direct_products():
  rng = np.random.default_rng(2)
  counts = np.array([3, 0, 2, 4, 1])
  det_start = np.concatenate([[0], np.cumsum(counts)])
  feats = rng.normal(size=(counts.sum(), 6))
  num_rows = 4
  q_feats = rng.normal(size=(num_rows, 6))
  row_q = np.array([0, 0, 0, 2, 2, 3, 3, 3])  # row 1 lists nothing
  row_img = np.array([4, 0, 4, 1, 3, 2, 3, 0])  # repeats allowed
  values, col = ranking.list_rows(q_feats, feats, det_start, row_q, row_img,
                                  num_rows)
  for r in range(num_rows):
    mine = np.flatnonzero(row_q == r)
    want = np.concatenate([np.zeros(0)] + [
        feats[det_start[i]:det_start[i + 1]] @ q_feats[r]
        for i in row_img[mine]])
    np.testing.assert_allclose(values[r, :want.size], want, rtol=1e-12)
    assert np.all(values[r, want.size:] == -np.inf)
    starts = np.cumsum(counts[row_img[mine]]) - counts[row_img[mine]]
    np.testing.assert_array_equal(col[mine], starts)


def test_an_image_listed_three_times_in_a_row_ties_exactly():
  # CUHK-SYSU's "repeat" rule ranks every copy; AP then needs them to tie.
  # OpenBLAS rounded the rows of a 3 x 8 by 8 x 4 product of three equal
  # rows differently (numpy 2.4), so each copy is checked bit for bit.
  rng = np.random.default_rng(0)
  for count in range(1, 12):
    det_start = np.array([0, count])
    feats = rng.normal(size=(count, 8))
    q_feats = rng.normal(size=(1, 8))
    values, _ = ranking.list_rows(q_feats, feats, det_start,
                                  np.zeros(3, np.int64),
                                  np.zeros(3, np.int64), 1)
    copies = values.reshape(3, count)
    np.testing.assert_array_equal(copies, copies[[0, 0, 0]], err_msg=count)


def test_segment_max():
  values = np.array([1.0, 5.0, 2.0, 7.0, 0.5, 3.0])
  np.testing.assert_array_equal(ranking.segment_max(values, np.array([2, 1,
                                                                      3])),
                                [5.0, 2.0, 7.0])


def test_count_rows_with_signed_groups():
  rng = np.random.default_rng(3)
  a = np.round(rng.random((3, 40)), 1)
  b = a[:, :10]
  thresholds = np.sort(np.round(rng.random((3, 5)), 1), 1)[:, ::-1]
  num = np.array([5, 0, 3])
  got = ranking.count_rows(lambda r: [(a[r], 1), (b[r], -1)], thresholds,
                           num)
  for r in range(3):
    for j in range(5):
      want = (np.sum(a[r] >= thresholds[r, j]) -
              np.sum(b[r] >= thresholds[r, j])) if j < num[r] else 0
      assert got[r, j] == want


def _slow_score(negatives, tps, count_gt):
  """AP x recall and top-k hits of one query from explicit ranked items.

  tps: (score, positive copies, total copies) per true positive; the copies
  beyond the positive ones are negatives that tie with it and rank after it.
  """
  count_tp = sum(pos for _, pos, _ in tps)
  if count_tp == 0 or count_gt == 0:
    return 0.0, [False] * len(TOP_K)
  items = [(s, 0, 0) for s in negatives]  # (score, label, tie order)
  for s, pos, total in tps:
    items += [(s, 1, 1)] * pos + [(s, 0, 2)] * (total - pos)
  y_true = [y for _, y, _ in items]
  y_score = [s for s, _, _ in items]
  ap = average_precision_score(y_true, y_score) * count_tp / count_gt
  order = sorted(items, key=lambda it: (-it[0], it[2]))
  return ap, [any(y for _, y, _ in order[:k]) for k in TOP_K]


@pytest.mark.parametrize("seed", range(5))
def test_score_equals_explicit_ranking(seed):
  rng = np.random.default_rng(seed)
  num_rows = 12
  # Coarse scores: ties between true positives and negatives, and among
  # true positives, are frequent.
  negatives = [np.round(rng.random(rng.integers(0, 30)), 1)
               for _ in range(num_rows)]
  tp_row, tp_score, tp_pos, tp_total = [], [], [], []
  for r in range(num_rows):
    for _ in range(rng.integers(0, 5 if r % 4 else 60)):
      pos = int(rng.integers(1, 3))
      tp_row.append(r)
      tp_score.append(np.round(rng.random(), 1))
      tp_pos.append(pos)
      tp_total.append(pos + int(rng.integers(0, 2)))
  tp_row, tp_score = np.array(tp_row, np.int64), np.array(tp_score)
  tp_pos, tp_total = np.array(tp_pos), np.array(tp_total)
  count_gt = np.array([int(tp_pos[tp_row == r].sum()) + int(rng.integers(
      0, 3)) for r in range(num_rows)])
  # The ranked values of each row: negatives and every true-positive copy.
  rows = [np.concatenate([negatives[r]] + [
      np.full(t, s) for s, t in zip(tp_score[tp_row == r],
                                    tp_total[tp_row == r])])
          for r in range(num_rows)]
  got_ap, got_hits, got_tp = ranking.score(
      tp_row, tp_score, tp_pos, tp_total, count_gt,
      lambda t, n: ranking.count_rows(lambda r: [(rows[r], 1)], t, n), TOP_K)
  for r in range(num_rows):
    mine = tp_row == r
    want_ap, want_hits = _slow_score(
        negatives[r], list(zip(tp_score[mine], tp_pos[mine], tp_total[mine])),
        count_gt[r])
    assert got_ap[r] == pytest.approx(want_ap, rel=1e-12, abs=1e-15)
    np.testing.assert_array_equal(got_hits[r], want_hits)
    assert got_tp[r] == tp_pos[mine].sum()


def test_score_without_true_positives():
  ap, hits, count_tp = ranking.score(
      np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64),
      np.zeros(0, np.int64), np.array([2, 0]), None, TOP_K)
  np.testing.assert_array_equal(ap, [0.0, 0.0])
  assert not hits.any() and not count_tp.any()


@pytest.mark.parametrize("num", [3, 100, 300])
def test_count_at_least_every_path(num):
  # A few thresholds, many (one pass each over the values that reach the
  # lowest one) and very many (a sort of those values).
  rng = np.random.default_rng(num)
  values = np.round(rng.random(2000), 2).astype(np.float32)
  thresholds = np.sort(rng.choice(values, num))[::-1]
  want = [np.count_nonzero(values >= t) for t in thresholds]
  np.testing.assert_array_equal(ap_lib.count_at_least(values, thresholds),
                                want)
