"""Reference-style per-query loops of the search protocols (slow NumPy).

A transcription of SeqNet's `eval_search_cuhk` / `eval_search_prw`
(`eval_func.py`; COAT copies it), the loop most person-search papers report
with, on `ps_jax.eval.person_search` inputs. `bench/eval_protocols.py` times
it against the vectorised protocols and checks that both give the same
numbers. Per query, per gallery image: cosine similarities of the image's
kept detections, the target's small-box IoU threshold
min(0.5, w*h / ((w+10)*(h+10))), the most similar detection passing it as the
single true positive; then scikit-learn's average_precision_score x recall
and top-k from a sort of all the query's detections.

Differences from SeqNet, all outside the measured cases' numbers:
  * the target box is the image's first GT box with the query's pid,
    truncated to integers (`integer_gt_boxes=True` of ps_jax), not a TestG
    entry;
  * top-k sorts ties with negatives first (ps_jax's documented rule) instead
    of NumPy's unstable argsort;
  * CUHK-SYSU duplicated entries follow SeqNet ("seqnet"); the full set is
    not transcribed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

from ps_jax.eval import person_search as ps

TOP_K = ps.TOP_K


def _compute_iou(a, b):
  x1 = max(a[0], b[0])
  y1 = max(a[1], b[1])
  x2 = min(a[2], b[2])
  y2 = min(a[3], b[3])
  inter = max(0, x2 - x1) * max(0, y2 - y1)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter * 1.0 / union


def prepare(gallery: ps.Gallery, det_thresh: float = 0.5) -> dict:
  """SeqNet's one-off mapping: image name -> (kept dets, their feats).

  Also the GT annotations by name, as SeqNet's `annos` list holds them.

  Args:
    gallery: the gallery images.
    det_thresh: keep detections scoring >= this.

  Returns:
    dict with "name_to_det_feat" and "annos" (list of dicts with img_name,
    boxes [m, 4] int32, pids [m], cam_id).
  """
  name_to_det_feat = {}
  annos = []
  cams = (gallery.cameras if gallery.cameras is not None else
          np.full(len(gallery.image_ids), -1))
  for name, det, feat, boxes, pids, cam in zip(
      gallery.image_ids, gallery.dets, gallery.feats, gallery.gt_boxes,
      gallery.gt_pids, cams):
    det = np.asarray(det).reshape(-1, 5)
    if det.shape[0]:
      inds = np.where(det[:, 4].ravel() >= det_thresh)[0]
      if len(inds) > 0:
        name_to_det_feat[name] = (det[inds], np.asarray(feat)[inds])
    boxes = np.trunc(np.asarray(boxes, np.float64).reshape(-1, 4) + 1e-3)
    annos.append({"img_name": name, "boxes": boxes.astype(np.int32),
                  "pids": np.asarray(pids).reshape(-1), "cam_id": int(cam)})
  return {"name_to_det_feat": name_to_det_feat, "annos": annos}


def _label(det, sim, gt):
  """Sorts one image by similarity and marks its first match (SeqNet)."""
  label = np.zeros(len(sim), dtype=np.int32)
  if gt is None:
    return label, sim, 0
  w, h = gt[2] - gt[0], gt[3] - gt[1]
  iou_thresh = min(0.5, (w * h * 1.0) / ((w + 10) * (h + 10)))
  inds = np.argsort(sim)[::-1]
  sim = sim[inds]
  det = det[inds]
  for j, roi in enumerate(det[:, :4]):
    if _compute_iou(roi, gt) >= iou_thresh:
      label[j] = 1
      return label, sim, 1
  return label, sim, 0


def _finish(y_true, y_score, count_tp, count_gt):
  """AP x recall and top-k hits of one query."""
  y_score = np.asarray(y_score)
  y_true = np.asarray(y_true)
  assert count_tp <= count_gt
  if count_tp == 0:
    return 0.0, [False] * len(TOP_K)
  recall_rate = count_tp * 1.0 / count_gt
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ap = average_precision_score(y_true, y_score) * recall_rate
  inds = np.lexsort((y_true, -y_score))  # ties: negatives first
  y_true = y_true[inds]
  return ap, [min(1, sum(y_true[:k])) > 0 for k in TOP_K]


def eval_search_cuhk(prepared: dict, queries: ps.Queries, gallery_size: int,
                     query_ids: Sequence[int]) -> tuple[np.ndarray,
                                                        np.ndarray]:
  """SeqNet's CUHK-SYSU loop over the queries `query_ids`.

  Args:
    prepared: `prepare(gallery)`.
    queries: the queries, with `galleries[gallery_size]` lists of indices.
    gallery_size: a TestG list size (not the full set).
    query_ids: the queries to evaluate.

  Returns:
    (f64[len(query_ids)] AP x recall, bool[len(query_ids), len(TOP_K)]).
  """
  name_to_det_feat = prepared["name_to_det_feat"]
  annos = prepared["annos"]
  aps, accs = [], []
  for i in query_ids:
    y_true, y_score = [], []
    count_gt, count_tp = 0, 0
    feat_q = np.asarray(queries.feats[i]).ravel()
    query_pid = queries.pids[i]
    name2sim, name2gt = {}, {}
    for g in queries.galleries[gallery_size][i]:
      anno = annos[g]
      gallery_imname = anno["img_name"]
      # the TestG entry: the target box if the image shows the query person
      hit = np.flatnonzero(anno["pids"] == query_pid)
      gt = anno["boxes"][hit[0]] if hit.size else np.zeros(0, np.int32)
      count_gt += gt.size > 0
      if gallery_imname not in name_to_det_feat:
        continue
      det, feat_g = name_to_det_feat[gallery_imname]
      if det.shape[0] == 0:
        continue
      feat_g = feat_g.reshape(feat_g.shape[:2])
      sim = feat_g.dot(feat_q).ravel()
      if gallery_imname in name2sim:
        continue
      name2sim[gallery_imname] = sim
      name2gt[gallery_imname] = gt
    for gallery_imname, sim in name2sim.items():
      gt = name2gt[gallery_imname]
      det, _ = name_to_det_feat[gallery_imname]
      label, sim, tp = _label(det, sim, gt if gt.size > 0 else None)
      count_tp += tp
      y_true.extend(list(label))
      y_score.extend(list(sim))
    ap, acc = _finish(y_true, y_score, count_tp, count_gt)
    aps.append(ap)
    accs.append(acc)
  return np.asarray(aps, np.float64), np.asarray(accs, bool)


def eval_search_prw(prepared: dict, queries: ps.Queries,
                    query_ids: Sequence[int], *, multi_view: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
  """SeqNet's PRW loop over the queries `query_ids`.

  Args:
    prepared: `prepare(gallery)`.
    queries: the queries (cameras for `multi_view`).
    query_ids: the queries to evaluate.
    multi_view: only frames of other cameras (`ignore_cam_id=False`).

  Returns:
    (f64[len(query_ids)] AP x recall, bool[len(query_ids), len(TOP_K)]).
  """
  name_to_det_feat = prepared["name_to_det_feat"]
  annos = prepared["annos"]
  aps, accs = [], []
  for i in query_ids:
    y_true, y_score = [], []
    count_gt, count_tp = 0, 0
    feat_p = np.asarray(queries.feats[i]).ravel()
    query_imname = queries.image_ids[i]
    query_pid = queries.pids[i]
    query_cam = (queries.cameras[i] if queries.cameras is not None else -1)
    gallery_imgs = []
    for x in annos:
      if query_pid in x["pids"] and x["img_name"] != query_imname:
        gallery_imgs.append(x)
    query_gts = {}
    for item in gallery_imgs:
      query_gts[item["img_name"]] = item["boxes"][item["pids"] == query_pid][0]
    gallery_imgs = [x for x in annos if x["img_name"] != query_imname and (
        not multi_view or x["cam_id"] != query_cam)]
    name2sim = {}
    for item in gallery_imgs:
      gallery_imname = item["img_name"]
      count_gt += gallery_imname in query_gts
      if gallery_imname not in name_to_det_feat:
        continue
      det, feat_g = name_to_det_feat[gallery_imname]
      feat_g = feat_g.reshape(feat_g.shape[:2])
      sim = feat_g.dot(feat_p).ravel()
      if gallery_imname in name2sim:
        continue
      name2sim[gallery_imname] = sim
    for item in gallery_imgs:
      gallery_imname = item["img_name"]
      if gallery_imname not in name2sim:
        continue
      sim = name2sim[gallery_imname]
      det, _ = name_to_det_feat[gallery_imname]
      label, sim, tp = _label(det, sim, query_gts.get(gallery_imname))
      count_tp += tp
      y_true.extend(list(label))
      y_score.extend(list(sim))
    ap, acc = _finish(y_true, y_score, count_tp, count_gt)
    aps.append(ap)
    accs.append(acc)
  return np.asarray(aps, np.float64), np.asarray(accs, bool)
