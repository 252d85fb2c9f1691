"""MLFN, the Multi-Level Factorisation Net (Chang et al., CVPR 2018), in linen.

The network is torchreid's `torchreid/models/mlfn.py` (the layout its
ImageNet and re-id checkpoints have), NHWC:

  stem     7x7/2 conv (64, with bias) -> BN -> ReLU -> 3x3/2 max pool (pad 1)
  feature  16 MLFN blocks in stages of 3, 4, 6, 3 with outputs 256, 512,
           1024, 2048; the first block of stages 2..4 has stride 2 (on its
           grouped 3x3 conv and on its projection shortcut).
  fusion   GAP(last block) -> 1x1 conv (no bias) -> BN -> ReLU  (1024)
           factor signature (16 x 32 gates) -> 1x1 conv -> BN -> ReLU (1024)
           descriptor v = (deep + signature branch) / 2
  head     linear classifier 1024 -> num_classes (training only).

An MLFN block with input x, `mid = out / 2` and `groups = 32`:

  s = FSM(x)                     [B, 1, 1, groups] in (0, 1)
  y = ReLU(BN(conv1x1(x)))       in -> mid, no bias
  y = ReLU(BN(gconv3x3(y)))      mid -> mid, `groups` groups, stride, no bias
  y = y * s                      group k's contiguous slice of mid / groups
                                 channels is scaled by s[k]
  y = ReLU(BN(conv1x1(y)))       mid -> out, no bias; ReLU BEFORE the add
                                 (torchreid's form; `branch_relu=False`
                                 drops it, ResNet's form)
  out = ReLU(y + shortcut(x))    shortcut: identity, or 1x1 conv (no bias,
                                 stride) + BN when channels or stride change

The Factor Selection Module works on the block input: global average pool ->
1x1 conv in -> c1 (with bias) -> BN -> ReLU -> 1x1 conv c1 -> c2 (bias) ->
BN -> ReLU -> 1x1 conv c2 -> groups (bias) -> BN -> sigmoid, with (c1, c2) =
(128, 64), (256, 128), (512, 128), (512, 128) in stages 1..4. The 16 FSM
outputs, concatenated in block order, are the factor signature (512-d).

Parameter count (torch's convention: conv/linear weights and biases plus BN
weight and bias; running statistics are buffers), classifier excluded, at
width 1.0: 32,473,024 (`TORCHREID_NUM_PARAMS`; torchreid reports 32.5 M):
  stem (conv 9,408 + bias 64, BN 128)                      9,600
  16 blocks' factor modules (3 convs + 3 BNs each)    20,193,792
  4 projection shortcuts (conv + BN)                   2,776,576
  16 FSMs (3 convs with bias + 3 BNs each)             6,867,520
  fusion (fc_x 2048 -> 1024, fc_s 512 -> 1024, 2 BNs)  2,625,536
The classifier adds 1024 * num_classes + num_classes.

Widths. `width_multiplier` scales every channel count: the stem, each
stage's mid width (rounded to a multiple of `groups`, at least `groups`;
the block output is twice it), the FSM widths c1, c2 and the 1024-d
embedding (`descriptor_dim`); rounding is to the nearest integer, at least 1.
The number of gates per block is always `groups`, so the factor signature
has 16 * groups channels. Width 1.0 with groups=32 is torchreid exactly;
small widths (1/16 with groups=4, say) are for tests and CPU training.

Normalisation. `norm="frozen"` uses `backbone.FrozenBatchNorm` everywhere
(statistics in the `FROZEN_BN` collection; for imported weights).
`norm="group"` uses trainable GroupNorm (gcd(32, C) groups, backbone's
helper) on the spatial maps; the five norms that act on 1x1 maps (the FSM's
three and the two fusion norms) use a single group instead, i.e. a layer norm
over channels, because per-group statistics of a 1x1 map with few channels
per group degenerate: with one channel per group (the FSM's last norm, C =
groups) every output would be its bias and the gates would ignore the
input. Parameter counts are the same in both modes.

Training from scratch. `branch_relu=False, zero_init_residual=True` (each
branch without the final ReLU, its last norm's scale starting at 0, so every
block starts as its shortcut) is the form the synthetic and from-scratch
Market-1501 configs train: under GroupNorm, torchreid's form did not learn in
the time a CPU run has (`MLFN.zero_init_residual`). torchreid's weights fit
only torchreid's form (`branch_relu=True`, the default).

Importer (`torchreid_mlfn_to_variables`, `import_mlfn`): torchreid's state-
dict names map onto our tree as follows (a leading `module.` is stripped,
`num_batches_tracked` ignored):
  conv1.{weight,bias}               params/conv1/{kernel (OIHW -> HWIO),bias}
  bn1.{weight,bias}                 params/bn1/{scale,bias}
  bn1.running_{mean,var}            frozen_bn/bn1/{mean,var}
  feature.{i}.fm_conv{k}.weight     params/feature_{i}/fm_conv{k}/kernel
                                    (fm_conv2 is grouped: torch [out,
                                    in/groups, 3, 3] -> [3, 3, in/groups,
                                    out], flax's feature_group_count layout)
  feature.{i}.fm_bn{k}.*            .../feature_{i}/fm_bn{k}/...
  feature.{i}.fsm.{1,4,7}.{weight,bias}
                                    params/feature_{i}/fsm/conv{1,2,3}/
                                    {kernel,bias}
  feature.{i}.fsm.{2,5,8}.*         .../feature_{i}/fsm/bn{1,2,3}/...
  feature.{i}.downsample.0.weight   params/feature_{i}/downsample_conv/kernel
  feature.{i}.downsample.1.*        .../feature_{i}/downsample_bn/...
  fc_x.0.weight, fc_s.0.weight      params/fc_x_conv/kernel, fc_s_conv/kernel
  fc_x.1.*, fc_s.1.*                .../fc_x_bn/..., .../fc_s_bn/...
  classifier.{weight,bias}          params/classifier/{kernel (transposed),
                                    bias}
where a BN's weight, bias, running_mean, running_var go to params/.../scale,
params/.../bias, frozen_bn/.../mean, frozen_bn/.../var. The classifier is
optional: it is imported when the model has one of the file's shape and
otherwise skipped with a logged note (a new dataset has new identities).
Everything else must match exactly; unknown, missing and mis-shaped keys are
one ValueError listing every offender.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ps_jax import pretrained
from ps_jax.models.backbone import FROZEN_BN
from ps_jax.models.backbone import _norm_layer
from ps_jax.models.backbone import conv_kernel_init
from ps_jax.models import weights

Array = jax.Array
Dtype = Any

# torchreid's count without the classifier, width 1.0, groups 32.
TORCHREID_NUM_PARAMS = 32_473_024

# Blocks per stage, mid widths (block output / 2) and FSM widths (c1, c2).
STAGE_BLOCKS = (3, 4, 6, 3)
_STAGE_MID = (128, 256, 512, 1024)
_STAGE_FSM = ((128, 64), (256, 128), (512, 128), (512, 128))
_STEM = 64
_EMBED = 1024
NUM_BLOCKS = sum(STAGE_BLOCKS)

# torchreid's classifier init: normal(0, 0.01), zero bias.
_classifier_init = nn.initializers.normal(0.01)


def _scaled(channels: int, width_multiplier: float, divisor: int = 1) -> int:
  """round(channels * width / divisor) * divisor, at least `divisor`."""
  return max(1, int(round(channels * width_multiplier / divisor))) * divisor


def descriptor_dim(width_multiplier: float = 1.0) -> int:
  """Length of the MLFN descriptor v: 1024 at width 1.0."""
  return _scaled(_EMBED, width_multiplier)


def stage_channels(width_multiplier: float = 1.0, groups: int = 32
                   ) -> tuple[int, ...]:
  """Block output channels of stages 1..4: (256, 512, 1024, 2048) at 1.0."""
  return tuple(2 * _scaled(m, width_multiplier, groups) for m in _STAGE_MID)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str, *,
          use_bias: bool = False) -> nn.Conv:
  """torch-style conv: explicit symmetric padding kernel // 2."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                 name=name)


