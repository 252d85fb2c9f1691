"""Region proposals from RPN outputs, as one fixed-size jittable function
(torchvision `RegionProposalNetwork.filter_proposals`; py-faster-rcnn's
`proposal_layer` as an option).

For one image and one feature map:
  1. take the `pre_nms_top_k` anchors of highest objectness,
  2. decode their deltas (`ps_jax.ops.box_coder.decode`, RPN weights, exp
     clamp) and clip the boxes to the valid image region,
  3. drop boxes with a side < `min_size` pixels and, when `score_threshold`
     is set, boxes with sigmoid(objectness) < it,
  4. NMS at `nms_iou` (`ps_jax.ops.nms.nms`, torchvision's kept set) and keep
     the `post_nms_top_k` best.

torchvision removes small boxes after the top-k (so a small box takes a
top-k slot); py-faster-rcnn removes them before (`small_first=True`), which
is the Caffe OIM recipe (min size 16 px at the input scale). Objectness is
one logit per anchor: a 2-way softmax (Caffe) is the sigmoid of the
difference of its two logits, so the same order and probabilities.

Cost: NMS builds a k x k IoU matrix over k = `pre_nms_top_k` candidates
(12,000 in the papers' training recipes: 576 MB of float32 per image; keep
it to a few thousand on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ps_jax.ops import box_coder
from ps_jax.ops import boxes as boxes_lib
from ps_jax.ops import nms as nms_lib

Array = jax.Array


def proposals(anchors: Array, objectness: Array, deltas: Array,
              image_hw: Array, *, pre_nms_top_k: int, post_nms_top_k: int,
              nms_iou: float = 0.7, min_size: float = 1e-3,
              score_threshold: float | None = None, small_first: bool = False,
              weights=box_coder.RPN_WEIGHTS,
              clamp: float | None = box_coder.BBOX_XFORM_CLIP
              ) -> dict[str, Array]:
  """Proposals of one image.

  Args:
    anchors: f32[P, 4] xyxy pixels (`ps_jax.ops.anchors.grid_anchors`).
    objectness: f32[P] logits.
    deltas: f32[P, 4] (dx, dy, dw, dh) per anchor.
    image_hw: i32[2] valid (height, width) of the image, pixels; boxes are
      clipped to it.
    pre_nms_top_k: candidates kept before NMS (static).
    post_nms_top_k: proposals returned R (static).
    nms_iou: NMS IoU threshold.
    min_size: smallest side kept, pixels (torchvision 1e-3; Caffe OIM 16).
    score_threshold: minimum sigmoid(objectness), or None.
    small_first: drop small boxes before the top-k (py-faster-rcnn).
    weights, clamp: the box coder's weights and exp clamp.

  Returns:
    boxes f32[R, 4] by descending objectness (zeros where not valid),
    scores f32[R] the objectness logits (-inf where not valid), valid
    bool[R].
  """
  num = anchors.shape[0]
  if objectness.shape != (num,) or deltas.shape != (num, 4):
    raise ValueError(
        f"proposals: expected objectness f32[{num}] and deltas f32[{num}, 4] "
        f"for {num} anchors, got {objectness.shape} and {deltas.shape}.")
  if pre_nms_top_k < 1 or post_nms_top_k < 1:
    raise ValueError(f"proposals: expected top-k sizes >= 1, got "
                     f"{pre_nms_top_k} and {post_nms_top_k}.")
  objectness = objectness.astype(jnp.float32)
  height = image_hw[0].astype(jnp.float32)
  width = image_hw[1].astype(jnp.float32)

  def decode(a, d):
    return boxes_lib.clip_boxes(box_coder.decode(a, d, weights, clamp=clamp),
                                height, width)

  def big_enough(b):
    return ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)

  k = min(int(pre_nms_top_k), num)
  if small_first:
    ok_all = big_enough(decode(anchors, deltas))
    _, top = jax.lax.top_k(jnp.where(ok_all, objectness, -jnp.inf), k)
  else:
    _, top = jax.lax.top_k(objectness, k)
  scores = objectness[top]
  boxes = decode(anchors[top], deltas[top])
  ok = big_enough(boxes) & jnp.isfinite(scores)
  if small_first:
    ok = ok & ok_all[top]
  if score_threshold is not None:
    ok = ok & (jax.nn.sigmoid(scores) >= score_threshold)
  keep, keep_valid = nms_lib.nms(boxes, scores, iou_threshold=nms_iou,
                                 max_outputs=int(post_nms_top_k), valid=ok)
  return {"boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0),
          "scores": jnp.where(keep_valid, scores[keep], -jnp.inf),
          "valid": keep_valid}
