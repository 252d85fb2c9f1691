"""Tests for ps_jax.ops.roi_align against torchvision's CPU algorithm."""
import functools
import math

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from ps_jax.ops import roi_align as roi_align_lib
from ps_jax.ops.roi_align import roi_align


def _np_interp(img, y, x):
  """torchvision's roi_align bilinear_interpolate (pre_calc), one vector."""
  h, w = img.shape[:2]
  if not (-1.0 <= y <= h and -1.0 <= x <= w):
    return np.zeros(img.shape[2:], np.float64)
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_low = y_high = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_low = x_high = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1 - ly, 1 - lx
  return (hy * hx * img[y_low, x_low] + hy * lx * img[y_low, x_high]
          + ly * hx * img[y_high, x_low] + ly * lx * img[y_high, x_high])


def _np_roi_align(feat, rois, out_hw, scale, ratio, aligned):
  """Loop transcription of torchvision roi_align_forward_kernel_impl."""
  oh, ow = out_hw
  out = np.zeros((len(rois), oh, ow, feat.shape[-1]), np.float64)
  for n, roi in enumerate(rois):
    img = feat[int(roi[0])]
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [float(v) * scale - off for v in roi[1:]]
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
      rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / oh, rw / ow
    gh = ratio if ratio > 0 else math.ceil(rh / oh)
    gw = ratio if ratio > 0 else math.ceil(rw / ow)
    count = max(gh * gw, 1)
    for ph in range(oh):
      for pw in range(ow):
        acc = np.zeros(feat.shape[-1], np.float64)
        for iy in range(gh):
          y = y1 + ph * bh + (iy + 0.5) * bh / gh
          for ix in range(gw):
            x = x1 + pw * bw + (ix + 0.5) * bw / gw
            acc += _np_interp(img, y, x)
        out[n, ph, pw] = acc / count
  return out