GROUPED_CONV_IMPLS = ("auto", "native", "dense")


def block_diagonal_kernel(kernel: Array, groups: int) -> Array:
  """A grouped conv kernel as the equivalent dense one.

  Args:
    kernel: f32[kh, kw, C_in / groups, C_out], the layout of
      `lax.conv_general_dilated(..., feature_group_count=groups)`.
    groups: G; C_out must divide by G.
  Returns:
    f32[kh, kw, C_in, C_out] that is zero except on the G diagonal blocks
    [g * C_in/G:(g+1) * C_in/G, g * C_out/G:(g+1) * C_out/G] = kernel's
    block g; a dense conv with it equals the grouped conv with `kernel`.
  """
  kh, kw, cin_g, cout = kernel.shape
  if cout % groups:
    raise ValueError(f"block_diagonal_kernel: C_out={cout} must divide by "
                     f"groups={groups}.")
  k = kernel.reshape(kh, kw, cin_g, groups, cout // groups)
  full = jnp.einsum("hwigo,fg->hwfigo", k, jnp.eye(groups, dtype=k.dtype))
  return full.reshape(kh, kw, groups * cin_g, cout)


class GroupedConv(nn.Module):
  """A 3x3-style grouped conv (torch padding kernel // 2, no bias) whose
  kernel has nn.Conv's grouped layout [kh, kw, C_in / groups, C_out], so
  parameter counts and the torchreid importer do not depend on `impl`.

  impl: 'native' runs XLA's grouped convolution; 'dense' runs one dense
  conv with `block_diagonal_kernel` (groups times the multiply-adds, but on
  XLA:CPU the gradient of a grouped conv was 17x (8 groups) and 67x (32
  groups) slower than the dense one in one measurement, `bench/ops.py
  --only=gconv`), so dense wins there; 'auto' picks dense on the CPU
  backend and native elsewhere. Both compute the same function.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  impl: str = "auto"
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.impl not in GROUPED_CONV_IMPLS:
      raise ValueError(f"grouped_conv: expected one of {GROUPED_CONV_IMPLS}, "
                       f"got {self.impl!r}.")
    cin, k, g = x.shape[-1], self.kernel_size, self.groups
    if cin % g or self.features % g:
      raise ValueError(f"GroupedConv: channels {cin} -> {self.features} must "
                       f"divide by groups={g}.")
    kernel = self.param("kernel", conv_kernel_init, (k, k, cin // g,
                                                     self.features),
                        jnp.float32)
    impl = self.impl
    if impl == "auto":
      impl = "dense" if jax.default_backend() == "cpu" else "native"
    if impl == "dense" and g > 1:
      kernel, g = block_diagonal_kernel(kernel, g), 1
    dt = self.dtype or x.dtype
    p = k // 2
    return jax.lax.conv_general_dilated(
        x.astype(dt), kernel.astype(dt), (self.strides, self.strides),
        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=g)


class _PointNorm(nn.Module):
  """Layer norm over the channels of a 1x1 map (norm='group' only)."""
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.GroupNorm(num_groups=1, epsilon=1e-5, dtype=self.dtype,
                        param_dtype=jnp.float32, name="gn")(x)


def _norm(norm: str, dtype: Dtype, name: str, pointwise: bool = False,
          zero_scale: bool = False) -> nn.Module:
  """BN replacement; `pointwise`: it acts on a 1x1 map (see module doc)."""
  if norm == "group" and pointwise:
    return _PointNorm(dtype=dtype, name=name)
  return _norm_layer(norm, dtype, name, zero_scale=zero_scale)


class FactorSelection(nn.Module):
  """Factor Selection Module: per-group gates from the block input.

  Attributes:
    widths: (c1, c2) hidden widths.
    groups: number of gates (the block's conv groups).
    norm: 'frozen' or 'group'.
    dtype: compute dtype.
  """
  widths: tuple[int, int]
  groups: int = 32
  norm: str = "frozen"
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C] -> gates [B, 1, 1, groups] in (0, 1)."""
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    s = s.astype(self.dtype or x.dtype)
    for k, c in enumerate(self.widths, start=1):
      s = _conv(c, 1, 1, self.dtype, f"conv{k}", use_bias=True)(s)
      s = nn.relu(_norm(self.norm, self.dtype, f"bn{k}", True)(s))
    s = _conv(self.groups, 1, 1, self.dtype, "conv3", use_bias=True)(s)
    return nn.sigmoid(_norm(self.norm, self.dtype, "bn3", True)(s))


class MLFNBlock(nn.Module):
  """One MLFN block (module doc); returns (output, gates).

  Attributes:
    features: output channels (`mid = features // 2` must divide by groups).
    strides: stride of the grouped 3x3 conv and of the shortcut.
    fsm_widths: (c1, c2) of the Factor Selection Module.
    groups: conv groups = number of factors gated.
    norm: 'frozen' or 'group'.
    dtype: compute dtype.
    grouped_conv: how the grouped 3x3 conv runs (`GroupedConv.impl`).
    branch_relu: torchreid's ReLU on the branch before the add (True), or
      none, as in ResNet (False; see `MLFN.branch_relu`).
    zero_init_residual: init fm_bn3's scale to 0 (needs branch_relu=False
      and a trainable norm).
  """
  features: int
  strides: int = 1
  fsm_widths: tuple[int, int] = (128, 64)
  groups: int = 32
  norm: str = "frozen"
  dtype: Dtype | None = None
  grouped_conv: str = "auto"
  branch_relu: bool = True
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """x: [B, H, W, C_in] -> ([B, H', W', features], gates [B, groups]).

    H' = floor((H - 1) / strides) + 1 (torch's 3x3, pad 1 arithmetic).
    """
    mid, g = self.features // 2, self.groups
    if self.features % 2 or mid % g:
      raise ValueError(f"MLFNBlock: features / 2 = {self.features / 2} must "
                       f"be a multiple of groups={g}.")
    s = FactorSelection(tuple(self.fsm_widths), g, self.norm, self.dtype,
                        name="fsm")(x)
    y = _conv(mid, 1, 1, self.dtype, "fm_conv1")(x)
    y = nn.relu(_norm(self.norm, self.dtype, "fm_bn1")(y))
    y = GroupedConv(mid, 3, self.strides, g, self.grouped_conv, self.dtype,
                    name="fm_conv2")(y)
    y = nn.relu(_norm(self.norm, self.dtype, "fm_bn2")(y))
    b, h, w, _ = y.shape
    y = (y.reshape(b, h, w, g, mid // g)
         * s.reshape(b, 1, 1, g, 1).astype(y.dtype)).reshape(b, h, w, mid)
    y = _conv(self.features, 1, 1, self.dtype, "fm_conv3")(y)
    y = _norm(self.norm, self.dtype, "fm_bn3",
              zero_scale=self.zero_init_residual)(y)
    if self.branch_relu:
      y = nn.relu(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.strides, self.dtype,
                       "downsample_conv")(x)
      shortcut = _norm(self.norm, self.dtype, "downsample_bn")(shortcut)
    return nn.relu(y + shortcut.astype(y.dtype)), s.reshape(b, g)


class MLFN(nn.Module):
  """Multi-Level Factorisation Net (torchreid's layout; module doc).

  Attributes:
    num_classes: identities of the training classifier; 0 builds none.
    groups: conv groups and gates per block (32 in torchreid).
    width_multiplier: scales every width (module doc); 1.0 = torchreid.
    norm: 'frozen' (FrozenBatchNorm; imported weights) or 'group'
      (trainable GroupNorm; layer norm on the 1x1 maps; from scratch).
    dtype: compute dtype; parameters stay float32, outputs are float32.
    grouped_conv: 'auto' (dense block-diagonal kernels on CPU, XLA's grouped
      conv elsewhere), 'native' or 'dense' (`GroupedConv`); the same
      function and parameters either way.
    branch_relu: True (torchreid, and the only form its weights fit): each
      block's branch ends in ReLU(BN(fm_conv3)) before the add. False:
      ResNet's form, no ReLU before the add.
    zero_init_residual: fm_bn3's scale starts at 0, so each block starts as
      its shortcut (Goyal et al. 2017); needs branch_relu=False (under the
      ReLU a zero branch gets no gradient) and norm='group'. Same
      parameters either way. Trained from scratch with GroupNorm on the
      synthetic crops, torchreid's form and the ResNet form alone both sat
      at the chance loss for 300 steps; with this option the loss left
      chance after about 100 steps (docs/reid.md has the runs).
  """
  num_classes: int = 0
  groups: int = 32
  width_multiplier: float = 1.0
  norm: str = "frozen"
  dtype: Dtype | None = None
  grouped_conv: str = "auto"
  branch_relu: bool = True
  zero_init_residual: bool = False

  @property
  def descriptor_dim(self) -> int:
    """D of the descriptor (1024 at full width)."""
    return descriptor_dim(self.width_multiplier)

  @nn.compact
  def __call__(self, x: Array, keypoints: Array | None = None,
               has_keypoints: Array | None = None, train: bool = False
               ) -> dict[str, Array]:
    """Runs the network.

    Args:
      x: f32[B, H, W, 3] normalised crops (torchreid: 256x128, ImageNet
        mean/std RGB).
      keypoints, has_keypoints, train: the crop re-ID model signature
        (`ps_jax.systems.reid`); MLFN uses none of them.
    Returns:
      {"descriptor": f32[B, D] the fused v (not normalised), D =
       descriptor_dim(width_multiplier) (1024),
       "factor_signature": f32[B, 16 * groups] the concatenated gates (512),
       "logits": f32[B, num_classes] (only if num_classes > 0)}.
    """
    del keypoints, has_keypoints, train
    if x.ndim != 4:
      raise ValueError(f"images: expected [B, H, W, C], got {x.shape}.")
    if self.norm not in ("frozen", "group"):
      raise ValueError(f"norm: expected 'frozen' or 'group', got "
                       f"{self.norm!r}.")
    if self.zero_init_residual and (self.branch_relu
                                    or self.norm == "frozen"):
      raise ValueError(
          "zero_init_residual: needs branch_relu=False (a zero branch under "
          "the ReLU gets no gradient: ReLU'(0) = 0) and a trainable norm, got "
          f"branch_relu={self.branch_relu}, norm={self.norm!r}.")
    if self.groups < 1 or not self.width_multiplier > 0:
      raise ValueError(f"MLFN: groups must be >= 1 and width_multiplier > 0, "
                       f"got {self.groups} and {self.width_multiplier}.")
    w, dt = self.width_multiplier, self.dtype
    x = x.astype(dt or x.dtype)
    x = _conv(_scaled(_STEM, w), 7, 2, dt, "conv1", use_bias=True)(x)
    x = nn.relu(_norm(self.norm, dt, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    gates, i = [], 0
    outs = stage_channels(w, self.groups)
    for stage, (n, out, fsm) in enumerate(zip(STAGE_BLOCKS, outs,
                                              _STAGE_FSM)):
      fsm = tuple(_scaled(c, w) for c in fsm)
      for b in range(n):
        x, s = MLFNBlock(out, 2 if (b == 0 and stage > 0) else 1, fsm,
                         self.groups, self.norm, dt, self.grouped_conv,
                         self.branch_relu, self.zero_init_residual,
                         name=f"feature_{i}")(x)
        gates.append(s)
        i += 1
    signature = jnp.concatenate(gates, axis=-1)  # [B, 16 * groups]

    embed = descriptor_dim(w)
    deep = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    deep = _conv(embed, 1, 1, dt, "fc_x_conv")(deep.astype(dt or x.dtype))
    deep = nn.relu(_norm(self.norm, dt, "fc_x_bn", True)(deep))
    fs = _conv(embed, 1, 1, dt, "fc_s_conv")(signature[:, None, None, :])
    fs = nn.relu(_norm(self.norm, dt, "fc_s_bn", True)(fs))
    v = ((deep.astype(jnp.float32) + fs.astype(jnp.float32)) * 0.5)
    out = {"descriptor": v.reshape(v.shape[0], embed),
           "factor_signature": signature.astype(jnp.float32)}
    if self.num_classes > 0:
      out["logits"] = nn.Dense(self.num_classes, dtype=jnp.float32,
                               param_dtype=jnp.float32,
                               kernel_init=_classifier_init,
                               name="classifier")(out["descriptor"])
    return out


_NORM_NAME = re.compile(r"(^|_)bn\d*$")


def is_frozen_param(path: Sequence[str], *, norm: str = "frozen") -> bool:
  """Whether an MLFN parameter must never be updated (frozen BN affine).

  Args:
    path: names from the MLFN root to the leaf, e.g.
      ("feature_0", "fsm", "bn1", "scale").
    norm: the model's norm; only 'frozen' freezes anything.
  """
  return norm == "frozen" and any(_NORM_NAME.search(str(p))
                                  for p in tuple(path)[:-1])


# --------------------------------------------------------------------------
# Importing torchreid state dicts.
# --------------------------------------------------------------------------

# Our module name -> torchreid's (inside a block, or at the top).
_BLOCK_MODULES = {
    "fm_conv1": "fm_conv1", "fm_bn1": "fm_bn1", "fm_conv2": "fm_conv2",
    "fm_bn2": "fm_bn2", "fm_conv3": "fm_conv3", "fm_bn3": "fm_bn3",
    "fsm/conv1": "fsm.1", "fsm/bn1": "fsm.2", "fsm/conv2": "fsm.4",
    "fsm/bn2": "fsm.5", "fsm/conv3": "fsm.7", "fsm/bn3": "fsm.8",
    "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TOP_MODULES = {"conv1": "conv1", "bn1": "bn1", "fc_x_conv": "fc_x.0",
                "fc_x_bn": "fc_x.1", "fc_s_conv": "fc_s.0",
                "fc_s_bn": "fc_s.1", "classifier": "classifier"}
_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", (FROZEN_BN, "mean"): "running_mean",
           (FROZEN_BN, "var"): "running_var"}
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def _torch_key(path: tuple[str, ...]) -> str | None:
  """(collection, *modules, leaf) of our tree -> torchreid key, or None."""
  collection, *mods, leaf = path
  tail = _LEAVES.get((collection, leaf))
  if tail is None or not mods:
    return None
  m = re.fullmatch(r"feature_(\d+)", mods[0])
  if m:
    mod = _BLOCK_MODULES.get("/".join(mods[1:]))
    return None if mod is None else f"feature.{m.group(1)}.{mod}.{tail}"
  if len(mods) != 1 or mods[0] not in _TOP_MODULES:
    return None
  return f"{_TOP_MODULES[mods[0]]}.{tail}"


def _to_ours(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray | None:
  """torch layout -> ours (None if the rank is wrong for the target)."""
  value = np.asarray(value, np.float32)
  if path[-1] != "kernel":
    return value if value.ndim == 1 else None
  if path[-2] == "classifier":
    return value.T if value.ndim == 2 else None
  # OIHW (grouped: [O, I / groups, kh, kw]) -> HWIO ([kh, kw, I / groups, O]).
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else None


def torchreid_mlfn_to_variables(state_dict: Mapping[str, np.ndarray],
                                variables: Mapping[str, Any]
                                ) -> dict[str, Any]:
  """Puts a torchreid MLFN state dict into an MLFN's variables.

  Args:
    state_dict: {torchreid key: array} (module doc), e.g. from
      `ps_jax.pretrained.load_state_dict`; conv weights [O, I / groups, kh,
      kw], BN vectors [C], classifier.weight [classes, D]. Any width works
      as long as shapes match the model.
    variables: the model's {"params": ..., "frozen_bn": ...} from
      `MLFN(norm="frozen").init`, or just their shapes from
      `jax.eval_shape(model.init, ...)` (only shapes and dtypes are read; a
      classifier left at its "init" then stays a ShapeDtypeStruct). Not
      modified.
  Returns:
    New variables (same structure, dtypes and shardings) holding the file's
    values; the classifier keeps its init if the model has none of the
    file's shape or the file has none (logged).
  Raises:
    ValueError: a model without frozen batch norm, or unknown, missing and
      mis-shaped keys (every one listed).
  """
  if FROZEN_BN not in variables or "params" not in variables:
    raise ValueError(
        f"variables: expected 'params' and {FROZEN_BN!r} collections, got "
        f"{sorted(variables)}; importing needs MLFN(norm='frozen').")
  targets = {}
  for collection in ("params", FROZEN_BN):
    for p, v in weights.leaves(variables[collection]).items():
      targets[(collection,) + p] = v
  key_of = {p: _torch_key(p) for p in targets}
  strange = sorted("/".join(p) for p, k in key_of.items() if k is None)
  if strange:
    raise ValueError(f"variables: not an MLFN tree, no torchreid name for "
                     f"{strange}.")
  path_of = {k: p for p, k in key_of.items()}

  file = {}
  for key, value in state_dict.items():
    name = key[len("module."):] if key.startswith("module.") else key
    if not _IGNORED.search(name):
      file[name] = (key, value)

  unknown, shapes, converted, skipped = [], [], {}, []
  for name, (key, value) in file.items():
    if name.startswith("classifier.") and name not in path_of:
      if name in ("classifier.weight", "classifier.bias"):
        skipped.append(f"{key} {tuple(np.shape(value))} (model has no "
                       "classifier)")
      else:
        unknown.append(key)
      continue
    if name not in path_of:
      unknown.append(key)
      continue
    path = path_of[name]
    want = tuple(targets[path].shape)
    ours = _to_ours(value, path)
    if ours is None or tuple(ours.shape) != want:
      desc = (f"{key}: {tuple(np.shape(value))} in the file, model "
              f"{'/'.join(path)} {want}")
      (skipped if name.startswith("classifier.") else shapes).append(desc)
      continue
    converted[path] = ours
  missing = sorted(
      f"{k} ({'/'.join(p)})" for k, p in path_of.items()
      if k not in file and not k.startswith("classifier."))
  errors = []
  if unknown:
    errors.append(f"{len(unknown)} unknown key(s): {sorted(unknown)}")
  if missing:
    errors.append(f"{len(missing)} missing key(s): {missing}")
  if shapes:
    errors.append(f"{len(shapes)} mis-shaped key(s): {sorted(shapes)}")
  if errors:
    raise ValueError("torchreid MLFN import: " + "; ".join(errors) + ".")

  classifier = [p for p in path_of.values() if p[1] == "classifier"]
  if skipped or (classifier and not all(p in converted for p in classifier)):
    # All or nothing: a half-imported classifier is worse than its init.
    for p in classifier:
      converted.pop(p, None)
    logging.info("torchreid MLFN import: classifier not imported (it keeps "
                 "its init; a new dataset has new identities): %s",
                 skipped or "not in the file")
  new = {k: v for k, v in variables.items()}
  for (collection, *p), value in converted.items():
    new[collection] = weights.set_path(
        new[collection], tuple(p),
        weights.as_like(value, targets[(collection, *p)]))
  logging.info("torchreid MLFN import: %d arrays imported.", len(converted))
  return new


def import_mlfn(variables: Mapping[str, Any], path: str | os.PathLike
                ) -> dict[str, Any]:
  """Reads a torchreid MLFN file (`ps_jax.pretrained.load_state_dict`:
  .npz, .safetensors, or .pth with torch installed) into `variables`; see
  `torchreid_mlfn_to_variables`. The input must be torchreid's: RGB with
  ImageNet mean / std."""
  try:
    return torchreid_mlfn_to_variables(pretrained.load_state_dict(path),
                                       variables)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from e
