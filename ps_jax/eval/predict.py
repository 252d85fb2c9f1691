"""The prediction side of evaluation: a system's predict over whole splits.

`make_predict_step(system)` jits the system's `predict` (fixed-size
detections and embeddings per image, and the embedding of one query box per
image, in original-image pixels). `predict_split` runs it over a whole split,
batched and sharded over the mesh like training, and returns a
`SplitPredictions` of plain NumPy arrays in the split's record order. Those
are what the host-side protocols read, and what `ps_jax.eval.cache` keeps on
disk so the protocols can be re-run with other options without the model.
`Predictor` does the same for a user's own images (`ps_jax.search`).

Multi-process: every process feeds its shard of the split (records p, p + n,
...); the step's outputs are gathered on every process
(`process_allgather`), so each process ends with the whole split's
predictions in record order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ps_jax import mesh as mesh_lib
from ps_jax.data import augment
from ps_jax.data import pipeline
from ps_jax.systems import base


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
    scores: f32[T] detection scores (cls x centerness), descending within a
      record.
    embeddings: f32[T, D] L2-normalized.
    query_embeddings: f32[R, D] embedding of each record's query box (that
      of the box (0, 0, 0, 0) where no query box was given).
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

  def __len__(self) -> int:
    return len(self.image_ids)

  def dets(self, r: int) -> np.ndarray:
    """f32[n, 5] (x1, y1, x2, y2, score) of record r, original pixels."""
    s, e = self.det_offsets[r], self.det_offsets[r + 1]
    return np.concatenate([self.boxes[s:e], self.scores[s:e, None]], axis=1)

  def feats(self, r: int) -> np.ndarray:
    """f32[n, D] embeddings of record r's detections."""
    s, e = self.det_offsets[r], self.det_offsets[r + 1]
    return self.embeddings[s:e]

  def check(self, where: str) -> None:
    """Raises ValueError naming `where` if the arrays are inconsistent."""
    r = len(self.image_ids)
    t = int(self.det_offsets[-1]) if len(self.det_offsets) else -1
    shapes = {"orig_hw": (r, 2), "det_offsets": (r + 1,), "boxes": (t, 4),
              "scores": (t,), "query_from_detection": (r,)}
    for name, shape in shapes.items():
      if getattr(self, name).shape != shape:
        raise ValueError(f"{where}: {name} has shape "
                         f"{getattr(self, name).shape}, expected {shape}")
    if (self.embeddings.ndim != 2 or self.embeddings.shape[0] != t
        or self.query_embeddings.shape != (r, self.embeddings.shape[1])):
      raise ValueError(f"{where}: embeddings {self.embeddings.shape} and "
                       f"query_embeddings {self.query_embeddings.shape} do "
                       f"not match {t} detections and {r} records")
    if np.any(np.diff(self.det_offsets) < 0) or self.det_offsets[0] != 0:
      raise ValueError(f"{where}: det_offsets are not cumulative counts")


def make_predict_step(system: base.PersonSearchSystem, *,
                      together: bool = True):
  """The jitted predict step of a person-search system.

  Returns fn(variables, batch, query_boxes f32[B, 4] original pixels) ->
  `system.predict`'s dict (boxes f32[B, M, 4] original pixels, scores
  f32[B, M], embeddings f32[B, M, D], valid bool[B, M], query_embedding
  f32[B, D], query_from_detection bool[B]) with padding examples' detections
  marked invalid, plus index i32[B] and orig_hw i32[B, 2] passed through.
  `batch` needs image f32[B, H, W, 3], image_hw i32[B, 2], orig_hw i32[B, 2]
  (0 for padding examples), index i32[B] and example_valid bool[B].
  jax.jit caches the compiled step per system (systems are immutable and
  compare by value) and input shape. With `together` (a step over global
  batches, run by every process), several processes compile each shape
  together (`mesh.CompiledTogether`); without it, each process runs the
  step on its own images (`Predictor`).
  """
  step = jax.jit(functools.partial(_predict, system))
  return mesh_lib.CompiledTogether(step, "predict") if together else step


def _predict(system, variables, batch, query_boxes):
  out = dict(system.predict(variables, batch, query_boxes))
  base.check_predictions(out, type(system).__name__)
  out["valid"] = out["valid"] & batch["example_valid"][:, None]
  out["index"], out["orig_hw"] = batch["index"], batch["orig_hw"]
  return {k: out[k] for k in base.PREDICT_OUTPUTS + ("index", "orig_hw")}


