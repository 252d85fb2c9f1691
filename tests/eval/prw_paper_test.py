"""The PRW paper's cross-camera protocol on hand-built cases."""

import numpy as np
import pytest

from ps_jax.eval import prw_paper
from ps_jax.eval import reid


def test_label_detections_by_hand():
  gt = np.array([[0, 0, 10, 20], [50, 0, 60, 20]], np.float32)
  pids = np.array([5, -2])
  det = np.array([
      [2, 0, 12, 20],    # IoU 160 / 240 = 0.667 with pid 5: a duplicate
      [0, 0, 10, 20],    # IoU 1 with pid 5: keeps it
      [5, 0, 15, 20],    # IoU 100 / 300 = 0.333: junk (bad localisation)
      [7, 0, 17, 20],    # IoU 60 / 340 = 0.176: background
      [50, 0, 60, 20],   # the unidentified person (-2)
      [200, 0, 210, 20],  # nothing there
  ], np.float32)
  labels = prw_paper.label_detections(det, gt, pids)
  np.testing.assert_array_equal(labels, [-1, 5, -1, 0, -2, 0])
  # Alone, the shifted box keeps the pid; the thresholds move the classes.
  np.testing.assert_array_equal(
      prw_paper.label_detections(det[:1], gt, pids), [5])
  np.testing.assert_array_equal(
      prw_paper.label_detections(det[2:4], gt, pids, pos_iou=0.3,
                                 junk_iou=0.1), [5, -1])
  assert prw_paper.label_detections(det, gt[:0], pids[:0]).tolist() == [0] * 6
  assert prw_paper.label_detections(det[:0], gt, pids).shape == (0,)
  with pytest.raises(ValueError, match="gt_pids"):
    prw_paper.label_detections(det, gt, pids[:1])


def _unit(sim):
  """A 2-d unit vector whose dot product with [1, 0] is `sim`."""
  return [sim, np.sqrt(1 - sim ** 2)]


def _frames():
  """Query pid 1 from camera 0. Camera 1 sees pids 1 and 2 (both detected),
  camera 2 sees pid 1 (missed; one background detection), camera 0 sees pid
  1 again (detected: same camera, junk)."""
  box = lambda x: [x, 0, x + 10, 20]  # noqa: E731
  frames = [
      dict(camera=1, gt_boxes=[box(0), box(50)], gt_pids=[1, 2],
           boxes=[box(0), box(50)], scores=[1.0, 0.5],
           embeddings=[_unit(0.6), _unit(0.9)]),
      dict(camera=2, gt_boxes=[box(0)], gt_pids=[1],
           boxes=[box(100)], scores=[0.9], embeddings=[_unit(0.8)]),
      dict(camera=0, gt_boxes=[box(0)], gt_pids=[1],
           boxes=[box(0)], scores=[1.0], embeddings=[_unit(1.0)]),
  ]
  return frames


def _gallery():
  return prw_paper.build_gallery(_frames())


QUERY = dict(query_feats=np.array([[1.0, 0.0], [1.0, 0.0]]),
             query_pids=np.array([1, 9]), query_cams=np.array([0, 0]))


def test_gallery_and_good_counts():
  g = _gallery()
  np.testing.assert_array_equal(g.labels, [1, 2, 0, 1])
  np.testing.assert_array_equal(g.cams, [1, 1, 2, 0])
  np.testing.assert_array_equal(g.frame, [0, 0, 1, 2])
  assert g.num_frames == 3
  # pid 1 in cameras 1 and 2 (the camera-0 box is the query's camera).
  np.testing.assert_array_equal(
      prw_paper.num_good(QUERY["query_pids"], QUERY["query_cams"], g), [2, 0])


