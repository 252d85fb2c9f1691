"""The prediction side of evaluation: model outputs -> per-image detections.

`make_predict_step` builds one jitted function

    predict_step(variables, batch, query_boxes) -> dict

that runs the model in prediction mode (P3 only), keeps a fixed `max_dets`
detections per image (`models.person_search.predict_detections`: pre-NMS
top-k, score threshold, NMS, score = cls x centerness, boxes in original
pixels, L2-normalized embeddings) and the embedding of one query box per image
(`query_embedding`: AlignPS's best-IoU detection, or the box centre).

`predict_split` runs it over a whole split, batched and sharded over the mesh
like training, and returns a `SplitPredictions` of plain NumPy arrays in the
split's record order. Those are what the host-side protocols read, and what
`save_predictions` caches so the protocols can be re-run with other options
without the model. `Predictor` does the same for a user's own images
(`ps_jax.search`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.data import augment
from ps_jax.data import pipeline
from ps_jax.models import person_search


@dataclasses.dataclass
class SplitPredictions:
  """Predictions for every record of one split, in record order.

  R records, T detections in total (valid ones only), D embedding size.
  Attributes:
    image_ids: str[R].
    orig_hw: i32[R, 2] original image (height, width).
    det_offsets: i64[R + 1]; record r's detections are rows
      det_offsets[r]:det_offsets[r + 1] of the arrays below.
    boxes: f32[T, 4] xyxy original pixels.
    scores: f32[T] detection scores (cls x centerness).
    embeddings: f32[T, D] L2-normalized.
    query_embeddings: f32[R, D] embedding of each record's query box (zeros
      where no query box was given).
    query_from_detection: bool[R] the query embedding came from a detection.
  """
  image_ids: np.ndarray
  orig_hw: np.ndarray
  det_offsets: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  embeddings: np.ndarray
  query_embeddings: np.ndarray
  query_from_detection: np.ndarray

  def dets(self, r: int) -> np.ndarray:
    """f32[n, 5] (x1, y1, x2, y2, score) of record r."""
    s, e = self.det_offsets[r], self.det_offsets[r + 1]
    return np.concatenate([self.boxes[s:e], self.scores[s:e, None]], axis=1)

  def feats(self, r: int) -> np.ndarray:
    s, e = self.det_offsets[r], self.det_offsets[r + 1]
    return self.embeddings[s:e]


def save_predictions(pred: SplitPredictions, path: str | pathlib.Path) -> None:
  """Write `pred` to an .npz file atomically (temp file, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **dataclasses.asdict(pred))
  tmp.replace(path)