def _random_rois(rng, r, batch, img_hw, spread=1.3):
  """Boxes in input pixels, some partly outside the image, some tiny."""
  h, w = img_hw
  cx = rng.uniform(-0.1 * w, 1.1 * w, r)
  cy = rng.uniform(-0.1 * h, 1.1 * h, r)
  bw = rng.uniform(0.5, spread * w / 2, r)
  bh = rng.uniform(0.5, spread * h / 2, r)
  return np.stack([rng.integers(0, batch, r), cx - bw / 2, cy - bh / 2,
                   cx + bw / 2, cy + bh / 2], 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jit_roi_align(out_hw, scale, ratio, aligned):
  return jax.jit(functools.partial(
      roi_align, output_size=out_hw, spatial_scale=scale,
      sampling_ratio=ratio, aligned=aligned))


# (B, H, W, C, R, out_hw, spatial_scale, sampling_ratio, aligned)
CASES = [
    (1, 8, 10, 3, 6, (2, 2), 0.5, 2, False),
    (2, 9, 7, 2, 8, (3, 2), 0.25, 1, True),
    (2, 8, 8, 3, 8, (2, 3), 0.5, -1, False),
    (1, 10, 9, 2, 8, (3, 3), 0.5, 0, True),
    (2, 6, 11, 2, 5, (1, 1), 1.0, 3, False),
    # Adaptive grid up to 9 x 6 samples: the fori_loop path.
    (1, 9, 11, 2, 6, (1, 2), 0.5, -1, True),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_torchvision_algorithm(case):
  b, h, w, c, r, out_hw, scale, ratio, aligned = case
  rng = np.random.default_rng(sum(out_hw) + h * w + r)
  feat = rng.normal(size=(b, h, w, c)).astype(np.float32)
  rois = _random_rois(rng, r, b, (h / scale, w / scale))
  # A degenerate (inverted) box and a box on the top-left corner.
  rois[0, 1:] = [5.0, 6.0, 4.0, 6.0]
  rois[1, 1:] = [0.0, 0.0, 1.0 / scale, 1.5 / scale]
  got = roi_align(jnp.asarray(feat), jnp.asarray(rois), out_hw, scale, ratio,
                  aligned)
  want = _np_roi_align(feat, rois, out_hw, scale, ratio, aligned)
  assert got.shape == (r, *out_hw, c)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  jitted = _jit_roi_align(out_hw, scale, ratio, aligned)(
      jnp.asarray(feat), jnp.asarray(rois))
  np.testing.assert_allclose(jitted, got, rtol=1e-6, atol=1e-6)


def test_per_image_boxes_match_indexed_rows():
  rng = np.random.default_rng(0)
  feat = rng.normal(size=(2, 8, 9, 3)).astype(np.float32)
  boxes = rng.uniform(0, 30, (2, 4, 4)).astype(np.float32)
  boxes[..., 2:] += boxes[..., :2]
  per_image = roi_align(jnp.asarray(feat), jnp.asarray(boxes), 2, 0.25, -1)
  assert per_image.shape == (2, 4, 2, 2, 3)
  rows = np.concatenate(
      [np.repeat(np.arange(2, dtype=np.float32), 4)[:, None],
       boxes.reshape(8, 4)], 1)
  want = _np_roi_align(feat, rows, (2, 2), 0.25, -1, False)
  np.testing.assert_allclose(per_image.reshape(8, 2, 2, 3), want,
                             rtol=1e-5, atol=1e-5)


def test_constant_map_and_whole_image_box():
  # On a constant map every box inside the image pools the constant.
  feat = jnp.full((1, 6, 6, 2), 3.0)
  rois = jnp.asarray([[0, 0, 0, 12, 12], [0, 2, 3, 7, 9], [0, 5, 5, 5, 5]],
                     jnp.float32)
  out = roi_align(feat, rois, 3, 0.5, 2, aligned=False)
  np.testing.assert_allclose(out, 3.0, rtol=1e-6)
  # A box far outside pools zeros.
  out = roi_align(feat, jnp.asarray([[0, 100, 100, 120, 130]], jnp.float32),
                  2, 0.5, 2)
  np.testing.assert_array_equal(out, 0.0)


def test_adaptive_grid_cap_is_documented_approximation():
  rng = np.random.default_rng(1)
  feat = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
  rois = np.float32([[0, 0, 0, 8, 8]])  # adaptive grid = ceil(8 / 2) = 4
  exact = _np_roi_align(feat, rois, (2, 2), 1.0, -1, False)
  got = roi_align(jnp.asarray(feat), jnp.asarray(rois), 2, 1.0, -1,
                  max_sampling_grid=4)
  np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)
  # A smaller cap equals the fixed ratio with that many samples.
  got = roi_align(jnp.asarray(feat), jnp.asarray(rois), 2, 1.0, -1,
                  max_sampling_grid=3)
  want = _np_roi_align(feat, rois, (2, 2), 1.0, 3, False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradients():
  rng = np.random.default_rng(2)
  feat = jnp.asarray(rng.normal(size=(1, 5, 6, 2)), jnp.float32)
  # aligned=True shifts by -0.5: the boxes start on integer feature pixels
  # and have bins of 1 and 1.5 px, so the 2x2 samples per bin sit at
  # fractional parts in {.125, .25, .375, ...}, away from the kinks.
  boxes = jnp.asarray([[[0.5, 1.5, 2.5, 3.5], [1.5, 0.5, 4.5, 3.5]]],
                      jnp.float32)
  f = lambda feat, boxes: roi_align(feat, boxes, 2, 1.0, 2, aligned=True)
  jtu.check_grads(f, (feat, boxes), order=1, modes=["rev"], eps=1e-3,
                  atol=1e-2, rtol=1e-2)
  g_feat, g_boxes = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), (0, 1))(
      feat, boxes)
  assert np.all(np.isfinite(g_feat)) and np.all(np.isfinite(g_boxes))
  # Inside the map, each output value is a convex blend of feature values:
  # the gradient of the sum is one unit per box, bin and channel.
  g_lin = jax.grad(lambda ft: jnp.sum(f(ft, boxes)))(feat)
  np.testing.assert_allclose(jnp.sum(g_lin), 2 * 4 * 2, rtol=1e-5)


