"""Tests of ps_jax.search.query against a slow numpy reference."""

import json
import logging
import re

import numpy as np
import pytest

from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib

SearchError = index_lib.SearchError


def reference_ranking(emb, det, img, q, top_k, thr, cws, one_per_image,
                      excluded=()):
  """Python loop: score every detection, sort by (-score, row)."""
  qn = q / np.sqrt(np.sum(q.astype(np.float64) ** 2))
  rows = []
  for m in range(len(det)):
    if det[m] < thr or img[m] in excluded:
      continue
    sim = float(np.dot(emb[m].astype(np.float64), qn))
    rows.append((-(sim * det[m] if cws else sim), m, sim))
  rows.sort()
  out, seen = [], set()
  for neg_score, m, sim in rows:
    if one_per_image and img[m] in seen:
      continue
    seen.add(img[m])
    out.append((m, sim, -neg_score))
  return out[:top_k] if top_k is not None else out


def random_gallery(rng, m, d, n_images):
  emb = rng.normal(size=(m, d)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
  det = rng.uniform(0, 1, m).astype(np.float32)
  img = np.sort(rng.integers(0, n_images, m)).astype(np.int32)
  return emb, det, img


@pytest.mark.parametrize("m,d,top_k", [(0, 4, 5), (1, 3, 10), (7, 5, 3),
                                       (50, 16, 10), (200, 8, None)])
@pytest.mark.parametrize("cws", [False, True])
@pytest.mark.parametrize("one_per_image", [False, True])
@pytest.mark.parametrize("thr", [0.0, 0.4])
def test_ranking_matches_reference(m, d, top_k, cws, one_per_image, thr):
  rng = np.random.default_rng([m, d, cws, one_per_image, int(thr * 10)])
  emb, det, img = random_gallery(rng, m, d, max(1, m // 4))
  q = rng.normal(size=d).astype(np.float32) * 3.0  # not normalized
  excluded = [1] if m > 4 else []
  order, sim, score = query_lib.rank_detections(
      emb, det, img, q, top_k=top_k, det_threshold=thr, cws=cws,
      one_per_image=one_per_image, excluded_images=excluded)
  ref = reference_ranking(emb, det, img, q, top_k, thr, cws, one_per_image,
                          excluded)
  assert order.dtype == np.int32 and sim.dtype == score.dtype == np.float32
  assert order.tolist() == [r[0] for r in ref]
  np.testing.assert_allclose(sim, [r[1] for r in ref], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(score, [r[2] for r in ref], rtol=1e-5, atol=1e-6)
  if one_per_image:
    assert len(set(img[order].tolist())) == len(order)
  assert np.all(np.diff(score) <= 0)


def test_argsort_reference_and_ties():
  rng = np.random.default_rng(1)
  emb, det, img = random_gallery(rng, 30, 6, 5)
  q = emb[7] + 0.1 * rng.normal(size=6).astype(np.float32)
  order, sim, _ = query_lib.rank_detections(emb, det, img, q, top_k=None)
  expected = np.argsort(-(emb @ (q / np.linalg.norm(q))), kind="stable")
  np.testing.assert_array_equal(order, expected)
  assert order[0] == 7
  # Identical embeddings tie: lower row first, deterministically.
  tied = np.repeat(emb[:1], 4, axis=0)
  order, _, _ = query_lib.rank_detections(
      tied, np.ones(4, np.float32), np.arange(4, dtype=np.int32), emb[0])
  assert order.tolist() == [0, 1, 2, 3]


def test_cws_hand_computed():
  # sims 0.9 / 0.6 with det scores 0.5 / 1.0: similarity ranks row 0 first,
  # cws ranks row 1 first (0.6 > 0.45), as in the PRW paper.
  q = np.array([1.0, 0.0], np.float32)
  emb = np.array([[0.9, np.sqrt(1 - 0.81)], [0.6, 0.8]], np.float32)
  det = np.array([0.5, 1.0], np.float32)
  img = np.array([0, 1], np.int32)
  order, _, score = query_lib.rank_detections(emb, det, img, q)
  assert order.tolist() == [0, 1]
  np.testing.assert_allclose(score, [0.9, 0.6], rtol=1e-6)
  order, sim, score = query_lib.rank_detections(emb, det, img, q, cws=True)
  assert order.tolist() == [1, 0]
  np.testing.assert_allclose(score, [0.6, 0.45], rtol=1e-6)
  np.testing.assert_allclose(sim, [0.6, 0.9], rtol=1e-6)


def make_index(rng, n_images=4, per_image=3, d=6):
  index = index_lib.GalleryIndex(d, {"workdir": "w"})
  emb, det, _ = random_gallery(rng, n_images * per_image, d, n_images)
  for i in range(n_images):
    index.images.append(index_lib.ImageEntry(
        name=f"/g/{i}.jpg", width=100, height=80, offset=i * per_image,
        count=per_image, path=f"/g/{i}.jpg", mtime_ns=0, size_bytes=1))
  index.embeddings, index.scores = emb, det
  index.boxes = rng.uniform(0, 50, (n_images * per_image, 4)).astype(
      np.float32)
  index.image_of_det = np.repeat(np.arange(n_images), per_image).astype(
      np.int32)
  return index


def test_search_returns_hits_of_the_index():
  rng = np.random.default_rng(2)
  index = make_index(rng)
  q = index.embeddings[4]
  hits = query_lib.search(index, q, top_k=3)
  assert [h.rank for h in hits] == [1, 2, 3]
  best = hits[0]
  assert (best.detection, best.image_index, best.image) == (4, 1, "/g/1.jpg")
  assert best.box == tuple(float(v) for v in index.boxes[4])
  assert best.det_score == pytest.approx(float(index.scores[4]))
  assert best.similarity == pytest.approx(1.0, abs=1e-6)
  assert best.score == best.similarity
  json.dumps([h.to_dict() for h in hits])
  # Excluding the query's own image removes all its detections.
  hits = query_lib.search(index, q, top_k=None, exclude_images=["/g/1.jpg"])
  assert len(hits) == 9 and all(h.image_index != 1 for h in hits)
  hits = query_lib.search(index, q, top_k=None, one_per_image=True)
  assert sorted(h.image_index for h in hits) == [0, 1, 2, 3]
  hits = query_lib.search(index, q, top_k=None, det_threshold=1.01)
  assert hits == []


def test_search_errors():
  index = make_index(np.random.default_rng(3))
  with pytest.raises(SearchError, match="shape \\(4,\\).*6-dim"):
    query_lib.search(index, np.ones(4, np.float32))
  with pytest.raises(SearchError, match="norm 0.0"):
    query_lib.search(index, np.zeros(6, np.float32))
  with pytest.raises(SearchError, match="norm nan"):
    query_lib.search(index, np.full(6, np.nan, np.float32))
  with pytest.raises(SearchError, match="top_k"):
    query_lib.search(index, np.ones(6, np.float32), top_k=0)


class RecordingPredictor:
  embedding_dim = 3

  def __init__(self):
    self.calls = []

  def embed_query(self, image, box_xyxy):
    self.calls.append((image.shape, tuple(box_xyxy)))
    return np.array([1.0, 0.0, 0.0], np.float32)


def test_embed_query_and_crop_boxes():
  pred = RecordingPredictor()
  image = np.zeros((40, 60, 3), np.uint8)
  query_lib.embed_query(pred, image, (-5, 10, 30, 50))
  assert pred.calls[-1] == ((40, 60, 3), (0.0, 10.0, 30.0, 40.0))  # clipped
  query_lib.embed_crop(pred, np.zeros((30, 12, 3), np.uint8))
  assert pred.calls[-1] == ((30, 12, 3), (0.0, 0.0, 12.0, 30.0))
  with pytest.raises(SearchError, match="empty inside the 60x40 image"):
    query_lib.embed_query(pred, image, (30, 10, 20, 20))
  with pytest.raises(SearchError, match=re.escape(
      "[70, 10, 80, 20] is empty inside the 60x40 image (clipped to it: "
      "[60, 10, 60, 20]")):
    query_lib.embed_query(pred, image, (70, 10, 80, 20))
  with pytest.raises(SearchError, match="4 finite numbers"):
    query_lib.embed_query(pred, image, (1, 2, 3))
  with pytest.raises(SearchError, match="not 4 numbers"):
    query_lib.embed_query(pred, image, ("a", 2, 3, 4))
  with pytest.raises(SearchError, match=r"\[H, W, 3\]"):
    query_lib.embed_crop(pred, np.zeros((30, 12), np.uint8))
  pred.embedding_dim = 4
  with pytest.raises(SearchError, match="shape \\(3,\\), expected \\(4,\\)"):
    query_lib.embed_query(pred, image, (0, 0, 10, 10))


def test_box_partly_outside_is_clipped_with_a_warning(caplog):
  warnings = []
  box = query_lib.check_box((-5.5, 10, 30, 50), 60, 40, "--box for q.jpg",
                            warn=warnings.append)
  assert box == (0.0, 10.0, 30.0, 40.0)
  assert warnings == ["--box for q.jpg: [-5.5, 10, 30, 50] reaches outside "
                      "the 60x40 image; clipped to [0, 10, 30, 40]"]
  # Inside the image: no warning. Without `warn`: absl's logging.warning.
  query_lib.check_box((0, 0, 60, 40), 60, 40, warn=warnings.append)
  assert len(warnings) == 1
  with caplog.at_level(logging.WARNING):
    query_lib.embed_query(RecordingPredictor(), np.zeros((40, 60, 3), np.uint8),
                          (50, 30, 70, 45))
  assert ("query box: [50, 30, 70, 45] reaches outside the 60x40 image; "
          "clipped to [50, 30, 60, 40]") in caplog.text
  with pytest.raises(SearchError, match=re.escape(
      "q: [-9, -9, 0, 5] is empty inside the 60x40 image (clipped to it: "
      "[0, 0, 0, 5]")):
    query_lib.check_box((-9, -9, 0, 5), 60, 40, "q", warn=warnings.append)
