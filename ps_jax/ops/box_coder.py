"""Box coders: boxes <-> regression targets, for FCOS and R-CNN heads.

Conventions:
  * Boxes are xyxy f32[..., 4] pixels with continuous coordinates: a box's
    width is x2 - x1, no "+1" (`ps_jax.ops.boxes`). Every function is
    `jax.numpy`, float32, shape-static and jit/vmap/grad friendly; leading
    dims broadcast.
  * LTRB coder (FCOS, mmdet `distance2bbox` / `bbox2distance`): a box seen
    from a point (x, y) is its distances to the four sides
    [left, top, right, bottom] = [x - x1, y - y1, x2 - x, y2 - y], negative
    where the point is outside the box. With per-point strides (mmdet
    `norm_on_bbox=True`) the distances are in units of the point's stride:
    encode divides by it, decode multiplies by it.
  * Delta coder (R-CNN, torchvision `BoxCoder` with
    `bbox_xform_clip = log(1000 / 16)`): a target box relative to a
    reference box (an anchor or a proposal) is
      dx = wx * (tcx - rcx) / rw,  dy = wy * (tcy - rcy) / rh,
      dw = ww * log(tw / rw),      dh = wh * log(th / rh),
    with widths w = x2 - x1 and centres cx = x1 + 0.5 * w. Decoding divides
    by the weights, clamps dw and dh from above at `clamp` before the exp and
    returns [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h].
    torchvision's Faster R-CNN uses `RPN_WEIGHTS` for the RPN and
    `ROI_HEADS_WEIGHTS` for the box head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# torchvision `BoxCoder.bbox_xform_clip`: exp(dw) never exceeds 1000 / 16.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# torchvision fasterrcnn_resnet50_fpn: RPN and RoI-head weights.
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_HEADS_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _stride_scale(strides: Array | None) -> Array | None:
  """Strides f32[...] -> f32[..., 1] to scale [..., 4] distances, or None."""
  if strides is None:
    return None
  return jnp.asarray(strides, jnp.float32)[..., None]


def ltrb_encode(points: Array, boxes_xyxy: Array,
                strides: Array | None = None) -> Array:
  """Distances from points to the sides of boxes (mmdet `bbox2distance`).

  Args:
    points: f32[..., 2] (x, y) points, pixels; broadcastable against
      `boxes_xyxy[..., :2]`.
    boxes_xyxy: f32[..., 4] boxes, pixels.
    strides: optional f32[...] stride of each point, pixels, broadcastable
      against `points[..., 0]`; the distances are then in stride units.

  Returns:
    f32[..., 4] [left, top, right, bottom], pixels (or strides); negative
    where the point lies outside the box.
  """
  points = jnp.asarray(points, jnp.float32)
  boxes_xyxy = jnp.asarray(boxes_xyxy, jnp.float32)
  x, y = points[..., 0], points[..., 1]
  ltrb = jnp.stack([x - boxes_xyxy[..., 0], y - boxes_xyxy[..., 1],
                    boxes_xyxy[..., 2] - x, boxes_xyxy[..., 3] - y], axis=-1)
  scale = _stride_scale(strides)
  return ltrb if scale is None else ltrb / scale


def ltrb_decode(points: Array, ltrb: Array,
                strides: Array | None = None) -> Array:
  """Boxes from distances to their sides (mmdet `distance2bbox`).

  No clipping to the image is applied (`ps_jax.ops.boxes.clip_boxes`).

  Args:
    points: f32[..., 2] (x, y) points, pixels; broadcastable against
      `ltrb[..., :2]`.
    ltrb: f32[..., 4] [left, top, right, bottom] distances, pixels, or
      stride units with `strides`.
    strides: optional f32[...] stride of each point, pixels, broadcastable
      against `points[..., 0]`; the distances are multiplied by it first.

  Returns:
    f32[..., 4] xyxy boxes, pixels.
  """
  points = jnp.asarray(points, jnp.float32)
  ltrb = jnp.asarray(ltrb, jnp.float32)
  scale = _stride_scale(strides)
  if scale is not None:
    ltrb = ltrb * scale
  x, y = points[..., 0], points[..., 1]
  return jnp.stack([x - ltrb[..., 0], y - ltrb[..., 1],
                    x + ltrb[..., 2], y + ltrb[..., 3]], axis=-1)


def _size_centre(boxes: Array) -> tuple[Array, Array, Array, Array]:
  """(w, h, cx, cy), each f32[...], of xyxy boxes f32[..., 4]."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return w, h, boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h


def _weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
  if len(weights) != 4:
    raise ValueError(f"weights: expected (wx, wy, ww, wh), got {weights!r}.")
  wx, wy, ww, wh = (float(v) for v in weights)
  return wx, wy, ww, wh


def encode(reference_xyxy: Array, target_xyxy: Array,
           weights: Sequence[float]) -> Array:
  """R-CNN regression targets of boxes relative to references.

  torchvision `BoxCoder(weights).encode_single(target_xyxy, reference_xyxy)`
  (torchvision calls the targets `reference_boxes` and the references
  `proposals`).

  Args:
    reference_xyxy: f32[..., 4] anchors or proposals, pixels; widths and
      heights must be > 0.
    target_xyxy: f32[..., 4] boxes to encode (e.g. the matched GT),
      broadcastable against `reference_xyxy`; widths and heights must be
      > 0 (log(0) is -inf).
    weights: (wx, wy, ww, wh), e.g. `ROI_HEADS_WEIGHTS`; static.

  Returns:
    f32[..., 4] (dx, dy, dw, dh).
  """
  wx, wy, ww, wh = _weights(weights)
  ref = jnp.asarray(reference_xyxy, jnp.float32)
  tgt = jnp.asarray(target_xyxy, jnp.float32)
  rw, rh, rcx, rcy = _size_centre(ref)
  tw, th, tcx, tcy = _size_centre(tgt)
  return jnp.stack([wx * (tcx - rcx) / rw, wy * (tcy - rcy) / rh,
                    ww * jnp.log(tw / rw), wh * jnp.log(th / rh)], axis=-1)


def decode(reference_xyxy: Array, deltas: Array, weights: Sequence[float],
           clamp: float | None = BBOX_XFORM_CLIP) -> Array:
  """Boxes from R-CNN regression deltas relative to references.

  torchvision `BoxCoder(weights, bbox_xform_clip=clamp).decode_single(
  deltas, reference_xyxy)`. For class-specific deltas f32[N, K, 4] pass
  references f32[N, 1, 4].

  Args:
    reference_xyxy: f32[..., 4] anchors or proposals, pixels.
    deltas: f32[..., 4] (dx, dy, dw, dh), broadcastable against
      `reference_xyxy`.
    weights: (wx, wy, ww, wh) used to encode them; static.
    clamp: upper bound of dw / ww and dh / wh before the exp (default
      log(1000 / 16), torchvision's); None for no bound.

  Returns:
    f32[..., 4] xyxy boxes, pixels (not clipped to the image).
  """
  wx, wy, ww, wh = _weights(weights)
  ref = jnp.asarray(reference_xyxy, jnp.float32)
  deltas = jnp.asarray(deltas, jnp.float32)
  rw, rh, rcx, rcy = _size_centre(ref)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw, dh = deltas[..., 2] / ww, deltas[..., 3] / wh
  if clamp is not None:
    dw = jnp.minimum(dw, clamp)
    dh = jnp.minimum(dh, clamp)
  cx = dx * rw + rcx
  cy = dy * rh + rcy
  half_w = 0.5 * (jnp.exp(dw) * rw)
  half_h = 0.5 * (jnp.exp(dh) * rh)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h],
                   axis=-1)
