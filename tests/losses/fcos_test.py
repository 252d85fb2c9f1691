"""Tests for ps_jax.losses.fcos against slow float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.losses import fcos


# ----------------------------------------------------------------------------
# numpy references (float64, explicit loops where the math is per element)


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_focal(logits, targets, alpha, gamma):
  out = np.zeros(logits.shape, np.float64)
  for idx in np.ndindex(logits.shape):
    x, t = float(logits[idx]), float(targets[idx])
    p = _np_sigmoid(x)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
      loss *= alpha * t + (1 - alpha) * (1 - t)
    out[idx] = loss
  return out


def np_bce(logits, targets):
  p = _np_sigmoid(logits.astype(np.float64))
  return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


def _np_area(b):
  return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def np_iou_giou(a, b, eps):
  """IoU and GIoU of one pair, union/enclosure + eps (mmdet/torchvision)."""
  a = [float(v) for v in a]
  b = [float(v) for v in b]
  iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
  ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  inter = iw * ih
  union = _np_area(a) + _np_area(b) - inter
  ew = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0)
  eh = max(max(a[3], b[3]) - min(a[1], b[1]), 0.0)
  enc = ew * eh
  iou = inter / (union + eps)
  return iou, iou - (enc - union) / (enc + eps)


def np_fcos_losses(cls_logits, box_ltrb, ctr_logits, pos, tgt_ltrb, ctr_tgt,
                   points, alpha, gamma, normalizer):
  """mmdet FCOSHead.loss as AlignPS uses it, gathering positives in loops."""
  b, p = cls_logits.shape
  targets = pos.astype(np.float64)
  focal_sum = np_focal(cls_logits, targets, alpha, gamma).sum()
  pos_list = [(i, j) for i in range(b) for j in range(p) if pos[i, j]]
  num_pos = len(pos_list)
  avg = num_pos + b if normalizer == "num_pos_plus_imgs" else max(num_pos, 1)
  loss_cls = focal_sum / avg
  if num_pos == 0:
    return loss_cls, 0.0, 0.0, 0
  box_num, weight_sum, ctr_sum = 0.0, 0.0, 0.0
  for i, j in pos_list:
    x, y = points[j]
    lp, tp, rp, bp = box_ltrb[i, j]
    lt, tt, rt, bt = tgt_ltrb[i, j]
    pred = [x - lp, y - tp, x + rp, y + bp]
    tgt = [x - lt, y - tt, x + rt, y + bt]
    _, giou = np_iou_giou(pred, tgt, fcos.GIOU_LOSS_EPS)
    w = float(ctr_tgt[i, j])
    box_num += w * (1 - giou)
    weight_sum += w
    ctr_sum += float(np_bce(np.float64(ctr_logits[i, j]),
                            np.float64(ctr_tgt[i, j])))
  return loss_cls, box_num / weight_sum, ctr_sum / num_pos, num_pos


def _random_boxes(rng, shape, degenerate_frac=0.0):
  xy = rng.uniform(0, 50, shape + (2,))
  wh = rng.uniform(0.5, 30, shape + (2,))
  wh = np.where(rng.uniform(size=shape + (1,)) < degenerate_frac, 0.0, wh)
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _random_problem(seed, b=2, p=40, pos_frac=0.3, nan_negatives=False):
  rng = np.random.default_rng(seed)
  cls_logits = rng.normal(0, 3, (b, p)).astype(np.float32)
  ctr_logits = rng.normal(0, 2, (b, p)).astype(np.float32)
  box_ltrb = rng.uniform(0, 6, (b, p, 4)).astype(np.float32)
  pos = rng.uniform(size=(b, p)) < pos_frac
  tgt_ltrb = rng.uniform(0.2, 6, (b, p, 4)).astype(np.float32)
  lr = tgt_ltrb[..., [0, 2]]
  tb = tgt_ltrb[..., [1, 3]]
  ctr_tgt = np.sqrt(lr.min(-1) / lr.max(-1) * tb.min(-1) / tb.max(-1))
  ctr_tgt = ctr_tgt.astype(np.float32)
  if nan_negatives:
    tgt_ltrb = np.where(pos[..., None], tgt_ltrb, np.nan).astype(np.float32)
    ctr_tgt = np.where(pos, ctr_tgt, np.nan).astype(np.float32)
  points = (rng.integers(0, 100, (p, 2)) * 8 + 4).astype(np.float32)
  return dict(cls_logits=cls_logits, box_ltrb=box_ltrb, ctr_logits=ctr_logits,
              pos=pos, tgt_ltrb=tgt_ltrb, ctr_tgt=ctr_tgt, points=points)


def _call(prob, points=True, **kw):
  targets = {"pos": prob["pos"], "ltrb": prob["tgt_ltrb"],
             "centerness": prob["ctr_tgt"]}
  return fcos.fcos_detection_losses(
      jnp.asarray(prob["cls_logits"]), jnp.asarray(prob["box_ltrb"]),
      jnp.asarray(prob["ctr_logits"]), targets,
      jnp.asarray(prob["points"]) if points else None, **kw)


# ----------------------------------------------------------------------------
# elementwise losses


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0),
                                         (0.5, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_matches_reference(shape, alpha, gamma):
  rng = np.random.default_rng(len(shape))
  logits = rng.uniform(-8, 8, shape).astype(np.float32)
  targets = (rng.uniform(size=shape) < 0.4).astype(np.float32)
  got = fcos.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets),
                                alpha, gamma)
  assert got.shape == shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_focal(logits, targets, alpha, gamma),
                             rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_hand_value_and_extremes():
  # logit 0, t = 1: p = 0.5, 0.25 * 0.5^2 * log 2.
  got = fcos.sigmoid_focal_loss(jnp.zeros(1), jnp.ones(1))
  np.testing.assert_allclose(got, [0.25 * 0.25 * math.log(2.0)], rtol=1e-6)
  x = jnp.array([-100.0, 100.0, -100.0, 100.0])
  t = jnp.array([0.0, 1.0, 1.0, 0.0])
  loss = fcos.sigmoid_focal_loss(x, t)
  np.testing.assert_allclose(loss[:2], 0.0, atol=1e-30)
  np.testing.assert_allclose(loss[2], 0.25 * 100.0, rtol=1e-5)
  np.testing.assert_allclose(loss[3], 0.75 * 100.0, rtol=1e-5)
  grads = jax.grad(lambda x: fcos.sigmoid_focal_loss(x, t).sum())(x)
  assert np.all(np.isfinite(grads))
  g0 = jax.grad(lambda x: fcos.sigmoid_focal_loss(x, t, gamma=0.0).sum())(x)
  assert np.all(np.isfinite(g0))


def test_centerness_loss_matches_bce():
  rng = np.random.default_rng(0)
  logits = rng.uniform(-10, 10, (4, 9)).astype(np.float32)
  targets = rng.uniform(0, 1, (4, 9)).astype(np.float32)
  got = fcos.centerness_loss(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(got, np_bce(logits, targets), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="targets shape"):
    fcos.centerness_loss(jnp.zeros((3,)), jnp.zeros((4,)))


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_and_giou_loss_match_reference(seed):
  rng = np.random.default_rng(seed)
  n = 30
  pred = _random_boxes(rng, (n,), degenerate_frac=0.1)
  tgt = _random_boxes(rng, (n,))
  tgt[:5] = pred[:5]  # identical pairs
  weights = rng.uniform(0, 2, n).astype(np.float32)
  ref_iou, ref_giou = zip(*[np_iou_giou(pred[i], tgt[i], fcos.GIOU_LOSS_EPS)
                            for i in range(n)])
  ref_iou = np.array(ref_iou)
  ref_giou = np.array(ref_giou)
  got_giou = fcos.giou_loss(jnp.asarray(pred), jnp.asarray(tgt),
                            jnp.asarray(weights))
  np.testing.assert_allclose(got_giou, (1 - ref_giou) * weights, rtol=1e-4,
                             atol=1e-5)
  got_iou = fcos.iou_loss(jnp.asarray(pred), jnp.asarray(tgt))
  ref = -np.log(np.maximum(ref_iou, fcos.IOU_LOSS_EPS))
  np.testing.assert_allclose(got_iou, ref, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got_iou)[:5] < 1e-4)  # identical non-empty pairs


def test_iou_giou_grads_finite_on_degenerate_boxes():
  pred = jnp.array([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0],
                    [1.0, 1.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
  tgt = jnp.array([[5.0, 5.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0],
                   [1.0, 1.0, 3.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
  for fn in (fcos.iou_loss, fcos.giou_loss):
    val, grads = jax.value_and_grad(lambda p: fn(p, tgt).sum())(pred)
    assert np.isfinite(val)
    assert np.all(np.isfinite(grads))


# ----------------------------------------------------------------------------
# fcos_detection_losses


@pytest.mark.parametrize("seed,b,p,normalizer", [
    (0, 2, 40, "num_pos_plus_imgs"), (1, 3, 17, "num_pos_plus_imgs"),
    (2, 1, 25, "num_pos")])
def test_detection_losses_match_reference(seed, b, p, normalizer):
  prob = _random_problem(seed, b, p)
  ref = np_fcos_losses(prob["cls_logits"], prob["box_ltrb"],
                       prob["ctr_logits"], prob["pos"], prob["tgt_ltrb"],
                       prob["ctr_tgt"], prob["points"], 0.25, 2.0, normalizer)
  got = _call(prob, cls_normalizer=normalizer)
  assert ref[3] > 0
  np.testing.assert_allclose(got["loss_cls"], ref[0], rtol=1e-5)
  np.testing.assert_allclose(got["loss_box"], ref[1], rtol=1e-4)
  np.testing.assert_allclose(got["loss_ctr"], ref[2], rtol=1e-5)
  assert float(got["num_pos"]) == ref[3]
  # GIoU is translation invariant: decoding around the origin is the same.
  no_points = _call(prob, points=False, cls_normalizer=normalizer)
  np.testing.assert_allclose(no_points["loss_box"], ref[1], rtol=1e-4)


def test_detection_losses_accept_model_layout_and_jit():
  prob = _random_problem(5)
  targets = {"pos": prob["pos"], "ltrb": prob["tgt_ltrb"],
             "centerness": prob["ctr_tgt"]}
  args = (jnp.asarray(prob["cls_logits"])[..., None],
          jnp.asarray(prob["box_ltrb"]),
          jnp.asarray(prob["ctr_logits"])[..., None], targets,
          jnp.asarray(prob["points"]))
  eager = fcos.fcos_detection_losses(*args)
  jitted = jax.jit(fcos.fcos_detection_losses)(*args)
  for k in eager:
    np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6, err_msg=k)
  flat = _call(prob)
  for k in eager:
    np.testing.assert_allclose(flat[k], eager[k], rtol=1e-6, err_msg=k)


def _total_and_grads(prob):
  targets = {"pos": prob["pos"], "ltrb": prob["tgt_ltrb"],
             "centerness": prob["ctr_tgt"]}

  def total(cls, box, ctr):
    out = fcos.fcos_detection_losses(cls, box, ctr, targets,
                                     jnp.asarray(prob["points"]))
    return out["loss_cls"] + out["loss_box"] + out["loss_ctr"], out

  return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
      jnp.asarray(prob["cls_logits"]), jnp.asarray(prob["box_ltrb"]),
      jnp.asarray(prob["ctr_logits"]))


def test_no_positives_is_finite_and_zero():
  prob = _random_problem(7, b=2, p=30, pos_frac=0.0, nan_negatives=True)
  (_, out), grads = _total_and_grads(prob)
  assert float(out["num_pos"]) == 0
  assert float(out["loss_box"]) == 0.0 and float(out["loss_ctr"]) == 0.0
  ref_cls = np_focal(prob["cls_logits"], np.zeros((2, 30)), 0.25, 2.0).sum()
  np.testing.assert_allclose(out["loss_cls"], ref_cls / 2, rtol=1e-5)
  for g in grads:
    assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[2], 0.0)


def test_grads_finite_with_degenerate_predictions_and_nan_negatives():
  prob = _random_problem(8, nan_negatives=True)
  prob["box_ltrb"][:, :5] = 0.0  # zero-size predicted boxes
  # Garbage predictions at negative points must not leak into the gradient.
  prob["box_ltrb"][:, 5:10] = np.where(prob["pos"][:, 5:10, None], 1.0,
                                       np.nan)
  (total, _), grads = _total_and_grads(prob)
  assert np.isfinite(total)
  for g in grads:
    assert np.all(np.isfinite(g))
  # Only positives receive box/centerness gradient.
  neg = ~prob["pos"]
  np.testing.assert_array_equal(np.asarray(grads[1])[neg], 0.0)
  np.testing.assert_array_equal(np.asarray(grads[2])[neg], 0.0)


def test_bad_inputs_raise():
  prob = _random_problem(0)
  with pytest.raises(ValueError, match="box_ltrb"):
    fcos.fcos_detection_losses(prob["cls_logits"], prob["box_ltrb"][..., :3],
                               prob["ctr_logits"], {}, None)
  with pytest.raises(ValueError, match="centerness"):
    fcos.fcos_detection_losses(
        prob["cls_logits"], prob["box_ltrb"], prob["ctr_logits"],
        {"pos": prob["pos"], "ltrb": prob["tgt_ltrb"]}, None)
  with pytest.raises(ValueError, match="ctr_logits"):
    fcos.fcos_detection_losses(
        prob["cls_logits"], prob["box_ltrb"], prob["ctr_logits"][:, :3],
        {"pos": prob["pos"], "ltrb": prob["tgt_ltrb"],
         "centerness": prob["ctr_tgt"]}, None)
  with pytest.raises(ValueError, match="cls_normalizer"):
    _call(prob, cls_normalizer="mean")
