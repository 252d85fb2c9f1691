"""Tests for ps_jax/eval/protocols.py: options that change how a protocol
scores predictions, on hand-built splits."""

import numpy as np
import pytest

from ps_jax.eval import predict
from ps_jax.eval import protocols

BOX = [10.0, 10.0, 60.0, 110.0]


def _unit(cos: float) -> list[float]:
  return [cos, float(np.sqrt(1.0 - cos * cos))]


def _duplicated_split():
  """One query (pid 1, embedding (1, 0)) whose gallery list names g0 twice.

  g0 shows the target, detected with similarity 0.9; g1 shows pid 2,
  detected with similarity 0.95. Every detection scores 1 and covers its GT
  box exactly.
  """
  gallery = protocols.GalleryInfo(
      image_ids=["g0", "g1"],
      gt_boxes=[np.array([BOX], np.float32)] * 2,
      gt_pids=[np.array([1]), np.array([2])],
      cameras=np.zeros(2, np.int32))
  queries = protocols.QueryInfo(
      image_ids=["q"], pids=np.array([1]), cameras=np.zeros(1, np.int32),
      boxes=np.array([BOX], np.float32),
      galleries={3: [["g0", "g1", "g0"]]})
  gal = predict.SplitPredictions(
      image_ids=np.array(["g0", "g1"]), orig_hw=np.full((2, 2), 200),
      det_offsets=np.array([0, 1, 2]),
      boxes=np.array([BOX, BOX], np.float32),
      scores=np.ones(2, np.float32),
      embeddings=np.array([_unit(0.9), _unit(0.95)], np.float32),
      query_embeddings=np.zeros((2, 2), np.float32),
      query_from_detection=np.zeros(2, bool))
  qry = predict.SplitPredictions(
      image_ids=np.array(["q"]), orig_hw=np.full((1, 2), 200),
      det_offsets=np.zeros(2, np.int64), boxes=np.zeros((0, 4), np.float32),
      scores=np.zeros(0, np.float32), embeddings=np.zeros((0, 2), np.float32),
      query_embeddings=np.array([[1.0, 0.0]], np.float32),
      query_from_detection=np.zeros(1, bool))
  return gallery, queries, gal, qry


@pytest.mark.parametrize("duplicates, want_map", [
    # SeqNet: g0 ranked once (0.95 N, 0.9 P): AP 1/2, times the recall
    # 1/2 (g0 counts twice in the denominator).
    ("seqnet", 0.25),
    # AlignPS: g0 ranked twice (0.95 N, 0.9 P, 0.9 P): precision 2/3 at
    # full recall.
    ("repeat", 2 / 3),
])
def test_duplicated_gallery_entries_follow_the_option(duplicates, want_map):
  options = protocols.EvalOptions(det_thresh=0.5, gallery_sizes=(3,),
                                  duplicates=duplicates)
  res = protocols.run_protocols(options, "cuhk", *_duplicated_split(),
                                with_detection=False)
  assert res["search/gallery_3"]["mAP"] == pytest.approx(want_map)
  assert res["search/gallery_3"]["top1"] == 0.0


def test_default_duplicates_rule_is_seqnet_and_unknown_rules_fail():
  assert protocols.EvalOptions().duplicates == "seqnet"
  with pytest.raises(ValueError, match="eval.duplicates='twice'"):
    protocols.EvalOptions(duplicates="twice")


def test_cws_adds_confidence_weighted_rows():
  """With g1's detection at score 0.5, CWS ranks the target (0.9 x 1)
  above it (0.95 x 0.5): top-1, AP 1 x the recall 1/2 (SeqNet rule)."""
  gallery, queries, gal, qry = _duplicated_split()
  gal.scores[1] = 0.5
  options = protocols.EvalOptions(det_thresh=0.5, gallery_sizes=(3,),
                                  cws=True)
  res = protocols.run_protocols(options, "cuhk", gallery, queries, gal, qry,
                                with_detection=False)
  assert res["search/gallery_3"]["mAP"] == pytest.approx(0.25)
  assert res["search/gallery_3"]["top1"] == 0.0
  assert res["search/gallery_3+cws"]["mAP"] == pytest.approx(0.5)
  assert res["search/gallery_3+cws"]["top1"] == 1.0
  plain = protocols.run_protocols(protocols.EvalOptions(
      det_thresh=0.5, gallery_sizes=(3,)), "cuhk", gallery, queries, gal, qry,
                                  with_detection=False)
  assert "search/gallery_3+cws" not in plain


