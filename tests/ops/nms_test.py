"""Tests for ps_jax.ops.nms against a greedy numpy reference."""
import functools

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import nms as nms_ops


def _np_iou(a, b):
  lt = np.maximum(a[:2], b[:2])
  rb = np.minimum(a[2:], b[2:])
  wh = np.maximum(rb - lt, 0)
  inter = wh[0] * wh[1]
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union if union > 0 else 0.0


def _np_nms(boxes, scores, thr, valid=None, score_thr=-np.inf, top_k=None):
  """torchvision-style greedy NMS with explicit loops."""
  n = len(boxes)
  cand = [i for i in range(n) if scores[i] > score_thr
          and (valid is None or valid[i])]
  cand.sort(key=lambda i: (-scores[i], i))
  if top_k is not None:
    cand = cand[:top_k]
  kept = []
  for i in cand:
    if all(_np_iou(boxes[i], boxes[j]) <= thr for j in kept):
      kept.append(i)
  return kept


def _random_boxes(rng, n, size=64.0, max_wh=30.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, max_wh, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _kept(indices, keep_valid):
  return [int(i) for i, v in zip(indices, keep_valid) if v]


# One jitted instance per static configuration keeps recompiles down.
@functools.lru_cache(maxsize=None)
def _jit_nms(thr, max_outputs, score_thr=-np.inf, top_k=None):
  return jax.jit(functools.partial(
      nms_ops.nms, iou_threshold=thr, max_outputs=max_outputs,
      score_threshold=score_thr, pre_nms_top_k=top_k))


@pytest.mark.parametrize("n,thr,max_outputs", [
    (1, 0.5, 3), (12, 0.5, 20), (40, 0.3, 10), (40, 0.7, 40), (60, 0.0, 8)])
def test_matches_numpy_reference(n, thr, max_outputs):
  rng = np.random.default_rng(n)
  boxes = _random_boxes(rng, n)
  scores = rng.uniform(0, 1, n).astype(np.float32)
  idx, ok = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores),
                        iou_threshold=thr, max_outputs=max_outputs)
  want = _np_nms(boxes, scores, thr)[:max_outputs]
  assert idx.shape == (max_outputs,) and idx.dtype == jnp.int32
  assert ok.shape == (max_outputs,) and ok.dtype == jnp.bool_
  assert _kept(idx, ok) == want
  np.testing.assert_array_equal(np.asarray(idx)[~np.asarray(ok)], 0)
  assert int(ok.sum()) == len(want)


def test_ties_break_by_lower_index_and_iou_is_strict():
  boxes = np.float32([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10],
                      [0, 5, 10, 15], [20, 20, 30, 30]])
  scores = np.float32([0.5, 0.9, 0.9, 0.9, 0.1])
  # Boxes 0 and 3 overlap with IoU exactly 1/3.
  idx, ok = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores),
                        iou_threshold=1 / 3, max_outputs=5)
  assert _kept(idx, ok) == [1, 3, 4]
  idx, ok = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores),
                        iou_threshold=0.3, max_outputs=5)
  assert _kept(idx, ok) == [1, 4]


def test_valid_mask_score_threshold_and_top_k():
  rng = np.random.default_rng(0)
  boxes = _random_boxes(rng, 50)
  scores = rng.uniform(0, 1, 50).astype(np.float32)
  valid = rng.uniform(size=50) > 0.3
  idx, ok = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores),
                        iou_threshold=0.4, max_outputs=50,
                        score_threshold=0.2, pre_nms_top_k=20,
                        valid=jnp.asarray(valid))
  want = _np_nms(boxes, scores, 0.4, valid=valid, score_thr=0.2, top_k=20)
  assert _kept(idx, ok) == want
  # Nothing valid: nothing kept.
  idx, ok = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores),
                        iou_threshold=0.4, max_outputs=5,
                        valid=jnp.zeros(50, bool))
  assert not np.any(ok) and not np.any(idx)


