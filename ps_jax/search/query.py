"""Ranking the detections of a gallery index against a query person.

Conventions:
  * Embeddings are L2-normalized, so similarity is the cosine, in [-1, 1];
    the query embedding is normalized here in case it was not.
  * Boxes are [x1, y1, x2, y2] in pixels of the image they belong to.
  * Detection scores are in [0, 1] (the detector's sigmoid).
  * Ranking score: the similarity, or with `cws=True` the Confidence
    Weighted Similarity of the PRW paper (Zheng et al., CVPR 2017),
    score = detection score x similarity, as SeqNet applies it (the
    normalized gallery embedding multiplied by the box score): detections
    the detector doubts sink as the gallery grows.
  * Ties keep index order (stable sort), so results are deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from absl import logging
import numpy as np

from ps_jax.search import index as index_lib

SearchError = index_lib.SearchError


@dataclasses.dataclass(frozen=True)
class Hit:
  """One ranked gallery detection.

  Attributes:
    image: the image's name in the index (absolute path, or TFDS image_id).
    box: (x1, y1, x2, y2) pixels of that image.
    det_score: detection score in [0, 1].
    similarity: cosine similarity to the query, in [-1, 1].
    score: the ranking score (similarity, or det_score x similarity if cws).
    rank: 1-based position in the result list.
    image_index: row of `GalleryIndex.images`.
    detection: row of the index arrays.
  """

  image: str
  box: tuple[float, float, float, float]
  det_score: float
  similarity: float
  score: float
  rank: int
  image_index: int
  detection: int

  def to_dict(self) -> dict[str, Any]:
    """JSON-able dict (floats rounded to 6 decimals)."""
    return {"rank": self.rank, "image": self.image,
            "box": [round(v, 3) for v in self.box],
            "det_score": round(self.det_score, 6),
            "similarity": round(self.similarity, 6),
            "score": round(self.score, 6),
            "image_index": self.image_index, "detection": self.detection}


def rank_detections(embeddings: np.ndarray, det_scores: np.ndarray,
                    image_of_det: np.ndarray, query_embedding: np.ndarray, *,
                    top_k: int | None = 10, det_threshold: float = 0.0,
                    cws: bool = False, one_per_image: bool = False,
                    excluded_images: Sequence[int] = ()
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Ranks detections by (confidence-weighted) cosine similarity.

  Args:
    embeddings: f32[M, D] L2-normalized gallery embeddings.
    det_scores: f32[M] detection scores in [0, 1].
    image_of_det: i32[M] image of each detection.
    query_embedding: f32[D] query embedding (normalized here).
    top_k: length of the result; None for every eligible detection.
    det_threshold: detections with a score below it are left out.
    cws: rank by det_score x similarity instead of similarity.
    one_per_image: keep only the best-ranked detection of each image.
    excluded_images: image rows left out (e.g. the query's own image).
  Returns:
    order: i32[k] detection rows, best first (k <= top_k).
    similarity: f32[k] cosine similarities of those rows.
    score: f32[k] their ranking scores.
  """
  q = normalized_query(query_embedding, embeddings.shape[1], top_k)
  sim = embeddings @ q  # [M], one matmul over the whole gallery
  return rank_similarities(sim, det_scores, image_of_det, top_k=top_k,
                           det_threshold=det_threshold, cws=cws,
                           one_per_image=one_per_image,
                           excluded_images=excluded_images)


def normalized_query(query_embedding: np.ndarray, dim: int,
                     top_k: int | None = None) -> np.ndarray:
  """The query embedding, checked and L2-normalized.

  Args:
    query_embedding: f32[D] query embedding.
    dim: D of the index.
    top_k: checked too: None or >= 1.
  Returns:
    f32[D] of norm 1.
  Raises:
    SearchError if the shape is not (dim,), the norm is zero or not finite,
    or top_k < 1.
  """
  q = np.asarray(query_embedding, np.float32)
  if q.shape != (dim,):
    raise SearchError(f"query embedding has shape {q.shape}, the index holds "
                      f"{dim}-dim embeddings: use the model that made it")
  norm = float(np.linalg.norm(q))
  if not np.isfinite(norm) or norm == 0.0:
    raise SearchError(f"query embedding has norm {norm}; expected a finite, "
                      "non-zero vector")
  if top_k is not None and top_k < 1:
    raise SearchError(f"top_k must be >= 1, got {top_k}")
  return q / norm


