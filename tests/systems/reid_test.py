"""Tests of the crop re-ID system (ps_jax/systems/reid.py)."""

import jax
import numpy as np
import pytest

from ps_jax import systems
from ps_jax.systems import base
from ps_jax.systems import reid

TINY_MODELS = {
    "ide": dict(depth=50, width_multiplier=0.0625, norm="group"),
    "mlfn": dict(width_multiplier=0.0625, norm="group"),
    "glad": dict(width_multiplier=0.0625, norm="group", part_hw=(16, 16)),
}


def _batch(b=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(b, 32, 16, 3)).astype(np.float32),
          "pid": np.array([0, 1, 0, 2][:b], np.int32),
          "keypoints": np.tile(np.array([[0.5, 0.05], [0.5, 0.2],
                                         [0.6, 0.5], [0.4, 0.5]],
                                        np.float32), (b, 1, 1)),
          "has_keypoints": np.ones((b,), bool)}


def _numpy_smoothed_ce(logits, labels, eps):
  logits = np.asarray(logits, np.float64)
  k = logits.shape[1]
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  total = 0.0
  for i, y in enumerate(labels):
    target = np.full(k, eps / k)
    target[y] += 1.0 - eps
    total += -(target * logp[i]).sum()
  return total / len(labels)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_identity_loss_against_numpy(eps):
  logits = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
  labels = np.array([0, 6, 3, 3, 1])
  np.testing.assert_allclose(reid.identity_loss(logits, labels, eps),
                             _numpy_smoothed_ce(logits, labels, eps),
                             rtol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_system_contract(name):
  system = systems.build(name, num_ids=3, model=TINY_MODELS[name],
                         loss={"label_smoothing": 0.1}, predict={})
  assert isinstance(system, base.CropReIDSystem)
  assert not isinstance(system, base.PersonSearchSystem)
  batch = _batch()
  # Jitted: op by op, GLAD's four GoogLeNet streams took minutes on 2 cores.
  variables, extra = jax.jit(system.init)(jax.random.key(0),
                                          batch["image"][:1])
  assert extra is None
  loss, aux = jax.jit(system.loss, static_argnums=2)(
      variables["params"],
      {k: v for k, v in variables.items() if k != "params"}, None, batch,
      jax.random.key(1))
  assert np.isfinite(loss)
  assert set(aux["metrics"]) >= {"loss", "loss_id", "accuracy"}
  emb = jax.jit(system.embed)(variables, batch)
  assert emb.shape == (4, system.embedding_dim)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  raw = jax.jit(system.features)(variables, batch)
  np.testing.assert_allclose(
      emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5,
      atol=1e-6)
  assert system.update_extra(None, aux) is None


def test_loss_sums_the_stream_losses_and_adds_the_triplet():
  system = systems.build("glad", num_ids=3, model=TINY_MODELS["glad"],
                         loss={"label_smoothing": 0.1, "w_triplet": 2.0},
                         predict={})
  batch = _batch()
  variables, _ = jax.jit(system.init)(jax.random.key(0), batch["image"][:1])
  loss, aux = jax.jit(system.loss, static_argnums=2)(
      variables["params"], {}, None, batch, jax.random.key(1))
  out = jax.jit(system.model.apply)(variables, batch["image"],
                                    batch["keypoints"],
                                    batch["has_keypoints"])
  assert len(out["logits"]) == 4
  want_id = sum(_numpy_smoothed_ce(lg, batch["pid"], 0.1)
                for lg in out["logits"])
  m = aux["metrics"]
  np.testing.assert_allclose(m["loss_id"], want_id, rtol=1e-4)
  assert float(m["loss_triplet"]) >= 0
  np.testing.assert_allclose(loss, want_id + 2.0 * m["loss_triplet"],
                             rtol=1e-4)


def test_the_classifier_gets_the_dataset_identities():
  system = reid.from_options("ide", model=TINY_MODELS["ide"], loss={},
                             predict={}, num_ids=11)
  assert system.model.num_classes == 11


@pytest.mark.parametrize("sections, match", [
    (dict(model={"depth": 50, "colour": 1}, loss={}, predict={}), "colour"),
    (dict(model={}, loss={"label_smoothing": 1.5}, predict={}),
     "label_smoothing"),
    (dict(model={}, loss={}, predict={"det_thresh2": 0.5}), "det_thresh2"),
    (dict(model={"dropout": 2.0}, loss={}, predict={}), "dropout"),
    (dict(model={"dtype": "bf16"}, loss={}, predict={}),
     r"model.dtype='bf16'; expected one of \['float32', 'bfloat16'"),
])
def test_bad_options_are_named(sections, match):
  with pytest.raises(ValueError, match=match):
    reid.from_options("ide", num_ids=3, **sections)


def test_gradients_reach_every_parameter():
  system = systems.build("mlfn", num_ids=3, model=TINY_MODELS["mlfn"],
                         loss={}, predict={})
  batch = _batch()
  variables, _ = jax.jit(system.init)(jax.random.key(0), batch["image"][:1])
  grads = jax.jit(jax.grad(lambda p: system.loss(p, {}, None, batch,
                                                 jax.random.key(1))[0]))(
                                                     variables["params"])
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.isfinite(g).all() for _, g in leaves)
  dead = [jax.tree_util.keystr(p) for p, g in leaves
          if not np.any(np.asarray(g))]
  assert not dead, dead


