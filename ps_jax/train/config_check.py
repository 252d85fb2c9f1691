"""A resumed run's config against the config its checkpoint was made with.

Every checkpoint holds the plain config of the run that wrote it
(`ps_jax.checkpoint`), and each run, once its config has passed the check,
writes it to `<workdir>/config.json` (`write_config`) for people and for
evaluation: the config of the checkpoints it will save. When a run resumes,
`check` compares the new experiment's config with the config of the latest
checkpoint, before anything is compiled or restored (if that checkpoint
turns out to be damaged and an older one is restored, the older one's
config is checked as well, after the restore). Each key (a dotted path
such as `model.reid_dim`) falls in one of three kinds; the first rule that
matches decides (a rule ending in "." covers a whole section):

  model     (`MODEL_KEYS`) the system, the model, the dataset the model was
            trained on (its identities size the OIM lookup table), the loss
            settings that size the system's extra state, and the input
            normalization the weights have learnt. The checkpoint cannot be
            restored into another model, or would silently mean something
            else: a difference is always an error (start a new workdir).
  harmless  (`HARMLESS_KEYS`) where the files are (`dataset.data_dir`,
            `dataset.manual_dir`), what only a fresh run reads (`init_from`:
            a resumed run never loads pretrained weights), and what changes
            neither the state, nor the data order, nor any result
            (`run.log_every`, `run.eval_at_end`, `data.eval_batch_size`,
            `data.num_threads`, `data.prefetch`). Never an error.
  recipe    every other key: `optim.*`, `run.num_steps`,
            `run.checkpoint_every`, `run.max_to_keep`, `run.seed`, `eval.*`,
            the other `loss.*` keys and the other `data.*` keys, among them
            `data.batch_size` (the saved data iterator counts batches, so a
            new batch size changes which examples come next),
            `data.max_boxes` (the padded batch, not the state: the step
            recompiles) and `data.num_workers` (the saved iterator state has
            the shape of the worker set-up). An error unless the caller opts
            in (`train_and_evaluate(..., allow_config_change=True)`, i.e.
            `train.py --allow_config_change`); then the run goes on with the
            new values, logs a warning and appends the change, with the step,
            to `<workdir>/config_changes.jsonl`. Keys that nobody listed
            (a new section, a new system's keys) are recipe keys, so a
            change is never silently accepted.

A key present on one side only counts as changed (its value on the other
side reads `<absent>`), except a key added to the configs after checkpoints
were written (`ADDED_KEYS`), which the older side has at its default.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from ps_jax.data import pipeline

# The rules of the module docstring; "x." matches every key under x.
MODEL_KEYS = ("system", "model.", "dataset.name", "dataset.config",
              "loss.oim_queue_size", "loss.oim_queue_dims",
              "data.normalization")
HARMLESS_KEYS = ("dataset.data_dir", "dataset.manual_dir", "init_from",
                 "run.log_every", "run.eval_at_end", "data.eval_batch_size",
                 "data.num_threads", "data.prefetch")

MODEL, RECIPE, HARMLESS = "model", "recipe", "harmless"
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"


class _Absent:
  """The value of a key that one config does not have."""

  def __repr__(self) -> str:
    return "<absent>"


_ABSENT = _Absent()


class ConfigChangeError(ValueError):
  """A resumed run's config differs from its checkpoint's in keys that the
  run may not change (or may only with `allow_config_change`)."""


@dataclasses.dataclass(frozen=True)
class Change:
  """One key whose value differs between the checkpoint and this run."""
  key: str
  saved: Any
  current: Any
  kind: str

  def describe(self) -> str:
    return (f"the checkpoint was made with {self.key}={_show(self.saved)}; "
            f"this run has {_show(self.current)}")


def _show(value: Any) -> str:
  return repr(value) if value is _ABSENT else json.dumps(value)


def kind_of(key: str) -> str:
  """MODEL, RECIPE or HARMLESS: the kind of a dotted config key."""
  def matches(rules: Sequence[str]) -> bool:
    return any(key.startswith(r) if r.endswith(".") else
               key == r or key.startswith(r + ".") for r in rules)
  if matches(MODEL_KEYS):
    return MODEL
  if matches(HARMLESS_KEYS):
    return HARMLESS
  return RECIPE


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted key: value} of a nested plain config; lists are values."""
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
  # Tuples and lists, ints and their JSON round trip, compare equal this way.
  return json.loads(json.dumps(dict(config), default=str))


