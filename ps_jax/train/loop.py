"""The training loop of every system: `train_and_evaluate(experiment, workdir)`.

Reads top to bottom: devices and mesh, data, state, restore, loop,
evaluation. It knows the system only through the contract
(`ps_jax.systems.base`). Resume order: the latest checkpoint in `workdir` if
there is one (state, the system's extra state and the data iterator position
all come back), else `experiment.init_from` (pretrained weights), else a
fresh state initialised from the run's seed.

A damaged latest checkpoint is moved aside and the one before restored
(`ps_jax.checkpoint`). Before anything is built or compiled, a resumed run's
config is compared with the config of the checkpoint it resumes from
(`ps_jax.train.config_check`: model changes are refused, recipe changes need
`allow_config_change`), and every run writes its config to
`<workdir>/config.json`.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
from absl import logging

from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.eval import crop_reid
from ps_jax.eval import run as eval_run
from ps_jax.train import config_check
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


def _loss_terms(scalars: dict[str, float]) -> str:
  """'cls 0.412 box 0.733 ...' from the train/loss_* metrics."""
  return " ".join(f"{k[len('train/loss_'):]} {v:.3f}"
                  for k, v in scalars.items() if k.startswith("train/loss_"))


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _check_config(exp: Any, mngr: Any, step: int, saved: dict[str, Any],
                  allow_change: bool) -> list[config_check.Change]:
  """config_check.check against a checkpoint's config; closes `mngr` when
  the resume is refused."""
  try:
    return config_check.check(saved, exp.config, step=step,
                              where=str(mngr.directory),
                              allow_change=allow_change)
  except config_check.ConfigChangeError:
    mngr.close()
    raise


def train_and_evaluate(experiment: Any, workdir: str, *,
                       stop_after: int | None = None,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Train `experiment` in `workdir`, resuming from its latest checkpoint.

  Args:
    experiment: a built `ps_jax.experiment.Experiment` (its system, data,
      optimizer, run and eval options).
    workdir: checkpoints, metrics.jsonl, TensorBoard events and evaluation
      results go here.
    stop_after: stop (after saving a checkpoint) once this many steps have
      run in total, as if the process had been killed; for resume tests.
    allow_config_change: resume even though the recipe (optimizer, run
      length and cadence, evaluation, ...) differs from the checkpoint's;
      the changes are logged and appended to `config_changes.jsonl`.
  Returns:
    {"step": final step, "metrics": last logged scalars, "eval": results}.
  Raises:
    config_check.ConfigChangeError: the config differs from the checkpoint's
      in what a resume may not change (before anything is compiled).
    checkpoint.CheckpointError: the workdir has checkpoints and none loads.
    NonFiniteLossError: the loss became NaN or infinite.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp, run = experiment, experiment.run
  mesh_lib.maybe_initialize_distributed()
  mesh = mesh_lib.make_mesh()
  is_chief = jax.process_index() == 0

  # A resume that its config refuses stops here, before any compilation.
  mngr = checkpoint.manager(workdir, max_to_keep=run.max_to_keep)
  latest = checkpoint.latest_config(mngr)
  changes = []
  if latest is not None:
    changes = _check_config(exp, mngr, *latest, allow_config_change)

  # Data: each process reads its own shard; the global batch is assembled on
  # the mesh. The per-process batch must split evenly over local devices.
  nproc = jax.process_count()
  if exp.data.batch_size % jax.device_count():
    raise ValueError(
        f"config.data.batch_size={exp.data.batch_size} must be a multiple "
        f"of the number of devices ({jax.device_count()})")
  source = pipeline.data_source(exp.builder, "train")
  make_iterator = (crops.train_iterator
                   if isinstance(exp.data, crops.CropPipelineConfig)
                   else pipeline.train_iterator)
  data_iter = make_iterator(source, exp.data, seed=run.seed,
                            batch_size=exp.data.batch_size // nproc)
  parts = crop_reid.parts_description(exp.system, exp.builder)
  if parts:
    logging.info("GLAD parts: %s", parts)

  state, tx, schedule = step_lib.init_state(
      exp.system, exp.optim, run.seed, exp.init_hw, mesh)
  # Restoring runs collectives; a process that compiled init from the cache
  # must not start them long before the others (mesh.CompiledTogether).
  mesh_lib.barrier("initialized")
  try:
    restored = checkpoint.restore_latest(mngr, state, data_iter)
  except checkpoint.CheckpointError:
    mngr.close()
    raise
  if restored is not None:
    if latest is None or restored.step != latest[0]:
      # The checkpoint checked above was damaged: check the one restored.
      changes = _check_config(exp, mngr, restored.step, restored.config,
                              allow_config_change)
    logging.info("Resumed from %s at step %d", mngr.directory, restored.step)
    state = restored.state
    if changes:
      logging.warning(
          "Resuming at step %d with a changed recipe (allow_config_change):"
          " %s", restored.step, "; ".join(c.describe() for c in changes))
      if is_chief:
        config_check.record_changes(workdir, restored.step, changes)
  elif exp.init_from:
    variables = exp.system.init_from(
        state_lib.variables_of(state), exp.init_from,
        normalization=exp.data.normalization)
    state = state.replace(
        params=variables["params"],
        model_state={k: v for k, v in variables.items() if k != "params"})

  if is_chief:
    config_check.write_config(workdir, exp.config)

  step_fn = mesh_lib.CompiledTogether(
      step_lib.make_train_step(exp.system, tx, schedule, mesh,
                               seed=run.seed), "train_step")

  num_steps = int(run.num_steps)
  step = int(jax.device_get(state.step))
  writer = _MetricsWriter(workdir, step)
  first = step
  last_logged: dict[str, float] = {}
  last_saved = step
  t0, t_last, step_last = time.time(), time.time(), step
  # Seconds spent waiting for the input pipeline since the last log line.
  # The step runs asynchronously, so `next` overlaps the running step and
  # only a pipeline slower than the step makes this wait.
  input_wait = 0.0
  if step == first and step < num_steps:
    logging.info("Compiling the train step (first step of each scale bucket "
                 "compiles once)...")
  try:
    while step < num_steps and (stop_after is None or step < stop_after):
      t_input = time.perf_counter()
      host_batch = next(data_iter)
      input_wait += time.perf_counter() - t_input
      batch = mesh_lib.host_to_global(host_batch, mesh)
      state, metrics = step_fn(state, batch)
      step += 1
      do_log = step % run.log_every == 0 or step == num_steps
      do_save = (step % run.checkpoint_every == 0 or step == num_steps
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
        scalars["train/input_wait"] = min(
            input_wait / max(now - t_last, 1e-9), 1.0)
        input_wait = 0.0
        writer.write(step, scalars)
        last_logged = scalars
        logging.info(
            "step %d/%d  loss %.4f (%s)  %.2f steps/s  input wait %.0f%%  "
            "ETA %s", step, num_steps, scalars["train/loss"],
            _loss_terms(scalars), rate, 100 * scalars["train/input_wait"],
            _format_eta((num_steps - step) / max(rate, 1e-9)))
        t_last, step_last = now, step
      if do_save:
        checkpoint.save(mngr, step, state, data_iter, exp.config)
        last_saved = step
  finally:
    mngr.wait_until_finished()
    writer.close()
  logging.info("Trained %d steps in %.1f s", step - first, time.time() - t0)

  results: dict[str, Any] = {"step": step, "metrics": last_logged}
  if step >= num_steps and run.eval_at_end:
    results["eval"] = eval_run.evaluate(
        exp.system, state_lib.variables_of(state),
        data=eval_run.EvalData(exp.builder, exp.dataset.label, exp.data),
        options=exp.eval, mesh=mesh, workdir=workdir, label=f"step_{step}",
        step=step)
  mngr.close()
  return results