def test_looped_and_unrolled_taps_agree(monkeypatch):
  # An adaptive grid of up to 9 x 11 samples takes the fori_loop path; with
  # the unroll limit raised the same call is unrolled. Values and gradients
  # (features and boxes) must agree.
  rng = np.random.default_rng(3)
  feat = jnp.asarray(rng.normal(size=(1, 9, 11, 2)), jnp.float32)
  boxes = jnp.asarray([[[0.3, 0.6, 9.7, 7.1], [2.2, 1.4, 5.3, 8.8]]],
                      jnp.float32)
  f = lambda ft, b: jnp.sum(roi_align(ft, b, 1, 1.0, -1) ** 2)
  looped = f(feat, boxes), jax.grad(f, (0, 1))(feat, boxes)
  monkeypatch.setattr(roi_align_lib, "_MAX_UNROLLED_TAPS", 10_000)
  unrolled = f(feat, boxes), jax.grad(f, (0, 1))(feat, boxes)
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(unrolled)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.abs(looped[1][0]).max() > 0 and np.abs(looped[1][1]).max() > 0


def test_degenerate_boxes_have_finite_gradients():
  feat = jnp.ones((1, 4, 4, 1))
  boxes = jnp.asarray([[[1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 1.0, 0.0]]])
  for aligned in (False, True):
    g = jax.grad(lambda b: jnp.sum(roi_align(feat, b, 2, 1.0, -1, aligned)))(
        boxes)
    assert np.all(np.isfinite(g))


def test_bad_inputs_raise():
  feat = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="boxes"):
    roi_align(feat, jnp.zeros((3, 4)), 2)
  with pytest.raises(ValueError, match="boxes"):
    roi_align(feat, jnp.zeros((3, 2, 4)), 2)
  with pytest.raises(ValueError, match="output_size"):
    roi_align(feat, jnp.zeros((3, 5)), (2, 0))
  with pytest.raises(ValueError, match="features"):
    roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((3, 5)), 2)


class TestCropAndResize:
  """`crop_and_resize`: boxes cut from pixels, checked on hand-worked cases."""

  def setup_method(self):
    self.img = np.random.default_rng(0).random((2, 40, 30, 3)).astype(
        np.float32)

  def test_integer_shrink_is_the_block_mean(self):
    out = roi_align_lib.crop_and_resize(
        self.img, np.array([[[4., 6., 20., 38.]]] * 2, np.float32), (16, 8))
    for b in range(2):
      ref = self.img[b, 6:38, 4:20].reshape(16, 2, 8, 2, 3).mean((1, 3))
      np.testing.assert_allclose(out[b, 0], ref, atol=1e-6)

  def test_a_box_of_the_output_size_is_the_slice(self):
    out = roi_align_lib.crop_and_resize(
        self.img, np.array([[[0., 0., 8., 8.], [4., 6., 20., 38.]],
                            [[22., 32., 30., 40.], [1., 1., 17., 33.]]],
                           np.float32), (32, 16))
    np.testing.assert_allclose(out[0, 1], self.img[0, 6:38, 4:20], atol=1e-6)
    np.testing.assert_allclose(out[1, 1], self.img[1, 1:33, 1:17], atol=1e-6)
    assert out.shape == (2, 2, 32, 16, 3)

  def test_enlarging_samples_bilinearly_at_bin_centres(self):
    # A 2 x 2 box enlarged to 4 x 4: bins of 0.5 pixel whose centres sit at
    # -0.25, 0.25, 0.75 and 1.25 pixel-centre units along each axis. The
    # first is within a pixel of the edge (edge value), the last beyond the
    # last pixel of the box but inside the image (interpolates onward).
    img = np.zeros((1, 3, 3, 1), np.float32)
    img[0, :, :, 0] = [[0., 1., 2.], [10., 11., 12.], [20., 21., 22.]]
    out = roi_align_lib.crop_and_resize(img, np.array([[[0., 0., 2., 2.]]],
                                                  np.float32), (4, 4))
    pos = np.clip([-0.25, 0.25, 0.75, 1.25], 0, None)
    ref = 10 * pos[:, None] + pos[None, :]  # bilinear of a linear image
    np.testing.assert_allclose(out[0, 0, :, :, 0], ref, atol=1e-5)
