"""Train (and then evaluate) a person-search model.

  python train.py                                   # AlignPS on the synthetic benchmark
  python train.py --config=configs/synthetic_tiny.py --workdir=/tmp/ps_tiny
  python train.py --config=configs/alignps_cuhk.py --config.optim.lr=0.002

The config is locked: a misspelt override fails at start-up and lists the
valid keys. Re-running with the same --workdir resumes from its latest
checkpoint; at the end the evaluation protocol of the dataset runs and its
table is printed and written to <workdir>/eval_results.json.
"""

import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

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


FLAGS = flags.FLAGS
try:
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG,
      "Experiment config file (configs/*.py), with optional overrides "
      "--config.<section>.<key>=value.", lock_config=True)
except (AttributeError, KeyError):
  # Without --config on the command line, ml_collections applies the
  # overrides to the default config here, while defining the flag.
  _exit_if_unknown_override(sys.argv)
  raise
flags.DEFINE_string("workdir", "workdir/synthetic",
                    "Checkpoints, metrics.jsonl, TensorBoard events and "
                    "eval_results.json go here; an existing workdir resumes.")


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # After flag parsing: jax reads XLA flags when it is first imported.
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  from ps_jax.train import loop  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", FLAGS.config)
  # The config stops here: below, everything takes built, typed objects.
  loop.train_and_evaluate(experiment.from_config(FLAGS.config), FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
