"""The training state: everything a resumed run needs besides the data iterator.

`TrainState` is a pytree; the whole of it is replicated over the mesh, saved
in every checkpoint and donated to the train step. The system's extra state
(AlignPS: the OIM lookup table and queue) lives here: it is updated by a pure
function of the global batch inside the step, so every device holds the same
copy.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """step i32[]; params and model_state (non-trained variables such as the
  frozen batch-norm statistics) as flax variable trees; opt_state the optax
  state; extra the system's extra state (a pytree, or None)."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  extra: Any


def create(variables: Any, extra: Any, tx: Any) -> TrainState:
  """A fresh state at step 0 from a system's initial variables and extra
  state."""
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=model_state, opt_state=tx.init(params),
                    extra=extra)


def variables_of(state: TrainState) -> dict[str, Any]:
  """The model variables {"params": ..., <model_state collections>}."""
  return {"params": state.params, **state.model_state}