def test_hard_case_subsets_are_scored_on_their_queries_alone():
  """A second query, pid 2 with g1's own embedding, finds g1 first (AP 1);
  the first query scores 0.25 (the SeqNet case above). Each subset row is
  its queries' mean, the plain row both queries'."""
  gallery, queries, gal, qry = _duplicated_split()
  queries = protocols.QueryInfo(
      image_ids=["q", "q2"], pids=np.array([1, 2]),
      cameras=np.zeros(2, np.int32), boxes=np.array([BOX, BOX], np.float32),
      galleries={3: [["g0", "g1", "g0"], ["g0", "g1", "g0"]]},
      subsets={"occlusion": np.array([1]), "low_resolution": np.array([0]),
               "empty": np.array([], np.int64)})
  qry = predict.SplitPredictions(
      image_ids=np.array(["q", "q2"]), orig_hw=np.full((2, 2), 200),
      det_offsets=np.zeros(3, np.int64), boxes=np.zeros((0, 4), np.float32),
      scores=np.zeros(0, np.float32), embeddings=np.zeros((0, 2), np.float32),
      query_embeddings=np.array([[1.0, 0.0], _unit(0.95)], np.float32),
      query_from_detection=np.zeros(2, bool))
  res = protocols.run_protocols(
      protocols.EvalOptions(det_thresh=0.5, gallery_sizes=(3,), cws=True),
      "cuhk", gallery, queries, gal, qry, with_detection=False)
  assert res["search/gallery_3@occlusion"]["mAP"] == pytest.approx(1.0)
  assert res["search/gallery_3@low_resolution"]["mAP"] == pytest.approx(0.25)
  assert res["search/gallery_3"]["mAP"] == pytest.approx(0.625)
  assert res["search/gallery_3@occlusion+cws"]["mAP"] == pytest.approx(1.0)
  assert res["num_queries@occlusion"] == 1
  assert not any("@empty" in k for k in res)


def test_cbgm_rows_beside_the_plain_and_cws_ones():
  """The query image's other person (a detection away from the query box)
  is the context; here it matches nobody better than the query does, so
  the CBGM rows equal the plain ones, and the rows exist in every
  combination asked for."""
  gallery, queries, gal, qry = _duplicated_split()
  qry = predict.SplitPredictions(
      image_ids=np.array(["q"]), orig_hw=np.full((1, 2), 200),
      det_offsets=np.array([0, 1]),
      boxes=np.array([[100.0, 10.0, 150.0, 110.0]], np.float32),
      scores=np.ones(1, np.float32),
      embeddings=np.array([_unit(0.0)], np.float32),
      query_embeddings=np.array([[1.0, 0.0]], np.float32),
      query_from_detection=np.zeros(1, bool))
  res = protocols.run_protocols(
      protocols.EvalOptions(det_thresh=0.5, gallery_sizes=(3,), cws=True,
                            cbgm=True), "cuhk", gallery, queries, gal, qry,
      with_detection=False)
  for suffix in ("", "+cws", "+cbgm", "+cws+cbgm"):
    assert f"search/gallery_3{suffix}" in res
  assert res["search/gallery_3+cbgm"]["mAP"] == pytest.approx(
      res["search/gallery_3"]["mAP"])
  with pytest.raises(ValueError, match="eval.cbgm_k1=-1"):
    protocols.EvalOptions(cbgm_k1=-1)
