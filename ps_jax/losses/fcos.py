"""FCOS detection losses: sigmoid focal, IoU/GIoU and centerness.

Conventions:
  * Pure `jax.numpy`, float32, jit/vmap/grad friendly, static shapes. Padding
    and background are masks (`bool[...]`), never sentinel values.
  * The elementwise losses (`sigmoid_focal_loss`, `iou_loss`, `giou_loss`,
    `centerness_loss`) return one value per element with no reduction;
    `fcos_detection_losses` applies the mmdet `FCOSHead.loss` normalization
    that AlignPS uses and returns every normalizer it used.
  * `ltrb` distances are [left, top, right, bottom] from a point to the box
    sides: `box = [x - l, y - t, x + r, y + b]` (`ps_jax.ops.box_coder`).
    With `norm_on_bbox` the model predicts them in units of the point's
    stride; IoU and GIoU are invariant to a common translation and scale of
    both boxes, so predictions and targets only have to share units, and the
    decode point may be any common point.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ps_jax.ops import box_coder
from ps_jax.ops import boxes as box_ops

# mmdet IoULoss clamps IoU at this value before the log (eps=1e-6 default).
IOU_LOSS_EPS = 1e-6
# mmdet GIoULoss default eps (added to union and enclosing area).
GIOU_LOSS_EPS = 1e-6


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Numerically stable elementwise binary cross-entropy on logits."""
  return (jnp.maximum(logits, 0.0) - logits * targets
          + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array,
                       alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Sigmoid focal loss, elementwise (torchvision, reduction='none').

  loss = alpha_t * (1 - p_t)^gamma * BCE(logits, targets), with
  p = sigmoid(logits), p_t = p t + (1 - p)(1 - t) and
  alpha_t = alpha t + (1 - alpha)(1 - t). This is also mmcv's
  `sigmoid_focal_loss` used by mmdet `FocalLoss` (one-hot targets).

  Args:
    logits: f32[...] classification logits.
    targets: f32[...] (or bool) targets in [0, 1], same shape as `logits`.
    alpha: weight of the positive class in [0, 1]; alpha < 0 disables the
      alpha weighting (torchvision convention).
    gamma: focusing exponent >= 0 (static Python float).

  Returns:
    f32[...] per-element loss (nats), no reduction.
  """
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  if logits.shape != targets.shape:
    raise ValueError(
        f"sigmoid_focal_loss: logits shape {logits.shape} != targets shape "
        f"{targets.shape}.")
  p = jax.nn.sigmoid(logits)
  loss = _bce_with_logits(logits, targets)
  if gamma:
    # Skipped for gamma == 0: d/dx x**0 is NaN at x = 0.
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = loss * (1.0 - p_t) ** gamma
  if alpha >= 0:
    loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
  return loss


def _apply_weights(loss: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return loss
  return loss * jnp.asarray(weights, jnp.float32)


def iou_loss(pred_xyxy: jax.Array, target_xyxy: jax.Array,
             weights: jax.Array | None = None,
             eps: float = IOU_LOSS_EPS) -> jax.Array:
  """-log IoU of matched pairs (mmdet `IoULoss`, linear=False), elementwise.

  IoU is clamped below at `eps` before the log, as in mmdet, so a prediction
  that does not overlap its target costs -log(eps) and gets zero gradient
  (GIoU is the loss that pulls such boxes back).

  Args:
    pred_xyxy: f32[..., 4] predicted boxes, xyxy.
    target_xyxy: f32[..., 4] target boxes, same frame and units.
    weights: optional f32[...] per-pair weights (e.g. 0 for padding).
    eps: IoU floor (unitless); also added to the union (units^2).

  Returns:
    f32[...] weighted loss per pair, no reduction.
  """
  iou = box_ops.paired_iou(pred_xyxy, target_xyxy, eps=eps)
  return _apply_weights(-jnp.log(jnp.maximum(iou, eps)), weights)


def giou_loss(pred_xyxy: jax.Array, target_xyxy: jax.Array,
              weights: jax.Array | None = None,
              eps: float = GIOU_LOSS_EPS) -> jax.Array:
  """1 - GIoU of matched pairs (mmdet `GIoULoss`), elementwise.

  Args:
    pred_xyxy: f32[..., 4] predicted boxes, xyxy.
    target_xyxy: f32[..., 4] target boxes, same frame and units.
    weights: optional f32[...] per-pair weights (e.g. 0 for padding).
    eps: added to the union and enclosing areas (units^2).

  Returns:
    f32[...] weighted loss per pair in [0, 2] (times the weight).
  """
  giou = box_ops.paired_giou(pred_xyxy, target_xyxy, eps=eps)
  return _apply_weights(1.0 - giou, weights)


def centerness_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Binary cross-entropy with logits, elementwise (FCOS centerness).

  Args:
    logits: f32[...] predicted centerness logits.
    targets: f32[...] centerness targets in [0, 1], same shape.

  Returns:
    f32[...] per-element loss (nats), no reduction.
  """
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  if logits.shape != targets.shape:
    raise ValueError(
        f"centerness_loss: logits shape {logits.shape} != targets shape "
        f"{targets.shape}.")
  return _bce_with_logits(logits, targets)


def _squeeze_last(x: jax.Array, name: str, shape: tuple[int, ...]
                  ) -> jax.Array:
  """Accepts f32[B, P] or the model's f32[B, P, 1]."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == len(shape) + 1 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.shape != shape:
    raise ValueError(
        f"fcos_detection_losses: {name} has shape {x.shape}, expected {shape}"
        f" (or {shape + (1,)}).")
  return x


def fcos_detection_losses(
    cls_logits: jax.Array,
    box_ltrb: jax.Array,
    ctr_logits: jax.Array,
    targets: Mapping[str, jax.Array],
    points: jax.Array | None = None,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    cls_normalizer: str = "num_pos_plus_imgs",
) -> dict[str, jax.Array]:
  """FCOS losses of a batch with mmdet `FCOSHead.loss` normalization (AlignPS).

  * loss_cls: sigmoid focal loss summed over all B*P points (background
    included) divided by `cls_avg_factor`, chosen by `cls_normalizer`:
      "num_pos_plus_imgs" (default, AlignPS/mmdet 2.x): num_pos + B, which
        stays > 0 when there are no positives;
      "num_pos": max(num_pos, 1) (torchvision/newer mmdet style).
  * loss_box: GIoU loss over positives, each weighted by its centerness
    target, divided by the sum of those targets (`box_avg_factor`); both
    predicted and target ltrb are decoded around the point first, as in
    AlignPS. 0 when there are no positives.
  * loss_ctr: centerness BCE averaged over positives (sum / num_pos); 0 when
    there are no positives.

  Args:
    cls_logits: f32[B, P] (or f32[B, P, 1]) person logits.
    box_ltrb: f32[B, P, 4] predicted ltrb distances, in the same units as
      `targets["ltrb"]` (stride units with norm_on_bbox).
    ctr_logits: f32[B, P] (or f32[B, P, 1]) centerness logits.
    targets: dict with
      "pos": bool[B, P] positive points;
      "ltrb": f32[B, P, 4] target ltrb (read at positives only);
      "centerness": f32[B, P] centerness targets in [0, 1] (read at
        positives only).
    points: optional f32[P, 2] point coordinates (x, y). GIoU does not depend
      on a common translation, so any common point gives the same result,
      even pixel points with stride-unit ltrb as in AlignPS; None decodes
      around the origin (better float32 precision on large images).
    focal_alpha: focal alpha (AlignPS 0.25; < 0 disables).
    focal_gamma: focal gamma (AlignPS 2.0).
    cls_normalizer: "num_pos_plus_imgs" or "num_pos", see above.

  Returns:
    dict of f32[] scalars: loss_cls, loss_box, loss_ctr, num_pos,
    cls_avg_factor, box_avg_factor.
  """
  box_ltrb = jnp.asarray(box_ltrb, jnp.float32)
  if box_ltrb.ndim != 3 or box_ltrb.shape[-1] != 4:
    raise ValueError(
        f"fcos_detection_losses: box_ltrb has shape {box_ltrb.shape}, "
        "expected [B, P, 4].")
  b, p = box_ltrb.shape[:2]
  cls_logits = _squeeze_last(cls_logits, "cls_logits", (b, p))
  ctr_logits = _squeeze_last(ctr_logits, "ctr_logits", (b, p))
  for key in ("pos", "ltrb", "centerness"):
    if key not in targets:
      raise ValueError(
          f"fcos_detection_losses: targets has no {key!r} (keys: "
          f"{sorted(targets)}).")
  pos = jnp.asarray(targets["pos"], bool)
  tgt_ltrb = jnp.asarray(targets["ltrb"], jnp.float32)
  ctr_tgt = jnp.asarray(targets["centerness"], jnp.float32)
  for name, arr, shape in (("pos", pos, (b, p)), ("ltrb", tgt_ltrb, (b, p, 4)),
                           ("centerness", ctr_tgt, (b, p))):
    if arr.shape != shape:
      raise ValueError(
          f"fcos_detection_losses: targets[{name!r}] has shape {arr.shape}, "
          f"expected {shape}.")
  if cls_normalizer not in ("num_pos_plus_imgs", "num_pos"):
    raise ValueError(
        f"fcos_detection_losses: cls_normalizer={cls_normalizer!r}, expected "
        "'num_pos_plus_imgs' or 'num_pos'.")

  posf = pos.astype(jnp.float32)
  num_pos = jnp.sum(posf)

  focal = sigmoid_focal_loss(cls_logits, posf, focal_alpha, focal_gamma)
  if cls_normalizer == "num_pos_plus_imgs":
    cls_avg = num_pos + b
  else:
    cls_avg = jnp.maximum(num_pos, 1.0)
  loss_cls = jnp.sum(focal) / cls_avg

  if points is None:
    origin = jnp.zeros((p, 2), jnp.float32)
  else:
    origin = jnp.asarray(points, jnp.float32)
    if origin.shape != (p, 2):
      raise ValueError(
          f"fcos_detection_losses: points has shape {origin.shape}, expected "
          f"{(p, 2)}.")
  # Non-positive points get a harmless unit box so that no NaN/inf can reach
  # the gradient through the masked branch.
  unit = jnp.ones_like(tgt_ltrb)
  safe_tgt = jnp.where(pos[..., None], tgt_ltrb, unit)
  safe_pred = jnp.where(pos[..., None], box_ltrb, unit)
  # Targets at non-positive points may be anything (even NaN); zero them so
  # the masked branches stay finite in the backward pass.
  ctr_tgt = jnp.where(pos, ctr_tgt, 0.0)
  weights = ctr_tgt
  box_per_point = giou_loss(box_coder.ltrb_decode(origin, safe_pred),
                            box_coder.ltrb_decode(origin, safe_tgt), weights)
  box_avg = jnp.sum(weights)
  has_box = box_avg > 0
  loss_box = jnp.where(
      has_box, jnp.sum(box_per_point) / jnp.where(has_box, box_avg, 1.0), 0.0)

  ctr_per_point = jnp.where(pos, centerness_loss(ctr_logits, ctr_tgt), 0.0)
  loss_ctr = jnp.sum(ctr_per_point) / jnp.maximum(num_pos, 1.0)

  return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr,
          "num_pos": num_pos, "cls_avg_factor": cls_avg,
          "box_avg_factor": box_avg}
