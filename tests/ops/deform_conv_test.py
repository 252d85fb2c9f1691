"""Tests for ps_jax.ops.deform_conv against slow numpy loop references."""
import itertools
import re

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from ps_jax.ops import deform_conv as dc


def _np_bilinear(img, y, x):
  """torchvision's deformable-conv bilinear_interpolate, one channel vector."""
  h, w = img.shape[:2]
  if y <= -1 or y >= h or x <= -1 or x >= w:
    return np.zeros(img.shape[2:], np.float64)
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  ly, lx = y - y0, x - x0
  out = np.zeros(img.shape[2:], np.float64)
  for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
    for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
      if 0 <= yy < h and 0 <= xx < w:
        out += wy * wx * img[yy, xx]
  return out


def _np_deform_conv(x, offsets, kernel, mask, stride, pad, dil, groups):
  """Loops over output pixels and taps, as torchvision's CPU im2col kernel."""
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  ho, wo = offsets.shape[1:3]
  cg = cin // groups
  out = np.zeros((b, ho, wo, cout), np.float64)
  for n, oy, ox in itertools.product(range(b), range(ho), range(wo)):
    col = np.zeros((kh, kw, cin), np.float64)
    for g, i, j in itertools.product(range(groups), range(kh), range(kw)):
      k = i * kw + j
      off_y = offsets[n, oy, ox, 2 * (g * kh * kw + k)]
      off_x = offsets[n, oy, ox, 2 * (g * kh * kw + k) + 1]
      m = 1.0 if mask is None else mask[n, oy, ox, g * kh * kw + k]
      y = oy * stride[0] - pad[0] + i * dil[0] + off_y
      xx = ox * stride[1] - pad[1] + j * dil[1] + off_x
      col[i, j, g * cg:(g + 1) * cg] = m * _np_bilinear(
          x[n, :, :, g * cg:(g + 1) * cg], y, xx)
    out[n, oy, ox] = np.einsum("ijc,ijco->o", col, kernel)
  return out


