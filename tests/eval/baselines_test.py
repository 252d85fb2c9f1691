"""Tests for the colour-histogram baseline on hand-made images."""

import numpy as np
import pytest

from ps_jax.eval import baselines
from ps_jax.eval import protocols

GREY = (128, 128, 128)
RED, DARK_RED = (255, 0, 0), (200, 10, 10)
BLUE, GREEN = (0, 0, 255), (0, 200, 0)
# PIL HSV, 8 x 4 x 4 bins: red (0, 255, 255) -> bin (0, 3, 3) = 15; blue
# (170, 255, 255) -> hue bin 170 * 8 // 256 = 5 -> (5 * 4 + 3) * 4 + 3 = 95.
RED_BIN, BLUE_BIN = 15, 95


def _image(h, w, people):
  """uint8[h, w, 3] grey with solid rectangles: [(x1, y1, x2, y2, colour)]."""
  image = np.empty((h, w, 3), np.uint8)
  image[:] = GREY
  for x1, y1, x2, y2, colour in people:
    image[y1:y2, x1:x2] = colour
  return image


def test_histogram_values_by_hand():
  image = _image(8, 4, [(0, 0, 4, 6, RED), (0, 6, 4, 8, BLUE)])
  emb = baselines.color_histogram(image, np.array([[0, 0, 4, 8]]), stripes=1)
  want = np.zeros(128)
  want[RED_BIN], want[BLUE_BIN] = np.sqrt(0.75), np.sqrt(0.25)
  np.testing.assert_allclose(emb[0], want, rtol=1e-6)
  two = baselines.color_histogram(image, np.array([[0, 0, 4, 8]]))
  assert two.shape == (1, 256)
  # Upper band rows 0-3 all red; lower band rows 4-7 half red, half blue.
  want2 = np.zeros((2, 128))
  want2[0, RED_BIN] = 1.0
  want2[1, RED_BIN] = want2[1, BLUE_BIN] = np.sqrt(0.5)
  np.testing.assert_allclose(two[0], want2.reshape(-1) / np.sqrt(2),
                             rtol=1e-6)
  # Pixels whose centres lie in the box: columns 0-1 of a fractional box;
  # a sub-pixel box still covers one pixel.
  image = _image(2, 4, [(0, 0, 2, 2, RED), (2, 0, 4, 2, BLUE)])
  emb = baselines.color_histogram(
      image, np.array([[0.4, 0.0, 1.6, 2.0], [2.6, 1.1, 2.7, 1.2]]),
      stripes=1)
  assert emb[0, RED_BIN] == pytest.approx(1.0)
  assert emb[1, BLUE_BIN] == pytest.approx(1.0)
  assert baselines.color_histogram(image, np.zeros((0, 4))).shape == (0, 256)


def test_stripes_tell_top_from_bottom():
  a = _image(20, 10, [(0, 0, 10, 10, RED), (0, 10, 10, 20, BLUE)])
  b = _image(20, 10, [(0, 0, 10, 10, BLUE), (0, 10, 10, 20, RED)])
  box = np.array([[0, 0, 10, 20]])
  one = [baselines.color_histogram(x, box, stripes=1)[0] for x in (a, b)]
  two = [baselines.color_histogram(x, box)[0] for x in (a, b)]
  assert one[0] @ one[1] == pytest.approx(1.0)
  assert two[0] @ two[1] == pytest.approx(0.0)
  np.testing.assert_allclose(np.linalg.norm(two, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("box", [[5, 5, 5, 9], [0, 0, np.nan, 4]])
def test_bad_boxes(box):
  with pytest.raises(ValueError, match="box 0"):
    baselines.color_histogram(_image(10, 10, []), np.array([box]))


def _norm(box, h, w):
  x1, y1, x2, y2 = box
  return [y1 / h, x1 / w, y2 / h, x2 / w]


def _scene(image_id, people, h=60, w=80):
  image = _image(h, w, [p[:5] for p in people])
  return {"image": image, "image_id": image_id, "camera": 0,
          "persons": {"bbox": np.array([_norm(p[:4], h, w) for p in people],
                                       np.float32).reshape(-1, 4),
                      "pid": np.array([p[5] for p in people], np.int32)}}


def test_red_query_finds_the_red_person():
  gallery = [
      _scene("g0", [(5, 5, 25, 55, BLUE, 1), (40, 5, 60, 55, RED, 0)]),
      _scene("g1", [(5, 5, 25, 55, GREEN, 2), (40, 5, 60, 55, BLUE, 1)]),
  ]
  queries = []
  for image_id, person in (("q0", (30, 8, 48, 50, DARK_RED, 0)),
                           ("q1", (10, 10, 30, 50, BLUE, 1))):
    q = _scene(image_id, [person])
    q.update(query_bbox=np.array(_norm(person[:4], 60, 80), np.float32),
             query_pid=person[5], gallery_2=["g0", "g1"])
    queries.append(q)
  g_info = protocols.read_gallery(gallery)
  q_info = protocols.read_queries(queries)
  np.testing.assert_allclose(q_info.boxes[0], [30, 8, 48, 50], rtol=1e-5)
  gal = baselines.color_hist_predictions(gallery)
  qry = baselines.color_hist_predictions(queries, query_boxes=q_info.boxes)
  # GT boxes as detections with score 1.
  np.testing.assert_array_equal(gal.det_offsets, [0, 2, 4])
  np.testing.assert_allclose(gal.dets(0)[:, :4], g_info.gt_boxes[0],
                             rtol=1e-5)
  assert np.all(gal.scores == 1.0)
  sims = qry.query_embeddings[0] @ gal.embeddings.T
  assert int(np.argmax(sims)) == 1  # g0's red person
  assert sims[1] == pytest.approx(1.0) and sims[0] == pytest.approx(0.0)
  res = protocols.run_protocols(protocols.EvalOptions(0.5, (2,)), "cuhk",
                                g_info, q_info, gal, qry,
                                with_detection=False)
  # q1 (blue) finds pid 1 in both images, ahead of red and green.
  assert res["search/gallery_2"] == {"mAP": 1.0, "top1": 1.0, "top5": 1.0,
                                     "top10": 1.0, "mAP_ci95": [1.0, 1.0],
                                     "top1_ci95": [1.0, 1.0]}
  assert not any(k.startswith("detection") for k in res)