def load_predictions(path: str | pathlib.Path) -> SplitPredictions:
  """Read predictions written by `save_predictions`."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      return SplitPredictions(**{k: f[k] for k in f.files})
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: not a ps_jax prediction cache ({e}); delete "
                     "it to predict again") from e


def make_predict_step(model: Any, eval_cfg: Mapping[str, Any]):
  """The jitted predict step for `model` with `config.eval` settings.

  Returns fn(variables, batch, query_boxes f32[B, 4] original pixels) ->
  dict(boxes f32[B, M, 4], scores f32[B, M], embeddings f32[B, M, D],
  valid bool[B, M], query_embedding f32[B, D], query_from_detection bool[B]).
  """
  norm_on_bbox = bool(getattr(model, "norm_on_bbox", True))

  def step(variables, batch, query_boxes):
    out = model.apply(variables, batch["image"], train=False)
    pred = person_search.predict_detections(
        out, batch["image_hw"], batch["scale"],
        max_dets=int(eval_cfg["max_dets"]),
        pre_nms_top_k=int(eval_cfg["pre_nms_top_k"]),
        score_threshold=float(eval_cfg["score_threshold"]),
        nms_iou=float(eval_cfg["nms_iou"]), norm_on_bbox=norm_on_bbox,
        orig_hw=batch["orig_hw"])
    q = person_search.query_embedding(pred, query_boxes, out, batch["scale"],
                                      mode=str(eval_cfg["query_mode"]))
    valid = pred["valid"] & batch["example_valid"][:, None]
    return {"boxes": pred["boxes"], "scores": pred["scores"],
            "embeddings": pred["embeddings"], "valid": valid,
            "query_embedding": q["embedding"],
            "query_from_detection": q["from_detection"]}
  return jax.jit(step)


def _image_id(record: Mapping[str, Any]) -> str:
  value = record["image_id"]
  return value.decode() if isinstance(value, bytes) else str(value)


def _progress(total: int, desc: str):
  from tqdm import tqdm  # entry-point dependency, imported lazily
  return tqdm(total=total, desc=desc, unit="img",
              disable=not sys.stderr.isatty() or jax.process_index() != 0)


def predict_split(predict_step, variables: Any, source: Sequence[Mapping],
                  data_cfg: Any, mesh: Any, *,
                  query_boxes: np.ndarray | None = None,
                  desc: str = "predict") -> SplitPredictions:
  """Run `predict_step` over every record of `source`, in order.

  Args:
    predict_step: from `make_predict_step`.
    variables: the model variables, replicated on `mesh`.
    source: the split's random-access records (pipeline.data_source).
    data_cfg: the config's `data` section (test_scale, eval_batch_size, ...);
      eval_batch_size is global and must divide over the devices.
    mesh: the device mesh.
    query_boxes: optional f32[R, 4] query box per record, original pixels.
  """
  nproc = jax.process_count()
  global_bs = int(data_cfg.get("eval_batch_size") or data_cfg["batch_size"])
  if global_bs % jax.device_count():
    raise ValueError(f"config.data.eval_batch_size={global_bs} must be a "
                     f"multiple of the number of devices "
                     f"({jax.device_count()})")
  num = len(source)
  qboxes = (np.zeros((num, 4), np.float32) if query_boxes is None
            else np.asarray(query_boxes, np.float32).reshape(num, 4))
  per = {k: [] for k in ("index", "boxes", "scores", "embeddings", "valid",
                         "query_embedding", "query_from_detection",
                         "orig_hw")}
  ids = np.full((num,), "", dtype=object)
  bar = _progress(num, desc)
  for host in pipeline.eval_batches(source, data_cfg,
                                    eval_batch_size=global_bs // nproc):
    index = host["index"]
    q = qboxes[np.maximum(index, 0)]
    batch = mesh_lib.host_to_global(
        {k: v for k, v in host.items() if k != "image_id"}, mesh)
    q = mesh_lib.host_to_global({"q": q}, mesh)["q"]
    out = predict_step(variables, batch, q)
    out["index"] = batch["index"]
    out["orig_hw"] = batch["orig_hw"]
    out = multihost_utils.process_allgather(out, tiled=True)
    for k in per:
      per[k].append(np.asarray(out[k]))
    for i, name in zip(host["index"], host["image_id"]):
      if i >= 0:
        ids[i] = str(name)
    bar.update(int(np.sum(host["example_valid"])) * nproc)
  bar.close()
  cat = {k: np.concatenate(v) for k, v in per.items()}
  keep = cat["index"] >= 0
  order = np.argsort(cat["index"][keep], kind="stable")
  cat = {k: v[keep][order] for k, v in cat.items()}
  if len(cat["index"]) != num or np.any(cat["index"] != np.arange(num)):
    raise RuntimeError(f"{desc}: predicted {len(cat['index'])} records of "
                       f"{num}; the eval stream lost or repeated records")
  valid = cat["valid"]
  counts = valid.sum(axis=1)
  if nproc > 1:
    # Other processes' image ids are not on this host; read them back.
    ids = np.array([_image_id(source[r]) for r in range(num)], dtype=object)
  return SplitPredictions(
      image_ids=ids.astype(str),
      orig_hw=cat["orig_hw"].astype(np.int32),
      det_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      boxes=cat["boxes"][valid].astype(np.float32),
      scores=cat["scores"][valid].astype(np.float32),
      embeddings=cat["embeddings"][valid].astype(np.float32),
      query_embeddings=cat["query_embedding"].astype(np.float32),
      query_from_detection=cat["query_from_detection"].astype(bool))


class Predictor:
  """A trained model applied to a user's own images (`ps_jax.search`).

  Images of any size are resized into the config's test bucket, like the
  evaluation pipeline does, one image per call of the jitted step (each
  bucket compiles once).
  """

  def __init__(self, config: Any, variables: Any, model: Any):
    self.config = config
    self._variables = variables
    self._model = model
    self._step = make_predict_step(model, config["eval"])
    self._data = pipeline.PipelineConfig.from_config(config["data"])
    self.embedding_dim = int(config["model"]["reid_dim"])

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path,
                   step: int | None = None) -> "Predictor":
    """Load the config and parameters of a training workdir's checkpoint."""
    config, variables, _ = checkpoint.restore_variables(workdir, step)
    config = ml_collections.ConfigDict(config)
    return cls(config, variables, models.build_model(config.model))

  def _batch(self, image: np.ndarray) -> dict[str, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
      raise ValueError(f"expected an RGB image uint8[H, W, 3], got shape "
                       f"{image.shape}")
    cfg = self._data
    ex = {"image": image, "boxes_xyxy": np.zeros((0, 4), np.float32),
          "pids": np.zeros((0,), np.int32), "image_id": "", "index": 0,
          "orig_hw": np.array(image.shape[:2], np.int32)}
    canvas = augment.padded_size(cfg.test_scale, cfg.size_divisor)
    ex = augment.resize_to_bucket(ex, None, bucket_hw=cfg.test_scale)
    ex = augment.normalize(ex, None, mode=cfg.normalization)
    ex = augment.pad_to(ex, None, canvas_hw=canvas, max_boxes=1)
    return {
        "image": ex["image"][None].astype(np.float32),
        "image_hw": np.asarray(ex["image_hw"], np.int32)[None],
        "orig_hw": np.asarray(ex["orig_hw"], np.int32)[None],
        "scale": np.asarray([ex["scale"]], np.float32),
        "example_valid": np.ones((1,), bool),
    }

  def _run(self, image: np.ndarray, box: Sequence[float] | None):
    q = np.zeros((1, 4), np.float32) if box is None else np.asarray(
        box, np.float32).reshape(1, 4)
    out = self._step(self._variables, self._batch(image), jnp.asarray(q))
    return jax.device_get(out)

  def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per image: boxes f32[n, 4] original pixels, scores f32[n], embeddings
    f32[n, D] L2-normalized, sorted by score."""
    results = []
    for image in images:
      out = self._run(image, None)
      v = out["valid"][0]
      results.append({"boxes": out["boxes"][0][v],
                      "scores": out["scores"][0][v],
                      "embeddings": out["embeddings"][0][v]})
    return results

  def embed_query(self, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    """f32[D] L2-normalized embedding of the person at `box_xyxy` (original
    pixels), by the config's `eval.query_mode`."""
    box = np.asarray(box_xyxy, np.float32).reshape(4)
    if not (np.all(np.isfinite(box)) and box[2] > box[0] and box[3] > box[1]):
      raise ValueError(f"query box {box.tolist()} is empty or not finite; "
                       "expected x1 < x2 and y1 < y2 in pixels")
    return np.asarray(self._run(image, box)["query_embedding"][0])

