"""Bilinear sampling and deformable convolution (DCN v1 and modulated v2).

Conventions:
  * Channels last: images are f32[B, H, W, C], kernels f32[kh, kw, Cin, Cout]
    (the `flax.linen.Conv` layout).
  * Sample positions are continuous (row, column) coordinates in pixels of the
    sampled map, with pixel (i, j) at exactly (i, j) (no half-pixel shift).
  * Bilinear sampling follows torchvision's deformable-conv kernel: a sample
    with y <= -1, y >= H, x <= -1 or x >= W reads 0; otherwise it blends its
    four integer neighbours and every neighbour outside the map reads 0 (zero
    padding), so a sample near the border fades out smoothly.
  * Offsets use torchvision.ops.deform_conv2d's channel order, moved to the
    last axis: for kernel tap k = i * kw + j of offset group g, channel
    2 * (g * kh * kw + k) is the row (y) offset and the next channel the
    column (x) offset, in input pixels. The modulation mask's channel
    g * kh * kw + k scales that tap's sample. Input channel c belongs to
    offset group c // (Cin // G). Weights imported from torchvision or mmcv
    therefore only need their offset/mask tensors moved from NCHW to NHWC.

Sampling reads the four neighbours from the map padded by one zero pixel, so
neighbours outside the image read the padding without per-neighbour masks.
`deform_conv2d` visits the kernel taps one at a time (`lax.scan`): each step
gathers that tap's samples for the whole batch and multiplies them with that
tap's kernel slice. The gathers index each image's own rows (a gather with
the batch as a batching dimension, `jax.vmap`), never one index over the
whole batch: under data parallelism (a batch sharded over devices) XLA then
keeps every gather and scatter on the device that holds its image. A single
flat index over images, pixels and groups made the SPMD partitioner
all-gather the whole batch's feature map to every device for every tap,
forward and backward, thousands of collectives per train step.
Its backward pass is written by hand (`jax.custom_vjp`). It keeps only the
inputs and regathers the samples, as mmcv's kernels do; per tap, the kernel
gradient comes from the samples, the input gradient from scatter-adding the
weighted sample gradients, and the offset and mask gradients from dot
products of each neighbour's values with the sample gradient. (Autodiff of
the gathers was several times slower on XLA:CPU.) The gradient wrt a sample
position is the one of the bilinear blend: zero across integer positions'
measure-zero kinks and outside the map, like torchvision's own backward.
`deform_conv2d` supports first-order reverse mode (grad, vjp) only, not jvp
or higher orders; `bilinear_sample` is plain jnp and supports all.
"""
import functools
from typing import NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

Padding = Union[int, Sequence[int], Sequence[Sequence[int]]]


def _corners(y: jax.Array, x: jax.Array, height: int, width: int):
  """Bilinear neighbours of sample positions, in the map padded by 1 pixel.

  Args:
    y: f32[...] row coordinates, pixels of the unpadded H x W map.
    x: f32[...] column coordinates, pixels; same shape as `y`.
    height: H.
    width: W.

  Returns:
    (row, col, ly, lx, inside): i32[...] row and column of the top-left
    neighbour in the map padded by one zero pixel on each side, f32[...]
    fractional parts y - floor(y) and x - floor(x), and bool[...] whether
    the sample lies inside (-1, H) x (-1, W). All four neighbours of an
    inside sample lie in the padded map, and those outside the image read
    its zero padding; other samples (NaN included) point at (0, 0) and get
    weight 0.
  """
  inside = (y > -1) & (y < height) & (x > -1) & (x < width)
  y0 = jnp.floor(y)
  x0 = jnp.floor(x)
  # Fractions keep their gradient wrt y and x; floor itself has none.
  ly = y - y0
  lx = x - x0
  # Pointing outside samples at (0, 0) keeps every index in bounds without
  # clipping (and without casting huge or NaN coordinates to int).
  row = jnp.where(inside, y0 + 1, 0).astype(jnp.int32)
  col = jnp.where(inside, x0 + 1, 0).astype(jnp.int32)
  return row, col, ly, lx, inside


