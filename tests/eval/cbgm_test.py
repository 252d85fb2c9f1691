"""Context bipartite graph matching (ps_jax/eval/cbgm.py) against a slow
reference written here, and on hand-built searches."""

import itertools

import numpy as np
import pytest

from ps_jax.eval import cbgm
from ps_jax.eval import person_search as ps


def _unit(*v):
  v = np.asarray(v, np.float64)
  return (v / np.linalg.norm(v)).astype(np.float32)


def _slow_rescore(sims, dets, feats, det_start, context, k1, k2):
  """SeqNet's loop, with the matching found by trying every assignment."""
  sims = np.array(sims, np.float64)
  order = sorted(dets, key=lambda d: (sims[d], list(dets).index(d)))
  top = order[-k1:]
  images = sorted({int(np.searchsorted(det_start, d, side="right") - 1)
                   for d in top})
  out = sims.copy()
  for img in images:
    g = list(range(det_start[img], det_start[img + 1]))
    people = context[:k2]
    w = people @ feats[g].T
    n_rows, n_cols = w.shape
    best, best_pairs = -np.inf, None
    if n_rows <= n_cols:
      for cols in itertools.permutations(range(n_cols), n_rows):
        pairs = list(zip(range(n_rows), cols))
        total = sum(w[r, c] for r, c in pairs)
        if total > best + 1e-12:
          best, best_pairs = total, pairs
    else:
      for rows in itertools.permutations(range(n_rows), n_cols):
        pairs = list(zip(rows, range(n_cols)))
        total = sum(w[r, c] for r, c in pairs)
        if total > best + 1e-12:
          best, best_pairs = total, pairs
    max_val = max(w[r, c] for r, c in best_pairs)
    for r, c in best_pairs:
      if r == 0:
        out[g[c]] = max_val
  return out


@pytest.mark.parametrize("seed", range(6))
def test_rescore_matches_the_slow_reference(seed):
  rng = np.random.default_rng(seed)
  counts = rng.integers(0, 5, size=7)
  det_start = np.concatenate([[0], np.cumsum(counts)])
  n = int(det_start[-1])
  feats = rng.normal(size=(n, 6)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  context = rng.normal(size=(int(rng.integers(1, 5)), 6)).astype(np.float32)
  context /= np.linalg.norm(context, axis=1, keepdims=True)
  sims = feats @ context[0]
  ranked = np.flatnonzero(np.repeat(np.arange(7) != 2, counts))  # image 2 out
  for k1, k2 in ((3, 2), (10, 3), (1, 4)):
    got = cbgm.rescore(sims, ranked, feats, det_start, context, k1=k1, k2=k2)
    want = _slow_rescore(sims, ranked, feats, det_start, context, k1, k2)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got[~np.isin(np.arange(n), ranked)],
                                  sims[~np.isin(np.arange(n), ranked)])
  assert np.array_equal(cbgm.rescore(sims, ranked[:0], feats, det_start,
                                     context, k1=3, k2=2), sims)


def test_query_context_drops_the_query_person_and_low_scores():
  q = _unit(1, 0, 0)
  boxes = np.array([[0, 0, 10, 20], [1, 0, 11, 20], [50, 0, 60, 20],
                    [80, 0, 90, 20], [30, 0, 40, 20]], np.float32)
  scores = np.array([0.99, 0.6, 0.7, 0.3, 0.9], np.float32)
  feats = np.stack([_unit(1, 0, 0), _unit(1, 1, 0), _unit(0, 1, 0),
                    _unit(0, 0, 1), _unit(0, 1, 1)])
  ctx = cbgm.query_context(q, np.array([0, 0, 10, 20], np.float32), boxes,
                           scores, feats, det_thresh=0.5)
  # The first two overlap the query box (IoU 1 and 0.82); 0.3 is below the
  # threshold; the others by score: 0.9, then 0.7.
  np.testing.assert_allclose(ctx, np.stack([q, feats[4], feats[2]]))
  assert cbgm.query_context(q, boxes[0], boxes[:0], scores[:0],
                            feats[:0], det_thresh=0.5).shape == (1, 3)
  with pytest.raises(ValueError, match="k1=0"):
    cbgm.Context(feats=[ctx], k1=0)


def _search():
  """One query (pid 1) walking with a companion. Image g0 shows pid 1 seen
  badly (similarity 0.6) beside the companion; g1 shows a look-alike
  (similarity 0.8) beside a stranger. Without context the look-alike ranks
  first: AP 1/2. With it, g0's person is matched to the query while the
  companion's edge (0.95) is the largest matched weight: the target rises
  to 0.95 and ranks first. g1's best matching also pairs the query with
  the look-alike, and its largest matched edge is 0.8 itself: unchanged."""
  box = [0, 0, 10, 20]
  box2 = [20, 0, 30, 20]
  query = _unit(1, 0, 0, 0)
  companion = _unit(0, 1, 0, 0)
  g0 = [np.array([0.6, 0.0, 0.0, 0.8], np.float32),      # the target
        _unit(0.0, 0.95, np.sqrt(1 - 0.95 ** 2), 0.0)]     # the companion
  g1 = [np.array([0.8, 0.0, 0.6, 0.0], np.float32),      # the look-alike
        _unit(0, 0, 0, 1)]                                # a stranger
  gallery = ps.Gallery(
      image_ids=["g0", "g1"],
      gt_boxes=[np.array([box, box2], np.float32)] * 2,
      gt_pids=[np.array([1, 2]), np.array([3, 4])],
      dets=[np.array([box + [1.0], box2 + [1.0]], np.float32)] * 2,
      feats=[np.stack(g0), np.stack(g1)], cameras=np.array([0, 1]))
  queries = ps.Queries(feats=query[None], image_ids=["q"],
                       pids=np.array([1]), cameras=np.array([2]),
                       galleries={2: [["g0", "g1"]]})
  context = cbgm.Context(feats=[np.stack([query, companion])], k1=10, k2=3)
  return gallery, queries, context


def test_cbgm_lifts_the_target_seen_with_the_companion():
  gallery, queries, context = _search()
  plain = ps.eval_search_cuhk(gallery, queries, (2,))[2]
  assert plain.mAP == pytest.approx(0.5) and plain.top_k[1] == 0.0
  ctx = ps.eval_search_cuhk(gallery, queries, (2,), cbgm=context)[2]
  assert ctx.mAP == pytest.approx(1.0) and ctx.top_k[1] == 1.0
  # The same on the PRW protocol (every frame but the query's).
  assert ps.eval_search_prw(gallery, queries).mAP == pytest.approx(0.5)
  assert ps.eval_search_prw(gallery, queries,
                            cbgm=context).mAP == pytest.approx(1.0)
  # k1 = 1: only the look-alike's image is re-scored; nothing changes.
  one = cbgm.Context(feats=context.feats, k1=1, k2=3)
  assert ps.eval_search_cuhk(gallery, queries, (2,),
                             cbgm=one)[2].mAP == pytest.approx(0.5)
