"""AlignPS (ResNet + AFA neck + FCOS re-ID head) and its post-processing.

Conventions:
  * `AlignPS.__call__(images f32[B, H, W, 3], train)` returns the flat,
    level-concatenated output dict shared by the losses and the predictor:
      cls_logits f32[B, P, 1]   foreground logit per point
      box_ltrb   f32[B, P, 4]   (l, t, r, b) distances, stride units
                                (norm_on_bbox) else pixels
      ctr_logits f32[B, P, 1]   centerness logit
      reid_emb   f32[B, P, D]   re-ID feature, not normalized
      points     f32[P, 2]      (x, y) network-input pixels (mmdet FCOS)
      strides    f32[P]         stride of each point's level, pixels
      levels     i32[P]         level index, 0 = P3 (stride 8)
    In training all `len(strides)` levels are computed (P3..P7); in
    prediction only the first `predict_levels` (AlignPS: 1, P3 only).
  * Variables: {"params": ..., "frozen_bn": ...}; the latter holds the frozen
    batch-norm statistics (`ps_jax.models.backbone.FROZEN_BN`) and is never
    mutated. Initialise in training mode (`train=True`) or let init build
    every level anyway (it does); predicting then uses a subset.
  * `AlignPS.is_frozen(path)` / `AlignPS.trainable_mask(params)` tell the
    optimizer which parameters never change (frozen stem/res2 and frozen BN);
    pass `is_frozen=model.is_frozen` to `ps_jax.train.optim.make_optimizer`.

Post-processing (mmdet's FCOS `_get_bboxes_single`, which scores, decodes and
thresholds each level's points, and AlignPS's `multiclass_nms_reid`, mmdet's
`multiclass_nms` carrying each kept box's re-ID feature along, with AlignPS's
test_cfg):
  `predict_detections` per image: top-k (`pre_nms_top_k`, 1000) points by
  sigmoid(cls) * sigmoid(ctr); keep those with sigmoid(cls) >
  `score_threshold` (0.05, on the raw class probability); decode
  box = point -/+ ltrb * stride and clip to the valid image region
  [0, w] x [0, h]; greedy NMS (IoU > 0.5 suppresses) on score =
  sigmoid(cls) * sigmoid(ctr); the best `max_dets` (100) survive. Boxes are
  then divided by `scale` (original-image pixels) and embeddings are
  L2-normalized. Every output has a fixed size with a `valid` mask.
  `scale` is one factor per image, or per axis (y, x) = image_hw / orig_hw:
  the input pipeline resizes boxes per axis (as mmdet, whose test-time
  `scale_factor` is per axis too), so only the per-axis factors invert it
  exactly; the single factor is off by up to half a network pixel.
  `query_embedding`: the embedding for a query box, either AlignPS's rule
  (the detection with the largest IoU, +1-pixel convention, with the query
  box supplies it) or the P3 point nearest the box centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models import backbone as backbone_lib
from ps_jax.models.fpn import AFANeck
from ps_jax.models.heads import FCOSHead
from ps_jax.ops import box_coder
from ps_jax.ops import boxes as box_ops
from ps_jax.ops import nms as nms_lib
from ps_jax.ops import points as points_lib
from ps_jax.ops import vectors

Array = jax.Array


def _dtype(d: Any) -> Any:
  if d is None:
    return jnp.float32
  try:
    return jnp.dtype(d)
  except TypeError as e:
    raise ValueError(f"dtype: expected a dtype name such as 'float32' or "
                     f"'bfloat16', got {d!r}.") from e


class AlignPS(nn.Module):
  """AlignPS person search network (defaults: the paper's R50 model).

  Attributes (the keys of the `model` config section):
    depth: ResNet depth, 18/34/50/101 (50).
    width_multiplier: scales every backbone width (1.0; tests 1/8).
    style: 'caffe' (AlignPS, detectron2 weights) or 'pytorch'.
    frozen_stages: mmdet semantics: -1 none, 0 stem, 1 stem + res2 (1).
    backbone_norm: 'frozen' (FrozenBatchNorm, AlignPS) or 'group'.
    stage_with_dcn: DCNv2 in res2..res5 ((F, F, F, F); AlignPS+
      (F, T, T, T)).
    neck_channels: neck width C (256).
    neck_fuse: 'concat' (AFA) or 'add' (FPN).
    neck_dcn: deformable (v1) lateral and output convs (True).
    neck_lateral_kernel: plain lateral conv size when not neck_dcn (3; FPN 1).
    neck_relu_before_extra: ReLU before P7's conv (True).
    neck_offset_init: 'zeros' (default; a fresh neck samples the regular
      grid) or 'xavier' (AlignPS's init_weights) for the kernels of the
      neck's deformable offset branches (ps_jax.models.fpn).
    head_num_convs: convs per head tower (4).
    head_dcn_on_last_conv: last tower conv is DCNv2 (True).
    head_norm_groups: GroupNorm groups in the towers (32).
    head_sub_mean: subtract P3's spatial mean (True).
    head_sub_mean_valid_only: the same as head_sub_mean_region='image'
      (False; kept for existing configs).
    head_sub_mean_region: the region of P3 the "sub" mean covers
      (ps_jax.models.heads): 'canvas' (default, the padded map), 'image'
      (the image's own cells) or 'image_pad32' (the reference: the image
      padded to a multiple of 32 in prediction, the batch's largest padded
      image in training). All but 'canvas' need `image_hw` in __call__.
    norm_on_bbox: regression in stride units through a ReLU (True).
    centerness_on_reg: centerness on the reg tower (True).
    reid_dim: embedding size D; None (default) or neck_channels = the P3
      feature itself (AlignPS: 256 = neck_channels, no projection), else a
      1x1 projection to reid_dim.
    strides: strides of the levels, 8 * 2^l ((8, 16, 32, 64, 128)).
    predict_levels: levels computed in prediction (1: P3 only, AlignPS).
    dtype: compute dtype name ('float32'; 'bfloat16' on accelerators).
  """
  depth: int = 50
  width_multiplier: float = 1.0
  style: str = "caffe"
  frozen_stages: int = 1
  backbone_norm: str = "frozen"
  stage_with_dcn: Sequence[bool] = (False, False, False, False)
  neck_channels: int = 256
  neck_fuse: str = "concat"
  neck_dcn: bool = True
  neck_lateral_kernel: int = 3
  neck_relu_before_extra: bool = True
  neck_offset_init: str = "zeros"
  head_num_convs: int = 4
  head_dcn_on_last_conv: bool = True
  head_norm_groups: int = 32
  head_sub_mean: bool = True
  head_sub_mean_valid_only: bool = False
  head_sub_mean_region: str = "canvas"
  norm_on_bbox: bool = True
  centerness_on_reg: bool = True
  reid_dim: int | None = None
  strides: Sequence[int] = (8, 16, 32, 64, 128)
  predict_levels: int = 1
  dtype: Any = "float32"

  def _check(self) -> None:
    strides = tuple(int(s) for s in self.strides)
    expected = tuple(8 * 2**i for i in range(len(strides)))
    if len(strides) < 3 or strides != expected:
      raise ValueError(
          "strides: expected 8 * 2^l for at least the 3 backbone levels "
          f"(P3..P5), e.g. (8, 16, 32, 64, 128); got {self.strides!r}.")
    if not 1 <= self.predict_levels <= len(strides):
      raise ValueError(f"predict_levels: expected 1..{len(strides)}, got "
                       f"{self.predict_levels}.")

  @nn.compact
  def __call__(self, images: Array, train: bool = False,
               image_hw: Array | None = None) -> dict[str, Array]:
    """Runs the network.

    Args:
      images: f32[B, H, W, 3] normalized images; H and W multiples of 32
        (the pipeline pads to that) keep every level exactly H / stride.
      train: all levels (True) or only `predict_levels` (False).
      image_hw: optional i32[B, 2] valid (height, width) of each image inside
        the padded H x W, network pixels; needed unless the "sub" mean is
        over the canvas (`needs_image_hw`).
    Returns:
      The output dict described in the module doc.
    """
    self._check()
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
          f"images: expected f32[B, H, W, 3], got shape {images.shape}.")
    dtype = _dtype(self.dtype)
    strides = tuple(int(s) for s in self.strides)
    num_levels = len(strides) if train else self.predict_levels

    c3_c5 = backbone_lib.ResNet(
        depth=self.depth, width_multiplier=self.width_multiplier,
        style=self.style, frozen_stages=self.frozen_stages,
        norm=self.backbone_norm, stage_with_dcn=tuple(self.stage_with_dcn),
        return_levels=(3, 4, 5), dtype=dtype, name="backbone")(images)
    feats = AFANeck(
        out_channels=self.neck_channels, num_outs=len(strides),
        lateral_kernel=self.neck_lateral_kernel,
        use_dcn_lateral=self.neck_dcn, use_dcn_output=self.neck_dcn,
        fuse=self.neck_fuse, extra_convs_on="output",
        relu_before_extra=self.neck_relu_before_extra,
        offset_init=self.neck_offset_init, dtype=dtype, name="neck")(c3_c5, num_levels=num_levels)
    outputs, feature_hw = FCOSHead(
        num_convs=self.head_num_convs, norm_groups=self.head_norm_groups,
        dcn_on_last_conv=self.head_dcn_on_last_conv, conv_bias=True,
        centerness_on_reg=self.centerness_on_reg,
        norm_on_bbox=self.norm_on_bbox, sub_mean=self.head_sub_mean,
        sub_mean_valid_only=self.head_sub_mean_valid_only,
        sub_mean_region=self.head_sub_mean_region,
        reid_dim=self.reid_dim, dtype=dtype, name="head")(
            feats, strides[:len(feats)], image_hw=image_hw, batch_pad=train)
    points, point_strides, point_levels = points_lib.make_points(
        feature_hw, strides[:len(feats)])
    outputs.update(points=points, strides=point_strides, levels=point_levels)
    return outputs

  @property
  def needs_image_hw(self) -> bool:
    """Whether __call__ needs `image_hw` (the "sub" mean is not over the
    padded canvas)."""
    return self.head_sub_mean and (self.head_sub_mean_valid_only
                                   or self.head_sub_mean_region != "canvas")

  def is_frozen(self, path: Sequence[str]) -> bool:
    """True for parameters the optimizer must never change.

    Args:
      path: key names from the params root to a leaf, e.g.
        ("backbone", "layer1_0", "conv1", "kernel"); a leading "params" is
        ignored.
    """
    path = tuple(str(p) for p in path)
    if path and path[0] == "params":
      path = path[1:]
    return (len(path) > 1 and path[0] == "backbone"
            and backbone_lib.is_frozen_param(
                path[1:], frozen_stages=self.frozen_stages,
                norm=self.backbone_norm))

  def trainable_mask(self, params: Any) -> Any:
    """Bool pytree like `params`: True where the optimizer may update."""
    return backbone_lib.trainable_mask(params, self.is_frozen)


def _scale_xy(scale: Array, b: int, where: str) -> Array:
  """f32[B, 2] (x, y) network pixels per original pixel from f32[B] (one
  factor) or f32[B, 2] (per axis, (y, x) like image_hw)."""
  scale = jnp.asarray(scale, jnp.float32)
  if scale.shape == (b,):
    return jnp.stack([scale, scale], axis=-1)
  if scale.shape == (b, 2):
    return scale[:, ::-1]
  raise ValueError(f"{where}: scale must be f32[{b}] or f32[{b}, 2] (y, x), "
                   f"got shape {scale.shape}.")


def predict_detections(outputs: dict[str, Array], image_hw: Array,
                       scale: Array, *, max_dets: int = 100,
                       pre_nms_top_k: int = 1000,
                       score_threshold: float = 0.05, nms_iou: float = 0.5,
                       norm_on_bbox: bool = True,
                       orig_hw: Array | None = None) -> dict[str, Array]:
  """Fixed-size detections with embeddings from the model outputs.

  Args:
    outputs: the model's output dict (any number of levels): cls_logits
      f32[B, P, 1], box_ltrb f32[B, P, 4], ctr_logits f32[B, P, 1], reid_emb
      f32[B, P, D], points f32[P, 2], strides f32[P].
    image_hw: i32[B, 2] valid (height, width) of each resized image inside
      the padded input, network pixels; boxes are clipped to it.
    scale: f32[B] network pixels per original pixel, or f32[B, 2] per axis
      (y, x), e.g. image_hw / orig_hw (the exact inverse of the pipeline's
      resize).
    max_dets: detections kept per image M (static).
    pre_nms_top_k: candidates by sigmoid(cls) * sigmoid(ctr) before the
      score threshold and NMS (static).
    score_threshold: candidates need sigmoid(cls) > this value.
    nms_iou: NMS suppresses IoU > this value.
    norm_on_bbox: box_ltrb is in stride units (as the model's flag).
    orig_hw: optional i32[B, 2] original (height, width); boxes are also
      clipped to it after rescaling (guards against rounding in `scale`).
  Returns:
    boxes f32[B, M, 4] xyxy in original-image pixels, scores f32[B, M]
    (sigmoid(cls) * sigmoid(ctr), descending), embeddings f32[B, M, D]
    (L2-normalized), point_index i32[B, M] (index into P of each detection's
    point), valid bool[B, M]. Invalid slots are all zero.
  """
  cls = jax.nn.sigmoid(outputs["cls_logits"][..., 0].astype(jnp.float32))
  ctr = jax.nn.sigmoid(outputs["ctr_logits"][..., 0].astype(jnp.float32))
  ltrb = outputs["box_ltrb"].astype(jnp.float32)
  emb = outputs["reid_emb"]
  points = outputs["points"].astype(jnp.float32)
  point_strides = outputs["strides"].astype(jnp.float32)
  b, p = cls.shape
  if image_hw.shape != (b, 2):
    raise ValueError(f"predict_detections: image_hw must be i32[{b}, 2], got "
                     f"{image_hw.shape}.")
  k = max(1, min(int(pre_nms_top_k), p))
  hw = jnp.asarray(image_hw, jnp.float32)
  scale_xyxy = jnp.tile(_scale_xy(scale, b, "predict_detections"), (1, 2))

  def one(cls_i, ctr_i, ltrb_i, emb_i, hw_i, scale_i):  # scale_i: [4]
    score = cls_i * ctr_i  # [P]
    _, idx = jax.lax.top_k(score, k)  # [k]
    boxes = box_coder.ltrb_decode(
        points[idx], ltrb_i[idx],
        point_strides[idx] if norm_on_bbox else None)  # [k, 4]
    boxes = box_ops.clip_boxes(boxes, hw_i[0], hw_i[1])
    keep, keep_valid = nms_lib.nms(
        boxes, score[idx], iou_threshold=nms_iou, max_outputs=max_dets,
        valid=cls_i[idx] > score_threshold)
    point_index = jnp.where(keep_valid, idx[keep], 0)
    out_boxes = boxes[keep] / scale_i
    out_scores = score[idx][keep]
    out_emb = vectors.l2_normalize(emb_i[point_index].astype(jnp.float32))
    return out_boxes, out_scores, out_emb, point_index, keep_valid

  boxes, scores, embs, point_index, valid = jax.vmap(one)(
      cls, ctr, ltrb, emb, hw, scale_xyxy)
  if orig_hw is not None:
    ohw = jnp.asarray(orig_hw, jnp.float32)
    boxes = jnp.minimum(
        boxes, jnp.stack([ohw[:, 1], ohw[:, 0]] * 2, axis=-1)[:, None, :])
  boxes = jnp.where(valid[..., None], boxes, 0.0)
  scores = jnp.where(valid, scores, 0.0)
  embs = jnp.where(valid[..., None], embs, 0.0)
  return dict(boxes=boxes, scores=scores, embeddings=embs,
              point_index=point_index.astype(jnp.int32), valid=valid)


def iou_plus_one(boxes: Array, query: Array) -> Array:
  """IoU with the "+1 pixel" convention of AlignPS's `iou_utils.get_max_iou`.

  Widths are x2 - x1 + 1 (inclusive integer pixels), intersections likewise
  clipped at 0.

  Args:
    boxes: f32[..., M, 4] xyxy, pixels.
    query: f32[..., 4] xyxy, pixels, broadcast against each of the M boxes.
  Returns:
    f32[..., M] IoU.
  """
  q = query[..., None, :]
  iw = jnp.maximum(jnp.minimum(boxes[..., 2], q[..., 2])
                   - jnp.maximum(boxes[..., 0], q[..., 0]) + 1.0, 0.0)
  ih = jnp.maximum(jnp.minimum(boxes[..., 3], q[..., 3])
                   - jnp.maximum(boxes[..., 1], q[..., 1]) + 1.0, 0.0)
  inter = iw * ih
  area = lambda x: ((x[..., 2] - x[..., 0] + 1.0)
                    * (x[..., 3] - x[..., 1] + 1.0))
  union = area(boxes) + area(q) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def center_embedding(outputs: dict[str, Array], query_boxes: Array,
                     scale: Array) -> tuple[Array, Array]:
  """Embedding at the P3 point nearest each query box centre.

  Args:
    outputs: model outputs with reid_emb f32[B, P, D], points f32[P, 2],
      levels i32[P].
    query_boxes: f32[B, 4] xyxy, original-image pixels.
    scale: f32[B] network pixels per original pixel, or f32[B, 2] per axis
      (y, x).
  Returns:
    (embedding f32[B, D] L2-normalized, point_index i32[B] into P).
  """
  scale_xy = _scale_xy(scale, query_boxes.shape[0], "center_embedding")
  centre = 0.5 * (query_boxes[:, :2] + query_boxes[:, 2:]) * scale_xy
  d2 = jnp.sum(jnp.square(outputs["points"][None] - centre[:, None]),
               axis=-1)  # [B, P]
  d2 = jnp.where(outputs["levels"][None] == 0, d2, jnp.inf)
  point_index = jnp.argmin(d2, axis=1).astype(jnp.int32)  # [B]
  emb = jnp.take_along_axis(outputs["reid_emb"],
                            point_index[:, None, None], axis=1)[:, 0]
  return vectors.l2_normalize(emb.astype(jnp.float32)), point_index


def query_embedding(pred: dict[str, Array], query_boxes: Array,
                    outputs: dict[str, Array], scale: Array, *,
                    mode: str = "best_iou") -> dict[str, Array]:
  """Embedding of each query person, one query box per image.

  Args:
    pred: `predict_detections` output for the query images (boxes f32[B, M,
      4] original pixels, embeddings f32[B, M, D], valid bool[B, M]).
    query_boxes: f32[B, 4] xyxy query boxes, original-image pixels.
    outputs: the model outputs the predictions came from (for 'center' and
      the fallback).
    scale: f32[B] network pixels per original pixel, or f32[B, 2] per axis
      (y, x).
    mode: 'best_iou' (AlignPS): the valid detection with the largest IoU
      (+1-pixel convention) supplies the embedding; if no valid detection
      overlaps the query at all, fall back to the centre read-out.
      'center': always the P3 point nearest the box centre.
  Returns:
    embedding f32[B, D] L2-normalized; from_detection bool[B]; det_index
    i32[B] (slot in pred, meaningful where from_detection); iou f32[B]
    (IoU of that detection, 0 otherwise).
  """
  if mode not in ("best_iou", "center"):
    raise ValueError(
        f"mode: expected 'best_iou' or 'center', got {mode!r}.")
  query_boxes = jnp.asarray(query_boxes, jnp.float32)
  centre_emb, _ = center_embedding(outputs, query_boxes, scale)
  b = query_boxes.shape[0]
  if mode == "center":
    return dict(embedding=centre_emb, from_detection=jnp.zeros((b,), bool),
                det_index=jnp.zeros((b,), jnp.int32),
                iou=jnp.zeros((b,), jnp.float32))
  best = best_iou_detection(pred, query_boxes)
  emb = jnp.where(best["from_detection"][:, None], best["embedding"],
                  centre_emb)
  return dict(best, embedding=emb)


def best_iou_detection(pred: dict[str, Array], query_boxes: Array
                       ) -> dict[str, Array]:
  """The valid detection overlapping each query box most (AlignPS's rule,
  +1-pixel IoU convention; any system's fixed-size predictions).

  Args:
    pred: boxes f32[B, M, 4] original pixels, embeddings f32[B, M, D],
      valid bool[B, M].
    query_boxes: f32[B, 4] xyxy, original pixels.
  Returns:
    embedding f32[B, D] (that detection's; meaningful where
    from_detection); from_detection bool[B] (some valid detection overlaps
    the box); det_index i32[B] (0 otherwise); iou f32[B] (0 otherwise).
  """
  iou = iou_plus_one(pred["boxes"], jnp.asarray(query_boxes, jnp.float32))
  iou = jnp.where(pred["valid"], iou, -1.0)  # [B, M]
  det_index = jnp.argmax(iou, axis=1).astype(jnp.int32)  # [B]
  best = jnp.take_along_axis(iou, det_index[:, None], axis=1)[:, 0]
  from_det = best > 0.0
  det_emb = jnp.take_along_axis(pred["embeddings"],
                                det_index[:, None, None], axis=1)[:, 0]
  return dict(embedding=det_emb, from_detection=from_det,
              det_index=jnp.where(from_det, det_index, 0),
              iou=jnp.where(from_det, best, 0.0))
