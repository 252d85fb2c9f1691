"""ps_jax's AlignPS R50 against torchvision's FCOS-R50-FPN, in one run.

  python bench/vs_torchvision.py --torch_python=/tmp/torchenv/bin/python

What a user would otherwise pick to train a detector of people is
torchvision's FCOS, the detector AlignPS builds on, so its train step and
its inference are the anchor for ours. This bench runs, in `--rounds`
interleaved rounds (so both see the same machine load):

  train   ps_jax: `bench/train_step.py --case=r50_512` (AlignPS R50 with its
          neck, head, focal OIM over 5,532 ids, queue and triplet;
          512x512, batch 2);
          torchvision: FCOS-R50-FPN's train step at 512x512, batch 2
          (`bench/anchors/torchvision_fcos.py train`).
  infer   ps_jax: AlignPS R50's jitted predict step on one 900x1500 image
          (padded to 928x1504): detections with their 256-d embeddings,
          NMS, and a query box's embedding;
          torchvision: FCOS-R50-FPN's eval forward on one 900x1500 image
          with its post-processing (`torchvision_fcos.py infer`).

Each measurement is a fresh process: compile or warm up, then the median of
`--steps` timed steps. torch and torchvision are never dependencies of
ps_jax: install them in a separate environment and pass its Python (see
bench/anchors/torchvision_fcos.py). Prints a table with the ratio
ps_jax / torchvision per round; record it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULT = "RESULT "


def _fmt(times: list[float]) -> str:
  return "[" + ", ".join(f"{t:.3g}" for t in times) + "]"


def ps_infer(height: int, width: int, steps: int, warmup: int) -> dict:
  """Times AlignPS R50's predict step on one image, in this process."""
  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np
  from bench import train_step as bench_step
  from ps_jax import experiment
  from ps_jax import mesh as mesh_lib
  from ps_jax.data import augment
  from ps_jax.eval import predict
  from ps_jax.train import state as state_lib
  from ps_jax.train import step as step_lib
  # pylint: enable=g-import-not-at-top
  config = bench_step._r50_case(height, width, 1)["config"]  # pylint: disable=protected-access
  system = experiment.build_system(config, bench_step.CUHK_NUM_IDS)
  mesh = mesh_lib.make_mesh()
  state, _, _ = step_lib.init_state(
      system, experiment.optim_options(config), config.run.seed,
      (height, width), mesh)
  variables = state_lib.variables_of(state)
  ph, pw = augment.padded_size((height, width), 32)
  rng = np.random.default_rng(0)
  hw = np.array([[height, width]], np.int32)
  batch = {"image": rng.normal(0, 1, (1, ph, pw, 3)).astype(np.float32),
           "image_hw": hw, "orig_hw": hw,
           "index": np.zeros((1,), np.int32),
           "example_valid": np.ones((1,), bool)}
  query = np.array([[0.4 * width, 0.2 * height, 0.5 * width,
                     0.7 * height]], np.float32)
  step = predict.make_predict_step(system, together=False)
  t0 = time.perf_counter()
  compiled = step.lower(variables, batch, query).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, batch, query))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return {"system": "ps_jax AlignPS R50", "mode": "infer",
          "input_hw": [height, width], "padded_hw": [ph, pw], "batch": 1,
          "compile_s": compile_s, "step_s": statistics.median(times),
          "step_times_s": times}


def _run(cmd: list[str], timeout: float) -> dict:
  """The last JSON line a command prints (or its RESULT line)."""
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd)}"}
  for line in reversed(proc.stdout.splitlines()):
    line = line[len(_RESULT):] if line.startswith(_RESULT) else line
    if line.startswith("{"):
      return json.loads(line)
  tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
  return {"error": f"exit status {proc.returncode}: {tail}"}


def _check_torch(python: str) -> tuple[str, str]:
  """(the Python's path, its torch and torchvision versions); a name such
  as `python3` is looked up on PATH."""
  found = python if os.path.exists(python) else shutil.which(python)
  if found is None:
    sys.exit(f"--torch_python={python}: no such file or command; create "
             "the environment first (see bench/anchors/torchvision_fcos.py)")
  python = found
  proc = subprocess.run(
      [python, "-c", "import torch, torchvision; print(torch.__version__, "
       "torchvision.__version__)"], capture_output=True, text=True,
      check=False)
  if proc.returncode:
    sys.exit(f"--torch_python={python} cannot import torch and "
             f"torchvision: {proc.stderr.strip().splitlines()[-1:]}")
  return python, proc.stdout.strip()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--torch_python",
                      help="Python of an environment with torch and "
                      "torchvision (required unless --child)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3,
                      help="timed steps per measurement")
  parser.add_argument("--infer_hw", default="900x1500",
                      help="inference input, HxW (default 900x1500)")
  parser.add_argument("--only", choices=["train", "infer"],
                      help="run one of the two comparisons")
  parser.add_argument("--child", choices=["ps_infer"], help=argparse.SUPPRESS)
  parser.add_argument("--timeout", type=float, default=3600,
                      help="seconds allowed per measurement")
  args = parser.parse_args(argv)
  try:
    ih, iw = (int(v) for v in args.infer_hw.lower().split("x"))
  except ValueError:
    parser.error(f"--infer_hw={args.infer_hw!r}: expected HxW, e.g. 900x1500")
  if args.child == "ps_infer":
    print(_RESULT + json.dumps(ps_infer(ih, iw, args.steps, 1)))
    return 0
  if not args.torch_python:
    parser.error("--torch_python is required")
  torch_python, versions = _check_torch(args.torch_python)
  anchor = os.path.join(ROOT, "bench", "anchors", "torchvision_fcos.py")
  commands = {
      "train": (
          [sys.executable, os.path.join(ROOT, "bench", "train_step.py"),
           "--case=r50_512", f"--steps={args.steps}", "--warmup=1"],
          [torch_python, anchor, "train", "512", "512", "2",
           f"--steps={args.steps}"]),
      "infer": (
          [sys.executable, os.path.abspath(__file__), "--child=ps_infer",
           f"--infer_hw={ih}x{iw}", f"--steps={args.steps}"],
          [torch_python, anchor, "infer", str(ih), str(iw), "1",
           f"--steps={args.steps}"]),
  }
  modes = [args.only] if args.only else ["train", "infer"]
  print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} CPUs; torch/torchvision {versions}; "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  print("| round | comparison | ps_jax s | torchvision s | ratio | "
        "load average |")
  print("|---|---|---|---|---|---|", flush=True)
  for r in range(1, args.rounds + 1):
    for mode in modes:
      ours, theirs = (_run(cmd, args.timeout) for cmd in commands[mode])
      for result in (ours, theirs):
        if "error" in result:
          print(f"| {r} | {mode} | error: {result['error']} |", flush=True)
      if "error" in ours or "error" in theirs:
        continue
      what = ("512x512 batch 2 train step" if mode == "train"
              else f"{ih}x{iw} inference per image")
      # Three significant digits: seconds on a CPU, milliseconds on a GPU.
      print(f"| {r} | {what} | {ours['step_s']:.3g} | "
            f"{theirs['step_s']:.3g} | "
            f"{ours['step_s'] / theirs['step_s']:.2f} | "
            f"{os.getloadavg()[0]:.1f} |", flush=True)
      print(f"#   steps: ps_jax {_fmt(ours['step_times_s'])}, "
            f"torchvision {_fmt(theirs['step_times_s'])}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
