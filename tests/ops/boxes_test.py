"""Tests for ps_jax.ops.boxes against slow numpy references."""
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import boxes as B

_SETTINGS = hypothesis.settings(max_examples=40, deadline=None)


def _random_boxes(rng, n, size=64.0, degenerate_frac=0.3):
  """f32[n, 4] xyxy boxes; some zero-width, zero-height or single points."""
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(0.5, size / 2, (n, 2))
  kind = rng.integers(0, 4, n)
  degenerate = rng.uniform(size=n) < degenerate_frac
  wh[degenerate & (kind == 0), 0] = 0.0
  wh[degenerate & (kind == 1), 1] = 0.0
  wh[degenerate & (kind >= 2)] = 0.0
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _ref_parts(a, b):
  """Slow per-pair intersection, union and enclosing area (float64)."""
  a = a.astype(np.float64)
  b = b.astype(np.float64)

  def area(box):
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)

  inter = np.zeros((len(a), len(b)))
  union = np.zeros((len(a), len(b)))
  enclose = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      iw = max(min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]), 0.0)
      ih = max(min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]), 0.0)
      inter[i, j] = iw * ih
      union[i, j] = area(a[i]) + area(b[j]) - inter[i, j]
      ew = max(a[i, 2], b[j, 2]) - min(a[i, 0], b[j, 0])
      eh = max(a[i, 3], b[j, 3]) - min(a[i, 1], b[j, 1])
      enclose[i, j] = ew * eh
  return inter, union, enclose


def _ref_iou(a, b):
  inter, union, _ = _ref_parts(a, b)
  out = np.zeros_like(inter)
  for idx in np.ndindex(out.shape):
    out[idx] = inter[idx] / union[idx] if union[idx] > 0 else 0.0
  return out


def _ref_giou(a, b):
  _, union, enclose = _ref_parts(a, b)
  out = _ref_iou(a, b)
  for idx in np.ndindex(out.shape):
    if enclose[idx] > 0:
      out[idx] -= (enclose[idx] - union[idx]) / enclose[idx]
  return out


# --- conversions -------------------------------------------------------------

_coords = st.floats(-500, 500, allow_nan=False, width=32)
_sizes = st.floats(0, 500, allow_nan=False, width=32)


@st.composite
def _xyxy(draw):
  shape = draw(st.sampled_from([(4,), (3, 4), (2, 3, 4)]))
  xy = draw(hnp.arrays(np.float32, shape[:-1] + (2,), elements=_coords))
  wh = draw(hnp.arrays(np.float32, shape[:-1] + (2,), elements=_sizes))
  return np.concatenate([xy, xy + wh], axis=-1)


@_SETTINGS
@hypothesis.given(_xyxy())
def test_xywh_round_trip(boxes):
  xywh = B.xyxy_to_xywh(boxes)
  assert isinstance(xywh, np.ndarray) and xywh.dtype == np.float32
  np.testing.assert_allclose(xywh[..., :2], boxes[..., :2])
  np.testing.assert_allclose(xywh[..., 2:], boxes[..., 2:] - boxes[..., :2])
  np.testing.assert_allclose(B.xywh_to_xyxy(xywh), boxes, atol=1e-4)


@_SETTINGS
@hypothesis.given(_xyxy())
def test_cxcywh_round_trip(boxes):
  c = B.xyxy_to_cxcywh(boxes)
  np.testing.assert_allclose(
      c[..., :2], (boxes[..., :2] + boxes[..., 2:]) / 2, atol=1e-4)
  np.testing.assert_allclose(B.cxcywh_to_xyxy(c), boxes, atol=1e-3)


@_SETTINGS
@hypothesis.given(
    hnp.arrays(np.float32, st.sampled_from([(4,), (3, 4), (2, 3, 4)]),
               elements=st.floats(0, 1, width=32)),
    st.integers(1, 2000), st.integers(1, 2000))
def test_yxyx_norm_round_trip(norm, height, width):
  px = B.yxyx_norm_to_xyxy_px(norm, height, width)
  np.testing.assert_allclose(px[..., 0], norm[..., 1] * width, rtol=1e-6)
  np.testing.assert_allclose(px[..., 1], norm[..., 0] * height, rtol=1e-6)
  np.testing.assert_allclose(px[..., 2], norm[..., 3] * width, rtol=1e-6)
  np.testing.assert_allclose(px[..., 3], norm[..., 2] * height, rtol=1e-6)
  np.testing.assert_allclose(
      B.xyxy_px_to_yxyx_norm(px, height, width), norm, atol=1e-6)