def _out_size(h, w, k, stride, pad, dil):
  return ((h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1,
          (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1)


def test_bilinear_sample_matches_numpy():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(5, 7, 3)).astype(np.float32)
  # Random points well outside, on the border band (-1, 0) / (H-1, H), at
  # exact integers and exactly on the cut-off lines -1 and H.
  ys = np.concatenate([rng.uniform(-2.5, 6.5, 60), [-1.0, 0.0, 4.0, 5.0, -0.5,
                                                    4.5, 2.0, 3.25]])
  xs = np.concatenate([rng.uniform(-2.5, 8.5, 60), [3.0, -1.0, 6.0, 7.0, 6.5,
                                                    -0.5, 0.0, 2.0]])
  got = dc.bilinear_sample(jnp.asarray(img), jnp.asarray(ys, jnp.float32),
                           jnp.asarray(xs, jnp.float32))
  want = np.stack([_np_bilinear(img, y, x) for y, x in
                   zip(ys.astype(np.float32), xs.astype(np.float32))])
  assert got.shape == (68, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bilinear_sample_batched_and_exact_pixels():
  rng = np.random.default_rng(1)
  img = rng.normal(size=(2, 4, 6, 2)).astype(np.float32)
  yy, xx = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
  y = np.broadcast_to(yy, (2, 4, 6)).astype(np.float32)
  x = np.broadcast_to(xx, (2, 4, 6)).astype(np.float32)
  got = dc.bilinear_sample(jnp.asarray(img), jnp.asarray(y), jnp.asarray(x))
  np.testing.assert_allclose(got, img, rtol=0, atol=1e-6)
  # A shift by half a pixel averages neighbours; the last column blends with
  # the zero padding.
  got = dc.bilinear_sample(jnp.asarray(img), jnp.asarray(y),
                           jnp.asarray(x + 0.5))
  want = 0.5 * img + 0.5 * np.concatenate(
      [img[:, :, 1:], np.zeros_like(img[:, :, :1])], axis=2)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bilinear_sample_rejects_bad_shapes():
  img = jnp.zeros((4, 4, 2))
  with pytest.raises(ValueError, match="same shape"):
    dc.bilinear_sample(img, jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match="batch"):
    dc.bilinear_sample(jnp.zeros((2, 4, 4, 2)), jnp.zeros(3), jnp.zeros(3))


# (B, H, W, Cin, Cout, kernel, stride, pad, dilation, groups, modulated)
CASES = [
    (1, 6, 7, 4, 3, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),
    (2, 7, 6, 4, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    (1, 8, 9, 4, 2, (3, 3), (1, 1), (2, 2), (2, 2), 2, False),
    (2, 7, 8, 6, 3, (3, 2), (2, 1), (1, 0), (1, 2), 2, True),
    (1, 5, 5, 2, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
]


@pytest.mark.parametrize("case", CASES)
def test_deform_conv_matches_numpy(case):
  b, h, w, cin, cout, k, stride, pad, dil, groups, modulated = case
  rng = np.random.default_rng(hash(case) % 2**32)
  ho, wo = _out_size(h, w, k, stride, pad, dil)
  taps = k[0] * k[1]
  x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
  # Offsets of a few pixels push many samples out of the image.
  offsets = rng.uniform(-4, 4, size=(b, ho, wo, 2 * groups * taps))
  offsets = offsets.astype(np.float32)
  kernel = rng.normal(size=(*k, cin, cout)).astype(np.float32)
  mask = None
  if modulated:
    mask = rng.uniform(0, 1, size=(b, ho, wo, groups * taps))
    mask = mask.astype(np.float32)
  got = dc.deform_conv2d(
      jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(kernel),
      None if mask is None else jnp.asarray(mask), stride=stride,
      padding=pad, dilation=dil, offset_groups=groups)
  want = _np_deform_conv(x, offsets, kernel, mask, stride, pad, dil, groups)
  assert got.shape == (b, ho, wo, cout)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Some samples really were outside the image.
  assert np.abs(offsets).max() > 3


def test_zero_offsets_equal_regular_conv():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 9, 10, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  pad = ((1, 2), (0, 1))
  ho, wo = dc.deform_conv_output_size(9, 10, (3, 3), stride=(2, 1),
                                      padding=pad, dilation=(1, 2))
  got = dc.deform_conv2d(x, jnp.zeros((2, ho, wo, 36)), kernel,
                         stride=(2, 1), padding=pad, dilation=(1, 2),
                         offset_groups=2)
  want = jax.lax.conv_general_dilated(
      x, kernel, (2, 1), pad, rhs_dilation=(1, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_integer_offsets_shift_the_input():
  # A 1x1 deformable conv with offset (+1, -2) reads x[y + 1, x - 2].
  rng = np.random.default_rng(3)
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  offsets = np.broadcast_to(np.float32([1.0, -2.0]), (1, 5, 6, 2))
  got = dc.deform_conv2d(jnp.asarray(x), jnp.asarray(offsets),
                         jnp.eye(2).reshape(1, 1, 2, 2))
  want = np.zeros_like(x)
  want[:, :4, 2:] = x[:, 1:, :4]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_jit_equals_eager():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(1, 6, 6, 4)), jnp.float32)
  offsets = jnp.asarray(rng.uniform(-2, 2, (1, 3, 3, 36)), jnp.float32)
  mask = jnp.asarray(rng.uniform(0, 1, (1, 3, 3, 18)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)
  kw = dict(stride=2, padding=1, offset_groups=2)
  eager = dc.deform_conv2d(x, offsets, kernel, mask, **kw)
  jitted = jax.jit(lambda *a: dc.deform_conv2d(*a, **kw))(
      x, offsets, kernel, mask)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)


def _off_integer(rng, size, low, high):
  """Uniform values whose fractional part lies in [0.2, 0.8]."""
  whole = rng.integers(low, high, size=size)
  return (whole + rng.uniform(0.2, 0.8, size=size)).astype(np.float32)


def test_bilinear_sample_gradients():
  rng = np.random.default_rng(5)
  img = jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32)
  # Positions inside, in the fading border band and partly outside.
  y = jnp.asarray(_off_integer(rng, (6,), -1, 4))
  x = jnp.asarray(_off_integer(rng, (6,), -1, 5))
  jtu.check_grads(dc.bilinear_sample, (img, y, x), order=1, modes=["rev"],
                  eps=1e-3, atol=1e-2, rtol=1e-2)


def test_deform_conv_gradients():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
  # Zero padding 1, stride 1, 3x3 taps: every base position is an integer,
  # so offsets with fractional part in [0.2, 0.8] stay away from the kinks.
  offsets = jnp.asarray(_off_integer(rng, (1, 4, 4, 36), -2, 2))
  mask = jnp.asarray(rng.uniform(0.2, 0.9, (1, 4, 4, 18)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)

  def f(x, offsets, kernel, mask):
    return dc.deform_conv2d(x, offsets, kernel, mask, padding=1,
                            offset_groups=2)

  jtu.check_grads(f, (x, offsets, kernel, mask), order=1, modes=["rev"],
                  eps=1e-3, atol=2e-2, rtol=2e-2)
  grads = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2, 3))(
      x, offsets, kernel, mask)
  for g in grads:
    assert np.all(np.isfinite(g))
    assert np.abs(g).max() > 0


def test_vmap_over_images():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(3, 1, 5, 5, 2)), jnp.float32)
  offsets = jnp.asarray(rng.uniform(-2, 2, (3, 1, 5, 5, 18)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)
  f = lambda x, o: dc.deform_conv2d(x, o, kernel, padding=1)
  got = jax.vmap(f)(x, offsets)
  want = f(x.reshape(3, 5, 5, 2), offsets.reshape(3, 5, 5, 18))
  np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5)