def test_empty_and_degenerate_inputs():
  idx, ok = nms_ops.nms(jnp.zeros((0, 4)), jnp.zeros((0,)),
                        iou_threshold=0.5, max_outputs=3)
  assert idx.shape == (3,) and not np.any(ok)
  # Zero-area boxes have IoU 0 with everything: all are kept.
  boxes = jnp.asarray([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 4, 0]], jnp.float32)
  idx, ok = nms_ops.nms(boxes, jnp.asarray([0.1, 0.3, 0.2]),
                        iou_threshold=0.5, max_outputs=4)
  assert _kept(idx, ok) == [1, 2, 0]


def test_jit_equals_eager_and_batched():
  rng = np.random.default_rng(1)
  boxes = np.stack([_random_boxes(rng, 30) for _ in range(3)])
  scores = rng.uniform(0, 1, (3, 30)).astype(np.float32)
  valid = rng.uniform(size=(3, 30)) > 0.2
  kw = dict(iou_threshold=0.5, max_outputs=12)
  bidx, bok = jax.jit(functools.partial(nms_ops.batched_nms, **kw))(
      jnp.asarray(boxes), jnp.asarray(scores), valid=jnp.asarray(valid))
  assert bidx.shape == (3, 12) and bok.shape == (3, 12)
  for b in range(3):
    idx, ok = nms_ops.nms(jnp.asarray(boxes[b]), jnp.asarray(scores[b]),
                          valid=jnp.asarray(valid[b]), **kw)
    np.testing.assert_array_equal(idx, bidx[b])
    np.testing.assert_array_equal(ok, bok[b])
    assert _kept(idx, ok) == _np_nms(boxes[b], scores[b], 0.5,
                                     valid=valid[b])[:12]


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="boxes"):
    nms_ops.nms(jnp.zeros((3, 5)), jnp.zeros(3), iou_threshold=0.5,
                max_outputs=2)
  with pytest.raises(ValueError, match="scores"):
    nms_ops.nms(jnp.zeros((3, 4)), jnp.zeros(4), iou_threshold=0.5,
                max_outputs=2)
  with pytest.raises(ValueError, match="valid"):
    nms_ops.nms(jnp.zeros((3, 4)), jnp.zeros(3), iou_threshold=0.5,
                max_outputs=2, valid=jnp.ones(2, bool))


_N = 24  # fixed size so hypothesis examples share one compiled function


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       thr=st.sampled_from([0.1, 0.3, 0.5, 0.8]),
       grid=st.booleans())
def test_properties(seed, thr, grid):
  rng = np.random.default_rng(seed)
  if grid:
    # Integer coordinates on a coarse grid: many ties in IoU and duplicates.
    xy = rng.integers(0, 4, (_N, 2)) * 4
    wh = rng.integers(1, 4, (_N, 2)) * 4
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.integers(0, 5, _N).astype(np.float32)
  else:
    boxes = _random_boxes(rng, _N, size=32.0)
    scores = rng.uniform(0, 1, _N).astype(np.float32)
  idx, ok = _jit_nms(thr, _N)(jnp.asarray(boxes), jnp.asarray(scores))
  kept = _kept(idx, ok)
  # Sorted by score, descending.
  assert all(scores[a] >= scores[b] for a, b in zip(kept, kept[1:]))
  # Kept boxes do not overlap above the threshold.
  for a in range(len(kept)):
    for b in range(a + 1, len(kept)):
      assert _np_iou(boxes[kept[a]], boxes[kept[b]]) <= thr + 1e-6
  # Every suppressed box overlaps a kept box ranked before it.
  rank = {i: (-scores[i], i) for i in range(_N)}
  for i in set(range(_N)) - set(kept):
    assert any(rank[j] < rank[i] and _np_iou(boxes[i], boxes[j]) > thr - 1e-6
               for j in kept)
  assert kept == _np_nms(boxes, scores, thr)
