"""The system contract: what the trainer and the evaluator know of a method.

A *system* is one person-search or re-identification method end to end
(AlignPS; the OIM R-CNN; the crop re-ID nets IDE, MLFN and GLAD; a user's
own). It is an immutable object built once, at an entry point, from
typed options, and everything it offers is a pure function of arrays and
parameters, so the trainer can jit, shard and donate it:

  init(rng, images) -> (variables, extra)
      Initial variables {"params": ..., <other collections>} for a batch of
      images f32[B, H, W, 3], and the system's extra training state: a pytree
      that is not trained by gradients but by `update_extra` (AlignPS: the
      OIM lookup table and queue), or None.
  is_frozen(path) -> bool
      True for parameters the optimizer must never change; `path` is the
      tuple of key names from the params root to a leaf.
  loss(params, model_state, extra, batch, rng) -> (loss f32[], aux)
      The training loss of a (global) batch. `model_state` holds the
      variables other than params; `rng` is a fresh key per step. `aux` is a
      dict whose "metrics" entry maps names to f32[] scalars (including
      "loss"); everything else in it is for `update_extra`.
  update_extra(extra, aux) -> extra
      The extra state after the step, from the loss's auxiliaries (gradients
      stopped). Called on the global batch, so every device computes the
      same new state.
  init_from(variables, path, *, normalization) -> variables
      Pretrained weights from a local file into freshly initialised
      variables; `normalization` is the data pipeline's, checked against
      what the weights expect. Systems without an importer raise ValueError.

Person-search systems (`PersonSearchSystem`) add

  embedding_dim: int
  predict(variables, batch, query_boxes) -> dict
      Fixed-size detections and embeddings per image, and the embedding of
      one query box per image, in original-image pixels. `batch` holds
      image f32[B, H, W, 3], image_hw i32[B, 2] (the valid region, network
      pixels) and orig_hw i32[B, 2] (original size; 0 for padding examples).
      `query_boxes` f32[B, 4] xyxy original pixels (zeros where there is
      none). Returns boxes f32[B, M, 4], scores f32[B, M] (higher is more
      confident, in [0, 1] where the system can say so), embeddings
      f32[B, M, D] L2-normalized, valid bool[B, M], query_embedding
      f32[B, D] L2-normalized and query_from_detection bool[B].

and crop re-identification systems (`CropReIDSystem`) add

  embedding_dim: int
  embed(variables, batch) -> f32[B, D] L2-normalized.
      `batch` holds image f32[B, H, W, 3] (crops at the pipeline's size)
      and, for systems that use body keypoints (GLAD), keypoints
      f32[B, 4, 2] and has_keypoints bool[B] (`ps_jax.data.crops`).
  features(variables, batch) -> f32[B, D], the descriptors before
      normalization (for Euclidean-distance ranking).

Systems are chosen by name in `ps_jax.systems.build`, an explicit mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Variables = Any   # {"params": pytree, <collection>: pytree, ...}
ExtraState = Any  # any pytree of arrays, or None

# Keys every `PersonSearchSystem.predict` output has.
PREDICT_OUTPUTS = ("boxes", "scores", "embeddings", "valid",
                   "query_embedding", "query_from_detection")


@runtime_checkable
class System(Protocol):
  """What every system offers the trainer (see the module docstring)."""

  def init(self, rng: jax.Array, images: jax.Array
           ) -> tuple[Variables, ExtraState]: ...

  def is_frozen(self, path: Sequence[str]) -> bool: ...

  def loss(self, params: Any, model_state: Any, extra: ExtraState,
           batch: dict[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]: ...

  def update_extra(self, extra: ExtraState, aux: dict[str, Any]
                   ) -> ExtraState: ...

  def init_from(self, variables: Variables, path: str, *,
                normalization: str) -> Variables: ...


@runtime_checkable
class PersonSearchSystem(System, Protocol):
  """A system that detects people in scenes and embeds them."""

  embedding_dim: int

  def predict(self, variables: Variables, batch: dict[str, jax.Array],
              query_boxes: jax.Array) -> dict[str, jax.Array]: ...


@runtime_checkable
class CropReIDSystem(System, Protocol):
  """A system that embeds person crops (re-identification)."""

  embedding_dim: int

  def embed(self, variables: Variables, batch: dict[str, jax.Array]
            ) -> jax.Array: ...

  def features(self, variables: Variables, batch: dict[str, jax.Array]
               ) -> jax.Array: ...


def init_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, base training key) of a run with `seed`.

  The "rbg" generator compiles the initialisers several times faster on CPU
  than threefry; only initial values depend on it. The training key is
  folded with the step number inside the train step, so a resumed run draws
  the same numbers as an uninterrupted one.
  """
  init_key, train_key = jax.random.split(jax.random.key(int(seed),
                                                        impl="rbg"))
  return init_key, train_key


def example_images(image_hw: Sequence[int]) -> np.ndarray:
  """f32[1, H, W, 3] zeros: the batch systems are initialised with."""
  h, w = (int(v) for v in image_hw)
  return np.zeros((1, h, w, 3), np.float32)


def initialize(system: System, seed: int, image_hw: Sequence[int], *,
               out_shardings: Any = None) -> tuple[Variables, ExtraState]:
  """`system.init` with the run's init key, jitted.

  The one recipe for a run's initial values: the trainer starts from it and
  `python -m ps_jax.eval --untrained` evaluates it.
  """
  init_key, _ = init_rngs(seed)
  images = example_images(image_hw)
  return jax.jit(lambda k: system.init(k, images),
                 out_shardings=out_shardings)(init_key)


def typed(section: str, cls: type, values: Mapping[str, Any]) -> Any:
  """`cls(**values)` for a dataclass (or linen module) of options.

  Lists become tuples (fields of jitted, hashable objects). Raises
  ValueError naming the section, the unknown keys and the valid ones.
  """
  # A linen module's `parent` and `name` are linen's, not options.
  linen = ("parent", "name") if issubclass(cls, nn.Module) else ()
  names = [f.name for f in dataclasses.fields(cls)
           if f.init and f.name not in linen]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ValueError(f"{section}: unknown key(s) {unknown}; valid keys: "
                     f"{names}")
  return cls(**{k: tuple(v) if isinstance(v, list) else v
                for k, v in values.items()})


def network_scale(batch: Mapping[str, Any]) -> jax.Array:
  """f32[B, 2] (y, x) network pixels per original pixel of a predict batch:
  image_hw / orig_hw, the exact inverse of the pipeline's per-axis resize;
  1 for padding examples (orig_hw = 0)."""
  image_hw = jnp.asarray(batch["image_hw"], jnp.float32)
  orig_hw = jnp.asarray(batch["orig_hw"], jnp.float32)
  return jnp.where(orig_hw > 0, image_hw / jnp.maximum(orig_hw, 1.0), 1.0)


def check_predictions(out: dict[str, Any], where: str) -> None:
  """ValueError naming `where` if a predict output lacks a key."""
  missing = [k for k in PREDICT_OUTPUTS if k not in out]
  if missing:
    raise ValueError(f"{where}: predict() returned no {missing}; expected "
                     f"the keys {list(PREDICT_OUTPUTS)}")
