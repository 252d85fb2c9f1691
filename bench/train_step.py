"""Benchmark of the AlignPS train step: compile time, step time, FLOPs, MFU.

  python bench/train_step.py                      # every case
  python bench/train_step.py --cases=r50_512,synthetic_256x256 --steps=3

Cases (all with the real `ps_jax.train.step.train_step` of the AlignPS
system, jitted as the train loop jits it, from a fresh state of
`ps_jax.train.step.init_state`):
  r50_512         AlignPS R50 (configs/common.alignps_model defaults: caffe
                  ResNet-50, frozen BN, frozen stem and stage 1, AFA neck
                  with deformable convs, FCOS head with a deformable last
                  tower conv, 256-d re-ID) and its losses (focal OIM with
                  5532 ids, as CUHK-SYSU, and a 5000 queue; triplet), input
                  512x512, batch 2.
  r50_1500x900    the same at AlignPS's test size, 900 high x 1500 wide
                  padded to 928x1504, batch 4.
  synthetic_HxW   configs/synthetic.py's model, loss, batch size and box
                  budget at each of its training scales.
  oim_600x1000    OIM R50, the paper's recipe (configs/oim_cuhk.py: caffe
                  ResNet-50 split into a res2-res4 trunk and a res5 RoI head,
                  512-wide RPN with 9 anchors, 12,000 / 2,000 proposals,
                  128 RoIs per image, OIM with 5532 ids and a 5000 queue),
                  input 600x1000, batch 2.
  oim_synthetic_HxW  configs/oim_synthetic.py at each of its training
                  scales.
  ide_market1501, mlfn_market1501, glad_market1501
                  the crop re-ID nets at full size with their Market-1501
                  recipes (configs/*_market1501.py: 256x128 crops, batch
                  32, 751 identities; IDE ResNet-50, MLFN with 32 factor
                  groups and its CPU-default dense grouped convs, GLAD on
                  GoogLeNet with 128x128 fixed-ratio parts).
  ide_synthetic, mlfn_synthetic, glad_synthetic
                  configs/*_synthetic.py (128x64 crops, quarter width).

Batches are random: normalized-image-like noise with 3-8 people per image
(heights 15-60% of the image, about 0.4 wide for 1 high; 70% labeled ids),
so the assignment, re-ID packing and memory update do real work. Crop
batches are noise crops with random identities and plausible keypoints.

Reported per case: compile time (lower + XLA compile, seconds), the median
steady-state step time of `--steps` calls after `--warmup` calls (each
synchronised with block_until_ready), the model FLOPs of one step from XLA's
cost analysis of the lowered program (of the same step with plain convs in
place of the deformable ones: XLA counts the body of the deformable conv's
tap loop once), the compiled program's own count ("XLA-counted": on a GPU
it leaves out the convolutions run by cuDNN), the achieved FLOP/s and its
fraction of this machine's
matmul peak (best of 20 jitted 2048x2048 matmuls in the
same dtype, measured in the case's process just before its steps, so under
the same load), XLA's temporary buffer size, and the process's peak RSS.
Each case runs in its own subprocess, so a case that runs out of memory is
reported as such and the others still run. Run on an idle machine, with
no XLA_FLAGS device splitting (one CPU device); record the table in
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from configs import common
from configs import glad_market1501
from configs import glad_synthetic
from configs import ide_market1501
from configs import ide_synthetic
from configs import mlfn_market1501
from configs import mlfn_synthetic
from configs import oim_cuhk
from configs import oim_synthetic
from configs import synthetic as synthetic_config
from ps_jax import experiment
from ps_jax import mesh as mesh_lib
from ps_jax.data import augment
from ps_jax.data import synthetic
from ps_jax.train import step as step_lib

_CASES = flags.DEFINE_list(
    "cases", [], "Cases to run (default: all); see the module docstring.")
_CASE = flags.DEFINE_string(
    "case", "", "Run this one case in this process and print its result as "
    "JSON (what the parent process runs for each case).")
_STEPS = flags.DEFINE_integer(
    "steps", 0, "Timed steps per case (0: 3, or 2 for r50_1500x900).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
_TIMEOUT = flags.DEFINE_integer("timeout", 5400, "Seconds allowed per case.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"],
    "Model compute dtype (config.model.dtype; parameters, losses and the OIM "
    "memory stay float32) and the dtype of the reference matmul. bfloat16 is "
    "meant for accelerators.")

_RESULT = "RESULT "
CUHK_NUM_IDS = 5532  # labeled identities of CUHK-SYSU's training set
MARKET_NUM_IDS = 751  # identities of Market-1501's training set


def _r50_case(height: int, width: int, batch: int) -> dict[str, Any]:
  c = common.base()
  c.model = common.alignps_model()
  c.loss = common.alignps_loss()
  c.optim = common.sgd(0.001, weight_decay=5e-4, warmup_steps=500,
                       decay_steps=(16_000, 22_000))
  c.data = common.data([(height, width)], (height, width), batch_size=batch,
                       max_boxes=16)
  c.run = common.run(num_steps=1, log_every=1, checkpoint_every=1)
  c.eval = common.evaluation(det_thresh=0.2)
  return {"config": c, "num_ids": CUHK_NUM_IDS, "steps": 3}


def _oim_case() -> dict[str, Any]:
  c = oim_cuhk.get_config()
  c.data.max_boxes = 16
  return {"config": c, "num_ids": CUHK_NUM_IDS, "steps": 3}


def _synthetic_cases(name: str, module: Any) -> dict[str, Any]:
  cases = {}
  for h, w in module.get_config().data.train_scales:
    c = module.get_config()
    c.data.train_scales = [(h, w)]
    cases[f"{name}_{h}x{w}"] = {
        "config": c, "steps": 3,
        "num_ids": synthetic.SyntheticConfig().num_train_ids}
  return cases


def all_cases() -> dict[str, dict[str, Any]]:
  cases = {"r50_512": _r50_case(512, 512, 2),
           "r50_1500x900": dict(_r50_case(900, 1500, 4), steps=2),
           "oim_600x1000": _oim_case()}
  cases.update(_synthetic_cases("synthetic", synthetic_config))
  cases.update(_synthetic_cases("oim_synthetic", oim_synthetic))
  for name, module in (("ide_market1501", ide_market1501),
                       ("mlfn_market1501", mlfn_market1501),
                       ("glad_market1501", glad_market1501)):
    cases[name] = {"config": module.get_config(), "steps": 2,
                   "num_ids": MARKET_NUM_IDS}
  for name, module in (("ide_synthetic", ide_synthetic),
                       ("mlfn_synthetic", mlfn_synthetic),
                       ("glad_synthetic", glad_synthetic)):
    cases[name] = {"config": module.get_config(), "steps": 5,
                   "num_ids": synthetic.SyntheticConfig().num_train_ids}
  return cases


def _is_crop_config(config) -> bool:
  return "image_hw" in config.data


def _input_hw(config) -> tuple[int, int]:
  if _is_crop_config(config):
    return tuple(config.data.image_hw)
  (hw,) = config.data.train_scales
  return tuple(hw)


def _random_crop_batch(rng, batch: int, height: int, width: int,
                       num_ids: int) -> dict[str, Any]:
  """A crop training batch (ps_jax.data.crops layout)."""
  ys = np.sort(rng.uniform(0.0, 1.0, (batch, 4)), axis=1)
  keypoints = np.stack([rng.uniform(0.3, 0.7, (batch, 4)), ys], axis=-1)
  return {
      "image": rng.normal(0, 1, (batch, height, width, 3)).astype(np.float32),
      "pid": rng.integers(0, num_ids, batch).astype(np.int32),
      "camera": rng.integers(0, 6, batch).astype(np.int32),
      "keypoints": keypoints.astype(np.float32),
      "has_keypoints": np.ones((batch,), bool),
      "index": np.arange(batch, dtype=np.int32),
  }


def _random_batch(rng, batch: int, height: int, width: int, max_boxes: int,
                  num_ids: int) -> dict[str, Any]:
  """A training batch dict (ps_jax.data.pipeline layout) with people."""
  ph, pw = augment.padded_size((height, width), 32)
  boxes = np.zeros((batch, max_boxes, 4), np.float32)
  pids = np.full((batch, max_boxes), -1, np.int32)
  valid = np.zeros((batch, max_boxes), bool)
  for b in range(batch):
    n = int(rng.integers(3, min(8, max_boxes) + 1))
    bh = rng.uniform(0.15, 0.6, n) * height
    bw = np.minimum(bh * rng.uniform(0.3, 0.5, n), width - 1)
    x1 = rng.uniform(0, width - bw)
    y1 = rng.uniform(0, height - bh)
    boxes[b, :n] = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
    labeled = rng.random(n) < 0.7
    pids[b, :n] = np.where(labeled, rng.integers(0, num_ids, n), -1)
    valid[b, :n] = True
  return {
      "image": rng.normal(0, 1, (batch, ph, pw, 3)).astype(np.float32),
      "boxes_xyxy": boxes, "pids": pids, "boxes_valid": valid,
      "image_hw": np.tile(np.array([[height, width]], np.int32), (batch, 1)),
      "orig_hw": np.tile(np.array([[height, width]], np.int32), (batch, 1)),
      "scale": np.ones((batch,), np.float32),
      "index": np.arange(batch, dtype=np.int32),
  }


def _lowered_step(config, num_ids: int, mesh, batch):
  """(fresh state, lowered train step, seconds to lower, to initialise the
  state) for `config`, jitted as the train loop jits it."""
  system = experiment.build_system(config, num_ids)
  t0 = time.perf_counter()
  state, tx, schedule = step_lib.init_state(
      system, experiment.optim_options(config), config.run.seed,
      _input_hw(config), mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  step_fn = step_lib.make_train_step(system, tx, schedule, mesh,
                                     seed=config.run.seed)
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  lower_s = time.perf_counter() - t0
  return state, lowered, lower_s, init_s


def _compiled_step(config, num_ids: int, mesh, batch):
  """(fresh state, compiled train step, seconds to lower, to compile, to
  initialise the state) for `config`, jitted as the train loop jits it."""
  state, lowered, lower_s, init_s = _lowered_step(config, num_ids, mesh,
                                                  batch)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  return state, compiled, lower_s, compile_s, init_s


def _flops(stage) -> float:
  """XLA's FLOP count of a lowered or compiled program."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _plain_conv_model(model_cfg):
  """The model config with plain convs where it has deformable ones (None
  for a model without any: OIM's)."""
  if "neck_dcn" not in model_cfg:
    return None
  cfg = model_cfg.copy_and_resolve_references()
  cfg.neck_dcn = False
  cfg.head_dcn_on_last_conv = False
  cfg.stage_with_dcn = tuple(False for _ in cfg.stage_with_dcn)
  return cfg


