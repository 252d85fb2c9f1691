"""End-to-end evaluation of a trained model on a dataset's test protocol.

`evaluate(config, workdir)` predicts the gallery (the `test` split) and the
queries (the `query` split), caches both under `<workdir>/eval_cache/`, runs
the protocol named by the dataset's metadata (`protocol`: "cuhk" or "prw")
plus detection recall/AP, prints a table and writes
`<workdir>/eval_results.json`.

Query embeddings follow `config.eval.query_mode`: "best_iou" (AlignPS: the
full detector runs on the query image and the detection with the largest IoU
to the query box supplies the embedding) or "center".
"""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from data_builders import build as data_build
from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.data import pipeline
from ps_jax.data import schema
from ps_jax.eval import detection
from ps_jax.eval import person_search
from ps_jax.eval import predict


def _str(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _gt(record, orig_hw) -> tuple[np.ndarray, np.ndarray]:
  """GT boxes (xyxy original pixels) and pids of one record."""
  yxyx, pids = schema.decode_persons(record)
  h, w = float(orig_hw[0]), float(orig_hw[1])
  boxes = np.stack([yxyx[:, 1] * w, yxyx[:, 0] * h, yxyx[:, 3] * w,
                    yxyx[:, 2] * h], axis=1) if len(yxyx) else np.zeros(
                        (0, 4), np.float32)
  return boxes.astype(np.float32), pids


def _read_queries(source) -> dict[str, Any]:
  """Image ids, pids, cameras, normalized boxes and gallery lists of queries."""
  out = {"image_ids": [], "pids": [], "cameras": [], "bbox": [],
         "galleries": {}}
  for r in range(len(source)):
    rec = source[r]
    out["image_ids"].append(_str(rec["image_id"]))
    out["pids"].append(int(rec["query_pid"]))
    out["cameras"].append(int(rec["camera"]))
    out["bbox"].append(np.asarray(rec["query_bbox"], np.float32).reshape(4))
    for n in schema.gallery_sizes_of(rec):
      out["galleries"].setdefault(n, []).append(
          [_str(x) for x in rec[f"gallery_{n}"]])
  return out


def _query_boxes_px(bbox_yxyx: np.ndarray, source) -> np.ndarray:
  """Query boxes in original pixels (needs each query image's size)."""
  hw = np.array([_image_hw(source[r]) for r in range(len(source))],
                np.float32)
  y1, x1, y2, x2 = bbox_yxyx.T
  return np.stack([x1 * hw[:, 1], y1 * hw[:, 0], x2 * hw[:, 1],
                   y2 * hw[:, 0]], axis=1)


def _image_hw(record) -> tuple[int, int]:
  """(height, width) of a record's image, from the JPEG header only."""
  image = record["image"]
  if isinstance(image, np.ndarray) and image.ndim == 3:
    return image.shape[0], image.shape[1]
  with Image.open(io.BytesIO(bytes(image))) as im:
    return im.height, im.width


def predictions(config, workdir: pathlib.Path, variables, model, mesh,
                builder, tag: str) -> tuple[predict.SplitPredictions,
                                            predict.SplitPredictions]:
  """Gallery and query predictions, from the cache under workdir if present."""
  cache = workdir / "eval_cache" / tag
  paths = cache / "gallery.npz", cache / "query.npz"
  if all(p.exists() for p in paths):
    logging.info("Reading cached predictions from %s", cache)
    return predict.load_predictions(paths[0]), predict.load_predictions(
        paths[1])
  step = predict.make_predict_step(model, config.eval)
  gallery_src = pipeline.data_source(builder, "test")
  query_src = pipeline.data_source(builder, "query")
  q = _read_queries(query_src)
  qboxes = _query_boxes_px(np.asarray(q["bbox"]).reshape(-1, 4), query_src)
  gal = predict.predict_split(step, variables, gallery_src, config.data, mesh,
                              desc="gallery")
  qry = predict.predict_split(step, variables, query_src, config.data, mesh,
                              query_boxes=qboxes, desc="queries")
  if jax.process_index() == 0:
    predict.save_predictions(gal, paths[0])
    predict.save_predictions(qry, paths[1])
  return gal, qry


def protocols(config, builder, gal: predict.SplitPredictions,
              qry: predict.SplitPredictions) -> dict[str, Any]:
  """Every protocol of the dataset on cached predictions (host only)."""
  meta = builder.info.metadata or {}
  protocol = meta.get("protocol", "cuhk")
  gallery_src = pipeline.data_source(builder, "test")
  query_src = pipeline.data_source(builder, "query")
  gt = [_gt(gallery_src[r], gal.orig_hw[r]) for r in range(len(gallery_src))]
  cameras = np.array([int(gallery_src[r]["camera"])
                      for r in range(len(gallery_src))], np.int32)
  gallery = person_search.Gallery(
      image_ids=list(gal.image_ids), gt_boxes=[g[0] for g in gt],
      gt_pids=[g[1] for g in gt],
      dets=[gal.dets(r) for r in range(len(gt))],
      feats=[gal.feats(r) for r in range(len(gt))], cameras=cameras)
  q = _read_queries(query_src)
  galleries = {int(n): lists for n, lists in q["galleries"].items()}
  queries = person_search.Queries(
      feats=qry.query_embeddings, image_ids=q["image_ids"],
      pids=np.asarray(q["pids"], np.int64),
      cameras=np.asarray(q["cameras"], np.int32), galleries=galleries)
  det_thresh = float(config.eval.det_thresh)
  results: dict[str, Any] = {"protocol": protocol, "det_thresh": det_thresh,
                             "num_queries": len(q["pids"]),
                             "num_gallery_images": len(gt)}
  if protocol == "prw":
    for name, multi_view in (("all_cameras", False), ("cross_camera", True)):
      results[f"search/{name}"] = person_search.eval_search_prw(
          gallery, queries, det_thresh=det_thresh,
          multi_view=multi_view).as_dict()
  else:
    sizes = sorted(galleries)
    if 50 in galleries:  # the full set extends the TestG50 lists
      sizes.append(person_search.FULL_SET)
    by_size = person_search.eval_search_cuhk(gallery, queries, sizes,
                                             det_thresh=det_thresh)
    for n, res in by_size.items():
      name = "full_set" if n == person_search.FULL_SET else f"gallery_{n}"
      results[f"search/{name}"] = res.as_dict()
  for name, labeled_only in (("all", False), ("labeled", True)):
    results[f"detection/{name}"] = detection.eval_detection(
        gallery.dets, gallery.gt_boxes, gallery.gt_pids, det_thresh=0.01,
        labeled_only=labeled_only).as_dict()
  results["query_from_detection"] = float(np.mean(qry.query_from_detection))
  return results


def format_table(results: dict[str, Any]) -> str:
  """A plain-text table of `protocols` results."""
  lines = [f"{'protocol / setting':<28}{'mAP':>8}{'top-1':>8}{'top-5':>8}"
           f"{'top-10':>8}"]
  for key, v in results.items():
    if key.startswith("search/"):
      lines.append(f"{key[7:]:<28}{100 * v['mAP']:>8.2f}"
                   f"{100 * v['top1']:>8.2f}{100 * v['top5']:>8.2f}"
                   f"{100 * v['top10']:>8.2f}")
  lines.append(f"{'detection':<28}{'AP':>8}{'recall':>8}")
  for key, v in results.items():
    if key.startswith("detection/"):
      lines.append(f"{key[10:]:<28}{100 * v['ap']:>8.2f}"
                   f"{100 * v['recall']:>8.2f}")
  return "\n".join(lines)


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             *, variables: Any | None = None, model: Any | None = None,
             mesh: Any | None = None, builder: Any | None = None,
             step: int | None = None, untrained: bool = False
             ) -> dict[str, Any]:
  """Predict and evaluate; see the module docstring.

  Args:
    config: the experiment config (the one saved with the checkpoint when
      called from the command line).
    workdir: the training workdir; results and the prediction cache go here.
    variables, model, mesh, builder: reuse the caller's (the train loop's);
      loaded from the latest checkpoint in `workdir` when None.
    step: which checkpoint to load (default: latest).
    untrained: evaluate a freshly initialised model instead (a baseline).
  """
  workdir = pathlib.Path(workdir)
  mesh = mesh or mesh_lib.make_mesh()
  builder = builder or data_build.load_builder(**config.dataset)
  model = model or models.build_model(config.model)
  if untrained:
    h, w = config.data.test_scale
    variables = model.init(jax.random.key(config.run.seed, impl="rbg"),
                           np.zeros((1, h, w, 3), np.float32), train=True)
    tag = "untrained"
  elif variables is None:
    _, variables, step = checkpoint.restore_variables(workdir, step)
    tag = f"step_{step}"
  else:
    tag = f"step_{step}" if step is not None else "latest"
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  gal, qry = predictions(config, workdir, variables, model, mesh, builder,
                         tag)
  results = protocols(config, builder, gal, qry)
  results["checkpoint"] = tag
  if jax.process_index() == 0:
    name = ("eval_results_untrained.json" if untrained
            else "eval_results.json")
    (workdir / name).write_text(json.dumps(results, indent=2))
    logging.info("Evaluation (%s):\n%s", tag, format_table(results))
    print(format_table(results), flush=True)
  return results
