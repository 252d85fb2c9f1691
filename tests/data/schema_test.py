"""Tests of the person-search example schema helpers."""

import io

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from ps_jax.data import schema


def _jpeg(h=10, w=12):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _yxyx(bbox):
  return np.array([bbox.ymin, bbox.xmin, bbox.ymax, bbox.xmax])


def test_xyxy_px_to_bbox_normalizes_and_clips():
  got = schema.xyxy_px_to_bbox([10, 20, 30, 60], width=40, height=80,
                               where="a.jpg")
  np.testing.assert_allclose(_yxyx(got), [20 / 80, 10 / 40, 60 / 80, 30 / 40])
  got = schema.xyxy_px_to_bbox([-5, -1, 50, 90], width=40, height=80,
                               where="a.jpg")
  np.testing.assert_allclose(_yxyx(got), [0, 0, 1, 1])


@pytest.mark.parametrize("box", [
    [10, 10, 10, 20],  # zero width
    [10, 20, 30, 5],  # y2 < y1
    [50, 10, 60, 20],  # entirely right of a 40 px wide image
])
def test_degenerate_box_raises_naming_where(box):
  with pytest.raises(schema.SchemaError, match="img_7.jpg person 0"):
    schema.xyxy_px_to_bbox(box, 40, 80, "img_7.jpg person 0")


def test_non_finite_box_raises():
  with pytest.raises(schema.SchemaError, match="non-finite"):
    schema.xyxy_px_to_bbox([0, 0, np.nan, 5], 40, 80, "b.jpg")


def test_persons_list_drops_and_counts_degenerate_boxes():
  boxes = np.array([[1, 1, 5, 9], [3, 3, 3, 8], [0, 0, 12, 10],
                    [20, 0, 30, 5]], np.float32)
  dropped = []
  out = schema.persons_list(boxes, [4, 5, -1, 6], 12, 10, "c.jpg", dropped)
  assert [p["pid"] for p in out] == [4, -1]
  assert len(dropped) == 2
  assert all("c.jpg" in d for d in dropped)
  assert "person 1" in dropped[0] and "person 3" in dropped[1]
  with pytest.raises(schema.SchemaError, match="c.jpg person 1"):
    schema.persons_list(boxes, [4, 5, -1, 6], 12, 10, "c.jpg")


def test_persons_list_rejects_bad_pids_and_counts():
  with pytest.raises(schema.SchemaError, match="d.jpg: person 0 has pid -2"):
    schema.persons_list([[0, 0, 4, 4]], [-2], 10, 10, "d.jpg")
  with pytest.raises(schema.SchemaError, match="d.jpg: 1 boxes but 2 pids"):
    schema.persons_list([[0, 0, 4, 4]], [1, 2], 10, 10, "d.jpg")


def test_scene_example_keeps_images_without_people():
  ex = schema.scene_example(b"jpeg", "e.jpg", 12, 10, np.zeros((0, 4)), [],
                            camera=2)
  assert ex == {"image": b"jpeg", "image_id": "e.jpg", "camera": 2,
                "persons": []}


def test_scene_example_errors_name_the_image():
  with pytest.raises(schema.SchemaError, match="f.jpg: image size 0x10"):
    schema.scene_example(b"", "f.jpg", 0, 10, np.zeros((0, 4)), [])
  with pytest.raises(schema.SchemaError, match="image_id"):
    schema.scene_example(b"", "", 10, 10, np.zeros((0, 4)), [])


def test_query_example_checks_pid_and_gallery():
  scene = schema.scene_example(b"x", "q.jpg", 20, 10, [[2, 2, 6, 9]], [7])
  ex = schema.query_example(scene, [2, 2, 6, 9], 7, 20, 10,
                            {5: ["a.jpg", "b.jpg"], 2: ["c.jpg"]})
  assert ex["query_pid"] == 7 and ex["gallery_5"] == ["a.jpg", "b.jpg"]
  assert schema.gallery_sizes_of(ex) == [2, 5]
  np.testing.assert_allclose(_yxyx(ex["query_bbox"]),
                             [0.2, 0.1, 0.9, 0.3])
  with pytest.raises(schema.SchemaError, match="query in q.jpg.*-1"):
    schema.query_example(scene, [2, 2, 6, 9], -1, 20, 10)
  with pytest.raises(schema.SchemaError, match="gallery_5 contains the query"):
    schema.query_example(scene, [2, 2, 6, 9], 7, 20, 10,
                         {5: ["a.jpg", "q.jpg"]})


def test_not_a_query_fills_neutral_values():
  scene = schema.scene_example(b"x", "s.jpg", 20, 10, [[2, 2, 6, 9]], [7])
  ex = schema.not_a_query(scene, (50, 100))
  assert ex["query_pid"] == schema.UNLABELED_PID
  assert ex["gallery_50"] == [] and ex["gallery_100"] == []
  np.testing.assert_array_equal(_yxyx(ex["query_bbox"]), np.zeros(4))
  assert "query_pid" not in scene  # the input is not modified


def test_features_round_trip_without_tensorflow():
  features = schema.query_features((3, 5))
  assert schema.gallery_sizes_of(features) == [3, 5]
  scene = schema.scene_example(_jpeg(), "r.jpg", 12, 10,
                               [[1, 2, 5, 9], [6, 0, 12, 10]], [3, -1],
                               camera=1)
  for ex in (schema.not_a_query(scene, (3, 5)),
             schema.query_example(scene, [1, 2, 5, 9], 3, 12, 10,
                                  {3: ["a", "b", "c"], 5: list("abcde")})):
    back = features.deserialize_example_np(
        features.serialize_example(features.encode_example(ex)))
    assert back["image"].shape == (10, 12, 3)
    boxes, pids = schema.decode_persons(back)
    np.testing.assert_allclose(
        boxes, [[0.2, 1 / 12, 0.9, 5 / 12], [0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(pids, [3, -1])
    assert back["camera"] == 1
  assert [g.decode() for g in back["gallery_5"]] == list("abcde")
  assert back["query_pid"] == 3


def test_decode_persons_handles_empty_and_list_forms():
  boxes, pids = schema.decode_persons({"persons": {"bbox": [], "pid": []}})
  assert boxes.shape == (0, 4) and boxes.dtype == np.float32
  assert pids.shape == (0,) and pids.dtype == np.int32
  boxes, pids = schema.decode_persons({"persons": {
      "bbox": [np.array([0.1, 0.2, 0.3, 0.4])], "pid": [np.int64(5)]}})
  np.testing.assert_allclose(boxes, [[0.1, 0.2, 0.3, 0.4]])
  np.testing.assert_array_equal(pids, [5])


def test_scene_features_have_no_query_keys():
  keys = set(schema.scene_features().keys())
  assert keys == {"image", "image_id", "camera", "persons"}
  assert isinstance(schema.scene_features()["persons"],
                    tfds.features.Sequence)
