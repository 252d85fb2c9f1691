"""Tests for the prediction side: predict step, whole splits, cache, Predictor.

The tiny synthetic dataset and an untrained tiny AlignPS checkpoint come from
conftest.py. A stand-in model with one hand-placed detection checks the map
back to original pixels exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax import mesh as mesh_lib
from ps_jax.data import augment
from ps_jax.data import pipeline
from ps_jax import experiment
from ps_jax.eval import cache
from ps_jax.eval import predict
from ps_jax.models import person_search
from ps_jax.ops import points as points_lib
from ps_jax.systems import alignps


@pytest.fixture(scope="module")
def test_split(tiny_experiment):
  source = pipeline.data_source(tiny_experiment.builder, "test")
  decoded = [augment.decode(source[r], r) for r in range(len(source))]
  # Query box of record r: its first person, or (0, 0, 0, 0) without one.
  qboxes = np.array([ex["boxes_xyxy"][0] if len(ex["boxes_xyxy"])
                     else np.zeros(4) for ex in decoded], np.float32)
  return source, decoded, qboxes


@pytest.fixture(scope="module")
def split_predictions(tiny_experiment, tiny_variables, test_split):
  """The test split predicted on an 8-device and on a 1-device mesh."""
  source, _, qboxes = test_split
  exp = tiny_experiment
  step = predict.make_predict_step(exp.system)
  out = {}
  for n in (8, 1):
    mesh = mesh_lib.make_mesh(n)
    variables = jax.device_put(tiny_variables, mesh_lib.replicated(mesh))
    out[n] = predict.predict_split(step, variables, source, exp.data,
                                   mesh, query_boxes=qboxes)
  return out


def test_predict_split_records_in_order_with_valid_detections(
    split_predictions, test_split):
  source, decoded, _ = test_split
  pred = split_predictions[8]
  pred.check("pred")
  num = len(source)
  assert len(pred) == num == 40
  assert list(pred.image_ids) == [ex["image_id"] for ex in decoded]
  np.testing.assert_array_equal(pred.orig_hw,
                                [ex["image"].shape[:2] for ex in decoded])
  counts = np.diff(pred.det_offsets)
  # score_threshold 0 keeps candidates up to max_dets per image.
  assert counts.min() > 0 and counts.max() <= 100
  for r in range(num):
    dets = pred.dets(r)
    h, w = pred.orig_hw[r]
    assert np.all(dets[:, 0] >= 0) and np.all(dets[:, 1] >= 0)
    assert np.all(dets[:, 2] <= w) and np.all(dets[:, 3] <= h)
    assert np.all(dets[:, 2] >= dets[:, 0]) and np.all(dets[:, 3] >= dets[:, 1])
    assert np.all(np.diff(dets[:, 4]) <= 0) and np.all(dets[:, 4] >= 0)
    assert pred.feats(r).shape == (counts[r], 16)
  np.testing.assert_allclose(np.linalg.norm(pred.embeddings, axis=1), 1.0,
                             rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(pred.query_embeddings, axis=1),
                             1.0, rtol=1e-5)


def test_predict_split_is_the_same_on_one_and_eight_devices(
    split_predictions):
  a, b = split_predictions[8], split_predictions[1]
  np.testing.assert_array_equal(a.image_ids, b.image_ids)
  np.testing.assert_array_equal(a.orig_hw, b.orig_hw)
  np.testing.assert_array_equal(a.det_offsets, b.det_offsets)
  np.testing.assert_array_equal(a.query_from_detection,
                                b.query_from_detection)
  for name in ("boxes", "scores", "embeddings", "query_embeddings"):
    np.testing.assert_allclose(getattr(a, name), getattr(b, name),
                               rtol=1e-5, atol=1e-5, err_msg=name)


def test_query_embedding_of_a_detected_box_is_that_detection(
    split_predictions, tiny_experiment, tiny_variables, test_split):
  source, _, _ = test_split
  exp = tiny_experiment
  pred = split_predictions[8]
  # Query each record with its own top detection: best_iou picks it (IoU 1).
  boxes = np.stack([pred.dets(r)[0, :4] for r in range(len(pred))])
  step = predict.make_predict_step(exp.system)
  mesh = mesh_lib.make_mesh()
  again = predict.predict_split(
      step, jax.device_put(tiny_variables, mesh_lib.replicated(mesh)),
      source, exp.data, mesh, query_boxes=boxes)
  assert np.all(again.query_from_detection)
  np.testing.assert_allclose(again.query_embeddings,
                             pred.embeddings[pred.det_offsets[:-1]],
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"query_boxes.*\(40, 4\)"):
    predict.predict_split(step, tiny_variables, source, exp.data,
                          mesh, query_boxes=boxes[:3])


def test_save_load_round_trip(split_predictions, tmp_path):
  pred = split_predictions[8]
  path = tmp_path / "cache" / "gallery.npz"
  cache.save_predictions(pred, path)
  assert not list(path.parent.glob("*.tmp*"))
  back = cache.load_predictions(path)
  for field in dataclasses.fields(pred):
    got, want = getattr(back, field.name), getattr(pred, field.name)
    assert got.dtype == want.dtype, field.name
    np.testing.assert_array_equal(got, want, err_msg=field.name)
  bad = tmp_path / "bad.npz"
  np.savez(bad, image_ids=np.array(["a"]))
  with pytest.raises(ValueError, match="not a ps_jax prediction cache"):
    cache.load_predictions(bad)
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="junk.npz.*delete"):
    cache.load_predictions(tmp_path / "junk.npz")


def test_predictor_matches_predict_split(tiny_workdir, split_predictions,
                                         test_split):
  _, decoded, _ = test_split
  pred = split_predictions[8]
  exp, variables, _ = experiment.restore(tiny_workdir)
  predictor = predict.Predictor(exp.system, variables, exp.data)
  assert predictor.embedding_dim == 16
  records = (0, 7)
  found = predictor.detect([decoded[r]["image"] for r in records])
  for r, got in zip(records, found):
    np.testing.assert_allclose(got["boxes"], pred.dets(r)[:, :4], rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(got["scores"], pred.dets(r)[:, 4], rtol=1e-5)
    np.testing.assert_allclose(got["embeddings"], pred.feats(r), rtol=1e-5,
                               atol=1e-5)
  # The untrained model's boxes are small: query with the largest one.
  boxes = found[1]["boxes"]
  i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
  assert boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]
  q = predictor.embed_query(decoded[7]["image"], boxes[i])
  np.testing.assert_allclose(q, found[1]["embeddings"][i], rtol=1e-6,
                             atol=1e-6)
  with pytest.raises(ValueError, match="empty"):
    predictor.embed_query(decoded[7]["image"], [5, 5, 5, 9])
  with pytest.raises(ValueError, match="RGB"):
    predictor.detect([np.zeros((8, 8), np.uint8)])


def test_portrait_buckets_predict_each_image_on_its_orientations_canvas(
    tiny_workdir, test_split):
  # With portrait buckets, a landscape image is predicted on the (96, 128)
  # canvas and a portrait one on (128, 96): the same as predicting every
  # image on that one canvas without the option, and the same through the
  # Predictor of ps_jax.search.
  source, decoded, qboxes = test_split
  exp, variables, _ = experiment.restore(tiny_workdir)
  mesh = mesh_lib.make_mesh(1)
  variables = jax.device_put(variables, mesh_lib.replicated(mesh))
  step = predict.make_predict_step(exp.system)
  run = lambda data: predict.predict_split(  # noqa: E731
      step, variables, source, data, mesh, query_boxes=qboxes)
  base = dataclasses.replace(exp.data, eval_batch_size=4)
  both = run(dataclasses.replace(base, test_scale=(96, 128),
                                 portrait_buckets=True))
  land = run(dataclasses.replace(base, test_scale=(96, 128)))
  port = run(dataclasses.replace(base, test_scale=(128, 96)))
  portrait = np.array([ex["image"].shape[0] > ex["image"].shape[1]
                       for ex in decoded])
  assert 0 < portrait.sum() < len(decoded)
  assert list(both.image_ids) == [ex["image_id"] for ex in decoded]
  for r in range(len(decoded)):
    want = port if portrait[r] else land
    np.testing.assert_allclose(both.dets(r), want.dets(r), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(both.query_embeddings[r],
                               want.query_embeddings[r], rtol=1e-5, atol=1e-5)
  predictor = predict.Predictor(
      exp.system, variables,
      dataclasses.replace(base, test_scale=(96, 128), portrait_buckets=True))
  r = int(np.flatnonzero(portrait)[0])
  got = predictor.detect([decoded[r]["image"]])[0]
  np.testing.assert_allclose(got["scores"], both.dets(r)[:, 4], rtol=1e-5)


# --------------------------------------------- exact map to original pixels --

@dataclasses.dataclass(frozen=True)
class _OnePointModel:
  """A stand-in for AlignPS: only P3 point `point` scores, box `ltrb`."""
  point: int = 9
  ltrb: tuple = (1.0, 1.0, 5.0, 6.0)  # stride units
  norm_on_bbox: bool = True
  needs_image_hw: bool = False  # AlignPS: whether apply() takes image_hw

  def apply(self, variables, images, train=False):
    del train
    b, h, w, _ = images.shape
    pts, st, lv = points_lib.make_points([(h // 8, w // 8)], (8,))
    p = pts.shape[0]
    cls = jnp.full((b, p, 1), -20.0).at[:, self.point, 0].set(20.0)
    return dict(cls_logits=cls, ctr_logits=jnp.zeros((b, p, 1)) + 20.0,
                box_ltrb=jnp.broadcast_to(jnp.asarray(self.ltrb), (b, p, 4)),
                reid_emb=jnp.broadcast_to(variables["emb"], (b, p, 3)),
                points=pts, strides=st, levels=lv)


def test_boxes_map_back_to_original_pixels_per_axis():
  # A 97 x 131 image fits the 64 x 64 bucket as 47 x 64 (augment.fit_scale):
  # x scales by 64/131, y by 47/97 != 64/131.
  s, (h, w) = augment.fit_scale((97, 131), (64, 64))
  assert (h, w) == (47, 64)
  system = alignps.AlignPSSystem(
      model=_OnePointModel(), loss_options=None,
      predict_options=alignps.AlignPSPredict(
          max_dets=3, pre_nms_top_k=100, score_threshold=0.5, nms_iou=0.5,
          query_mode="center"))
  step = predict.make_predict_step(system)
  batch = {"image": np.zeros((2, 64, 64, 3), np.float32),
           "image_hw": np.array([[h, w], [0, 0]], np.int32),
           "orig_hw": np.array([[97, 131], [0, 0]], np.int32),
           "scale": np.array([s, 1.0], np.float32),
           "index": np.array([0, -1], np.int32),
           "example_valid": np.array([True, False])}
  emb = np.array([3.0, 0.0, 4.0], np.float32)
  # Every point has embedding `emb` here; the centre read-out's choice of
  # point under per-axis factors is checked by the next test.
  query = np.array([[8.0, 8.0, 100.0, 90.0], [0, 0, 0, 0]], np.float32)
  out = jax.device_get(step({"emb": emb}, batch, query))
  assert out["valid"].tolist() == [[True, False, False], [False] * 3]
  # Point 9 = cell (1, 1) = (12, 12); box (12 - 8, 12 - 8, 12 + 40, 12 + 48)
  # clipped to the 47 x 64 image, then x * 131/64 and y * 97/47.
  want = np.array([4 * 131 / 64, 4 * 97 / 47, 52 * 131 / 64, 97.0])
  np.testing.assert_allclose(out["boxes"][0, 0], want, rtol=1e-6)
  # The single factor `scale` would be off by 0.07 px in y1.
  assert abs(4 / s - want[1]) > 0.05
  np.testing.assert_allclose(out["embeddings"][0, 0], emb / 5, rtol=1e-6)
  np.testing.assert_allclose(out["query_embedding"][0], emb / 5, rtol=1e-6)
  assert np.all(np.isfinite(out["boxes"])) and not out["valid"][1].any()
  np.testing.assert_array_equal(out["index"], [0, -1])


def test_center_embedding_per_axis_scale():
  pts, st, lv = points_lib.make_points([(4, 6)], (8,))
  p = pts.shape[0]
  outputs = dict(reid_emb=jnp.asarray(np.eye(p, dtype=np.float32)[None]),
                 points=pts, strides=st, levels=lv)
  box = jnp.asarray([[20.0, 40.0, 40.0, 60.0]])  # centre (30, 50)
  _, iso = person_search.center_embedding(outputs, box, jnp.asarray([0.5]))
  _, same = person_search.center_embedding(outputs, box,
                                           jnp.asarray([[0.5, 0.5]]))
  assert int(iso[0]) == int(same[0])
  # (y, x) factors (0.25, 1.0): centre (30, 12.5) -> point (28, 12) = 9.
  _, axis = person_search.center_embedding(outputs, box,
                                           jnp.asarray([[0.25, 1.0]]))
  d2 = np.sum((np.asarray(pts) - np.array([30.0, 12.5])) ** 2, axis=1)
  assert int(axis[0]) == int(np.argmin(d2)) == 9
  with pytest.raises(ValueError, match=r"scale must be f32\[1\] or"):
    person_search.center_embedding(outputs, box, jnp.ones((1, 3)))
