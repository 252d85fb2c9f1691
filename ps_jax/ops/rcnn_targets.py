"""Two-stage detector targets: IoU matching, balanced sampling, RPN anchor
targets and second-stage RoI sampling (torchvision `Matcher`,
`BalancedPositiveNegativeSampler`, `RegionProposalNetwork.assign_targets_to_
anchors` and `RoIHeads.select_training_samples`; py-faster-rcnn's
`anchor_target_layer` and `proposal_target_layer` where they differ).

Conventions:
  * Boxes are xyxy f32 pixels of the network input (`ps_jax.ops.boxes`). GT
    boxes are padded to G rows with a `gt_valid` mask; padded rows are never
    matched. Person ids `gt_pids` follow the data pipeline: >= 0 a labeled
    identity, -1 an unlabeled person.
  * Every output has a static size and is computed for one image; vmap over
    a batch (`jax.vmap(functools.partial(rpn_targets, ...))`).
  * Random choices take an explicit key and are a pure function of it: the
    same key samples the same anchors and RoIs on every device and host.

Matching (`match`). Each candidate (anchor or proposal) takes the GT of
highest IoU (ties: the lowest GT index). It is foreground if that IoU is
>= `high`, background if < `low`, ignored in between. With
`allow_low_quality`, every GT's best candidates (all candidates tied at that
GT's highest IoU) are made foreground with their own best GT, so every GT has
at least one positive anchor (torchvision's `allow_low_quality_matches`,
py-faster-rcnn's "fg label: for each gt, anchor with highest overlap"). One
deliberate difference: a GT whose highest IoU is 0 (it overlaps no candidate
at all) promotes nothing, where the references would promote every candidate.

Balanced sampling (`sample_balanced`). At most `round_down(budget *
positive_fraction)` positives and then enough negatives to fill the budget,
each drawn uniformly without replacement (torchvision's
`BalancedPositiveNegativeSampler`; py-faster-rcnn's RPN and RoI samplers draw
the same way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ps_jax.ops import box_coder
from ps_jax.ops import boxes as boxes_lib

Array = jax.Array

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


def match(iou: Array, gt_valid: Array, *, high: float, low: float,
          allow_low_quality: bool) -> tuple[Array, Array]:
  """Matches candidates to GT boxes by IoU.

  Args:
    iou: f32[G, N] IoU of every GT with every candidate.
    gt_valid: bool[G]; padded GTs are never matched.
    high: IoU >= high is foreground.
    low: IoU < low is background; [low, high) is ignored. low <= high.
    allow_low_quality: also make each GT's best candidates foreground.

  Returns:
    (gt_index i32[N], label i32[N]): the best valid GT of each candidate (0
    where there is none) and FOREGROUND / BACKGROUND / IGNORE. With no valid
    GT every candidate is BACKGROUND.
  """
  if not low <= high:
    raise ValueError(f"match: expected low <= high, got {low} and {high}.")
  iou = jnp.where(gt_valid[:, None], iou, -1.0)
  best = jnp.max(iou, axis=0)                       # [N]
  gt_index = jnp.argmax(iou, axis=0).astype(jnp.int32)
  label = jnp.where(best >= high, FOREGROUND,
                    jnp.where(best < low, BACKGROUND, IGNORE))
  if allow_low_quality:
    per_gt = jnp.max(iou, axis=1, keepdims=True)    # [G, 1]
    is_best = (iou == per_gt) & (per_gt > 0) & gt_valid[:, None]
    label = jnp.where(jnp.any(is_best, axis=0), FOREGROUND, label)
  return gt_index, label.astype(jnp.int32)


def _random_rank(key: Array, member: Array) -> Array:
  """Rank i32[N] of each member in a uniform random order of the members
  (0 for the first drawn); non-members rank after every member."""
  noise = jax.random.uniform(key, member.shape)
  order = jnp.argsort(jnp.where(member, noise, 2.0))
  return jnp.zeros_like(order).at[order].set(
      jnp.arange(member.shape[0], dtype=order.dtype))


def sample_balanced(key: Array, label: Array, *, budget: int,
                    positive_fraction: float) -> tuple[Array, Array]:
  """Draws a fixed budget of positives and negatives.

  Args:
    key: PRNG key.
    label: i32[N] FOREGROUND / BACKGROUND / IGNORE.
    budget: most candidates drawn (torchvision's batch_size_per_image).
    positive_fraction: at most int(budget * positive_fraction) positives.

  Returns:
    (positive bool[N], negative bool[N]) drawn masks; together they hold
    min(budget, #positives + #negatives) candidates.
  """
  if budget < 1 or not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(f"sample_balanced: expected budget >= 1 and a fraction "
                     f"in [0, 1], got {budget} and {positive_fraction}.")
  key_pos, key_neg = jax.random.split(key)
  is_pos, is_neg = label == FOREGROUND, label == BACKGROUND
  num_pos = jnp.minimum(jnp.sum(is_pos), int(budget * positive_fraction))
  num_neg = jnp.minimum(jnp.sum(is_neg), budget - num_pos)
  positive = is_pos & (_random_rank(key_pos, is_pos) < num_pos)
  negative = is_neg & (_random_rank(key_neg, is_neg) < num_neg)
  return positive, negative


def rpn_targets(key: Array, anchors: Array, gt_boxes: Array, gt_valid: Array,
                image_hw: Array, *, fg_iou: float = 0.7, bg_iou: float = 0.3,
                budget: int = 256, positive_fraction: float = 0.5,
                allowed_border: float | None = None,
                weights=box_coder.RPN_WEIGHTS) -> dict[str, Array]:
  """Training targets of a region proposal network for one image.

  Args:
    key: PRNG key of this image.
    anchors: f32[P, 4] every anchor (`ps_jax.ops.anchors.grid_anchors`).
    gt_boxes: f32[G, 4] xyxy; gt_valid: bool[G].
    image_hw: i32[2] the valid image region (height, width), pixels.
    fg_iou, bg_iou: IoU >= fg_iou positive, < bg_iou negative (0.7 / 0.3).
    budget, positive_fraction: anchors drawn per image and their positive
      share (256, 0.5).
    allowed_border: None keeps every anchor (torchvision); a number ignores
      anchors reaching more than that many pixels outside the image
      (py-faster-rcnn's `RPN allowed_border = 0`).
    weights: the box coder's (wx, wy, ww, wh).

  Returns:
    positive bool[P], negative bool[P] (the drawn anchors) and deltas
    f32[P, 4], each anchor's regression target toward its best GT (zeros
    where there is no valid GT).
  """
  iou = boxes_lib.box_iou(gt_boxes, anchors)          # [G, P]
  gt_index, label = match(iou, gt_valid, high=fg_iou, low=bg_iou,
                          allow_low_quality=True)
  if allowed_border is not None:
    h = image_hw[0].astype(jnp.float32)
    w = image_hw[1].astype(jnp.float32)
    inside = ((anchors[:, 0] >= -allowed_border)
              & (anchors[:, 1] >= -allowed_border)
              & (anchors[:, 2] <= w + allowed_border)
              & (anchors[:, 3] <= h + allowed_border))
    label = jnp.where(inside, label, IGNORE)
  positive, negative = sample_balanced(key, label, budget=budget,
                                       positive_fraction=positive_fraction)
  deltas = box_coder.encode(anchors, _nonempty(gt_boxes[gt_index], anchors),
                            weights)
  deltas = jnp.where(positive[:, None], deltas, 0.0)
  return {"positive": positive, "negative": negative, "deltas": deltas}


_UNIT_BOX = (0.0, 0.0, 1.0, 1.0)


def _nonempty(boxes: Array, fallback: Array | None = None) -> Array:
  """`boxes` f32[N, 4], with rows of zero width or height replaced by
  `fallback` (default the unit box): keeps log() finite in the targets of
  rows that are masked out anyway."""
  if fallback is None:
    fallback = jnp.asarray(_UNIT_BOX, jnp.float32)
  ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return jnp.where(ok[:, None], boxes, fallback)


def sample_rois(key: Array, proposals: Array, proposal_valid: Array,
                gt_boxes: Array, gt_pids: Array, gt_valid: Array, *,
                num_samples: int = 128, fg_fraction: float = 0.25,
                fg_iou: float = 0.5, bg_iou_high: float = 0.5,
                bg_iou_low: float = 0.0, add_gt: bool = True,
                weights=box_coder.ROI_HEADS_WEIGHTS) -> dict[str, Array]:
  """Second-stage training RoIs of one image, with their targets.

  The GT boxes are appended to the proposals (`add_gt`), every candidate is
  matched to its best GT (foreground: IoU >= fg_iou; background: IoU in
  [bg_iou_low, bg_iou_high); otherwise ignored; no low-quality matches), and
  `num_samples` RoIs are drawn with at most int(num_samples * fg_fraction)
  foreground. The Caffe OIM recipe is the default (128, 0.25, bg [0, 0.5));
  torchvision's person-search baselines use fg_fraction 0.5.

  Slots hold the drawn foreground RoIs first, then the background ones, each
  group in candidate order (the proposals' order, then the GTs'); unused
  slots at the end have `valid` False. This fixed order is the order of the
  re-ID samples of the OIM loss.

  Args:
    key: PRNG key of this image.
    proposals: f32[R, 4] xyxy; proposal_valid: bool[R].
    gt_boxes: f32[G, 4]; gt_pids: i32[G] (-1 unlabeled); gt_valid: bool[G].
    num_samples: S slots.
    fg_fraction, fg_iou, bg_iou_high, bg_iou_low: the sampling rule above.
    add_gt: append the GT boxes to the candidates.
    weights: the box coder's (wx, wy, ww, wh) for the regression targets.

  Returns:
    rois f32[S, 4]; valid bool[S]; foreground bool[S]; pids i32[S] (the
    matched GT's id for foreground RoIs, -2 for background and empty slots);
    gt_boxes f32[S, 4] (the matched GT, zeros for background); deltas
    f32[S, 4] regression targets (zeros for background).
  """
  if not 0.0 <= bg_iou_low <= bg_iou_high <= fg_iou:
    raise ValueError(
        f"sample_rois: expected 0 <= bg_iou_low <= bg_iou_high <= fg_iou, got "
        f"{bg_iou_low}, {bg_iou_high} and {fg_iou}.")
  if add_gt:
    candidates = jnp.concatenate([proposals, gt_boxes], axis=0)
    cand_valid = jnp.concatenate([proposal_valid, gt_valid], axis=0)
  else:
    candidates, cand_valid = proposals, proposal_valid
  iou = boxes_lib.box_iou(gt_boxes, candidates)       # [G, R(+G)]
  gt_index, _ = match(iou, gt_valid, high=fg_iou, low=bg_iou_high,
                      allow_low_quality=False)
  best = jnp.max(jnp.where(gt_valid[:, None], iou, -1.0), axis=0)
  best = jnp.maximum(best, 0.0)  # no valid GT: IoU 0, background
  label = jnp.where(best >= fg_iou, FOREGROUND,
                    jnp.where((best < bg_iou_high) & (best >= bg_iou_low),
                              BACKGROUND, IGNORE))
  label = jnp.where(cand_valid, label, IGNORE)
  positive, negative = sample_balanced(key, label, budget=num_samples,
                                       positive_fraction=fg_fraction)
  # Foreground first, then background, each in candidate order.
  group = jnp.where(positive, 0, jnp.where(negative, 1, 2))
  order = jnp.argsort(group, stable=True)[:num_samples]
  valid = (positive | negative)[order]
  if order.shape[0] < num_samples:  # fewer candidates than slots
    pad = num_samples - order.shape[0]
    order = jnp.pad(order, (0, pad))
    valid = jnp.pad(valid, (0, pad))
  fg = positive[order] & valid
  rois = jnp.where(valid[:, None], candidates[order], 0.0)
  matched_gt = gt_index[order]
  matched = jnp.where(fg[:, None], gt_boxes[matched_gt], 0.0)
  deltas = box_coder.encode(_nonempty(rois), _nonempty(matched), weights)
  deltas = jnp.where(fg[:, None], deltas, 0.0)
  pids = jnp.where(fg, gt_pids[matched_gt], -2).astype(jnp.int32)
  return {"rois": rois, "valid": valid, "foreground": fg, "pids": pids,
          "gt_boxes": matched, "deltas": deltas}
