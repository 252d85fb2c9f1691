"""Train (and then evaluate) a person-search model.

  python train.py                                   # AlignPS on the synthetic benchmark
  python train.py --config=configs/synthetic_tiny.py --workdir=/tmp/ps_tiny
  python train.py --config=configs/alignps_cuhk.py --config.optim.lr=0.002

The config is locked: a misspelt override fails at start-up and lists the
valid keys. Re-running with the same --workdir resumes from its latest
checkpoint; at the end the evaluation protocol of the dataset runs and its
table is printed and written to <workdir>/eval_results.json.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "synthetic.py"),
    "Experiment config file (configs/*.py), with optional overrides "
    "--config.<section>.<key>=value.", lock_config=True)
flags.DEFINE_string("workdir", "workdir/synthetic",
                    "Checkpoints, metrics.jsonl, TensorBoard events and "
                    "eval_results.json go here; an existing workdir resumes.")


class _QuietLibraries(logging.logging.Filter):
  """Drops the per-save INFO chatter of orbax (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or "/orbax/" not in (
        record.pathname or "")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from ps_jax.train import loop  # after flag parsing: jax reads XLA flags
  logging.info("Config:\n%s", FLAGS.config)
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
