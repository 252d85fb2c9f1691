"""The OIM network (Xiao et al. 2017): a Faster R-CNN with a C4 trunk and an
identity branch on the RoI head, in Flax linen.

  images -> ResNet conv1..res4 ("trunk", stride 16) -> C4
  C4 -> RPN: 3x3 conv + ReLU -> 1x1 objectness (one logit per anchor) and
        1x1 deltas (4 per anchor)
  C4, RoIs -> RoIAlign (roi_size x roi_size, 1/16) -> res5 (stride 2)
           -> pool (average: Caffe OIM; max: SeqNet's baseline) -> v
  v -> cls_score (2 classes: background, person)
  v -> bbox_pred (2 x 4 class-specific deltas)
  v -> feat (the paper's `feat_lowdim`, `reid_dim` = 256), L2-normalised by
       the system (the paper's `Normalize`)

The two stages are separate methods, because proposals and the RoIs drawn
from them are computed between them by pure functions (`ps_jax.ops.proposals`,
`ps_jax.ops.rcnn_targets`):
  `OIMNet.trunk(images)` -> {"c4", "rpn_logits" f32[B, P], "rpn_deltas"
     f32[B, P, 4], "anchors" f32[P, 4]} with P = (H / 16) * (W / 16) * A
     anchors in (row, column, anchor) order;
  `OIMNet.roi_head(c4, rois f32[B, R, 4])` -> {"cls_logits" f32[B, R, 2],
     "box_deltas" f32[B, R, 2, 4], "embedding" f32[B, R, reid_dim]}.
`__call__` runs both (for `init`).

Variables are {"params", "frozen_bn"} like AlignPS's; nothing is mutated.
The Caffe network differs in a few places (docs/oim.md): RoIPool where this
uses RoIAlign, a trunk that ends after res4c with res4d-f in the head, a 2-way
softmax RPN (equivalent to one logit per anchor), BN statistics in the head
that follow each batch of RoIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models import backbone as backbone_lib
from ps_jax.ops import anchors as anchors_lib
from ps_jax.ops import roi_align as roi_align_lib

Array = jax.Array

STRIDE = 16  # C4
POOLS = ("avg", "max")


def _dtype(d: Any) -> Any:
  return jnp.float32 if d is None else jnp.dtype(d)


class OIMNet(nn.Module):
  """OIM person search network (defaults: SeqNet's torchvision baseline).

  Attributes (the keys of the `model` config section):
    depth: ResNet depth, 18/34/50/101 (50).
    width_multiplier: scales every ResNet width (1.0; tests 1/8).
    style: 'pytorch' (torchvision weights) or 'caffe'.
    frozen_stages: mmdet semantics: -1 none, 0 conv1 + bn1 (0, both
      recipes), k the stem and res2..res(k+1).
    backbone_norm: 'frozen' (FrozenBatchNorm, pretrained weights) or 'group'
      (trainable GroupNorm, training from scratch); trunk and res5 head.
    anchor_sizes: anchor sides, pixels ((32, 64, 128, 256, 512) SeqNet;
      (128, 256, 512) Caffe OIM).
    anchor_ratios: anchor aspect ratios h / w ((0.5, 1, 2)).
    rpn_channels: the RPN's 3x3 conv width (None: the trunk's channels,
      torchvision's RPNHead; Caffe OIM 512).
    roi_size: RoIAlign output side (14, both recipes).
    roi_sampling_ratio: RoIAlign samples per bin and axis (2; <= 0 adaptive).
    head_pool: 'avg' (Caffe OIM) or 'max' (SeqNet) pooling of res5.
    reid_dim: identity embedding size (256).
    dtype: compute dtype name ('float32'; 'bfloat16' on accelerators).
  """
  depth: int = 50
  width_multiplier: float = 1.0
  style: str = "pytorch"
  frozen_stages: int = 0
  backbone_norm: str = "frozen"
  anchor_sizes: Sequence[float] = anchors_lib.SEQNET_SIZES
  anchor_ratios: Sequence[float] = anchors_lib.RATIOS
  rpn_channels: int | None = None
  roi_size: int = 14
  roi_sampling_ratio: int = 2
  head_pool: str = "max"
  reid_dim: int = 256
  dtype: Any = "float32"

  @property
  def num_anchors(self) -> int:
    return len(tuple(self.anchor_sizes)) * len(tuple(self.anchor_ratios))

  def setup(self):
    if self.head_pool not in POOLS:
      raise ValueError(f"head_pool: expected one of {POOLS}, got "
                       f"{self.head_pool!r}.")
    dtype = _dtype(self.dtype)
    self.backbone = backbone_lib.ResNet(
        depth=self.depth, width_multiplier=self.width_multiplier,
        style=self.style, frozen_stages=self.frozen_stages,
        norm=self.backbone_norm, return_levels=(4,), num_stages=3,
        dtype=dtype)
    c4 = backbone_lib.out_channels(self.depth, self.width_multiplier)[4]
    rpn_width = int(self.rpn_channels or c4)
    rpn_init = nn.initializers.normal(0.01)
    conv = dict(dtype=dtype, param_dtype=jnp.float32, kernel_init=rpn_init,
                bias_init=nn.initializers.zeros)
    self.rpn_conv = nn.Conv(rpn_width, (3, 3), padding=((1, 1), (1, 1)),
                            **conv)
    self.rpn_cls = nn.Conv(self.num_anchors, (1, 1), **conv)
    self.rpn_box = nn.Conv(4 * self.num_anchors, (1, 1), **conv)
    self.res5 = backbone_lib.ResNetStage(
        stage=4, depth=self.depth, width_multiplier=self.width_multiplier,
        style=self.style, norm=self.backbone_norm, dtype=dtype)
    dense = dict(dtype=jnp.float32, param_dtype=jnp.float32,
                 bias_init=nn.initializers.zeros)
    # py-faster-rcnn / torchvision Faster R-CNN: N(0, 0.01) scores, N(0,
    # 0.001) deltas; OIM's feat_lowdim: msra (He) init.
    self.cls_score = nn.Dense(2, kernel_init=nn.initializers.normal(0.01),
                              **dense)
    self.bbox_pred = nn.Dense(8, kernel_init=nn.initializers.normal(0.001),
                              **dense)
    self.feat = nn.Dense(self.reid_dim,
                         kernel_init=nn.initializers.he_normal(), **dense)

  def trunk(self, images: Array) -> dict[str, Array]:
    """C4 features, RPN outputs and anchors.

    Args:
      images: f32[B, H, W, 3] normalized; H, W multiples of 16 (the pipeline
        pads to 32) keep C4 exactly (H / 16, W / 16).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
          f"images: expected f32[B, H, W, 3], got shape {images.shape}.")
    (c4,) = self.backbone(images)
    b, h, w, _ = c4.shape
    x = nn.relu(self.rpn_conv(c4))
    logits = self.rpn_cls(x).astype(jnp.float32).reshape(b, -1)
    deltas = self.rpn_box(x).astype(jnp.float32).reshape(b, -1, 4)
    anchors = anchors_lib.grid_anchors(self.anchor_sizes, self.anchor_ratios,
                                       (h, w), STRIDE)
    return {"c4": c4, "rpn_logits": logits, "rpn_deltas": deltas,
            "anchors": anchors}

  def roi_head(self, c4: Array, rois: Array) -> dict[str, Array]:
    """Box scores, class-specific deltas and identity features of RoIs.

    Args:
      c4: the trunk's C4 map [B, h, w, C].
      rois: f32[B, R, 4] xyxy network-input pixels.
    """
    pooled = roi_align_lib.roi_align(
        c4, jax.lax.stop_gradient(rois.astype(jnp.float32)), self.roi_size,
        spatial_scale=1.0 / STRIDE, sampling_ratio=self.roi_sampling_ratio,
        aligned=False)                                  # [B, R, s, s, C]
    b, r = pooled.shape[:2]
    x = self.res5(pooled.reshape(b * r, *pooled.shape[2:]))
    x = x.astype(jnp.float32)
    v = jnp.mean(x, axis=(1, 2)) if self.head_pool == "avg" else jnp.max(
        x, axis=(1, 2))
    return {"cls_logits": self.cls_score(v).reshape(b, r, 2),
            "box_deltas": self.bbox_pred(v).reshape(b, r, 2, 4),
            "embedding": self.feat(v).reshape(b, r, self.reid_dim)}

  def __call__(self, images: Array, rois: Array | None = None
               ) -> dict[str, Array]:
    """Both stages (for `init`); `rois` default to one whole-image box."""
    out = self.trunk(images)
    if rois is None:
      b, h, w, _ = images.shape
      rois = jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32),
                              (b, 1, 4))
    out.update(self.roi_head(out["c4"], rois))
    return out

  def is_frozen(self, path: Sequence[str]) -> bool:
    """True for parameters the optimizer must never change (frozen stages of
    the trunk; frozen batch norms in the trunk and in res5)."""
    path = tuple(str(p) for p in path)
    if path and path[0] == "params":
      path = path[1:]
    if len(path) < 2:
      return False
    if path[0] == "backbone":
      return backbone_lib.is_frozen_param(
          path[1:], frozen_stages=self.frozen_stages, norm=self.backbone_norm)
    if path[0] == "res5":
      return backbone_lib.is_frozen_param(path[1:], frozen_stages=-1,
                                          norm=self.backbone_norm)
    return False
