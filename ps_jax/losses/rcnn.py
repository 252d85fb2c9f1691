"""Faster R-CNN losses: the RPN's and the box head's, with the reference
normalisations (torchvision `rpn.py` / `roi_heads.fastrcnn_loss`; py-faster-
rcnn's `SmoothL1Loss` with sigma).

Conventions:
  * Static shapes with masks; every function reduces to f32[] scalars.
  * Smooth L1 with transition `beta` (torchvision's `smooth_l1_loss(beta)`):
    0.5 x^2 / beta for |x| < beta, |x| - 0.5 beta otherwise. Caffe's
    `sigma` is beta = 1 / sigma^2: the RPN's sigma 3 is beta 1/9, the box
    head's sigma 1 is beta 1.
  * RPN: binary cross-entropy of the objectness logit over the drawn
    anchors, averaged over them; smooth L1 of the positive anchors' deltas
    summed and divided by the number of drawn anchors (positive and
    negative), as both references do.
  * Box head: softmax cross-entropy over the drawn RoIs, averaged; smooth L1
    of the foreground RoIs' class-specific deltas summed and divided by the
    number of drawn RoIs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def smooth_l1(x: Array, beta: float) -> Array:
  """Elementwise smooth L1 of differences `x` (beta = 0: plain L1)."""
  ax = jnp.abs(x)
  if beta <= 0:
    return ax
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def rpn_losses(objectness: Array, deltas: Array, positive: Array,
               negative: Array, target_deltas: Array, *,
               beta: float = 1.0 / 9.0) -> dict[str, Array]:
  """RPN objectness and box losses.

  Args:
    objectness: f32[..., P] logits.
    deltas: f32[..., P, 4] predicted deltas.
    positive, negative: bool[..., P] the drawn anchors
      (`ps_jax.ops.rcnn_targets.rpn_targets`).
    target_deltas: f32[..., P, 4] their regression targets.
    beta: smooth-L1 transition (1/9: sigma 3).

  Returns:
    loss_objectness and loss_rpn_box, f32[] each; leading dims (a batch) are
    pooled: the means run over every drawn anchor of every image.
  """
  drawn = (positive | negative).astype(jnp.float32)
  num = jnp.maximum(jnp.sum(drawn), 1.0)
  logits = objectness.astype(jnp.float32)
  labels = positive.astype(jnp.float32)
  bce = (jnp.maximum(logits, 0.0) - logits * labels
         + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  box = smooth_l1(deltas.astype(jnp.float32) - target_deltas, beta)
  box = jnp.sum(jnp.where(positive[..., None], box, 0.0))
  return {"loss_objectness": jnp.sum(bce * drawn) / num,
          "loss_rpn_box": box / num}


def box_head_losses(class_logits: Array, box_deltas: Array, labels: Array,
                    valid: Array, target_deltas: Array, *,
                    beta: float = 1.0) -> dict[str, Array]:
  """Second-stage classification and regression losses.

  Args:
    class_logits: f32[..., S, C] logits, class 0 background.
    box_deltas: f32[..., S, C, 4] class-specific deltas.
    labels: i32[..., S] class of each RoI (0 background).
    valid: bool[..., S] drawn RoIs (False for empty slots).
    target_deltas: f32[..., S, 4] targets toward the matched GT.
    beta: smooth-L1 transition (1: Caffe's sigma 1; torchvision's
      fastrcnn_loss uses 1/9).

  Returns:
    loss_cls and loss_box, f32[] each, averaged over the drawn RoIs of the
    whole batch.
  """
  weight = valid.astype(jnp.float32)
  num = jnp.maximum(jnp.sum(weight), 1.0)
  logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  own = jnp.take_along_axis(box_deltas.astype(jnp.float32),
                            labels[..., None, None], axis=-2)[..., 0, :]
  box = smooth_l1(own - target_deltas, beta)
  fg = valid & (labels > 0)
  box = jnp.sum(jnp.where(fg[..., None], box, 0.0))
  return {"loss_cls": jnp.sum(nll * weight) / num, "loss_box": box / num}
