"""End-to-end evaluation of a crop re-ID system on a Market-1501-style dataset.

  evaluate_crops(system, variables, data=..., mesh=..., workdir=...,
                 label="step_800")
  evaluate_crops_baseline("color_hist", data=..., workdir=...)

The `query` and `gallery` splits (Market-1501 schema: image, image_id, pid,
camera; gallery pid 0 distractors, -1 junk) are embedded (the system's
`features` in one jitted step per batch, sharded over the mesh, or a colour
histogram of the whole crop) and scored with the Market-1501 protocol
(`ps_jax.eval.reid.eval_reid_market`: junk and same-camera matches removed,
the official trapezoid AP, CMC), twice:

  reid/cosine     ranking by the dot product of L2-normalised descriptors;
  reid/euclidean  ranking by the Euclidean distance of the raw descriptors
                  (torchreid's default), via q.g - |g|^2 / 2, which orders a
                  query's gallery exactly as -|q - g|^2 does.

Each row has mAP, rank-1/5/10 and 95 % bootstrap intervals of mAP and rank-1
over the counted queries (`ps_jax.eval.bootstrap`). Embedding a crop split
takes seconds, so, unlike the scene protocols, nothing is cached.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from ps_jax import mesh as mesh_lib
from ps_jax.data import augment
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.eval import baselines
from ps_jax.eval import bootstrap
from ps_jax.eval import predict
from ps_jax.eval import reid
from ps_jax.eval import report
from ps_jax.eval.protocols import EvalError

PROTOCOL = "market1501"
METRICS = ("cosine", "euclidean")
SPLITS = ("query", "gallery")


@dataclasses.dataclass(frozen=True)
class SplitEmbeddings:
  """Descriptors of one split, in record order.

  Attributes:
    feats: f32[N, D] raw descriptors.
    pids: i32[N]; cams: i32[N]; image_ids: str[N].
  """
  feats: np.ndarray
  pids: np.ndarray
  cams: np.ndarray
  image_ids: np.ndarray


def check_dataset(builder: Any) -> None:
  """EvalError unless `builder` is a crop re-ID dataset (query + gallery
  splits of the Market-1501 schema)."""
  metadata = builder.info.metadata or {}
  protocol = metadata.get("protocol")
  missing = [s for s in SPLITS if s not in builder.info.splits]
  if protocol != PROTOCOL or missing:
    raise EvalError(
        f"dataset {builder.name!r} is not a crop re-ID dataset (protocol "
        f"{protocol!r}, splits {sorted(builder.info.splits)}); crop re-ID "
        f"systems evaluate on Market-1501-style data: protocol {PROTOCOL!r} "
        "with query and gallery splits (market1501, synthetic_reid)")


def _features_step(system: Any):
  def step(variables, batch):
    return {"feats": system.features(variables, batch),
            "index": batch["index"]}
  return mesh_lib.CompiledTogether(jax.jit(step), "features")


def embed_split(system: Any, variables: Any, source: Sequence[Mapping],
                data_cfg: crops.CropPipelineConfig, mesh: Any, *,
                desc: str) -> SplitEmbeddings:
  """Descriptors of every record of `source`, in record order (the same on
  every process). `variables` must be replicated on `mesh`; the eval batch
  is global, rounded up to a multiple of the devices."""
  num = len(source)
  if num == 0:
    raise EvalError(f"{desc}: the split has no records")
  nproc = jax.process_count()
  global_bs = predict.global_eval_batch(data_cfg)
  step = _features_step(system)
  feats = None
  pids = np.zeros((num,), np.int32)
  cams = np.zeros((num,), np.int32)
  ids = np.full((num,), "", dtype=object)
  seen = np.zeros((num,), bool)
  bar = predict.progress_bar(num, desc)
  t0 = time.time()
  for host in crops.eval_batches(source, data_cfg,
                                 eval_batch_size=global_bs // nproc):
    keep = host["index"] >= 0
    idx = host["index"][keep]
    pids[idx], cams[idx] = host["pid"][keep], host["camera"][keep]
    ids[idx] = host["image_id"][keep]
    batch = mesh_lib.host_to_global(
        {k: v for k, v in host.items() if k != "image_id"}, mesh)
    out = predict.fetch(step(variables, batch))
    rows = np.asarray(out["index"]) >= 0
    if feats is None:
      feats = np.zeros((num, out["feats"].shape[-1]), np.float32)
    feats[out["index"][rows]] = out["feats"][rows]
    seen[out["index"][rows]] = True
    bar.update(int(keep.sum()))
  bar.close()
  if not seen.all():
    raise RuntimeError(f"{desc}: embedded {int(seen.sum())} of {num} "
                       "records; the eval stream lost records")
  if nproc > 1:  # other processes' labels are not on this host
    for r in range(num):
      rec = source[r]
      pids[r], cams[r] = int(rec["pid"]), int(rec["camera"])
      ids[r] = crops.decode(rec, r)["image_id"]
  logging.info("%s: %d crops in %.1f s", desc, num, time.time() - t0)
  return SplitEmbeddings(feats, pids, cams, ids.astype(str))


def color_hist_split(source: Sequence[Mapping], *, desc: str
                     ) -> SplitEmbeddings:
  """The colour-histogram baseline (`baselines.color_histogram` of the whole
  crop: 2 horizontal bands of 8 x 4 x 4 HSV bins) of every record."""
  num = len(source)
  feats, pids, cams, ids = [], [], [], []
  bar = predict.progress_bar(num, desc)
  for r in range(num):
    rec = source[r]
    ex = crops.decode(rec, r)
    h, w = ex["image"].shape[:2]
    feats.append(baselines.color_histogram(
        ex["image"], np.array([[0, 0, w, h]], np.float32))[0])
    pids.append(int(rec["pid"]))
    cams.append(int(rec["camera"]))
    ids.append(ex["image_id"])
    bar.update(1)
  bar.close()
  return SplitEmbeddings(np.stack(feats).astype(np.float32),
                         np.asarray(pids, np.int32),
                         np.asarray(cams, np.int32), np.asarray(ids, str))


def _normalized(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(query: SplitEmbeddings, gallery: SplitEmbeddings, *,
          metrics: Sequence[str] = METRICS) -> dict[str, Any]:
  """The Market-1501 protocol for each ranking metric (module docstring).

  Returns:
    {"reid/<metric>": {mAP, rank1, rank5, rank10, mAP_ci95, rank1_ci95,
    num_valid_queries}} plus num_queries and num_gallery.
  """
  results: dict[str, Any] = {}
  for metric in metrics:
    if metric == "cosine":
      q, g = _normalized(query.feats), _normalized(gallery.feats)
    elif metric == "euclidean":
      # q.g - |g|^2 / 2 ranks a query's gallery as -|q - g|^2 does.
      q = np.concatenate([query.feats, np.ones((len(query.feats), 1),
                                               np.float32)], axis=1)
      g = np.concatenate([gallery.feats, -0.5 * np.sum(
          np.square(gallery.feats, dtype=np.float64), axis=1,
          keepdims=True).astype(np.float32)], axis=1)
    else:
      raise ValueError(f"metric={metric!r}; expected one of {METRICS}")
    res = reid.eval_reid_market(q, query.pids, query.cams, g, gallery.pids,
                                gallery.cams)
    valid = res.first_good >= 0
    row = {"mAP": res.mAP, **{f"rank{k}": v for k, v in res.cmc.items()},
           "num_valid_queries": res.num_valid_queries}
    row.update({k.replace("top1", "rank1"): v for k, v in bootstrap.intervals(
        {"mAP": res.ap[valid],
         "top1": (res.first_good[valid] == 0).astype(np.float64)}).items()})
    results[f"reid/{metric}"] = row
  results["num_queries"] = int(len(query.pids))
  results["num_gallery"] = int(len(gallery.pids))
  return results


def _sources(builder: Any) -> tuple[Any, Any]:
  check_dataset(builder)
  return (pipeline.data_source(builder, "query"),
          pipeline.data_source(builder, "gallery"))


def parts_description(system: Any, builder: Any) -> str | None:
  """For GLAD: where its parts come from on this dataset (the paper's
  keypoints, here the dataset's, or the fixed-ratio estimate)."""
  model = getattr(system, "model", None)
  if model is None or not hasattr(model, "part_overlap"):
    return None
  has = "keypoints" in builder.info.features
  if model.keypoints == "dataset" and has:
    return "keypoints from the dataset (head top, neck, hips)"
  return ("fixed-ratio parts (no keypoints: GLAD variant, "
          "docs/reid.md)")


def evaluate_crops(system: Any, variables: Any, *, data: Any, mesh: Any,
                   workdir: str | pathlib.Path, label: str,
                   step: int | None = None,
                   output: str | pathlib.Path | None = None
                   ) -> dict[str, Any]:
  """Embed the query and gallery crops with `system` and score them.

  Args:
    system: a crop re-ID system (`ps_jax.systems.CropReIDSystem`).
    variables: its variables (any devices; replicated on `mesh` here).
    data: `ps_jax.eval.run.EvalData` (builder, label, crop pipeline).
    mesh: the device mesh.
    workdir: results default to `<workdir>/eval_results.json`.
    label: what is evaluated ('step_800', 'untrained', ...).
    step: the training step of `variables`.
    output: the results file.
  Returns:
    The results dict written to the JSON file.
  """
  from ps_jax.eval import run as run_lib  # pylint: disable=g-import-not-at-top
  query_src, gallery_src = _sources(data.builder)
  variables = run_lib.replicate(variables, mesh)
  embed = functools.partial(embed_split, system, variables,
                            data_cfg=data.pipeline, mesh=mesh)
  results = score(embed(query_src, desc="query"),
                  embed(gallery_src, desc="gallery"))
  parts = parts_description(system, data.builder)
  results.update(dataset=data.label, model=label, checkpoint=label, step=step,
                 protocol=PROTOCOL, image_hw=list(data.pipeline.image_hw))
  if parts:
    results["parts"] = parts
  return report.finish(results, workdir, output, "eval_results.json")


def evaluate_crops_baseline(name: str, *, data: Any,
                            workdir: str | pathlib.Path,
                            output: str | pathlib.Path | None = None
                            ) -> dict[str, Any]:
  """A model-free baseline on the crops; results default to
  `<workdir>/eval_results_<name>.json`."""
  if name not in baselines.BASELINES:
    raise EvalError(f"baseline={name!r}; expected one of "
                    f"{baselines.BASELINES}")
  query_src, gallery_src = _sources(data.builder)
  results = score(color_hist_split(query_src, desc="query"),
                  color_hist_split(gallery_src, desc="gallery"))
  results.update(dataset=data.label, model=f"baseline_{name}",
                 checkpoint=None, step=None, protocol=PROTOCOL,
                 baseline={"name": name, "bins": baselines.HSV_BINS,
                           "stripes": baselines.STRIPES})
  return report.finish(results, workdir, output, f"eval_results_{name}.json")


__all__ = ["METRICS", "SplitEmbeddings", "check_dataset", "color_hist_split",
           "embed_split", "evaluate_crops", "evaluate_crops_baseline",
           "score"]


class CropPredictor(predict.Predictor):
  """A trained crop re-ID system applied to a user's own person crops
  (`ps_jax.search`): each image *is* one person.

  `detect` returns one "detection" per image, the whole image with score 1,
  embedded like the evaluation embeds a crop (resized to the config's
  `image_hw`, normalised, no augmentation; GLAD uses its fixed-ratio parts,
  as user crops carry no keypoints). `embed_query` embeds the box cut out of
  the image. The fingerprints (`predict.Predictor`) cover the system and the
  input settings, so an index made with one crop model refuses another.
  """

  def __init__(self, system: Any, variables: Any,
               data: crops.CropPipelineConfig, *, step: int | None = None):
    # (predict.Predictor.__init__ would build a scene predict step.)
    self.system = system
    self._variables = variables
    self._data = data
    self._embed = jax.jit(system.embed)
    self.embedding_dim = int(system.embedding_dim)
    self.step = None if step is None else int(step)

  @functools.cached_property
  def system_description(self) -> dict[str, str]:
    """{"type", "hash"} of the system and the crop input settings."""
    # pylint: disable=g-import-not-at-top
    import hashlib
    import json
    from ps_jax.eval import cache
    # pylint: enable=g-import-not-at-top
    cfg = self._data
    described = {"system": cache.describe(self.system),
                 "image_hw": list(cfg.image_hw),
                 "normalization": cfg.normalization,
                 "resize_antialias": bool(cfg.resize_antialias)}
    text = json.dumps(described, sort_keys=True)
    return {"type": type(self.system).__name__,
            "hash": hashlib.sha256(text.encode()).hexdigest()[:16]}

  def _embed_crop(self, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
      raise ValueError(f"expected an RGB image uint8[H, W, 3], got shape "
                       f"{image.shape}")
    cfg = self._data
    ex = {"image": crops.resize_image(image, cfg.image_hw,
                                      cfg.resize_antialias)}
    ex = augment.normalize(ex, None, mode=cfg.normalization)
    batch = {"image": np.asarray(ex["image"], np.float32)[None],
             "keypoints": np.zeros((1, crops.NUM_KEYPOINTS, 2), np.float32),
             "has_keypoints": np.zeros((1,), bool)}
    return np.asarray(jax.device_get(self._embed(self._variables, batch))[0])

  def detect(self, images: Sequence[np.ndarray]
             ) -> list[dict[str, np.ndarray]]:
    """Per image: the whole image as one box, score 1, its embedding."""
    results = []
    for image in images:
      h, w = np.shape(image)[:2]
      results.append({
          "boxes": np.array([[0.0, 0.0, w, h]], np.float32),
          "scores": np.ones((1,), np.float32),
          "embeddings": self._embed_crop(image)[None]})
    return results

  def embed_query(self, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    """f32[D] L2-normalised embedding of the crop `box_xyxy` (pixels,
    clipped to the image; rounded outwards to whole pixels)."""
    x1, y1, x2, y2 = self.checked_box(image, box_xyxy)
    crop = np.asarray(image)[int(np.floor(y1)):int(np.ceil(y2)),
                             int(np.floor(x1)):int(np.ceil(x2))]
    return self._embed_crop(crop)
