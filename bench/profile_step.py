"""Where the AlignPS train step spends its time: a profile by model part.

  python bench/profile_step.py                    # R50, 512x512, batch 2
  python bench/profile_step.py --case=synthetic_320x320 --steps=3

Flags --case, --steps, --warmup and --dtype are bench/train_step.py's
(default here: r50_512, 2 recorded steps after 1 warm-up step).

Compiles the real train step of a `bench/train_step.py` case (same config,
same random batch, jitted as the train loop jits it), runs `--warmup` steps,
then records `--steps` steps with `jax.profiler.trace`. XLA:CPU reports
every operation it runs (a fusion, a convolution, a dot, a gather) with its
HLO name; the compiled module's text maps each name to the JAX operation it
came from (`op_name`: which Flax module, forward or `transpose` for the
backward pass) and its source file. The table sums operation time by part:

  backbone      ResNet (forward / backward)
  neck          the aligned feature aggregation neck, its deformable
                convolutions apart
  head          FCOS towers on every level, the deformable last tower conv
                apart, and the re-ID embedding
  deformable    every ps_jax/ops/deform_conv.py operation (neck and head)
  fcos targets  point assignment, centre sampling, focal/GIoU/centerness
  oim, triplet  the re-ID losses: logits against the lookup table and
                queue, their update, the batch-hard triplet
  optimizer     optax's update and the parameter update
  other         everything else (casts, the loss sum, bookkeeping)

Times are the operations' own durations summed over the profiled steps and
divided by their number; XLA:CPU runs some operations side by side on the
machine's threads, so the parts can add up to more than the step's wall
time, which is printed beside them. Loops (the deformable convs' tap loop,
the OIM update rounds) are counted through their bodies, never twice.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from bench import train_step as bench_step
from ps_jax import mesh as mesh_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_TOP = flags.DEFINE_integer(
    "top", 12, "Also list this many single operations with the most time.")

# HLO instructions whose own events enclose other instructions' events.
_CONTAINERS = ("while", "conditional", "call")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")


def _stack_files(text: str) -> dict[int, tuple[str, ...]]:
  """stack_frame_id -> the source files of that frame and its callers, from
  the FileNames / FileLocations / StackFrames tables of a module's text."""
  tables = collections.defaultdict(dict)
  table = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      table = line
      continue
    if not line.strip():
      table = None
      continue
    if table:
      key, _, value = line.partition(" ")
      if key.isdigit():
        tables[table][int(key)] = value
  files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
  location_file = {
      k: files.get(int(re.search(r"file_name_id=(\d+)", v).group(1)), "")
      for k, v in tables["FileLocations"].items()}
  frames = {}
  for k, v in tables["StackFrames"].items():
    frames[k] = (int(re.search(r"file_location_id=(\d+)", v).group(1)),
                 int(re.search(r"parent_frame_id=(\d+)", v).group(1)))
  out = {}
  for k in frames:
    chain, frame, seen = [], k, set()
    while frame in frames and frame not in seen:
      seen.add(frame)
      location, parent = frames[frame]
      chain.append(location_file.get(location, ""))
      frame = parent
    out[k] = tuple(chain)
  return out


def hlo_index(text: str) -> dict[str, tuple[str, str, str]]:
  """HLO instruction name -> (opcode, op_name, the source files of its
  Python stack joined by "|") from a compiled module's text.

  A fusion or wrapper that XLA created without metadata takes that of the
  first instruction with metadata in the computation it calls (its root if
  that has some)."""
  stacks = _stack_files(text)
  out, calls = {}, {}
  by_computation = {}
  computation = None
  for line in text.splitlines():
    header = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", line)
    if header and not line.startswith(" ") and line.rstrip().endswith("{"):
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    frame = re.search(r"stack_frame_id=(\d+)", line)
    source = "|".join(stacks.get(int(frame.group(1)), ())) if frame else ""
    entry = (m.group(2), op_name.group(1) if op_name else "", source)
    out[m.group(1)] = entry
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if called:
      calls[m.group(1)] = called.group(1)
    if entry[1] and (computation not in by_computation
                     or line.lstrip().startswith("ROOT")):
      by_computation[computation] = entry
  for name, computation in calls.items():
    if not out[name][1] and computation in by_computation:
      out[name] = (out[name][0],) + by_computation[computation][1:]
  return out


