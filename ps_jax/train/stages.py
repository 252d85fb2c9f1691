"""Training a two-step experiment: each stage on its own, then the pipeline.

  train_and_evaluate(experiment, workdir)

A two-step experiment (`system="two_step"`, `ps_jax.systems.two_step`)
names two whole configs, a detector's and a crop re-ID net's, each with a
workdir (`detector_workdir`, `reid_workdir`; by default `<workdir>/detector`
and `<workdir>/reid`). For each stage in turn:
  * a workdir whose newest checkpoint has reached the stage's `num_steps`
    is reused as it is, once its checkpoint is checked to hold the stage's
    system and model (`experiment.check_stage_checkpoint`);
  * otherwise the stage is trained there by the ordinary loop
    (`loop.train_and_evaluate`: it resumes a stage that was stopped part way
    and ends with the stage's own evaluation).
Then the two newest checkpoints are restored and the pipeline is evaluated
on the two-step config's dataset and protocol; its config goes to
`<workdir>/config.json`, which `python -m ps_jax.eval --workdir <workdir>`
and `ps-search` read to rebuild it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from absl import logging

from ps_jax import checkpoint
from ps_jax import experiment as experiment_lib
from ps_jax import mesh as mesh_lib
from ps_jax.eval import run as eval_run
from ps_jax.train import config_check
from ps_jax.train import loop


def finished_step(folder: pathlib.Path, num_steps: int
                  ) -> tuple[int, dict[str, Any]] | None:
  """(step, config) of the newest checkpoint in `folder` if it has reached
  `num_steps`, else None."""
  if not (folder / "ckpt").is_dir():
    return None
  mngr = checkpoint.manager(folder, async_save=False)
  try:
    latest = checkpoint.latest_config(mngr)
  finally:
    mngr.close()
  return latest if latest is not None and latest[0] >= num_steps else None


def label(steps: dict[str, int]) -> str:
  """'two_step_detector800_reid1200': names the evaluated pair."""
  return "two_step_" + "_".join(f"{k}{v}" for k, v in steps.items())


def train_and_evaluate(exp: Any, workdir: str | pathlib.Path, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Train the stages that have no finished checkpoint, then evaluate.

  Args:
    exp: a two-step `ps_jax.experiment.Experiment` (`exp.stages` set).
    workdir: the two-step run's folder (config.json, eval_results.json,
      the prediction cache; the stages' default workdirs).
    allow_config_change: passed to each stage's training loop.
  Returns:
    {"stages": {name: the stage loop's results, or "reused"}, "steps":
    {name: step}, "eval": the pipeline's results (if run.eval_at_end)}.
  Raises:
    experiment.ConfigError: a reused stage checkpoint of another model.
    Whatever a stage's training raises.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  folders = experiment_lib.stage_workdirs(exp, workdir)
  results: dict[str, Any] = {"stages": {}}
  for name, folder in folders.items():
    stage = exp.stages[name]
    done = finished_step(folder, stage.run.num_steps)
    if done is not None:
      experiment_lib.check_stage_checkpoint(name, folder, done[1],
                                            stage.config)
      logging.info("%s: reusing %s (step %d)", name, folder, done[0])
      results["stages"][name] = "reused"
      continue
    logging.info("%s: training %s in %s", name, stage.system_name, folder)
    results["stages"][name] = loop.train_and_evaluate(
        stage, str(folder), allow_config_change=allow_config_change)
  if jax.process_index() == 0:
    config_check.write_config(workdir, exp.config)
  variables, steps = experiment_lib.restore_stages(exp, workdir)
  results["steps"] = steps
  if exp.run.eval_at_end:
    results["eval"] = eval_run.evaluate(
        exp.system, variables,
        data=eval_run.EvalData(exp.builder, exp.dataset.label, exp.data),
        options=exp.eval, mesh=mesh_lib.make_mesh(), workdir=workdir,
        label=label(steps))
  return results


__all__ = ["finished_step", "label", "train_and_evaluate"]
