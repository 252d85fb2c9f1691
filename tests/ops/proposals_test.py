"""Tests for ps_jax.ops.proposals against a numpy loop written from
torchvision's filter_proposals (top-k, decode, clip, remove small, score
threshold, greedy NMS, keep post-k) and py-faster-rcnn's proposal layer
(small boxes removed before the top-k)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import anchors as anchors_lib
from ps_jax.ops import proposals as proposals_lib

CLIP = math.log(1000.0 / 16)


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union if union > 0 else 0.0


def _decode_clip(a, d, h, w):
  aw, ah = a[2] - a[0], a[3] - a[1]
  cx, cy = a[0] + 0.5 * aw + d[0] * aw, a[1] + 0.5 * ah + d[1] * ah
  bw, bh = math.exp(min(d[2], CLIP)) * aw, math.exp(min(d[3], CLIP)) * ah
  box = [cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh]
  return [min(max(box[0], 0), w), min(max(box[1], 0), h),
          min(max(box[2], 0), w), min(max(box[3], 0), h)]


def _ref(anchors, logits, deltas, hw, pre, post, iou_thr, min_size,
         score_thr, small_first):
  h, w = hw
  boxes = [_decode_clip(a, d, h, w) for a, d in zip(anchors, deltas)]
  big = [(b[2] - b[0]) >= min_size and (b[3] - b[1]) >= min_size
         for b in boxes]
  order = sorted(range(len(logits)), key=lambda i: -logits[i])
  if small_first:
    order = [i for i in order if big[i]]
  order = order[:pre]
  cand = [i for i in order if big[i] and (
      score_thr is None or 1 / (1 + math.exp(-logits[i])) >= score_thr)]
  kept = []
  for i in cand:
    if all(_iou(boxes[i], boxes[j]) <= iou_thr for j in kept):
      kept.append(i)
  kept = kept[:post]
  return np.asarray([boxes[i] for i in kept]), logits[kept]


@pytest.mark.parametrize("small_first,score_thr,min_size", [
    (False, None, 1e-3), (True, None, 12.0), (False, 0.4, 12.0)])
def test_proposals_equal_loop(small_first, score_thr, min_size):
  rng = np.random.default_rng(0)
  anchors = np.asarray(anchors_lib.grid_anchors((16.0, 32.0, 64.0),
                                                (0.5, 1.0, 2.0), (6, 8), 8))
  p = len(anchors)
  logits = rng.normal(0, 2, p).astype(np.float32)
  deltas = rng.normal(0, 0.3, (p, 4)).astype(np.float32)
  hw = (44, 60)
  out = proposals_lib.proposals(
      jnp.asarray(anchors), jnp.asarray(logits), jnp.asarray(deltas),
      jnp.asarray(hw), pre_nms_top_k=150, post_nms_top_k=40, nms_iou=0.6,
      min_size=min_size, score_threshold=score_thr, small_first=small_first)
  boxes, scores = _ref(anchors, logits, deltas, hw, 150, 40, 0.6, min_size,
                       score_thr, small_first)
  n = len(scores)
  valid = np.asarray(out["valid"])
  np.testing.assert_array_equal(valid, np.arange(40) < n)
  np.testing.assert_allclose(np.asarray(out["boxes"])[:n], boxes, atol=1e-3)
  np.testing.assert_allclose(np.asarray(out["scores"])[:n], scores)
  assert np.all(np.asarray(out["boxes"])[n:] == 0)
  assert np.all(np.isneginf(np.asarray(out["scores"])[n:]))


def test_proposals_jit_vmap_shapes():
  anchors = anchors_lib.grid_anchors((32.0,), (1.0,), (4, 4), 16)
  fn = jax.jit(jax.vmap(lambda o, d, hw: proposals_lib.proposals(
      anchors, o, d, hw, pre_nms_top_k=100, post_nms_top_k=7)))
  out = fn(jnp.zeros((3, 16)), jnp.zeros((3, 16, 4)),
           jnp.array([[64, 64], [64, 32], [20, 64]]))
  assert out["boxes"].shape == (3, 7, 4) and out["valid"].shape == (3, 7)
  # Boxes stay inside each image's valid region.
  b = np.asarray(out["boxes"])
  assert b[1, :, 2].max() <= 32 and b[2, :, 3].max() <= 20


def test_proposals_bad_shapes_are_named():
  anchors = anchors_lib.grid_anchors((32.0,), (1.0,), (2, 2), 16)
  with pytest.raises(ValueError, match="objectness"):
    proposals_lib.proposals(anchors, jnp.zeros(5), jnp.zeros((4, 4)),
                            jnp.array([32, 32]), pre_nms_top_k=4,
                            post_nms_top_k=2)
