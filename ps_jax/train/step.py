"""The AlignPS train step: one pure function, jitted once per scale bucket.

    train_step(state, batch) -> (state, metrics)

model.apply -> FCOS targets -> detection losses -> re-ID samples -> focal
OIM + triplet -> gradients -> optax -> OIM memory update. Nothing here knows
about devices: the loop jits it with the batch sharded over "data" and the
state replicated, and XLA inserts the collectives. Because the memory update
reads the embeddings of the *global* batch, every device ends the step with the
same lookup table and queue, and 1 device and 8 devices give the same result.

Re-ID samples. Every positive point is a re-ID sample (AlignPS §2.4). To keep
shapes static, the positive points of the global batch are packed, in order
(image, then level, then point), into `max_reid_samples` slots with a valid
mask; positives beyond that budget are dropped and counted in the metrics
(`reid_overflow`). With centre sampling of radius r strides, a box has at most
(2r + 1)^2 positives on its level, which sizes the default budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ps_jax.losses import fcos as fcos_losses
from ps_jax.losses import oim
from ps_jax.losses import triplet as triplet_losses
from ps_jax.ops import assign
from ps_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss settings (`config.loss`); see configs/common.py:alignps_loss."""
  regress_ranges: Sequence[Sequence[float]]
  center_sample_radius: float | None = 1.5
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  oim_queue_size: int = 5000
  oim_lut_scale: float = 10.0     # AlignPS: scores *= 10 (temperature 0.1)
  oim_queue_scale: float = 10.0   # AlignPS PRW: 10 for the queue, 15 for LUT
  oim_momentum: float = 0.5
  oim_normalize_lut: bool = False  # AlignPS CUHK leaves the LUT unnormalized
  oim_queue_dims: int | None = 64  # AlignPS CUHK writes 64 of 256 dims
  oim_focal_gamma: float = 2.0
  triplet: bool = True
  triplet_margin: float = 0.3
  w_cls: float = 1.0
  w_box: float = 1.0
  w_ctr: float = 1.0
  w_oim: float = 1.0
  w_triplet: float = 1.0

  @classmethod
  def from_config(cls, cfg: Any) -> "LossConfig":
    d = dict(cfg)
    d["regress_ranges"] = tuple(tuple(float(v) for v in r)
                                for r in d["regress_ranges"])
    return cls(**d)


def max_reid_samples(batch_size: int, max_boxes: int,
                     center_sample_radius: float | None) -> int:
  """Slots for positive points: the most a batch can have with centre
  sampling, (2r + 1)^2 per box (rounded up), or 64 per box without it."""
  if center_sample_radius is None:
    per_box = 64
  else:
    side = int(2 * center_sample_radius) + 2
    per_box = side * side
  return batch_size * max_boxes * per_box


def pack_positives(pos: jax.Array, max_samples: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Indices of the first `max_samples` positives, in order.

  Args:
    pos: bool[M] positive flags over the flattened (image, point) axis.
    max_samples: static number of slots S.
  Returns:
    idx i32[S] indices into M (0 for empty slots), valid bool[S], and the
    number of positives that did not fit, i32[].
  """
  num = jnp.sum(pos.astype(jnp.int32))
  # A stable sort of "not positive" brings positives first, in their order.
  order = jnp.argsort(jnp.logical_not(pos), stable=True)
  if order.shape[0] < max_samples:
    order = jnp.pad(order, (0, max_samples - order.shape[0]))
  idx = order[:max_samples]
  valid = jnp.arange(max_samples) < num
  overflow = jnp.maximum(num - max_samples, 0)
  return jnp.where(valid, idx, 0), valid, overflow


def compute_losses(params: Any, model_state: Any, memory: oim.OIMMemory,
                   batch: dict[str, jax.Array], *, model: Any,
                   loss_cfg: LossConfig, max_samples: int
                   ) -> tuple[jax.Array, dict[str, Any]]:
  """Total loss and auxiliaries (metrics, packed re-ID samples)."""
  out = model.apply({"params": params, **model_state}, batch["image"],
                    train=True)
  ranges = jnp.asarray(loss_cfg.regress_ranges, jnp.float32)
  targets = assign.batched_fcos_targets(
      out["points"], out["strides"], out["levels"], batch["boxes_xyxy"],
      batch["pids"], batch["boxes_valid"], ranges,
      center_sample_radius=loss_cfg.center_sample_radius, norm_by_stride=True)
  det = fcos_losses.fcos_detection_losses(
      out["cls_logits"][..., 0], out["box_ltrb"], out["ctr_logits"][..., 0],
      targets, out["points"], focal_alpha=loss_cfg.focal_alpha,
      focal_gamma=loss_cfg.focal_gamma)

  b, p, d = out["reid_emb"].shape
  idx, valid, overflow = pack_positives(targets["pos"].reshape(b * p),
                                        max_samples)
  feats = oim.l2_normalize(
      out["reid_emb"].reshape(b * p, d)[idx].astype(jnp.float32))
  pids = jnp.where(valid, targets["pids"].reshape(b * p)[idx], -1)

  logits = oim.oim_logits(feats, memory, lut_scale=loss_cfg.oim_lut_scale,
                          queue_scale=loss_cfg.oim_queue_scale)
  reid = oim.oim_loss(logits, pids, valid, focal_gamma=loss_cfg.oim_focal_gamma,
                      reduction="mean_all")
  total = (loss_cfg.w_cls * det["loss_cls"] + loss_cfg.w_box * det["loss_box"]
           + loss_cfg.w_ctr * det["loss_ctr"] + loss_cfg.w_oim * reid["loss"])
  metrics = {"loss_cls": det["loss_cls"], "loss_box": det["loss_box"],
             "loss_ctr": det["loss_ctr"], "loss_oim": reid["loss"],
             "num_pos": det["num_pos"], "reid_overflow": overflow}
  if loss_cfg.triplet:
    tri_feats, tri_pids, tri_valid = triplet_losses.alignps_triplet_inputs(
        feats, pids, valid, memory.lut)
    tri = triplet_losses.batch_hard_triplet_loss(
        tri_feats, tri_pids, tri_valid, margin=loss_cfg.triplet_margin)
    total = total + loss_cfg.w_triplet * tri["loss"]
    metrics["loss_triplet"] = tri["loss"]
  metrics["loss"] = total
  aux = {"metrics": metrics, "feats": feats, "pids": pids, "valid": valid}
  return total, aux


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: Any,
               tx: optax.GradientTransformation, schedule: Any,
               loss_cfg: LossConfig, max_samples: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a (global) batch; see the module docstring."""
  grad_fn = jax.value_and_grad(compute_losses, has_aux=True)
  (_, aux), grads = grad_fn(state.params, state.model_state, state.memory,
                            batch, model=model, loss_cfg=loss_cfg,
                            max_samples=max_samples)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  memory = oim.update_memory(
      state.memory, aux["feats"], aux["pids"], aux["valid"],
      momentum=loss_cfg.oim_momentum, normalize_lut=loss_cfg.oim_normalize_lut,
      queue_dims=loss_cfg.oim_queue_dims)
  metrics = dict(aux["metrics"])
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["lr"] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, memory=memory)
  return new_state, metrics
