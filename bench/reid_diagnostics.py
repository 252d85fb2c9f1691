"""Two diagnostics of re-identification on the synthetic benchmark.

  python bench/reid_diagnostics.py --workdir workdir/synthetic
  python bench/reid_diagnostics.py --camera_strengths 0,0.6,1.0

Both score the same simple task: cross-camera retrieval among the labeled
ground-truth boxes of the first `--scenes` scenes of a split. Every labeled
box is a query once; its gallery is every labeled box of the other scenes
seen by another camera; the true matches are the boxes of its identity. The
score is the mean average precision over the queries that have a true match.
It is not the CUHK-SYSU-style protocol (no detection, no sampled galleries),
so it only compares the rows of one table.

`--workdir`: a trained checkpoint against colour histograms, on the `train`
split (identities the model was trained on) and on the `test` split (new
identities). A model that beats the histograms on test but not on train
would be overfitting; one that loses on both is not fitting even the
identities it was trained on. Boxes are embedded by the system's query rule
(`--query_mode` overrides it), as in `bench/reid_on_gt_boxes.py`.

`--camera_strengths`: colour histograms on the test scenes of the `default`
generator rendered with other camera strengths (`SyntheticConfig.
camera_strength`: 0 means every camera sees the same colours), straight from
the generator (nothing is built): how much of an identity's colour survives
the change of camera.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string("workdir", None, "Training workdir with a checkpoint.")
flags.DEFINE_list("camera_strengths", None,
                  "Camera strengths to score colour histograms at.")
flags.DEFINE_integer("scenes", 300, "Scenes of each split to use.")
flags.DEFINE_string("query_mode", None,
                    "Query rule override (--workdir): best_iou or center.")
FLAGS = flags.FLAGS


def cross_camera_map(emb: np.ndarray, pids: np.ndarray, cameras: np.ndarray,
                     images: np.ndarray) -> tuple[float, int]:
  """(mAP in %, number of queries) of the module docstring's task.

  emb: f32[N, D] unit embeddings; pids, cameras, images: i[N] per box.
  """
  from ps_jax.eval import ap  # pylint: disable=g-import-not-at-top
  aps = []
  for i in range(len(pids)):
    other = (cameras != cameras[i]) & (images != images[i])
    match = pids[other] == pids[i]
    if match.any():  # queries without a true match are not scored
      aps.append(ap.average_precision(match, emb[other] @ emb[i]))
  return 100.0 * float(np.mean(aps)), len(aps)


def _labeled_boxes(examples):
  """(records, boxes, pids, cameras, image indices) of the labeled boxes."""
  out = ([], [], [], [], [])
  for r, rec, boxes, pids, camera in examples:
    for box, pid in zip(boxes, pids):
      for lst, v in zip(out, (rec, box, pid, camera, r)):
        lst.append(v)
  return out


def model_vs_histograms(workdir: str, scenes: int,
                        query_mode: str | None) -> None:
  # pylint: disable=g-import-not-at-top
  from ps_jax import experiment
  from ps_jax import mesh as mesh_lib
  from ps_jax.data import augment
  from ps_jax.data import pipeline
  from ps_jax.eval import baselines
  from ps_jax.eval import predict
  from ps_jax.eval import run as run_lib
  # pylint: enable=g-import-not-at-top
  exp, variables, step = experiment.restore(workdir)
  if query_mode:
    exp = dataclasses.replace(exp, system=dataclasses.replace(
        exp.system, predict_options=dataclasses.replace(
            exp.system.predict_options, query_mode=query_mode)))
  mesh = mesh_lib.make_mesh()
  variables = run_lib.replicate(variables, mesh)
  step_fn = predict.make_predict_step(exp.system)
  print(f"# {exp.dataset.label}, step {step}, query mode "
        f"{exp.system.predict_options.query_mode}: cross-camera retrieval "
        f"among the labeled GT boxes of the first {scenes} scenes of each "
        "split")
  print("| split | identities | queries | model mAP | colour-hist mAP |")
  print("|---|---|---|---|---|")
  for split in ("train", "test"):
    source = pipeline.data_source(exp.builder, split)
    examples, hists = [], []
    for r in range(min(scenes, len(source))):
      rec = source[r]
      ex = augment.decode(rec, r)
      keep = ex["pids"] >= 0
      if keep.any():
        examples.append((r, rec, ex["boxes_xyxy"][keep], ex["pids"][keep],
                         int(rec["camera"])))
        hists.append(baselines.color_histogram(ex["image"],
                                               ex["boxes_xyxy"][keep]))
    records, boxes, pids, cameras, images = _labeled_boxes(examples)
    pred = predict.predict_split(step_fn, variables, records, exp.data, mesh,
                                 query_boxes=np.asarray(boxes, np.float32),
                                 desc=f"{split} GT boxes")
    pids, cameras, images = (np.asarray(v) for v in (pids, cameras, images))
    model, n = cross_camera_map(pred.query_embeddings, pids, cameras, images)
    hist, _ = cross_camera_map(np.concatenate(hists), pids, cameras, images)
    print(f"| {split} | {len(set(pids.tolist()))} | {n} | {model:.1f} | "
          f"{hist:.1f} |")
    sys.stdout.flush()


def histograms_vs_camera_strength(strengths, scenes: int) -> None:
  # pylint: disable=g-import-not-at-top
  from data_builders.synthetic_person_search import (
      synthetic_person_search_dataset_builder as spsb)
  from ps_jax.data import synthetic
  from ps_jax.eval import baselines
  # pylint: enable=g-import-not-at-top
  print(f"# colour histograms, cross-camera retrieval among the labeled GT "
        f"boxes of the first {scenes} test scenes of `default`")
  print("| camera_strength | queries | colour-hist mAP |")
  print("|---|---|---|")
  for k in strengths:
    cfg = dataclasses.replace(spsb.DEFAULT, camera_strength=float(k))
    emb, pids, cameras, images = [], [], [], []
    for r in range(min(scenes, cfg.num_test_scenes)):
      scene = synthetic.generate_scene(cfg, "test", r)
      keep = scene["pids"] >= 0
      if keep.any():
        emb.append(baselines.color_histogram(scene["image"],
                                             scene["boxes_xyxy"][keep]))
        n = int(keep.sum())
        pids += scene["pids"][keep].tolist()
        cameras += [scene["camera"]] * n
        images += [r] * n
    m, n = cross_camera_map(np.concatenate(emb), *(
        np.asarray(v) for v in (pids, cameras, images)))
    print(f"| {float(k):g} | {n} | {m:.1f} |")
    sys.stdout.flush()


def main(argv):
  del argv
  if bool(FLAGS.workdir) == bool(FLAGS.camera_strengths):
    raise app.UsageError("give one of --workdir or --camera_strengths")
  if FLAGS.workdir:
    model_vs_histograms(FLAGS.workdir, FLAGS.scenes, FLAGS.query_mode)
  else:
    histograms_vs_camera_strength(FLAGS.camera_strengths, FLAGS.scenes)


if __name__ == "__main__":
  app.run(main)
