r"""Images per second of the training input pipeline, by worker processes.

Reads the synthetic person-search dataset (built into --data_dir with
`data_builders.build` if it is not there yet) and times
`ps_jax.data.pipeline.train_iterator` at two settings:
  synthetic     the training scales of configs/synthetic.py (or --scales);
  alignps_test  AlignPS's single test scale, 900 x 1500 (H x W);
  alignps_train AlignPS's six training scales (configs/common.py
                ALIGNPS_TRAIN_SCALES, 400 x 667 to 1200 x 2000), one drawn
                per batch as in training.
for every combination of --workers and --threads. Prints a markdown table
(best of --repeats runs per row).

  python bench/input_pipeline.py --dataset_config=default --workers=0,1,2

--source=memory skips TFDS: it renders --num_images scenes with
ps_jax.data.synthetic, JPEG-encodes them and serves them from a list in the
format of a TFDS data source (useful to time the pipeline alone).
"""

from __future__ import annotations

import io
import platform
import tempfile
import time

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from ps_jax.data import pipeline
from ps_jax.ops import boxes as box_ops

_DATASET = "synthetic_person_search"
ALIGNPS_TEST_SCALE = (900, 1500)

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "tfds", ["tfds", "memory"], "Where records come "
                  "from.")
flags.DEFINE_string("dataset_config", "default", "Synthetic builder config.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: a temp dir).")
flags.DEFINE_integer("num_images", 64, "Scenes rendered for --source=memory.")
flags.DEFINE_list("settings", ["synthetic", "alignps_test", "alignps_train"],
                  "Scale settings (see the module docstring).")
flags.DEFINE_string("scales", None, "Override the synthetic training scales, "
                    "e.g. '256x384,320x480' (HxW).")
flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker processes.")
flags.DEFINE_list("threads", ["1", "2"], "Grain reader threads (per worker).")
flags.DEFINE_integer("batch_size", 4, "Per-process batch size.")
flags.DEFINE_integer("max_boxes", 32, "Padded boxes per image.")
flags.DEFINE_integer("warmup", 3, "Batches before timing starts.")
flags.DEFINE_integer("steps", 20, "Timed batches.")
flags.DEFINE_integer("repeats", 1, "Runs per row; the best is reported (this "
                     "machine's load varies).")


def _synthetic_scales() -> list[tuple[int, int]]:
  if FLAGS.scales:
    return [tuple(int(v) for v in s.split("x"))
            for s in FLAGS.scales.split(",")]
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  return [tuple(s) for s in synthetic.get_config().data.train_scales]


def _alignps_train_scales() -> list[tuple[int, int]]:
  from configs import common  # pylint: disable=g-import-not-at-top
  return [tuple(s) for s in common.ALIGNPS_TRAIN_SCALES]


def _memory_source(n: int) -> list[dict]:
  from ps_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  cfg = synthetic.SyntheticConfig()
  out = []
  for i in range(n):
    scene = synthetic.generate_scene(cfg, "train", i)
    h, w = scene["image"].shape[:2]
    buf = io.BytesIO()
    Image.fromarray(scene["image"]).save(buf, format="JPEG", quality=90)
    b = np.asarray(scene["boxes_xyxy"], np.float32).reshape(-1, 4)
    yxyx = box_ops.xyxy_px_to_yxyx_norm(b, h, w)
    out.append({"image": buf.getvalue(),
                "image_id": scene["image_id"].encode(),
                "camera": scene["camera"],
                "persons": {"bbox": list(yxyx),
                            "pid": [int(p) for p in scene["pids"]]}})
  return out


def _tfds_source():
  from data_builders import build  # pylint: disable=g-import-not-at-top
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="ps_jax_bench_")
  build.build_dataset(_DATASET, FLAGS.dataset_config, data_dir)
  builder = build.load_builder(name=_DATASET, config=FLAGS.dataset_config,
                               data_dir=data_dir)
  return pipeline.data_source(builder, "train")


def _time(source, scales, workers: int, threads: int) -> tuple[float, float]:
  """(seconds to the first batch, images per second after warm-up)."""
  cfg = pipeline.PipelineConfig(
      batch_size=FLAGS.batch_size, train_scales=tuple(scales),
      test_scale=scales[0], max_boxes=FLAGS.max_boxes, num_workers=workers,
      num_threads=threads, prefetch=2)
  t0 = time.perf_counter()
  it = pipeline.train_iterator(source, cfg, seed=0, process_index=0,
                               process_count=1)
  next(it)
  first = time.perf_counter() - t0
  for _ in range(FLAGS.warmup - 1):
    next(it)
  t1 = time.perf_counter()
  for _ in range(FLAGS.steps):
    next(it)
  rate = FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - t1)
  del it
  return first, rate


def main(argv):
  del argv
  source = (_memory_source(FLAGS.num_images) if FLAGS.source == "memory"
            else _tfds_source())
  print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{len(source)} records from {FLAGS.source}, batch "
        f"{FLAGS.batch_size}, {FLAGS.steps} timed batches, best of "
        f"{FLAGS.repeats}, "
        f"{time.strftime('%Y-%m-%d')}")
  print("| setting | scales (HxW) | workers | threads | first batch s "
        "| images/s |")
  print("|---|---|---|---|---|---|")
  for setting in FLAGS.settings:
    scales = {"synthetic": _synthetic_scales,
              "alignps_test": lambda: [ALIGNPS_TEST_SCALE],
              "alignps_train": _alignps_train_scales}[setting]()
    shown = ", ".join(f"{h}x{w}" for h, w in scales)
    for workers in (int(w) for w in FLAGS.workers):
      for threads in (int(t) for t in FLAGS.threads):
        runs = [_time(source, scales, workers, threads)
                for _ in range(FLAGS.repeats)]
        first = min(r[0] for r in runs)
        rate = max(r[1] for r in runs)
        print(f"| {setting} | {shown} | {workers} | {threads} | "
              f"{first:.2f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
