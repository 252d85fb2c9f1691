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
  data             ps_jax.data.pipeline.PipelineConfig, or
                   ps_jax.data.crops.CropPipelineConfig (crop re-ID)
  optim            ps_jax.train.optim.OptimOptions
  run              RunOptions
  eval             ps_jax.eval.protocols.EvalOptions
  init_from        str (a local weights file, or ""; for IDE also a trained
                   detector's workdir: IDE_det)
  detector, reid   two whole experiment configs, for the two-step system
                   (`system="two_step"`): built as experiments of their own
                   (`Experiment.stages`); `model` then holds the two-step
                   options (`ps_jax.systems.two_step.TwoStepOptions`)

Every value is checked here, once, before a dataset is built or anything is
compiled: `from_config` raises ConfigError naming the field, the value and
what is allowed. Errors a user can fix (`USER_ERRORS`: a config value, a
workdir, a damaged dataset) are printed by the entry points as one line,
`<prog>: error: <message>`; PS_JAX_TRACEBACK=1 (`show_traceback`) shows
the traceback instead.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from ps_jax import checks
from ps_jax import checkpoint
from ps_jax import systems
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.eval import protocols
from ps_jax.systems import base
from ps_jax.systems import two_step
from ps_jax.train import config_check
from ps_jax.train import optim

DEFAULT_SYSTEM = "alignps"
TWO_STEP = "two_step"
STAGES = ("detector", "reid")
# Set to 1 to see the traceback of errors the entry points print as one line.
TRACEBACK_ENV = "PS_JAX_TRACEBACK"


class UserError(Exception):
  """An error the user can fix (a config value, a workdir); the entry
  points print its message as one line, without a traceback."""


class ConfigError(UserError, ValueError):
  """A config value that is out of range, unknown or inconsistent."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be used: a file, not writable, or missing."""


# What the entry points report as one line: the errors above, a damaged
# dataset (named with its rebuild command), an evaluation that cannot run as
# asked, a workdir none of whose checkpoints loads, and a resume that the
# checkpoint's config refuses. Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (UserError, pipeline.DataError, protocols.EvalError,
               checkpoint.CheckpointError, config_check.ConfigChangeError)


def show_traceback() -> bool:
  """Whether $PS_JAX_TRACEBACK asks for tracebacks instead of one line."""
  return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


def one_line(error: BaseException) -> str:
  """An error's message on one line (some span several: their lines are
  joined with '; ')."""
  text = ""
  for line in str(error).splitlines():
    line = " ".join(line.split())
    if line:
      text += (" " if not text or text[-1] in ":;," else "; ") + line
  return text.strip() or type(error).__name__


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
  checks.require(ok, name, value, expected, error=ConfigError)


_integer = checks.is_integer


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
  """Which TFDS dataset (`data_builders.build.load_builder`'s arguments)."""
  name: str
  config: str = ""
  data_dir: str = ""
  manual_dir: str = ""

  def __post_init__(self):
    from data_builders import build  # pylint: disable=g-import-not-at-top
    _require(self.name in build.BUILDERS, "dataset.name", self.name,
             f"one of {sorted(build.BUILDERS)}")
    for name in ("config", "data_dir", "manual_dir"):
      _require(isinstance(getattr(self, name), str), f"dataset.{name}",
               getattr(self, name), "a string ('' for the default)")

  @property
  def label(self) -> str:
    """'name/config' (or 'name'), for results and logs."""
    return f"{self.name}/{self.config}".rstrip("/")

  def load_builder(self) -> Any:
    """The prepared builder, built first if it is missing.

    Raises:
      pipeline.DataError: a damaged dataset (named, with the command that
        rebuilds it) or a real dataset without its download.
    """
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
    for name in ("num_steps", "log_every", "checkpoint_every", "max_to_keep"):
      value = getattr(self, name)
      _require(_integer(value) and value >= 1, f"run.{name}", value,
               "an integer >= 1")
    _require(_integer(self.seed), "run.seed", self.seed, "an integer")
    _require(isinstance(self.eval_at_end, bool), "run.eval_at_end",
             self.eval_at_end, "True or False")


