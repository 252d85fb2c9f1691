"""End-to-end evaluation of a model (or a baseline) on a dataset's protocol.

`evaluate(config, workdir)` predicts the gallery (the `test` split) and the
queries (the `query` split), caches both under
`<workdir>/eval_cache/<label>-<key>/`, runs the protocol named by the
dataset's metadata (`protocol`: "cuhk" or "prw") plus detection recall/AP,
logs a table and writes `<workdir>/eval_results.json` (`..._untrained.json`,
`..._color_hist.json` for the baselines).

What is evaluated:
  * a checkpoint of `workdir` (default: the latest), or the caller's
    variables (the train loop passes its final state);
  * `untrained=True`: the model freshly initialised as `train_and_evaluate`
    initialises it from `config.run.seed` (no `init_from` weights);
  * `baseline="color_hist"`: no model; ground-truth gallery boxes with
    colour-histogram embeddings (`baselines.py`).

Protocol options come from `config.eval`: `det_thresh` (gallery detections
kept for search), `gallery_sizes` (CUHK-style sizes to report, -1 the full
set; empty = every size the dataset stores, plus the full set). The full set
extends the TestG50 lists, or the smallest stored size for datasets without
them (`full_set_base` in the results); by default it is left out, with a
warning and `full_set_note` in the results, where those lists miss gallery
images of the query's identity (`full_set_problem`). PRW-style datasets
report both gallery variants (all other frames, and other cameras only).
Detection recall/AP use every detection with score >= 0.01 (SeqNet/COAT).

Query embeddings follow `config.eval.query_mode`: "best_iou" (AlignPS: the
full detector runs on the query image and the detection with the largest IoU
to the query box supplies the embedding) or "center".

The prediction cache. Its key is a hash of everything the predictions depend
on: the parameters' bytes, the model config, the predict settings
(`predict.PREDICT_KEYS`), the test-time input settings and the dataset's
name, config, version and split sizes. A retrained or resumed model, another
query mode or another dataset therefore never reads stale predictions;
protocol options (det_thresh, gallery sizes) re-use them. `use_cache=False`
predicts again and overwrites. Multi-process: process 0 decides whether the
cache is used and writes it; the workdir must be on a shared filesystem (as
orbax checkpoints already require).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from data_builders import build as data_build
from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.data import pipeline
from ps_jax.data import schema
from ps_jax.eval import baselines
from ps_jax.eval import detection
from ps_jax.eval import person_search
from ps_jax.eval import predict

PROTOCOLS = ("cuhk", "prw")
# SeqNet/COAT compute detection metrics over detections scoring >= 0.01.
DETECTION_THRESH = 0.01
# Bumped when the cached arrays' meaning changes.
_CACHE_VERSION = 1


class EvalError(ValueError):
  """Evaluation cannot run as asked (bad dataset, option or workdir)."""


def _str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode() if isinstance(value, bytes) else str(value)


def _image_hw(record: Mapping[str, Any]) -> tuple[int, int]:
  """(height, width) of a record's image, from the JPEG header only."""
  image = record["image"]
  if isinstance(image, np.ndarray) and image.ndim == 3:
    return image.shape[0], image.shape[1]
  if isinstance(image, np.ndarray):
    image = image.item()
  with Image.open(io.BytesIO(bytes(image))) as im:
    return im.height, im.width