def _weights(ly: jax.Array, lx: jax.Array,
             inside: jax.Array) -> tuple[jax.Array, ...]:
  """Bilinear weights from the outputs of `_corners`.

  Returns:
    4 x f32[...]: weights of the top-left, top-right, bottom-left and
    bottom-right neighbours; 0 for samples outside (-1, H) x (-1, W).
  """
  hy = 1.0 - ly
  hx = 1.0 - lx
  return tuple(jnp.where(inside, wy * wx, 0.0)
               for wy, wx in ((hy, hx), (hy, lx), (ly, hx), (ly, lx)))


def _blend(flat: jax.Array, top_left: jax.Array, steps: Sequence[int],
           weights: Sequence[jax.Array]) -> jax.Array:
  """Blends neighbours: sum_n weights[n] * flat[top_left + steps[n]].

  Args:
    flat: f32[R, Cg] rows of the padded map.
    top_left: i32[...] row of each sample's top-left neighbour.
    steps: row steps to the four neighbours.
    weights: 4 x f32[...] neighbour weights.

  Returns:
    f32[..., Cg], summed in the order top-left, top-right, bottom-left,
    bottom-right.
  """
  out = 0.0
  for step, weight in zip(steps, weights):
    values = jnp.take(flat, top_left + step, axis=0, mode="clip")
    out = out + weight.astype(flat.dtype)[..., None] * values
  return out


