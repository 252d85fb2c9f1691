"""Tests for ps_jax.losses.triplet against a numpy double loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ps_jax.losses import triplet


def np_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_triplet(feats, pids, margin):
  """AlignPS TripletLossFilter on a list of samples (drops pid -1)."""
  keep = [i for i in range(len(pids)) if pids[i] != -1]
  if len(set(int(pids[i]) for i in keep)) < 2:
    return 0.0, 0
  x = np.asarray(feats, np.float64)[keep]
  y = [int(pids[i]) for i in keep]
  n = len(keep)
  losses = []
  for a in range(n):
    d_ap, d_an = -np.inf, np.inf
    for b in range(n):
      d = np.sqrt(max(np.sum((x[a] - x[b]) ** 2), 1e-12))
      if y[b] == y[a]:
        d_ap = max(d_ap, d)
      else:
        d_an = min(d_an, d)
    losses.append(max(0.0, d_ap - d_an + margin))
  return float(np.mean(losses)), n


def np_alignps_samples(feats, pids, valid, lut):
  """Positive points, then lut[pid] for each point with pid > 0."""
  xs, ys = [], []
  for i in range(len(pids)):
    if valid[i]:
      xs.append(feats[i])
      ys.append(pids[i])
  for i in range(len(pids)):
    if valid[i] and pids[i] > 0:
      xs.append(lut[pids[i]])
      ys.append(pids[i])
  return np.array(xs).reshape(-1, feats.shape[1]), np.array(ys, np.int32)


def _problem(seed, m, d, num_ids):
  rng = np.random.default_rng(seed)
  feats = np_normalize(rng.normal(size=(m, d))).astype(np.float32)
  pids = rng.integers(-1, num_ids, m).astype(np.int32)
  valid = rng.uniform(size=m) < 0.8
  return feats, pids, valid


@pytest.mark.parametrize("seed,m,d,num_ids,margin", [
    (0, 12, 8, 4, 0.3), (1, 20, 16, 6, 0.3), (2, 9, 4, 2, 1.0)])
def test_matches_reference(seed, m, d, num_ids, margin):
  feats, pids, valid = _problem(seed, m, d, num_ids)
  got = triplet.batch_hard_triplet_loss(jnp.asarray(feats), jnp.asarray(pids),
                                        jnp.asarray(valid), margin)
  keep = np.flatnonzero(valid)
  ref, n = np_triplet(feats[keep], pids[keep], margin)
  assert n > 0 and ref > 0
  np.testing.assert_allclose(got["loss"], ref, rtol=1e-5, atol=1e-6)
  assert float(got["num_anchors"]) == n


def test_normalize_argument():
  feats, pids, valid = _problem(3, 10, 8, 3)
  scaled = feats * np.linspace(0.5, 3, 10)[:, None].astype(np.float32)
  got = triplet.batch_hard_triplet_loss(jnp.asarray(scaled), jnp.asarray(pids),
                                        jnp.asarray(valid), normalize=True)
  keep = np.flatnonzero(valid)
  ref, _ = np_triplet(feats[keep], pids[keep], 0.3)
  np.testing.assert_allclose(got["loss"], ref, rtol=1e-5, atol=1e-6)


def test_hand_value():
  # Ids 0, 0, 1 on a line: anchor 0 at x=0, d_ap = 1 (to x=1), d_an = 3.
  feats = jnp.array([[0.0], [1.0], [3.0]])
  pids = jnp.array([0, 0, 1])
  out = triplet.batch_hard_triplet_loss(feats, pids, jnp.ones(3, bool),
                                        margin=2.5)
  # Anchors: relu(1 - 3 + 2.5), relu(1 - 2 + 2.5), relu(1e-6 - 2 + 2.5).
  np.testing.assert_allclose(out["loss"], (0.5 + 1.5 + 0.500001) / 3,
                             rtol=1e-5)


def test_fewer_than_two_ids_is_zero():
  feats, _, _ = _problem(4, 8, 4, 3)
  pids = jnp.array([2, 2, -1, 2, -1, 0, 2, 2])
  valid = jnp.array([True] * 5 + [False] * 3)  # id 0 only in padding
  out = triplet.batch_hard_triplet_loss(jnp.asarray(feats), pids, valid)
  assert float(out["loss"]) == 0.0 and float(out["num_anchors"]) == 0.0
  g = jax.grad(lambda f: triplet.batch_hard_triplet_loss(f, pids, valid)[
      "loss"])(jnp.asarray(feats))
  np.testing.assert_array_equal(g, 0.0)
  none = triplet.batch_hard_triplet_loss(jnp.asarray(feats), pids,
                                         jnp.zeros(8, bool))
  assert float(none["loss"]) == 0.0


def test_grads_finite_with_identical_features_and_jit():
  feats, pids, valid = _problem(5, 10, 8, 3)
  feats[1] = feats[0]
  feats[2] = feats[0]
  pids[:3] = [0, 0, 1]  # coincident positive and coincident negative
  valid[:3] = True
  fn = lambda f: triplet.batch_hard_triplet_loss(  # noqa: E731
      f, jnp.asarray(pids), jnp.asarray(valid))["loss"]
  x = jnp.asarray(feats)
  val, g = jax.value_and_grad(fn)(x)
  assert np.isfinite(val) and np.all(np.isfinite(g))
  np.testing.assert_allclose(jax.jit(fn)(x), val, rtol=1e-6)
  keep = np.flatnonzero(valid)
  np.testing.assert_allclose(val, np_triplet(feats[keep], pids[keep], 0.3)[0],
                             rtol=1e-5, atol=1e-6)


def test_alignps_inputs_match_reference_samples():
  rng = np.random.default_rng(6)
  m, d, k = 14, 8, 5
  feats, pids, valid = _problem(6, m, d, k)
  pids[:3] = [0, 0, 3]  # id 0 is labeled but its LUT row is not appended
  valid[:3] = True
  lut = (0.7 * np_normalize(rng.normal(size=(k, d)))).astype(np.float32)
  tri_f, tri_p, tri_v = triplet.alignps_triplet_inputs(
      jnp.asarray(feats), jnp.asarray(pids), jnp.asarray(valid),
      jnp.asarray(lut))
  assert tri_f.shape == (2 * m, d) and tri_p.shape == (2 * m,)
  got = triplet.batch_hard_triplet_loss(tri_f, tri_p, tri_v)
  ref_x, ref_y = np_alignps_samples(feats, pids, valid, lut)
  ref, n = np_triplet(ref_x, ref_y, 0.3)
  np.testing.assert_allclose(got["loss"], ref, rtol=1e-5, atol=1e-6)
  assert float(got["num_anchors"]) == n
  # lut_min_pid=0 also appends id 0 rows.
  got0 = triplet.alignps_triplet_inputs(
      jnp.asarray(feats), jnp.asarray(pids), jnp.asarray(valid),
      jnp.asarray(lut), lut_min_pid=0)
  assert int(got0[2].sum()) == int(tri_v.sum()) + int(
      np.sum(valid & (pids == 0)))


def test_alignps_inputs_gradient_only_into_points():
  feats, pids, valid = _problem(7, 10, 8, 4)
  lut = np_normalize(np.random.default_rng(7).normal(size=(4, 8)))
  lut = jnp.asarray(lut, jnp.float32)

  def fn(f, lut):
    tri = triplet.alignps_triplet_inputs(f, jnp.asarray(pids),
                                         jnp.asarray(valid), lut)
    return triplet.batch_hard_triplet_loss(*tri)["loss"]

  g_f, g_lut = jax.grad(fn, argnums=(0, 1))(jnp.asarray(feats), lut)
  assert np.all(np.isfinite(g_f)) and np.abs(g_f).max() > 0
  np.testing.assert_array_equal(g_lut, 0.0)


def test_explicit_sharded_inputs():
  feats, pids, valid = _problem(8, 16, 8, 4)
  lut = jnp.asarray(np_normalize(np.ones((4, 8))), jnp.float32)
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  args = jax.device_put(
      (jnp.asarray(feats), jnp.asarray(pids), jnp.asarray(valid)),
      NamedSharding(mesh, P("data")))
  lut_r = jax.device_put(lut, NamedSharding(mesh, P()))

  def fn(f, p, v, lut):
    tri = triplet.alignps_triplet_inputs(f, p, v, lut)
    return triplet.batch_hard_triplet_loss(*tri)["loss"]

  val, g = jax.jit(jax.value_and_grad(fn))(*args, lut_r)
  ref_val, ref_g = jax.value_and_grad(fn)(jnp.asarray(feats),
                                          jnp.asarray(pids),
                                          jnp.asarray(valid), lut)
  np.testing.assert_allclose(val, ref_val, rtol=1e-6)
  np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="pids"):
    triplet.batch_hard_triplet_loss(jnp.zeros((4, 2)), jnp.zeros(3, jnp.int32),
                                    jnp.ones(4, bool))
  with pytest.raises(ValueError, match="lut"):
    triplet.alignps_triplet_inputs(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32),
                                   jnp.ones(4, bool), jnp.zeros((3, 5)))
