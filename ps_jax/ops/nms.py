"""Greedy non-maximum suppression with fixed-size outputs.

Conventions:
  * Boxes are f32[N, 4] xyxy in pixels (see ps_jax.ops.boxes); scores f32[N].
  * Same kept set as torchvision.ops.nms: candidates are visited by
    descending score (ties: lower input index first) and a box is suppressed
    when its IoU with an already kept box is strictly greater than
    `iou_threshold`. Pairs with an empty union have IoU 0, so zero-area boxes
    never suppress anything (torchvision gets NaN there, which compares false:
    the same outcome).
  * Outputs have a static size `max_outputs`: indices into the input in
    descending score order, padded with index 0 and a False validity flag.
  * Single class: no class offsets. `batched_nms` maps over *images*, unlike
    torchvision's class-aware `batched_nms`.

Cost: an IoU matrix over the k = min(N, pre_nms_top_k) best candidates
(O(k^2) memory, fine up to a few thousand) and a sequential loop over the
candidates that stops once `max_outputs` boxes are kept.
"""
import jax
import jax.numpy as jnp
from jax import lax

from ps_jax.ops.boxes import box_iou


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    score_threshold: float = -float("inf"),
    pre_nms_top_k: int | None = None,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of one image's boxes.

  Args:
    boxes: f32[N, 4] xyxy, pixels.
    scores: f32[N] scores (any monotone scale, e.g. probabilities).
    iou_threshold: suppress a box whose IoU with a kept higher-ranked box is
      > this value.
    max_outputs: static number of output slots M.
    score_threshold: boxes with score <= this value are dropped first
      (mmdet's `score_thr`; strict > keeps, like torchvision's detectors).
    pre_nms_top_k: if set, only the k best-scoring candidates enter NMS
      (mmdet's `nms_pre`); static.
    valid: optional bool[N]; False rows (padding) are never kept.

  Returns:
    (indices i32[M], keep_valid bool[M]): kept input indices by descending
    score, padded with 0 where keep_valid is False.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"nms: boxes must be f32[N, 4], got shape {boxes.shape}.")
  n = boxes.shape[0]
  if scores.shape != (n,):
    raise ValueError(
        f"nms: scores must be f32[N={n}], got shape {scores.shape}.")
  if valid is not None and jnp.shape(valid) != (n,):
    raise ValueError(
        f"nms: valid must be bool[N={n}], got shape {jnp.shape(valid)}.")
  if max_outputs < 0:
    raise ValueError(f"nms: max_outputs must be >= 0, got {max_outputs}.")
  if n == 0 or max_outputs == 0:
    return (jnp.zeros((max_outputs,), jnp.int32),
            jnp.zeros((max_outputs,), bool))

  ok = scores > score_threshold
  if valid is not None:
    ok = ok & jnp.asarray(valid, bool)
  # Stable sort on descending score with dropped boxes last: ties keep the
  # lower index first, as the greedy reference visits them.
  key = jnp.where(ok, -scores, jnp.inf)
  order = jnp.argsort(key, stable=True).astype(jnp.int32)  # [N]
  k = n if pre_nms_top_k is None else max(1, min(n, pre_nms_top_k))
  order = order[:k]  # [k]
  cand_ok = ok[order]  # [k]
  iou = box_iou(boxes[order], boxes[order])  # [k, k]
  later = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
  # overlaps[i, j]: kept candidate i would suppress later candidate j.
  overlaps = (iou > iou_threshold) & later  # [k, k]

  def cond(carry):
    i, _, num_kept = carry
    return (i < k) & (num_kept < max_outputs)

  def body(carry):
    i, keep, num_kept = carry
    keep_i = keep[i]
    keep = keep & ~(overlaps[i] & keep_i)
    return i + 1, keep, num_kept + keep_i.astype(jnp.int32)

  i_end, keep, _ = lax.while_loop(
      cond, body, (jnp.int32(0), cand_ok, jnp.int32(0)))
  # Candidates not yet visited when the loop stopped early are not kept:
  # the M slots are already full.
  keep = keep & (jnp.arange(k) < i_end)
  (pos,) = jnp.nonzero(keep, size=max_outputs, fill_value=0)
  num = jnp.sum(keep)
  keep_valid = jnp.arange(max_outputs) < num
  indices = jnp.where(keep_valid, order[pos], 0).astype(jnp.int32)
  return indices, keep_valid


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    *,
    iou_threshold: float,
    max_outputs: int,
    score_threshold: float = -float("inf"),
    pre_nms_top_k: int | None = None,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`nms` for each image of a batch (vmap over the leading axis).

  Args:
    boxes: f32[B, N, 4] xyxy, pixels.
    scores: f32[B, N].
    iou_threshold: as in `nms`.
    max_outputs: as in `nms`.
    score_threshold: as in `nms`.
    pre_nms_top_k: as in `nms`.
    valid: optional bool[B, N].

  Returns:
    (indices i32[B, M], keep_valid bool[B, M]), indices into each image's N.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(
        f"batched_nms: boxes must be f32[B, N, 4], got shape {boxes.shape}.")
  if valid is None:
    valid = jnp.ones(boxes.shape[:2], bool)

  def one(b, s, v):
    return nms(b, s, iou_threshold=iou_threshold, max_outputs=max_outputs,
               score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
               valid=v)

  return jax.vmap(one)(boxes, scores, valid)
