"""The train step of every system: one pure function, jitted once per shape.

    train_step(state, batch) -> (state, metrics)

system.loss -> gradients -> optax -> system.update_extra. Nothing here knows
about devices or about a particular method: the loop jits it with the batch
sharded over "data" and the state replicated and donated, and XLA inserts the
collectives. `update_extra` sees the auxiliaries of the *global* batch, so
every device ends the step with the same extra state (AlignPS: the same OIM
lookup table and queue), and 1 device and 8 devices give the same result.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from ps_jax import mesh as mesh_lib
from ps_jax.systems import base
from ps_jax.train import optim
from ps_jax.train import state as state_lib
from ps_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               system: base.System, tx: optax.GradientTransformation,
               schedule: optax.Schedule, seed: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a (global) batch; see the module docstring.

  The step's random key is the run's training key folded with the step
  number, so a resumed run draws the same numbers as an uninterrupted one.
  """
  _, train_key = base.init_rngs(seed)
  rng = jax.random.fold_in(train_key, state.step)
  grad_fn = jax.value_and_grad(system.loss, has_aux=True)
  (_, aux), grads = grad_fn(state.params, state.model_state, state.extra,
                            batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  extra = system.update_extra(state.extra, aux)
  metrics = dict(aux["metrics"])
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["lr"] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, extra=extra)
  return new_state, metrics


def make_train_step(system: base.System, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: jax.sharding.Mesh, *,
                    seed: int):
  """The jitted train step: batch sharded on "data", state replicated and
  donated. jax.jit compiles it once per batch shape (scale bucket)."""
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  return jax.jit(
      functools.partial(train_step, system=system, tx=tx, schedule=schedule,
                        seed=int(seed)),
      in_shardings=(repl, batch_sh), out_shardings=(repl, repl),
      donate_argnums=0)


def init_state(system: base.System, optim_options: optim.OptimOptions,
               seed: int, image_hw: Any, mesh: jax.sharding.Mesh
               ) -> tuple[TrainState, optax.GradientTransformation,
                          optax.Schedule]:
  """A fresh replicated TrainState, the optimizer and its schedule.

  Args:
    system: the system to train.
    optim_options: `ps_jax.train.optim.OptimOptions`.
    seed: the run's seed (`base.initialize` draws the initial values).
    image_hw: (H, W) of the example batch the system is initialised with.
    mesh: the device mesh; the state is replicated over it.
  """
  init_key, _ = base.init_rngs(seed)
  images = base.example_images(image_hw)
  variables = jax.eval_shape(system.init, init_key, images)[0]
  tx, schedule = optim.make_optimizer(
      variables["params"], is_frozen=system.is_frozen,
      **optim_options.as_kwargs())

  def init_fn(key):
    variables, extra = system.init(key, images)
    return state_lib.create(variables, extra, tx)

  state = jax.jit(init_fn, out_shardings=mesh_lib.replicated(mesh))(init_key)
  return state, tx, schedule
