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

Checkpoints that heal. A complete checkpoint can still be damaged later (a
disk error, a copy cut short, a file edited by hand). Restoring the latest
checkpoint (`restore_latest` for training, `restore_variables` for
evaluation and search) tries the steps newest first. When an older one
loads, each newer one that did not is moved aside to
`ckpt/<step>.corrupt-<item>-<UTC time>` (the item that failed: state,
data_iter or config; the reason is in `corrupt_reason.txt` inside): a name
outside orbax's step pattern, so orbax no longer lists it, and the training
run goes on from the older step and saves the newer steps afresh. Nothing
is deleted. The log warns which step was skipped and why.
When no step loads, nothing is moved (the cause may lie outside the
checkpoints: a model that no longer matches them, an unreadable disk) and
`CheckpointError` names the workdir and each step's reason. "Loads" means
that every item the caller needs reads: training needs the state, the data
iterator and the config; inference the state's metadata and arrays and the
config. A step without its `_CHECKPOINT_METADATA` file still loads (orbax
reads only the items), so it is kept. With several processes a step loads
only if it loads on every process, and process 0 alone moves directories
while the others wait for it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

# A damaged step directory is renamed to "<step>.corrupt-<item>-<UTC time>".
CORRUPT_MARK = ".corrupt-"
REASON_FILE = "corrupt_reason.txt"
# Reasons are exception messages; TensorStore's run to kilobytes.
_MAX_REASON = 300


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored, or a damaged one cannot be
  moved aside. The message names the workdir and each step's reason."""


