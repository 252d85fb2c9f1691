"""Evaluate a person-search model on its dataset's protocol.

  python -m ps_jax.eval --workdir workdir/synthetic
  python -m ps_jax.eval --workdir workdir/synthetic --step 600 --det_thresh 0.5
  python -m ps_jax.eval --workdir workdir/synthetic --untrained
  python -m ps_jax.eval --workdir workdir/synthetic --baseline color_hist
  python -m ps_jax.eval --workdir /tmp/w --config configs/alignps_cuhk.py
  python -m ps_jax.eval --workdir workdir/two_step_synthetic --cws

A two-step run's workdir (configs/two_step_*.py) has no checkpoint of its
own: the newest checkpoints of its detector's and re-ID net's workdirs are
evaluated together.

The config is the one saved with the checkpoint unless --config names a
config file (`path.py` or `path.py:arg`); --det_thresh, --query_mode, --cws,
--prw_paper, --cbgm, --gallery_sizes and --data_dir override its `eval` /
`dataset` entries. The table goes to stdout, the results to
<workdir>/eval_results.json (eval_results_untrained.json,
eval_results_color_hist.json for the baselines), predictions to
<workdir>/eval_cache/ (re-used by later runs with the same model, dataset
and predict settings; --no_cache predicts again).

A finished run on read-only storage is evaluated with --output:

  python -m ps_jax.eval --workdir /ro/run --output /tmp/run_eval.json

reads the checkpoint and writes nothing into the workdir: new predictions are
cached in eval_cache/ beside the output file (the workdir's own cache is
still read).

Exit status: 0 on success, 1 when the evaluation cannot run (no checkpoint,
a workdir that is a file or read-only without --output, a config value out
of range, a missing, truncated or corrupt dataset file, a dataset without a
query split, a bad option), with the reason as one line on stderr,
`python -m ps_jax.eval: error: <message>`. -v or PS_JAX_TRACEBACK=1 shows
the full traceback instead.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags
from absl import logging

from ps_jax import launch


def _gallery_sizes(text: str) -> tuple[int, ...]:
  sizes = []
  for item in text.split(","):
    item = item.strip().lower()
    if not item:
      continue
    if item in ("full", "full_set", "-1"):
      sizes.append(-1)
      continue
    try:
      sizes.append(int(item))
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{item!r} is not a gallery size (an integer, or 'full')") from None
  return tuple(sizes)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m ps_jax.eval",
      description="Evaluate a trained person-search model (a checkpoint in "
                  "a training workdir), an untrained one or a colour-"
                  "histogram baseline on the dataset's protocol: CUHK-SYSU "
                  "style (mAP/top-k per gallery size and the full set) or "
                  "PRW style (all frames / other cameras), plus detection "
                  "recall and AP.",
      epilog="Results: <workdir>/eval_results.json (eval_results_untrained"
             ".json, eval_results_color_hist.json); cached predictions: "
             "<workdir>/eval_cache/. A read-only workdir needs --output; "
             "new predictions are then cached beside that file. Errors: "
             "one line on stderr and exit status 1 (-v or "
             "PS_JAX_TRACEBACK=1: the traceback).")
  p.add_argument("--workdir", required=True,
                 help="training workdir: checkpoints are read from "
                      "<workdir>/ckpt, results written here")
  p.add_argument("--config", default=None,
                 help="config file (configs/x.py or configs/x.py:arg); "
                      "default: the config saved with the checkpoint")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: the latest)")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--untrained", action="store_true",
                     help="evaluate the freshly initialised model (the "
                          "weights training starts from), a baseline")
  which.add_argument("--baseline", choices=("color_hist",), default=None,
                     help="evaluate a model-free baseline: ground-truth "
                          "gallery boxes with HSV colour-histogram "
                          "embeddings")
  p.add_argument("--det_thresh", type=float, default=None,
                 help="gallery detections with score >= this take part in "
                      "search (default: config.eval.det_thresh)")
  p.add_argument("--query_mode", choices=("best_iou", "center", "roi"),
                 default=None,
                 help="query embedding: best_iou (the detection overlapping "
                      "the query box most; AlignPS and OIM), center (the "
                      "feature at the box centre; AlignPS) or roi (the query "
                      "box as the RoI; OIM); default: "
                      "config.eval.query_mode")
  p.add_argument("--gallery_sizes", type=_gallery_sizes, default=None,
                 help="CUHK-style gallery sizes to report, comma-separated, "
                      "'full' (or -1) for the full set, e.g. 50,100,full "
                      "(default: config.eval.gallery_sizes, or every size "
                      "of the dataset plus the full set where its lists hold "
                      "every gallery image of the target)")
  p.add_argument("--cws", action="store_true", default=None,
                 help="also rank by Confidence Weighted Similarity "
                      "(similarity x detection score, the PRW paper): extra "
                      "rows named <gallery>+cws (default: config.eval.cws, "
                      "else off)")
  p.add_argument("--prw_paper", action="store_true", default=None,
                 help="also run the PRW paper's own cross-camera protocol "
                      "(detections labelled by IoU with the ground truth, "
                      "good = the same person in another camera, mAP and "
                      "rank-1/20 at 3, 5 and 10 detections per image) and "
                      "draw its curve, mAP / rank-1 against detections per "
                      "image, to <results>_prw_paper.png (default: "
                      "config.eval.prw_paper, else off)")
  p.add_argument("--cbgm", action="store_true", default=None,
                 help="also rank with context bipartite graph matching "
                      "(SeqNet's CBGM: the other people of the query image "
                      "re-score the most similar gallery images); extra rows "
                      "named <gallery>+cbgm (default: config.eval.cbgm, "
                      "else off; k1/k2: config.eval.cbgm_k1/_k2)")
  p.add_argument("--data_dir", default=None,
                 help="where the TFDS dataset lives, if not where the "
                      "config says")
  p.add_argument("--output", default=None,
                 help="results JSON file (default: in --workdir); needed "
                      "when the workdir is read-only")
  p.add_argument("--no_cache", action="store_true",
                 help="predict again even if cached predictions exist")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="log progress (absl INFO) to stderr, and show the "
                      "full traceback of an error (also with "
                      "PS_JAX_TRACEBACK=1) instead of one line")
  launch.add_distributed_args(p)
  return p


def _checkpoint_config(workdir: pathlib.Path, step: int | None) -> Any:
  """The config saved with a checkpoint, without restoring the state."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from ps_jax import checkpoint  # pylint: disable=g-import-not-at-top
  mngr = checkpoint.manager(workdir, async_save=False)
  steps = mngr.all_steps()
  step = mngr.latest_step() if step is None else step
  if step is None or step not in steps:
    raise FileNotFoundError(
        f"no checkpoint{'' if step is None else f' for step {step}'} in "
        f"{workdir / 'ckpt'} to read the config from (have {list(steps)}); "
        "pass --config")
  restored = mngr.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))
  return restored["config"]


