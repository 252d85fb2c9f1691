"""Micro-benchmarks of the sampling ops: NMS, RoIAlign, deformable conv, FCOS,
and MLFN's grouped convolution (XLA's grouped conv against the dense conv
with a block-diagonal kernel, `ps_jax.models.reid.mlfn.GroupedConv`).

  python bench/ops.py [--repeats=5] [--only=nms,roi,gconv]

Prints one row per case: compile time (lower + compile, seconds) and the
median steady-state time of `--repeats` calls (milliseconds, after one
warm-up call), each call synchronised with block_until_ready. Sizes follow
the detectors of this project: 800x1333 inputs (stride-16 map 50x84) for
RoIAlign, AlignPS's 900x1500 test size for FCOS assignment. Run it on an idle
machine without XLA_FLAGS device splitting; record results in
docs/benchmarks.md.
"""
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ps_jax.models.reid import mlfn
from ps_jax.ops import assign
from ps_jax.ops import deform_conv
from ps_jax.ops import nms
from ps_jax.ops import points as points_lib
from ps_jax.ops import roi_align

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per case.")
_ONLY = flags.DEFINE_list(
    "only", [], "Subset of case groups: nms, roi, dcn, fcos, gconv (default: "
    "all).")


def _time_case(fn, *args):
  """(compile seconds, median steady-state milliseconds) of jit(fn)(*args)."""
  jitted = jax.jit(fn)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return compile_s, statistics.median(times)


def _boxes(rng, n, height, width, min_wh=16.0, max_wh=300.0):
  xy = rng.uniform(0, 1, (n, 2)) * [width, height]
  wh = rng.uniform(min_wh, max_wh, (n, 2))
  boxes = np.concatenate([xy, xy + wh], -1)
  return np.minimum(boxes, [width, height, width, height]).astype(np.float32)


def _nms_cases(rng):
  # Detector-like clutter: 1000 candidates around 30 objects.
  centres = _boxes(rng, 30, 800, 1333, 40, 300)
  jitter = rng.normal(0, 8, (1000, 4)).astype(np.float32)
  boxes = centres[rng.integers(0, 30, 1000)] + jitter
  boxes = np.concatenate([boxes[:, :2], np.maximum(boxes[:, 2:],
                                                   boxes[:, :2] + 1)], -1)
  scores = rng.uniform(0, 1, 1000).astype(np.float32)
  fn = lambda b, s: nms.nms(b, s, iou_threshold=0.5, max_outputs=100)
  yield "nms", "N=1000 -> 100, iou 0.5", fn, (boxes, scores)
  fn = lambda b, s: nms.batched_nms(b, s, iou_threshold=0.5, max_outputs=100)
  yield ("batched_nms", "B=4, N=1000 -> 100", fn,
         (np.stack([boxes] * 4), np.stack([rng.permutation(scores)
                                           for _ in range(4)])))


def _roi_cases(rng):
  feat = rng.normal(size=(2, 50, 84, 256)).astype(np.float32)
  boxes = _boxes(rng, 512, 800, 1333)
  for ratio in (2, 0):
    fn = lambda f, b, r=ratio: roi_align.roi_align(f, b, 7, 1 / 16, r, True)
    yield (f"roi_align ratio={ratio}", "B=1 [1,512,4], 50x84x256 -> 7x7",
           fn, (feat[:1], boxes[None]))
  fn = jax.grad(lambda f, b: jnp.sum(
      roi_align.roi_align(f, b, 7, 1 / 16, 2, True) ** 2))
  yield ("roi_align fwd+bwd", "same, ratio=2, grad wrt features", fn,
         (feat[:1], boxes[None]))
  rows = np.concatenate(
      [rng.integers(0, 2, (512, 1)).astype(np.float32), boxes], -1)
  fn = lambda f, b: roi_align.roi_align(f, b, 7, 1 / 16, 2, True)
  yield ("roi_align ratio=2", "B=2 rows [512,5], 50x84x256 -> 7x7", fn,
         (feat, rows))


