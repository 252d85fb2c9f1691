"""ResNet backbones (18/34/50/101) with frozen batch norm, in Flax linen.

Conventions:
  * Images and features are NHWC. Parameters are float32; `dtype` is the
    compute dtype (e.g. bfloat16 on accelerators).
  * Padding is explicit and symmetric (k // 2 on each side), as in PyTorch, so
    feature sizes follow torch's `floor((H + 2p - k) / s) + 1` and imported
    torchvision / mmdet weights give the same numbers. (Flax's 'SAME' pads
    strided convs asymmetrically.)
  * Module names follow torchvision, so a weight importer maps names 1:1:
    stem `conv1`, `bn1`; blocks `layer{stage}_{block}` holding `conv1..3`,
    `bn1..3`, `downsample_conv`, `downsample_bn`; classifier `fc`.
  * `frozen_stages` follows mmdet's ResNet: -1 nothing frozen, 0 the stem
    (conv1 + bn1), k >= 1 the stem and stages res2..res(k+1). AlignPS uses 1.

Frozen batch norm (AlignPS: `norm_cfg=BN(requires_grad=False)`,
`norm_eval=True`) is `FrozenBatchNorm`: y = (x - mean) / sqrt(var + eps) *
scale + bias, where
  * `scale` and `bias` are ordinary entries of the "params" collection (so the
    parameter count matches torchvision, which counts BN weight and bias), but
    the module stops their gradient and `is_frozen_param` marks them frozen, so
    the optimizer must leave them alone (no update, no weight decay; see
    `ps_jax.train.optim.param_labels(params, is_frozen)`);
  * `mean` and `var` live in the non-trainable collection `FROZEN_BN`
    ("frozen_bn"), the counterpart of torchvision's running-statistics
    buffers. They are never updated: apply the model with
    `{"params": ..., "frozen_bn": ...}` and no `mutable`.
The importer maps torchvision / mmdet `weight, bias, running_mean,
running_var` to `params/.../scale, params/.../bias, frozen_bn/.../mean,
frozen_bn/.../var`.

`norm="group"` replaces every frozen BN by a trainable GroupNorm (groups =
gcd(32, channels)): useful when training from scratch, where identity frozen
statistics leave activations unnormalised.

Frozen stages are frozen twice over: their outputs pass through
`jax.lax.stop_gradient` (no backward pass through them, their gradients are
exactly zero), and `is_frozen_param` names their parameters so the optimizer
excludes them (with SGD weight decay a zero gradient would still move them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models.deform_conv import DeformConv

Array = jax.Array
Dtype = Any

FROZEN_BN = "frozen_bn"  # collection holding the frozen running statistics

# Blocks per stage and block type, as torchvision / mmdet.
_ARCH = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_NORM_NAME = re.compile(r"^(bn\d+|downsample_bn)$")

# torchvision / mmdet ResNet init: kaiming_normal_(mode="fan_out", relu).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# mmcv (Modulated)DeformConv2d.reset_parameters: U(-1/sqrt(fan_in), +...).
dcn_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                   "uniform")


def group_count(channels: int, groups: int = 32) -> int:
  """Groups for a GroupNorm over `channels`: gcd(groups, channels).

  Equals `groups` for the usual widths (multiples of 32) and degrades
  gracefully for the tiny widths used in tests.
  """
  return math.gcd(groups, channels)


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine terms (see module doc).

  Attributes:
    epsilon: added to `var`; 1e-5 as torch.nn.BatchNorm2d and mmdet.
    dtype: compute dtype of the output.
  """
  epsilon: float = 1e-5
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., C] -> same shape, dtype `self.dtype` (or x's dtype)."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable(FROZEN_BN, "mean", jnp.zeros, (c,), jnp.float32)
    var = self.variable(FROZEN_BN, "var", jnp.ones, (c,), jnp.float32)
    # Fold into one multiply-add in float32, then cast (as torchvision's
    # FrozenBatchNorm2d does).
    mult = scale * jax.lax.rsqrt(var.value + self.epsilon)
    shift = bias - mean.value * mult
    mult, shift = jax.lax.stop_gradient((mult, shift))
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * mult.astype(dtype) + shift.astype(dtype)


def _norm_layer(norm: str, dtype: Dtype, name: str, zero_scale: bool = False,
                epsilon: float = 1e-5) -> nn.Module:
  """'frozen' -> FrozenBatchNorm, 'group' -> trainable GroupNorm.

  `epsilon` is added to the variance by either (1e-5, torch's BatchNorm2d
  default, for the ResNets; GoogLeNet's BN uses 1e-3).
  """
  if norm == "frozen":
    return FrozenBatchNorm(epsilon=epsilon, dtype=dtype, name=name)
  if norm == "group":
    return _GroupNorm(dtype=dtype, zero_scale=zero_scale, epsilon=epsilon,
                      name=name)
  raise ValueError(f"norm: expected 'frozen' or 'group', got {norm!r}.")


class _GroupNorm(nn.Module):
  """GroupNorm with gcd(32, C) groups (trainable; for training from scratch)."""
  dtype: Dtype | None = None
  zero_scale: bool = False
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale_init = (nn.initializers.zeros if self.zero_scale
                  else nn.initializers.ones)
    return nn.GroupNorm(num_groups=group_count(x.shape[-1]),
                        epsilon=self.epsilon,
                        dtype=self.dtype, param_dtype=jnp.float32,
                        scale_init=scale_init, name="gn")(x)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str
          ) -> nn.Conv:
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                 name=name)


