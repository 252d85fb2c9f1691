"""Box format conversions, areas and (generalized) IoU.

Conventions:
  * Boxes are f32[..., 4] and every function broadcasts over the leading dims.
  * `xyxy` is [x1, y1, x2, y2] in absolute pixels of the network input, with
    x1 <= x2 and y1 <= y2; `xywh` is [x1, y1, w, h]; `cxcywh` is
    [cx, cy, w, h]. TFDS `BBoxFeature` stores normalized [ymin, xmin, ymax,
    xmax] in [0, 1] (`yxyx_norm`).
  * Coordinates are continuous: a box's width is x2 - x1 (no "+1" as in old
    Detectron/MATLAB code), matching torchvision.ops and mmdet >= 2.0.
  * An inverted box (x2 < x1 or y2 < y1) has area 0, never a negative area.
  * IoU/GIoU are defined for degenerate inputs: where the union (or the
    enclosing box) has zero area the ratio is taken as 0 instead of NaN, and the
    double-`where` pattern keeps gradients finite there.

Every function accepts NumPy or JAX arrays. If no argument is a `jax.Array`
(or tracer) the computation runs in NumPy and returns NumPy, so the host-side
data pipeline, the numpy evaluation protocols and the dataset builders can
call the same code without touching the accelerator; otherwise it runs in
`jax.numpy` and is jit, vmap and grad friendly. Boxes are computed in float32,
except that a float64 NumPy array of boxes stays float64 (the dataset builders
convert annotation files in float64, so the boxes they store do not depend on
a float32 rounding of the raw coordinates).
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # np.ndarray | jax.Array


def _xp(*args: Any):
  """Array namespace: jax.numpy if any argument is a JAX array, else numpy."""
  if any(isinstance(a, jax.Array) for a in args):
    return jnp
  return np


def _as_boxes(xp, boxes: Array, name: str = "boxes") -> Array:
  keep_f64 = (xp is np and isinstance(boxes, np.ndarray)
              and boxes.dtype == np.float64)
  boxes = xp.asarray(boxes, dtype=np.float64 if keep_f64 else xp.float32)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(
        f"{name}: expected an array of shape [..., 4], got shape "
        f"{tuple(boxes.shape)}.")
  return boxes


def _unstack(boxes: Array) -> tuple[Array, Array, Array, Array]:
  return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _safe_div(xp, num: Array, den: Array) -> Array:
  """num / den where den > 0, else 0; gradient-safe (double where)."""
  ok = den > 0
  return xp.where(ok, num / xp.where(ok, den, 1.0), 0.0)


def xyxy_to_xywh(boxes: Array) -> Array:
  """[x1, y1, x2, y2] -> [x1, y1, w, h].

  Args:
    boxes: f32[..., 4] xyxy, pixels.

  Returns:
    f32[..., 4] xywh, pixels.
  """
  xp = _xp(boxes)
  x1, y1, x2, y2 = _unstack(_as_boxes(xp, boxes))
  return xp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def xywh_to_xyxy(boxes: Array) -> Array:
  """[x1, y1, w, h] -> [x1, y1, x2, y2].

  Args:
    boxes: f32[..., 4] xywh, pixels.

  Returns:
    f32[..., 4] xyxy, pixels.
  """
  xp = _xp(boxes)
  x1, y1, w, h = _unstack(_as_boxes(xp, boxes))
  return xp.stack([x1, y1, x1 + w, y1 + h], axis=-1)


def xyxy_to_cxcywh(boxes: Array) -> Array:
  """[x1, y1, x2, y2] -> [cx, cy, w, h].

  Args:
    boxes: f32[..., 4] xyxy, pixels.

  Returns:
    f32[..., 4] centre and size, pixels.
  """
  xp = _xp(boxes)
  x1, y1, x2, y2 = _unstack(_as_boxes(xp, boxes))
  return xp.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1],
                  axis=-1)


def cxcywh_to_xyxy(boxes: Array) -> Array:
  """[cx, cy, w, h] -> [x1, y1, x2, y2].

  Args:
    boxes: f32[..., 4] centre and size, pixels.

  Returns:
    f32[..., 4] xyxy, pixels.
  """
  xp = _xp(boxes)
  cx, cy, w, h = _unstack(_as_boxes(xp, boxes))
  return xp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                  axis=-1)


def _hw(xp, height: Array, width: Array) -> tuple[Array, Array]:
  # [..., 1] so that per-image sizes f32[B] broadcast against boxes [B, N, 4]
  # after the caller's own expand; scalars stay scalars.
  h = xp.asarray(height, dtype=xp.float32)
  w = xp.asarray(width, dtype=xp.float32)
  return h[..., None], w[..., None]


def yxyx_norm_to_xyxy_px(boxes: Array, height: Array, width: Array) -> Array:
  """TFDS normalized [ymin, xmin, ymax, xmax] -> absolute pixel xyxy.

  Args:
    boxes: f32[..., 4] normalized yxyx in [0, 1] (TFDS `BBoxFeature`).
    height: image height in pixels; a scalar or an array broadcastable to
      `boxes.shape[:-1]` (e.g. f32[B, 1] for boxes f32[B, N, 4]).
    width: image width in pixels, same shape rules as `height`.

  Returns:
    f32[..., 4] xyxy, absolute pixels.
  """
  xp = _xp(boxes, height, width)
  ymin, xmin, ymax, xmax = _unstack(_as_boxes(xp, boxes))
  h, w = _hw(xp, height, width)
  scale = xp.concatenate([w, h, w, h], axis=-1)  # [..., 4]
  return xp.stack([xmin, ymin, xmax, ymax], axis=-1) * scale


def xyxy_px_to_yxyx_norm(boxes: Array, height: Array, width: Array) -> Array:
  """Absolute pixel xyxy -> TFDS normalized [ymin, xmin, ymax, xmax].

  Inverse of `yxyx_norm_to_xyxy_px`. Values are not clipped to [0, 1]; clip
  the boxes first (`clip_boxes`) if the TFDS feature must accept them.

  Args:
    boxes: f32[..., 4] xyxy, absolute pixels.
    height: image height in pixels (> 0); scalar or broadcastable to
      `boxes.shape[:-1]`.
    width: image width in pixels (> 0), same shape rules as `height`.

  Returns:
    f32[..., 4] normalized yxyx.
  """
  xp = _xp(boxes, height, width)
  x1, y1, x2, y2 = _unstack(_as_boxes(xp, boxes))
  h, w = _hw(xp, height, width)
  scale = xp.concatenate([h, w, h, w], axis=-1)  # [..., 4]
  return xp.stack([y1, x1, y2, x2], axis=-1) / scale


def clip_boxes(boxes: Array, height: Array, width: Array) -> Array:
  """Clips xyxy boxes to the image [0, width] x [0, height].

  Args:
    boxes: f32[..., 4] xyxy, pixels.
    height: image height in pixels; scalar or broadcastable to
      `boxes.shape[:-1]`.
    width: image width in pixels, same shape rules as `height`.

  Returns:
    f32[..., 4] xyxy, pixels, each coordinate within the image.
  """
  xp = _xp(boxes, height, width)
  x1, y1, x2, y2 = _unstack(_as_boxes(xp, boxes))
  h = xp.asarray(height, dtype=xp.float32)
  w = xp.asarray(width, dtype=xp.float32)
  return xp.stack([xp.clip(x1, 0.0, w), xp.clip(y1, 0.0, h),
                   xp.clip(x2, 0.0, w), xp.clip(y2, 0.0, h)], axis=-1)


def box_area(boxes: Array) -> Array:
  """Area of xyxy boxes; 0 for degenerate or inverted boxes.

  Args:
    boxes: f32[..., 4] xyxy, pixels.

  Returns:
    f32[...] area in pixels^2, >= 0.
  """
  xp = _xp(boxes)
  x1, y1, x2, y2 = _unstack(_as_boxes(xp, boxes))
  return xp.maximum(x2 - x1, 0.0) * xp.maximum(y2 - y1, 0.0)


def _pairwise_parts(xp, a: Array, b: Array):
  """Intersection, union and enclosing area for all pairs: each f32[N, M]."""
  a = _as_boxes(xp, a, "a")
  b = _as_boxes(xp, b, "b")
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(
        f"box_iou: expected a f32[N, 4] and b f32[M, 4], got shapes "
        f"{tuple(a.shape)} and {tuple(b.shape)}.")
  a_ = a[:, None, :]  # [N, 1, 4]
  b_ = b[None, :, :]  # [1, M, 4]
  lt = xp.maximum(a_[..., :2], b_[..., :2])
  rb = xp.minimum(a_[..., 2:], b_[..., 2:])
  wh = xp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]  # [N, M]
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  elt = xp.minimum(a_[..., :2], b_[..., :2])
  erb = xp.maximum(a_[..., 2:], b_[..., 2:])
  ewh = xp.maximum(erb - elt, 0.0)
  enclose = ewh[..., 0] * ewh[..., 1]  # [N, M]
  return inter, union, enclose


def box_iou(a: Array, b: Array) -> Array:
  """IoU of every box in `a` with every box in `b` (torchvision.ops.box_iou).

  Pairs whose union is empty (both boxes zero-area) get IoU 0.

  Args:
    a: f32[N, 4] xyxy, pixels (N may be 0).
    b: f32[M, 4] xyxy, pixels, same frame (M may be 0).

  Returns:
    f32[N, M] IoU in [0, 1].
  """
  xp = _xp(a, b)
  inter, union, _ = _pairwise_parts(xp, a, b)
  return _safe_div(xp, inter, union)


def generalized_box_iou(a: Array, b: Array) -> Array:
  """Generalized IoU of all pairs (torchvision.ops.generalized_box_iou).

  GIoU = IoU - (C - U) / C with C the smallest enclosing box area and U the
  union. Where C is 0 (both boxes the same point or collinear) the penalty
  term is taken as 0.

  Args:
    a: f32[N, 4] xyxy, pixels (N may be 0).
    b: f32[M, 4] xyxy, pixels, same frame (M may be 0).

  Returns:
    f32[N, M] GIoU in [-1, 1].
  """
  xp = _xp(a, b)
  inter, union, enclose = _pairwise_parts(xp, a, b)
  return (_safe_div(xp, inter, union)
          - _safe_div(xp, enclose - union, enclose))


def _paired_parts(xp, a: Array, b: Array):
  a = _as_boxes(xp, a, "a")
  b = _as_boxes(xp, b, "b")
  lt = xp.maximum(a[..., :2], b[..., :2])
  rb = xp.minimum(a[..., 2:], b[..., 2:])
  wh = xp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a) + box_area(b) - inter
  elt = xp.minimum(a[..., :2], b[..., :2])
  erb = xp.maximum(a[..., 2:], b[..., 2:])
  ewh = xp.maximum(erb - elt, 0.0)
  enclose = ewh[..., 0] * ewh[..., 1]
  return inter, union, enclose


def paired_iou(a: Array, b: Array, eps: float = 1e-7) -> Array:
  """IoU of matched pairs a[i] <-> b[i].

  Computed as inter / (union + eps) (the mmdet/torchvision loss form), so two
  zero-area boxes give 0 and gradients stay finite.

  Args:
    a: f32[..., 4] xyxy, pixels (e.g. predictions).
    b: f32[..., 4] xyxy, pixels, same frame; broadcastable against `a`.
    eps: added to the union, pixels^2.

  Returns:
    f32[...] IoU in [0, 1].
  """
  xp = _xp(a, b)
  inter, union, _ = _paired_parts(xp, a, b)
  return inter / (union + eps)


def paired_giou(a: Array, b: Array, eps: float = 1e-7) -> Array:
  """Generalized IoU of matched pairs a[i] <-> b[i].

  GIoU = inter / (U + eps) - (C - U) / (C + eps), C the enclosing box area and
  U the union; finite value and gradients for zero-area or identical-point
  boxes.

  Args:
    a: f32[..., 4] xyxy, pixels (e.g. predictions).
    b: f32[..., 4] xyxy, pixels, same frame; broadcastable against `a`.
    eps: added to the denominators, pixels^2.

  Returns:
    f32[...] GIoU in [-1, 1].
  """
  xp = _xp(a, b)
  inter, union, enclose = _paired_parts(xp, a, b)
  return inter / (union + eps) - (enclose - union) / (enclose + eps)
