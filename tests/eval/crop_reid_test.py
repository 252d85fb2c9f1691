"""Tests of the crop re-ID evaluation (ps_jax/eval/crop_reid.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from ps_jax.eval import baselines
from ps_jax.eval import crop_reid
from ps_jax.eval import report


def _slow_market(q_feats, q_pids, q_cams, g_feats, g_pids, g_cams, dist):
  """Per-query loop: sort the gallery by `dist`, drop junk (-1) and the
  query's identity in its camera, trapezoid AP and rank-1 (official)."""
  aps, top1 = [], []
  for q in range(len(q_pids)):
    d = np.array([dist(q_feats[q], g) for g in g_feats])
    order = np.argsort(d, kind="stable")
    keep = [i for i in order if g_pids[i] != -1 and not (
        g_pids[i] == q_pids[q] and g_cams[i] == q_cams[q])]
    good = np.array([g_pids[i] == q_pids[q] for i in keep])
    if not good.any():
      continue
    positions = np.flatnonzero(good)
    n = len(positions)
    ap = 0.0
    for i, r in enumerate(positions):
      old = i / r if r else 1.0
      ap += ((i + 1) / (r + 1) + old) / 2 / n
    aps.append(ap)
    top1.append(float(good[0]))
  return np.mean(aps), np.mean(top1), len(aps)


def _split(feats, pids, cams):
  return crop_reid.SplitEmbeddings(
      np.asarray(feats, np.float32), np.asarray(pids, np.int32),
      np.asarray(cams, np.int32), np.array([f"{i}" for i in range(len(pids))]))


@pytest.fixture(scope="module")
def splits():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(12, 8)) * rng.uniform(0.5, 3, size=(12, 1))
  g_pids = np.concatenate([np.repeat(np.arange(1, 12), 4), [0] * 6,
                           [-1] * 4])
  g_cams = rng.integers(0, 4, size=len(g_pids))
  g_feats = (centres[np.maximum(g_pids, 0)]
             + rng.normal(size=(len(g_pids), 8)) * 1.5)
  q_pids = np.arange(1, 12)
  q_cams = rng.integers(0, 4, size=11)
  q_feats = centres[q_pids] + rng.normal(size=(11, 8)) * 1.5
  return _split(q_feats, q_pids, q_cams), _split(g_feats, g_pids, g_cams)


def test_euclidean_ranking_against_a_slow_loop(splits):
  query, gallery = splits
  got = crop_reid.score(query, gallery, metrics=("euclidean",))
  want_map, want_top1, n = _slow_market(
      query.feats, query.pids, query.cams, gallery.feats, gallery.pids,
      gallery.cams, lambda a, b: np.sum((a - b) ** 2))
  row = got["reid/euclidean"]
  assert row["num_valid_queries"] == n
  np.testing.assert_allclose(row["mAP"], want_map, rtol=1e-6)
  np.testing.assert_allclose(row["rank1"], want_top1)
  lo, hi = row["mAP_ci95"]
  assert lo <= row["mAP"] <= hi


def test_cosine_ranking_against_a_slow_loop(splits):
  query, gallery = splits
  got = crop_reid.score(query, gallery, metrics=("cosine",))
  unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
  want_map, want_top1, _ = _slow_market(
      query.feats, query.pids, query.cams, gallery.feats, gallery.pids,
      gallery.cams, lambda a, b: -unit(a) @ unit(b))
  np.testing.assert_allclose(got["reid/cosine"]["mAP"], want_map, rtol=1e-6)
  np.testing.assert_allclose(got["reid/cosine"]["rank1"], want_top1)
  assert got["num_queries"] == 11 and got["num_gallery"] == 54


def test_the_two_metrics_differ_on_unnormalised_features(splits):
  query, gallery = splits
  got = crop_reid.score(query, gallery)
  assert got["reid/cosine"]["mAP"] != got["reid/euclidean"]["mAP"]
  table = report.format_table({**got, "dataset": "d", "model": "m"})
  assert "cosine" in table and "euclidean" in table
  assert "11 queries" in table


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def test_color_hist_split_is_the_histogram_of_the_whole_crop():
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for h, w in ((30, 12), (17, 9))]
  source = [{"image": _png(im), "image_id": f"c{i}.png", "pid": 5 + i,
             "camera": i} for i, im in enumerate(images)]
  got = crop_reid.color_hist_split(source, desc="test")
  for i, im in enumerate(images):
    want = baselines.color_histogram(
        im, np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32))[0]
    np.testing.assert_allclose(got.feats[i], want, rtol=1e-6)
  assert got.pids.tolist() == [5, 6] and got.cams.tolist() == [0, 1]
  assert got.image_ids.tolist() == ["c0.png", "c1.png"]


def test_a_scene_dataset_is_refused():
  class _Info:
    metadata = {"protocol": "cuhk"}
    splits = {"train": 1, "test": 1, "query": 1}

  class _Builder:
    name = "synthetic_person_search"
    info = _Info()

  with pytest.raises(crop_reid.EvalError, match="not a crop re-ID dataset"):
    crop_reid.check_dataset(_Builder())