def _deform_conv(features: int, stride: int, dtype: Dtype, name: str
                 ) -> nn.Module:
  return DeformConv(features, kernel_size=(3, 3), strides=(stride, stride),
                    padding=1, modulated=True, use_bias=False,
                    kernel_init=dcn_kernel_init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). `style` does not matter here.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv.
    norm: 'frozen' or 'group'.
    dcn: not supported for basic blocks (as mmdet); must be False.
  """
  features: int
  strides: int = 1
  norm: str = "frozen"
  style: str = "pytorch"
  dcn: bool = False
  zero_init_residual: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.dcn:
      raise ValueError("stage_with_dcn: deformable convs are only supported "
                       "in bottleneck blocks (depth 50/101), as in mmdet.")
    identity = x
    y = _conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(_norm_layer(self.norm, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = _norm_layer(self.norm, self.dtype, "bn2",
                    zero_scale=self.zero_init_residual)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      identity = _conv(self.features, 1, self.strides, self.dtype,
                       "downsample_conv")(x)
      identity = _norm_layer(self.norm, self.dtype, "downsample_bn")(identity)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) block (ResNet-50/101).

  Attributes:
    features: width of the 3x3 conv; the block outputs 4 * features.
    strides: block stride, on the 3x3 conv ('pytorch' style) or on the first
      1x1 conv ('caffe' style).
    dcn: make the 3x3 conv a modulated deformable conv (DCNv2, AlignPS+).
  """
  features: int
  strides: int = 1
  norm: str = "frozen"
  style: str = "pytorch"
  dcn: bool = False
  zero_init_residual: bool = False
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s1, s2 = ((1, self.strides) if self.style == "pytorch"
              else (self.strides, 1))
    out = self.features * 4
    identity = x
    y = _conv(self.features, 1, s1, self.dtype, "conv1")(x)
    y = nn.relu(_norm_layer(self.norm, self.dtype, "bn1")(y))
    if self.dcn:
      y = _deform_conv(self.features, s2, self.dtype, "conv2")(y)
    else:
      y = _conv(self.features, 3, s2, self.dtype, "conv2")(y)
    y = nn.relu(_norm_layer(self.norm, self.dtype, "bn2")(y))
    y = _conv(out, 1, 1, self.dtype, "conv3")(y)
    y = _norm_layer(self.norm, self.dtype, "bn3",
                    zero_scale=self.zero_init_residual)(y)
    if self.strides != 1 or x.shape[-1] != out:
      identity = _conv(out, 1, self.strides, self.dtype,
                       "downsample_conv")(x)
      identity = _norm_layer(self.norm, self.dtype, "downsample_bn")(identity)
    return nn.relu(y + identity)


def stage_widths(width_multiplier: float) -> tuple[int, int, int, int]:
  """3x3-conv widths of res2..res5: 64, 128, 256, 512 times the multiplier."""
  base = int(round(64 * width_multiplier))
  if base < 1:
    raise ValueError(f"width_multiplier: {width_multiplier} gives a base "
                     "width below 1 channel.")
  return base, 2 * base, 4 * base, 8 * base


