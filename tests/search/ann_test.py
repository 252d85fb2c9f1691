"""Tests of ps_jax.search.ann (FAISS) against exact search."""

import json
import sys

import numpy as np
from PIL import Image
import pytest

from ps_jax.search import ann as ann_lib
from ps_jax.search import cli
from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib

pytest.importorskip("faiss")

SearchError = index_lib.SearchError
FILTERS = [
    {},
    {"det_threshold": 0.5},
    {"det_threshold": 0.97},  # 3 % eligible: FAISS must filter, not starve
    {"excluded_images": [0, 5, 17]},
    {"one_per_image": True},
    {"cws": True},
    {"cws": True, "one_per_image": True, "det_threshold": 0.3,
     "excluded_images": [2]},
]


def clustered(seed=0, m=3000, d=32, n_ids=60, per_image=6):
  """Embeddings f32[m, d] in n_ids noisy clusters, scores, image rows."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_ids, d)).astype(np.float32)
  ident = rng.integers(0, n_ids, m)
  emb = centres[ident] + 0.6 * rng.standard_normal((m, d)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  det = rng.uniform(0, 1, m).astype(np.float32)
  img = (np.arange(m) // per_image).astype(np.int32)
  queries = centres[rng.integers(0, n_ids, 20)] + 0.6 * rng.standard_normal(
      (20, d)).astype(np.float32)
  return emb, det, img, queries


@pytest.fixture(scope="module")
def data():
  return clustered()


@pytest.fixture(scope="module")
def flat(data):
  ann = ann_lib.AnnIndex.build(data[0], encoding="Flat", nlist=16)
  ann.nprobe = ann.nlist  # every list: exhaustive
  return ann


@pytest.fixture(scope="module")
def sq8(data):
  return ann_lib.AnnIndex.build(data[0])


@pytest.mark.parametrize("kw", FILTERS)
def test_flat_index_probing_every_list_equals_exact_search(data, flat, kw):
  emb, det, img, queries = data
  for q in queries:
    want = query_lib.rank_detections(emb, det, img, q, top_k=10, **kw)
    got = flat.rank_detections(emb, det, img, q, top_k=10, **kw)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], atol=1e-6)
    assert len(got[0]) == 10


@pytest.mark.parametrize("kw", FILTERS)
def test_sq8_recall_and_exact_scores_with_filters(data, sq8, kw):
  emb, det, img, queries = data
  assert sq8.meta["factory"] == "IVF64,SQ8" and sq8.nprobe == 16
  found = 0
  for q in queries:
    want = query_lib.rank_detections(emb, det, img, q, top_k=10, **kw)[0]
    rows, sim, score = sq8.rank_detections(emb, det, img, q, top_k=10, **kw)
    found += len(set(rows.tolist()) & set(want.tolist()))
    # Every hit passes the filters, with its exact similarity and score.
    assert np.all(det[rows] >= kw.get("det_threshold", 0.0))
    assert not set(img[rows].tolist()) & set(kw.get("excluded_images", []))
    if kw.get("one_per_image"):
      assert len(set(img[rows].tolist())) == len(rows)
    exact = emb[rows] @ (q / np.linalg.norm(q))
    np.testing.assert_allclose(sim, exact, atol=1e-6)
    np.testing.assert_allclose(
        score, exact * det[rows] if kw.get("cws") else exact, atol=1e-6)
    assert np.all(np.diff(score) <= 0)
  assert found / (10 * len(queries)) >= 0.95


def test_hnsw_quantizer_probing_every_list_equals_exact_search(data):
  emb, det, img, queries = data
  ann = ann_lib.AnnIndex.build(emb, nlist=16, nprobe=16, quantizer="hnsw",
                               encoding="Flat")
  assert ann.meta["factory"] == "IVF16_HNSW32,Flat"
  for q in queries[:5]:
    want = query_lib.rank_detections(emb, det, img, q, top_k=10, cws=True)
    got = ann.rank_detections(emb, det, img, q, top_k=10, cws=True)
    np.testing.assert_array_equal(got[0], want[0])


def test_cws_ranks_a_larger_pool_by_det_score_x_similarity():
  # The 300 most similar detections are unsure (det 0.01); cws ranks the
  # sure ones of the next cluster first, beyond 4 x top_k candidates.
  rng = np.random.default_rng(1)
  a = rng.standard_normal(16).astype(np.float32)
  b = a + 0.8 * rng.standard_normal(16).astype(np.float32)
  emb = np.concatenate([a + 0.1 * rng.standard_normal((300, 16)),
                        b + 0.1 * rng.standard_normal((300, 16))])
  emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
  det = np.r_[np.full(300, 0.01), np.full(300, 0.9)].astype(np.float32)
  img = np.arange(600, dtype=np.int32)
  ann = ann_lib.AnnIndex.build(emb, nlist=2, encoding="Flat", nprobe=2)
  for cws in (False, True):
    want = query_lib.rank_detections(emb, det, img, a, top_k=5, cws=cws)
    got = ann.rank_detections(emb, det, img, a, top_k=5, cws=cws)
    np.testing.assert_array_equal(got[0], want[0])
  assert got[0].min() >= 300


def test_no_rerank_uses_quantized_scores_and_top_k_none_is_exact(data, sq8):
  emb, det, img, queries = data
  rows, sim, _ = sq8.rank_detections(emb, det, img, queries[0], top_k=10,
                                     rerank=False)
  exact = emb[rows] @ (queries[0] / np.linalg.norm(queries[0]))
  assert np.abs(sim - exact).max() < 0.05
  want = query_lib.rank_detections(emb, det, img, queries[0], top_k=None)
  got = sq8.rank_detections(emb, det, img, queries[0], top_k=None)
  np.testing.assert_array_equal(got[0], want[0])


def gallery(emb, det, img):
  index = index_lib.GalleryIndex(emb.shape[1], {"fingerprint": "f" * 32})
  counts = np.bincount(img)
  offsets = np.r_[0, np.cumsum(counts)[:-1]]
  index.images = [index_lib.ImageEntry(
      name=f"/photos/{i}.jpg", width=64, height=128, offset=int(o),
      count=int(c), path=f"/photos/{i}.jpg", mtime_ns=1, size_bytes=1)
                  for i, (o, c) in enumerate(zip(offsets, counts))]
  index.boxes = np.tile(np.float32([0, 0, 10, 20]), (len(det), 1))
  index.scores, index.embeddings, index.image_of_det = det, emb, img
  return index


def test_saved_next_to_the_gallery_and_loaded_back(data, tmp_path):
  emb, det, img, queries = data
  index = gallery(emb, det, img)
  index.save(tmp_path)
  built = ann_lib.build_for_index(index, save_to=tmp_path, nprobe=8)
  faiss_files = sorted(p.name for p in tmp_path.glob("ann.*"))
  assert len(faiss_files) == 2 and "ann.json" in faiss_files
  loaded_index = index_lib.GalleryIndex.load(tmp_path, mmap=True)
  ann = ann_lib.load_for_index(tmp_path, loaded_index)
  assert ann.nprobe == 8 and ann.meta["gallery"]["generation"] == 1
  assert ann.describe()["factory"] == built.meta["factory"]
  for q in queries[:5]:
    hits = query_lib.search(loaded_index, q, top_k=5, ann=ann,
                            exclude_images=["/photos/3.jpg"])
    again = built.rank_detections(emb, det, img, q, top_k=5,
                                  excluded_images=[3])
    assert [h.detection for h in hits] == again[0].tolist()
    assert hits[0].image == f"/photos/{img[hits[0].detection]}.jpg"
  # A second save replaces the FAISS file; a gallery save keeps it.
  ann.save(tmp_path)
  assert len(list(tmp_path.glob("ann.*.faiss"))) == 1
  info = ann_lib.info(tmp_path)
  assert info["vectors"] == len(det) and info["bytes"] > 0


def test_stale_index_is_refused_and_refresh_rebuilds_it(data, tmp_path):
  emb, det, img, queries = data
  index = gallery(emb[:2000], det[:2000], img[:2000])
  index.save(tmp_path)
  assert ann_lib.refresh(tmp_path, index) is None  # none built: none made
  first = ann_lib.refresh(tmp_path, index, build=True, nlist=8)
  assert first["built"] and first["nlist"] == 8
  assert not ann_lib.refresh(tmp_path, index)["built"]  # fresh: kept

  # The gallery grows and is saved: a new generation, more detections.
  grown = gallery(emb, det, img)
  grown.save(tmp_path)
  with pytest.raises(ann_lib.StaleAnnError,
                     match=r"ann.json: stale.*num_detections 2000 -> 3000"
                     r".*generation 1 -> 2.*--ann"):
    ann_lib.load_for_index(tmp_path, grown)
  # Other embeddings in the same number of rows, never saved.
  moved = gallery(np.roll(emb[:2000], 1, axis=0), det[:2000], img[:2000])
  with pytest.raises(ann_lib.StaleAnnError, match="the embeddings differ"):
    ann_lib.AnnIndex.load(tmp_path).check_fresh(moved.embeddings)
  # A query in "auto" mode warns and searches exactly; "ann" refuses.
  warnings = []
  assert ann_lib.for_query(tmp_path, grown, "auto",
                           warn=warnings.append) is None
  assert "stale" in warnings[0] and "searching exactly" in warnings[0]
  with pytest.raises(ann_lib.StaleAnnError):
    ann_lib.for_query(tmp_path, grown, "ann")
  again = ann_lib.refresh(tmp_path, grown)  # recorded options: nlist 8
  assert again["built"] and again["nlist"] == 8 and again["vectors"] == 3000
  assert ann_lib.for_query(tmp_path, grown, "ann", nprobe=3).nprobe == 3


def test_missing_faiss_says_how_to_install_it(data, tmp_path, monkeypatch):
  emb, det, img, _ = data
  index = gallery(emb, det, img)
  index.save(tmp_path)
  ann_lib.build_for_index(index, save_to=tmp_path)
  monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss fails
  with pytest.raises(SearchError, match=r"pip install 'ps_jax\[faiss\]'"):
    ann_lib.AnnIndex.build(emb)
  with pytest.raises(SearchError, match=r"needs FAISS.*ps_jax\[faiss\]"):
    ann_lib.for_query(tmp_path, index, "ann")
  warnings = []
  assert ann_lib.for_query(tmp_path, index, warn=warnings.append) is None
  assert "ps_jax[faiss]" in warnings[0]
  assert ann_lib.info(tmp_path)["vectors"] == len(det)  # needs no FAISS


def test_bad_options_and_files(data, tmp_path):
  emb = data[0]
  with pytest.raises(SearchError, match=r"nlist must be in \[1, 3000\]"):
    ann_lib.AnnIndex.build(emb, nlist=5000)
  with pytest.raises(SearchError, match="quantizer must be one of"):
    ann_lib.AnnIndex.build(emb, quantizer="ivf")
  with pytest.raises(SearchError, match="at least one detection"):
    ann_lib.AnnIndex.build(emb[:0])
  with pytest.raises(SearchError, match=r"no approximate index \(ann.json\)"
                     r".*--ann"):
    ann_lib.AnnIndex.load(tmp_path)
  (tmp_path / "ann.json").write_text("{}")
  with pytest.raises(SearchError, match="ann.json: not a"):
    ann_lib.AnnIndex.load(tmp_path)
  assert [ann_lib.auto_nlist(m) for m in (10, 3000, 10**5, 10**6, 10**7)] == [
      1, 64, 256, 1024, 4096]


class ColourPredictor:
  """Two people per image (halves), embedded by their mean colour."""

  embedding_dim = 4
  fingerprint = "c" * 32

  def _embed(self, image, box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    v = np.zeros(4, np.float32)
    v[:3] = image[y1:y2, x1:x2].reshape(-1, 3).mean(0) - 127.5
    v[3] = 1.0
    return v / np.linalg.norm(v)

  def detect(self, images):
    out = []
    for im in images:
      h, w = im.shape[:2]
      boxes = np.array([[0, 0, w // 2, h], [w // 2, 0, w, h]], np.float32)
      out.append({"boxes": boxes, "scores": np.array([0.9, 0.7], np.float32),
                  "embeddings": np.stack([self._embed(im, b) for b in boxes])})
    return out

  def embed_query(self, image, box_xyxy):
    return self._embed(image, box_xyxy)


def test_ps_search_index_ann_query_and_append(tmp_path, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for i in range(30):
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), np.uint8).repeat(
        20, 0).repeat(24, 1)).save(photos / f"{i:02d}.png")
  model = ColourPredictor()

  def run(*argv):
    code = cli.main([str(a) for a in argv],
                    predictor_factory=lambda workdir, step: model)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out) if out else None, err

  idx = tmp_path / "idx"
  out, _ = run("index", "--workdir", tmp_path, "--images", photos, "--out",
               idx, "--ann", "--ann-nlist", "2")
  assert out["ann"]["built"] and out["ann"]["factory"] == "IVF2,SQ8"
  crop = tmp_path / "crop.png"
  Image.open(photos / "07.png").crop((0, 0, 12, 20)).save(crop)
  hits = {}
  for mode in ("auto", "ann", "exact"):
    out, _ = run("query", "--index", idx, "--crop", crop, "--search", mode,
                 "--top-k", "3")
    hits[mode] = [(h["image"], h["similarity"]) for h in out["hits"]]
    assert out["search"]["method"] == (
        "exact" if mode == "exact" else "approximate")
  assert hits["auto"] == hits["ann"]
  assert [h[0] for h in hits["ann"]] == [h[0] for h in hits["exact"]]
  assert [h[1] for h in hits["ann"]] == pytest.approx(
      [h[1] for h in hits["exact"]], abs=1e-6)
  assert hits["ann"][0][0] == str(photos / "07.png")
  out, _ = run("info", "--index", idx)
  assert out["ann"]["vectors"] == 60

  # Appending images rebuilds the stale FAISS index with its options.
  extra = tmp_path / "extra"
  extra.mkdir()
  Image.open(photos / "07.png").save(extra / "copy.png")
  out, _ = run("index", "--workdir", tmp_path, "--images", extra, "--out",
               idx, "--append")
  assert out["ann"]["built"] and out["ann"]["vectors"] == 62
  assert out["ann"]["nlist"] == 2
  out, _ = run("query", "--index", idx, "--crop", crop, "--search", "ann",
               "--nprobe", "1", "--one-per-image")
  assert out["search"]["nprobe"] == 1
  assert {h["image"] for h in out["hits"][:2]} == {
      str(photos / "07.png"), str(extra / "copy.png")}
  # --ann alone on an existing index: rebuild it, no model needed.
  out = cli.main(["index", "--workdir", str(tmp_path / "none"), "--out",
                  str(idx), "--ann", "--ann-nlist", "4"],
                 predictor_factory=None)
  result = json.loads(capsys.readouterr().out)
  assert out == 0 and result["ann"]["nlist"] == 4 and result["ann"]["built"]