def run_case(name: str, steps: int, warmup: int, dtype: str
             ) -> dict[str, Any]:
  """Compile and time one case in this process."""
  case = all_cases()[name]
  config, num_ids = case["config"], case["num_ids"]
  config.model.dtype = dtype
  steps = steps or case["steps"]
  height, width = _input_hw(config)
  mesh = mesh_lib.make_mesh()
  if _is_crop_config(config):
    host = _random_crop_batch(np.random.default_rng(0),
                              config.data.batch_size, height, width, num_ids)
  else:
    host = _random_batch(np.random.default_rng(0), config.data.batch_size,
                         height, width, config.data.max_boxes, num_ids)
  batch = mesh_lib.host_to_global(host, mesh)

  # Model FLOPs, counted by XLA in the lowered program, before the backend
  # compiles it: a compiled GPU program runs its convolutions as cuDNN
  # calls, which its cost analysis does not count. XLA counts the body of a
  # loop once, and the deformable conv visits its taps in a lax.scan, so its
  # convolution arithmetic is undercounted ~9x. The same step with plain
  # convs in those places has the same convolution FLOPs (the bilinear
  # sampling, a few percent, is left out); lowered only for its count.
  config_for_flops = config
  plain_model = _plain_conv_model(config.model)
  if plain_model is not None:
    config_for_flops = config.copy_and_resolve_references()
    config_for_flops.model = plain_model
  _, lowered, *_ = _lowered_step(config_for_flops, num_ids, mesh, batch)
  model_flops = _flops(lowered)
  del lowered

  state, compiled, lower_s, compile_s, init_s = _compiled_step(
      config, num_ids, mesh, batch)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  xla_flops = _flops(compiled)
  memory = compiled.memory_analysis()
  temp_gb = (getattr(memory, "temp_size_in_bytes", float("nan")) / 2**30
             if memory is not None else float("nan"))

  # The reference peak, measured in this process just before the steps, so
  # that both see the same machine load.
  peak = matmul_peak_gflops(dtype=dtype)
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  metrics = jax.device_get(metrics)
  step_s = statistics.median(times)
  return {
      "case": name, "input_hw": [height, width],
      "padded_hw": list(host["image"].shape[1:3]),
      "batch": config.data.batch_size,
      "params_m": num_params / 1e6, "init_s": init_s, "lower_s": lower_s,
      "compile_s": compile_s, "step_s": step_s, "step_times_s": times,
      "xla_gflop_per_step": xla_flops / 1e9,
      "gflop_per_step": model_flops / 1e9,
      "gflops_per_s": model_flops / step_s / 1e9,
      "matmul_peak_gflops": peak, "mfu": model_flops / step_s / 1e9 / peak,
      "temp_gb": temp_gb, "dtype": dtype,
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                     / 2**20,
      "loss": float(metrics["loss"]),
      # Re-ID samples: AlignPS's positive points, OIM's foreground RoIs,
      # the crops of a crop re-ID batch.
      "num_pos": float(metrics.get("num_pos", metrics.get(
          "num_fg_rois", config.data.batch_size))),
      "devices": jax.device_count(), "backend": jax.default_backend(),
  }


