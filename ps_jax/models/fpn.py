"""Feature pyramid necks: AlignPS's AFA neck and a plain FPN, in Flax linen.

Conventions:
  * Features are NHWC; inputs are the backbone maps C3, C4, C5 (finest first,
    i.e. mmdet's `start_level=1` on C2..C5); outputs are P3, P4, ... (finest
    first) with `out_channels` channels each.
  * Parameters are float32; `dtype` is the compute dtype.
  * Module names: `lateral_{i}` and `fpn_{i}` for input level i (0 = C3), and
    `fpn_{3}`, `fpn_{4}` for the extra levels P6, P7 (mmdet's `fpn_convs`
    list continues after the backbone levels in the same way).

AFA (AlignPS `FPNDcnLconv3Dcn`; docs/alignps.md describes the model):
  * lateral convs are 3x3 deformable convs v1 (no bias, as mmcv's
    `DeformConv2dPack`) from C_i to `out_channels`;
  * top-down fusion concatenates: lat[i-1] = concat(lat[i-1],
    nearest_upsample(lat[i])) from the top down, giving 1x, 2x and 3x
    `out_channels` channels at P5, P4 and P3;
  * output convs are 3x3 deformable convs v1 from those widths to
    `out_channels`;
  * the extra levels are stride-2 3x3 convs (with bias) on the P5 output, the
    second after a ReLU (`relu_before_extra_convs=True`);
  * in prediction AlignPS computes only P3: pass `num_levels=1`.
The plain FPN (RetinaNet/FCOS) is `fuse="add"`, `lateral_kernel=1`,
`use_dcn_lateral=use_dcn_output=False`.

Initialisation: plain convs Xavier-uniform with zero bias (mmdet's
`xavier_init(distribution='uniform')` on `nn.Conv2d`); deformable convs
mmcv's U(+-1/sqrt(fan_in)) kernel. Their offset branches (`conv_offset`)
have a zero bias and, by `offset_init`:
  'zeros'  (default) a zero kernel, so a fresh neck samples the regular grid
           (mmcv's DeformConv2dPack.init_offset);
  'xavier' Xavier-uniform, as AlignPS's `init_weights`, which applies
           `xavier_init` to every `nn.Conv2d` of the neck, the offset
           convs included, after the DCN layers were built: training starts
           with non-zero offsets. The AlignPS paper configs use it.
Only the starting point of training differs; trained weights load the same.

Nearest upsampling follows torch's `F.interpolate(size=..., mode='nearest')`:
destination index d reads source floor(d * in / out), which for odd sizes is
not the same as `jax.image.resize`'s half-pixel nearest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ps_jax.models.backbone import dcn_kernel_init
from ps_jax.models.deform_conv import DeformConv

Array = jax.Array
Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
# `AFANeck.offset_init` -> the kernel initializer of the offset branches.
OFFSET_INITS = {"zeros": nn.initializers.zeros_init(),
                "xavier": xavier_uniform}


def upsample_nearest(x: Array, height: int, width: int) -> Array:
  """torch-style nearest resize of [B, h, w, C] to [B, height, width, C].

  Destination row r reads source row floor(r * h / height) (same for
  columns), as `F.interpolate(x, size=(height, width), mode='nearest')`.
  """
  h, w = x.shape[1], x.shape[2]
  rows = np.floor(np.arange(height) * (h / height)).astype(np.int32)
  cols = np.floor(np.arange(width) * (w / width)).astype(np.int32)
  rows = np.minimum(rows, h - 1)
  cols = np.minimum(cols, w - 1)
  return x[:, rows][:, :, cols]  # [B, height, width, C]


class AFANeck(nn.Module):
  """AlignPS's AFA neck (default) or, by configuration, a plain FPN.

  Attributes:
    out_channels: channels of every output level (256).
    num_outs: number of output levels when all are computed (5: P3..P7).
    lateral_kernel: lateral conv size when not deformable (3 in AFA, 1 in
      FPN); deformable laterals are always 3x3.
    use_dcn_lateral: deformable (v1) lateral convs.
    use_dcn_output: deformable (v1) output convs.
    fuse: 'concat' (AFA) or 'add' (FPN) top-down fusion.
    extra_convs_on: source of P6: 'output' (P5 output; AlignPS, FCOS),
      'input' (C5) or 'lateral' (fused top lateral).
    relu_before_extra: ReLU before every extra conv but the first (mmdet
      `relu_before_extra_convs`).
    offset_init: 'zeros' or 'xavier', the deformable convs' offset kernels
      at initialisation (module docstring).
    dtype: compute dtype.
  """
  out_channels: int = 256
  num_outs: int = 5
  lateral_kernel: int = 3
  use_dcn_lateral: bool = True
  use_dcn_output: bool = True
  fuse: str = "concat"
  extra_convs_on: str = "output"
  relu_before_extra: bool = True
  offset_init: str = "zeros"
  dtype: Dtype | None = None

  def _conv(self, features: int, kernel: int, stride: int, dcn: bool,
            name: str) -> nn.Module:
    if dcn:
      if kernel != 3 or stride != 1:
        raise ValueError("AFANeck: deformable convs are 3x3, stride 1.")
      return DeformConv(features, kernel_size=(3, 3), padding=1,
                        modulated=False, use_bias=False,
                        kernel_init=dcn_kernel_init,
                        offset_kernel_init=OFFSET_INITS[self.offset_init],
                        dtype=self.dtype, name=name)
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((p, p), (p, p)), use_bias=True, dtype=self.dtype,
                   param_dtype=jnp.float32, kernel_init=xavier_uniform,
                   bias_init=nn.initializers.zeros, name=name)

  @nn.compact
  def __call__(self, feats: Sequence[Array], num_levels: int | None = None
               ) -> list[Array]:
    """Builds the pyramid.

    Args:
      feats: backbone maps [C3, C4, C5, ...], each [B, H_i, W_i, C_i], finest
        first, each level half the size of the previous one (rounded up).
      num_levels: how many outputs to compute, finest first; None = all
        `num_outs`. AlignPS predicts with 1 (P3 only). While initialising,
        every level is built regardless, so the parameters always cover the
        training configuration.
    Returns:
      List of `num_levels` maps [B, H_l, W_l, out_channels] (compute dtype),
      P3 first.
    """
    if self.fuse not in ("concat", "add"):
      raise ValueError(f"fuse: expected 'concat' or 'add', got {self.fuse!r}.")
    if self.offset_init not in OFFSET_INITS:
      raise ValueError(f"offset_init: expected one of {tuple(OFFSET_INITS)}, "
                       f"got {self.offset_init!r}.")
    if self.extra_convs_on not in ("output", "input", "lateral"):
      raise ValueError("extra_convs_on: expected 'output', 'input' or "
                       f"'lateral', got {self.extra_convs_on!r}.")
    n_in = len(feats)
    if n_in < 1 or self.num_outs < n_in:
      raise ValueError(f"AFANeck: got {n_in} input levels for num_outs="
                       f"{self.num_outs}; need 1 <= inputs <= num_outs.")
    wanted = self.num_outs if num_levels is None else int(num_levels)
    if not 1 <= wanted <= self.num_outs:
      raise ValueError(
          f"num_levels: expected 1..{self.num_outs}, got {num_levels}.")
    if self.is_initializing():
      wanted = self.num_outs

    lat_k = 3 if self.use_dcn_lateral else self.lateral_kernel
    laterals = [
        self._conv(self.out_channels, lat_k, 1, self.use_dcn_lateral,
                   f"lateral_{i}")(f) for i, f in enumerate(feats)]
    for i in range(n_in - 1, 0, -1):
      h, w = laterals[i - 1].shape[1:3]
      up = upsample_nearest(laterals[i], h, w)
      if self.fuse == "concat":
        laterals[i - 1] = jnp.concatenate([laterals[i - 1], up], axis=-1)
      else:
        laterals[i - 1] = laterals[i - 1] + up

    # P_i depends only on lateral i, so prediction runs just the first
    # `wanted` output convs (the others keep their trained parameters).
    outs = [
        self._conv(self.out_channels, 3, 1, self.use_dcn_output,
                   f"fpn_{i}")(laterals[i]) for i in range(min(wanted, n_in))]
    if wanted > n_in:
      if self.extra_convs_on == "output":
        source = outs[-1]
      elif self.extra_convs_on == "input":
        source = feats[-1]
      else:
        source = laterals[-1]
      for i in range(n_in, wanted):
        x = source if i == n_in else outs[-1]
        if i > n_in and self.relu_before_extra:
          x = nn.relu(x)
        outs.append(
            self._conv(self.out_channels, 3, 2, False, f"fpn_{i}")(x))
    return outs
