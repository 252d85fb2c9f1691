"""Tests for ps_jax.eval.reid (Market-1501 CMC / mAP)."""

import numpy as np
import pytest

from ps_jax.eval import reid


def _feats(sims):
  s = np.asarray(sims, np.float64)
  return np.stack([s, np.sqrt(1.0 - s**2)], axis=1)


def _slow(qf, qp, qc, gf, gp, gc, method, junk=(-1,)):
  """The reference procedure, one query at a time (layumi / torchreid)."""
  aps, cmcs = [], []
  for q in range(len(qp)):
    index = np.argsort(-(gf @ qf[q]), kind="stable")
    same = np.flatnonzero(gp == qp[q])
    same_cam = np.flatnonzero(gc == qc[q])
    good = np.setdiff1d(same, same_cam)
    junk_idx = np.union1d(np.intersect1d(same, same_cam),
                          np.flatnonzero(np.isin(gp, junk)))
    if good.size == 0:
      aps.append(None)
      cmcs.append(None)
      continue
    index = index[~np.isin(index, junk_idx)]
    rows = np.flatnonzero(np.isin(index, good))
    ap = 0.0
    for i, r in enumerate(rows):
      precision = (i + 1) / (r + 1)
      if method == "step":
        ap += precision / len(good)
      else:
        old = i / r if r != 0 else 1.0
        ap += (precision + old) / 2 / len(good)
    aps.append(ap)
    cmcs.append(rows[0])
  return aps, cmcs


def test_hand_built():
  # Query pid 1, camera 1. Gallery (similarity, pid, camera):
  #   0.99 pid 1 cam 1 -> junk (same id, same camera)
  #   0.95 pid -1      -> junk
  #   0.90 pid 2       -> negative
  #   0.80 pid 1 cam 2 -> good, position 1
  #   0.70 pid 0       -> distractor: negative
  #   0.60 pid 1 cam 3 -> good, position 3
  # trapezoid: 1/2 * (1/2 + 0/1)/2 + 1/2 * (2/4 + 1/3)/2 = 1/3
  # step:      1/2 * (1/2 + 2/4) = 1/2
  gf = _feats([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
  gp = np.array([1, -1, 2, 1, 0, 1])
  gc = np.array([1, 1, 1, 2, 3, 3])
  qf, qp, qc = _feats([1.0]), np.array([1]), np.array([1])
  res = reid.eval_reid_market(qf, qp, qc, gf, gp, gc)
  assert res.mAP == pytest.approx(1 / 3)
  assert res.cmc == {1: 0.0, 5: 1.0, 10: 1.0}
  assert res.first_good[0] == 1
  res = reid.eval_reid_market(qf, qp, qc, gf, gp, gc, ap_method="step")
  assert res.mAP == pytest.approx(0.5)
  assert res.as_dict()["rank5"] == 1.0


def test_query_without_match_and_ties():
  # Query 0 (pid 1, cam 1): its only good entry ties with a negative at 0.8
  # and ranks after it. Query 1 (pid 3): no good entry.
  gf = _feats([0.8, 0.8, 0.5])
  gp = np.array([2, 1, 3])
  gc = np.array([2, 2, 2])
  qf = _feats([1.0, 1.0])
  qp, qc = np.array([1, 3]), np.array([1, 2])
  res = reid.eval_reid_market(qf, qp, qc, gf, gp, gc, ap_method="step")
  # Query 0: good at position 1 -> AP 1/2, rank-1 miss. Query 1 skipped.
  assert res.num_valid_queries == 1
  np.testing.assert_array_equal(res.first_good, [1, -1])
  assert res.mAP == pytest.approx(0.5) and res.cmc[1] == 0.0
  res = reid.eval_reid_market(qf, qp, qc, gf, gp, gc, ap_method="step",
                              skip_queries_without_match=False)
  assert res.mAP == pytest.approx(0.25) and res.cmc[5] == 0.5


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["trapezoid", "step"])
def test_equals_slow_reference(seed, method, monkeypatch):
  monkeypatch.setattr(reid, "_QUERY_CHUNK", 7)
  rng = np.random.default_rng(seed)
  num_g, num_q, dim = 300, 25, 16
  gp = rng.integers(-1, 15, num_g)
  gc = rng.integers(0, 4, num_g)
  gf = rng.normal(size=(num_g, dim))
  gf /= np.linalg.norm(gf, axis=1, keepdims=True)
  qp = rng.integers(0, 16, num_q)  # pid 15 never in the gallery
  qc = rng.integers(0, 4, num_q)
  qf = rng.normal(size=(num_q, dim))
  qf /= np.linalg.norm(qf, axis=1, keepdims=True)
  res = reid.eval_reid_market(qf, qp, qc, gf, gp, gc, ap_method=method)
  aps, firsts = _slow(qf, qp, qc, gf, gp, gc, method)
  valid = [a is not None for a in aps]
  np.testing.assert_allclose(res.ap[valid], [a for a in aps if a is not None],
                             rtol=1e-12)
  np.testing.assert_array_equal(res.first_good,
                                [-1 if f is None else f for f in firsts])
  assert res.mAP == pytest.approx(np.mean([a for a in aps if a is not None]))
  firsts = np.array([f for f in firsts if f is not None])
  for k in reid.CMC_RANKS:
    assert res.cmc[k] == pytest.approx(np.mean(firsts < k))


def test_bad_input():
  f = np.ones((2, 4))
  with pytest.raises(ValueError, match="junk pid"):
    reid.eval_reid_market(f, [-1, 1], [0, 0], f, [1, 1], [0, 1])
  with pytest.raises(ValueError, match="differ in length"):
    reid.eval_reid_market(f, [1], [0, 0], f, [1, 1], [0, 1])
  with pytest.raises(ValueError, match=r"\[Qn, D\]"):
    reid.eval_reid_market(f, [1, 1], [0, 0], np.ones((2, 3)), [1, 1], [0, 1])
  with pytest.raises(ValueError, match="ap_method"):
    reid.eval_reid_market(f, [1, 1], [0, 0], f, [1, 1], [0, 1],
                          ap_method="area")
