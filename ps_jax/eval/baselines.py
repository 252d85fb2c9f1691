"""Model-free re-identification baselines on the person-search protocols.

A trained model must clearly beat a colour-histogram baseline on the same
protocol before its numbers mean much. `color_hist_predictions` produces the
same
`SplitPredictions` the model's predictor does, so `ps_jax.eval.run` scores it
with the unchanged protocols:

  * detections: the gallery image's ground-truth boxes (every person,
    labeled or not), each with score 1, so the baseline is never hurt by
    detection (its detection metrics are meaningless and not reported);
  * embedding of a box: a colour histogram of its crop. The crop is split
    into `stripes` horizontal bands (default 2: upper and lower body, which
    usually differ in clothing colour); each band is a joint HSV histogram
    (hue x saturation x value bins, default 8 x 4 x 4), normalized to sum 1;
    the embedding is the square root of the concatenated band histograms
    divided by sqrt(stripes), a unit vector. The dot product of two
    embeddings is then the mean Bhattacharyya coefficient of their bands;
  * query embedding: the histogram of the query box's crop.

Boxes are xyxy in original image pixels; a crop covers the pixels whose
centres lie inside the box (at least one pixel per side), so any box with
positive area has a histogram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ps_jax.data import augment
from ps_jax.eval import predict

BASELINES = ("color_hist",)
HSV_BINS = (8, 4, 4)
STRIPES = 2


def _quantized_hsv(image: np.ndarray, bins: Sequence[int]) -> np.ndarray:
  """i64[H, W] joint HSV bin index of each pixel of a uint8[H, W, 3] RGB
  image (PIL's HSV: every channel in 0..255)."""
  hsv = np.asarray(Image.fromarray(image).convert("HSV"), np.int64)
  bh, bs, bv = (int(b) for b in bins)
  h = hsv[..., 0] * bh // 256
  s = hsv[..., 1] * bs // 256
  v = hsv[..., 2] * bv // 256
  return (h * bs + s) * bv + v


def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
  """[a, b) pixel indices whose centres (i + 0.5) lie in [lo, hi], at least
  one pixel, inside [0, size)."""
  a = int(np.clip(np.ceil(lo - 0.5), 0, size - 1))
  b = int(np.clip(np.floor(hi - 0.5) + 1, a + 1, size))
  return a, b


def color_histogram(image: np.ndarray, boxes_xyxy: np.ndarray, *,
                    bins: Sequence[int] = HSV_BINS,
                    stripes: int = STRIPES) -> np.ndarray:
  """Colour-histogram embeddings of boxes in one image (module docstring).

  Args:
    image: uint8[H, W, 3] RGB.
    boxes_xyxy: f32[n, 4] boxes, original pixels.
    bins: hue, saturation and value bins of each band's joint histogram.
    stripes: horizontal bands per crop.
  Returns:
    f32[n, stripes * prod(bins)] unit-norm embeddings.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"color_histogram: expected a uint8[H, W, 3] RGB image, "
                     f"got {image.dtype}{list(image.shape)}")
  if int(stripes) < 1 or len(bins) != 3 or min(bins) < 1:
    raise ValueError(f"color_histogram: stripes={stripes} must be >= 1 and "
                     f"bins={tuple(bins)} three positive counts")
  boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
  nbins = int(np.prod(bins))
  out = np.zeros((len(boxes), int(stripes), nbins), np.float64)
  if len(boxes) == 0:
    return out.reshape(0, int(stripes) * nbins).astype(np.float32)
  q = _quantized_hsv(image, bins)
  height, width = q.shape
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    if not (np.all(np.isfinite(boxes[i])) and x2 > x1 and y2 > y1):
      raise ValueError(f"color_histogram: box {i} {boxes[i].tolist()} is "
                       "empty or not finite")
    xa, xb = _pixel_span(x1, x2, width)
    ya, yb = _pixel_span(y1, y2, height)
    # Band edges by rows; a crop shorter than `stripes` rows reuses rows.
    edges = ya + np.round(np.linspace(0, yb - ya, int(stripes) + 1)).astype(
        int)
    for k in range(int(stripes)):
      lo, hi = edges[k], max(edges[k + 1], edges[k] + 1)
      lo, hi = min(lo, yb - 1), min(hi, yb)
      counts = np.bincount(q[lo:hi, xa:xb].ravel(), minlength=nbins)
      out[i, k] = counts / counts.sum()
  emb = np.sqrt(out).reshape(len(boxes), -1) / np.sqrt(int(stripes))
  return emb.astype(np.float32)


def color_hist_predictions(source: Sequence[Mapping[str, Any]], *,
                           query_boxes: np.ndarray | None = None,
                           bins: Sequence[int] = HSV_BINS,
                           stripes: int = STRIPES,
                           desc: str = "color_hist"
                           ) -> predict.SplitPredictions:
  """The colour-histogram baseline's predictions for a split.

  Args:
    source: the split's records (schema.py scene format).
    query_boxes: optional f32[R, 4] query box per record, xyxy original
      pixels; their histograms become `query_embeddings` (zeros without).
    bins, stripes: see `color_histogram`.
    desc: progress-bar label.
  Returns:
    SplitPredictions whose detections are the records' GT boxes (score 1).
  """
  num = len(source)
  dim = int(stripes) * int(np.prod(bins))
  if query_boxes is not None:
    query_boxes = np.asarray(query_boxes, np.float32)
    if query_boxes.shape != (num, 4):
      raise ValueError(f"{desc}: query_boxes has shape {query_boxes.shape}, "
                       f"expected ({num}, 4)")
  ids, hws, counts, boxes, feats = [], [], [], [], []
  q_feats = np.zeros((num, dim), np.float32)
  bar = predict.progress_bar(num, desc)
  for r in range(num):
    ex = augment.decode(source[r], r)
    ids.append(ex["image_id"])
    hws.append(ex["orig_hw"])
    b = np.asarray(ex["boxes_xyxy"], np.float32).reshape(-1, 4)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    counts.append(len(b))
    boxes.append(b)
    feats.append(color_histogram(ex["image"], b, bins=bins, stripes=stripes))
    if query_boxes is not None:
      q_feats[r] = color_histogram(ex["image"], query_boxes[r:r + 1],
                                   bins=bins, stripes=stripes)[0]
    bar.update(1)
  bar.close()
  total = int(sum(counts))
  return predict.SplitPredictions(
      image_ids=np.asarray(ids, dtype=str).reshape(num),
      orig_hw=np.asarray(hws, np.int32).reshape(num, 2),
      det_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
      boxes=np.concatenate(boxes).reshape(total, 4) if num else np.zeros(
          (0, 4), np.float32),
      scores=np.ones((total,), np.float32),
      embeddings=(np.concatenate(feats).reshape(total, dim) if num
                  else np.zeros((0, dim), np.float32)),
      query_embeddings=q_feats,
      query_from_detection=np.zeros((num,), bool))
