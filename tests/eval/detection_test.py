"""Tests for ps_jax.eval.detection (SeqNet `eval_detection` semantics)."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ps_jax.eval import detection


def _iou(a, b):
  x1, y1 = max(a[0], b[0]), max(a[1], b[1])
  x2, y2 = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def _slow(dets, gt_boxes, gt_pids, det_thresh, iou_thresh, labeled_only):
  """Loop-by-loop transcription of the reference procedure."""
  y_true, y_score = [], []
  count_gt = count_tp = 0
  for det, boxes, pids in zip(dets, gt_boxes, gt_pids):
    boxes = np.trunc(np.asarray(boxes, np.float64) + 1e-3)
    if labeled_only:
      boxes = boxes[np.asarray(pids) != -1]
      if len(boxes) == 0:
        continue
    det = np.asarray(det).reshape(-1, 5)
    det = det[det[:, 4] >= det_thresh]
    if len(det) == 0:
      count_gt += len(boxes)
      continue
    ious = np.zeros((len(boxes), len(det)), np.float32)
    for i in range(len(boxes)):
      for j in range(len(det)):
        ious[i, j] = _iou(boxes[i], det[j, :4])
    tfmat = ious >= iou_thresh
    for j in range(len(det)):
      best = np.argmax(ious[:, j])
      for i in range(len(boxes)):
        if i != best:
          tfmat[i, j] = False
    for i in range(len(boxes)):
      best = np.argmax(ious[i, :])
      for j in range(len(det)):
        if j != best:
          tfmat[i, j] = False
    for j in range(len(det)):
      y_score.append(det[j, 4])
      y_true.append(tfmat[:, j].any())
    count_tp += tfmat.sum()
    count_gt += len(boxes)
  recall = count_tp / count_gt
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ap = average_precision_score(y_true, y_score) * recall
  return recall, ap


def test_hand_built():
  gt = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float64),
        np.array([[0, 0, 10, 10]], np.float64)]
  pids = [np.array([3, -1]), np.array([-1])]
  dets = [
      # d0 matches GT0 (IoU 1); d1 also overlaps GT0 (IoU 0.8) but GT0's best
      # is d0: false positive; d2 misses GT1 (IoU 1/3).
      np.array([[0, 0, 10, 10, 0.9], [0, 0, 10, 8, 0.95],
                [25, 0, 35, 10, 0.6], [0, 0, 10, 10, 0.3]]),
      np.zeros((0, 5)),  # image 1: no detection, its GT still counts
  ]
  res = detection.eval_detection(dets, gt, pids)
  # Kept (score >= 0.5): 0.95 N, 0.9 P, 0.6 N. recall = 1/3.
  # AP = precision 1/2 at 0.9, recall 1 -> 1/2; x 1/3.
  assert (res.count_tp, res.count_gt, res.num_dets) == (1, 3, 3)
  assert res.recall == pytest.approx(1 / 3)
  assert res.ap == pytest.approx(1 / 6)
  # Labeled only: image 1 skipped entirely; GT0 alone: 1/1, AP 1/2.
  res = detection.eval_detection(dets, gt, pids, labeled_only=True)
  assert (res.count_tp, res.count_gt) == (1, 1)
  assert res.ap == pytest.approx(0.5)
  # A lower threshold keeps the 0.3 duplicate of GT0: a false positive.
  res = detection.eval_detection(dets, gt, pids, det_thresh=0.01)
  assert res.num_dets == 4 and res.count_tp == 1


def test_mutual_best_with_ties():
  # Two identical detections on one GT: argmax takes the first, so only the
  # first is a true positive, whatever its score.
  gt = [np.array([[0, 0, 10, 10]], np.float64)]
  dets = [np.array([[0, 0, 10, 10, 0.6], [0, 0, 10, 10, 0.9]])]
  res = detection.eval_detection(dets, gt)
  # 0.9 N, 0.6 P: AP 1/2, recall 1.
  assert res.recall == 1.0 and res.ap == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("labeled_only", [False, True])
def test_equals_slow_reference(seed, labeled_only):
  rng = np.random.default_rng(seed)
  dets, gt, pids = [], [], []
  for _ in range(25):
    m = int(rng.integers(1, 6))
    xy = rng.uniform(0, 100, (m, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(5, 60, (m, 2))], 1),
                     1)
    d = [b + rng.normal(0, rng.choice([1, 5, 20]), 4) for b in boxes
         for _ in range(int(rng.integers(0, 3)))]
    d = np.reshape(d, (-1, 4))
    dets.append(np.concatenate([d, rng.uniform(0, 1, (len(d), 1))], 1))
    gt.append(boxes)
    pids.append(rng.integers(-1, 3, m))
  for det_thresh in (0.01, 0.5):
    got = detection.eval_detection(dets, gt, pids, det_thresh=det_thresh,
                                   labeled_only=labeled_only)
    want = _slow(dets, gt, pids, det_thresh, 0.5, labeled_only)
    np.testing.assert_allclose([got.recall, got.ap], want, rtol=1e-12)


def test_degenerate_inputs():
  # No GT anywhere: 0, not a crash. Detections on an image without GT are
  # false positives.
  res = detection.eval_detection([np.array([[0, 0, 5, 5, 0.9]])],
                                 [np.zeros((0, 4))])
  assert (res.recall, res.ap, res.num_dets) == (0.0, 0.0, 1)
  res = detection.eval_detection(
      [np.array([[0, 0, 5, 5, 0.9]]), np.array([[0, 0, 5, 5, 0.8]])],
      [np.zeros((0, 4)), np.array([[0, 0, 5, 5]])])
  # 0.9 N, 0.8 P: AP 1/2, recall 1.
  assert res.recall == 1.0 and res.ap == pytest.approx(0.5)


def test_truncate_boxes():
  # A float32 round trip of 150 lands just below it; truncation must not
  # drop a pixel, but genuine fractions are truncated like astype(int32).
  np.testing.assert_array_equal(
      detection.truncate_boxes([149.99998, 10.7, 0.0, 3.2]),
      [150, 10, 0, 3])


def test_bad_input():
  with pytest.raises(ValueError, match="one entry per image"):
    detection.eval_detection([np.zeros((0, 5))], [])
  with pytest.raises(ValueError, match=r"image 0: expected detections"):
    detection.eval_detection([np.zeros((2, 4))], [np.zeros((0, 4))])
  with pytest.raises(ValueError, match="needs gt_pids"):
    detection.eval_detection([], [], labeled_only=True)
  with pytest.raises(ValueError, match="2 GT boxes but 1 pids"):
    detection.eval_detection([np.zeros((0, 5))], [np.zeros((2, 4))],
                             [np.zeros(1)])
