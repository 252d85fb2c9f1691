"""Train (and then evaluate) a person-search model.

  python train.py        # AlignPS on the synthetic benchmark
  python train.py --config=configs/synthetic_tiny.py --workdir=/tmp/ps_tiny
  python train.py --config=configs/alignps_cuhk.py --config.optim.lr=0.002
  python train.py --config.data.train_scales=256x256,320x320 \\
      --config.eval.gallery_sizes=50,100,-1

The config is locked: a misspelt override fails at start-up and lists the
valid keys. Sequences are overridden with comma-separated values: image
sizes as HxW (--config.data.train_scales=256x256,320x320, or one bucket
=320x320; --config.data.test_scale=320x320), numbers as a list
(--config.eval.gallery_sizes=50,100,-1 where -1 is the full set;
--config.optim.decay_steps=500,700; --config.model.stage_with_dcn=
False,True,True,True); the Python form '(256, 256),(320, 320)' works too.
Every value is checked before anything is built or compiled.

A two-step config (configs/two_step_*.py) trains its detector and its
re-ID net, each in its own workdir, unless a finished checkpoint is there,
then evaluates the pair into --workdir (docs/two_step.md).

Several processes (a TPU pod slice, GPU nodes under Slurm, or CPU
processes on one machine) train one run together: clusters jax detects need
nothing more; a manual launch gives every process --coordinator_address,
--num_processes and --process_id (docs/scaling.md).

Re-running with the same --workdir resumes from its latest checkpoint
(--allow_config_change to resume with another recipe); at the end the
evaluation protocol of the dataset runs and its table is printed and written
to <workdir>/eval_results.json.

Errors a user can fix (a config value out of range, a workdir that is a
file or not writable, a missing, truncated or corrupt dataset file, a
resume the checkpoint's config refuses) print one line,
`train.py: error: <message>`, and exit with status 1; flag errors exit with
status 1 too. --verbosity=1 (-v 1) or PS_JAX_TRACEBACK=1 shows the full
traceback instead.
"""

import importlib.util
import os
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "configs", "synthetic.py")


def _unknown_override(argv: list[str]) -> str | None:
  """Names the first --config.<path> override that the config lacks, with
  the valid keys where the path goes wrong; None if every path exists."""
  path = _DEFAULT_CONFIG
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(("--config=", "-config=")):
      path = arg.split("=", 1)[1]
    elif arg in ("--config", "-config") and i + 1 < len(argv):
      path = argv[i + 1]
  # Loaded as ml_collections loads it: get_config(<text after ":">).
  file, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("_config_to_check", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(*([arg] if arg else []))
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if not name.startswith("config.") or "[" in name:
      continue
    keys = name.split(".")[1:]
    node = config
    for depth, key in enumerate(keys):
      where = ".".join(["config"] + keys[:depth])
      if not isinstance(node, ml_collections.ConfigDict):
        return (f"--{name}: {where} is a {type(node).__name__}, not a "
                "section with keys")
      if key not in node:
        return (f"--{name}: {where} has no key {key!r}; valid keys of "
                f"{where}: {', '.join(sorted(node.keys()))}")
      node = node[key]
  return None


def _exit_if_unknown_override(argv: list[str]) -> None:
  """On ml_collections' error for an override: exit naming the valid keys.

  ml_collections reports an unknown key as a bare AttributeError or KeyError
  with at most one "did you mean" suggestion. Returns (for the caller to
  re-raise the original error) if the cause is something else.
  """
  try:
    message = _unknown_override(argv)
  except Exception:  # pylint: disable=broad-except
    return  # the config file itself does not load: show the original error
  if message is not None:
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


class _TupleParser(tuple_parser.TupleParser):
  """ml_collections' parser of tuple overrides, reading image sizes too.

  "256x256,320x320" becomes ((256, 256), (320, 320)) and "320x320" becomes
  (320, 320) (ml_collections alone rejects both); anything else is parsed
  as ml_collections does ("50,100" is (50, 100)).
  """

  _SIZES = re.compile(r"\s*\d+x\d+(\s*,\s*\d+x\d+)*\s*,?\s*")

  def parse(self, argument):
    if isinstance(argument, str) and self._SIZES.fullmatch(argument):
      argument = re.sub(r"(\d+)x(\d+)", r"(\1, \2)", argument)
    return super().parse(argument)


# Registered before the flag is defined: it parses every tuple override.
config_flags.register_flag_parser_for_type(tuple, _TupleParser())

FLAGS = flags.FLAGS
try:
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG,
      "Experiment config file (configs/*.py), with optional overrides "
      "--config.<section>.<key>=value; sequences comma-separated, image "
      "sizes as HxW: --config.data.train_scales=256x256,320x320, "
      "--config.eval.gallery_sizes=50,100,-1.", lock_config=True)
