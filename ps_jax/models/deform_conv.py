"""Deformable convolution layer (DCN v1 / modulated DCN v2) for linen models.

`DeformConv` is the counterpart of mmcv's `DeformConv2dPack` (v1) and
`ModulatedDeformConv2dPack` (v2): it owns the main kernel and bias plus a
plain convolution, `conv_offset`, that predicts the sample offsets (and the
mask logits) from the same input with the same stride, padding and dilation.
`conv_offset` starts at zero by default (`offset_kernel_init`), so a fresh
layer samples the regular grid: v1 then equals an `nn.Conv` with the same
kernel and v2 starts with every mask at sigmoid(0) = 0.5, as in mmcv. Its
bias always starts at zero.

Channels last, f32[B, H, W, C]. `conv_offset` has 2 * G * kh * kw outputs
(+ G * kh * kw mask logits when modulated), in the order of mmcv's
`conv_offset` output: the offsets first, in torchvision's (y, x) per-tap
order (see ps_jax.ops.deform_conv), then the mask logits. mmcv/torchvision
weights import by transposing OIHW kernels to HWIO, nothing else.
"""
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.ops import deform_conv as deform_ops

Dtype = Any
Initializer = Any


class DeformConv(nn.Module):
  """Deformable 2-D convolution with a learned offset (and mask) branch.

  Attributes:
    features: output channels Cout.
    kernel_size: (kh, kw).
    strides: (sh, sw), shared with `conv_offset`.
    padding: int p, (ph, pw) or ((top, bottom), (left, right)); explicit
      padding only (no 'SAME'), so that the offset grid and the sampling grid
      agree by construction.
    dilation: (dh, dw).
    offset_groups: G; input channels are split into G groups that each get
      their own offsets.
    modulated: DCN v2 (a sigmoid mask per tap) when True, else DCN v1.
    use_bias: add a learned bias to the output.
    kernel_init: initializer of the main kernel f32[kh, kw, Cin, Cout].
    bias_init: initializer of the bias f32[Cout].
    offset_kernel_init: initializer of `conv_offset`'s kernel
      f32[kh, kw, Cin, (2 or 3) * G * kh * kw]; zeros (mmcv's init_offset)
      unless a model re-initialises it (AlignPS's neck: Xavier).
    dtype: computation dtype (None: from the inputs and params).
    param_dtype: dtype of the parameters.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Union[int, Sequence[Any]] = 1
  dilation: Sequence[int] = (1, 1)
  offset_groups: int = 1
  modulated: bool = False
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  offset_kernel_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the layer.

    Args:
      x: f32[B, H, W, Cin] input map.

    Returns:
      f32[B, Ho, Wo, features] with (Ho, Wo) as for nn.Conv with the same
      stride, padding and dilation.
    """
    if x.ndim != 4:
      raise ValueError(
          f"DeformConv: x must be f32[B, H, W, Cin], got shape {x.shape}.")
    kh, kw = tuple(self.kernel_size)
    cin = x.shape[-1]
    if cin % self.offset_groups:
      raise ValueError(
          f"DeformConv: offset_groups={self.offset_groups} must divide the "
          f"input channels Cin={cin}.")
    padding = deform_ops.canonical_padding(self.padding)
    taps = self.offset_groups * kh * kw
    num_offset_outputs = (3 if self.modulated else 2) * taps
    # With the default zero kernel the layer starts as a regular convolution
    # (mmcv's init_offset), and v2 masks start at 0.5.
    offset_out = nn.Conv(
        num_offset_outputs, (kh, kw), strides=tuple(self.strides),
        padding=padding, kernel_dilation=tuple(self.dilation),
        kernel_init=self.offset_kernel_init,
        bias_init=nn.initializers.zeros_init(), dtype=self.dtype,
        param_dtype=self.param_dtype, name="conv_offset")(x)
    offsets = offset_out[..., :2 * taps]  # [B, Ho, Wo, 2*G*kh*kw]
    mask = None
    if self.modulated:
      mask = jax.nn.sigmoid(offset_out[..., 2 * taps:])  # [B,Ho,Wo,G*kh*kw]

    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, cin, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
    x, offsets, mask, kernel, bias = nn.dtypes.promote_dtype(
        x, offsets, mask, kernel, bias, dtype=self.dtype)
    y = deform_ops.deform_conv2d(
        x, offsets, kernel, mask, stride=tuple(self.strides),
        padding=padding, dilation=tuple(self.dilation),
        offset_groups=self.offset_groups)
    if bias is not None:
      y = y + bias
    return y