def test_evaluate_by_hand():
  g = _gallery()
  # Ranking without the junk (same camera): 0.9 (pid 2), 0.8 (background),
  # 0.6 (pid 1) -> the one found good entry at rank 3 of 2 to find:
  # AP = 1/2 * (1/3 + 0/2) / 2 = 1/12 (compute_AP's trapezoid).
  r = prw_paper.evaluate(**QUERY, gallery=g)
  assert r.num_valid_queries == 1  # pid 9 has no ground truth elsewhere
  assert r.mAP == pytest.approx(1 / 12)
  assert r.cmc == {1: 0.0, 20: 1.0}
  # CWS: 0.6 x 1.0, 0.9 x 0.5, 0.8 x 0.9 -> the good one at rank 2:
  # AP = 1/2 * (1/2 + 0/1) / 2 = 1/8.
  r = prw_paper.evaluate(**QUERY, gallery=g, cws=True)
  assert r.mAP == pytest.approx(1 / 8)
  assert r.first_good.tolist() == [1, -1]
  # Only the confident detections: the good one first, the missed person
  # still halves the AP: 1/2 * (1 + 1) / 2.
  r = prw_paper.evaluate(**QUERY, gallery=g, score_threshold=0.95)
  assert r.mAP == pytest.approx(0.5)
  assert r.cmc[1] == 1.0
  g.scores[1] = 1.5  # CWS needs scores in [0, 1]
  with pytest.raises(ValueError, match="cws needs detection scores"):
    prw_paper.evaluate(**QUERY, gallery=g, cws=True)


def test_num_good_below_the_found_entries_is_an_error():
  with pytest.raises(ValueError, match="num_good"):
    reid.eval_reid_market(np.eye(2), [1, 2], [0, 0], np.eye(2), [1, 1],
                          [1, 1], num_good=[1, 0])


def test_threshold_curve_and_operating_points():
  g = _gallery()
  curve = prw_paper.threshold_curve(**QUERY, gallery=g, num_levels=30)
  # Four detections, three distinct scores (1.0 twice, 0.9, 0.5): three
  # levels.
  np.testing.assert_allclose(curve.thresholds, [1.0, 0.9, 0.5])
  np.testing.assert_allclose(curve.detections_per_image, [2 / 3, 1.0, 4 / 3])
  for t, m in zip(curve.thresholds, curve.mAP):
    assert m == pytest.approx(prw_paper.evaluate(
        **QUERY, gallery=g, score_threshold=float(t)).mAP)
  # At 0.9 the background detection joins (rank 1): AP = 1/2 * (1/2) / 2.
  np.testing.assert_allclose(curve.mAP, [0.5, 1 / 8, 1 / 12])
  points = prw_paper.at_detections_per_image(curve, (0.5, 7 / 6, 3))
  assert list(points) == [7 / 6]  # 0.5 and 3 lie outside the curve
  assert points[7 / 6]["mAP"] == pytest.approx((1 / 8 + 1 / 12) / 2)
  assert points[7 / 6]["rank20"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="num_levels"):
    prw_paper.threshold_curve(**QUERY, gallery=g, num_levels=0)


def test_run_gives_the_rows_and_curves_of_the_hand_built_case():
  frames = _frames() + [dict(camera=3, gt_boxes=[], gt_pids=[], boxes=[],
                             scores=[], embeddings=np.zeros((0, 2)))]
  out = prw_paper.run(frames, **QUERY, cws=True, num_levels=30)
  assert out["prw_paper/num_queries"] == 1
  # The empty frame counts in the detections per image: 4 / 4 frames.
  row = out["prw_paper/all_detections"]
  assert row["mAP"] == pytest.approx(1 / 12) and row["rank1"] == 0.0
  assert row["detections_per_image"] == pytest.approx(1.0)
  assert out["prw_paper/all_detections+cws"]["mAP"] == pytest.approx(1 / 8)
  curve = out["prw_paper/curve"]
  np.testing.assert_allclose(curve["mAP"], [0.5, 1 / 8, 1 / 12])
  np.testing.assert_allclose(curve["detections_per_image"], [0.5, 0.75, 1.0])
  assert set(curve) == {"thresholds", "detections_per_image", "mAP", "rank1",
                        "rank20"}
  assert "prw_paper/curve+cws" in out
  # 3, 5 and 10 detections per image lie beyond this detector's 1.
  assert not any("_per_image" in k for k in out)
