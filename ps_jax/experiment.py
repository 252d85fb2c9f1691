"""The one place where an experiment config becomes typed, built objects.

The entry points (`train.py`, `python -m ps_jax.eval`, `ps-search`, the
benches) read a config file (`configs/*.py`, an `ml_collections.ConfigDict`)
or the config saved with a checkpoint, call `from_config` once, and pass the
`Experiment` down. Below this module nothing sees a ConfigDict: the trainer,
the evaluator and the systems take the built system and typed options.

  config section   typed object                          built by
  system, model,   the system (`ps_jax.systems`)          systems.build
    loss, eval's
    predict keys
  dataset          DatasetOptions + the TFDS builder      data_builders.build
  data             ps_jax.data.pipeline.PipelineConfig
  optim            ps_jax.train.optim.OptimOptions
  run              RunOptions
  eval             ps_jax.eval.protocols.EvalOptions
  init_from        str (a local weights file, or "")
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from ps_jax import systems
from ps_jax.systems import base
from ps_jax.data import pipeline
from ps_jax.eval import protocols
from ps_jax.train import optim

DEFAULT_SYSTEM = "alignps"


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
  """Which TFDS dataset (`data_builders.build.load_builder`'s arguments)."""
  name: str
  config: str = ""
  data_dir: str = ""
  manual_dir: str = ""

  @property
  def label(self) -> str:
    """'name/config' (or 'name'), for results and logs."""
    return f"{self.name}/{self.config}".rstrip("/")

  def load_builder(self) -> Any:
    """The prepared builder, built first if it is missing."""
    from data_builders import build  # pylint: disable=g-import-not-at-top
    return build.load_builder(self.name, self.config or None,
                              self.data_dir or None, self.manual_dir or None)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """Loop length, logging and checkpoint cadence (the `run` section)."""
  num_steps: int
  log_every: int = 50
  checkpoint_every: int = 1000
  max_to_keep: int = 3
  seed: int = 0
  eval_at_end: bool = True

  def __post_init__(self):
    for name in ("log_every", "checkpoint_every", "max_to_keep"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"run.{name}={getattr(self, name)}; expected >= 1")
    if int(self.num_steps) < 0:
      raise ValueError(f"run.num_steps={self.num_steps}; expected >= 0")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run needs, built once from a config.

  Attributes:
    system_name: the config's `system` name.
    system: the built system.
    builder: the dataset's prepared TFDS builder.
    dataset: which dataset.
    data: the input pipeline settings (batch sizes are global).
    optim: the optimizer settings.
    run: loop length, cadence and seed.
    eval: the evaluation protocol options.
    init_from: a local pretrained-weights file, or "".
    config: the whole config as plain JSON data; saved with every checkpoint
      so that evaluation and search rebuild the same experiment.
  """
  system_name: str
  system: Any
  builder: Any
  dataset: DatasetOptions
  data: pipeline.PipelineConfig
  optim: optim.OptimOptions
  run: RunOptions
  eval: protocols.EvalOptions
  init_from: str
  config: Mapping[str, Any]

  @property
  def num_ids(self) -> int:
    return num_train_ids(self.builder)


def num_train_ids(builder: Any) -> int:
  """Labeled training identities, from the dataset's metadata."""
  metadata = builder.info.metadata or {}
  if "num_train_ids" not in metadata:
    raise ValueError(f"dataset {builder.name!r} has no 'num_train_ids' in "
                     "its metadata; rebuild it with python -m data_builders "
                     "build")
  return int(metadata["num_train_ids"])


def plain_config(config: Any) -> dict[str, Any]:
  """A ConfigDict or mapping as JSON-stable plain data (tuples -> lists)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=str))


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
  if name not in config:
    raise ValueError(f"config: no {name!r} section; every experiment has "
                     "dataset, data, model, loss, optim, run and eval")
  return dict(config[name])


def _typed_section(section: str, cls: type, values: Mapping[str, Any]
                   ) -> Any:
  return base.typed(f"config.{section}", cls, values)


def from_config(config: Any, *, builder: Any | None = None,
                system: Any | None = None) -> Experiment:
  """Builds the experiment a config describes.

  Args:
    config: an experiment config (ConfigDict) or the plain dict saved with a
      checkpoint.
    builder: the dataset's builder, if the caller has it already.
    system: a system built by the caller instead of the config's (a user's
      own system, or the toy system of docs/architecture.md).
  Raises:
    ValueError: a missing section or an unknown key, named with the valid
      ones.
  """
  plain = plain_config(config)
  dataset = _typed_section("dataset", DatasetOptions,
                           _section(plain, "dataset"))
  builder = builder if builder is not None else dataset.load_builder()
  if system is None:
    name = plain.get("system", DEFAULT_SYSTEM)
    system = build_system(plain, num_train_ids(builder))
  else:
    name = type(system).__name__
  return Experiment(
      system_name=name, system=system, builder=builder, dataset=dataset,
      data=pipeline.PipelineConfig.from_config(_section(plain, "data")),
      optim=optim_options(plain),
      run=_typed_section("run", RunOptions, _section(plain, "run")),
      eval=eval_options(plain), init_from=str(plain.get("init_from", "") or ""),
      config=plain)


def eval_options(config: Any) -> protocols.EvalOptions:
  """The protocol options of a config's `eval` section (its other keys are
  the system's predict options)."""
  section = _section(plain_config(config), "eval")
  keys = {f.name for f in dataclasses.fields(protocols.EvalOptions)}
  return protocols.EvalOptions(**{k: v for k, v in section.items()
                                  if k in keys})


def build_system(config: Any, num_ids: int) -> Any:
  """The system a config names (`system`, default 'alignps'), built from its
  model and loss sections and the predict keys of its eval section.

  For entry points that have no dataset (the benches); `from_config` reads
  `num_ids` from the dataset's metadata.
  """
  plain = plain_config(config)
  keys = {f.name for f in dataclasses.fields(protocols.EvalOptions)}
  return systems.build(
      plain.get("system", DEFAULT_SYSTEM), num_ids=int(num_ids),
      model=_section(plain, "model"), loss=_section(plain, "loss"),
      predict={k: v for k, v in _section(plain, "eval").items()
               if k not in keys})


def optim_options(config: Any) -> optim.OptimOptions:
  """The optimizer settings of a config's `optim` section."""
  return _typed_section("optim", optim.OptimOptions,
                _section(plain_config(config), "optim"))


def load_config_file(spec: str) -> Any:
  """`get_config()` (or `get_config(arg)`) of a config file `path[:arg]`."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"no config file {file}")
  module_spec = importlib.util.spec_from_file_location(
      f"_ps_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {file} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def restore(workdir: str | pathlib.Path, step: int | None = None, *,
            config: Any | None = None) -> tuple[Experiment, Any, int]:
  """The experiment, model variables and step of a workdir's checkpoint.

  Args:
    workdir: a training workdir.
    step: which checkpoint (default: the latest).
    config: a config to use instead of the one saved with the checkpoint.
  Returns:
    (experiment, {"params": ..., <model state>} on one local device, step).
  Raises:
    FileNotFoundError: no checkpoint (for that step) in `workdir`.
  """
  from ps_jax import checkpoint  # pylint: disable=g-import-not-at-top
  saved, variables, step = checkpoint.restore_variables(workdir, step)
  return from_config(saved if config is None else config), variables, step