# (part, where to look: the op_name or the source files, what to find),
# first match wins.
_PARTS = (
    ("deformable", "source", ("ops/deform_conv.py",)),
    ("backbone", "op_name", ("/backbone/",)),
    ("neck", "op_name", ("/neck/",)),
    ("head", "op_name", ("/head/",)),
    ("oim", "source", ("losses/oim.py",)),
    ("triplet", "source", ("losses/triplet.py",)),
    ("fcos targets", "source", ("losses/fcos.py", "ops/assign.py",
                                "ops/points.py", "ops/boxes.py")),
    ("optimizer", "source", ("optax", "train/optim.py")),
)


def part_of(op_name: str, source_file: str) -> str:
  """The model part an operation belongs to (see the module docstring)."""
  fields = {"op_name": op_name, "source": source_file.replace("\\", "/")}
  part = next((name for name, field, needles in _PARTS
               if any(n in fields[field] for n in needles)), "other")
  if part in ("backbone", "neck", "head", "deformable"):
    part += " bwd" if "transpose(" in op_name else " fwd"
  return part


def _trace_events(logdir: str) -> list[dict]:
  (path,) = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"),
                      recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(compiled, state, batch, steps: int):
  """(op events' durations in seconds by HLO name, per step; wall time of
  each step)."""
  walls = []
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        walls.append(time.perf_counter() - t0)
    events = _trace_events(logdir)
  seconds = collections.Counter()
  for e in events:
    hlo_op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and hlo_op:
      seconds[hlo_op] += e.get("dur", 0.0) * 1e-6 / steps
  return seconds, walls


def main(argv):
  del argv
  name = bench_step._CASE.value or "r50_512"  # pylint: disable=protected-access
  steps = bench_step._STEPS.value or 2  # pylint: disable=protected-access
  case = bench_step.all_cases()[name]
  config, num_ids = case["config"], case["num_ids"]
  config.model.dtype = bench_step._DTYPE.value  # pylint: disable=protected-access
  mesh = mesh_lib.make_mesh()
  height, width = bench_step._input_hw(config)  # pylint: disable=protected-access
  host = bench_step._random_batch(  # pylint: disable=protected-access
      np.random.default_rng(0), config.data.batch_size, height, width,
      config.data.max_boxes, num_ids)
  batch = mesh_lib.host_to_global(host, mesh)
  state, compiled, _, compile_s, _ = bench_step._compiled_step(  # pylint: disable=protected-access
      config, num_ids, mesh, batch)
  for _ in range(bench_step._WARMUP.value):  # pylint: disable=protected-access
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  index = hlo_index(compiled.as_text())
  seconds, walls = profile(compiled, state, batch, steps)

  by_part = collections.Counter()
  unknown = 0.0
  for hlo_op, s in seconds.items():
    opcode, op_name, source = index.get(hlo_op, ("?", "", ""))
    if opcode in _CONTAINERS:
      continue
    if opcode == "?":
      unknown += s
    by_part[part_of(op_name, source)] += s
  total = sum(by_part.values())
  wall = statistics.median(walls)
  print(f"# {name}: input {height}x{width}, batch "
        f"{config.data.batch_size}; jax {jax.__version__} on "
        f"{jax.default_backend()}, {os.cpu_count()} CPUs; compile "
        f"{compile_s:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"; load average {os.getloadavg()[0]:.1f}")
  print(f"# step wall time {wall:.2f} s (median of {len(walls)}: "
        f"{', '.join(f'{w:.2f}' for w in walls)}); operation time "
        f"{total:.2f} s per step")
  print("| part | s per step | % of operation time |")
  print("|---|---|---|")
  for part, s in by_part.most_common():
    print(f"| {part} | {s:.3f} | {100 * s / total:.1f} |")
  if unknown:
    print(f"# {unknown:.3f} s per step in operations missing from the "
          "module text (counted under 'other')")
  print(f"\nTop {_TOP.value} operations:")
  print("| operation | kind | part | s per step | from |")
  print("|---|---|---|---|---|")
  ops = [(name, s) for name, s in seconds.most_common()
         if index.get(name, ("?",))[0] not in _CONTAINERS]
  for name, s in ops[:_TOP.value]:
    opcode, op_name, source = index.get(name, ("?", "", ""))
    where = op_name.split("/", 1)[-1][:70]
    print(f"| {name} | {opcode} | {part_of(op_name, source)} | {s:.3f} | "
          f"{where} |")
  return 0


if __name__ == "__main__":
  app.run(main)
