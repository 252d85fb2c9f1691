"""Tests for ps_jax.models.person_search (AlignPS and its post-processing)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import person_search as ps
from ps_jax.ops import points as points_lib

TINY = dict(depth=18, width_multiplier=1 / 8, neck_channels=16)
H, W = 64, 96


@pytest.fixture(scope="module")
def tiny():
  """A tiny AlignPS, its variables and its train / eval outputs."""
  model = ps.AlignPS(**TINY)
  images = jnp.asarray(
      np.random.default_rng(0).normal(size=(2, H, W, 3)), jnp.float32)
  init = jax.jit(functools.partial(model.init, train=True))
  variables = init(jax.random.key(0, impl="rbg"), images)
  apply = jax.jit(model.apply, static_argnames="train")
  return dict(model=model, images=images, init=init, variables=variables,
              train=apply(variables, images, train=True),
              eval=apply(variables, images, train=False))


def test_train_outputs_have_all_levels(tiny):
  out = tiny["train"]
  sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
  p = sum(h * w for h, w in sizes)
  assert out["cls_logits"].shape == (2, p, 1)
  assert out["box_ltrb"].shape == (2, p, 4)
  assert out["ctr_logits"].shape == (2, p, 1)
  assert out["reid_emb"].shape == (2, p, 16)
  for k in ("cls_logits", "box_ltrb", "ctr_logits", "reid_emb"):
    assert out[k].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out[k]))), k
  pts, strides, levels = points_lib.make_points(sizes, (8, 16, 32, 64, 128))
  np.testing.assert_array_equal(out["points"], pts)
  np.testing.assert_array_equal(out["strides"], strides)
  np.testing.assert_array_equal(out["levels"], levels)
  assert np.all(np.asarray(out["box_ltrb"]) >= 0)  # relu, stride units
  # Fresh head: foreground prior 0.01 (conv_cls bias) plus a small N(0, 0.01)
  # kernel on group-normalized features: logits near log(0.01 / 0.99).
  np.testing.assert_allclose(np.asarray(out["cls_logits"]), np.log(1 / 99),
                             atol=0.5)


def test_eval_outputs_are_p3_only_and_match_training_p3(tiny):
  out, train = tiny["eval"], tiny["train"]
  p3 = 8 * 12
  assert out["cls_logits"].shape == (2, p3, 1)
  assert out["reid_emb"].shape == (2, p3, 16)
  assert np.all(np.asarray(out["levels"]) == 0)
  assert np.all(np.asarray(out["strides"]) == 8)
  for k in ("cls_logits", "box_ltrb", "ctr_logits", "reid_emb"):
    np.testing.assert_allclose(np.asarray(out[k]),
                               np.asarray(train[k][:, :p3]), rtol=1e-5,
                               atol=1e-5, err_msg=k)
  # AlignPS "sub": the P3 embedding has zero spatial mean per image.
  np.testing.assert_allclose(np.asarray(out["reid_emb"]).mean(axis=1), 0.0,
                             atol=1e-4)


def test_init_is_deterministic_given_the_key(tiny):
  again = tiny["init"](jax.random.key(0, impl="rbg"), tiny["images"])
  other = tiny["init"](jax.random.key(1, impl="rbg"), tiny["images"])
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a),
                                                  np.asarray(b)),
                      tiny["variables"], again)
  assert all(jax.tree.leaves(same))
  k0 = tiny["variables"]["params"]["neck"]["fpn_3"]["kernel"]
  k1 = other["params"]["neck"]["fpn_3"]["kernel"]
  assert not np.allclose(np.asarray(k0), np.asarray(k1))


def test_trainable_mask_marks_frozen_stem_res2_and_all_frozen_bn(tiny):
  model, params = tiny["model"], tiny["variables"]["params"]
  mask = model.trainable_mask(params)
  flat = {jax.tree_util.keystr(p): m
          for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert not flat["['backbone']['conv1']['kernel']"]
  assert not flat["['backbone']['layer1_1']['conv2']['kernel']"]
  assert not flat["['backbone']['layer3_0']['downsample_bn']['scale']"]
  assert flat["['backbone']['layer2_0']['conv1']['kernel']"]
  for name, m in flat.items():
    if not name.startswith("['backbone']"):
      assert m, name  # neck and head are trained
  # The optimizer's predicate is the same, with or without a "params" root.
  pred = ps.AlignPS(**TINY).is_frozen
  for path in (("backbone", "bn1", "scale"), ("params", "backbone", "bn1",
                                               "bias")):
    assert pred(path) and model.is_frozen(path)
  assert not pred(("head", "scale_0"))


def _alignps_r50_count(dcn_stages=(False, False, False, False)):
  """Parameter count of AlignPS R50 from the architecture, by hand."""
  c = 256
  backbone = 25_557_032 - (2048 * 1000 + 1000)  # torchvision R50 minus fc
  widths, blocks = (64, 128, 256, 512), (3, 4, 6, 3)
  for use, w, n in zip(dcn_stages, widths, blocks):
    if use:  # DCNv2 offset branch: 3x3 conv to 27 channels, with bias
      backbone += n * (9 * w * 27 + 27)
  dcn_v1 = lambda cin: 9 * cin * c + 9 * cin * 18 + 18  # no bias
  neck = sum(dcn_v1(cin) for cin in (512, 1024, 2048))  # laterals
  neck += sum(dcn_v1(cin) for cin in (3 * c, 2 * c, c))  # concat outputs
  neck += 2 * (9 * c * c + c)  # P6, P7
  tower = 3 * (9 * c * c + c) + (9 * c * c + c + 9 * c * 27 + 27)
  tower += 4 * 2 * c  # GroupNorm scale + bias
  head = 2 * tower + (9 * c + 1) + (9 * c * 4 + 4) + (9 * c + 1) + 5
  return backbone + neck + head


@pytest.mark.parametrize("plus", [False, True])
def test_alignps_r50_parameter_count(plus):
  dcn = (False, True, True, True) if plus else (False,) * 4
  model = ps.AlignPS(**dict(stage_with_dcn=dcn))
  shapes = jax.eval_shape(functools.partial(model.init, train=True),
                          jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n == _alignps_r50_count(dcn)
  assert set(shapes) == {"params", "frozen_bn"}


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = ps.AlignPS(**dict(TINY, dtype="bfloat16"))
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(functools.partial(model.init, train=True),
                     jax.random.key(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
  out = jax.eval_shape(functools.partial(model.apply, train=False), v, x)
  for k in ("cls_logits", "box_ltrb", "ctr_logits", "reid_emb"):
    assert out[k].dtype == jnp.float32


def test_bad_strides_are_named():
  with pytest.raises(ValueError, match="strides"):
    model = ps.AlignPS(**dict(TINY, strides=(8, 16, 24)))
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


# ---------------------------------------------------------------- predict --

def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_iou(a, b):
  lt = np.maximum(a[:2], b[:2])
  rb = np.minimum(a[2:], b[2:])
  inter = np.prod(np.maximum(rb - lt, 0))
  union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
  return inter / union if union > 0 else 0.0


def _np_predict(out, image_hw, scale, max_dets, k, thr, iou_thr):
  """mmdet `_get_bboxes_single` + `multiclass_nms_reid`, one image at a time."""
  res = []
  for b in range(out["cls_logits"].shape[0]):
    cls = _np_sigmoid(out["cls_logits"][b, :, 0])
    ctr = _np_sigmoid(out["ctr_logits"][b, :, 0])
    order = np.argsort(-(cls * ctr), kind="stable")[:k]
    pts, st = out["points"][order], out["strides"][order]
    d = out["box_ltrb"][b, order] * st[:, None]
    h, w = image_hw[b]
    boxes = np.stack([np.clip(pts[:, 0] - d[:, 0], 0, w),
                      np.clip(pts[:, 1] - d[:, 1], 0, h),
                      np.clip(pts[:, 0] + d[:, 2], 0, w),
                      np.clip(pts[:, 1] + d[:, 3], 0, h)], -1)
    cand = [i for i in range(len(order)) if cls[order[i]] > thr]
    kept = []
    for i in cand:  # already by descending score
      if all(_np_iou(boxes[i], boxes[j]) <= iou_thr for j in kept):
        kept.append(i)
    kept = kept[:max_dets]
    emb = out["reid_emb"][b, order[kept]]
    emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True),
                           1e-12)
    res.append(dict(boxes=boxes[kept] / scale[b],
                    scores=(cls * ctr)[order[kept]], embeddings=emb,
                    point_index=order[kept]))
  return res


def _hand_outputs(seed, b=3, d=5, empty_last=True):
  sizes, strides = [(6, 8), (3, 4)], (8, 16)
  pts, st, lv = points_lib.make_points(sizes, strides)
  p = pts.shape[0]
  rng = np.random.default_rng(seed)
  cls = rng.normal(-1.0, 2.0, size=(b, p, 1))
  if empty_last:  # the last image has nothing above the threshold
    cls[-1] = -8.0
  return dict(cls_logits=cls.astype(np.float32),
              ctr_logits=rng.normal(0, 1.5, size=(b, p, 1)).astype(
                  np.float32),
              box_ltrb=rng.uniform(0.2, 3.0, size=(b, p, 4)).astype(
                  np.float32),
              reid_emb=rng.normal(size=(b, p, d)).astype(np.float32),
              points=np.asarray(pts), strides=np.asarray(st),
              levels=np.asarray(lv))


@pytest.mark.parametrize("seed", [0, 1])
def test_predict_detections_matches_numpy_reference(seed):
  out = _hand_outputs(seed)
  image_hw = np.array([[40, 60], [48, 64], [30, 50]], np.int32)
  scale = np.array([0.5, 1.0, 2.0], np.float32)
  kw = dict(max_dets=7, pre_nms_top_k=25, score_threshold=0.3, nms_iou=0.5)
  # The top-k must bind: some points above the threshold fall outside it.
  above = (_np_sigmoid(out["cls_logits"][..., 0]) > 0.3).sum(axis=1)
  assert above[0] > 25 and above[1] > 25 and above[2] == 0
  want = _np_predict(out, image_hw, scale, kw["max_dets"],
                     kw["pre_nms_top_k"], kw["score_threshold"],
                     kw["nms_iou"])
  jout = jax.tree.map(jnp.asarray, out)
  predict = jax.jit(functools.partial(ps.predict_detections, **kw))
  got = predict(jout, jnp.asarray(image_hw), jnp.asarray(scale))
  eager = ps.predict_detections(jout, jnp.asarray(image_hw),
                                jnp.asarray(scale), **kw)
  for k in got:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(eager[k]),
                               rtol=1e-6, atol=1e-6, err_msg=k)
  assert got["boxes"].shape == (3, 7, 4)
  assert got["embeddings"].shape == (3, 7, 5)
  for b, w in enumerate(want):
    n = len(w["scores"])
    valid = np.asarray(got["valid"][b])
    assert valid.sum() == n and np.all(valid[:n])
    np.testing.assert_allclose(np.asarray(got["boxes"][b, :n]), w["boxes"],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got["scores"][b, :n]),
                               w["scores"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["embeddings"][b, :n]),
                               w["embeddings"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got["point_index"][b, :n]),
                                  w["point_index"])
    for k in ("boxes", "scores", "embeddings"):
      assert np.all(np.asarray(got[k][b, n:]) == 0), k
  assert want[0]["scores"].size > 0 and want[2]["scores"].size == 0
  # Boxes stay inside the original image: valid region / scale.
  assert np.all(np.asarray(got["boxes"][0, ..., 2]) <= 60 / 0.5 + 1e-4)


def test_predict_detections_clips_to_orig_hw():
  out = jax.tree.map(jnp.asarray, _hand_outputs(2, b=1, empty_last=False))
  kw = dict(max_dets=5, pre_nms_top_k=100, score_threshold=0.05)
  # scale slightly off: 48 / 0.5 = 96 > the original 95 pixels.
  image_hw, scale = jnp.asarray([[48, 64]]), jnp.asarray([0.5])
  predict = jax.jit(functools.partial(ps.predict_detections, **kw))
  free = predict(out, image_hw, scale)
  clipped = predict(out, image_hw, scale, orig_hw=jnp.asarray([[95, 127]]))
  assert float(free["boxes"][..., 3].max()) > 95
  assert float(clipped["boxes"][..., 3].max()) <= 95
  assert float(clipped["boxes"][..., 2].max()) <= 127


def test_predict_on_the_model_outputs(tiny):
  pred = jax.jit(functools.partial(
      ps.predict_detections, max_dets=10, score_threshold=0.0))(
          tiny["eval"], jnp.asarray([[64, 96], [50, 70]]),
          jnp.asarray([1.0, 0.5]))
  assert pred["boxes"].shape == (2, 10, 4)
  assert pred["embeddings"].shape == (2, 10, 16)
  emb = np.asarray(pred["embeddings"])[np.asarray(pred["valid"])]
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
  assert np.all(np.diff(np.asarray(pred["scores"][0])) <= 0)


def _query_inputs():
  pts, st, lv = points_lib.make_points([(4, 6), (2, 3)], (8, 16))
  p = pts.shape[0]
  # Embedding of point i in image b: (i, 1, b), so the pick is readable.
  emb = np.stack([np.stack([np.arange(p), np.ones(p), np.full(p, b)], -1)
                  for b in range(2)]).astype(np.float32)
  outputs = dict(reid_emb=jnp.asarray(emb), points=pts, strides=st,
                 levels=lv)
  det_emb = np.eye(4, 3, dtype=np.float32)[None].repeat(2, 0)
  det_emb[:, 3] = [0, 0.6, 0.8]
  pred = dict(
      boxes=jnp.asarray([[[12, 12, 30, 50], [10, 10, 30, 50],
                          [0, 0, 11, 11], [0, 0, 0, 0]],
                         [[100, 100, 120, 120], [0, 0, 5, 5],
                          [0, 0, 0, 0], [0, 0, 0, 0]]], jnp.float32),
      embeddings=jnp.asarray(det_emb),
      valid=jnp.asarray([[True, False, True, False],
                         [True, True, False, False]]))
  # Image 0 overlaps detection 0 (detection 1 is better but invalid);
  # image 1 overlaps no valid detection. Scale 0.5: image 1's query centre
  # (50, 49) is (25, 24.5) in network pixels, nearest P3 point (28, 28) =
  # cell (3, 3) = index 21, although the P4 point (24, 24) is nearer.
  queries = jnp.asarray([[10, 10, 30, 50], [40, 39, 60, 59]], jnp.float32)
  return pred, outputs, queries, jnp.asarray([0.5, 0.5])


def test_query_embedding_best_iou_with_centre_fallback():
  pred, outputs, queries, scale = _query_inputs()
  q = jax.jit(ps.query_embedding, static_argnames="mode")(
      pred, queries, outputs, scale)
  np.testing.assert_array_equal(q["from_detection"], [True, False])
  assert int(q["det_index"][0]) == 0
  # +1-pixel IoU: (19 * 39) / (21 * 41).
  np.testing.assert_allclose(float(q["iou"][0]), 741 / 861, rtol=1e-6)
  np.testing.assert_allclose(q["embedding"][0], [1, 0, 0], atol=1e-7)
  want = np.array([21, 1, 1], np.float32)
  np.testing.assert_allclose(q["embedding"][1], want / np.linalg.norm(want),
                             rtol=1e-6)
  assert float(q["iou"][1]) == 0.0


def test_query_embedding_centre_mode():
  pred, outputs, queries, scale = _query_inputs()
  q = ps.query_embedding(pred, queries, outputs, scale, mode="center")
  assert not np.any(np.asarray(q["from_detection"]))
  # Image 0: centre (20, 30) * 0.5 = (10, 15): P3 cell (row 1, col 1) = 7.
  for b, idx in enumerate((7, 21)):
    want = np.array([idx, 1, b], np.float32)
    np.testing.assert_allclose(q["embedding"][b],
                               want / np.linalg.norm(want), rtol=1e-6)
  with pytest.raises(ValueError, match="mode"):
    ps.query_embedding(pred, queries, outputs, scale, mode="roi")


def test_iou_plus_one_matches_alignps_convention():
  boxes = jnp.asarray([[50, 50, 90, 100], [130, 160, 250, 280]], jnp.float32)
  gt = jnp.asarray([70, 80, 120, 150], jnp.float32)
  iou = np.asarray(ps.iou_plus_one(boxes, gt))
  inter = (90 - 70 + 1) * (100 - 80 + 1)
  union = 41 * 51 + 51 * 71 - inter
  np.testing.assert_allclose(iou, [inter / union, 0.0], rtol=1e-6)