def test_yxyx_norm_per_image_sizes_broadcast():
  norm = np.array([[[0.1, 0.2, 0.5, 1.0]], [[0.0, 0.5, 1.0, 0.75]]],
                  np.float32)  # [B=2, N=1, 4]
  hw = np.array([[100, 200], [40, 80]], np.int32)
  px = B.yxyx_norm_to_xyxy_px(norm, hw[:, 0:1], hw[:, 1:2])
  np.testing.assert_allclose(
      px, [[[40, 10, 200, 50]], [[40, 0, 60, 40]]], rtol=1e-6)
  px_j = B.yxyx_norm_to_xyxy_px(jnp.asarray(norm), hw[:, 0:1], hw[:, 1:2])
  assert isinstance(px_j, jax.Array)
  np.testing.assert_allclose(px_j, px, rtol=1e-6)


def test_numpy_in_numpy_out_jax_in_jax_out():
  boxes = np.array([[0, 0, 2, 3]], np.float32)
  assert isinstance(B.box_area(boxes), np.ndarray)
  assert isinstance(B.box_iou(boxes, boxes), np.ndarray)
  assert isinstance(B.box_area(jnp.asarray(boxes)), jax.Array)
  # One jax argument is enough to switch the computation to jax.
  assert isinstance(B.box_iou(boxes, jnp.asarray(boxes)), jax.Array)


def test_float64_numpy_boxes_stay_float64():
  # The dataset builders convert annotation files in float64: PRW's
  # fractional pixel coordinates must not be rounded to float32 on the way.
  xywh = np.array([[1000.297, 2.5, 10.125, 0.1], [0, 0, 0, 0]], np.float64)
  xyxy = B.xywh_to_xyxy(xywh)
  assert xyxy.dtype == np.float64
  np.testing.assert_array_equal(
      xyxy, [[1000.297, 2.5, 1000.297 + 10.125, 2.5 + 0.1], [0, 0, 0, 0]])
  assert B.xywh_to_xyxy(xywh[0]).shape == (4,)
  norm = B.xyxy_px_to_yxyx_norm(xyxy, 480, 1920)
  assert norm.dtype == np.float64
  np.testing.assert_array_equal(norm[0], [2.5 / 480, 1000.297 / 1920,
                                          (2.5 + 0.1) / 480,
                                          (1000.297 + 10.125) / 1920])
  assert B.clip_boxes(xyxy, 2, 1001).dtype == np.float64
  # Everything else is float32: float32 arrays, lists, integers and jax.
  assert B.xywh_to_xyxy(xywh.astype(np.float32)).dtype == np.float32
  assert B.xywh_to_xyxy([[1.5, 2, 3, 4]]).dtype == np.float32
  assert B.xywh_to_xyxy(np.ones((2, 4), np.uint8)).dtype == np.float32
  assert B.xywh_to_xyxy(jnp.asarray(xywh)).dtype == jnp.float32


def test_clip_and_area():
  boxes = np.array([[-5, -5, 30, 300], [10, 20, 5, 40], [3, 3, 3, 9]],
                   np.float32)
  np.testing.assert_array_equal(
      B.clip_boxes(boxes, 100, 20),
      [[0, 0, 20, 100], [10, 20, 5, 40], [3, 3, 3, 9]])
  # Inverted and degenerate boxes have area 0, never negative.
  np.testing.assert_array_equal(B.box_area(boxes), [35 * 305, 0, 0])
  np.testing.assert_array_equal(
      B.box_area(jnp.asarray(boxes)), [35 * 305, 0, 0])


def test_bad_shape_raises():
  with pytest.raises(ValueError, match=r"boxes.*\[\.\.\., 4\]"):
    B.box_area(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="f32\\[N, 4\\]"):
    B.box_iou(np.zeros((2, 3, 4)), np.zeros((3, 4)))


# --- IoU / GIoU --------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(0, 0), (0, 3), (4, 0), (1, 1), (5, 7)])
@pytest.mark.parametrize("use_jax", [False, True])
def test_iou_giou_match_reference(n, m, use_jax):
  rng = np.random.default_rng(n * 10 + m)
  a = _random_boxes(rng, n)
  b = _random_boxes(rng, m)
  if m:
    b[0] = a[0] if n else b[0]  # an identical pair (maybe degenerate)
  wrap = jnp.asarray if use_jax else np.asarray
  iou = B.box_iou(wrap(a), wrap(b))
  giou = B.generalized_box_iou(wrap(a), wrap(b))
  assert iou.shape == (n, m) and giou.shape == (n, m)
  np.testing.assert_allclose(iou, _ref_iou(a, b), atol=1e-5)
  np.testing.assert_allclose(giou, _ref_giou(a, b), atol=1e-5)