@pytest.mark.parametrize("model, match", [
    (dict(norm="group"), "model.norm='frozen'"),
    (dict(norm="frozen", branch_relu=False), "branch_relu=True"),
])
def test_mlfn_import_needs_torchreids_block(model, match):
  """torchreid's weights fit only its own block (frozen BN, branch ReLU);
  the check comes before the file is read."""
  system = reid.from_options(
      "mlfn", model=dict(width_multiplier=0.0625, groups=4, **model),
      loss={}, predict={}, num_ids=3)
  with pytest.raises(ValueError, match=match):
    system.init_from({}, "/nonexistent/mlfn.npz",
                     normalization="imagenet_rgb")


def _ide_like_tiny_alignps(**overrides):
  """An IDE whose ResNet is configs/synthetic_tiny.py's backbone."""
  model = dict(depth=18, width_multiplier=0.125, style="pytorch",
               norm="group")
  model.update(overrides)
  system = reid.from_options("ide", model=model, loss={}, predict={},
                             num_ids=3)
  variables, _ = system.init(jax.random.key(0),
                             np.zeros((1, 64, 32, 3), np.float32))
  return system, variables


def test_ide_det_takes_the_detectors_backbone(tiny_checkpoint):
  """IDE_det: every backbone array comes from the AlignPS checkpoint
  (same depth, width, style and norm), the classifier keeps its init."""
  from ps_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from ps_jax.models import weights  # pylint: disable=g-import-not-at-top
  _, detector, _ = checkpoint.restore_variables(tiny_checkpoint)
  system, variables = _ide_like_tiny_alignps()
  new = system.init_from(variables, str(tiny_checkpoint),
                         normalization="imagenet_rgb")
  ours = weights.leaves(new["params"]["backbone"])
  theirs = weights.leaves(detector["params"]["backbone"])
  assert ours and set(ours) <= set(theirs)
  for path, value in ours.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(theirs[path]))
  # The initialisation differed, so the copy is visible.
  before = weights.leaves(variables["params"]["backbone"])
  assert any(np.any(np.asarray(before[p]) != np.asarray(theirs[p]))
             for p in ours)
  np.testing.assert_array_equal(
      np.asarray(new["params"]["classifier"]["kernel"]),
      np.asarray(variables["params"]["classifier"]["kernel"]))


@pytest.mark.parametrize("overrides, normalization, match", [
    ({}, "caffe_bgr", "normalization='imagenet_rgb'"),
    ({"width_multiplier": 0.25}, "imagenet_rgb", "differ in shape"),
    ({"norm": "frozen"}, "imagenet_rgb", "another norm"),
    ({"style": "caffe"}, "imagenet_rgb", "style='pytorch'"),
    ({"depth": 50}, "imagenet_rgb", "depth=18"),
])
def test_ide_det_names_what_does_not_fit(tiny_checkpoint, overrides,
                                         normalization, match):
  system, variables = _ide_like_tiny_alignps(**overrides)
  with pytest.raises(ValueError, match=match):
    system.init_from(variables, str(tiny_checkpoint),
                     normalization=normalization)
