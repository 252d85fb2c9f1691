"""Checkpoints: one orbax CheckpointManager per workdir.

A checkpoint at step s holds
  state      the whole TrainState (params, model state, optimizer state and
             the system's extra state, e.g. AlignPS's OIM memory),
  data_iter  the Grain iterator state, so the data order survives a resume,
  config     the experiment config as JSON, from which `ps_jax.eval` and
             `ps-search` rebuild the experiment (`ps_jax.experiment`).
Orbax writes each step into a temporary directory and renames it when
complete, so a run killed while saving leaves the previous checkpoint intact
and `latest_step()` never points at a partial one.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str | pathlib.Path, *, max_to_keep: int = 3,
            async_save: bool = True) -> ocp.CheckpointManager:
  """The checkpoint manager of `workdir` (checkpoints under workdir/ckpt)."""
  path = pathlib.Path(workdir).absolute() / "ckpt"
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
          create=True))


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Any | None, config: Mapping[str, Any]) -> None:
  """Save state, data iterator and config (plain JSON data) at `step`
  (asynchronously)."""
  items = {"state": ocp.args.StandardSave(state),
           "config": ocp.args.JsonSave(json.loads(json.dumps(dict(config))))}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any,
            data_iter: Any | None, step: int | None = None) -> Any:
  """Restore into `abstract_state`'s structure and shardings.

  `data_iter`, if given, is set to the saved iterator state in place.
  Returns the restored TrainState.
  """
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]


def restore_variables(workdir: str | pathlib.Path, step: int | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any], int]:
  """Config, model variables and step of a checkpoint, for inference.

  Orbax restores arrays with the shardings they were saved with, and refuses
  a checkpoint written on other devices ("topology mismatch": trained on 8
  devices, evaluated on 1). Inference needs no sharding, so every array is
  restored onto one local device with the shapes and dtypes of the
  checkpoint's metadata, whatever devices wrote it.

  Only the parameters and model state are read: no abstract train state (and
  no optimizer) has to be rebuilt.

  Returns:
    (config as a plain dict, {"params": ..., <model_state collections>},
    step).
  """
  workdir = pathlib.Path(workdir)
  if not (workdir / "ckpt").is_dir():
    raise FileNotFoundError(
        f"no checkpoint in {workdir / 'ckpt'}: train first "
        f"(python train.py --workdir {workdir})")
  mngr = manager(workdir, async_save=False)
  steps = list(mngr.all_steps())
  step = mngr.latest_step() if step is None else int(step)
  if step is None or step not in steps:
    raise FileNotFoundError(
        f"no checkpoint{'' if step is None else f' for step {step}'} in "
        f"{workdir / 'ckpt'}; have steps {steps}")
  step_dir = ocp.step.find_step_path(
      mngr.directory, ocp.step.standard_name_format(), step=step)
  meta = ocp.StandardCheckpointHandler().metadata(
      pathlib.Path(step_dir) / "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      meta, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      config=ocp.args.JsonRestore()))
  state = restored["state"]
  return (restored["config"],
          {"params": state["params"], **state["model_state"]}, step)
