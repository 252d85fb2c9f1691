"""The PRW paper's own cross-camera protocol (Zheng et al., CVPR 2017).

The PRW paper evaluates a two-step system (detector, then re-ID of the
detected boxes) differently from the person-search PRW protocol that
`ps_jax.eval.person_search` implements (SeqNet's `eval_search_prw`: every
frame but the query's, same-camera matches allowed). Its MATLAB baseline
(`calculate_ID_cam_test.m`, `compute_AP.m`) does this:

1. **Detections get identities** from the ground truth of their frame
   (`label_detections`): the best-IoU ground-truth box decides; IoU >= 0.5
   gives its pid, 0.3 <= IoU < 0.5 gives -1 (junk: badly localised), IoU <
   0.3 gives 0 (background, a distractor). When several detections of one
   frame take the same pid, the one with the highest IoU keeps it and the
   others become junk (-1). A ground-truth box whose pid is -2 (PRW's
   unidentified people) passes -2 on: junk too.
2. **Per query** (`evaluate`): good = detections with the query's pid seen
   by *another* camera; junk (out of the ranking) = pids -1 and -2, and the
   query's pid seen by its own camera; everything else is a negative. The
   AP's denominator is the number of the query's ground-truth boxes in the
   other cameras' frames, found by a detection or not, so a missed person
   caps recall. AP by trapezoid interpolation (the Market-1501
   `compute_AP`), CMC at ranks 1 and 20. Queries with no ground truth in
   another camera are skipped.
3. **The gallery grows with the detection score threshold**
   (`threshold_curve`): at each of `num_levels` thresholds, the detections
   scoring at least the threshold form the gallery; mAP and rank-1 are
   plotted against the mean number of detections per gallery frame, and
   read off at 3, 5 and 10 detections per image (`at_detections_per_image`,
   linear interpolation between levels).

Ranking is by similarity, optionally confidence weighted (CWS: similarity x
detection score, the score in [0, 1]). Everything here is host-side numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ps_jax.eval import detection
from ps_jax.eval import reid as reid_lib
from ps_jax.ops import boxes as box_ops

POS_IOU = 0.5
JUNK_IOU = 0.3
JUNK_PIDS = (-1, -2)
CMC_RANKS = (1, 20)
OPERATING_POINTS = (3, 5, 10)


def label_detections(det_boxes: np.ndarray, gt_boxes: np.ndarray,
                     gt_pids: np.ndarray, *, pos_iou: float = POS_IOU,
                     junk_iou: float = JUNK_IOU) -> np.ndarray:
  """Identities of one frame's detections (module docstring, step 1).

  Args:
    det_boxes: f32[N, 4] xyxy pixels (N may be 0).
    gt_boxes: f32[M, 4] xyxy pixels of the frame's ground truth (M may be 0).
    gt_pids: int[M] their identities (PRW: >= 1, or -2 for unidentified).
    pos_iou, junk_iou: the IoU thresholds (0.5 and 0.3 in the paper).
  Returns:
    int64[N]: a pid, -1 (junk) or 0 (background) per detection.
  """
  det = np.asarray(det_boxes, np.float32).reshape(-1, 4)
  gt = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
  pids = np.asarray(gt_pids, np.int64).reshape(-1)
  if len(pids) != len(gt):
    raise ValueError(f"gt_pids ({len(pids)}) and gt_boxes ({len(gt)}) "
                     "differ in length.")
  if not 0.0 <= junk_iou <= pos_iou <= 1.0:
    raise ValueError(f"expected 0 <= junk_iou <= pos_iou <= 1, got "
                     f"{junk_iou} and {pos_iou}.")
  labels = np.zeros(len(det), np.int64)
  if len(det) == 0 or len(gt) == 0:
    return labels
  iou = np.asarray(box_ops.box_iou(det, gt))
  best = np.argmax(iou, axis=1)
  best_iou = iou[np.arange(len(det)), best]
  labels[best_iou >= junk_iou] = -1
  matched = best_iou >= pos_iou
  labels[matched] = pids[best[matched]]
  # One detection per identity and frame: the highest IoU keeps the pid
  # (the first such detection on a tie), the others become junk.
  for g in np.unique(best[matched & (labels > 0)]):
    same = np.flatnonzero(matched & (best == g))
    keep = same[np.argmax(best_iou[same])]
    labels[same[same != keep]] = -1
  return labels


@dataclasses.dataclass(frozen=True)
class Gallery:
  """The labelled detections of every gallery frame, flattened.

  Attributes:
    feats: f32[G, D] L2-normalised embeddings.
    labels: int64[G] from `label_detections`.
    cams: int64[G] camera of each detection's frame.
    scores: f32[G] detection scores in [0, 1].
    frame: int64[G] index of each detection's frame.
    num_frames: the number of gallery frames (for detections per image).
    gt_pids, gt_cams: int64[T] every ground-truth box of the gallery frames
      (pid, camera), the source of each query's AP denominator.
  """
  feats: np.ndarray
  labels: np.ndarray
  cams: np.ndarray
  scores: np.ndarray
  frame: np.ndarray
  num_frames: int
  gt_pids: np.ndarray
  gt_cams: np.ndarray


def build_gallery(frames: Sequence[dict[str, np.ndarray]], *,
                  pos_iou: float = POS_IOU,
                  junk_iou: float = JUNK_IOU) -> Gallery:
  """Labels and flattens the detections of the gallery frames.

  Args:
    frames: one dict per frame with "boxes" f32[N, 4], "scores" f32[N],
      "embeddings" f32[N, D] (the detections), "gt_boxes" f32[M, 4],
      "gt_pids" int[M] and "camera" (an int).
  """
  feats, labels, cams, scores, frame, gt_pids, gt_cams = ([] for _ in
                                                          range(7))
  dim = None
  for i, f in enumerate(frames):
    n = len(np.asarray(f["boxes"]).reshape(-1, 4))
    emb = np.asarray(f["embeddings"], np.float32)
    if n:
      emb = emb.reshape(n, -1)
    else:  # numpy cannot reshape an empty array to (0, -1)
      width = emb.shape[1] if emb.ndim == 2 and emb.shape[1] else dim or 1
      emb = np.zeros((0, width), np.float32)
    if dim is not None and n and emb.shape[1] != dim:
      raise ValueError(f"frame {i}: embeddings of dimension {emb.shape[1]}, "
                       f"earlier frames {dim}.")
    if n:
      dim = emb.shape[1]
    feats.append(emb)
    labels.append(label_detections(f["boxes"], f["gt_boxes"], f["gt_pids"],
                                   pos_iou=pos_iou, junk_iou=junk_iou))
    cams.append(np.full(n, int(f["camera"]), np.int64))
    scores.append(np.asarray(f["scores"], np.float32).reshape(n))
    frame.append(np.full(n, i, np.int64))
    pids = np.asarray(f["gt_pids"], np.int64).reshape(-1)
    gt_pids.append(pids)
    gt_cams.append(np.full(len(pids), int(f["camera"]), np.int64))
  dim = dim or 1
  return Gallery(
      feats=np.concatenate([x.reshape(-1, dim) for x in feats] or
                           [np.zeros((0, dim), np.float32)]),
      labels=np.concatenate(labels or [np.zeros(0, np.int64)]),
      cams=np.concatenate(cams or [np.zeros(0, np.int64)]),
      scores=np.concatenate(scores or [np.zeros(0, np.float32)]),
      frame=np.concatenate(frame or [np.zeros(0, np.int64)]),
      num_frames=len(frames),
      gt_pids=np.concatenate(gt_pids or [np.zeros(0, np.int64)]),
      gt_cams=np.concatenate(gt_cams or [np.zeros(0, np.int64)]))


def num_good(query_pids: np.ndarray, query_cams: np.ndarray,
             gallery: Gallery) -> np.ndarray:
  """int64[Qn]: each query's ground-truth boxes in other cameras' frames."""
  q_pids = np.asarray(query_pids, np.int64).reshape(-1, 1)
  q_cams = np.asarray(query_cams, np.int64).reshape(-1, 1)
  return np.sum((gallery.gt_pids[None] == q_pids)
                & (gallery.gt_cams[None] != q_cams), axis=1)


def evaluate(query_feats: np.ndarray, query_pids: np.ndarray,
             query_cams: np.ndarray, gallery: Gallery, *,
             score_threshold: float = 0.0, cws: bool = False,
             ranks: Sequence[int] = CMC_RANKS) -> reid_lib.ReidResult:
  """mAP and CMC of the PRW paper's protocol (module docstring, step 2).

  Args:
    query_feats: f32[Qn, D] L2-normalised query embeddings (the queries'
      ground-truth crops).
    query_pids, query_cams: int[Qn].
    gallery: `build_gallery`'s output.
    score_threshold: detections scoring below it leave the gallery.
    cws: rank by similarity x detection score (CWS) instead of similarity.
    ranks: CMC ranks.
  """
  keep = gallery.scores >= score_threshold
  feats = gallery.feats[keep]
  if cws:
    feats = detection.cws_weighted(feats, gallery.scores[keep], "gallery")
  return reid_lib.eval_reid_market(
      query_feats, query_pids, query_cams, feats, gallery.labels[keep],
      gallery.cams[keep], junk_pids=JUNK_PIDS, ap_method="trapezoid",
      ranks=ranks, num_good=num_good(query_pids, query_cams, gallery))


@dataclasses.dataclass(frozen=True)
class Curve:
  """mAP and CMC against the mean detections per gallery frame.

  Attributes:
    thresholds: f32[L] detection score thresholds, high to low.
    detections_per_image: f64[L] mean kept detections per gallery frame.
    mAP: f64[L]; cmc: rank -> f64[L].
  """
  thresholds: np.ndarray
  detections_per_image: np.ndarray
  mAP: np.ndarray  # pylint: disable=invalid-name
  cmc: dict[int, np.ndarray]


def threshold_curve(query_feats: np.ndarray, query_pids: np.ndarray,
                    query_cams: np.ndarray, gallery: Gallery, *,
                    num_levels: int = 30, cws: bool = False,
                    ranks: Sequence[int] = CMC_RANKS) -> Curve:
  """The protocol at `num_levels` score thresholds (module docstring,
  step 3): the thresholds are the scores at evenly spaced ranks of the
  sorted detection scores, from the highest-scoring detection to all of
  them, so the levels span the detections per image the detector gives."""
  if num_levels < 1:
    raise ValueError(f"num_levels={num_levels}: expected >= 1.")
  if gallery.num_frames == 0 or len(gallery.scores) == 0:
    raise ValueError("threshold_curve: the gallery has no detections.")
  ordered = np.sort(gallery.scores)[::-1]
  picks = np.unique(np.round(np.linspace(0, len(ordered) - 1, num_levels)
                             ).astype(np.int64))
  thresholds = np.unique(ordered[picks])[::-1]  # equal scores: one level
  per_image, maps, cmc = [], [], {k: [] for k in ranks}
  for t in thresholds:
    r = evaluate(query_feats, query_pids, query_cams, gallery,
                 score_threshold=float(t), cws=cws, ranks=ranks)
    per_image.append(np.sum(gallery.scores >= t) / gallery.num_frames)
    maps.append(r.mAP)
    for k in ranks:
      cmc[k].append(r.cmc[k])
  return Curve(np.asarray(thresholds), np.asarray(per_image, np.float64),
               np.asarray(maps), {k: np.asarray(v) for k, v in cmc.items()})


def at_detections_per_image(curve: Curve, points: Sequence[float] = (
    OPERATING_POINTS)) -> dict[float, dict[str, float]]:
  """mAP and CMC at the given detections per image, linearly interpolated
  between the curve's levels; points outside the curve's range are left out
  (the detector never gives that many, or that few, detections)."""
  x = curve.detections_per_image
  order = np.argsort(x, kind="stable")
  x = x[order]
  out = {}
  for p in points:
    if x.size == 0 or not x[0] <= p <= x[-1]:
      continue
    row = {"mAP": float(np.interp(p, x, curve.mAP[order]))}
    row.update({f"rank{k}": float(np.interp(p, x, v[order]))
                for k, v in curve.cmc.items()})
    out[p] = row
  return out


def run(gallery_frames: Sequence[dict[str, np.ndarray]],
        query_feats: np.ndarray, query_pids: np.ndarray,
        query_cams: np.ndarray, *, cws: bool = False,
        num_levels: int = 30) -> dict[str, Any]:
  """The whole protocol as result rows (the eval entry point's
  `--prw_paper`).

  Args:
    gallery_frames: `build_gallery`'s input, every gallery frame.
    query_feats, query_pids, query_cams: the queries (their ground-truth
      crops' embeddings).
    cws: also every row and the curve with CWS ranking.
    num_levels: levels of the score-threshold curve.
  Returns:
    {"prw_paper/all_detections[+cws]": row of every detection kept,
     "prw_paper/<n>_per_image[+cws]": row at n = 3, 5, 10 detections per
     image (where the curve reaches), "prw_paper/curve[+cws]":
     {"thresholds", "detections_per_image", "mAP", "rank1", "rank20"}
     lists, "prw_paper/num_queries": queries with ground truth in another
     camera}. Rows hold mAP, rank1, rank20 as fractions.
  """
  gallery = build_gallery(gallery_frames)
  out: dict[str, Any] = {"prw_paper/num_queries": int(np.sum(
      num_good(query_pids, query_cams, gallery) > 0))}
  for weighted, suffix in ((False, ""), (True, "+cws")) if cws else (
      (False, ""),):
    r = evaluate(query_feats, query_pids, query_cams, gallery, cws=weighted)
    out[f"prw_paper/all_detections{suffix}"] = {
        "mAP": float(r.mAP), **{f"rank{k}": float(r.cmc[k])
                                for k in CMC_RANKS},
        "detections_per_image": len(gallery.scores) / max(
            gallery.num_frames, 1)}
    if not len(gallery.scores):
      continue
    curve = threshold_curve(query_feats, query_pids, query_cams, gallery,
                            num_levels=num_levels, cws=weighted)
    for n, row in at_detections_per_image(curve).items():
      out[f"prw_paper/{n:g}_per_image{suffix}"] = {
          **row, "detections_per_image": float(n)}
    out[f"prw_paper/curve{suffix}"] = {
        "thresholds": curve.thresholds.tolist(),
        "detections_per_image": curve.detections_per_image.tolist(),
        "mAP": curve.mAP.tolist(),
        **{f"rank{k}": v.tolist() for k, v in curve.cmc.items()}}
  return out


__all__ = ["CMC_RANKS", "Curve", "Gallery", "JUNK_PIDS", "OPERATING_POINTS",
           "at_detections_per_image", "build_gallery", "evaluate",
           "label_detections", "num_good", "run", "threshold_curve"]
