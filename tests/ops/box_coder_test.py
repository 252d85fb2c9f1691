"""Tests for ps_jax.ops.box_coder against slow per-box numpy references.

The references are written here from torchvision's `BoxCoder.encode_single`
/ `decode_single` (widths x2 - x1, centres x1 + 0.5 * w, dw and dh clamped
from above at log(1000 / 16) before the exp) and mmdet's `bbox2distance` /
`distance2bbox`, one box at a time in float64.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import box_coder

CLIP = math.log(1000.0 / 16)


def _boxes(rng, n, size=200.0, min_wh=1.0):
  """f32[n, 4] xyxy boxes with widths and heights >= min_wh."""
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(min_wh, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def ref_encode(ref, tgt, weights):
  wx, wy, ww, wh = weights
  out = np.zeros((len(ref), 4))
  for i, (r, t) in enumerate(zip(ref.astype(np.float64),
                                 tgt.astype(np.float64))):
    rw, rh = r[2] - r[0], r[3] - r[1]
    tw, th = t[2] - t[0], t[3] - t[1]
    rcx, rcy = r[0] + 0.5 * rw, r[1] + 0.5 * rh
    tcx, tcy = t[0] + 0.5 * tw, t[1] + 0.5 * th
    out[i] = [wx * (tcx - rcx) / rw, wy * (tcy - rcy) / rh,
              ww * math.log(tw / rw), wh * math.log(th / rh)]
  return out


def ref_decode(ref, deltas, weights, clip=CLIP):
  wx, wy, ww, wh = weights
  out = np.zeros((len(ref), 4))
  for i, (r, d) in enumerate(zip(ref.astype(np.float64),
                                 deltas.astype(np.float64))):
    rw, rh = r[2] - r[0], r[3] - r[1]
    rcx, rcy = r[0] + 0.5 * rw, r[1] + 0.5 * rh
    dx, dy, dw, dh = d[0] / wx, d[1] / wy, d[2] / ww, d[3] / wh
    if clip is not None:
      dw, dh = min(dw, clip), min(dh, clip)
    cx, cy = dx * rw + rcx, dy * rh + rcy
    w, h = math.exp(dw) * rw, math.exp(dh) * rh
    out[i] = [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
  return out


def ref_ltrb_encode(points, boxes, strides=None):
  out = np.zeros((len(points), 4))
  for i, ((x, y), (x1, y1, x2, y2)) in enumerate(zip(points, boxes)):
    s = 1.0 if strides is None else float(strides[i])
    out[i] = [(x - x1) / s, (y - y1) / s, (x2 - x) / s, (y2 - y) / s]
  return out


def ref_ltrb_decode(points, ltrb, strides=None):
  out = np.zeros((len(points), 4))
  for i, ((x, y), (l, t, r, b)) in enumerate(zip(points, ltrb)):
    s = 1.0 if strides is None else float(strides[i])
    out[i] = [x - l * s, y - t * s, x + r * s, y + b * s]
  return out


# --------------------------------------------------------------------------
# R-CNN deltas.
# --------------------------------------------------------------------------


def test_rcnn_hand_values():
  ref = jnp.array([[0.0, 0.0, 10.0, 20.0]] * 2)  # w 10, h 20, centre (5, 10)
  tgt = jnp.array([[2.0, 4.0, 12.0, 24.0],       # shifted by (2, 4)
                   [0.0, 0.0, 20.0, 10.0]])      # w 20, h 10, centre (10, 5)
  w = box_coder.ROI_HEADS_WEIGHTS  # (10, 10, 5, 5)
  np.testing.assert_allclose(
      box_coder.encode(ref, tgt, w),
      [[2.0, 2.0, 0.0, 0.0],
       [5.0, -2.5, 5 * math.log(2), -5 * math.log(2)]], rtol=1e-6,
      atol=1e-6)
  np.testing.assert_allclose(
      box_coder.encode(ref, tgt, box_coder.RPN_WEIGHTS),
      [[0.2, 0.2, 0.0, 0.0], [0.5, -0.25, math.log(2), -math.log(2)]],
      rtol=1e-6, atol=1e-7)
  # (dx, dy) = (0.1, -0.2) with weights 1: centre (5 + 1, 10 - 4); dw = log 3
  # triples the width.
  np.testing.assert_allclose(
      box_coder.decode(ref[:1], jnp.array([[0.1, -0.2, math.log(3), 0.0]]),
                       box_coder.RPN_WEIGHTS),
      [[6.0 - 15.0, 6.0 - 10.0, 6.0 + 15.0, 6.0 + 10.0]], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0),
                                     (10.0, 10.0, 5.0, 5.0),
                                     (2.0, 3.0, 0.5, 4.0)])
def test_rcnn_matches_reference_and_round_trips(weights):
  rng = np.random.default_rng(0)
  ref, tgt = _boxes(rng, 64), _boxes(rng, 64)
  deltas = box_coder.encode(ref, tgt, weights)
  assert deltas.shape == (64, 4) and deltas.dtype == jnp.float32
  np.testing.assert_allclose(deltas, ref_encode(ref, tgt, weights),
                             rtol=1e-5, atol=1e-5)
  # Most of these boxes are within exp(clip) of each other: no clamping.
  np.testing.assert_allclose(box_coder.decode(ref, deltas, weights), tgt,
                             rtol=1e-5, atol=1e-3)
  rand = rng.normal(0, 2, (64, 4)).astype(np.float32) * np.array(weights)
  np.testing.assert_allclose(box_coder.decode(ref, rand, weights),
                             ref_decode(ref, rand, weights), rtol=1e-5,
                             atol=1e-3)


def test_rcnn_decode_clamps_dw_dh_from_above_only():
  ref = np.array([[0.0, 0.0, 10.0, 20.0]] * 3, np.float32)
  # Weights (10, 10, 5, 5): dw, dh = deltas / 5.
  deltas = np.array([[0.0, 0.0, 30.0, 40.0],     # both clamped
                     [0.0, 0.0, -30.0, -40.0],   # never clamped from below
                     [0.0, 0.0, 5.0 * CLIP, 0.0]], np.float32)
  w = box_coder.ROI_HEADS_WEIGHTS
  got = np.asarray(box_coder.decode(ref, deltas, w))
  np.testing.assert_allclose(got, ref_decode(ref, deltas, w), rtol=1e-5)
  # Clamped: at most 1000 / 16 times the reference size, centre kept.
  np.testing.assert_allclose(got[0], [5 - 312.5, 10 - 625, 5 + 312.5,
                                      10 + 625], rtol=1e-5)
  np.testing.assert_allclose(got[1, 2] - got[1, 0], 10 * math.exp(-6),
                             rtol=1e-4)  # x2 - x1 near x = 5: cancellation
  np.testing.assert_allclose(got[2], [5 - 312.5, 0, 5 + 312.5, 20],
                             rtol=1e-5)
  unclamped = np.asarray(box_coder.decode(ref, deltas, w, clamp=None))
  np.testing.assert_allclose(unclamped, ref_decode(ref, deltas, w, clip=None),
                             rtol=1e-5)
  np.testing.assert_allclose(unclamped[0, 2] - unclamped[0, 0],
                             10 * math.exp(6), rtol=1e-5)
  np.testing.assert_allclose(
      box_coder.decode(ref, deltas, w, clamp=0.5),
      ref_decode(ref, deltas, w, clip=0.5), rtol=1e-5)


def test_rcnn_broadcasts_class_specific_deltas():
  rng = np.random.default_rng(1)
  ref = _boxes(rng, 5)
  deltas = rng.normal(size=(5, 3, 4)).astype(np.float32)
  got = box_coder.decode(ref[:, None], deltas, box_coder.ROI_HEADS_WEIGHTS)
  assert got.shape == (5, 3, 4)
  for k in range(3):
    np.testing.assert_allclose(
        got[:, k], ref_decode(ref, deltas[:, k], box_coder.ROI_HEADS_WEIGHTS),
        rtol=1e-5, atol=1e-3)


def test_rcnn_jit_vmap_grad():
  rng = np.random.default_rng(2)
  ref, tgt = _boxes(rng, 8), _boxes(rng, 8)
  w = box_coder.ROI_HEADS_WEIGHTS
  enc = jax.jit(box_coder.encode, static_argnums=2)
  np.testing.assert_allclose(enc(ref, tgt, w), box_coder.encode(ref, tgt, w),
                             rtol=1e-6)
  batched = jax.vmap(lambda r, d: box_coder.decode(r, d, w))(
      ref.reshape(2, 4, 4), enc(ref, tgt, w).reshape(2, 4, 4))
  np.testing.assert_allclose(batched.reshape(8, 4), tgt, rtol=1e-5, atol=1e-3)
  g = jax.grad(lambda d: box_coder.decode(ref, d, w).sum())(
      jnp.zeros((8, 4)))
  assert np.all(np.isfinite(g))
  # d(x1 + y1 + x2 + y2) / d(dx) = 2 * width / wx.
  np.testing.assert_allclose(g[:, 0], 2 * (ref[:, 2] - ref[:, 0]) / 10,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="weights"):
    box_coder.encode(ref, tgt, (1.0, 1.0))


# --------------------------------------------------------------------------
# LTRB distances.
# --------------------------------------------------------------------------


def test_ltrb_hand_values():
  # Point (10, 20), distances (1, 2, 3, 4) -> box (9, 18, 13, 24).
  np.testing.assert_allclose(
      box_coder.ltrb_decode(jnp.array([10.0, 20.0]), jnp.array([1.0, 2, 3, 4])),
      [9, 18, 13, 24])
  np.testing.assert_allclose(
      box_coder.ltrb_encode(jnp.array([10.0, 20.0]), jnp.array([9.0, 18, 13,
                                                                24])),
      [1, 2, 3, 4])
  # Stride 8: the same box is (1/8, 2/8, 3/8, 4/8) strides away.
  np.testing.assert_allclose(
      box_coder.ltrb_encode(jnp.array([10.0, 20.0]),
                            jnp.array([9.0, 18, 13, 24]), jnp.float32(8)),
      [0.125, 0.25, 0.375, 0.5])
  # A point outside the box has a negative distance.
  assert box_coder.ltrb_encode(jnp.array([0.0, 20.0]),
                               jnp.array([9.0, 18, 13, 24]))[0] == -9


@pytest.mark.parametrize("with_strides", [False, True])
def test_ltrb_matches_reference_and_round_trips(with_strides):
  rng = np.random.default_rng(3)
  boxes = _boxes(rng, 50)
  points = rng.uniform(-20, 220, (50, 2)).astype(np.float32)
  strides = (rng.choice([8, 16, 32, 64, 128], 50).astype(np.float32)
             if with_strides else None)
  ltrb = box_coder.ltrb_encode(points, boxes, strides)
  np.testing.assert_allclose(ltrb, ref_ltrb_encode(points, boxes, strides),
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(box_coder.ltrb_decode(points, ltrb, strides),
                             boxes, rtol=1e-6, atol=1e-4)
  dist = rng.uniform(0, 5, (50, 4)).astype(np.float32)
  np.testing.assert_allclose(box_coder.ltrb_decode(points, dist, strides),
                             ref_ltrb_decode(points, dist, strides),
                             rtol=1e-6, atol=1e-4)


def test_ltrb_broadcasts_points_against_boxes_and_is_jittable():
  rng = np.random.default_rng(4)
  boxes = _boxes(rng, 3)
  points = rng.uniform(0, 200, (7, 2)).astype(np.float32)
  strides = np.full((7,), 16.0, np.float32)
  pairs = jax.jit(box_coder.ltrb_encode)(points[:, None], boxes[None],
                                         strides[:, None])  # [P, N, 4]
  assert pairs.shape == (7, 3, 4)
  for j in range(3):
    np.testing.assert_allclose(
        pairs[:, j], ref_ltrb_encode(points, np.repeat(boxes[j:j + 1], 7, 0),
                                     strides), rtol=1e-6, atol=1e-5)
  g = jax.grad(lambda d: box_coder.ltrb_decode(points, d, strides).sum())(
      jnp.ones((7, 4)))
  np.testing.assert_allclose(g, np.tile([[-16, -16, 16, 16]], (7, 1)))