def _dcn_cases(rng):
  x = rng.normal(size=(1, 100, 168, 256)).astype(np.float32)
  offsets = rng.normal(0, 2, (1, 100, 168, 18)).astype(np.float32)
  mask = rng.uniform(0, 1, (1, 100, 168, 9)).astype(np.float32)
  kernel = (rng.normal(size=(3, 3, 256, 256)) * 0.02).astype(np.float32)
  fwd = lambda x, o, k: deform_conv.deform_conv2d(x, o, k, padding=1)
  yield "deform_conv2d fwd", "1x100x168x256 -> 256, 3x3", fwd, (
      x, offsets, kernel)
  fwd_v2 = lambda x, o, k, m: deform_conv.deform_conv2d(x, o, k, m, padding=1)
  yield "deform_conv2d v2 fwd", "same, modulated", fwd_v2, (
      x, offsets, kernel, mask)
  grad = jax.grad(lambda x, o, k: jnp.sum(fwd(x, o, k) ** 2),
                  argnums=(0, 1, 2))
  yield "deform_conv2d fwd+bwd", "same, grad wrt x, offsets, kernel", grad, (
      x, offsets, kernel)
  grad_v2 = jax.grad(lambda x, o, k, m: jnp.sum(fwd_v2(x, o, k, m) ** 2),
                     argnums=(0, 1, 2, 3))
  yield ("deform_conv2d v2 fwd+bwd", "same, modulated, grad wrt all 4",
         grad_v2, (x, offsets, kernel, mask))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  yield "(regular conv fwd)", "same, for scale", conv, (x, kernel)
  conv_grad = jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))
  yield "(regular conv fwd+bwd)", "same, grad wrt x, kernel", conv_grad, (
      x, kernel)


def _fcos_cases(rng):
  strides = (8, 16, 32, 64, 128)
  sizes = points_lib.feature_sizes((900, 1500), strides)
  pts, pt_strides, pt_levels = points_lib.make_points(sizes, strides)
  gt = np.stack([_boxes(rng, 20, 900, 1500, 20, 400) for _ in range(4)])
  pids = rng.integers(-1, 100, (4, 20)).astype(np.int32)
  valid = np.ones((4, 20), bool)
  fn = lambda p, s, l, b, i, v: assign.batched_fcos_targets(
      p, s, l, b, i, v, assign.FCOS_REGRESS_RANGES)
  yield ("batched_fcos_targets", f"B=4, N=20, P={pts.shape[0]} (900x1500, "
         "5 levels)", fn, (pts, pt_strides, pt_levels, gt, pids, valid))


def _gconv_cases(rng):
  # MLFN's stage-1 and stage-3 grouped 3x3 convs at 256x128 input, batch 32.
  for hw, c in ((64, 128), (16, 512)):
    x = rng.normal(size=(32, hw, hw // 2, c)).astype(np.float32)
    kernel = (rng.normal(size=(3, 3, c // 32, c)) * 0.05).astype(np.float32)

    def native(x, k):
      return jax.lax.conv_general_dilated(
          x, k, (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=32)

    def dense(x, k):
      return jax.lax.conv_general_dilated(
          x, mlfn.block_diagonal_kernel(k, 32), (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    shape = f"32x{hw}x{hw // 2}x{c}, 32 groups"
    for name, fn in (("grouped conv", native), ("block-diagonal", dense)):
      yield f"{name} fwd", shape, fn, (x, kernel)
      grad = jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2),
                      argnums=(0, 1))
      yield f"{name} fwd+bwd", shape, grad, (x, kernel)


_GROUPS = {"nms": _nms_cases, "roi": _roi_cases, "dcn": _dcn_cases,
           "fcos": _fcos_cases, "gconv": _gconv_cases}


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  groups = _ONLY.value or list(_GROUPS)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), repeats {_REPEATS.value}")
  header = f"| {'op':<24} | {'shape':<42} | compile s | median ms |"
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for group in groups:
    for name, shape, fn, args in _GROUPS[group](rng):
      args = tuple(jnp.asarray(a) for a in args)
      compile_s, ms = _time_case(fn, *args)
      print(f"| {name:<24} | {shape:<42} | {compile_s:9.2f} | {ms:9.1f} |",
            flush=True)


if __name__ == "__main__":
  app.run(main)