@dataclasses.dataclass(frozen=True)
class TwoStepRunOptions:
  """The `run` section of a two-step config: its stages have their own
  loops; `seed` initialises the untrained pair (`--untrained`)."""
  seed: int = 0
  eval_at_end: bool = True

  def __post_init__(self):
    _require(_integer(self.seed), "run.seed", self.seed, "an integer")
    _require(isinstance(self.eval_at_end, bool), "run.eval_at_end",
             self.eval_at_end, "True or False")


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
    run: loop length, cadence and seed (`TwoStepRunOptions` for the
      two-step system).
    eval: the evaluation protocol options.
    init_from: a local pretrained-weights file (for IDE also a trained
      detector's workdir, IDE_det), or "".
    config: the whole config as plain JSON data; saved with every checkpoint
      so that evaluation and search rebuild the same experiment.
    stages: for the two-step system, {"detector": Experiment, "reid":
      Experiment}, each trained on its own (`ps_jax.train.stages`); else
      None. `optim` is then None too.
  """
  system_name: str
  system: Any
  builder: Any
  dataset: DatasetOptions
  data: Any  # pipeline.PipelineConfig or crops.CropPipelineConfig
  optim: optim.OptimOptions | None
  run: Any  # RunOptions, or TwoStepRunOptions
  eval: protocols.EvalOptions
  init_from: str
  config: Mapping[str, Any]
  stages: Mapping[str, "Experiment"] | None = None

  @property
  def num_ids(self) -> int:
    return num_train_ids(self.builder)

  @property
  def init_hw(self) -> tuple[int, int]:
    """(H, W) of the example batch the system is initialised with."""
    return example_hw(self.data)


def example_hw(data: Any) -> tuple[int, int]:
  """(H, W) of the images a system is initialised with: the first training
  bucket of the scene pipeline, the crop size of the crop pipeline."""
  if isinstance(data, crops.CropPipelineConfig):
    return tuple(data.image_hw)
  return tuple(data.train_scales[0])


def num_train_ids(builder: Any) -> int:
  """Labeled training identities, from the dataset's metadata."""
  metadata = builder.info.metadata or {}
  value = metadata.get("num_train_ids")
  if not _integer(value) or value < 0:
    raise pipeline.DataError(
        f"dataset {builder.name!r}: num_train_ids={value!r} in its "
        "metadata.json; expected an integer >= 0. "
        f"Rebuild it: {pipeline.builder_rebuild_command(builder)}")
  return value


def plain_config(config: Any) -> dict[str, Any]:
  """A ConfigDict or mapping as JSON-stable plain data (tuples -> lists)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=str))


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
  if name not in config:
    raise ConfigError(f"config: no {name!r} section; every experiment has "
                      "dataset, data, model, loss, optim, run and eval")
  return dict(config[name])


def _typed_section(section: str, cls: type, values: Mapping[str, Any]
                   ) -> Any:
  return base.typed(f"config.{section}", cls, values)


def from_config(config: Any, *, builder: Any | None = None,
                system: Any | None = None,
                for_training: bool = True) -> Experiment:
  """Builds the experiment a config describes.

  Every section is checked before the dataset is loaded (or built) and the
  system is built; nothing is compiled here.

  Args:
    config: an experiment config (ConfigDict) or the plain dict saved with a
      checkpoint.
    builder: the dataset's builder, if the caller has it already.
    system: a system built by the caller instead of the config's (a user's
      own system, or the toy system of docs/architecture.md).
    for_training: also check what only training needs: the global batch
      splits evenly over the devices (`jax.device_count()`). Evaluation
      rounds its batch up instead.
  Raises:
    ConfigError: a missing section, an unknown key (named with the valid
      ones), or a value out of range (named with what is allowed).
    pipeline.DataError: the dataset cannot be read (named, with the command
      that rebuilds it).
  """
  plain = plain_config(config)
  if plain.get("system") == TWO_STEP and system is None:
    return _two_step_experiment(plain, builder, for_training)
  try:
    dataset = _typed_section("dataset", DatasetOptions,
                             _section(plain, "dataset"))
    data = data_options(plain)
    optim_opts = optim_options(plain)
    run = _typed_section("run", RunOptions, _section(plain, "run"))
    eval_opts = eval_options(plain)
    init_from = plain.get("init_from", "") or ""
    _require(isinstance(init_from, str), "init_from", init_from,
             "a weights file path, or '' to train from scratch")
    if system is None:
      # The system's options are checked now, before a dataset is built;
      # it is built again below with the dataset's identity count.
      build_system(plain, 0)
  except ConfigError:
    raise
  except ValueError as e:  # a typed object's own range check
    raise ConfigError(str(e)) from e
  if for_training:
    _check_devices(data.batch_size)
  scaled = optim_opts.for_global_batch(data.batch_size)
  if scaled.lr != optim_opts.lr:
    logging.info("optim.lr %g -> %g: linear scaling from the reference "
                 "batch %d to the global batch %d", optim_opts.lr, scaled.lr,
                 optim_opts.lr_reference_batch, data.batch_size)
  optim_opts = scaled
  builder = builder if builder is not None else dataset.load_builder()
  if system is None:
    name = plain.get("system", DEFAULT_SYSTEM)
    system = build_system(plain, num_train_ids(builder))
  else:
    name = type(system).__name__
  return Experiment(
      system_name=name, system=system, builder=builder, dataset=dataset,
      data=data, optim=optim_opts, run=run, eval=eval_opts,
      init_from=init_from, config=plain)


def _two_step_experiment(plain: dict[str, Any], builder: Any,
                         for_training: bool) -> Experiment:
  """The two-step experiment: its `detector` and `reid` configs built as
  experiments (a top-level `dataset.data_dir` is the default of both), the
  system from their systems and the `model` section (`crop_hw` defaults to
  the re-ID config's `data.image_hw`), and its own dataset, data, run and
  eval sections (what it is evaluated on)."""
  try:
    top_dir = (_section(plain, "dataset").get("data_dir") or "")
    stages = {}
    for name in STAGES:
      stage = plain.get(name)
      _require(isinstance(stage, Mapping), name, stage,
               "a whole experiment config (a configs/*.py get_config())")
      stage = copy.deepcopy(dict(stage))
      if top_dir and not (stage.get("dataset") or {}).get("data_dir"):
        stage["dataset"] = {**stage.get("dataset", {}), "data_dir": top_dir}
      stages[name] = from_config(stage, for_training=for_training)
    for name in ("detector_workdir", "reid_workdir"):
      _require(isinstance(plain.get(name, ""), str), name, plain.get(name),
               "a folder path, or '' for <workdir>/" + name[:-8])
    det, reid = stages["detector"], stages["reid"]
    _require(det.data.normalization == reid.data.normalization,
             "reid.data.normalization", reid.data.normalization,
             f"the detector's ({det.data.normalization!r}): crops are cut "
             "from the detector's normalized input")
    model = dict(plain.get("model") or {})
    model.setdefault("crop_hw", list(reid.data.image_hw))
    system = two_step.from_parts(det.system, reid.system, model)
    dataset = _typed_section("dataset", DatasetOptions,
                             _section(plain, "dataset"))
    data = pipeline.PipelineConfig.from_config(_section(plain, "data"))
    run = _typed_section("run", TwoStepRunOptions, _section(plain, "run"))
    eval_opts = eval_options(plain)
    unknown = sorted(k for k in _section(plain, "eval")
                     if k not in {f.name for f in dataclasses.fields(
                         protocols.EvalOptions)})
    _require(not unknown, "eval", unknown, "no predict keys: the "
             "detector's are in detector.eval")
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  builder = builder if builder is not None else dataset.load_builder()
  return Experiment(
      system_name=TWO_STEP, system=system, builder=builder, dataset=dataset,
      data=data, optim=None, run=run, eval=eval_opts, init_from="",
      config=plain, stages=stages)


def stage_workdirs(exp: Experiment, workdir: str | pathlib.Path
                   ) -> dict[str, pathlib.Path]:
  """{"detector": folder, "reid": folder} of a two-step experiment: the
  config's `detector_workdir` / `reid_workdir`, or `<workdir>/detector`
  and `<workdir>/reid` where they are ''."""
  return {name: pathlib.Path(exp.config.get(f"{name}_workdir") or
                             pathlib.Path(workdir) / name)
          for name in STAGES}


def is_crop_reid(config: Any) -> bool:
  """Whether a config's system embeds person crops (IDE, MLFN, GLAD)."""
  return plain_config(config).get("system",
                                  DEFAULT_SYSTEM) in systems.CROP_REID


def data_options(config: Any) -> Any:
  """The input pipeline settings of a config's `data` section: the scene
  pipeline's `PipelineConfig`, or `crops.CropPipelineConfig` for a crop
  re-ID system.

  Raises:
    ValueError: an unknown key or a value out of range (named).
  """
  section = _section(plain_config(config), "data")
  if is_crop_reid(config):
    return crops.CropPipelineConfig.from_config(section)
  return pipeline.PipelineConfig.from_config(section)


def _check_devices(batch_size: int) -> None:
  """ConfigError unless the global batch splits evenly over the devices."""
  # pylint: disable=g-import-not-at-top
  import jax
  from ps_jax import mesh as mesh_lib
  # pylint: enable=g-import-not-at-top
  # Multi-process runs must initialise before jax counts devices.
  mesh_lib.maybe_initialize_distributed()
  devices = jax.device_count()
  _require(batch_size % devices == 0, "data.batch_size", batch_size,
           f"a multiple of the {devices} devices (each takes an equal "
           "share of the batch)")


def _gallery_sizes(value: Any) -> list[Any]:
  """Gallery sizes from one config item: 'full' is -1, and a string may
  hold several, comma-separated (the command line's form)."""
  if not isinstance(value, str):
    return [value]
  sizes = []
  for item in value.split(","):
    item = item.strip().lower()
    if item in ("full", "full_set"):
      sizes.append(-1)
    elif item:
      try:
        sizes.append(int(item))
      except ValueError:
        sizes.append(item)  # reported below, with the whole value
  return sizes


def eval_options(config: Any) -> protocols.EvalOptions:
  """The protocol options of a config's `eval` section (its other keys are
  the system's predict options), checked.

  `gallery_sizes` may hold 'full' for the full set (-1), and a string
  "50,100,full" (the command line's form).

  Raises:
    ConfigError: det_thresh outside [0, 1], a gallery size that is not
      -1 or >= 1, or an unknown `duplicates` rule.
  """
  section = _section(plain_config(config), "eval")
  keys = {f.name for f in dataclasses.fields(protocols.EvalOptions)}
  values = {k: v for k, v in section.items() if k in keys}
  det_thresh = values.get("det_thresh", protocols.EvalOptions.det_thresh)
  _require(isinstance(det_thresh, (int, float)) and not isinstance(
      det_thresh, bool) and 0 <= det_thresh <= 1, "eval.det_thresh",
           det_thresh, "a number in [0, 1]")
  sizes = values.get("gallery_sizes") or ()
  if isinstance(sizes, str) or not isinstance(sizes, Sequence):
    sizes = [sizes]
  sizes = [n for item in sizes for n in _gallery_sizes(item)]
  _require(all(_integer(n) and (n == -1 or n >= 1) for n in sizes),
           "eval.gallery_sizes", values.get("gallery_sizes"),
           "gallery sizes >= 1 and -1 (or 'full') for the full set, e.g. "
           "50,100,-1")
  values["gallery_sizes"] = tuple(sizes)
  duplicates = values.get("duplicates", protocols.EvalOptions.duplicates)
  _require(duplicates in protocols.DUPLICATES, "eval.duplicates", duplicates,
           f"one of {protocols.DUPLICATES}")
  for name in ("cws", "prw_paper", "cbgm"):
    _require(isinstance(values.get(name, False), bool), f"eval.{name}",
             values.get(name), "True or False")
  return protocols.EvalOptions(**values)


def build_system(config: Any, num_ids: int) -> Any:
  """The system a config names (`system`, default 'alignps'), built from its
  model and loss sections and the predict keys of its eval section.

  For entry points that have no dataset (the benches); `from_config` reads
  `num_ids` from the dataset's metadata.

  Raises:
    ValueError: an unknown system or key, or an option out of range.
  """
  plain = plain_config(config)
  keys = {f.name for f in dataclasses.fields(protocols.EvalOptions)}
  return systems.build(
      plain.get("system", DEFAULT_SYSTEM), num_ids=int(num_ids),
      model=_section(plain, "model"), loss=_section(plain, "loss"),
      predict={k: v for k, v in _section(plain, "eval").items()
               if k not in keys})


def optim_options(config: Any) -> optim.OptimOptions:
  """The optimizer settings of a config's `optim` section.

  Raises:
    ValueError: an unknown key or a value out of range.
  """
  return _typed_section("optim", optim.OptimOptions,
                        _section(plain_config(config), "optim"))


def _existing(path: pathlib.Path) -> pathlib.Path:
  """`path`, or its nearest ancestor that exists."""
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def writable(path: str | pathlib.Path) -> bool:
  """Whether a folder `path` can be written, or created and written.

  Asks the OS (`os.access`): a read-only filesystem is not writable even
  for root.
  """
  existing = _existing(pathlib.Path(path).absolute())
  return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def check_workdir(workdir: str | pathlib.Path) -> None:
  """WorkdirError unless training can write `workdir`: a writable folder,
  or one that can be created."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"workdir {path} is a file, not a folder")
  if not writable(path):
    existing = _existing(path.absolute())
    raise WorkdirError(
        f"workdir {path} is not writable" if existing == path.absolute() else
        f"cannot create workdir {path}: {existing} is "
        + ("not writable" if existing.is_dir() else "a file"))


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
    raise ConfigError(f"config file {file} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def is_two_step_workdir(workdir: str | pathlib.Path) -> bool:
  """Whether `workdir` is a two-step run's: no checkpoint of its own, and a
  config.json naming the two-step system."""
  path = pathlib.Path(workdir)
  if (path / "ckpt").is_dir() or not (path / "config.json").is_file():
    return False
  return read_workdir_config(path).get("system") == TWO_STEP


def read_workdir_config(workdir: str | pathlib.Path) -> dict[str, Any]:
  """The config a run wrote to `<workdir>/config.json`.

  Raises:
    WorkdirError: the file is not JSON (named).
  """
  path = pathlib.Path(workdir) / "config.json"
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path}: not a JSON config ({e})") from e


def check_stage_checkpoint(name: str, folder: str | pathlib.Path,
                           saved: Mapping[str, Any],
                           ours: Mapping[str, Any]) -> None:
  """ConfigError unless the checkpoint in a stage's folder (config `saved`)
  was trained with the system and model of the stage's config `ours`: a
  reused workdir of another run would otherwise be predicted with."""
  for key, default in (("system", DEFAULT_SYSTEM), ("model", None)):
    if saved.get(key, default) != ours.get(key, default):
      raise ConfigError(
          f"{name}_workdir={str(folder)!r} holds a checkpoint of another "
          f"{key} than {name}.{key} of this config (checkpoint: "
          f"{saved.get(key, default)!r}, config: "
          f"{ours.get(key, default)!r}); point {name}_workdir at a run of "
          f"this {name} config, or at a new folder to train one")


def restore_stages(exp: Experiment, workdir: str | pathlib.Path
                   ) -> tuple[dict[str, Any], dict[str, int]]:
  """The newest checkpoints of a two-step experiment's stages.

  Returns:
    ({"detector": variables, "reid": variables}, {"detector": step, "reid":
    step}).
  Raises:
    FileNotFoundError: a stage has no checkpoint (named, with the command
      that trains it).
    ConfigError: a stage's checkpoint was trained with another model or
      system than the two-step config names (a reused workdir of another
      run).
  """
  from ps_jax import checkpoint  # pylint: disable=g-import-not-at-top
  variables, steps = {}, {}
  for name, folder in stage_workdirs(exp, workdir).items():
    if not (folder / "ckpt").is_dir():
      raise FileNotFoundError(
          f"{name}: no checkpoint in {folder / 'ckpt'}: train the stages "
          f"first (python train.py --config=<this two-step config> "
          f"--workdir={workdir})")
    saved, variables[name], steps[name] = checkpoint.restore_variables(
        folder)
    check_stage_checkpoint(name, folder, saved, exp.stages[name].config)
  return variables, steps


def restore(workdir: str | pathlib.Path, step: int | None = None, *,
            config: Any | None = None) -> tuple[Experiment, Any, int]:
  """The experiment, model variables and step of a workdir's checkpoint.

  A two-step workdir (`is_two_step_workdir`) has no checkpoint of its own:
  its stages' newest checkpoints are restored (`restore_stages`) and the
  step returned is the detector's.

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
  if config is None and is_two_step_workdir(workdir):
    config = read_workdir_config(workdir)
  if config is not None and plain_config(config).get("system") == TWO_STEP:
    exp = from_config(config, for_training=False)
    variables, steps = restore_stages(exp, workdir)
    return exp, variables, steps["detector"]
  saved, variables, step = checkpoint.restore_variables(workdir, step)
  return (from_config(saved if config is None else config,
                      for_training=False), variables, step)
