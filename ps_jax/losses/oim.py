"""Online instance matching (OIM) loss with its memory as explicit state.

The reference implementations (OIM, SeqNet, AlignPS) keep a lookup table (LUT)
of labeled-identity features and a circular queue of unlabeled-person features
as buffers that a custom autograd backward mutates. Here the memory is an
`OIMMemory` value held in the train state: `oim_logits` reads it (no gradient
flows into it) and `update_memory` returns the next memory, applying the
reference loop's updates sample by sample.

Conventions:
  * Pure `jax.numpy`, float32, static shapes; padding is a `valid` mask.
  * pids: i32, `pid >= 0` labeled (a LUT row, must be < K), `-1` unlabeled
    (goes to the queue); any other negative value is ignored. Out-of-range
    labels cannot be reported inside jit, so the data pipeline checks them:
    here `update_memory` ignores pid >= K and `oim_loss` ignores pid >= its
    number of columns K + Q.
  * Embeddings are expected L2-normalized (`ps_jax.ops.vectors.l2_normalize`,
    same as `torch.nn.functional.normalize`) before they reach the logits or the
    memory update, as in every reference.
  * For data parallelism the caller passes the embeddings of the *global*
    batch, so every device computes the same update. Nothing here names a
    device or a mesh; where an input carries an Explicit-axis sharding type
    (jax's default mesh axis type), `unshard` gathers it first, because sorting
    and gathering by id need the whole batch on every device. With Auto axes
    XLA inserts the same gathers itself.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ps_jax.ops import vectors


@flax.struct.dataclass
class OIMMemory:
  """OIM memory.

  Attributes:
    lut: f32[K, D] one feature per labeled identity.
    queue: f32[Q, D] features of recent unlabeled persons (Q may be 0).
    queue_ptr: i32[] next queue row to write.
  """
  lut: jax.Array
  queue: jax.Array
  queue_ptr: jax.Array


def init_memory(num_ids: int, queue_size: int, dim: int) -> OIMMemory:
  """Zero memory, as the reference buffers are initialised.

  Args:
    num_ids: K, number of labeled training identities (LUT rows).
    queue_size: Q, queue length (0 disables the queue).
    dim: D, embedding size.

  Returns:
    OIMMemory with lut f32[K, D], queue f32[Q, D] zeros and queue_ptr 0.
  """
  if num_ids < 0 or queue_size < 0 or dim <= 0:
    raise ValueError(
        f"init_memory: expected num_ids >= 0, queue_size >= 0, dim > 0; got "
        f"num_ids={num_ids}, queue_size={queue_size}, dim={dim}.")
  return OIMMemory(lut=jnp.zeros((num_ids, dim), jnp.float32),
                   queue=jnp.zeros((queue_size, dim), jnp.float32),
                   queue_ptr=jnp.zeros((), jnp.int32))


def unshard(tree: Any) -> Any:
  """Reshards arrays with an Explicit-axis sharding type to replicated.

  A no-op for unsharded arrays, arrays outside jit without a mesh, and Auto
  mesh axes (whose type carries no sharding). Used where an op needs every
  sample on every device (sort by id, gather by id, all-pairs distances).

  Args:
    tree: a pytree of arrays.

  Returns:
    The same pytree, each array replicated over its mesh.
  """
  def one(x):
    sharding = getattr(jax.typeof(x), "sharding", None)
    if (not isinstance(sharding, NamedSharding)
        or all(axis is None for axis in sharding.spec)):
      return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))

  return jax.tree.map(one, tree)


def _check_samples(fn: str, feats: jax.Array, pids: jax.Array,
                   valid: jax.Array) -> None:
  if feats.ndim != 2:
    raise ValueError(f"{fn}: feats has shape {feats.shape}, expected [M, D].")
  m = feats.shape[0]
  if pids.shape != (m,):
    raise ValueError(f"{fn}: pids has shape {pids.shape}, expected ({m},).")
  if valid.shape != (m,):
    raise ValueError(f"{fn}: valid has shape {valid.shape}, expected ({m},).")


def oim_logits(feats: jax.Array, memory: OIMMemory, lut_scale: float = 10.0,
               queue_scale: float | None = None,
               normalize: bool = False) -> jax.Array:
  """Scaled cosine scores against the LUT and the queue.

  logits = [lut_scale * x @ lut.T, queue_scale * x @ queue.T]. The memory is
  read through `stop_gradient` (as the reference buffers): gradients flow only
  into `feats`. AlignPS: lut_scale = queue_scale = 10 on CUHK-SYSU, 15 and 10
  on PRW; SeqNet: 30 for both.

  Args:
    feats: f32[M, D] embeddings (L2-normalized unless `normalize`).
    memory: the current OIMMemory (K LUT rows, Q queue rows).
    lut_scale: inverse temperature of the LUT scores.
    queue_scale: inverse temperature of the queue scores; None uses
      `lut_scale`.
    normalize: L2-normalize `feats` first.

  Returns:
    f32[M, K + Q] logits; column k < K is identity k, column K + j queue row j.
  """
  feats = jnp.asarray(feats, jnp.float32)
  if feats.ndim != 2 or feats.shape[1] != memory.lut.shape[1]:
    raise ValueError(
        f"oim_logits: feats has shape {feats.shape}, expected [M, "
        f"{memory.lut.shape[1]}] (the memory's D).")
  if queue_scale is None:
    queue_scale = lut_scale
  if normalize:
    feats = vectors.l2_normalize(feats)
  lut = jax.lax.stop_gradient(memory.lut)
  queue = jax.lax.stop_gradient(memory.queue)
  # HIGHEST: scores are multiplied by up to 30, so TF32/bf16 matmul rounding
  # on accelerators would be visible in the softmax.
  hi = jax.lax.Precision.HIGHEST
  lut_logits = lut_scale * jnp.matmul(feats, lut.T, precision=hi)  # [M, K]
  queue_logits = queue_scale * jnp.matmul(feats, queue.T, precision=hi)
  return jnp.concatenate([lut_logits, queue_logits], axis=1)  # [M, K+Q]


def oim_loss(logits: jax.Array, pids: jax.Array, valid: jax.Array,
             focal_gamma: float = 0.0,
             reduction: str = "mean_all") -> dict[str, jax.Array]:
  """(Focal) softmax cross-entropy over the K + Q OIM classes.

  Per labeled sample (valid and 0 <= pid < K + Q columns):
    loss_i = -(1 - p_i)^focal_gamma * log p_i,  p_i = softmax(logits_i)[pid_i].
  focal_gamma = 0 is the plain OIM loss (SeqNet, original OIM); 2 is AlignPS's
  focal OIM. Unlabeled (-1) and invalid samples contribute 0.

  Reductions (`loss = loss_sum / max(num, 1)`):
    "mean_all": num = number of valid samples, labeled or not. This is
      AlignPS: nll_loss(reduction='none', ignore_index=-1) then `.mean()` over
      all positive points, the ignored ones counting as 0.
    "mean_labeled": num = number of labeled samples (SeqNet / OIM:
      cross_entropy with ignore_index).

  Args:
    logits: f32[M, C] logits from `oim_logits` (C = K + Q).
    pids: i32[M] identity per sample (LUT column), -1 unlabeled.
    valid: bool[M] real samples (False for padding).
    focal_gamma: focusing exponent >= 0 (static).
    reduction: "mean_all" or "mean_labeled".

  Returns:
    dict of f32[] scalars: loss (reduced), loss_sum, num (the denominator
    before the max with 1), num_labeled.
  """
  logits = jnp.asarray(logits, jnp.float32)
  pids = jnp.asarray(pids, jnp.int32)
  valid = jnp.asarray(valid, bool)
  if logits.ndim != 2:
    raise ValueError(
        f"oim_loss: logits has shape {logits.shape}, expected [M, K + Q].")
  _check_samples("oim_loss", logits, pids, valid)
  if reduction not in ("mean_all", "mean_labeled"):
    raise ValueError(
        f"oim_loss: reduction={reduction!r}, expected 'mean_all' or "
        "'mean_labeled'.")
  num_classes = logits.shape[1]
  labeled = valid & (pids >= 0) & (pids < num_classes)
  logp = jax.nn.log_softmax(logits, axis=1)
  idx = jnp.clip(pids, 0, max(num_classes - 1, 0))
  logp_y = jnp.take_along_axis(logp, idx[:, None], axis=1)[:, 0]  # [M]
  per = -logp_y
  if focal_gamma:
    per = per * (1.0 - jnp.exp(logp_y)) ** focal_gamma
  per = jnp.where(labeled, per, 0.0)
  loss_sum = jnp.sum(per)
  num_labeled = jnp.sum(labeled.astype(jnp.float32))
  if reduction == "mean_all":
    num = jnp.sum(valid.astype(jnp.float32))
  else:
    num = num_labeled
  return {"loss": loss_sum / jnp.maximum(num, 1.0), "loss_sum": loss_sum,
          "num": num, "num_labeled": num_labeled}


def _occurrence_rank(keys: jax.Array, use: jax.Array) -> jax.Array:
  """rank[i] = #{j < i : use[j] and keys[j] == keys[i]} for used i, else -1.

  A stable sort groups equal keys in sample order; the rank is the position
  within the group.
  """
  m = keys.shape[0]
  big = jnp.iinfo(jnp.int32).max
  k = jnp.where(use, keys, big)
  order = jnp.argsort(k, stable=True)
  sk = k[order]
  first = jnp.searchsorted(sk, sk, side="left")
  rank_sorted = (jnp.arange(m) - first).astype(jnp.int32)
  rank = jnp.zeros((m,), jnp.int32).at[order].set(rank_sorted)
  return jnp.where(use, rank, -1)


def _update_lut(lut: jax.Array, feats: jax.Array, pids: jax.Array,
                labeled: jax.Array, momentum: float,
                normalize_lut: bool) -> jax.Array:
  num_ids = lut.shape[0]
  rank = _occurrence_rank(pids, labeled)
  num_rounds = jnp.max(rank, initial=-1) + 1

  # Round r applies every sample that is the r-th occurrence of its id. Ids
  # are distinct within a round, so the scatter has no conflicts, and each row
  # sees its samples in order with the reference's arithmetic: exact
  # sequential semantics in (max duplicates) rounds instead of M steps.
  def one_round(r, lut):
    sel = rank == r
    rows = lut[jnp.clip(pids, 0, num_ids - 1)]  # [M, D]
    new = momentum * rows + (1.0 - momentum) * feats
    if normalize_lut:
      new = vectors.l2_normalize(new)
    target = jnp.where(sel, pids, num_ids)  # num_ids: out of range, dropped
    return lut.at[target].set(new, mode="drop")

  return jax.lax.fori_loop(0, num_rounds, one_round, lut)


def _update_queue(queue: jax.Array, ptr: jax.Array, feats: jax.Array,
                  unlabeled: jax.Array, queue_dims: int
                  ) -> tuple[jax.Array, jax.Array]:
  q = queue.shape[0]
  u = unlabeled.astype(jnp.int32)
  order = jnp.cumsum(u) - u  # index among the unlabeled samples
  n = jnp.sum(u)
  # When more than Q unlabeled samples arrive, the sequential loop overwrites
  # the early ones; keep only the last Q so that slots are distinct.
  keep = unlabeled & (order >= n - q)
  slot = jnp.where(keep, (ptr + order) % q, q)  # q: out of range, dropped
  queue = queue.at[slot, :queue_dims].set(feats[:, :queue_dims], mode="drop")
  return queue, ((ptr + n) % q).astype(jnp.int32)


def update_memory(memory: OIMMemory, feats: jax.Array, pids: jax.Array,
                  valid: jax.Array, momentum: float = 0.5,
                  normalize_lut: bool = True,
                  queue_dims: int | None = None) -> OIMMemory:
  """The memory after the reference's per-sample update loop.

  Equivalent to, for i in 0..M-1 with valid[i]:
    if 0 <= pid_i < K: lut[pid_i] = momentum * lut[pid_i] + (1 - momentum) x_i
                       and, if normalize_lut, lut[pid_i] /= ||lut[pid_i]||
                       (norm floored at 1e-12, so a zero row stays zero);
    if pid_i == -1 and Q > 0: queue[ptr, :queue_dims] = x_i[:queue_dims];
                              ptr = (ptr + 1) % Q.
  Repeated ids are applied one after another, as in the loop. Reference
  settings: SeqNet / OIM normalize_lut=True, full queue rows; AlignPS
  CUHK-SYSU normalize_lut=False, queue_dims=64 (the other dims of the queue
  rows stay as they were, zeros from init); AlignPS PRW normalize_lut=True,
  queue_dims=64. Gradients do not flow through the update (`feats` is
  stop_gradient'ed).

  Args:
    memory: the current OIMMemory (K, Q, D).
    feats: f32[M, D] embeddings of the global batch (L2-normalized, the same
      ones fed to `oim_logits`).
    pids: i32[M] identities: >= 0 labeled, -1 unlabeled.
    valid: bool[M] real samples.
    momentum: weight of the old LUT row.
    normalize_lut: re-normalize each updated LUT row.
    queue_dims: write only the first `queue_dims` dims of queue rows; None
      writes all D.

  Returns:
    The next OIMMemory (same shapes and dtypes).
  """
  feats = jax.lax.stop_gradient(jnp.asarray(feats, jnp.float32))
  pids = jnp.asarray(pids, jnp.int32)
  valid = jnp.asarray(valid, bool)
  _check_samples("update_memory", feats, pids, valid)
  feats, pids, valid = unshard((feats, pids, valid))
  num_ids, dim = memory.lut.shape
  q = memory.queue.shape[0]
  if feats.shape[1] != dim or memory.queue.shape[1] != dim:
    raise ValueError(
        f"update_memory: feats has D={feats.shape[1]}, lut D={dim}, queue "
        f"D={memory.queue.shape[1]}; they must agree.")
  if queue_dims is None:
    queue_dims = dim
  if not 0 < queue_dims <= dim:
    raise ValueError(
        f"update_memory: queue_dims={queue_dims}, expected 1..{dim} or None.")

  lut = memory.lut
  if num_ids > 0:
    labeled = valid & (pids >= 0) & (pids < num_ids)
    lut = _update_lut(lut, feats, pids, labeled, momentum, normalize_lut)
  queue, ptr = memory.queue, jnp.asarray(memory.queue_ptr, jnp.int32)
  if q > 0:
    queue, ptr = _update_queue(queue, ptr, feats, valid & (pids == -1),
                               queue_dims)
  return OIMMemory(lut=lut, queue=queue, queue_ptr=ptr)