def test_bad_shapes_raise():
  x = jnp.zeros((1, 5, 5, 4))
  kernel = jnp.zeros((3, 3, 4, 2))
  with pytest.raises(ValueError, match="offsets must have shape"):
    dc.deform_conv2d(x, jnp.zeros((1, 5, 5, 17)), kernel, padding=1)
  with pytest.raises(ValueError, match="mask must have shape"):
    dc.deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), kernel,
                     jnp.zeros((1, 5, 5, 18)), padding=1)
  with pytest.raises(ValueError, match="offset_groups"):
    dc.deform_conv2d(x, jnp.zeros((1, 5, 5, 54)), kernel, padding=1,
                     offset_groups=3)
  with pytest.raises(ValueError, match="kernel"):
    dc.deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), jnp.zeros((3, 3, 2, 2)))
  with pytest.raises(ValueError, match="padding"):
    dc.deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), kernel, padding="SAME")


def _jnp_deform_conv(x, offsets, kernel, mask, stride, pad, dil, groups):
  """Plain jnp deformable conv for jax autodiff (no custom gradient).

  Loops over groups, taps and the four bilinear neighbours; each neighbour is
  read with clipped indices and masked out when outside the map, as the
  torchvision CUDA kernel does.
  """
  _, h, w, cin = x.shape
  kh, kw = kernel.shape[:2]
  ho, wo = offsets.shape[1:3]
  cg = cin // groups
  base_y = (jnp.arange(ho) * stride[0] - pad[0])[None, :, None]
  base_x = (jnp.arange(wo) * stride[1] - pad[1])[None, None, :]
  image = jnp.arange(x.shape[0])[:, None, None]
  out = 0.0
  for g, i, j in itertools.product(range(groups), range(kh), range(kw)):
    t = g * kh * kw + i * kw + j
    y = base_y + i * dil[0] + offsets[..., 2 * t]
    xx = base_x + j * dil[1] + offsets[..., 2 * t + 1]
    inside = (y > -1) & (y < h) & (xx > -1) & (xx < w)
    y0 = jnp.floor(y)
    x0 = jnp.floor(xx)
    ly = y - y0
    lx = xx - x0
    sample = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
      for xc, wx in ((x0, 1 - lx), (x0 + 1, lx)):
        ok = inside & (yy >= 0) & (yy <= h - 1) & (xc >= 0) & (xc <= w - 1)
        rows = jnp.clip(yy, 0, h - 1).astype(jnp.int32)
        cols = jnp.clip(xc, 0, w - 1).astype(jnp.int32)
        values = x[image, rows, cols, g * cg:(g + 1) * cg]
        sample = sample + jnp.where(ok, wy * wx, 0.0)[..., None] * values
    if mask is not None:
      sample = sample * mask[..., t, None]
    out = out + sample @ kernel[i, j, g * cg:(g + 1) * cg]
  return out