class _ItemError(Exception):
  """An item of a checkpoint (state, data_iter, config) does not load."""

  def __init__(self, item: str, error: Exception):
    super().__init__(f"{item}: {error}")
    self.item, self.error = item, error


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore_latest` restored.

  Attributes:
    step: the step restored.
    state: the restored TrainState.
    config: the config the checkpoint was made with (plain JSON data).
    skipped: (step, reason, where it was moved) of each newer checkpoint
      that did not load, newest first; where is None on processes other
      than 0, which do not move anything.
  """
  step: int
  state: Any
  config: dict[str, Any]
  skipped: tuple[tuple[int, str, pathlib.Path | None], ...] = ()


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
  Returns the restored TrainState. One step as it is, damaged or not: the
  trainer restores with `restore_latest`.
  """
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"]


def latest_config(mngr: ocp.CheckpointManager
                  ) -> tuple[int, dict[str, Any]] | None:
  """(step, config) of the newest checkpoint whose config reads, or None.

  Reads only the small config item, so that a resumed run can compare
  configs before it builds or compiles anything. A step whose config does
  not read is passed over here; `restore_latest` then finds it damaged.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, _restore_items(
          mngr, step, {"config": ocp.args.JsonRestore()})["config"]
    except Exception:  # pylint: disable=broad-except
      continue
  return None


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any | None) -> Restored | None:
  """Restores the newest checkpoint that loads (see the module docstring).

  Args:
    mngr: the workdir's manager; when a damaged step is moved aside, its
      list of steps is reloaded, so it keeps saving as before.
    abstract_state: the TrainState whose structure and shardings the state
      is restored into.
    data_iter: the Grain iterator, set in place to the restored position;
      None to restore no iterator.
  Returns:
    The restored step, state and config, and the steps skipped; None when
    the workdir has no checkpoint.
  Raises:
    CheckpointError: no checkpoint loads.
  """
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)

  def load(step):
    items = {"config": ocp.args.JsonRestore()}
    saved_iter = None
    if data_iter is not None:
      saved_iter = _saved_iterator_state(pathlib.Path(mngr.directory) /
                                         str(step) / "data_iter")
      if saved_iter is None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    items["state"] = ocp.args.StandardRestore(target)
    restored = _restore_items(mngr, step, items)
    if saved_iter is not None:
      try:
        data_iter.set_state(saved_iter)
      except Exception as e:  # pylint: disable=broad-except
        raise _ItemError("data_iter", e) from e
    return restored["state"], restored["config"]

  found = _newest_loadable(mngr, load)
  if found is None:
    return None
  step, (state, config), skipped = found
  return Restored(step=step, state=state, config=config, skipped=skipped)


def _saved_iterator_state(directory: pathlib.Path) -> dict[str, Any] | None:
  """The iterator state of a checkpoint written by another number of
  processes; None when it has this process's own file (Grain restores it).

  Grain names the file of process p of n `process_<p>-of-<n>.json`. Every
  process's training stream is a slice of one global stream
  (`ps_jax.data.order`), so every process saved the same state (the number
  of batches produced) and any of them continues the stream on any number
  of processes.

  Raises:
    _ItemError: the checkpoint has no iterator file, or files that differ.
  """
  own = directory / (f"process_{jax.process_index()}-of-"
                     f"{jax.process_count()}.json")
  if own.exists():
    return None
  files = sorted(directory.glob("process_*-of-*.json"))
  if not files:
    raise _ItemError("data_iter", FileNotFoundError(
        f"{directory} has no process_<p>-of-<n>.json iterator state"))
  states = {f.name: json.loads(f.read_text(encoding="utf-8")) for f in files}
  first = next(iter(states.values()))
  if any(v != first for v in states.values()):
    raise _ItemError("data_iter", ValueError(
        f"the iterator states in {directory} differ between processes "
        f"({', '.join(states)}); a checkpoint of ps_jax's global stream has "
        "the same state in every process"))
  logging.warning(
      "%s was saved by %s processes; this run has %d: every process "
      "continues the same global stream", directory, files[0].stem.split(
          "-of-")[-1], jax.process_count())
  return first


def _restore_items(mngr: ocp.CheckpointManager, step: int,
                   items: Mapping[str, Any]) -> dict[str, Any]:
  """Restores the items one by one (in order), so that a failure names its
  item; the small ones go first, to fail before the state is read."""
  restored = {}
  for name, args in items.items():
    try:
      restored[name] = mngr.restore(
          step, args=ocp.args.Composite(**{name: args}))[name]
    except Exception as e:  # pylint: disable=broad-except
      raise _ItemError(name, e) from e
  return restored


def _reason(error: Exception) -> str:
  """'item: Type: first line of the message', cut to _MAX_REASON
  characters."""
  prefix = ""
  if isinstance(error, _ItemError):
    prefix, error = f"{error.item}: ", error.error
  lines = str(error).strip().splitlines()
  text = prefix + f"{type(error).__name__}: {lines[0] if lines else ''}"
  text = text.rstrip(": ")
  return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


def _everywhere(ok: bool) -> bool:
  """Whether `ok` holds on every process.

  Processes must agree on the step they restore: a step that fails on one
  (say its own data-iterator file is damaged) counts as failed on all. (A
  failure inside a collective step of orbax's own restore, on some
  processes only, is beyond this and may still hang; on a shared file
  system every process reads the same files and fails alike.)
  """
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array(int(ok), np.int32))
  return bool(np.all(flags))


def _newest_loadable(mngr: ocp.CheckpointManager,
                     load: Callable[[int], Any]
                     ) -> tuple[int, Any, tuple[Any, ...]] | None:
  """(step, load(step), skipped) for the newest step that loads.

  Newer steps that failed are moved aside only once an older one has
  loaded, which shows that the failure lies in them.
  """
  directory = pathlib.Path(mngr.directory)
  failed: list[tuple[int, str, str]] = []
  for step in sorted(mngr.all_steps(), reverse=True):
    item, reason = "checkpoint", "did not load on another process"
    try:
      value, ok = load(step), True
    except Exception as e:  # pylint: disable=broad-except
      # Whatever a damaged file raises: orbax, TensorStore, JSON, Grain.
      value, ok, reason = None, False, _reason(e)
      item = e.item if isinstance(e, _ItemError) else item
    if _everywhere(ok):
      skipped = _set_aside(mngr, failed) if failed else ()
      return step, value, skipped
    logging.warning("The checkpoint at step %d in %s does not load (%s); "
                    "trying the one before.", step, directory, reason)
    failed.append((step, item, reason))
  if not failed:
    return None
  raise CheckpointError(
      f"no checkpoint in {directory} can be restored. Nothing was moved "
      "aside: when every step fails, the cause may lie outside them (a "
      "model or system that no longer matches them, an unreadable disk).\n"
      + "\n".join(f"  step {s}: {r}" for s, _, r in failed))


def _set_aside(mngr: ocp.CheckpointManager,
               failed: list[tuple[int, str, str]]
               ) -> tuple[tuple[int, str, pathlib.Path | None], ...]:
  """Moves each failed (step, item, reason) to
  <step>.corrupt-<item>-<UTC time>; reloads `mngr`."""
  directory = pathlib.Path(mngr.directory)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      "%Y%m%dT%H%M%SZ")
  skipped = []
  for step, item, reason in failed:
    moved = None
    # One process renames; the others wait at the barrier below.
    if jax.process_index() == 0:
      path = pathlib.Path(ocp.step.find_step_path(
          directory, ocp.step.standard_name_format(), step=step))
      name = f"{step}{CORRUPT_MARK}{item}-{stamp}"
      moved, n = directory / name, 0
      while moved.exists():
        n += 1
        moved = directory / f"{name}-{n}"
      try:
        path.rename(moved)
      except OSError as e:
        raise CheckpointError(
            f"the checkpoint at step {step} in {directory} does not load "
            f"({reason}) and cannot be moved aside to {moved}: {e}") from e
      try:
        (moved / REASON_FILE).write_text(
            f"step {step} did not load on {stamp}:\n{reason}\n",
            encoding="utf-8")
      except OSError:
        pass  # the name already says it; the reason is also in the log
      logging.warning("Moved the damaged checkpoint of step %d aside to %s "
                      "(%s).", step, moved, reason)
    skipped.append((step, reason, moved))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ps_jax_checkpoint_set_aside")
  mngr.reload()  # the manager caches its list of steps
  return tuple(skipped)


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

  Without `step`, the newest checkpoint that loads is restored and newer
  damaged ones are moved aside (the module docstring); a given `step` is
  restored or refused, and nothing is moved.

  Returns:
    (config as a plain dict, {"params": ..., <model_state collections>},
    step).
  Raises:
    FileNotFoundError: no checkpoint (for that step) in `workdir`.
    CheckpointError: the checkpoint (for that step) does not load.
  """
  workdir = pathlib.Path(workdir)
  if not (workdir / "ckpt").is_dir():
    raise FileNotFoundError(
        f"no checkpoint in {workdir / 'ckpt'}: train first "
        f"(python train.py --workdir {workdir})")
  mngr = manager(workdir, async_save=False)
  steps = list(mngr.all_steps())
  if not steps or (step is not None and int(step) not in steps):
    raise FileNotFoundError(
        f"no checkpoint{'' if step is None else f' for step {step}'} in "
        f"{workdir / 'ckpt'}; have steps {steps}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def load(s):
    config = _restore_items(mngr, s, {"config": ocp.args.JsonRestore()})
    step_dir = ocp.step.find_step_path(
        mngr.directory, ocp.step.standard_name_format(), step=s)
    try:
      meta = ocp.StandardCheckpointHandler().metadata(
          pathlib.Path(step_dir) / "state")
    except Exception as e:  # pylint: disable=broad-except
      raise _ItemError("state", e) from e
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        meta, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    state = _restore_items(
        mngr, s, {"state": ocp.args.StandardRestore(target)})
    return config["config"], state["state"]

  try:
    if step is None:
      step, (config, state), _ = _newest_loadable(mngr, load)
    else:
      step = int(step)
      try:
        config, state = load(step)
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(
            f"the checkpoint at step {step} in {mngr.directory} does not "
            f"load: {_reason(e)}") from e
  finally:
    mngr.close()
  return config, {"params": state["params"], **state["model_state"]}, step
