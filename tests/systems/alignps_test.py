"""Tests of AlignPS's pieces of the system contract (ps_jax/systems/alignps.py)
that the trainer's system-parametrised tests do not cover: the packing of
re-ID samples, their budget, and the options a config is turned into.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ps_jax import systems
from ps_jax.ops import assign
from ps_jax.ops import points as points_lib
from ps_jax.systems import alignps
from ps_jax.systems import base


# --------------------------------------------------------------------------
# pack_positives against numpy.


def _pack_positives_ref(pos: np.ndarray, max_samples: int):
  """Slow reference: the first `max_samples` positive indices, in order."""
  hits = [i for i, p in enumerate(pos) if p]
  idx = np.zeros(max_samples, np.int32)
  valid = np.zeros(max_samples, bool)
  for slot, i in enumerate(hits[:max_samples]):
    idx[slot], valid[slot] = i, True
  return idx, valid, max(len(hits) - max_samples, 0)


@pytest.mark.parametrize("m,max_samples,frac", [
    (1, 1, 0.5), (10, 4, 0.5), (10, 25, 0.3), (37, 37, 0.9),
    (64, 8, 0.0), (64, 8, 1.0), (200, 13, 0.05), (5, 3, 1.0)])
def test_pack_positives_matches_numpy(m, max_samples, frac):
  rng = np.random.default_rng(1000 * m + max_samples)
  pos = rng.random(m) < frac
  want_idx, want_valid, want_overflow = _pack_positives_ref(pos, max_samples)
  jitted = jax.jit(alignps.pack_positives, static_argnums=1)
  for fn in (alignps.pack_positives, jitted):
    idx, valid, overflow = fn(jnp.asarray(pos), max_samples)
    assert idx.shape == (max_samples,) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(valid, want_valid)
    assert int(overflow) == want_overflow


def test_max_reid_samples_bounds_positives_per_box():
  """With centre sampling, no box gets more positives than its share of the
  re-ID budget, whatever its size and position."""
  strides = (8, 16, 32, 64, 128)
  hw = points_lib.feature_sizes((128, 128), strides)
  pts, pstrides, plevels = points_lib.make_points(hw, strides)
  rng = np.random.default_rng(0)
  n = 64
  xy = rng.uniform(-10, 130, (n, 2))
  wh = rng.uniform(1, 140, (n, 2))
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  budget = alignps.max_reid_samples(1, 1, 1.5)
  # One box per image, so every positive of an image belongs to its box.
  targets = assign.batched_fcos_targets(
      pts, pstrides, plevels, boxes[:, None], np.zeros((n, 1), np.int32),
      np.ones((n, 1), bool), common.ALIGNPS_REGRESS_RANGES,
      center_sample_radius=1.5)
  per_box = np.asarray(targets["pos"]).sum(axis=1)
  assert per_box.max() <= budget
  assert per_box.max() > 1  # the boxes are large enough to test the bound


def test_build_names_the_valid_systems_and_keys():
  with pytest.raises(ValueError,
                     match="expected one of \\['alignps', 'glad', 'ide', 'mlfn', 'oim'\\]"):
    systems.build("seqnet", num_ids=3, model={}, loss={}, predict={})
  with pytest.raises(ValueError, match=r"model: unknown key\(s\) "
                     r"\['neck_chanels'\].*valid keys"):
    systems.build("alignps", num_ids=3, model={"neck_chanels": 8},
                  loss=dict(common.alignps_loss()), predict={})
  with pytest.raises(ValueError, match="query_mode='nearest'"):
    systems.build("alignps", num_ids=3, model={},
                  loss=dict(common.alignps_loss()),
                  predict={"query_mode": "nearest"})


def test_alignps_system_from_the_shared_config_sections():
  system = systems.build(
      "alignps", num_ids=7, model=dict(common.alignps_model()),
      loss=dict(common.alignps_loss()), predict={"max_dets": 20})
  assert isinstance(system, systems.PersonSearchSystem)
  assert system.num_ids == 7 and system.embedding_dim == 256
  assert system.model.stage_with_dcn == (False, False, False, False)
  assert system.loss_options.regress_ranges[0] == (-1.0, common.INF)
  assert system.predict_options.max_dets == 20
  # Immutable and compared by value: jax.jit caches one step per system.
  again = systems.build(
      "alignps", num_ids=7, model=dict(common.alignps_model()),
      loss=dict(common.alignps_loss()), predict={"max_dets": 20})
  assert system == again and hash(system) == hash(again)


def test_init_gives_the_model_variables_and_a_zero_memory():
  system = systems.build(
      "alignps", num_ids=5,
      model=dict(common.alignps_model(
          depth=18, width_multiplier=0.125, style="pytorch",
          frozen_stages=-1, backbone_norm="group", neck_channels=16,
          reid_dim=8, head_num_convs=1)),
      loss=dict(common.alignps_loss(oim_queue_size=6, oim_queue_dims=None)),
      predict={})
  variables, memory = jax.eval_shape(
      system.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert set(variables) >= {"params"}
  assert memory.lut.shape == (5, 8) and memory.queue.shape == (6, 8)


def test_queue_dims_must_fit_the_embedding():
  model = dict(common.alignps_model(reid_dim=32))
  with pytest.raises(ValueError, match=r"loss.oim_queue_dims=64; expected "
                     r"None or at most the embedding size 32"):
    systems.build("alignps", num_ids=3, model=model,
                  loss=dict(common.alignps_loss(oim_queue_dims=64)),
                  predict={})
  systems.build("alignps", num_ids=3, model=model,
                loss=dict(common.alignps_loss(oim_queue_dims=32)), predict={})


def _tiny_system(**model):
  return systems.build(
      "alignps", num_ids=5,
      model=dict(common.alignps_model(
          depth=18, width_multiplier=0.125, style="pytorch",
          frozen_stages=-1, backbone_norm="group", neck_channels=16,
          reid_dim=8, head_num_convs=1, **model)),
      loss=dict(common.alignps_loss(oim_queue_size=6, oim_queue_dims=None)),
      predict={"score_threshold": 0.0})


def test_pad32_sub_mean_reaches_the_model_in_training_and_prediction():
  pad32 = _tiny_system(head_sub_mean_region="image_pad32")
  canvas = _tiny_system()
  assert pad32.model.needs_image_hw and not canvas.model.needs_image_hw
  variables, memory = pad32.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  image = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))

  def batch(image_hw):
    return {"image": image, "image_hw": jnp.asarray(image_hw, jnp.int32),
            "orig_hw": jnp.asarray(image_hw, jnp.int32)}

  # Jitted: op by op, the four predictions and the loss took over a minute.
  predicts = {id(s): jax.jit(s.predict) for s in (pad32, canvas)}

  def embeddings(system, image_hw):
    return predicts[id(system)](variables, batch(image_hw),
                                jnp.zeros((2, 4)))["query_embedding"]

  # Images that round up to the whole 64 x 64 canvas: the canvas's mean.
  np.testing.assert_allclose(embeddings(pad32, [[40, 50], [64, 33]]),
                             embeddings(canvas, [[40, 50], [64, 33]]),
                             atol=1e-5)
  # A 30 x 30 image pads to 32 x 32: another mean, another embedding.
  assert not np.allclose(embeddings(pad32, [[30, 30], [64, 33]])[0],
                         embeddings(canvas, [[30, 30], [64, 33]])[0],
                         atol=1e-3)
  # Training reads image_hw from the batch too.
  train_batch = dict(batch([[30, 30], [64, 33]]),
                     boxes_xyxy=jnp.asarray([[[2.0, 2.0, 20.0, 28.0]]] * 2),
                     pids=jnp.asarray([[1], [2]], jnp.int32),
                     boxes_valid=jnp.ones((2, 1), bool))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  loss, _ = jax.jit(pad32.loss)(params, state, memory, train_batch,
                                jax.random.key(2))
  assert np.isfinite(float(loss))


def test_typed_options_skip_linen_fields_and_make_lists_tuples():
  loss = base.typed("loss", alignps.AlignPSLoss,
                    {"regress_ranges": [[-1, 8]], "triplet": False})
  assert loss.regress_ranges == ((-1.0, 8.0),) and loss.triplet is False
  model = base.typed("model", alignps.AlignPS, {"strides": [8, 16, 32]})
  assert model.strides == (8, 16, 32)
  # A linen module's own `name` and `parent` are not options.
  with pytest.raises(ValueError, match=r"model: unknown key\(s\) \['name'\]"):
    base.typed("model", alignps.AlignPS, {"name": "x"})


def test_init_rngs_are_the_seeds_keys_and_differ():
  init_a, train_a = base.init_rngs(3)
  init_b, _ = base.init_rngs(3)
  init_c, _ = base.init_rngs(4)
  data = jax.random.key_data
  np.testing.assert_array_equal(data(init_a), data(init_b))
  assert not np.array_equal(data(init_a), data(init_c))
  assert not np.array_equal(data(init_a), data(train_a))
  assert base.example_images((5, 7)).shape == (1, 5, 7, 3)


def test_check_predictions_names_missing_outputs():
  out = dict.fromkeys(base.PREDICT_OUTPUTS)
  base.check_predictions(out, "Toy")
  del out["valid"]
  with pytest.raises(ValueError, match=r"Toy: predict\(\) returned no "
                     r"\['valid'\]"):
    base.check_predictions(out, "Toy")


def _system_with_budget(budget):
  return systems.build(
      "alignps", num_ids=5,
      model=dict(common.alignps_model(
          depth=18, width_multiplier=0.125, style="pytorch",
          frozen_stages=-1, backbone_norm="group", neck_channels=16,
          reid_dim=8, head_num_convs=1)),
      loss=dict(common.alignps_loss(oim_queue_size=6, oim_queue_dims=None,
                                    reid_max_samples=budget)),
      predict={})


def test_a_smaller_reid_budget_changes_nothing_until_it_overflows():
  full = _system_with_budget(None)
  variables, memory = full.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  batch = {"image": jax.random.normal(jax.random.key(1), (2, 64, 64, 3)),
           "boxes_xyxy": jnp.asarray([[[2.0, 2.0, 20.0, 28.0],
                                       [30.0, 8.0, 50.0, 60.0]]] * 2),
           "pids": jnp.asarray([[1, -1], [2, 3]], jnp.int32),
           "boxes_valid": jnp.ones((2, 2), bool)}

  def run(system):
    loss, aux = system.loss(params, state, memory, batch, jax.random.key(2))
    extra = system.update_extra(memory, aux)
    return float(loss), aux["metrics"], extra

  loss, metrics, extra = run(full)
  num_pos = int(metrics["num_pos"])
  assert 4 <= num_pos < alignps.max_reid_samples(2, 2, 1.5)
  fits = run(_system_with_budget(num_pos))
  assert fits[0] == pytest.approx(loss, rel=1e-5)
  assert int(fits[1]["reid_overflow"]) == 0
  np.testing.assert_allclose(fits[2].lut, extra.lut, atol=1e-6)
  np.testing.assert_allclose(fits[2].queue, extra.queue, atol=1e-6)
  short = run(_system_with_budget(num_pos - 3))
  assert int(short[1]["reid_overflow"]) == 3
  with pytest.raises(ValueError, match="loss.reid_max_samples"):
    _system_with_budget(0)
