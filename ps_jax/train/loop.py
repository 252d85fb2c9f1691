"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom: devices and mesh, data, model and state, restore, loop,
evaluation. Resume order: the latest checkpoint in `workdir` if there is one
(state, OIM memory and data iterator position all come back), else a fresh
state initialised from `config.seed`.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from data_builders import build as data_build
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.models import weights
from ps_jax.data import pipeline
from ps_jax.eval import run as eval_run
from ps_jax.losses import oim
from ps_jax import checkpoint
from ps_jax.train import optim
from ps_jax.train import state as state_lib
from ps_jax.train import step as step_lib


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class _MetricsWriter:
  """metrics.jsonl and TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: pathlib.Path, start_step: int):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter  # optional heavy import, lazily
    path = workdir / "metrics.jsonl"
    if path.exists():
      # A run killed after its last checkpoint logged steps that the resumed
      # run repeats: keep only the lines up to the restored step.
      lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
      kept = [l for l in lines if l.strip()
              and json.loads(l).get("step", 0) <= start_step]
      if len(kept) != len(lines):
        path.write_text("".join(kept), encoding="utf-8")
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def setup(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Mesh, dataset, model, optimizer and the jitted step for `config`."""
  mesh_lib.maybe_initialize_distributed()
  mesh = mesh_lib.make_mesh()
  builder = data_build.load_builder(**config.dataset)
  num_ids = int(builder.info.metadata["num_train_ids"])
  model = models.build_model(config.model)
  return {"mesh": mesh, "builder": builder, "num_ids": num_ids,
          "model": model}


def init_state(config, model, num_ids: int, mesh) -> tuple[Any, Any, Any]:
  """A fresh replicated TrainState, the optimizer and its schedule."""
  h, w = config.data.train_scales[0]
  images = jnp.zeros((1, h, w, 3), jnp.float32)
  # The "rbg" generator compiles the initialisers several times faster on CPU
  # than threefry; only initial values depend on it.
  rng = jax.random.key(config.run.seed, impl="rbg")
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.eval_shape(
      functools.partial(model.init, train=True), init_rng, images)
  params_shape = variables["params"]
  tx, schedule = optim.make_optimizer(
      params_shape, is_frozen=models.frozen_predicate(config.model),
      **config.optim)
  dim = int(config.model.reid_dim)

  def init_fn(key):
    v = model.init(key, images, train=True)
    params = v["params"]
    model_state = {k: x for k, x in v.items() if k != "params"}
    memory = oim.init_memory(num_ids, config.loss.oim_queue_size, dim)
    return state_lib.create(params, model_state, tx, memory, state_rng)

  repl = mesh_lib.replicated(mesh)
  state = jax.jit(init_fn, out_shardings=repl)(init_rng)
  return state, tx, schedule