def _yxyx_to_px(yxyx: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """f32[n, 4] normalized yxyx -> f32[n, 4] xyxy pixels of an h x w image."""
  h, w = float(hw[0]), float(hw[1])
  yxyx = np.asarray(yxyx, np.float32).reshape(-1, 4)
  return np.stack([yxyx[:, 1] * w, yxyx[:, 0] * h, yxyx[:, 3] * w,
                   yxyx[:, 2] * h], axis=1).astype(np.float32)


@dataclasses.dataclass
class GalleryInfo:
  """Annotations of the `test` split, in record order (G images)."""
  image_ids: list[str]
  gt_boxes: list[np.ndarray]  # G x f32[m, 4] xyxy original pixels
  gt_pids: list[np.ndarray]   # G x i32[m]
  cameras: np.ndarray         # i32[G]


@dataclasses.dataclass
class QueryInfo:
  """The `query` split, in record order (Qn queries)."""
  image_ids: list[str]
  pids: np.ndarray            # i64[Qn]
  cameras: np.ndarray         # i32[Qn]
  boxes: np.ndarray           # f32[Qn, 4] xyxy original pixels
  galleries: dict[int, list[list[str]]]  # size -> Qn lists of image ids


def read_gallery(source: Sequence[Mapping[str, Any]]) -> GalleryInfo:
  """Image ids, GT boxes/pids and cameras of every gallery record."""
  ids, boxes, pids, cams = [], [], [], []
  for r in range(len(source)):
    rec = source[r]
    yxyx, p = schema.decode_persons(rec)
    ids.append(_str(rec["image_id"]))
    boxes.append(_yxyx_to_px(yxyx, _image_hw(rec)))
    pids.append(p)
    cams.append(int(rec["camera"]))
  return GalleryInfo(ids, boxes, pids, np.asarray(cams, np.int32))


def read_queries(source: Sequence[Mapping[str, Any]]) -> QueryInfo:
  """Image ids, pids, cameras, boxes and gallery lists of every query."""
  ids, pids, cams, boxes = [], [], [], []
  galleries: dict[int, list[list[str]]] = {}
  for r in range(len(source)):
    rec = source[r]
    ids.append(_str(rec["image_id"]))
    pids.append(int(rec["query_pid"]))
    cams.append(int(rec["camera"]))
    boxes.append(_yxyx_to_px(rec["query_bbox"], _image_hw(rec))[0])
    for n in schema.gallery_sizes_of(rec):
      galleries.setdefault(n, []).append(
          [_str(x) for x in rec[f"gallery_{n}"]])
  return QueryInfo(ids, np.asarray(pids, np.int64), np.asarray(cams, np.int32),
                   np.asarray(boxes, np.float32).reshape(-1, 4), galleries)


def check_dataset(builder: Any) -> str:
  """The dataset's protocol; EvalError unless it can be evaluated here."""
  name = getattr(builder, "name", "?")
  splits = sorted(builder.info.splits.keys())
  missing = [s for s in ("test", "query") if s not in splits]
  if missing:
    raise EvalError(f"dataset {name!r} has splits {splits}; person-search "
                    f"evaluation needs a 'test' (gallery) and a 'query' "
                    f"split, missing {missing}")
  protocol = (builder.info.metadata or {}).get("protocol", "cuhk")
  if protocol not in PROTOCOLS:
    raise EvalError(f"dataset {name!r} has protocol {protocol!r}; "
                    f"ps_jax.eval evaluates person search ({PROTOCOLS}), not "
                    "cropped re-identification datasets")
  return protocol


def cuhk_sizes(requested: Sequence[int], stored: Sequence[int], *,
               full_set: bool = True) -> tuple[list[int], int]:
  """Gallery sizes to report and the size the full set extends.

  Args:
    requested: sizes asked for (-1 = FULL_SET); empty = every stored size,
      plus the full set if `full_set`.
    stored: the `gallery_<n>` sizes of the dataset's queries.
    full_set: include the full set in the default sizes.
  """
  stored = sorted(int(n) for n in stored)
  if not stored:
    raise EvalError("the dataset's protocol is 'cuhk' but its queries have "
                    "no gallery_<n> lists")
  base = 50 if 50 in stored else stored[0]
  sizes = [int(n) for n in requested] or stored + (
      [person_search.FULL_SET] if full_set else [])
  bad = [n for n in sizes if n != person_search.FULL_SET and n not in stored]
  if bad:
    raise EvalError(f"gallery sizes {bad} are not in the dataset; it has "
                    f"{stored} (and -1, the full set)")
  return list(dict.fromkeys(sizes)), base


def full_set_problem(gallery_info: GalleryInfo, query_info: QueryInfo,
                     base: int) -> str | None:
  """Why the full set would be wrong for this dataset, or None.

  The full set ranks every gallery image, but only the images of the
  query's `gallery_<base>` list count as containing the target; any other
  image showing the query's identity becomes a negative. CUHK-SYSU's TestG50
  lists hold every gallery image of the target, so this never happens there;
  datasets whose lists hold only some of them (the synthetic benchmark caps
  the targets per gallery) would be scored against their own true matches.
  """
  images_of: dict[int, set[str]] = {}
  for name, pids in zip(gallery_info.image_ids, gallery_info.gt_pids):
    for pid in set(np.asarray(pids).tolist()):
      if pid >= 0:
        images_of.setdefault(int(pid), set()).add(name)
  lists = query_info.galleries.get(base, [])
  bad = 0
  for q, pid in enumerate(query_info.pids):
    need = images_of.get(int(pid), set()) - {query_info.image_ids[q]}
    bad += bool(need - set(lists[q]))
  if not bad:
    return None
  return (f"{bad} of {len(query_info.pids)} queries have gallery images of "
          f"their identity outside their gallery_{base} list; the full set "
          "would count those true matches as negatives")


def _size_name(n: int) -> str:
  return "full_set" if n == person_search.FULL_SET else f"gallery_{n}"


def protocols(eval_cfg: Mapping[str, Any], protocol: str,
              gallery_info: GalleryInfo, query_info: QueryInfo,
              gal: predict.SplitPredictions, qry: predict.SplitPredictions,
              *, with_detection: bool = True) -> dict[str, Any]:
  """Every protocol of the dataset on predictions (host only, numpy).

  Args:
    eval_cfg: `config.eval` (det_thresh, gallery_sizes).
    protocol: "cuhk" or "prw".
    gallery_info, query_info: the splits' annotations.
    gal, qry: predictions of the `test` and `query` splits, record order.
    with_detection: also report detection recall/AP.
  """
  num = len(gallery_info.image_ids)
  gallery = person_search.Gallery(
      image_ids=gallery_info.image_ids, gt_boxes=gallery_info.gt_boxes,
      gt_pids=gallery_info.gt_pids,
      dets=[gal.dets(r) for r in range(num)],
      feats=[gal.feats(r) for r in range(num)], cameras=gallery_info.cameras)
  queries = person_search.Queries(
      feats=qry.query_embeddings, image_ids=query_info.image_ids,
      pids=query_info.pids, cameras=query_info.cameras,
      galleries=query_info.galleries, boxes=query_info.boxes)
  det_thresh = float(eval_cfg["det_thresh"])
  results: dict[str, Any] = {"protocol": protocol, "det_thresh": det_thresh,
                             "num_queries": len(query_info.pids),
                             "num_gallery_images": num}
  if protocol == "prw":
    for name, multi_view in (("all_cameras", False), ("cross_camera", True)):
      results[f"search/{name}"] = person_search.eval_search_prw(
          gallery, queries, det_thresh=det_thresh,
          multi_view=multi_view).as_dict()
  else:
    requested = eval_cfg.get("gallery_sizes") or ()
    _, base = cuhk_sizes(requested, query_info.galleries)
    problem = full_set_problem(gallery_info, query_info, base)
    sizes, base = cuhk_sizes(requested, query_info.galleries,
                             full_set=problem is None)
    if problem:
      full = person_search.FULL_SET in sizes
      logging.warning("Full set %s: %s", "evaluated anyway" if full
                      else "skipped", problem)
      results["full_set_note"] = problem
    by_size = person_search.eval_search_cuhk(
        gallery, queries, sizes, det_thresh=det_thresh, full_set_base=base)
    for n in sizes:
      results[f"search/{_size_name(n)}"] = by_size[n].as_dict()
    if person_search.FULL_SET in sizes:
      results["full_set_base"] = base
  if with_detection:
    for name, labeled_only in (("all", False), ("labeled", True)):
      results[f"detection/{name}"] = detection.eval_detection(
          gallery.dets, gallery.gt_boxes, gallery.gt_pids,
          det_thresh=DETECTION_THRESH,
          labeled_only=labeled_only).as_dict()
    if len(qry):
      results["query_from_detection"] = float(
          np.mean(qry.query_from_detection))
  return results


def format_table(results: Mapping[str, Any]) -> str:
  """A plain-text table of `evaluate` results (percentages)."""
  title = " ".join(f"{k}={results[k]}" for k in ("dataset", "model")
                   if k in results)
  lines = [title] if title else []
  lines.append(f"{'search':<22}{'mAP':>8}{'top-1':>8}{'top-5':>8}"
               f"{'top-10':>8}")
  for key, v in results.items():
    if key.startswith("search/"):
      name = key[7:]
      if name == "full_set" and results.get("full_set_base", 50) != 50:
        name = f"full_set(+{results['full_set_base']})"
      lines.append(f"{name:<22}{100 * v['mAP']:>8.2f}{100 * v['top1']:>8.2f}"
                   f"{100 * v['top5']:>8.2f}{100 * v['top10']:>8.2f}")
  det = [(k[10:], v) for k, v in results.items()
         if k.startswith("detection/")]
  if det:
    lines.append(f"{'detection':<22}{'AP':>8}{'recall':>8}")
    for name, v in det:
      lines.append(f"{name:<22}{100 * v['ap']:>8.2f}"
                   f"{100 * v['recall']:>8.2f}")
  lines.append(f"det_thresh {results.get('det_thresh')}, "
               f"{results.get('num_queries')} queries, "
               f"{results.get('num_gallery_images')} gallery images")
  return "\n".join(lines)


def variables_fingerprint(variables: Any) -> str:
  """Hex digest of every leaf's path, dtype, shape and bytes."""
  host = mesh_lib.global_to_host(variables)
  leaves = jax.tree_util.tree_flatten_with_path(host)[0]
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|"
             .encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def _plain(value: Any) -> Any:
  """Config values as JSON-stable plain types (tuples -> lists)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))


def _dataset_id(config: Any, builder: Any) -> dict[str, Any]:
  return {"name": str(config.dataset.name),
          "config": str(config.dataset.get("config", "")),
          "version": str(builder.info.version),
          "splits": {s: int(builder.info.splits[s].num_examples)
                     for s in ("test", "query")}}


def _cache_key(parts: Mapping[str, Any]) -> str:
  text = json.dumps({"version": _CACHE_VERSION, **parts}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_predictions(cache: pathlib.Path, key_parts: Mapping[str, Any],
                       compute: Callable[[], tuple[predict.SplitPredictions,
                                                   predict.SplitPredictions]],
                       gallery_ids: Sequence[str], query_ids: Sequence[str],
                       *, use_cache: bool = True
                       ) -> tuple[predict.SplitPredictions,
                                  predict.SplitPredictions]:
  """Gallery and query predictions from `cache` if valid, else `compute()`.

  A cache is valid if both files load and their image ids are the splits'
  (`gallery_ids`, `query_ids`); the result of `compute()` is written there
  (process 0), with `key.json` describing what the predictions depend on.
  """
  paths = cache / "gallery.npz", cache / "query.npz"
  hit = use_cache and all(p.exists() for p in paths)
  if jax.process_count() > 1:
    hit = bool(multihost_utils.broadcast_one_to_all(np.int32(hit)))
  if hit:
    try:
      gal, qry = (predict.load_predictions(p) for p in paths)
      if (list(gal.image_ids) == list(gallery_ids)
          and list(qry.image_ids) == list(query_ids)):
        logging.info("Read cached predictions from %s", cache)
        return gal, qry
      logging.warning("%s: cached image ids differ from the dataset's; "
                      "predicting again", cache)
    except ValueError as e:
      logging.warning("%s; predicting again", e)
  gal, qry = compute()
  if jax.process_index() == 0:
    predict.save_predictions(gal, paths[0])
    predict.save_predictions(qry, paths[1])
    (cache / "key.json").write_text(json.dumps(key_parts, indent=2,
                                               sort_keys=True))
  return gal, qry


def replicate(variables: Any, mesh: Any) -> Any:
  """`variables` replicated on `mesh` (a no-op for the train loop's state).

  With several processes, process-local arrays (a fresh init, a restore
  without target) go through host memory: a global sharding cannot take
  them directly.
  """
  if jax.process_count() > 1:
    variables = jax.tree.map(
        lambda x: np.asarray(x) if isinstance(x, jax.Array)
        and x.is_fully_addressable else x, variables)
  return jax.device_put(variables, mesh_lib.replicated(mesh))


def init_variables(config: Any, model: Any) -> Any:
  """The model's initial variables, exactly as `train_and_evaluate` draws
  them from `config.run.seed` (before any `init_from` weights)."""
  h, w = config.data.train_scales[0]
  rng = jax.random.key(int(config.run.seed), impl="rbg")
  init_rng, _ = jax.random.split(rng)
  init = jax.jit(functools.partial(model.init, train=True))
  return init(init_rng, np.zeros((1, int(h), int(w), 3), np.float32))


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             *, variables: Any | None = None, model: Any | None = None,
             mesh: Any | None = None, builder: Any | None = None,
             step: int | None = None, untrained: bool = False,
             baseline: str | None = None, use_cache: bool = True,
             output: str | pathlib.Path | None = None) -> dict[str, Any]:
  """Predict (or read the cache) and evaluate; see the module docstring.

  Args:
    config: the experiment config (the one saved with the checkpoint when
      called from the command line); its `eval` section holds the options.
    workdir: the training workdir; results and the prediction cache go here.
    variables, model, mesh, builder: reuse the caller's (the train loop's);
      variables are restored from `workdir`'s checkpoint when None.
    step: which checkpoint to load (default: latest); with `variables`, the
      step they come from (for the results only).
    untrained: evaluate the freshly initialised model instead.
    baseline: evaluate a model-free baseline instead (`baselines.BASELINES`).
    use_cache: read cached predictions when valid (they are always written).
    output: the results file (default `<workdir>/eval_results*.json`).
  Returns:
    The results dict written to the JSON file.
  Raises:
    EvalError: the dataset or an option cannot be evaluated.
    FileNotFoundError: no checkpoint in `workdir` (or no such step).
  """
  workdir = pathlib.Path(workdir)
  if untrained and baseline:
    raise EvalError("untrained and baseline are exclusive")
  if baseline is not None and baseline not in baselines.BASELINES:
    raise EvalError(f"baseline={baseline!r}; expected one of "
                    f"{baselines.BASELINES}")
  builder = builder or data_build.load_builder(**config.dataset)
  protocol = check_dataset(builder)
  gallery_src = pipeline.data_source(builder, "test")
  query_src = pipeline.data_source(builder, "query")
  gallery_info = read_gallery(gallery_src)
  query_info = read_queries(query_src)
  if protocol == "cuhk":  # fail on bad sizes before predicting
    cuhk_sizes(config.eval.get("gallery_sizes") or (), query_info.galleries)
  key_parts: dict[str, Any] = {"dataset": _dataset_id(config, builder)}

  if baseline is not None:
    label, name = f"baseline_{baseline}", f"eval_results_{baseline}.json"
    key_parts["baseline"] = {"name": baseline, "bins": baselines.HSV_BINS,
                             "stripes": baselines.STRIPES}

    def compute():
      return (baselines.color_hist_predictions(gallery_src, desc="gallery"),
              baselines.color_hist_predictions(
                  query_src, query_boxes=query_info.boxes, desc="queries"))
  else:
    mesh = mesh or mesh_lib.make_mesh()
    model = model or models.build_model(config.model)
    if untrained:
      variables = init_variables(config, model)
      label, name = "untrained", "eval_results_untrained.json"
    else:
      if variables is None:
        _, variables, step = checkpoint.restore_variables(workdir, step)
      label = "latest" if step is None else f"step_{step}"
      name = "eval_results.json"
    variables = replicate(variables, mesh)
    data_keys = ("test_scale", "normalization", "size_divisor")
    key_parts.update(
        params=variables_fingerprint(variables),
        model=_plain(config.model),
        predict=predict.predict_settings(config.eval),
        data={k: _plain(config.data[k]) for k in data_keys
              if k in config.data})

    def compute():
      step_fn = predict.make_predict_step(model, config.eval)
      return (predict.predict_split(step_fn, variables, gallery_src,
                                    config.data, mesh, desc="gallery"),
              predict.predict_split(step_fn, variables, query_src,
                                    config.data, mesh,
                                    query_boxes=query_info.boxes,
                                    desc="queries"))

  cache = workdir / "eval_cache" / f"{label}-{_cache_key(key_parts)}"
  gal, qry = cached_predictions(cache, key_parts, compute,
                                gallery_info.image_ids, query_info.image_ids,
                                use_cache=use_cache)
  results = protocols(config.eval, protocol, gallery_info, query_info, gal,
                      qry, with_detection=baseline is None)
  results.update(
      dataset=f"{config.dataset.name}/{config.dataset.get('config', '')}"
              .rstrip("/"),
      model=label, checkpoint=label, step=step, cache=str(cache))
  if baseline is not None:
    results["detections"] = "ground truth (baseline)"
  out = pathlib.Path(output) if output else workdir / name
  results["output"] = str(out)
  if jax.process_index() == 0:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
  logging.info("Evaluation (%s):\n%s", label, format_table(results))
  return results
