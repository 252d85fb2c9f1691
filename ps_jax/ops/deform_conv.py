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

Everything is gathers plus one contraction (im2col style); the only Python
loop is over the four bilinear neighbours. It jits, vmaps and differentiates
with respect to the input, offsets, mask and kernel. The gradient wrt a sample
position is the one of the bilinear blend (zero across integer positions'
measure-zero kinks, like torchvision's own backward).
"""
from typing import Sequence, Union

import jax
import jax.numpy as jnp

Padding = Union[int, Sequence[int], Sequence[Sequence[int]]]


def _sample_groups(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """Zero-padded bilinear sampling, one sample position per channel group.

  Args:
    image: f32[H, W, G, Cg] map whose channels are split into G groups.
    y: f32[..., G] row coordinates, pixels.
    x: f32[..., G] column coordinates, pixels; same shape as `y`.

  Returns:
    f32[..., G, Cg]: group g of `image` sampled at (y[..., g], x[..., g]).
  """
  height, width, groups, cg = image.shape
  flat = image.reshape(height * width * groups, cg)  # [H*W*G, Cg]
  group = jnp.arange(groups, dtype=jnp.int32)
  inside = (y > -1) & (y < height) & (x > -1) & (x < width)
  y0f = jnp.floor(y)
  x0f = jnp.floor(x)
  # Fractions keep their gradient wrt y and x; floor itself has none.
  ly = y - y0f
  lx = x - x0f
  y0 = y0f.astype(jnp.int32)
  x0 = x0f.astype(jnp.int32)
  out = 0.0
  for dy, wy in ((0, 1.0 - ly), (1, ly)):
    for dx, wx in ((0, 1.0 - lx), (1, lx)):
      yy = y0 + dy
      xx = x0 + dx
      ok = inside & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
      idx = (jnp.clip(yy, 0, height - 1) * width
             + jnp.clip(xx, 0, width - 1)) * groups + group
      weight = jnp.where(ok, wy * wx, 0.0).astype(image.dtype)
      values = jnp.take(flat, idx, axis=0, mode="clip")  # [..., G, Cg]
      out = out + weight[..., None] * values
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
  out = _sample_groups(image[:, :, None, :], y[..., None], x[..., None])
  return out[..., 0, :]


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

  # Undeformed sampling grid: base[o, t] = o * stride - pad + tap * dilation.
  tap_i, tap_j = jnp.divmod(jnp.arange(taps), kw)
  base_y = (jnp.arange(out_h)[:, None] * sh - pt
            + tap_i[None, :] * dh).astype(jnp.float32)  # [Ho, K]
  base_x = (jnp.arange(out_w)[:, None] * sw - pl
            + tap_j[None, :] * dw).astype(jnp.float32)  # [Wo, K]
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)

  # Rematerialised: the backward pass recomputes the sampled columns instead
  # of keeping them (9x the input for 3x3, and 4x that for the bilinear
  # corners), like mmcv's CUDA kernels; only the inputs are saved.
  @jax.checkpoint
  def conv(x, offsets, kernel, mask):
    offsets = offsets.reshape(batch, out_h, out_w, groups, taps, 2)
    pos_y = base_y[None, :, None, None, :] + offsets[..., 0]  # [B,Ho,Wo,G,K]
    pos_x = base_x[None, None, :, None, :] + offsets[..., 1]  # [B,Ho,Wo,G,K]
    # Put the group axis last so that each group samples its own channels.
    pos_y = jnp.swapaxes(pos_y, -1, -2)  # [B, Ho, Wo, K, G]
    pos_x = jnp.swapaxes(pos_x, -1, -2)
    image = x.reshape(batch, height, width, groups, cin // groups)
    cols = jax.vmap(_sample_groups)(image, pos_y, pos_x)  # [B,Ho,Wo,K,G,Cg]
    if mask is not None:
      m = mask.reshape(batch, out_h, out_w, groups, taps)
      cols = cols * jnp.swapaxes(m, -1, -2)[..., None].astype(cols.dtype)
    cols = cols.reshape(batch, out_h, out_w, taps * cin)  # [B,Ho,Wo,K*Cin]
    weights = kernel.reshape(taps * cin, cout)  # [K*Cin, Cout]
    out = jnp.dot(cols, weights.astype(cols.dtype),
                  preferred_element_type=jnp.float32)
    return out.astype(out_dtype)

  return conv(x, offsets, kernel, mask)