except (AttributeError, KeyError):
  # Without --config on the command line, ml_collections applies the
  # overrides to the default config here, while defining the flag.
  _exit_if_unknown_override(sys.argv)
  raise
flags.DEFINE_string("workdir", "workdir/synthetic",
                    "Checkpoints, metrics.jsonl, TensorBoard events and "
                    "eval_results.json go here; an existing workdir resumes.")
flags.DEFINE_string("coordinator_address", None,
                    "multi-process run (docs/scaling.md): host:port of "
                    "process 0, the same for every process; clusters jax "
                    "detects (Slurm, Open MPI, Cloud TPU) need none of these "
                    "flags")
flags.DEFINE_integer("num_processes", None,
                     "multi-process run: the number of processes")
flags.DEFINE_integer("process_id", None,
                     "multi-process run: this process's index, 0 .. "
                     "num_processes - 1")
flags.DEFINE_bool("allow_config_change", False,
                  "resume even if the recipe (optimizer, schedule, steps, "
                  "evaluation settings) differs from the checkpoint's; the "
                  "change is logged and recorded in the workdir")


class _QuietLibraries(logging.logging.Filter):
  """Drops the per-save INFO chatter of orbax (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in (
        record.pathname or "")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the valid keys named for a misspelt one."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    _exit_if_unknown_override(argv)
    raise


def _check_init_from(config: ml_collections.ConfigDict,
                     workdir: pathlib.Path) -> None:
  """The pretrained weights a fresh run starts from must exist (a resumed
  run does not read them): a file, or for IDE (IDE_det) a trained
  detector's workdir."""
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  path = config.get("init_from") or ""
  if not isinstance(path, str) or not path or (workdir / "ckpt").is_dir():
    return
  if config.get("system") == "ide":
    if not (os.path.isfile(path)
            or os.path.isdir(os.path.join(path, "ckpt"))):
      raise experiment.ConfigError(
          f"init_from={path!r}; expected an existing weights file, a "
          "trained detector's workdir (IDE_det), or '' to train from "
          "scratch")
  elif not os.path.isfile(path):
    raise experiment.ConfigError(
        f"init_from={path!r}; expected an existing weights file, or '' to "
        "train from scratch")


def _user_errors() -> tuple[type[BaseException], ...]:
  """What is reported as one line: experiment.USER_ERRORS and a diverged
  loss (the last good checkpoint is kept)."""
  # pylint: disable=g-import-not-at-top
  from ps_jax import experiment
  from ps_jax.train import loop
  # pylint: enable=g-import-not-at-top
  return experiment.USER_ERRORS + (loop.NonFiniteLossError,)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # After flag parsing: jax reads XLA flags when it is first imported.
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  from ps_jax import mesh  # pylint: disable=g-import-not-at-top
  from ps_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", FLAGS.config)
  workdir = pathlib.Path(FLAGS.workdir)
  try:
    # First: before anything else asks jax for its devices.
    try:
      mesh.maybe_initialize_distributed(
          FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:
      raise experiment.UserError(str(e)) from e
    experiment.check_workdir(workdir)
    _check_init_from(FLAGS.config, workdir)
    # The config stops here: below, everything takes built, typed objects.
    exp = experiment.from_config(FLAGS.config)
    if exp.stages is not None:  # two-step: each stage, then the pipeline
      from ps_jax.train import stages  # pylint: disable=g-import-not-at-top
      stages.train_and_evaluate(exp, str(workdir),
                                allow_config_change=FLAGS.allow_config_change)
    else:
      loop.train_and_evaluate(exp, str(workdir),
                              allow_config_change=FLAGS.allow_config_change)
  except _user_errors() as e:
    if FLAGS.verbosity >= 1 or experiment.show_traceback():
      raise
    sys.stderr.write(f"train.py: error: {experiment.one_line(e)}\n")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