def bilinear_sample(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """Samples an image at continuous positions with zero padding.

  A sample at (y, x) outside (-1, H) x (-1, W) is 0; inside, it blends its
  four integer neighbours, reading 0 for those outside the image
  (torchvision's deformable-conv interpolation).

  Args:
    image: f32[H, W, C], or f32[B, H, W, C] for a batch of images.
    y: f32[...] row coordinates in pixels (f32[B, ...] if batched).
    x: f32[...] column coordinates in pixels, same shape as `y`.

  Returns:
    f32[..., C] (f32[B, ..., C] if batched) sampled values.
  """
  image = jnp.asarray(image)
  y = jnp.asarray(y, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  if y.shape != x.shape:
    raise ValueError(
        f"bilinear_sample: y and x must have the same shape, got {y.shape} "
        f"and {x.shape}.")
  if image.ndim == 4:
    if y.ndim < 1 or y.shape[0] != image.shape[0]:
      raise ValueError(
          f"bilinear_sample: batched image {image.shape} needs y and x with "
          f"leading batch dimension {image.shape[0]}, got {y.shape}.")
    return jax.vmap(bilinear_sample)(image, y, x)
  if image.ndim != 3:
    raise ValueError(
        f"bilinear_sample: image must be f32[H, W, C] or f32[B, H, W, C], "
        f"got shape {image.shape}.")
  height, width, channels = image.shape
  row, col, ly, lx, inside = _corners(y, x, height, width)
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  flat = padded.reshape((height + 2) * (width + 2), channels)
  steps = (0, 1, width + 2, width + 3)
  return _blend(flat, row * (width + 2) + col, steps,
                _weights(ly, lx, inside))


def _pair(value: Union[int, Sequence[int]], name: str) -> tuple[int, int]:
  if isinstance(value, int):
    return value, value
  value = tuple(value)
  if len(value) != 2 or not all(isinstance(v, int) for v in value):
    raise ValueError(f"deform_conv2d: {name} must be an int or a pair of "
                     f"ints, got {value!r}.")
  return value


def canonical_padding(
    padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
  """int p, (ph, pw) or ((top, bottom), (left, right)) -> the last form."""
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return (padding[0], padding[0]), (padding[1], padding[1])
  if len(padding) == 2 and all(
      not isinstance(p, int) and len(tuple(p)) == 2 for p in padding):
    return tuple(tuple(int(v) for v in p) for p in padding)
  raise ValueError(
      "deform_conv2d: padding must be an int, (ph, pw) or ((top, bottom), "
      f"(left, right)), got {padding!r}.")


def deform_conv_output_size(
    height: int, width: int, kernel_size: tuple[int, int], *,
    stride: Union[int, Sequence[int]] = 1, padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1) -> tuple[int, int]:
  """Output (Ho, Wo) of a (deformable) convolution, like nn.Conv's.

  Args:
    height: input height H, pixels.
    width: input width W, pixels.
    kernel_size: (kh, kw).
    stride: int or (sh, sw).
    padding: int p, (ph, pw) or ((top, bottom), (left, right)).
    dilation: int or (dh, dw).

  Returns:
    (Ho, Wo).
  """
  (pt, pb), (pl, pr) = canonical_padding(padding)
  sh, sw = _pair(stride, "stride")
  dh, dw = _pair(dilation, "dilation")
  kh, kw = kernel_size
  out_h = (height + pt + pb - dh * (kh - 1) - 1) // sh + 1
  out_w = (width + pl + pr - dw * (kw - 1) - 1) // sw + 1
  return out_h, out_w


def deform_conv2d(
    x: jax.Array,
    offsets: jax.Array,
    kernel: jax.Array,
    mask: jax.Array | None = None,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    offset_groups: int = 1,
) -> jax.Array:
  """Deformable convolution v1, or modulated v2 when `mask` is given.

  Output pixel (oy, ox) sums, over taps (i, j) and input channels c,
  kernel[i, j, c, :] * mask * x_c sampled at
  (oy * sh - top + i * dh + offset_y, ox * sw - left + j * dw + offset_x),
  as torchvision.ops.deform_conv2d (no bias: add it outside).

  Args:
    x: f32[B, H, W, Cin] input map.
    offsets: f32[B, Ho, Wo, 2 * G * kh * kw] sample offsets in input pixels,
      torchvision channel order (see the module docstring); G =
      `offset_groups`.
    kernel: f32[kh, kw, Cin, Cout] weights.
    mask: optional f32[B, Ho, Wo, G * kh * kw] modulation (DCN v2), usually a
      sigmoid in [0, 1]; None for DCN v1 (all ones).
    stride: int or (sh, sw).
    padding: int p, (ph, pw) or ((top, bottom), (left, right)); padded
      positions read 0.
    dilation: int or (dh, dw).
    offset_groups: G; Cin must be divisible by it.

  Returns:
    f32[B, Ho, Wo, Cout].
  """
  x = jnp.asarray(x)
  offsets = jnp.asarray(offsets)
  kernel = jnp.asarray(kernel)
  if x.ndim != 4:
    raise ValueError(
        f"deform_conv2d: x must be f32[B, H, W, Cin], got shape {x.shape}.")
  if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
    raise ValueError(
        f"deform_conv2d: kernel must be f32[kh, kw, Cin={x.shape[3]}, Cout], "
        f"got shape {kernel.shape}.")
  batch, height, width, cin = x.shape
  kh, kw, _, cout = kernel.shape
  groups = offset_groups
  if groups < 1 or cin % groups:
    raise ValueError(
        f"deform_conv2d: offset_groups={groups} must divide Cin={cin}.")
  taps = kh * kw
  (pt, _), (pl, _) = canonical_padding(padding)
  sh, sw = _pair(stride, "stride")
  dh, dw = _pair(dilation, "dilation")
  out_h, out_w = deform_conv_output_size(
      height, width, (kh, kw), stride=stride, padding=padding,
      dilation=dilation)
  want = (batch, out_h, out_w, 2 * groups * taps)
  if offsets.shape != want:
    raise ValueError(
        f"deform_conv2d: offsets must have shape {want} (B, Ho, Wo, "
        f"2*offset_groups*kh*kw), got {offsets.shape}.")
  if mask is not None:
    mask = jnp.asarray(mask)
    want = (batch, out_h, out_w, groups * taps)
    if mask.shape != want:
      raise ValueError(
          f"deform_conv2d: mask must have shape {want} (B, Ho, Wo, "
          f"offset_groups*kh*kw), got {mask.shape}.")

  geometry = _Geometry(
      groups=groups, out_h=out_h, out_w=out_w, kh=kh, kw=kw, stride=(sh, sw),
      top_left_pad=(pt, pl), dilation=(dh, dw))
  return _deform_conv(geometry, x, offsets, kernel, mask)


class _Geometry(NamedTuple):
  """Static sizes of a deformable convolution (hashable for custom_vjp)."""
  groups: int
  out_h: int
  out_w: int
  kh: int
  kw: int
  stride: tuple[int, int]
  top_left_pad: tuple[int, int]
  dilation: tuple[int, int]


class _Samples(NamedTuple):
  """Where the taps read the input; tap-major arrays are [K, B, Ho, Wo, G]."""
  flat: jax.Array  # f32[B, (H+2) * (W+2) * G, Cg]: padded input rows.
  steps: tuple[int, int, int, int]  # Row steps to the 4 neighbours.
  top_left: jax.Array  # i32[K, B, Ho, Wo, G]: top-left neighbour's row in
  # its image's rows.
  ly: jax.Array  # f32[K, B, Ho, Wo, G]: fractional row position.
  lx: jax.Array  # f32[K, B, Ho, Wo, G]: fractional column position.
  inside: jax.Array  # bool[K, B, Ho, Wo, G]: sample in (-1, H) x (-1, W).


def _samples(geometry: _Geometry, x: jax.Array,
             offsets: jax.Array) -> _Samples:
  """Sample positions of every tap, output pixel and group.

  Args:
    geometry: static sizes.
    x: f32[B, H, W, Cin] input map.
    offsets: f32[B, Ho, Wo, 2 * G * K] offsets, K = kh * kw.

  Returns:
    The input as f32[B, (H + 2) * (W + 2) * G, Cg]: each image's rows
    (padded by one zero pixel, one row per pixel and group), and each
    sample's neighbours among its image's rows.
  """
  g = geometry
  batch, height, width, cin = x.shape
  taps = g.kh * g.kw
  sh, sw = g.stride
  pt, pl = g.top_left_pad
  dh, dw = g.dilation
  # Undeformed sampling grid: base[t, o] = o * stride - pad + tap * dilation.
  tap_i, tap_j = jnp.divmod(jnp.arange(taps), g.kw)
  base_y = (jnp.arange(g.out_h)[None, :] * sh - pt
            + tap_i[:, None] * dh).astype(jnp.float32)  # [K, Ho]
  base_x = (jnp.arange(g.out_w)[None, :] * sw - pl
            + tap_j[:, None] * dw).astype(jnp.float32)  # [K, Wo]
  offsets = offsets.reshape(batch, g.out_h, g.out_w, g.groups, taps, 2)
  offsets = jnp.transpose(offsets, (4, 0, 1, 2, 3, 5))  # [K,B,Ho,Wo,G,2]
  pos_y = base_y[:, None, :, None, None] + offsets[..., 0]  # [K,B,Ho,Wo,G]
  pos_x = base_x[:, None, None, :, None] + offsets[..., 1]
  row, col, ly, lx, inside = _corners(pos_y, pos_x, height, width)
  # One row index over (padded row, padded column, group) of each image.
  padded_w = width + 2
  group = jax.lax.broadcasted_iota(jnp.int32, row.shape, 4)
  top_left = (row * padded_w + col) * g.groups + group
  steps = (0, g.groups, padded_w * g.groups, (padded_w + 1) * g.groups)
  flat = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  flat = flat.reshape(batch, -1, cin // g.groups)
  return _Samples(flat, steps, top_left, ly, lx, inside)


def _tap_major_mask(mask: jax.Array | None,
                    geometry: _Geometry) -> jax.Array | None:
  """f32[B, Ho, Wo, G * K] -> f32[K, B, Ho, Wo, G] (None stays None)."""
  if mask is None:
    return None
  mask = mask.reshape(*mask.shape[:3], geometry.groups, -1)
  return jnp.transpose(mask, (4, 0, 1, 2, 3))


def _tap_inputs(geometry: _Geometry, x: jax.Array, offsets: jax.Array,
                kernel: jax.Array, mask: jax.Array | None):
  """Samples, their weights and the per-tap slices `lax.scan` walks over.

  Returns:
    (samples, weights, per_tap): see `_samples`; 4 x f32[K, B, Ho, Wo, G]
    bilinear weights; and (f32[K, Cin, Cout] kernel, i32[K, B, Ho, Wo, G]
    top-left rows, the weights, f32[K, B, Ho, Wo, G] mask or None).
  """
  samples = _samples(geometry, x, offsets)
  kh, kw, cin, cout = kernel.shape
  weights = _weights(samples.ly, samples.lx, samples.inside)
  per_tap = (kernel.reshape(kh * kw, cin, cout).astype(samples.flat.dtype),
             samples.top_left, weights, _tap_major_mask(mask, geometry))
  return samples, weights, per_tap


def _tap_columns(samples: _Samples, top_left: jax.Array,
                 weights: Sequence[jax.Array],
                 mask: jax.Array | None) -> jax.Array:
  """One tap's modulated samples.

  Args:
    samples: the sampled map.
    top_left: i32[B, Ho, Wo, G] the tap's top-left neighbours, rows of
      each image.
    weights: 4 x f32[B, Ho, Wo, G] their bilinear weights.
    mask: f32[B, Ho, Wo, G] the tap's modulation, or None.

  Returns:
    f32[B * Ho * Wo, Cin] (channels of group g at g * Cg + c).
  """
  cols = jax.vmap(functools.partial(_blend, steps=samples.steps))(
      samples.flat, top_left, weights=weights)
  if mask is not None:
    cols = cols * mask[..., None].astype(cols.dtype)
  return cols.reshape(-1, cols.shape[-2] * cols.shape[-1])


# The taps are visited one at a time (lax.scan) instead of gathering the
# K-times-wider im2col matrix at once: the same arithmetic, but each step's
# temporaries are K times smaller, which halved the forward and backward
# times on XLA:CPU (memory traffic, not arithmetic, dominates there) and
# divides the peak memory by K. The summation over taps therefore differs
# from one matmul over K * Cin only by float32 rounding.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _deform_conv(geometry: _Geometry, x: jax.Array, offsets: jax.Array,
                 kernel: jax.Array, mask: jax.Array | None) -> jax.Array:
  samples, _, per_tap = _tap_inputs(geometry, x, offsets, kernel, mask)
  batch = x.shape[0]
  cout = kernel.shape[-1]

  def tap_step(out, tap):
    kernel_k, top_left_k, weights_k, mask_k = tap
    cols = _tap_columns(samples, top_left_k, weights_k, mask_k)
    return out + jnp.dot(cols, kernel_k,
                         preferred_element_type=jnp.float32), None

  out = jnp.zeros((batch * geometry.out_h * geometry.out_w, cout),
                  jnp.float32)
  out, _ = jax.lax.scan(tap_step, out, per_tap)
  out = out.reshape(batch, geometry.out_h, geometry.out_w, cout)
  return out.astype(jnp.result_type(x.dtype, kernel.dtype))


def _deform_conv_fwd(geometry, x, offsets, kernel, mask):
  # Only the inputs are kept: the backward pass regathers the samples (4 K
  # times the input) instead of storing them, like mmcv's kernels.
  return (_deform_conv(geometry, x, offsets, kernel, mask),
          (x, offsets, kernel, mask))


def _neighbour_dots(samples: _Samples, top_left: jax.Array,
                    g_cols: jax.Array) -> tuple[jax.Array, ...]:
  """<neighbour n's values, g_cols> over a group's channels, for each n.

  Args:
    samples: the sampled map.
    top_left: i32[B, Ho, Wo, G] one tap's top-left neighbours, rows of
      each image.
    g_cols: f32[B, Ho, Wo, G, Cg] gradient wrt that tap's blended samples.

  Returns:
    4 x f32[B, Ho, Wo, G].
  """
  # One variadic reduction over the four products: XLA:CPU then fuses the
  # gathers into it, where four separate sums each materialised their
  # gathered copy (about 6x slower). `.at[].get` rather than `jnp.take`
  # keeps these gathers distinct from `_blend`'s, which XLA would otherwise
  # merge into one materialised copy shared by both.
  rows = jax.vmap(lambda flat, index: flat.at[index].get(
      mode="promise_in_bounds"))
  products = tuple(
      rows(samples.flat, top_left + step).astype(jnp.float32)
      * g_cols.astype(jnp.float32) for step in samples.steps)
  return jax.lax.reduce(products, (jnp.float32(0),) * len(products),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)),
                        (g_cols.ndim - 1,))


def _deform_conv_bwd(geometry, residuals, g_out):
  """Cotangents of x, offsets, kernel and mask given f32[B,Ho,Wo,Cout]."""
  x, offsets, kernel, mask = residuals
  batch, height, width, cin = x.shape
  cout = kernel.shape[-1]
  groups = geometry.groups
  samples, weights, per_tap = _tap_inputs(geometry, x, offsets, kernel, mask)
  dtype = samples.flat.dtype
  g_rows = g_out.reshape(-1, cout).astype(dtype)  # [B*Ho*Wo, Cout]
  col_shape = (batch, geometry.out_h, geometry.out_w, groups, cin // groups)
  scatter_add = jax.vmap(lambda rows, index, values: rows.at[index].add(
      values, mode="promise_in_bounds"))

  def tap_step(g_flat, tap):
    kernel_k, top_left_k, weights_k, mask_k = tap
    # Gradient wrt this tap's (modulated) samples: g_out W_k^T.
    g_cols = jnp.dot(g_rows, kernel_k.T, preferred_element_type=jnp.float32)
    g_cols = g_cols.astype(dtype).reshape(col_shape)
    # Kernel gradient from the regathered samples.
    cols = _tap_columns(samples, top_left_k, weights_k, mask_k)
    # One [Cin, Cout] product per image, summed over images after the scan:
    # with the batch sharded, the sum is then one all-reduce per
    # convolution instead of one per tap inside the loop.
    g_kernel_k = jnp.einsum(
        "bpc,bpo->bco", cols.reshape(batch, -1, cin),
        g_rows.reshape(batch, -1, cout), preferred_element_type=jnp.float32)
    # p_n = <neighbour n, g_cols> gives the blend weights' gradients.
    dots = _neighbour_dots(samples, top_left_k, g_cols)
    # Input gradient: each neighbour gets its weight times the gradient wrt
    # the unmodulated blend, scatter-added into the padded map.
    g_blend = g_cols if mask_k is None else (
        g_cols * mask_k[..., None].astype(dtype))
    for step, weight in zip(samples.steps, weights_k):
      g_flat = scatter_add(g_flat, top_left_k + step,
                           weight.astype(dtype)[..., None] * g_blend)
    return g_flat, (g_kernel_k, dots)

  g_flat, (g_kernel, dots) = jax.lax.scan(
      tap_step, jnp.zeros_like(samples.flat), per_tap)
  g_image = g_flat.reshape(batch, height + 2, width + 2, cin)
  g_image = g_image[:, 1:-1, 1:-1].astype(x.dtype)
  g_kernel = g_kernel.sum(axis=1).reshape(kernel.shape).astype(kernel.dtype)

  # Back from tap-major [K, B, Ho, Wo, G(, 2)] to the channel order
  # [B, Ho, Wo, G, K(, 2)] of the offsets and the mask.
  to_channels = lambda a: jnp.moveaxis(a, 0, 4)
  g_mask = None
  if mask is not None:
    # The unmodulated blend dotted with g_cols.
    g_m = sum(w * p for w, p in zip(weights, dots))
    g_mask = to_channels(g_m).reshape(mask.shape).astype(mask.dtype)
    mask_taps = per_tap[3]  # [K, B, Ho, Wo, G]
    dots = tuple(p * mask_taps.astype(jnp.float32) for p in dots)
  # Offset gradient: d/dly and d/dlx of the weights (1-ly)(1-lx), (1-ly)lx,
  # ly(1-lx), ly lx. Exactly zero outside the map, where the weights are
  # constant 0 (even where the values read there are not finite).
  p00, p01, p10, p11 = dots
  ly, lx, inside = samples.ly, samples.lx, samples.inside
  g_y = jnp.where(inside, (1.0 - lx) * (p10 - p00) + lx * (p11 - p01), 0.0)
  g_x = jnp.where(inside, (1.0 - ly) * (p01 - p00) + ly * (p11 - p10), 0.0)
  g_offsets = to_channels(jnp.stack([g_y, g_x], axis=-1))
  g_offsets = g_offsets.reshape(offsets.shape).astype(offsets.dtype)
  return g_image, g_offsets, g_kernel, g_mask


_deform_conv.defvjp(_deform_conv_fwd, _deform_conv_bwd)