# (B, H, W, Cin, Cout, kernel, stride, pad, dilation, groups, modulated)
GRAD_CASES = [
    (2, 7, 9, 4, 3, (3, 3), (2, 2), (1, 1), (2, 2), 2, True),
    (1, 6, 5, 3, 2, (3, 2), (1, 1), (1, 0), (1, 1), 1, False),
]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_custom_backward_matches_autodiff_of_plain_formulation(case):
  b, h, w, cin, cout, k, stride, pad, dil, groups, modulated = case
  rng = np.random.default_rng(8)
  ho, wo = _out_size(h, w, k, stride, pad, dil)
  taps = k[0] * k[1]
  x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
  # Offsets of a few pixels put many samples outside the image or in the
  # fading border band.
  offsets = rng.uniform(-4, 4, (b, ho, wo, groups * taps, 2))
  # Move a third of the samples exactly onto the cut-off lines -1 and H (W),
  # onto the first and last pixel, into the band (-1, 0) or (H - 1, H), or
  # far away, keeping the other coordinate random.
  base_y = np.arange(ho)[:, None] * stride[0] - pad[0] + np.repeat(
      np.arange(k[0]) * dil[0], k[1])[None, :]  # [Ho, K]
  base_x = np.arange(wo)[:, None] * stride[1] - pad[1] + np.tile(
      np.arange(k[1]) * dil[1], k[0])[None, :]  # [Wo, K]
  base = np.stack(np.broadcast_arrays(
      base_y[None, :, None, None, :], base_x[None, None, :, None, :]), -1)
  base = np.broadcast_to(base, (b, ho, wo, groups, taps, 2)).reshape(
      offsets.shape)
  for axis, size in ((0, h), (1, w)):
    targets = np.float32([-1.0, size, 0.0, size - 1.0, -0.5, size - 0.25,
                          1e6, -1e6])
    chosen = rng.uniform(size=offsets.shape[:-1]) < 1 / 3
    picked = rng.choice(targets, size=offsets.shape[:-1])
    offsets[..., axis] = np.where(chosen, picked - base[..., axis],
                                  offsets[..., axis])
  offsets = offsets.reshape(b, ho, wo, -1).astype(np.float32)
  kernel = rng.normal(size=(*k, cin, cout)).astype(np.float32)
  mask = None
  if modulated:
    mask = rng.uniform(0, 1, (b, ho, wo, groups * taps)).astype(np.float32)
  cotangent = rng.normal(size=(b, ho, wo, cout)).astype(np.float32)
  args = tuple(jnp.asarray(a) for a in (x, offsets, kernel, mask)
               if a is not None)

  def custom(x, offsets, kernel, mask=None):
    return dc.deform_conv2d(x, offsets, kernel, mask, stride=stride,
                            padding=pad, dilation=dil, offset_groups=groups)

  def plain(x, offsets, kernel, mask=None):
    return _jnp_deform_conv(x, offsets, kernel, mask, stride, pad, dil,
                            groups)

  want_out, plain_vjp = jax.vjp(plain, *args)
  wants = plain_vjp(jnp.asarray(cotangent))
  for fn in (custom, jax.jit(custom)):
    got_out, custom_vjp = jax.vjp(fn, *args)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
    gots = custom_vjp(jnp.asarray(cotangent))
    for name, got, want in zip(("x", "offsets", "kernel", "mask"), gots,
                               wants):
      assert got.shape == want.shape and got.dtype == want.dtype, name
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                 err_msg=name)
  # Samples outside (-1, H) x (-1, W) have exactly zero offset gradient.
  pos = base.reshape(b, ho, wo, -1) + offsets  # (y, x) interleaved
  outside = ((pos[..., 0::2] <= -1) | (pos[..., 0::2] >= h)
             | (pos[..., 1::2] <= -1) | (pos[..., 1::2] >= w))
  g_offsets = np.asarray(gots[1]).reshape(b, ho, wo, -1, 2)
  assert outside.sum() > 10 and (~outside).sum() > 10
  assert np.all(g_offsets[outside] == 0)
  assert np.abs(g_offsets[~outside]).max() > 0


def _collectives(compiled_text: str) -> list[str]:
  """The cross-device operations of a compiled module, each named with
  " in a loop" when it sits in a while loop's body."""
  ops = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
         "reduce-scatter")
  bodies = set(re.findall(r"body=%?([\w.\-]+)", compiled_text))
  found, computation = [], None
  for line in compiled_text.splitlines():
    header = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", line)
    if header and not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = header.group(1)
    found += [op + (" in a loop" if computation in bodies else "")
              for op in ops if f" {op}(" in line or f" {op}-start(" in line]
  return found


def test_data_parallel_stays_on_each_device():
  # Batch sharded over 8 devices, as the train step shards it: the forward
  # pass needs no communication and the backward pass one all-reduce (the
  # kernel gradient summed over images). A gather indexing the whole batch
  # once made XLA all-gather every image to every device, for every tap.
  from ps_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh(8)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6, 7, 4)).astype(np.float32)
  offsets = (2 * rng.normal(size=(8, 6, 7, 2 * 2 * 9))).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  mask = rng.uniform(size=(8, 6, 7, 2 * 9)).astype(np.float32)
  batch, whole = mesh_lib.data_sharding(mesh), mesh_lib.replicated(mesh)
  args = (jax.device_put(x, batch), jax.device_put(offsets, batch),
          jax.device_put(kernel, whole), jax.device_put(mask, batch))

  def loss(x, offsets, kernel, mask):
    out = dc.deform_conv2d(x, offsets, kernel, mask, padding=1,
                           offset_groups=2)
    return jnp.sum(out * out)

  forward = jax.jit(lambda *a: dc.deform_conv2d(*a[:3], a[3], padding=1,
                                                offset_groups=2))
  assert not _collectives(forward.lower(*args).compile().as_text())
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  assert _collectives(grad.lower(*args).compile().as_text()) == [
      "all-reduce"]
  wants = jax.grad(loss, argnums=(0, 1, 2, 3))(x, offsets, kernel, mask)
  for got, want in zip(grad(*args), wants):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
