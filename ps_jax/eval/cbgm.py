"""Context Bipartite Graph Matching (CBGM, SeqNet, Li and Miao, AAAI 2021).

A test-time re-scoring that uses the other people of the query image as
context; it needs no training. For one query (SeqNet's `eval_func.py`):

1. **Context.** The query image is predicted as a gallery image; the
   query's own embedding comes first, then its other people's detections
   by descending score (`query_context`). SeqNet forces the ground-truth
   query box in as the first detection, so that NMS suppresses the query
   person's own detections; here detections overlapping the query box by
   IoU >= `nms_iou` are dropped instead, and those below `det_thresh` too.
2. Rank the query's gallery detections by similarity as usual, and take the
   gallery images of the `k1` most similar ones (a partition, not a sort:
   among detections tied at the k1-th similarity the pick is arbitrary, as
   with the reference's unstable argsort).
3. For each such image, build the complete bipartite graph between the
   first `k2` context embeddings (the query and its k2 - 1 most confident
   companions) and every detection of the image, weighted by the cosine.
4. Solve maximum-weight bipartite matching (Kuhn-Munkres; here
   `scipy.optimize.linear_sum_assignment`, which finds the same matching up
   to ties), every node of the smaller side matched. If the query (row 0)
   is matched to detection j, the query's similarity to j becomes the
   **largest edge weight among the matched pairs**: a detection whose image
   also holds the query's companions rises with them. Other similarities
   stay.
5. AP and top-k as usual.

Defaults: k1 = 10, k2 = 3 on CUHK-SYSU and k1 = 30, k2 = 4 on PRW
(SeqNet's). The full set's extra negatives are not re-scored, as in the
reference. Host-side numpy; `person_search.eval_search_cuhk` and
`eval_search_prw` call `rescore` per query when given a `Context`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import optimize

from ps_jax.ops import boxes as box_ops

# SeqNet's (k1, k2) per protocol.
DEFAULTS = {"cuhk": (10, 3), "prw": (30, 4)}


@dataclasses.dataclass(frozen=True)
class Context:
  """What CBGM needs besides the gallery.

  Attributes:
    feats: one f32[c_q, D] array per query: the query's embedding first,
      then its context people's (`query_context`).
    k1: gallery detections (by similarity) whose images are re-scored.
    k2: context embeddings used, the query's own included.
  """
  feats: Sequence[np.ndarray]
  k1: int = 10
  k2: int = 3

  def __post_init__(self):
    if self.k1 < 1 or self.k2 < 1:
      raise ValueError(f"cbgm: k1={self.k1} and k2={self.k2}; expected both "
                       ">= 1")


def query_context(query_feat: np.ndarray, query_box: np.ndarray,
                  boxes: np.ndarray, scores: np.ndarray, feats: np.ndarray, *,
                  det_thresh: float, nms_iou: float = 0.5) -> np.ndarray:
  """f32[1 + c, D]: the query's embedding, then the query image's other
  detections (score >= `det_thresh`, IoU with the query box < `nms_iou`)
  by descending score (stable).

  Args:
    query_feat: f32[D] the query's embedding.
    query_box: f32[4] its box, xyxy.
    boxes, scores, feats: the query image's detections, f32[n, 4], f32[n],
      f32[n, D].
  """
  query_feat = np.asarray(query_feat, np.float32).reshape(1, -1)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores = np.asarray(scores, np.float32).reshape(-1)
  if not len(scores):
    return query_feat
  feats = np.asarray(feats, np.float32).reshape(len(scores), -1)
  iou = box_ops.box_iou(boxes, np.asarray(query_box, np.float32)[None])[:, 0]
  keep = np.flatnonzero((scores >= det_thresh) & (np.asarray(iou) < nms_iou))
  keep = keep[np.argsort(-scores[keep], kind="stable")]
  return np.concatenate([query_feat, feats[keep]])


def rescore(sims: np.ndarray, dets: np.ndarray, feats: np.ndarray,
            det_start: np.ndarray, context: np.ndarray, *, k1: int,
            k2: int) -> np.ndarray:
  """Steps 2 to 4 for one query: a copy of `sims`, re-scored.

  Args:
    sims: f32[N] the query's similarity to every gallery detection.
    dets: i64[n] the detections of the query's gallery (the ones ranked;
      whole images).
    feats: f32[N, D] every gallery detection's embedding.
    det_start: i64[I + 1] detections of image i are det_start[i] to
      det_start[i + 1].
    context: f32[c, D] `query_context`.
    k1, k2: see `Context`.
  """
  sims = np.array(sims)
  if not len(dets):
    return sims
  values = sims[dets]
  top = (dets if len(dets) <= k1 else
         dets[np.argpartition(values, len(values) - k1)[-k1:]])
  people = context[:k2]
  for img in np.unique(np.searchsorted(det_start, top, side="right") - 1):
    g = np.arange(det_start[img], det_start[img + 1])
    weights = people @ feats[g].T  # [k2', n_img]
    rows, cols = optimize.linear_sum_assignment(weights, maximize=True)
    hit = cols[rows == 0]
    if hit.size:
      sims[g[hit[0]]] = weights[rows, cols].max()
  return sims


__all__ = ["Context", "DEFAULTS", "query_context", "rescore"]