def out_channels(depth: int, width_multiplier: float = 1.0
                 ) -> dict[int, int]:
  """Channels of C2..C5 as {level: channels}; R50: {2: 256, ..., 5: 2048}."""
  if depth not in _ARCH:
    raise ValueError(f"depth: expected one of {sorted(_ARCH)}, got {depth}.")
  exp = _EXPANSION[_ARCH[depth][0]]
  return {lvl: w * exp for lvl, w in zip(
      (2, 3, 4, 5), stage_widths(width_multiplier))}


class ResNet(nn.Module):
  """ResNet-18/34/50/101 returning C2..C5 (or classifier logits).

  Attributes:
    depth: 18, 34, 50 or 101.
    width_multiplier: scales every width (tests use 1/8 or 1/16).
    style: 'pytorch' (stride on the 3x3 conv; torchvision) or 'caffe' (stride
      on the first 1x1 conv; detectron2 / mmdet caffe weights, AlignPS).
    frozen_stages: mmdet semantics, see the module doc.
    norm: 'frozen' (FrozenBatchNorm, AlignPS) or 'group' (trainable GN).
    stage_with_dcn: per stage res2..res5, use modulated deformable 3x3 convs
      (AlignPS+: (False, True, True, True)).
    zero_init_residual: init the last norm scale of each block to 0 (only
      with norm='group'; a frozen zero scale would kill the block forever).
    return_levels: which of C2..C5 to return, in this order.
    num_stages: residual stages built, res2..res(num_stages + 1) (4; a
      Faster R-CNN C4 trunk builds 3 and runs res5 as its RoI head, see
      `ResNetStage`). return_levels must lie within them.
    with_classifier: global average pool + dense `num_classes` head instead
      of features (torchvision classifier layout; used for parameter counts).
    num_classes: classifier outputs.
    dtype: compute dtype; parameters stay float32.
  """
  depth: int = 50
  width_multiplier: float = 1.0
  style: str = "pytorch"
  frozen_stages: int = -1
  norm: str = "frozen"
  stage_with_dcn: Sequence[bool] = (False, False, False, False)
  zero_init_residual: bool = False
  return_levels: Sequence[int] = (2, 3, 4, 5)
  num_stages: int = 4
  with_classifier: bool = False
  num_classes: int = 1000
  dtype: Dtype | None = None

  def _check(self) -> None:
    if self.depth not in _ARCH:
      raise ValueError(
          f"depth: expected one of {sorted(_ARCH)}, got {self.depth}.")
    if self.style not in ("pytorch", "caffe"):
      raise ValueError(
          f"style: expected 'pytorch' or 'caffe', got {self.style!r}.")
    if len(tuple(self.stage_with_dcn)) != 4:
      raise ValueError("stage_with_dcn: expected 4 booleans (res2..res5), got "
                       f"{self.stage_with_dcn!r}.")
    if not -1 <= self.frozen_stages <= 4:
      raise ValueError(
          f"frozen_stages: expected -1..4, got {self.frozen_stages}.")
    if not set(self.return_levels) <= {2, 3, 4, 5} or not self.return_levels:
      raise ValueError("return_levels: expected a non-empty subset of "
                       f"(2, 3, 4, 5), got {self.return_levels!r}.")
    if not 1 <= self.num_stages <= 4 or max(self.return_levels) > (
        self.num_stages + 1):
      raise ValueError(
          f"num_stages: expected 1..4 stages covering return_levels "
          f"{tuple(self.return_levels)!r}, got {self.num_stages}.")
    if self.with_classifier and self.num_stages != 4:
      raise ValueError("with_classifier: needs all 4 stages (num_stages=4).")
    if self.zero_init_residual and self.norm == "frozen":
      raise ValueError("zero_init_residual: needs a trainable norm "
                       "(norm='group'); a frozen zero scale never recovers.")

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, ...] | Array:
    """Runs the network.

    Args:
      x: f32[B, H, W, 3] normalized images.
    Returns:
      A tuple with C_l [B, H_l, W_l, channels_l] (compute dtype) for each l
      in `return_levels`; H_l = H / 2^l when H is a multiple of 32, else
      torch's conv arithmetic (about ceil(H / 2^l)). Or f32[B, num_classes]
      logits if `with_classifier`.
    """
    self._check()
    if x.ndim != 4:
      raise ValueError(f"images: expected [B, H, W, C], got {x.shape}.")
    block_type, blocks = _ARCH[self.depth]
    block_cls = BasicBlock if block_type == "basic" else Bottleneck
    widths = stage_widths(self.width_multiplier)

    x = x.astype(self.dtype or x.dtype)
    x = _conv(widths[0], 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(_norm_layer(self.norm, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)

    feats = {}
    for stage, (width, n) in enumerate(zip(widths[:self.num_stages],
                                           blocks[:self.num_stages])):
      for b in range(n):
        stride = 2 if (b == 0 and stage > 0) else 1
        x = block_cls(width, strides=stride, norm=self.norm, style=self.style,
                      dcn=bool(self.stage_with_dcn[stage]),
                      zero_init_residual=self.zero_init_residual,
                      dtype=self.dtype, name=f"layer{stage + 1}_{b}")(x)
      if stage + 1 <= self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      feats[stage + 2] = x

    if self.with_classifier:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return nn.Dense(self.num_classes, dtype=jnp.float32,
                      param_dtype=jnp.float32, name="fc")(pooled)
    return tuple(feats[lvl] for lvl in self.return_levels)


class ResNetStage(nn.Module):
  """One residual stage of a ResNet on its own: res5 as the RoI head of a
  Faster R-CNN with a C4 trunk (`ResNet(num_stages=3)`).

  Blocks are named as inside `ResNet` (`layer{stage}_{block}`), so a
  torchvision checkpoint's layer4 maps onto them by name.

  Attributes:
    stage: 1..4 for res2..res5 (4).
    depth, width_multiplier, style, norm, zero_init_residual, dtype: as in
      `ResNet`.
    stride: stride of the first block (2; 1 keeps the RoI's resolution).
  """
  stage: int = 4
  depth: int = 50
  width_multiplier: float = 1.0
  style: str = "pytorch"
  norm: str = "frozen"
  zero_init_residual: bool = False
  stride: int = 2
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N, H, W, C] -> [N, H / stride, W / stride, out channels]."""
    if self.depth not in _ARCH or not 1 <= self.stage <= 4:
      raise ValueError(f"ResNetStage: expected depth in {sorted(_ARCH)} and "
                       f"stage 1..4, got {self.depth} and {self.stage}.")
    block_type, blocks = _ARCH[self.depth]
    block_cls = BasicBlock if block_type == "basic" else Bottleneck
    width = stage_widths(self.width_multiplier)[self.stage - 1]
    x = x.astype(self.dtype or x.dtype)
    for b in range(blocks[self.stage - 1]):
      x = block_cls(width, strides=self.stride if b == 0 else 1,
                    norm=self.norm, style=self.style,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype, name=f"layer{self.stage}_{b}")(x)
    return x


def is_frozen_param(path: Sequence[str], *, frozen_stages: int,
                    norm: str = "frozen") -> bool:
  """Whether a backbone parameter must never be updated.

  Args:
    path: names from the ResNet root to the leaf, e.g.
      ("layer1_0", "conv1", "kernel") or ("bn1", "scale").
    frozen_stages: as `ResNet.frozen_stages` (mmdet semantics).
    norm: as `ResNet.norm`; with 'frozen' every norm scale/bias is frozen.
  Returns:
    True for parameters of frozen stages and of frozen batch norms.
  """
  path = tuple(str(p) for p in path)
  if not path:
    return False
  top = path[0]
  if top in ("conv1", "bn1") and frozen_stages >= 0:
    return True
  m = re.match(r"^layer(\d+)_\d+$", top)
  if m and int(m.group(1)) <= frozen_stages:
    return True
  return norm == "frozen" and any(_NORM_NAME.match(p) for p in path[:-1])


def trainable_mask(params: Any, is_frozen: Callable[[tuple[str, ...]], bool]
                   ) -> Any:
  """Pytree of bools (True = trainable) with the structure of `params`.

  Args:
    params: a parameter pytree (nested dicts, as flax returns).
    is_frozen: predicate on the tuple of key names from the root to a leaf,
      e.g. `functools.partial(is_frozen_param, frozen_stages=1)` for a bare
      ResNet or `AlignPS.is_frozen` for the whole model.
  """
  def keep(path, _):
    names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return not is_frozen(names)
  return jax.tree_util.tree_map_with_path(keep, params)