def test_zero_area_pairs_are_zero_not_nan():
  pt = np.array([[5, 5, 5, 5]], np.float32)
  line = np.array([[0, 5, 10, 5]], np.float32)
  for fn in (B.box_iou, B.generalized_box_iou):
    assert fn(pt, pt)[0, 0] == 0.0
    assert fn(jnp.asarray(pt), jnp.asarray(pt))[0, 0] == 0.0
  assert B.box_iou(line, line)[0, 0] == 0.0
  assert np.isfinite(B.generalized_box_iou(pt, line)).all()
  np.testing.assert_allclose(
      B.paired_giou(jnp.asarray(pt), jnp.asarray(pt)), [0.0])


@_SETTINGS
@hypothesis.given(st.integers(0, 2**31 - 1), st.integers(1, 6),
                  st.integers(1, 6))
def test_iou_properties(seed, n, m):
  rng = np.random.default_rng(seed)
  a = _random_boxes(rng, n)
  b = _random_boxes(rng, m)
  iou = B.box_iou(a, b)
  giou = B.generalized_box_iou(a, b)
  np.testing.assert_allclose(iou, B.box_iou(b, a).T, atol=1e-6)
  np.testing.assert_allclose(giou, B.generalized_box_iou(b, a).T, atol=1e-6)
  assert (iou >= 0).all() and (iou <= 1 + 1e-6).all()
  assert (giou >= -1 - 1e-6).all() and (giou <= 1 + 1e-6).all()
  assert (giou <= iou + 1e-6).all()
  nondegenerate = B.box_area(a) > 0
  self_iou = np.diag(B.box_iou(a, a))
  np.testing.assert_allclose(self_iou[nondegenerate], 1.0, atol=1e-6)
  np.testing.assert_allclose(
      np.diag(B.generalized_box_iou(a, a))[nondegenerate], 1.0, atol=1e-6)
  # Matched-pair versions agree with the matrix diagonal.
  k = min(n, m)
  np.testing.assert_allclose(
      B.paired_iou(a[:k], b[:k]), np.diag(iou[:k, :k]), atol=1e-5)
  np.testing.assert_allclose(
      B.paired_giou(a[:k], b[:k]), np.diag(giou[:k, :k]), atol=1e-5)


def test_paired_broadcasts_and_ranges():
  rng = np.random.default_rng(0)
  a = _random_boxes(rng, 12).reshape(3, 4, 4)
  b = _random_boxes(rng, 4)  # broadcast over the leading 3
  iou = B.paired_iou(jnp.asarray(a), jnp.asarray(b))
  giou = B.paired_giou(jnp.asarray(a), jnp.asarray(b))
  assert iou.shape == (3, 4) and giou.shape == (3, 4)
  for i in range(3):
    np.testing.assert_allclose(
        giou[i], np.diag(_ref_giou(a[i], b)), atol=1e-5)
  assert (giou >= -1).all() and (giou <= 1).all()


def test_jit_matches_eager():
  rng = np.random.default_rng(1)
  a = jnp.asarray(_random_boxes(rng, 5))
  b = jnp.asarray(_random_boxes(rng, 5))
  for fn in (B.box_iou, B.generalized_box_iou, B.paired_iou, B.paired_giou):
    np.testing.assert_allclose(jax.jit(fn)(a, b), fn(a, b), atol=1e-6)
  np.testing.assert_allclose(
      jax.jit(B.yxyx_norm_to_xyxy_px)(a / 64, 64, 96),
      B.yxyx_norm_to_xyxy_px(a / 64, 64, 96), rtol=1e-6)


def test_grads_finite_on_degenerate_boxes():
  pred = jnp.array([[5, 5, 5, 5],      # point == gt point
                    [0, 0, 0, 0],      # point, disjoint from gt
                    [2, 3, 2, 9],      # zero width
                    [1, 1, 4, 4],      # identical non-degenerate
                    [0, 0, 10, 10]], jnp.float32)
  gt = jnp.array([[5, 5, 5, 5],
                  [3, 3, 8, 8],
                  [2, 3, 2, 9],
                  [1, 1, 4, 4],
                  [20, 20, 20, 20]], jnp.float32)
  for fn in (B.paired_iou, B.paired_giou):
    grad = jax.grad(lambda p: fn(p, gt).sum())(pred)
    assert np.isfinite(grad).all(), fn.__name__
  for fn in (B.box_iou, B.generalized_box_iou):
    grad = jax.grad(lambda p: fn(p, gt).sum())(pred)
    assert np.isfinite(grad).all(), fn.__name__
  # The gradient still pulls a disjoint box towards the target.
  g = jax.grad(lambda p: B.paired_giou(p, gt).sum())(pred)
  assert float(g[4, 2]) > 0 and float(g[4, 3]) > 0