# Keys added after checkpoints were written: absent means this value.
ADDED_KEYS = {"optim.lr_reference_batch": 0}


def _canonical(key: str, value: Any) -> Any:
  """One spelling per value where a key has several: one scale bucket is
  [96, 96] from the command line (--config.data.train_scales=96x96) and
  [[96, 96]] from a config file; a key of `ADDED_KEYS` that a checkpoint's
  config lacks has its default."""
  if value is _ABSENT and key in ADDED_KEYS:
    return ADDED_KEYS[key]
  if key == "data.train_scales" and value is not _ABSENT:
    try:
      return [list(s) for s in pipeline.parse_scales(value)]
    except (ValueError, TypeError):
      return value
  return value


def diff(saved: Mapping[str, Any], current: Mapping[str, Any]
         ) -> list[Change]:
  """Every key whose value differs, sorted by key, with its kind."""
  a, b = flatten(_plain(saved)), flatten(_plain(current))
  changes = []
  for key in sorted(a.keys() | b.keys()):
    old, new = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if _canonical(key, old) != _canonical(key, new):
      changes.append(Change(key, old, new, kind_of(key)))
  return changes


def check(saved: Mapping[str, Any], current: Mapping[str, Any], *,
          step: int, where: str, allow_change: bool = False
          ) -> list[Change]:
  """Refuses a resume whose config changes what it may not.

  Args:
    saved: the config the checkpoint was made with.
    current: this run's config.
    step: the checkpoint's step, for the message.
    where: the checkpoint directory, for the message.
    allow_change: whether recipe changes are accepted.
  Returns:
    The recipe changes (accepted, as `allow_change` was given); harmless
    differences are left out.
  Raises:
    ConfigChangeError: any model change, or a recipe change without
      `allow_change`; the message names every such key with both values.
  """
  changes = diff(saved, current)
  model = [c for c in changes if c.kind == MODEL]
  recipe = [c for c in changes if c.kind == RECIPE]
  if model or (recipe and not allow_change):
    lines = [f"this run's config differs from the one the checkpoint at "
             f"step {step} in {where} was made with."]
    if model:
      lines.append("Keys that define the model or the shape of its state "
                   "(a resume cannot change them; train in a new workdir):")
      lines += [f"  {c.describe()}" for c in model]
    if recipe:
      lines.append(
          "Keys of the recipe (" + ("also changed" if allow_change else
                                    "pass allow_config_change=True, i.e. "
                                    "train.py --allow_config_change, to "
                                    "resume with them") + "):")
      lines += [f"  {c.describe()}" for c in recipe]
    raise ConfigChangeError("\n".join(lines))
  return recipe


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def write_config(workdir: str | pathlib.Path,
                 config: Mapping[str, Any]) -> pathlib.Path:
  """Writes `<workdir>/config.json` atomically (a reader never sees half a
  file); returns its path."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  _atomic_write(path, json.dumps(_plain(config), indent=2, sort_keys=True)
                + "\n")
  return path


def record_changes(workdir: str | pathlib.Path, step: int,
                   changes: Sequence[Change]) -> None:
  """Appends one line {"step", "time", "changes": {key: [old, new]}} to
  `<workdir>/config_changes.jsonl`."""
  row = {"step": int(step),
         "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
             timespec="seconds"),
         "changes": {c.key: [None if c.saved is _ABSENT else c.saved,
                             None if c.current is _ABSENT else c.current]
                     for c in changes}}
  with open(pathlib.Path(workdir) / CHANGES_FILE, "a",
            encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
