"""Detection recall and AP of the gallery images, as the person-search papers.

Reproduces `eval_detection` of SeqNet/COAT `eval_func.py` (itself from
OIM's `psdb.py evaluate_detections`), see docs/evaluation.md:

  * detections with score >= `det_thresh` are kept (SeqNet and COAT call it
    with 0.01 after training; their default is 0.5);
  * per image, the IoU matrix GT x detection (float64 IoU stored as float32,
    as the reference does) keeps only entries >= `iou_thresh` that are the
    argmax of their column (best GT of the detection) *and* of their row
    (best detection of the GT); first index wins ties, like `np.argmax`;
  * a detection is a true positive if it kept an entry; recall = TP / #GT;
    AP = scikit-learn AP over all kept detections of all images x recall;
  * `labeled_only=True` drops unlabeled GT boxes (pid -1 here, 5555 there) and
    skips images without a labeled box entirely, their detections included.

Conventions: boxes are [x1, y1, x2, y2] in original image pixels, continuous
coordinates (width = x2 - x1, no "+1"). The reference datasets hold integer
GT boxes (CUHK-SYSU natively; SeqNet casts PRW's float boxes with
`astype(np.int32)`), so `integer_gt_boxes=True` truncates ours the same way,
tolerating the float32 round trip of TFDS's normalized boxes
(`INTEGER_BOX_TOLERANCE`).

Deviations, all on inputs where the reference crashes: an image with
detections but no GT box counts all its detections as false positives; no GT
box at all gives recall = AP = 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ps_jax.eval import ap as ap_lib

UNLABELED_PID = -1
# px: float32 normalized coordinates times an image size of a few thousand
# pixels are off by < 3e-4 px, far below this; a genuine fractional part of
# 0.999 or more is rare enough to accept.
INTEGER_BOX_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class DetectionResult:
  """Detection metrics over a set of images.

  Attributes:
    recall: TP / #GT boxes.
    ap: scikit-learn AP of all kept detections times `recall`.
    count_tp: matched GT boxes.
    count_gt: GT boxes counted.
    num_dets: kept detections counted.
  """
  recall: float
  ap: float
  count_tp: int
  count_gt: int
  num_dets: int

  def as_dict(self) -> dict[str, float]:
    return {"recall": self.recall, "ap": self.ap}


def reference_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes as the reference's `_compute_iou`, broadcasting, float64.

  Args:
    a: float [..., 4] xyxy pixels.
    b: float [..., 4] xyxy pixels, broadcastable against `a`.

  Returns:
    f64[...]: intersection / (area_a + area_b - intersection). A box with
    x2 < x1 gets a negative area as in the reference; a zero union gives NaN
    (which compares False against any threshold, as there). The reference
    mixes float32 and float64 scalar arithmetic; the ~1e-7 differences matter
    only for an IoU within rounding of a threshold.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) -
                  np.maximum(a[..., 0], b[..., 0]))
  ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) -
                  np.maximum(a[..., 1], b[..., 1]))
  inter = iw * ih
  union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) +
           (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
  with np.errstate(divide="ignore", invalid="ignore"):
    return inter / union


def truncate_boxes(boxes: np.ndarray) -> np.ndarray:
  """Integer pixel boxes like the reference's `astype(np.int32)`.

  Args:
    boxes: float [..., 4] pixels, >= 0 (datasets clip negative coordinates).

  Returns:
    f64[..., 4] truncated towards zero after adding INTEGER_BOX_TOLERANCE.
  """
  boxes = np.asarray(boxes, np.float64)
  return np.trunc(boxes + np.copysign(INTEGER_BOX_TOLERANCE, boxes))


def check_dets(dets: np.ndarray, where: str) -> np.ndarray:
  """`dets` as an [n, 5] float array; raises naming `where` otherwise."""
  dets = np.asarray(dets)
  if dets.size == 0:
    return np.zeros((0, 5), np.float32)
  if dets.ndim != 2 or dets.shape[1] != 5:
    raise ValueError(f"{where}: expected detections of shape [n, 5] "
                     f"(x1, y1, x2, y2, score), got {dets.shape}.")
  return dets


def cws_weighted(feats: np.ndarray, scores: np.ndarray, where: str
                 ) -> np.ndarray:
  """[n, D] embeddings x their [n] detection scores (CWS), which must lie
  in [0, 1] (ValueError naming `where`)."""
  if len(scores) and (scores.min() < 0 or scores.max() > 1):
    raise ValueError(f"{where}: cws needs detection scores in [0, 1], got "
                     f"[{scores.min():g}, {scores.max():g}].")
  return feats * np.asarray(scores)[:, None].astype(feats.dtype)


def check_gt(boxes: np.ndarray, pids: np.ndarray | None,
             where: str) -> tuple[np.ndarray, np.ndarray]:
  """GT boxes f64[m, 4] and pids i64[m]; raises naming `where` otherwise."""
  boxes = np.asarray(boxes, np.float64)
  boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{where}: expected GT boxes of shape [m, 4] xyxy, got "
                     f"{boxes.shape}.")
  if pids is None:
    pids = np.full(len(boxes), UNLABELED_PID, np.int64)
  pids = np.asarray(pids, np.int64).reshape(-1)
  if pids.shape[0] != boxes.shape[0]:
    raise ValueError(f"{where}: {boxes.shape[0]} GT boxes but {pids.shape[0]}"
                     " pids.")
  return boxes, pids


def eval_detection(dets: Sequence[np.ndarray],
                   gt_boxes: Sequence[np.ndarray],
                   gt_pids: Sequence[np.ndarray] | None = None,
                   *,
                   det_thresh: float = 0.5,
                   iou_thresh: float = 0.5,
                   labeled_only: bool = False,
                   integer_gt_boxes: bool = True) -> DetectionResult:
  """Detection recall and AP at `iou_thresh` with mutual-best matching.

  Args:
    dets: per image, float [n_i, 5] (x1, y1, x2, y2, score), original pixels.
    gt_boxes: per image, float [m_i, 4] xyxy original pixels.
    gt_pids: per image, int [m_i], -1 unlabeled; needed for `labeled_only`.
    det_thresh: keep detections with score >= this (compared in the scores'
      dtype, as the reference).
    iou_thresh: IoU needed for a match.
    labeled_only: count only labeled GT boxes (and skip images without one).
    integer_gt_boxes: truncate GT boxes to integers like the reference data.

  Returns:
    DetectionResult.
  """
  if len(dets) != len(gt_boxes):
    raise ValueError(f"dets has {len(dets)} images but gt_boxes has "
                     f"{len(gt_boxes)}; expected one entry per image.")
  if gt_pids is not None and len(gt_pids) != len(gt_boxes):
    raise ValueError(f"gt_pids has {len(gt_pids)} images but gt_boxes has "
                     f"{len(gt_boxes)}.")
  if labeled_only and gt_pids is None:
    raise ValueError("labeled_only=True needs gt_pids.")
  scores_all, true_all = [], []
  count_tp = count_gt = 0
  for i, (det, boxes) in enumerate(zip(dets, gt_boxes)):
    where = f"image {i}"
    boxes, pids = check_gt(boxes, None if gt_pids is None else gt_pids[i],
                           where)
    if labeled_only:
      boxes = boxes[pids != UNLABELED_PID]
      if len(boxes) == 0:
        continue
    if integer_gt_boxes:
      boxes = truncate_boxes(boxes)
    det = check_dets(det, where)
    det = det[det[:, 4] >= det_thresh]
    if len(det) == 0:
      count_gt += len(boxes)
      continue
    tp = np.zeros(len(det), bool)
    if len(boxes):
      # The reference stores the float64 IoU in a float32 matrix.
      ious = reference_iou(boxes[:, None, :], det[None, :, :4]).astype(
          np.float32)  # [m, n]
      keep = ious >= iou_thresh
      keep &= np.arange(len(boxes))[:, None] == np.argmax(ious, axis=0)
      keep &= np.arange(len(det))[None, :] == np.argmax(ious, axis=1)[:, None]
      tp = keep.any(axis=0)
      count_tp += int(keep.sum())
    count_gt += len(boxes)
    scores_all.append(det[:, 4])
    true_all.append(tp)
  num_dets = int(sum(len(s) for s in scores_all))
  if count_gt == 0 or num_dets == 0:
    return DetectionResult(0.0, 0.0, count_tp, count_gt, num_dets)
  recall = count_tp / count_gt
  ap = ap_lib.average_precision(np.concatenate(true_all),
                                np.concatenate(scores_all)) * recall
  return DetectionResult(float(recall), float(ap), count_tp, count_gt,
                         num_dets)