def rank_similarities(sim: np.ndarray, det_scores: np.ndarray,
                      image_of_det: np.ndarray, *, top_k: int | None = 10,
                      det_threshold: float = 0.0, cws: bool = False,
                      one_per_image: bool = False,
                      excluded_images: Sequence[int] = ()
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`rank_detections` for detections whose similarities are known.

  Ties keep the order of the rows given (stable sort).

  Args:
    sim: f32[M] cosine similarity of each detection to the query.
    det_scores, image_of_det, top_k, det_threshold, cws, one_per_image,
      excluded_images: as for `rank_detections`.
  Returns:
    order: i32[k] positions in `sim`, best first (k <= top_k).
    similarity: f32[k] `sim` at those positions.
    score: f32[k] their ranking scores.
  """
  score = sim * det_scores if cws else sim
  eligible = det_scores >= det_threshold
  if len(excluded_images):
    eligible &= ~np.isin(image_of_det, np.asarray(excluded_images))
  rows = np.flatnonzero(eligible)
  order = rows[np.argsort(-score[rows], kind="stable")]
  if one_per_image:
    # np.unique's first index of each image in ranked order is its best hit.
    _, first = np.unique(image_of_det[order], return_index=True)
    order = order[np.sort(first)]
  if top_k is not None:
    order = order[:top_k]
  return (order.astype(np.int32), sim[order].astype(np.float32),
          score[order].astype(np.float32))


def search(index: index_lib.GalleryIndex, query_embedding: np.ndarray,
           top_k: int | None = 10, det_threshold: float = 0.0,
           cws: bool = False, *, one_per_image: bool = False,
           exclude_images: Iterable[str] = (), ann: Any = None) -> list[Hit]:
  """The gallery detections most similar to a query embedding.

  Args:
    index: the gallery.
    query_embedding: f32[D] the query person's embedding (from
      `embed_query` or `embed_crop`).
    top_k: number of hits; None for all.
    det_threshold: ignore detections scoring below it.
    cws: rank by confidence-weighted similarity (det_score x similarity).
    one_per_image: at most one hit (the best) per gallery image, for "in
      which images does this person appear".
    exclude_images: image names (paths or TFDS image_ids) to leave out, e.g.
      the query's own image when it is part of the gallery.
    ann: an approximate index over `index` (`ps_jax.search.ann.AnnIndex`,
      checked fresh by `ann.load_for_index`): FAISS picks the candidates,
      which are ranked here with the same rules (see the `ann` module for
      what that guarantees). None (default): exact search over all M
      detections.
  Returns:
    Hits, best first.
  """
  names = set(str(n) for n in exclude_images)
  excluded = [i for i, e in enumerate(index.images) if e.name in names]
  rank = rank_detections if ann is None else ann.rank_detections
  order, sim, score = rank(
      index.embeddings, index.scores, index.image_of_det, query_embedding,
      top_k=top_k, det_threshold=det_threshold, cws=cws,
      one_per_image=one_per_image, excluded_images=excluded)
  hits = []
  for rank, (d, s, sc) in enumerate(zip(order, sim, score), start=1):
    img = int(index.image_of_det[d])
    hits.append(Hit(
        image=index.images[img].name,
        box=tuple(float(v) for v in index.boxes[d]),
        det_score=float(index.scores[d]), similarity=float(s),
        score=float(sc), rank=rank, image_index=img, detection=int(d)))
  return hits


def format_box(box_xyxy: Sequence[float]) -> str:
  """`[x1, y1, x2, y2]` with at most 3 decimals, as messages show boxes."""
  return "[" + ", ".join(f"{round(float(v), 3):g}" for v in box_xyxy) + "]"


def check_box(box_xyxy: Sequence[float], width: int, height: int,
              where: str = "query box",
              warn: Callable[[str], None] | None = None
              ) -> tuple[float, float, float, float]:
  """Validates a pixel box [x1, y1, x2, y2] against a width x height image.

  A box reaching outside the image is clipped to it, and `warn` gets a
  message naming `where`, the box given and the clipped box.

  Args:
    box_xyxy: the box, in pixels.
    width: the image's width in pixels.
    height: the image's height in pixels.
    where: what the box is, for messages (e.g. "--box for q.jpg").
    warn: called with the clipping message; default: absl logging.warning.
  Returns:
    The box clipped to the image.
  Raises:
    SearchError naming `where` if the box is not 4 finite numbers, or (naming
    it and its clipped version) if it is empty once clipped: x1 >= x2 or
    y1 >= y2, or wholly outside the image.
  """
  try:
    b = [float(v) for v in box_xyxy]
  except (TypeError, ValueError) as e:
    raise SearchError(f"{where}: {box_xyxy!r} is not 4 numbers") from e
  if len(b) != 4 or not np.all(np.isfinite(b)):
    raise SearchError(f"{where}: {box_xyxy!r} is not 4 finite numbers "
                      "x1,y1,x2,y2")
  x1, x2 = (min(max(v, 0.0), float(width)) for v in b[0::2])
  y1, y2 = (min(max(v, 0.0), float(height)) for v in b[1::2])
  clipped = (x1, y1, x2, y2)
  if not (x2 > x1 and y2 > y1):
    raise SearchError(
        f"{where}: {format_box(b)} is empty inside the {width}x{height} "
        f"image (clipped to it: {format_box(clipped)}; need x1 < x2 and "
        "y1 < y2 in pixels)")
  if clipped != tuple(b):
    message = (f"{where}: {format_box(b)} reaches outside the "
               f"{width}x{height} image; clipped to {format_box(clipped)}")
    if warn is None:
      logging.warning("%s", message)
    else:
      warn(message)
  return clipped


def embed_query(predictor: index_lib.Predictor, image: np.ndarray,
                box_xyxy: Sequence[float]) -> np.ndarray:
  """Embedding of the person in `box_xyxy` of `image`.

  Args:
    predictor: the model.
    image: uint8[H, W, 3] RGB.
    box_xyxy: (x1, y1, x2, y2) pixels of `image`; clipped to it with a
      warning (`check_box`) if it reaches outside.
  Returns:
    f32[D] L2-normalized.
  """
  image = _check_image(image)
  box = check_box(box_xyxy, image.shape[1], image.shape[0])
  emb = np.asarray(predictor.embed_query(image, box), np.float32)
  if emb.shape != (predictor.embedding_dim,):
    raise SearchError(f"predictor returned a query embedding of shape "
                      f"{emb.shape}, expected ({predictor.embedding_dim},)")
  return emb


def embed_crop(predictor: index_lib.Predictor, crop: np.ndarray) -> np.ndarray:
  """Embedding of a person crop: the whole crop is the query box.

  Args:
    predictor: the model.
    crop: uint8[h, w, 3] RGB image of one person.
  Returns:
    f32[D] L2-normalized.
  """
  crop = _check_image(crop)
  return embed_query(predictor, crop, (0.0, 0.0, crop.shape[1], crop.shape[0]))


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
    raise SearchError(f"query image has shape {image.shape}, expected "
                      "[H, W, 3] RGB")
  return image
