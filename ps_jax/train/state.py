"""The training state: everything a resumed run needs besides the data iterator.

`TrainState` is a pytree; the whole of it is replicated over the mesh, saved
in every checkpoint and donated to the train step. The OIM memory lives here
(design.md decision 3): it is updated by a pure function of the global batch
inside the step, so every device holds the same lookup table and queue.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from ps_jax.losses.oim import OIMMemory


@flax.struct.dataclass
class TrainState:
  """step i32[]; params and model_state (non-trained variables such as the
  frozen batch-norm statistics) as flax variable trees; opt_state the optax
  state; memory the OIM lookup table and queue; rng the base PRNG key, folded
  with the step inside the step so a resumed run draws the same numbers."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  memory: OIMMemory
  rng: jax.Array


def create(params: Any, model_state: Any, tx: Any, memory: OIMMemory,
           rng: jax.Array) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=model_state, opt_state=tx.init(params),
                    memory=memory, rng=rng)
