"""Batch-hard triplet loss (AlignPS `TripletLossFilter`).

Conventions:
  * Pure `jax.numpy`, float32, static shapes; samples that do not take part
    are masked (`valid` False or pid < 0), never removed.
  * pids: i32, >= 0 labeled identity, -1 unlabeled (excluded, as AlignPS
    drops label -1).
  * Distances are Euclidean, computed as AlignPS/open-reid do:
    sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ps_jax.losses import oim
from ps_jax.ops import vectors

# AlignPS/open-reid clamp the squared distance here before the sqrt.
_MIN_SQ_DIST = 1e-12


def batch_hard_triplet_loss(feats: jax.Array, pids: jax.Array,
                            valid: jax.Array, margin: float = 0.3,
                            normalize: bool = False) -> dict[str, jax.Array]:
  """Batch-hard triplet loss over the labeled, valid samples.

  For each anchor a (valid, pid >= 0): d_ap = max distance to a sample with
  the same pid (the anchor itself included, as in AlignPS, so an id seen once
  has d_ap = 1e-6), d_an = min distance to a sample with another pid;
  loss = mean_a relu(d_ap - d_an + margin) (MarginRankingLoss with y = 1).
  The loss is 0 when the anchors hold fewer than 2 distinct ids.

  The self-distance is set to exactly sqrt(1e-12) instead of the rounding
  noise of |a|^2 + |a|^2 - 2 a.a, so its gradient is exactly 0.

  Args:
    feats: f32[M, D] embeddings.
    pids: i32[M] identities, -1 unlabeled.
    valid: bool[M] real samples.
    margin: ranking margin (AlignPS 0.3), distance units.
    normalize: L2-normalize `feats` first. AlignPS does not: its point
      features are normalized by the caller and the appended LUT rows are
      used as stored (see `alignps_triplet_inputs`).

  Returns:
    dict of f32[] scalars: loss, num_anchors (0 when the loss is 0 for lack
    of two ids).
  """
  feats = jnp.asarray(feats, jnp.float32)
  pids = jnp.asarray(pids, jnp.int32)
  valid = jnp.asarray(valid, bool)
  if feats.ndim != 2:
    raise ValueError(
        f"batch_hard_triplet_loss: feats has shape {feats.shape}, expected "
        "[M, D].")
  m = feats.shape[0]
  for name, arr in (("pids", pids), ("valid", valid)):
    if arr.shape != (m,):
      raise ValueError(
          f"batch_hard_triplet_loss: {name} has shape {arr.shape}, expected "
          f"({m},).")
  feats, pids, valid = oim.unshard((feats, pids, valid))
  if normalize:
    feats = vectors.l2_normalize(feats)

  use = valid & (pids >= 0)
  sq = jnp.sum(feats * feats, axis=1)
  gram = jnp.matmul(feats, feats.T, precision=jax.lax.Precision.HIGHEST)
  d2 = sq[:, None] + sq[None, :] - 2.0 * gram  # [M, M]
  d2 = jnp.where(jnp.eye(m, dtype=bool), 0.0, d2)
  dist = jnp.sqrt(jnp.maximum(d2, _MIN_SQ_DIST))

  pair = use[:, None] & use[None, :]
  same = pids[:, None] == pids[None, :]
  pos_mask = pair & same
  neg_mask = pair & ~same
  # dist > 0, so 0 is a neutral fill for the max; every used anchor is its
  # own positive.
  d_ap = jnp.max(jnp.where(pos_mask, dist, 0.0), axis=1)
  has_neg = jnp.any(neg_mask, axis=1)
  d_an = jnp.min(jnp.where(neg_mask, dist, jnp.inf), axis=1)
  d_an = jnp.where(has_neg, d_an, 0.0)
  per = jnp.where(use & has_neg, jax.nn.relu(d_ap - d_an + margin), 0.0)

  # With two distinct ids every anchor has a negative.
  enough = jnp.any(neg_mask)
  num = jnp.where(enough, jnp.sum(use.astype(jnp.float32)), 0.0)
  loss = jnp.sum(per) / jnp.maximum(num, 1.0)
  return {"loss": loss, "num_anchors": num}


def alignps_triplet_inputs(point_feats: jax.Array, point_pids: jax.Array,
                           point_valid: jax.Array, lut: jax.Array,
                           normalize: bool = False,
                           lut_min_pid: int = 1
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """AlignPS triplet samples: the point features plus their ids' LUT rows.

  AlignPS appends `lut[pid]` for every positive point whose pid > 0 (one row
  per such point, duplicates included; `> 0` drops id 0, reproduced by
  `lut_min_pid=1`), reading the LUT as it was before this step's update. With
  static shapes that is M extra rows, masked where the point does not
  contribute. The LUT rows are stop_gradient'ed (they are buffers).

  Args:
    point_feats: f32[M, D] point embeddings (L2-normalized unless
      `normalize`).
    point_pids: i32[M] identities, -1 unlabeled.
    point_valid: bool[M] real samples.
    lut: f32[K, D] the OIM LUT *before* `update_memory` of this step.
    normalize: L2-normalize `point_feats` first (not the LUT rows).
    lut_min_pid: smallest pid whose LUT row is appended (AlignPS: 1; 0 to
      include id 0).

  Returns:
    feats f32[2M, D], pids i32[2M], valid bool[2M]: the points, then the LUT
    rows, for `batch_hard_triplet_loss(..., normalize=False)`.
  """
  point_feats = jnp.asarray(point_feats, jnp.float32)
  point_pids = jnp.asarray(point_pids, jnp.int32)
  point_valid = jnp.asarray(point_valid, bool)
  if point_feats.ndim != 2 or lut.ndim != 2 or (
      point_feats.shape[1] != lut.shape[1]):
    raise ValueError(
        f"alignps_triplet_inputs: point_feats {point_feats.shape} and lut "
        f"{lut.shape} must be [M, D] and [K, D].")
  m = point_feats.shape[0]
  for name, arr in (("point_pids", point_pids), ("point_valid", point_valid)):
    if arr.shape != (m,):
      raise ValueError(
          f"alignps_triplet_inputs: {name} has shape {arr.shape}, expected "
          f"({m},).")
  point_feats, point_pids, point_valid = oim.unshard(
      (point_feats, point_pids, point_valid))
  if normalize:
    point_feats = vectors.l2_normalize(point_feats)
  num_ids = lut.shape[0]
  has_row = point_valid & (point_pids >= lut_min_pid) & (point_pids < num_ids)
  if num_ids:
    rows = jax.lax.stop_gradient(lut)[
        jnp.clip(point_pids, 0, num_ids - 1)]  # [M, D]
    rows = jnp.where(has_row[:, None], rows, 0.0)
  else:
    rows = jnp.zeros_like(point_feats)
  feats = jnp.concatenate([point_feats, rows], axis=0)  # [2M, D]
  pids = jnp.concatenate([point_pids, jnp.where(has_row, point_pids, -1)])
  valid = jnp.concatenate([point_valid, has_row])
  return feats, pids, valid