def _with_overrides(config: Any, args: argparse.Namespace) -> dict[str, Any]:
  """The config as plain data, with the command line's eval / dataset
  overrides applied."""
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  plain = experiment.plain_config(config)
  overrides = {"det_thresh": args.det_thresh, "query_mode": args.query_mode,
               "gallery_sizes": args.gallery_sizes, "cws": args.cws,
               "prw_paper": args.prw_paper, "cbgm": args.cbgm}
  for key, value in overrides.items():
    if value is not None:
      plain["eval"][key] = list(value) if isinstance(value, tuple) else value
  if args.data_dir:
    plain["dataset"]["data_dir"] = args.data_dir
  return plain


def _cache_dir(workdir: pathlib.Path, output: str | None
               ) -> pathlib.Path | None:
  """Where new predictions are cached: None (the workdir) if it is
  writable, else beside --output; WorkdirError if neither can be written."""
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  if output is not None and not experiment.writable(
      pathlib.Path(output).parent):
    raise experiment.WorkdirError(
        f"--output {output}: its folder cannot be written")
  if experiment.writable(workdir):
    return None
  if output is None:
    raise experiment.WorkdirError(
        f"workdir {workdir} is not writable: pass --output FILE for the "
        "results (new predictions are then cached beside it)")
  cache_dir = pathlib.Path(output).parent / "eval_cache"
  logging.warning("workdir %s is not writable: results go to %s, new "
                  "predictions are cached in %s", workdir, output, cache_dir)
  return cache_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Evaluates as `args` say; returns the results dict.

  The choice of what is evaluated is made here: a checkpoint of the workdir
  (default), the untrained system (initialised exactly as training starts),
  or a model-free baseline.
  """
  # pylint: disable=g-import-not-at-top
  from ps_jax import checkpoint
  from ps_jax import experiment
  from ps_jax import mesh as mesh_lib
  from ps_jax import systems
  from ps_jax.eval import run as run_lib
  from ps_jax.train import stages
  # pylint: enable=g-import-not-at-top

  try:
    mesh_lib.initialize_from_args(args)
  except ValueError as e:
    raise experiment.UserError(str(e)) from e
  workdir = pathlib.Path(args.workdir)
  if workdir.exists() and not workdir.is_dir():
    raise experiment.WorkdirError(f"workdir {workdir} is a file, not a "
                                  "folder")
  cache_dir = _cache_dir(workdir, args.output)
  config = experiment.load_config_file(args.config) if args.config else None
  needs_checkpoint = not (args.untrained or args.baseline)
  # A two-step run's workdir holds its config, its stages the checkpoints.
  if config is None and experiment.is_two_step_workdir(workdir):
    config = experiment.read_workdir_config(workdir)
  two_step = (config is not None and experiment.plain_config(config).get(
      "system") == experiment.TWO_STEP)
  if (not two_step and (needs_checkpoint or config is None)
      and not (workdir / "ckpt").is_dir()):
    raise FileNotFoundError(
        f"no checkpoint in {workdir / 'ckpt'}: train first (python train.py "
        f"--workdir {workdir})" + ("" if needs_checkpoint else
                                   ", or pass --config"))
  variables, step = None, args.step
  if needs_checkpoint and not two_step:
    saved, variables, step = checkpoint.restore_variables(workdir, step)
    config = config or saved
  elif config is None:
    config = _checkpoint_config(workdir, step)
  exp = experiment.from_config(_with_overrides(config, args),
                               for_training=False)
  label = f"step_{step}"
  if two_step and needs_checkpoint:
    variables, steps = experiment.restore_stages(exp, workdir)
    label, step = stages.label(steps), None
  data = run_lib.EvalData(exp.builder, exp.dataset.label, exp.data)
  common = dict(data=data, options=exp.eval, workdir=workdir,
                use_cache=not args.no_cache, cache_dir=cache_dir)
  if args.baseline:
    return run_lib.evaluate_baseline(args.baseline, output=args.output,
                                     **common)
  mesh = mesh_lib.make_mesh()
  if args.untrained:
    variables, _ = systems.initialize(exp.system, exp.run.seed,
                                      exp.init_hw)
    return run_lib.evaluate(
        exp.system, variables, mesh=mesh, label="untrained",
        output=args.output or workdir / "eval_results_untrained.json",
        **common)
  return run_lib.evaluate(exp.system, variables, mesh=mesh,
                          label=label, step=step,
                          output=args.output, **common)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  args = _parser().parse_args(argv)
  # Grain reads absl flags to set up its worker processes, and absl raises
  # when a flag is read before parsing: mark them parsed (we use argparse).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  # pylint: disable=g-import-not-at-top
  import jax
  from ps_jax import experiment
  from ps_jax.eval import report
  # pylint: enable=g-import-not-at-top
  try:
    results = run(args)
  except experiment.USER_ERRORS + (FileNotFoundError,) as e:
    if args.verbose or experiment.show_traceback():
      raise
    print(f"python -m ps_jax.eval: error: {experiment.one_line(e)}",
          file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(report.format_table(results))
    print(f"results: {results['output']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