def progress_bar(total: int, desc: str):
  """A tqdm bar on process 0 when stderr is a terminal (else disabled)."""
  from tqdm import tqdm  # entry-point dependency, imported lazily
  return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True,
              disable=None if jax.process_index() == 0 else True)


def fetch(out: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Global step outputs -> numpy on this host (all processes' rows)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(dict(out), tiled=True)
  return jax.device_get(dict(out))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of arange(s, s + l) for each (s, l)."""
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  seg = np.cumsum(lengths) - lengths
  return (np.repeat(np.asarray(starts, np.int64) - seg, lengths)
          + np.arange(total, dtype=np.int64))


class _Collector:
  """Keeps the valid rows of each fetched batch (not M padded slots)."""

  def __init__(self):
    self.per_record = {k: [] for k in ("index", "count", "orig_hw",
                                       "query_embedding",
                                       "query_from_detection")}
    self.per_det = {k: [] for k in ("boxes", "scores", "embeddings")}

  def add(self, out: Mapping[str, np.ndarray]) -> int:
    """Adds one fetched batch; returns its number of real records."""
    keep = np.asarray(out["index"]) >= 0
    valid = np.asarray(out["valid"])[keep]
    self.per_record["index"].append(np.asarray(out["index"])[keep])
    self.per_record["count"].append(valid.sum(axis=1))
    for k in ("orig_hw", "query_embedding", "query_from_detection"):
      self.per_record[k].append(np.asarray(out[k])[keep])
    for k in self.per_det:
      self.per_det[k].append(np.asarray(out[k])[keep][valid])
    return int(keep.sum())

  def finish(self, num: int, desc: str) -> dict[str, np.ndarray]:
    rec = {k: np.concatenate(v) for k, v in self.per_record.items()}
    det = {k: np.concatenate(v) for k, v in self.per_det.items()}
    order = np.argsort(rec["index"], kind="stable")
    if len(order) != num or np.any(rec["index"][order] != np.arange(num)):
      raise RuntimeError(f"{desc}: predicted {len(order)} records of {num}; "
                         "the eval stream lost or repeated records")
    counts = rec["count"].astype(np.int64)
    rows = _ranges((np.cumsum(counts) - counts)[order], counts[order])
    rec = {k: v[order] for k, v in rec.items()}
    det = {k: v[rows] for k, v in det.items()}
    return {**rec, **det}


def global_eval_batch(data_cfg: pipeline.PipelineConfig) -> int:
  """The global eval batch, rounded up to a multiple of the device count
  (padding examples fill it)."""
  bs = int(data_cfg.eval_batch_size or data_cfg.batch_size)
  ndev = jax.device_count()
  rounded = math.ceil(bs / ndev) * ndev
  if rounded != bs:
    logging.info("eval batch %d -> %d: a multiple of the %d devices", bs,
                 rounded, ndev)
  return rounded


def predict_split(predict_step, variables: Any, source: Sequence[Mapping],
                  data_cfg: pipeline.PipelineConfig, mesh: Any, *,
                  query_boxes: np.ndarray | None = None,
                  desc: str = "predict") -> SplitPredictions:
  """Run `predict_step` over every record of `source`, in order.

  Args:
    predict_step: from `make_predict_step`.
    variables: the model variables, replicated on `mesh`.
    source: the split's random-access records (pipeline.data_source).
    data_cfg: the input settings (test_scale, eval_batch_size, ...);
      eval_batch_size is global (rounded up to a multiple of the devices).
    mesh: the device mesh.
    query_boxes: optional f32[R, 4] query box per record, xyxy original
      pixels.
    desc: name of the split in the progress bar and in errors.
  Returns:
    The split's SplitPredictions (the same on every process).
  """
  num = len(source)
  if num == 0:
    raise ValueError(f"{desc}: the data source has no records")
  qboxes = np.zeros((num, 4), np.float32)
  if query_boxes is not None:
    qboxes = np.asarray(query_boxes, np.float32)
    if qboxes.shape != (num, 4):
      raise ValueError(f"{desc}: query_boxes has shape {qboxes.shape}, "
                       f"expected ({num}, 4) (one xyxy box per record)")
  nproc = jax.process_count()
  global_bs = global_eval_batch(data_cfg)
  ids = np.full((num,), "", dtype=object)
  collector = _Collector()
  bar = progress_bar(num, desc)
  t0 = time.time()
  pending = None
  # One batch in flight: the next batch is prepared and dispatched before
  # the previous one's outputs are fetched, so host work overlaps the device.
  for host in pipeline.eval_batches(source, data_cfg,
                                    eval_batch_size=global_bs // nproc):
    for i, name in zip(host["index"], host["image_id"]):
      if i >= 0:
        ids[i] = str(name)
    q = qboxes[np.maximum(host["index"], 0)]
    batch = mesh_lib.host_to_global(
        {k: v for k, v in host.items() if k != "image_id"}, mesh)
    q = mesh_lib.host_to_global({"q": q}, mesh)["q"]
    out = predict_step(variables, batch, q)
    if pending is not None:
      bar.update(collector.add(fetch(pending)))
    pending = out
  if pending is not None:
    bar.update(collector.add(fetch(pending)))
  bar.close()
  cat = collector.finish(num, desc)
  logging.info("%s: %d images in %.1f s", desc, num, time.time() - t0)
  if nproc > 1:
    # Other processes' image ids are not on this host; read them back.
    ids = np.array([_image_id(source[r]) for r in range(num)], dtype=object)
  counts = cat["count"]
  return SplitPredictions(
      image_ids=ids.astype(str),
      orig_hw=cat["orig_hw"].astype(np.int32),
      det_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      boxes=cat["boxes"].astype(np.float32),
      scores=cat["scores"].astype(np.float32),
      embeddings=cat["embeddings"].astype(np.float32),
      query_embeddings=cat["query_embedding"].astype(np.float32),
      query_from_detection=cat["query_from_detection"].astype(bool))


def _image_id(record: Mapping[str, Any]) -> str:
  value = record["image_id"]
  return value.decode() if isinstance(value, bytes) else str(value)


class Predictor:
  """A trained person-search system applied to a user's own images
  (`ps_jax.search`).

  Images of any size are resized into the test bucket of `data` (its
  transposed bucket for an image taller than wide with `portrait_buckets`),
  like the evaluation pipeline does, one image per call of the jitted step
  (each bucket compiles once).

  What the embeddings depend on, so that `ps_jax.search` never compares
  embeddings of two different models: `variables_fingerprint`,
  `system_description` and `fingerprint` (both), computed on first use
  (hashing the weights reads every byte once).

  Attributes:
    system: the system.
    embedding_dim: D.
    step: the checkpoint step of the variables, if the caller gave it.
  """

  def __init__(self, system: base.PersonSearchSystem, variables: Any,
               data: pipeline.PipelineConfig, *, step: int | None = None):
    self.system = system
    self._variables = variables
    self._predict_step = make_predict_step(system, together=False)
    self._data = data
    self.embedding_dim = int(system.embedding_dim)
    self.step = None if step is None else int(step)

  @functools.cached_property
  def variables_fingerprint(self) -> str:
    """32 hex digits hashing every weight's path, dtype, shape and bytes."""
    # Imported here: ps_jax.eval.cache imports this module.
    from ps_jax.eval import cache  # pylint: disable=g-import-not-at-top
    return cache.variables_fingerprint(self._variables)

  @functools.cached_property
  def system_description(self) -> dict[str, str]:
    """{"type": the system's class name, "hash": 16 hex digits hashing every
    option of the system and the test-time input settings}."""
    # pylint: disable=g-import-not-at-top
    import hashlib
    import json
    from ps_jax.eval import cache
    # pylint: enable=g-import-not-at-top
    cfg = self._data
    # The input resizing and normalization change the embeddings as much as
    # the system's own options do.
    described = {"system": cache.describe(self.system),
                 "test_scale": list(cfg.test_scale),
                 "size_divisor": cfg.size_divisor,
                 "normalization": cfg.normalization}
    # Named only when not the default, so that the hashes of existing
    # indexes stay valid.
    if not cfg.resize_antialias:
      described["resize_antialias"] = False
    if cfg.portrait_buckets:
      described["portrait_buckets"] = True
    text = json.dumps(described, sort_keys=True)
    return {"type": type(self.system).__name__,
            "hash": hashlib.sha256(text.encode()).hexdigest()[:16]}

  @functools.cached_property
  def fingerprint(self) -> str:
    """32 hex digits hashing the weights and the system description: two
    predictors with the same fingerprint embed the same image alike."""
    import hashlib  # pylint: disable=g-import-not-at-top
    d = self.system_description
    text = f"{self.variables_fingerprint}|{d['type']}|{d['hash']}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

  def _batch(self, image: np.ndarray) -> dict[str, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
      raise ValueError(f"expected an RGB image uint8[H, W, 3], got shape "
                       f"{image.shape}")
    cfg = self._data
    ex = {"image": image, "boxes_xyxy": np.zeros((0, 4), np.float32),
          "pids": np.zeros((0,), np.int32), "image_id": "", "index": 0,
          "image_hw": np.array(image.shape[:2], np.int32),
          "orig_hw": np.array(image.shape[:2], np.int32),
          "scale": np.float32(1.0)}
    bucket = (augment.oriented_bucket(image.shape[:2], cfg.test_scale)
              if cfg.portrait_buckets else cfg.test_scale)
    canvas = augment.padded_size(bucket, cfg.size_divisor)
    ex = augment.resize_to_bucket(ex, None, bucket_hw=bucket,
                                  antialias=cfg.resize_antialias)
    ex = augment.normalize(ex, None, mode=cfg.normalization)
    ex = augment.pad_to(ex, None, canvas_hw=canvas, max_boxes=1)
    return {
        "image": ex["image"][None].astype(np.float32),
        "image_hw": np.asarray(ex["image_hw"], np.int32)[None],
        "orig_hw": np.asarray(ex["orig_hw"], np.int32)[None],
        "scale": np.asarray([ex["scale"]], np.float32),
        "index": np.zeros((1,), np.int32),
        "example_valid": np.ones((1,), bool),
    }

  def _run(self, batch: dict[str, np.ndarray], box: np.ndarray | None):
    q = np.zeros((1, 4), np.float32) if box is None else np.asarray(
        box, np.float32).reshape(1, 4)
    out = self._predict_step(self._variables, batch, jnp.asarray(q))
    return jax.device_get(out)

  def detect(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per image: boxes f32[n, 4] original pixels, scores f32[n], embeddings
    f32[n, D] L2-normalized, sorted by score."""
    results = []
    for image in images:
      out = self._run(self._batch(image), None)
      v = out["valid"][0]
      results.append({"boxes": out["boxes"][0][v],
                      "scores": out["scores"][0][v],
                      "embeddings": out["embeddings"][0][v]})
    return results

  def embed_query(self, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    """f32[D] L2-normalized embedding of the person at `box_xyxy` (original
    pixels), by the config's `eval.query_mode`.

    A box reaching outside the image is clipped to it, with a warning that
    shows both boxes.

    Raises:
      ValueError: the box is not 4 finite numbers, or is empty once clipped
        (x1 >= x2 or y1 >= y2, e.g. wholly outside the image).
    """
    batch = self._batch(image)
    clipped = self.checked_box(image, box_xyxy)
    return np.asarray(self._run(batch, clipped)["query_embedding"][0])

  @classmethod
  def checked_box(cls, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    """`box_xyxy` clipped to the image (a warning shows both boxes if it
    reached outside).

    Raises:
      ValueError: the box is not 4 finite numbers, or is empty once clipped.
    """
    h, w = np.shape(image)[:2]
    box = np.asarray(box_xyxy, np.float64).reshape(4)
    if not np.all(np.isfinite(box)):
      raise ValueError(f"query box {cls._format_box(box)} is not finite")
    clipped = np.clip(box, 0.0, [w, h, w, h])
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
      raise ValueError(
          f"query box {cls._format_box(box)} is empty inside the {w}x{h} "
          f"image (clipped to it: {cls._format_box(clipped)}); expected "
          "x1 < x2 and y1 < y2 in pixels")
    if np.any(clipped != box):
      logging.warning("query box %s reaches outside the %dx%d image; "
                      "clipped to %s", cls._format_box(box), w, h,
                      cls._format_box(clipped))
    return clipped

  @staticmethod
  def _format_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{round(float(v), 3):g}" for v in box) + "]"
