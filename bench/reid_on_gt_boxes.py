"""Re-identification of a trained checkpoint on ground-truth boxes.

  python bench/reid_on_gt_boxes.py --workdir workdir/synthetic

Separates re-ID from detection: every gallery person is embedded at its
ground-truth box (through the system's own query rule, i.e. exactly as a
query box is embedded: for AlignPS the best-IoU detection, or the feature at
the box centre), every detection score is 1, and the dataset's protocol runs
on that, as it does for the colour-histogram baseline
(`python -m ps_jax.eval --baseline color_hist`). Prints, for the same
queries, the model with its own detections, the model on ground-truth boxes
and the colour histograms on ground-truth boxes, with 95 % bootstrap
intervals. The gap between the first two is what detection costs; the gap
between the last two is what the learned embedding gains over colour.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string("workdir", None, "Training workdir with a checkpoint.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("query_mode", None,
                    "Query rule override: best_iou or center.")
FLAGS = flags.FLAGS


def _gt_gallery(exp, variables, mesh, source):
  """SplitPredictions of `source` whose detections are its GT boxes, each
  embedded by the system's query rule."""
  # pylint: disable=g-import-not-at-top
  from ps_jax.data import augment
  from ps_jax.eval import predict
  # pylint: enable=g-import-not-at-top
  records, boxes, owner = [], [], []
  ids, hws, counts = [], [], []
  for r in range(len(source)):
    rec = source[r]
    ex = augment.decode(rec, r)
    b = np.asarray(ex["boxes_xyxy"], np.float32).reshape(-1, 4)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    ids.append(ex["image_id"])
    hws.append(ex["orig_hw"])
    counts.append(len(b))
    for box in b:
      records.append(rec)
      boxes.append(box)
      owner.append(r)
  step = predict.make_predict_step(exp.system)
  per_box = predict.predict_split(step, variables, records, exp.data, mesh,
                                  query_boxes=np.asarray(boxes, np.float32),
                                  desc="gallery GT boxes")
  total = len(boxes)
  return predict.SplitPredictions(
      image_ids=np.asarray(ids, dtype=str),
      orig_hw=np.asarray(hws, np.int32).reshape(-1, 2),
      det_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      boxes=np.asarray(boxes, np.float32).reshape(total, 4),
      scores=np.ones((total,), np.float32),
      embeddings=per_box.query_embeddings,
      query_embeddings=np.zeros((len(ids), per_box.query_embeddings.shape[1]),
                                np.float32),
      query_from_detection=np.zeros((len(ids),), bool))


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from ps_jax import experiment
  from ps_jax import mesh as mesh_lib
  from ps_jax.data import pipeline
  from ps_jax.eval import baselines
  from ps_jax.eval import predict
  from ps_jax.eval import protocols
  from ps_jax.eval import run as run_lib
  # pylint: enable=g-import-not-at-top
  exp, variables, step = experiment.restore(FLAGS.workdir, FLAGS.step)
  if FLAGS.query_mode:
    exp = dataclasses.replace(exp, system=dataclasses.replace(
        exp.system, predict_options=dataclasses.replace(
            exp.system.predict_options, query_mode=FLAGS.query_mode)))
  mesh = mesh_lib.make_mesh()
  variables = run_lib.replicate(variables, mesh)
  protocol = protocols.check_dataset(exp.builder)
  gal_src = pipeline.data_source(exp.builder, "test")
  qry_src = pipeline.data_source(exp.builder, "query")
  gal_info = protocols.read_gallery(gal_src)
  qry_info = protocols.read_queries(qry_src)
  step_fn = predict.make_predict_step(exp.system)
  qry = predict.predict_split(step_fn, variables, qry_src, exp.data, mesh,
                              query_boxes=qry_info.boxes, desc="queries")
  own = predict.predict_split(step_fn, variables, gal_src, exp.data, mesh,
                              desc="gallery")
  gt = _gt_gallery(exp, variables, mesh, gal_src)
  hist_gal = baselines.color_hist_predictions(gal_src, desc="hist gallery")
  hist_qry = baselines.color_hist_predictions(
      qry_src, query_boxes=qry_info.boxes, desc="hist queries")
  gt_options = dataclasses.replace(exp.eval, det_thresh=0.5)
  rows = [("model, own detections", exp.eval, own, qry),
          ("model, GT boxes", gt_options, gt, qry),
          ("colour hist, GT boxes", gt_options, hist_gal, hist_qry)]
  print(f"# {exp.dataset.label}, step {step}, query mode "
        f"{exp.system.predict_options.query_mode}, "
        f"{len(qry_info.pids)} queries")
  print("| gallery | mAP (95% CI) | top-1 (95% CI) |")
  print("|---|---|---|")
  for name, options, gal, q in rows:
    res = protocols.run_protocols(options, protocol, gal_info, qry_info, gal,
                                  q, with_detection=False)
    for key in sorted(k for k in res if k.startswith("search/")):
      v = res[key]
      lo, hi = v["mAP_ci95"]
      tlo, thi = v["top1_ci95"]
      print(f"| {name}, {key[7:]} | {100 * v['mAP']:.1f} "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * v['top1']:.1f} "
            f"[{100 * tlo:.1f}, {100 * thi:.1f}] |")
  sys.stdout.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
