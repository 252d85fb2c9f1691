"""Tests of the OIM system (ps_jax/systems/oim.py) through the contract:
options and their errors, one loss on a hand-made batch, and predict with
the query box as the RoI. Training, 1-vs-8 devices, kill-and-resume and the
evaluation run in tests/train (once per system)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import oim_synthetic_tiny
from ps_jax import systems
from ps_jax.models.oim import OIMNet
from ps_jax.ops import vectors
from ps_jax.systems import base


def _tiny(**predict):
  c = oim_synthetic_tiny.get_config()
  keys = {"det_thresh", "gallery_sizes"}
  options = {k: v for k, v in c.eval.to_dict().items() if k not in keys}
  options.update(predict)
  return systems.build("oim", num_ids=5, model=c.model.to_dict(),
                       loss=c.loss.to_dict(), predict=options)


def test_builds_from_the_tiny_config_and_names_bad_options():
  system = _tiny()
  assert isinstance(system, systems.PersonSearchSystem)
  assert system.embedding_dim == 16 and system.num_ids == 5
  assert system == _tiny() and hash(system) == hash(_tiny())
  c = oim_synthetic_tiny.get_config()
  with pytest.raises(ValueError, match=r"loss: unknown key\(s\) "
                     r"\['rpn_batchsize'\]"):
    systems.build("oim", num_ids=5, model=c.model.to_dict(),
                  loss={"rpn_batchsize": 3}, predict={})
  with pytest.raises(ValueError, match="loss.roi_bg_iou_high=0.6; expected "
                     "between"):
    systems.build("oim", num_ids=5, model=c.model.to_dict(),
                  loss={"roi_bg_iou_high": 0.6}, predict={})
  with pytest.raises(ValueError, match="model.head_pool='mean'"):
    systems.build("oim", num_ids=5, model={"head_pool": "mean"}, loss={},
                  predict={})
  with pytest.raises(ValueError, match="eval.query_mode='center'"):
    systems.build("oim", num_ids=5, model={}, loss={},
                  predict={"query_mode": "center"})
  with pytest.raises(ValueError, match="model.frozen_stages=4"):
    systems.build("oim", num_ids=5, model={"frozen_stages": 4}, loss={},
                  predict={})


def _batch():
  image = jax.random.normal(jax.random.key(3), (2, 96, 128, 3))
  boxes = np.zeros((2, 3, 4), np.float32)
  boxes[0, :2] = [[10, 8, 40, 80], [60, 20, 90, 90]]
  boxes[1, :1] = [[30, 10, 70, 95]]
  valid = np.array([[1, 1, 0], [1, 0, 0]], bool)
  pids = np.array([[2, -1, -1], [4, -1, -1]], np.int32)
  return {"image": image, "boxes_xyxy": jnp.asarray(boxes),
          "boxes_valid": jnp.asarray(valid), "pids": jnp.asarray(pids),
          "image_hw": jnp.array([[96, 128], [80, 128]], jnp.int32),
          "orig_hw": jnp.array([[192, 256], [160, 256]], jnp.int32)}


@pytest.fixture(scope="module")
def trained_once():
  system = _tiny()
  batch = _batch()
  variables, memory = system.init(jax.random.key(0), batch["image"])
  params = variables.pop("params")
  # A memory that has seen people (a zero one gives the features no
  # gradient: every logit is 0 whatever the feature).
  lut = jax.random.normal(jax.random.key(2), memory.lut.shape)
  memory = memory.replace(lut=lut / jnp.linalg.norm(lut, axis=1,
                                                    keepdims=True))

  def loss(p):
    return system.loss(p, variables, memory, batch, jax.random.key(1))

  (total, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      params)
  return system, batch, params, variables, memory, total, aux, grads


def test_loss_metrics_and_gradients(trained_once):
  system, batch, _, _, memory, total, aux, grads = trained_once
  m = jax.device_get(aux["metrics"])
  assert np.isfinite(float(total)) and float(m["loss"]) == float(total)
  for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"):
    assert m[k] > 0, k
  # OIM: cross-entropy of 10 x cosine against the table and the (empty)
  # queue, averaged over the labeled foreground RoIs.
  feats, pids_all = np.asarray(aux["feats"]), np.asarray(aux["pids"])
  table = np.concatenate([np.asarray(memory.lut), np.asarray(memory.queue)])
  nll = []
  for x, pid in zip(feats, pids_all):
    if pid >= 0:
      z = 10.0 * table @ x
      nll.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[pid])
  np.testing.assert_allclose(m["loss_oim"], np.mean(nll), rtol=1e-4)
  # The GT boxes are candidates, so each of the 3 people has >= 1 fg RoI;
  # labeled ones are ids 2 and 4.
  assert m["num_fg_rois"] >= 3
  pids = np.asarray(aux["pids"])[np.asarray(aux["valid"])]
  assert {2, 4} <= set(pids.tolist()) and set(pids.tolist()) <= {2, 4, -1}
  assert m["num_labeled_rois"] == np.sum(pids >= 0)
  for name in ("backbone", "rpn_conv", "rpn_cls", "rpn_box", "res5",
               "cls_score", "bbox_pred", "feat"):
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name
  # The memory update writes the labeled samples into their LUT rows.
  new = system.update_extra(memory, aux)
  changed = np.abs(np.asarray(new.lut) - np.asarray(memory.lut)).sum(1) > 0
  assert set(np.flatnonzero(changed)) == {2, 4}
  assert int(new.queue_ptr) == int(np.sum(pids == -1))


def test_predict_shapes_and_the_query_roi(trained_once):
  system, batch, params, variables, _, _, _, _ = trained_once
  full = {"params": params, **variables}
  queries = jnp.array([[20, 16, 80, 160], [60, 20, 140, 190]], jnp.float32)
  out = jax.jit(system.predict)(full, batch, queries)
  base.check_predictions(out, "test")
  m = system.predict_options.max_dets
  assert out["boxes"].shape == (2, m, 4) and out["embeddings"].shape == (2, m,
                                                                          16)
  assert not np.asarray(out["query_from_detection"]).any()
  boxes = np.asarray(out["boxes"])[np.asarray(out["valid"])]
  assert (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 192).all()
  # Query mode 'roi': the query box in network pixels (half the original
  # here) through the RoI head.
  trunk = system.model.apply(full, batch["image"], method=OIMNet.trunk)
  head = system.model.apply(full, trunk["c4"], (queries / 2)[:, None],
                            method=OIMNet.roi_head)
  want = vectors.l2_normalize(head["embedding"][:, 0])
  np.testing.assert_allclose(out["query_embedding"], want, atol=1e-5)


def test_predict_embeds_the_regressed_boxes_on_request(trained_once):
  _, batch, params, variables, _, _, _, _ = trained_once
  full = {"params": params, **variables}
  system = _tiny(embed_at="box", score_threshold=0.0)
  queries = jnp.zeros((2, 4), jnp.float32)
  out = jax.jit(system.predict)(full, batch, queries)
  valid = np.asarray(out["valid"])
  assert valid.sum() > 0
  # The detections' boxes back in network pixels (orig_hw is twice
  # image_hw here), through the RoI head.
  trunk = system.model.apply(full, batch["image"], method=OIMNet.trunk)
  head = system.model.apply(full, trunk["c4"], out["boxes"] / 2,
                            method=OIMNet.roi_head)
  want = np.asarray(vectors.l2_normalize(head["embedding"]))
  np.testing.assert_allclose(np.asarray(out["embeddings"])[valid],
                             want[valid], atol=1e-4)
  # The proposal rule gives other embeddings for the same detections.
  plain = jax.jit(_tiny(score_threshold=0.0).predict)(full, batch, queries)
  np.testing.assert_array_equal(plain["valid"], out["valid"])
  assert np.abs(np.asarray(plain["embeddings"])[valid]
                - want[valid]).max() > 1e-4


def test_best_iou_query_mode(trained_once):
  """'best_iou': the detection overlapping the query box most supplies the
  embedding; a box that overlaps no detection keeps the RoI embedding."""
  _, batch, params, variables, _, _, _, _ = trained_once
  full = {"params": params, **variables}
  roi_mode = _tiny(score_threshold=0.0)
  dets = jax.jit(roi_mode.predict)(full, batch, jnp.zeros((2, 4)))
  slot = int(np.argmax(np.asarray(dets["scores"][0])))
  # Image 0 asks for one of its detections; image 1 for a box whose +1-pixel
  # IoU with every detection is 0 (outside the 256 x 160 original image).
  queries = jnp.stack([dets["boxes"][0, slot],
                       jnp.array([300.0, 200.0, 310.0, 230.0])])
  best = jax.jit(_tiny(score_threshold=0.0, query_mode="best_iou").predict)(
      full, batch, queries)
  roi = jax.jit(roi_mode.predict)(full, batch, queries)
  np.testing.assert_array_equal(best["query_from_detection"], [True, False])
  np.testing.assert_allclose(best["query_embedding"][0],
                             dets["embeddings"][0, slot], atol=1e-6)
  np.testing.assert_allclose(best["query_embedding"][1],
                             roi["query_embedding"][1], atol=1e-6)
  assert np.abs(np.asarray(best["query_embedding"][0])
                - np.asarray(roi["query_embedding"][0])).max() > 1e-4