def matmul_peak_gflops(n: int = 2048, repeats: int = 20,
                       dtype: str = "float32") -> float:
  """Best n x n matmul rate of this process in `dtype`, GFLOP/s."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  for _ in range(3):
    mm(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def _cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor() or platform.machine()
  fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  return (f"{fields.get('Model name', '?').strip()}, "
          f"{fields.get('CPU(s)', '?').strip()} CPUs")


def _run_in_subprocess(name: str) -> dict[str, Any]:
  cmd = [sys.executable, os.path.abspath(__file__), f"--case={name}",
         f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
         f"--dtype={_DTYPE.value}"]
  t0 = time.time()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=_TIMEOUT.value, check=False)
  except subprocess.TimeoutExpired:
    return {"case": name, "error": f"timed out after {_TIMEOUT.value} s"}
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT):
      return json.loads(line[len(_RESULT):])
  if proc.returncode == -9:
    why = "killed by SIGKILL (out of memory?)"
  else:
    why = f"exit status {proc.returncode}"
  tail = proc.stderr.strip().splitlines()[-3:]
  return {"case": name, "error": f"{why} after {time.time() - t0:.0f} s: "
                                 + " | ".join(tail)}


def main(argv):
  del argv
  if _CASE.value:
    result = run_case(_CASE.value, _STEPS.value, _WARMUP.value, _DTYPE.value)
    print(_RESULT + json.dumps(result), flush=True)
    return
  names = _CASES.value or list(all_cases())
  unknown = sorted(set(names) - set(all_cases()))
  if unknown:
    raise app.UsageError(f"unknown cases {unknown}; known: {list(all_cases())}")
  print(f"# {_cpu_name()}; jax {jax.__version__} on "
        f"{jax.default_backend()}, {jax.device_count()} device(s); "
        f"{_DTYPE.value}; {time.strftime('%Y-%m-%d %H:%M %Z')}; load average "
        f"{os.getloadavg()[0]:.1f}")
  header = ("| case | input (padded) | batch | params M | compile s | "
            "step s | model GFLOP/step | XLA-counted GFLOP/step | GFLOP/s | "
            "matmul peak GFLOP/s | % of peak | XLA temp GB | peak RSS GB |")
  print(header)
  print("|" + "|".join("---" for _ in header.split("|")[1:-1]) + "|")
  for name in names:
    r = _run_in_subprocess(name)
    if "error" in r:
      print(f"| {name} | {r['error']} |", flush=True)
      continue
    (h, w), (ph, pw) = r["input_hw"], r["padded_hw"]
    print(f"| {name} | {h}x{w} ({ph}x{pw}) | {r['batch']} | "
          f"{r['params_m']:.1f} | {r['lower_s'] + r['compile_s']:.0f} | "
          f"{r['step_s']:.2f} | {r['gflop_per_step']:.0f} | "
          f"{r['xla_gflop_per_step']:.0f} | "
          f"{r['gflops_per_s']:.1f} | {r['matmul_peak_gflops']:.0f} | "
          f"{100 * r['mfu']:.1f} | {r['temp_gb']:.1f} | "
          f"{r['peak_rss_gb']:.1f} |", flush=True)
    print(f"#   {name}: step times {[round(t, 2) for t in r['step_times_s']]}"
          f" s, loss {r['loss']:.3f}, {r['num_pos']:.0f} re-ID samples, "
          f"init {r['init_s']:.0f} s, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
