"""Optimizer and learning-rate schedule of the AlignPS recipe, in optax.

AlignPS trains with mmdet's SGD: momentum 0.9, weight decay, a linear warm-up
from `warmup_ratio` of the base rate over `warmup_steps`, step decay by
`decay_factor` at `decay_steps`, L2 gradient clipping at `clip_norm`, and a
learning-rate multiplier of 2 on convolution biases (`bias_lr_mult`).

Parameter groups are read from the parameter *path* (see `param_labels`):
  frozen  parameters of frozen stages (the model's `frozen` predicate): no
          update at all, not even weight decay.
  bias    convolution / dense biases: lr x bias_lr_mult, no weight decay.
  norm    GroupNorm / BatchNorm scales and offsets: lr x 1; no weight decay
          unless `norm_weight_decay`.
  weight  everything else: lr and weight decay as configured.
mmcv's optimizer constructor decays norm parameters, offsets included, at
the full rate (norm_decay_mult=1) and leaves their lr alone;
`norm_weight_decay=True` reproduces that (the AlignPS paper configs set it).
The default follows the more common practice of not decaying them.

`optimizer="adamw"` swaps SGD for AdamW in every group (same groups, lr
multipliers, schedule and clipping), with `momentum` as Adam's beta1 and
`b2`, `eps` as its other constants; its weight decay is decoupled (applied
to the weights, scaled by the scheduled lr but not by the Adam statistics),
as in torch.optim.AdamW and optax.adamw. Adam's per-parameter step sizes
suit a small network trained from scratch in a few hundred steps, where
SGD's single rate is limited by the layers that diverge first
(docs/experiments.md, E9). `optimizer="adam"` and `"amsgrad"` are
torch.optim.Adam (amsgrad=False / True) as torchreid trains re-ID nets:
the weight decay is coupled, added to the gradient before the Adam
statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ps_jax import checks

FROZEN, BIAS, NORM, WEIGHT = "frozen", "bias", "norm", "weight"
OPTIMIZERS = ("sgd", "adamw", "adam", "amsgrad")
_OPTIMIZERS_EXPECTED = " or ".join(repr(o) for o in OPTIMIZERS)


@dataclasses.dataclass(frozen=True)
class OptimOptions:
  """The optimizer settings (the `optim` config section); the fields are
  the keyword arguments of `make_optimizer`."""
  lr: float
  momentum: float = 0.9
  weight_decay: float = 1e-4
  bias_lr_mult: float = 2.0
  warmup_steps: int = 500
  warmup_ratio: float = 1.0 / 3.0
  decay_steps: Sequence[int] = ()
  decay_factor: float = 0.1
  clip_norm: float | None = 35.0
  norm_weight_decay: bool = False
  optimizer: str = "sgd"
  b2: float = 0.999
  eps: float = 1e-8
  # The global batch `lr` was set for; > 0 scales the rate linearly to the
  # run's global batch (`for_global_batch`). 0: `lr` is used as it is.
  lr_reference_batch: int = 0

  def __post_init__(self):
    """Checks every value's range (ValueError naming the field)."""
    _require(_number(self.lr) and self.lr >= 0, "lr", self.lr,
             "a number >= 0")
    _require(_number(self.momentum) and 0 <= self.momentum < 1, "momentum",
             self.momentum, "a number in [0, 1)")
    for name in ("weight_decay", "bias_lr_mult"):
      value = getattr(self, name)
      _require(_number(value) and value >= 0, name, value, "a number >= 0")
    _require(_integer(self.warmup_steps) and self.warmup_steps >= 0,
             "warmup_steps", self.warmup_steps, "an integer >= 0")
    _require(_number(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1,
             "warmup_ratio", self.warmup_ratio, "a number in [0, 1]")
    steps = self.decay_steps
    _require(isinstance(steps, Sequence) and not isinstance(steps, str) and all(
        _integer(s) and s >= 1 for s in steps) and all(
            a < b for a, b in zip(steps, steps[1:])),
             "decay_steps", steps, "increasing integers >= 1, e.g. (700,)")
    object.__setattr__(self, "decay_steps", tuple(int(s) for s in steps))
    _require(_number(self.decay_factor) and 0 < self.decay_factor <= 1,
             "decay_factor", self.decay_factor, "a number in (0, 1]")
    _require(self.clip_norm is None or (_number(self.clip_norm)
                                        and self.clip_norm > 0),
             "clip_norm", self.clip_norm, "> 0, or None for no clipping")
    _require(isinstance(self.norm_weight_decay, bool), "norm_weight_decay",
             self.norm_weight_decay, "True or False")
    _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
             _OPTIMIZERS_EXPECTED)
    _require(_number(self.b2) and 0 <= self.b2 < 1, "b2", self.b2,
             "a number in [0, 1)")
    _require(_number(self.eps) and self.eps > 0, "eps", self.eps,
             "a number > 0")
    _require(_integer(self.lr_reference_batch)
             and self.lr_reference_batch >= 0, "lr_reference_batch",
             self.lr_reference_batch,
             "an integer >= 0 (0: no scaling; else the global batch that "
             "lr was set for)")

  def for_global_batch(self, global_batch: int) -> OptimOptions:
    """These options for a run whose global batch is `global_batch`.

    The linear scaling rule (Goyal et al. 2017, "Accurate, large minibatch
    SGD"): with `lr_reference_batch` = b0 > 0 the rate becomes
    lr x global_batch / b0, so that the update per example seen stays the
    same when the device count (and with it the global batch) changes. The
    warm-up, decay steps and everything else are unchanged; the returned
    options have lr_reference_batch 0 (already scaled).
    """
    if not self.lr_reference_batch:
      return self
    return dataclasses.replace(
        self, lr=self.lr * int(global_batch) / self.lr_reference_batch,
        lr_reference_batch=0)

  def as_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `make_optimizer` (`lr` as it is: call
    `for_global_batch` first)."""
    kwargs = dataclasses.asdict(self)
    del kwargs["lr_reference_batch"]
    return kwargs


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
  checks.require(ok, f"optim.{name}", value, expected)


_integer, _number = checks.is_integer, checks.is_number


# Substrings of a module name that mark a normalization layer's parameters.
_NORM_MARKERS = ("norm", "bn", "gn", "GroupNorm", "BatchNorm", "LayerNorm")


def _path_names(path: tuple[Any, ...]) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def param_labels(params: Any,
                 is_frozen: Callable[[tuple[str, ...]], bool] | None = None
                 ) -> Any:
  """The optimizer group (FROZEN/BIAS/NORM/WEIGHT) of every parameter.

  Args:
    params: the parameter pytree (nested dicts as flax produces them).
    is_frozen: optional predicate on the tuple of path names; True for
      parameters that must never change (frozen backbone stages).
  Returns:
    A pytree of the same structure holding one label string per leaf.
  """
  def label(path, _):
    names = tuple(_path_names(path))
    if is_frozen is not None and is_frozen(names):
      return FROZEN
    module = names[-2] if len(names) > 1 else ""
    if any(m.lower() in module.lower() for m in _NORM_MARKERS):
      return NORM
    if names[-1] == "bias":
      return BIAS
    return WEIGHT
  return jax.tree_util.tree_map_with_path(label, params)


def step_schedule(base_lr: float, *, warmup_steps: int = 500,
                  warmup_ratio: float = 1.0 / 3.0,
                  decay_steps: Sequence[int] = (),
                  decay_factor: float = 0.1) -> optax.Schedule:
  """mmdet's linear warm-up followed by step decay.

  lr(t) = base_lr * w(t) * decay_factor ** (number of decay_steps <= t), with
  w(t) = 1 - (1 - t / warmup_steps) * (1 - warmup_ratio) for t < warmup_steps
  and 1 afterwards (mmcv `LrUpdaterHook` with warmup='linear').
  """
  boundaries = jnp.asarray(sorted(int(s) for s in decay_steps) or [2**31 - 1],
                           jnp.int32)
  n_real = len(decay_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps > 0:
      k = (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
      warm = jnp.where(step < warmup_steps, 1.0 - k, 1.0)
    else:
      warm = 1.0
    n_decays = jnp.sum(step >= boundaries) if n_real else 0
    return base_lr * warm * decay_factor ** n_decays
  return schedule


def make_optimizer(params: Any, *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 1e-4, bias_lr_mult: float = 2.0,
                   warmup_steps: int = 500, warmup_ratio: float = 1.0 / 3.0,
                   decay_steps: Sequence[int] = (),
                   decay_factor: float = 0.1,
                   clip_norm: float | None = 35.0,
                   norm_weight_decay: bool = False,
                   optimizer: str = "sgd", b2: float = 0.999,
                   eps: float = 1e-8,
                   is_frozen: Callable[[tuple[str, ...]], bool] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (or AdamW) with the AlignPS parameter groups.

  Returns (optimizer, schedule). With SGD, weight decay is coupled (added to
  the gradient before momentum), as in torch.optim.SGD; with AdamW it is
  decoupled: p -= lr(t) * (adam_direction + weight_decay * p). Clipping uses
  the global L2 norm of all gradients (mmdet's
  `grad_clip=dict(max_norm=35, norm_type=2)`), before weight decay.
  `norm_weight_decay` also decays the NORM group by `weight_decay` (mmcv's
  norm_decay_mult=1).
  """
  sched = step_schedule(lr, warmup_steps=warmup_steps,
                        warmup_ratio=warmup_ratio, decay_steps=decay_steps,
                        decay_factor=decay_factor)

  checks.require(optimizer in OPTIMIZERS, "optimizer", optimizer,
                 _OPTIMIZERS_EXPECTED)

  def group(lr_mult: float, wd: float) -> optax.GradientTransformation:
    rate = lambda t: sched(t) * lr_mult
    if optimizer == "adamw":
      return optax.adamw(rate, b1=momentum, b2=b2, eps=eps, weight_decay=wd)
    parts = []
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    if optimizer == "sgd":
      parts.append(optax.sgd(rate, momentum=momentum))
    else:  # torch.optim.Adam(amsgrad=...): weight decay added to the gradient
      scale = (optax.scale_by_amsgrad if optimizer == "amsgrad"
               else optax.scale_by_adam)
      parts += [scale(b1=momentum, b2=b2, eps=eps),
                optax.scale_by_learning_rate(rate)]
    return optax.chain(*parts)

  groups = optax.multi_transform(
      {FROZEN: optax.set_to_zero(),
       BIAS: group(bias_lr_mult, 0.0),
       NORM: group(1.0, weight_decay if norm_weight_decay else 0.0),
       WEIGHT: group(1.0, weight_decay)},
      param_labels(params, is_frozen))
  # Frozen parameters get no gradient at all, so they do not count towards the
  # clipping norm either.
  zero_frozen = optax.masked(
      optax.set_to_zero(),
      jax.tree.map(lambda l: l == FROZEN, param_labels(params, is_frozen)))
  chain = [zero_frozen]
  if clip_norm:
    chain.append(optax.clip_by_global_norm(clip_norm))
  chain.append(groups)
  return optax.chain(*chain), sched
