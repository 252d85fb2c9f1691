"""AlignPS's FCOS detection + re-ID head, in Flax linen.

Conventions:
  * Inputs are neck levels [P3, P4, ...] as NHWC maps, finest first; outputs
    are flattened per level row-major (index i * w + j, the order of
    `ps_jax.ops.points.make_points`) and concatenated over levels, so the
    P axis lines up with the points.
  * Parameters are float32; towers run in the compute `dtype`; every output
    is float32.
  * `box_ltrb` is (left, top, right, bottom) distances from the point, in
    units of the point's stride when `norm_on_bbox` (AlignPS), else pixels.

The head (mmdet `FCOSHead` + AlignPS `FCOSReidHeadFocalSubTriQueue`;
docs/alignps.md describes the model):
  * "sub": P3 minus its per-image, per-channel spatial mean, before both
    towers and the re-ID read-out. The mean covers the top-left region of
    the map that `sub_mean_region` names (s = P3's stride, (h, w) an image's
    `image_hw`):
      'canvas'       the whole padded map (the default);
      'image'        the image's own cells, ceil(h / s) x ceil(w / s): the
                     embedding does not depend on the padding
                     (`sub_mean_valid_only=True` is the same);
      'image_pad32'  the reference's padding (mmdet Pad(size_divisor=32)):
                     the image rounded up to a multiple of 32 pixels,
                     ceil(h / 32) * 32 / s x ceil(w / 32) * 32 / s cells.
                     With `batch_pad=True` (training) the region is that
                     of the batch's largest height and width, as mmdet pads
                     a training batch to its largest image; in testing the
                     reference runs one image at a time.
  * cls and reg towers, shared over levels: `num_convs` x (3x3 conv with
    bias, GroupNorm(gcd(32, C)), ReLU); with `dcn_on_last_conv` the last conv
    of each tower is a modulated deformable conv (DCNv2);
  * `conv_cls` 3x3 -> 1 (bias -log((1 - 0.01) / 0.01)), `conv_reg` 3x3 -> 4,
    `conv_centerness` 3x3 -> 1 on the reg tower (`centerness_on_reg`);
  * per-level learnable scalar `scale_{l}` (init 1.0) on the regression;
    `norm_on_bbox`: box = relu(scale * reg) (stride units), else
    exp(scale * reg) (pixels).
  * re-ID embedding = the (mean-subtracted on P3) neck feature at the point,
    D = neck channels, no extra layer (AlignPS). If `reid_dim` differs from
    the neck channels, a shared 1x1 conv `reid_proj` maps to `reid_dim`.
    Embeddings are produced for every level from that level's feature; only
    P3 points are ever positive in AlignPS, so the others are unused there.
Initialisation as mmdet: plain convs N(0, 0.01) with zero bias; DCN convs
keep mmcv's U(+-1/sqrt(fan_in)) and a zero offset branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models.backbone import dcn_kernel_init, group_count
from ps_jax.models.deform_conv import DeformConv

Array = jax.Array
Dtype = Any

normal_001 = nn.initializers.normal(stddev=0.01)
SUB_MEAN_REGIONS = ("canvas", "image", "image_pad32")
# mmdet's Pad(size_divisor=32) in the reference's pipelines.
REFERENCE_SIZE_DIVISOR = 32


def mean_region_cells(image_hw: Array, stride: int, region: str, *,
                      batch_pad: bool = False) -> Array:
  """Rows and columns of a stride-`stride` map that the "sub" mean covers.

  Args:
    image_hw: i32[B, 2] (height, width) of each image, network pixels.
    stride: the map's stride, pixels.
    region: 'image' (ceil(hw / stride)) or 'image_pad32' (hw rounded up to a
      multiple of 32 first).
    batch_pad: with 'image_pad32', every image gets the batch's largest
      padded height and width.
  Returns:
    i32[B, 2] cells (may exceed the map; `subtract_spatial_mean` clips).
  """
  hw = jnp.asarray(image_hw, jnp.int32)
  if region == "image_pad32":
    d = REFERENCE_SIZE_DIVISOR
    hw = (hw + d - 1) // d * d
    if batch_pad:
      hw = jnp.broadcast_to(jnp.max(hw, axis=0, keepdims=True), hw.shape)
  elif region != "image":
    raise ValueError(f"region: expected 'image' or 'image_pad32', got "
                     f"{region!r}.")
  return (hw + stride - 1) // stride


def subtract_spatial_mean(x: Array, valid_hw: Array | None = None
                          ) -> Array:
  """x minus its per-image, per-channel spatial mean.

  Args:
    x: [B, h, w, C] feature map (any float dtype).
    valid_hw: optional i32[B, 2] number of valid rows and columns of the map
      (cells); if given, the mean is over that top-left region only (at
      least one cell). The subtraction applies to the whole map.
  Returns:
    [B, h, w, C], x's dtype. The mean is accumulated in float32.
  """
  xf = x.astype(jnp.float32)
  if valid_hw is None:
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
  else:
    h, w = x.shape[1], x.shape[2]
    vh = jnp.clip(valid_hw[:, 0], 1, h)[:, None, None, None]
    vw = jnp.clip(valid_hw[:, 1], 1, w)[:, None, None, None]
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    mask = ((rows < vh) & (cols < vw)).astype(jnp.float32)  # [B, h, w, 1]
    mean = (jnp.sum(xf * mask, axis=(1, 2), keepdims=True)
            / jnp.sum(mask, axis=(1, 2), keepdims=True))
  return (xf - mean).astype(x.dtype)


class FCOSHead(nn.Module):
  """FCOS head with AlignPS's re-ID read-out (see module doc).

  Attributes:
    num_convs: convs per tower (4).
    feat_channels: tower width; None = input channels (256 in AlignPS).
    norm_groups: GroupNorm groups (32), reduced to gcd(32, C) for tiny C.
    dcn_on_last_conv: last tower conv is a modulated deformable conv.
    conv_bias: tower convs have a bias (AlignPS `conv_bias=True`).
    centerness_on_reg: centerness predicted from the reg tower.
    norm_on_bbox: relu regression in stride units (else exp, pixels).
    sub_mean: subtract P3's spatial mean first (AlignPS "sub").
    sub_mean_valid_only: the same as sub_mean_region='image' (kept for
      existing configs).
    sub_mean_region: 'canvas', 'image' or 'image_pad32' (module docstring);
      the last two need `image_hw`.
    reid_dim: embedding size; None or equal to the input channels = the
      feature itself; otherwise a 1x1 projection.
    prior_prob: initial foreground probability of `conv_cls` (0.01).
    dtype: compute dtype.
  """
  num_convs: int = 4
  feat_channels: int | None = None
  norm_groups: int = 32
  dcn_on_last_conv: bool = True
  conv_bias: bool = True
  centerness_on_reg: bool = True
  norm_on_bbox: bool = True
  sub_mean: bool = True
  sub_mean_valid_only: bool = False
  sub_mean_region: str = "canvas"
  reid_dim: int | None = None
  prior_prob: float = 0.01
  dtype: Dtype | None = None

  @property
  def mean_region(self) -> str:
    """The effective `sub_mean_region` ('image' if sub_mean_valid_only)."""
    if self.sub_mean_region not in SUB_MEAN_REGIONS:
      raise ValueError(f"sub_mean_region: expected one of {SUB_MEAN_REGIONS}"
                       f", got {self.sub_mean_region!r}.")
    if self.sub_mean_valid_only:
      if self.sub_mean_region not in ("canvas", "image"):
        raise ValueError("sub_mean_valid_only=True means sub_mean_region="
                         f"'image'; got {self.sub_mean_region!r} as well.")
      return "image"
    return self.sub_mean_region

  def _tower(self, prefix: str, channels: int) -> list[tuple[nn.Module, ...]]:
    layers = []
    for i in range(self.num_convs):
      if self.dcn_on_last_conv and i == self.num_convs - 1:
        conv = DeformConv(channels, kernel_size=(3, 3), padding=1,
                          modulated=True, use_bias=self.conv_bias,
                          kernel_init=dcn_kernel_init, dtype=self.dtype,
                          name=f"{prefix}_conv_{i}")
      else:
        conv = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)),
                       use_bias=self.conv_bias, dtype=self.dtype,
                       param_dtype=jnp.float32, kernel_init=normal_001,
                       bias_init=nn.initializers.zeros,
                       name=f"{prefix}_conv_{i}")
      gn = nn.GroupNorm(num_groups=group_count(channels, self.norm_groups),
                        epsilon=1e-5, dtype=self.dtype,
                        param_dtype=jnp.float32, name=f"{prefix}_gn_{i}")
      layers.append((conv, gn))
    return layers

  @nn.compact
  def __call__(self, feats: Sequence[Array], strides: Sequence[int],
               image_hw: Array | None = None, batch_pad: bool = False
               ) -> tuple[dict[str, Array], list[tuple[int, int]]]:
    """Runs the head on every given level.

    Args:
      feats: neck maps [B, h_l, w_l, C], finest (P3) first, all with the
        same C.
      strides: stride in pixels of each given level (static ints).
      image_hw: optional i32[B, 2] valid (height, width) of each image in
        network-input pixels; used only when the "sub" mean is not over the
        canvas.
      batch_pad: with sub_mean_region='image_pad32', pad every image of
        the batch to the batch's largest height and width (training).
    Returns:
      (outputs, feature_hw): outputs holds, with P = sum_l h_l * w_l,
        cls_logits f32[B, P, 1], box_ltrb f32[B, P, 4] (>= 0 with
        norm_on_bbox), ctr_logits f32[B, P, 1], reid_emb f32[B, P, D]
        (not normalized); feature_hw is the static list of (h_l, w_l).
    """
    if len(feats) != len(strides):
      raise ValueError(f"FCOSHead: {len(feats)} feature levels but "
                       f"{len(strides)} strides.")
    channels = feats[0].shape[-1]
    if any(f.shape[-1] != channels for f in feats):
      raise ValueError("FCOSHead: all levels need the same channels, got "
                       f"{[f.shape[-1] for f in feats]}.")
    region = self.mean_region
    if region != "canvas" and image_hw is None and self.is_initializing():
      region = "canvas"  # the parameters do not depend on the region
    if region != "canvas" and image_hw is None and self.sub_mean:
      raise ValueError(f"FCOSHead: sub_mean_region={region!r} (or "
                       "sub_mean_valid_only) needs image_hw.")
    feat_ch = self.feat_channels or channels
    reid_dim = self.reid_dim or channels

    feats = list(feats)
    if self.sub_mean:
      valid = None
      if region != "canvas":
        valid = mean_region_cells(image_hw, int(strides[0]), region,
                                  batch_pad=batch_pad)
      feats[0] = subtract_spatial_mean(feats[0], valid)

    cls_tower = self._tower("cls", feat_ch)
    reg_tower = self._tower("reg", feat_ch)
    pred_conv = dict(padding=((1, 1), (1, 1)), dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=normal_001)
    bias_cls = -math.log((1.0 - self.prior_prob) / self.prior_prob)
    conv_cls = nn.Conv(1, (3, 3), bias_init=nn.initializers.constant(bias_cls),
                       name="conv_cls", **pred_conv)
    conv_reg = nn.Conv(4, (3, 3), bias_init=nn.initializers.zeros,
                       name="conv_reg", **pred_conv)
    conv_ctr = nn.Conv(1, (3, 3), bias_init=nn.initializers.zeros,
                       name="conv_centerness", **pred_conv)
    reid_proj = None
    if reid_dim != channels:
      reid_proj = nn.Conv(reid_dim, (1, 1), dtype=self.dtype,
                          param_dtype=jnp.float32, name="reid_proj")

    outs = {"cls_logits": [], "box_ltrb": [], "ctr_logits": [],
            "reid_emb": []}
    feature_hw = []
    for level, x in enumerate(feats):
      b, h, w, _ = x.shape
      feature_hw.append((h, w))
      cls_feat, reg_feat = x, x
      for conv, gn in cls_tower:
        cls_feat = nn.relu(gn(conv(cls_feat)))
      for conv, gn in reg_tower:
        reg_feat = nn.relu(gn(conv(reg_feat)))
      cls = conv_cls(cls_feat)
      reg = conv_reg(reg_feat).astype(jnp.float32)
      ctr = conv_ctr(reg_feat if self.centerness_on_reg else cls_feat)
      scale = self.param(f"scale_{level}", nn.initializers.ones, (),
                         jnp.float32)
      reg = scale * reg
      box = nn.relu(reg) if self.norm_on_bbox else jnp.exp(reg)
      reid = x if reid_proj is None else reid_proj(x)
      flat = lambda a: a.reshape(b, h * w, a.shape[-1]).astype(jnp.float32)
      outs["cls_logits"].append(flat(cls))
      outs["box_ltrb"].append(flat(box))
      outs["ctr_logits"].append(flat(ctr))
      outs["reid_emb"].append(flat(reid))
    return ({k: jnp.concatenate(v, axis=1) for k, v in outs.items()},
            feature_hw)
