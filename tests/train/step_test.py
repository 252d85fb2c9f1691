"""Tests of the train step (ps_jax/train/step.py), for every system.

The step is jitted exactly as the train loop jits it (batch P("data"), state
replicated and donated) on the 8 simulated devices of tests/conftest.py and
on a 1-device mesh, and both run the same two real batches of the tiny
synthetic pipeline from the same initial state. With the system's extra
state (AlignPS, OIM: the OIM memory) updated from the global batch, the losses,
the gradients (hence the updated parameters and optimizer state) and the
extra state must agree up to the order of floating-point reductions. Each
test runs once per system of tests/train/conftest.py; the last ones check
the OIM memory of AlignPS and OIM in particular.
"""

import jax
import numpy as np
import pytest

from ps_jax import mesh as mesh_lib
from ps_jax.data import pipeline
from ps_jax.train import step as step_lib

RTOL = 1e-5


# --------------------------------------------------------------------------
# The step on 1 and 8 devices.


def _without_boxes(batch, images):
  batch = {k: np.copy(v) for k, v in batch.items()}
  batch["boxes_valid"][images] = False
  batch["pids"][images] = -1
  batch["boxes_xyxy"][images] = 0.0
  return batch


@pytest.fixture(scope="module")
def setup(system, make_tiny_config, make_experiment):
  exp = make_experiment(system, make_tiny_config())
  mesh8 = mesh_lib.make_mesh()
  assert mesh8.size == 8, "tests/conftest.py should simulate 8 devices"
  state, tx, schedule = step_lib.init_state(
      exp.system, exp.optim, exp.run.seed, exp.data.train_scales[0], mesh8)
  it = pipeline.train_iterator(pipeline.data_source(exp.builder, "train"),
                               exp.data, seed=exp.run.seed)
  # Image 0 of the first batch has nobody in it: on 8 devices, one device
  # holds no positive at all.
  batches = [_without_boxes(next(it), [0]), next(it)]
  # Jitted exactly as the training loop jits it.
  steps = {n: step_lib.make_train_step(exp.system, tx, schedule,
                                       mesh_lib.make_mesh(n),
                                       seed=exp.run.seed) for n in (8, 1)}
  return {"state": state, "batches": batches, "steps": steps}


def _host(state):
  """A numpy copy of the state.

  A copy, not `jax.device_get`: on CPU that returns views of the device
  buffers, and jax silently declines to donate a buffer that has them.
  """
  return jax.tree.map(lambda x: np.array(x, copy=True), state)


def _on_mesh(state, mesh):
  """A fresh copy of `state`, replicated on `mesh`.

  Through the host: jax.device_put from the 8-device mesh to a 1-device one
  reuses device 0's buffer even with may_alias=False, and donating the copy
  would then free the original.
  """
  return jax.device_put(_host(state), mesh_lib.replicated(mesh))


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
    # Replicated means every device holds the same extra state.
    for leaf in jax.tree.leaves(state.extra):
      for shard in leaf.addressable_shards[1:]:
        np.testing.assert_array_equal(shard.data,
                                      leaf.addressable_shards[0].data)
    out["metrics"].append(jax.device_get(metrics))
    out["states"].append(_host(state))
  return out


@pytest.fixture(scope="module")
def runs(setup):
  initial = _host(setup["state"])
  return {"initial": initial, 8: _run(setup, 8), 1: _run(setup, 1)}


def test_batches_have_people_and_fit_the_reid_budget(system, runs):
  if system != "alignps":
    pytest.skip("AlignPS's re-ID sample budget")
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


def test_extra_state_matches_on_one_and_eight_devices(runs):
  # AlignPS's rows are (averages of) unit vectors: compare relative to 1.
  for s8, s1 in zip(runs[8]["states"], runs[1]["states"]):
    flat8 = jax.tree_util.tree_leaves_with_path(s8.extra)
    flat1 = jax.tree.leaves(s1.extra)
    assert len(flat8) == len(flat1)
    for (path, a), b in zip(flat8, flat1):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL,
                                 err_msg=jax.tree_util.keystr(path))


# The systems with an OIM memory, and the metric that counts their re-ID
# samples (AlignPS: positive points; OIM: foreground RoIs).
_POSITIVES = {"alignps": "num_pos", "oim": "num_fg_rois"}


def _with_memory_only(system):
  if system not in _POSITIVES:
    pytest.skip("systems with an OIM memory")


def test_memory_holds_the_global_batch_identities(system, setup, runs):
  """After the first step, the LUT rows written are labeled ids of the global
  batch, from more than one image (not one device's share)."""
  _with_memory_only(system)
  lut = runs[8]["states"][0].extra.lut
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
    assert int(runs[8]["states"][0].extra.queue_ptr) > 0


def test_state_is_donated(runs):
  assert runs[8]["kept"] == runs[1]["kept"] == [[], []]


def test_no_nan_without_any_boxes(system, setup):
  _with_memory_only(system)
  mesh = mesh_lib.make_mesh(8)
  # From a state whose memory holds features, so that a stray write shows.
  state, _ = setup["steps"][8](_on_mesh(setup["state"], mesh),
                               mesh_lib.host_to_global(setup["batches"][1],
                                                       mesh))
  before = _host(state)
  assert np.abs(before.extra.lut).sum() > 0
  empty = _without_boxes(setup["batches"][1], slice(None))
  new_state, metrics = setup["steps"][8](
      state, mesh_lib.host_to_global(empty, mesh))
  metrics, after = jax.device_get(metrics), _host(new_state)
  for k, v in metrics.items():
    assert np.isfinite(v), k
  assert metrics[_POSITIVES[system]] == 0
  assert metrics["loss_oim"] == 0 and metrics["loss_box"] == 0
  # Background-only classification still trains.
  assert metrics["loss_cls"] > 0 and metrics["grad_norm"] > 0
  for leaf in jax.tree.leaves(after.params):
    assert np.isfinite(leaf).all()
  # Nobody seen, nothing written.
  np.testing.assert_array_equal(after.extra.lut, before.extra.lut)
  np.testing.assert_array_equal(after.extra.queue, before.extra.queue)
  assert int(after.extra.queue_ptr) == int(before.extra.queue_ptr)
