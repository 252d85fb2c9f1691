"""Tests of the AlignPS train step (ps_jax/train/step.py).

The step is jitted exactly as the train loop jits it (batch P("data"), state
replicated and donated) on the 8 simulated devices of tests/conftest.py and
on a 1-device mesh, and both run the same two real batches of the tiny
synthetic pipeline from the same initial state. With the OIM memory updated
from the global batch, the losses, the gradients (hence the updated
parameters and optimizer state) and the memory must agree up to the order of
floating-point reductions.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from data_builders import build
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.data import pipeline
from ps_jax.ops import assign
from ps_jax.ops import points as points_lib
from ps_jax.train import loop
from ps_jax.train import step as step_lib

RTOL = 1e-5


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
  jitted = jax.jit(step_lib.pack_positives, static_argnums=1)
  for fn in (step_lib.pack_positives, jitted):
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
  budget = step_lib.max_reid_samples(1, 1, 1.5)
  # One box per image, so every positive of an image belongs to its box.
  targets = assign.batched_fcos_targets(
      pts, pstrides, plevels, boxes[:, None], np.zeros((n, 1), np.int32),
      np.ones((n, 1), bool), common.ALIGNPS_REGRESS_RANGES,
      center_sample_radius=1.5)
  per_box = np.asarray(targets["pos"]).sum(axis=1)
  assert per_box.max() <= budget
  assert per_box.max() > 1  # the boxes are large enough to test the bound


# --------------------------------------------------------------------------
# The step on 1 and 8 devices.


def _without_boxes(batch, images):
  batch = {k: np.copy(v) for k, v in batch.items()}
  batch["boxes_valid"][images] = False
  batch["pids"][images] = -1
  batch["boxes_xyxy"][images] = 0.0
  return batch


@pytest.fixture(scope="module")
def setup(make_tiny_config):
  config = make_tiny_config()
  builder = build.load_builder(**config.dataset)
  num_ids = int(builder.info.metadata["num_train_ids"])
  model = models.build_model(config.model)
  mesh8 = mesh_lib.make_mesh()
  assert mesh8.size == 8, "tests/conftest.py should simulate 8 devices"
  state, tx, schedule = loop.init_state(config, model, num_ids, mesh8)
  it = pipeline.train_iterator(pipeline.data_source(builder, "train"),
                               config.data, seed=config.run.seed)
  # Image 0 of the first batch has nobody in it: on 8 devices, one device
  # holds no positive at all.
  batches = [_without_boxes(next(it), [0]), next(it)]
  # Jitted exactly as the training loop jits it.
  steps = {n: loop.make_train_step(config, model, tx, schedule,
                                   mesh_lib.make_mesh(n)) for n in (8, 1)}
  return {"state": state, "batches": batches, "steps": steps,
          "num_ids": num_ids}


def _host(state):
  """A numpy copy of the state, without the PRNG key (not numbers).

  A copy, not `jax.device_get`: on CPU that returns views of the device
  buffers, and jax silently declines to donate a buffer that has them.
  """
  return jax.tree.map(lambda x: np.array(x, copy=True),
                      state.replace(rng=None))


def _on_mesh(state, mesh):
  """A fresh copy of `state`, replicated on `mesh`.

  Through the host: jax.device_put from the 8-device mesh to a 1-device one
  reuses device 0's buffer even with may_alias=False, and donating the copy
  would then free the original.
  """
  sharding = mesh_lib.replicated(mesh)
  key_data = np.array(jax.random.key_data(state.rng), copy=True)
  rng = jax.random.wrap_key_data(jax.device_put(key_data, sharding),
                                 impl=jax.random.key_impl(state.rng))
  return jax.device_put(_host(state), sharding).replace(rng=rng)


def _run(setup, num_devices):
  mesh = mesh_lib.make_mesh(num_devices)
  state = _on_mesh(setup["state"], mesh)
  out = {"metrics": [], "states": [], "kept": []}
  for host_batch in setup["batches"]:
    batch = mesh_lib.host_to_global(host_batch, mesh)
    old = state
    state, metrics = setup["steps"][num_devices](state, batch)
    out["kept"].append([jax.tree_util.keystr(path) for path, x in
                        jax.tree_util.tree_leaves_with_path(old)
                        if not x.is_deleted()])
    # Replicated means every device holds the same memory.
    for shard in state.memory.lut.addressable_shards[1:]:
      np.testing.assert_array_equal(
          shard.data, state.memory.lut.addressable_shards[0].data)
    out["metrics"].append(jax.device_get(metrics))
    out["states"].append(_host(state))
  return out


@pytest.fixture(scope="module")
def runs(setup):
  initial = _host(setup["state"])
  return {"initial": initial, 8: _run(setup, 8), 1: _run(setup, 1)}


def test_batches_have_people_and_fit_the_reid_budget(runs):
  for metrics in runs[8]["metrics"]:
    assert metrics["num_pos"] > 0
    assert metrics["reid_overflow"] == 0


def test_losses_match_on_one_and_eight_devices(runs):
  for m8, m1 in zip(runs[8]["metrics"], runs[1]["metrics"]):
    assert set(m8) == set(m1)
    for k in m8:
      np.testing.assert_allclose(m8[k], m1[k], rtol=RTOL, atol=1e-7,
                                 err_msg=k)


def test_updates_match_on_one_and_eight_devices(runs):
  """Parameter updates (SGD of the gradients) and optimizer state agree."""
  before = jax.tree.leaves(runs["initial"].params)
  for s8, s1 in zip(runs[8]["states"], runs[1]["states"]):
    assert int(s8.step) == int(s1.step)
    flat8 = jax.tree_util.tree_leaves_with_path(s8.params)
    flat1 = jax.tree.leaves(s1.params)
    # The update is lr x (clipped gradient + weight decay): compare it
    # relative to the size of the whole update, not to the parameters
    # (some gradients, e.g. of conv biases before a GroupNorm, are
    # rounding noise), allowing for the float32 rounding of the updated
    # parameters (2 ulp).
    scale = max(np.abs(p1 - p0).max() for p1, p0 in zip(flat1, before))
    moved = 0
    for (path, p8), p1, p0 in zip(flat8, flat1, before):
      d8, d1 = p8 - p0, p1 - p0
      moved += np.abs(d1).max() > 1e-3 * scale
      ulp = np.spacing(np.maximum(np.abs(p8), np.abs(p1)))
      err = np.abs(d8 - d1)
      tol = 1e-4 * np.abs(d1) + RTOL * scale + 2 * ulp
      assert (err <= tol).all(), (jax.tree_util.keystr(path),
                                  float((err - tol).max()))
    assert moved > len(before) // 2
    # The momentum traces: the (clipped, decayed) gradients themselves.
    opt8, opt1 = jax.tree.leaves(s8.opt_state), jax.tree.leaves(s1.opt_state)
    trace_scale = max(np.abs(b).max() for b in opt1 if b.size)
    assert trace_scale > 0
    for a, b in zip(opt8, opt1):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=RTOL * trace_scale)


def test_oim_memory_matches_on_one_and_eight_devices(runs):
  # Rows are (averages of) unit vectors: compare relative to norm 1.
  for s8, s1 in zip(runs[8]["states"], runs[1]["states"]):
    np.testing.assert_allclose(s8.memory.lut, s1.memory.lut, rtol=RTOL,
                               atol=RTOL)
    np.testing.assert_allclose(s8.memory.queue, s1.memory.queue, rtol=RTOL,
                               atol=RTOL)
    assert int(s8.memory.queue_ptr) == int(s1.memory.queue_ptr)


def test_memory_holds_the_global_batch_identities(setup, runs):
  """After the first step, the LUT rows written are labeled ids of the global
  batch, from more than one image (not one device's share)."""
  lut = runs[8]["states"][0].memory.lut
  batch = setup["batches"][0]
  labeled = set(batch["pids"][batch["boxes_valid"] & (batch["pids"] >= 0)])
  written = set(np.flatnonzero(np.abs(lut).sum(axis=1) > 0))
  assert written and written <= labeled
  # More than one image's identities: the update read the whole batch.
  per_image = [set(p[v & (p >= 0)]) for p, v in
               zip(batch["pids"], batch["boxes_valid"])]
  assert all(not written <= ids for ids in per_image)
  # Unlabeled people went to the queue.
  if (batch["boxes_valid"] & (batch["pids"] < 0)).any():
    assert int(runs[8]["states"][0].memory.queue_ptr) > 0


def test_state_is_donated(runs):
  assert runs[8]["kept"] == runs[1]["kept"] == [[], []]


def test_no_nan_without_any_boxes(setup):
  mesh = mesh_lib.make_mesh(8)
  # From a state whose memory holds features, so that a stray write shows.
  state, _ = setup["steps"][8](_on_mesh(setup["state"], mesh),
                               mesh_lib.host_to_global(setup["batches"][1],
                                                       mesh))
  before = _host(state)
  assert np.abs(before.memory.lut).sum() > 0
  empty = _without_boxes(setup["batches"][1], slice(None))
  new_state, metrics = setup["steps"][8](
      state, mesh_lib.host_to_global(empty, mesh))
  metrics, after = jax.device_get(metrics), _host(new_state)
  for k, v in metrics.items():
    assert np.isfinite(v), k
  assert metrics["num_pos"] == 0
  assert metrics["loss_oim"] == 0 and metrics["loss_box"] == 0
  # Background-only classification still trains.
  assert metrics["loss_cls"] > 0 and metrics["grad_norm"] > 0
  for leaf in jax.tree.leaves(after.params):
    assert np.isfinite(leaf).all()
  # Nobody seen, nothing written.
  np.testing.assert_array_equal(after.memory.lut, before.memory.lut)
  np.testing.assert_array_equal(after.memory.queue, before.memory.queue)
  assert int(after.memory.queue_ptr) == int(before.memory.queue_ptr)