def make_train_step(config, model, tx, schedule, mesh):
  """The jitted train step: batch sharded on "data", state replicated and
  donated. jax.jit compiles it once per scale bucket (batch shape)."""
  loss_cfg = step_lib.LossConfig.from_config(config.loss)
  max_samples = step_lib.max_reid_samples(
      config.data.batch_size, config.data.max_boxes,
      loss_cfg.center_sample_radius)
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  return jax.jit(
      functools.partial(step_lib.train_step, model=model, tx=tx,
                        schedule=schedule, loss_cfg=loss_cfg,
                        max_samples=max_samples),
      in_shardings=(repl, batch_sh), out_shardings=(repl, repl),
      donate_argnums=0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, stop_after: int | None = None) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: an experiment config (configs/*.py).
    workdir: checkpoints, metrics.jsonl, TensorBoard events and evaluation
      results go here.
    stop_after: stop (after saving a checkpoint) once this many steps have
      run in total, as if the process had been killed; for resume tests.
  Returns:
    {"step": final step, "metrics": last logged scalars, "eval": results}.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ctx = setup(config)
  mesh, model = ctx["mesh"], ctx["model"]

  # Data: each process reads its own shard; the global batch is assembled on
  # the mesh. The per-process batch must split evenly over local devices.
  nproc = jax.process_count()
  if config.data.batch_size % jax.device_count():
    raise ValueError(
        f"config.data.batch_size={config.data.batch_size} must be a multiple "
        f"of the number of devices ({jax.device_count()})")
  source = pipeline.data_source(ctx["builder"], "train")
  data_iter = pipeline.train_iterator(
      source, config.data, seed=config.run.seed,
      batch_size=config.data.batch_size // nproc)

  state, tx, schedule = init_state(config, model, ctx["num_ids"], mesh)
  mngr = checkpoint.manager(workdir, max_to_keep=config.run.max_to_keep)
  # Resume order: the workdir's latest checkpoint, else `config.init_from`
  # (an ImageNet backbone file), else the fresh initialisation.
  if mngr.latest_step() is not None:
    logging.info("Resuming from %s at step %d", mngr.directory,
                 mngr.latest_step())
    state = checkpoint.restore(mngr, state, data_iter)
  elif config.init_from:
    variables, _ = weights.maybe_init_from(
        {"params": state.params, **state.model_state}, config.model,
        config.init_from, data_normalization=config.data.normalization)
    state = state.replace(
        params=variables["params"],
        model_state={k: v for k, v in variables.items() if k != "params"})

  step_fn = make_train_step(config, model, tx, schedule, mesh)

  num_steps = int(config.run.num_steps)
  step = int(jax.device_get(state.step))
  writer = _MetricsWriter(workdir, step)
  first = step
  last_logged: dict[str, float] = {}
  last_saved = step
  t0, t_last, step_last = time.time(), time.time(), step
  if step == first and step < num_steps:
    logging.info("Compiling the train step (first step of each scale bucket "
                 "compiles once)...")
  try:
    while step < num_steps and (stop_after is None or step < stop_after):
      host_batch = next(data_iter)
      batch = mesh_lib.host_to_global(host_batch, mesh)
      state, metrics = step_fn(state, batch)
      step += 1
      do_log = step % config.run.log_every == 0 or step == num_steps
      do_save = (step % config.run.checkpoint_every == 0 or step == num_steps
                 or step == stop_after)
      if do_log or do_save:
        scalars = {f"train/{k}": float(v)
                   for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(scalars["train/loss"]):
          raise NonFiniteLossError(
              f"non-finite loss {scalars['train/loss']} between steps "
              f"{step_last} and {step}; stopping. The last good checkpoint "
              f"(step {last_saved}) is kept in {workdir / 'ckpt'}. Metrics: "
              f"{scalars}")
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        scalars["train/steps_per_sec"] = rate
        writer.write(step, scalars)
        last_logged = scalars
        logging.info(
            "step %d/%d  loss %.4f (cls %.3f box %.3f ctr %.3f oim %.3f)  "
            "%.2f steps/s  ETA %s", step, num_steps, scalars["train/loss"],
            scalars["train/loss_cls"], scalars["train/loss_box"],
            scalars["train/loss_ctr"], scalars["train/loss_oim"], rate,
            _format_eta((num_steps - step) / max(rate, 1e-9)))
        t_last, step_last = now, step
      if do_save:
        checkpoint.save(mngr, step, state, data_iter, config)
        last_saved = step
  finally:
    mngr.wait_until_finished()
    writer.close()
  logging.info("Trained %d steps in %.1f s", step - first, time.time() - t0)

  results: dict[str, Any] = {"step": step, "metrics": last_logged}
  if step >= num_steps and config.run.eval_at_end:
    variables = {"params": state.params, **state.model_state}
    results["eval"] = eval_run.evaluate(config, workdir, variables=variables,
                                        model=model, mesh=mesh,
                                        builder=ctx["builder"], step=step)
  mngr.close()
  return results

