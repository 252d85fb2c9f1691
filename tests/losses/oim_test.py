"""Tests for ps_jax.losses.oim against slow numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ps_jax.losses import oim


# ----------------------------------------------------------------------------
# numpy references


def np_normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_logits(feats, lut, queue, lut_scale, queue_scale):
  feats = np.asarray(feats, np.float64)
  return np.concatenate([lut_scale * feats @ np.asarray(lut, np.float64).T,
                         queue_scale * feats @ np.asarray(queue, np.float64).T],
                        axis=1)


def np_oim_loss(logits, pids, valid, gamma, reduction):
  total, n_labeled, n_valid = 0.0, 0, 0
  for i in range(logits.shape[0]):
    if not valid[i]:
      continue
    n_valid += 1
    if pids[i] < 0:
      continue
    n_labeled += 1
    z = logits[i].astype(np.float64)
    z = z - z.max()
    prob = np.exp(z) / np.exp(z).sum()
    p = prob[pids[i]]
    total += -((1 - p) ** gamma) * np.log(p)
  num = n_valid if reduction == "mean_all" else n_labeled
  return total / max(num, 1), total, num, n_labeled


def np_update(lut, queue, ptr, feats, pids, valid, momentum, normalize_lut,
              queue_dims):
  """The reference backward loops (SeqNet / AlignPS matching layers)."""
  lut = np.array(lut, np.float32)
  queue = np.array(queue, np.float32)
  k, q = lut.shape[0], queue.shape[0]
  for i in range(len(pids)):
    if not valid[i]:
      continue
    x = np.asarray(feats[i], np.float32)
    y = int(pids[i])
    if 0 <= y < k:
      lut[y] = momentum * lut[y] + (1 - momentum) * x
      if normalize_lut:
        lut[y] /= np.linalg.norm(lut[y])
    elif y == -1 and q > 0:
      d = queue.shape[1] if queue_dims is None else queue_dims
      queue[ptr, :d] = x[:d]
      ptr = (ptr + 1) % q
  return lut, queue, ptr


def _feats(rng, m, d):
  return np_normalize(rng.normal(size=(m, d))).astype(np.float32)


def _memory(rng, k, q, d, ptr=0):
  return oim.OIMMemory(
      lut=jnp.asarray(_feats(rng, k, d)) if k else jnp.zeros((0, d)),
      queue=jnp.asarray(_feats(rng, q, d)) if q else jnp.zeros((0, d)),
      queue_ptr=jnp.asarray(ptr, jnp.int32))


# ----------------------------------------------------------------------------
# memory and logits


def test_init_memory():
  mem = oim.init_memory(7, 5, 16)
  assert mem.lut.shape == (7, 16) and mem.lut.dtype == jnp.float32
  assert mem.queue.shape == (5, 16) and mem.queue.dtype == jnp.float32
  assert mem.queue_ptr.shape == () and mem.queue_ptr.dtype == jnp.int32
  assert not np.any(mem.lut) and not np.any(mem.queue)
  assert int(mem.queue_ptr) == 0
  with pytest.raises(ValueError, match="dim"):
    oim.init_memory(3, 2, 0)


@pytest.mark.parametrize("k,q,lut_scale,queue_scale,normalize", [
    (6, 5, 10.0, None, False), (6, 5, 15.0, 10.0, True), (4, 0, 30.0, None,
                                                          False)])
def test_logits_match_reference(k, q, lut_scale, queue_scale, normalize):
  rng = np.random.default_rng(k + q)
  d = 8
  mem = _memory(rng, k, q, d)
  raw = rng.normal(size=(9, d)).astype(np.float32) * 3
  feats = raw if normalize else np_normalize(raw).astype(np.float32)
  got = oim.oim_logits(jnp.asarray(feats), mem, lut_scale, queue_scale,
                       normalize=normalize)
  ref = np_logits(np_normalize(raw), mem.lut, mem.queue, lut_scale,
                  lut_scale if queue_scale is None else queue_scale)
  assert got.shape == (9, k + q)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="feats"):
    oim.oim_logits(jnp.zeros((3, d + 1)), mem)


def test_logits_do_not_differentiate_memory():
  rng = np.random.default_rng(0)
  mem = _memory(rng, 4, 3, 8)
  feats = jnp.asarray(_feats(rng, 5, 8))
  def fn(lut, queue):
    m = oim.OIMMemory(lut=lut, queue=queue, queue_ptr=mem.queue_ptr)
    return oim.oim_logits(feats, m).sum()

  g_lut, g_queue = jax.grad(fn, argnums=(0, 1))(mem.lut, mem.queue)
  np.testing.assert_array_equal(g_lut, 0.0)
  np.testing.assert_array_equal(g_queue, 0.0)


# ----------------------------------------------------------------------------
# loss


def _loss_problem(seed, m=12, k=6, q=5, d=8):
  rng = np.random.default_rng(seed)
  mem = _memory(rng, k, q, d)
  feats = _feats(rng, m, d)
  pids = rng.integers(-1, k, m).astype(np.int32)
  valid = rng.uniform(size=m) < 0.8
  return mem, feats, pids, valid


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean_all", "mean_labeled"])
def test_loss_matches_reference(gamma, reduction):
  mem, feats, pids, valid = _loss_problem(int(gamma) + len(reduction))
  logits = oim.oim_logits(jnp.asarray(feats), mem, 10.0)
  got = oim.oim_loss(logits, jnp.asarray(pids), jnp.asarray(valid), gamma,
                     reduction)
  ref = np_oim_loss(np.asarray(logits), pids, valid, gamma, reduction)
  # The two reductions must differ on this data.
  assert 0 < ref[3] < int(valid.sum())
  np.testing.assert_allclose(got["loss"], ref[0], rtol=1e-5)
  np.testing.assert_allclose(got["loss_sum"], ref[1], rtol=1e-5)
  assert float(got["num"]) == ref[2]
  assert float(got["num_labeled"]) == ref[3]


def test_loss_hand_value_and_empty():
  # Two classes with equal logits: p = 1/2, focal gamma 2: 0.25 * log 2.
  logits = jnp.zeros((3, 2))
  pids = jnp.array([1, -1, 0])
  valid = jnp.array([True, True, False])
  out = oim.oim_loss(logits, pids, valid, focal_gamma=2.0)
  np.testing.assert_allclose(out["loss_sum"], 0.25 * np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(out["loss"], 0.25 * np.log(2.0) / 2, rtol=1e-6)
  out = oim.oim_loss(logits, pids, valid, reduction="mean_labeled")
  np.testing.assert_allclose(out["loss"], np.log(2.0), rtol=1e-6)
  none = oim.oim_loss(logits, pids, jnp.zeros(3, bool))
  assert float(none["loss"]) == 0.0 and float(none["num"]) == 0.0
  with pytest.raises(ValueError, match="reduction"):
    oim.oim_loss(logits, pids, valid, reduction="sum")
  with pytest.raises(ValueError, match="pids"):
    oim.oim_loss(logits, pids[:2], valid)


def _loss_of_raw_feats(mem, pids, valid, gamma):
  def fn(raw):
    logits = oim.oim_logits(raw, mem, 10.0, 15.0, normalize=True)
    return oim.oim_loss(logits, pids, valid, gamma)["loss"]
  return fn


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_loss_gradient_matches_numerical(gamma):
  mem, _, pids, valid = _loss_problem(3, m=5, k=4, q=3, d=6)
  rng = np.random.default_rng(4)
  raw = rng.normal(size=(5, 6))
  fn = _loss_of_raw_feats(mem, jnp.asarray(pids), jnp.asarray(valid), gamma)
  jtu.check_grads(fn, (jnp.asarray(raw, jnp.float32),), order=1,
                            modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)

  # Tighter: float64 central differences of the independent numpy reference.
  def ref(x):
    logits = np_logits(np_normalize(x), mem.lut, mem.queue, 10.0, 15.0)
    return np_oim_loss(logits, pids, valid, gamma, "mean_all")[0]

  num = np.zeros_like(raw)
  h = 1e-6
  for idx in np.ndindex(raw.shape):
    e = np.zeros_like(raw)
    e[idx] = h
    num[idx] = (ref(raw + e) - ref(raw - e)) / (2 * h)
  got = jax.grad(fn)(jnp.asarray(raw, jnp.float32))
  assert np.abs(num).max() > 1e-3
  np.testing.assert_allclose(got, num, rtol=1e-3, atol=1e-4)


def test_loss_jit_matches_eager():
  mem, feats, pids, valid = _loss_problem(9)
  fn = _loss_of_raw_feats(mem, jnp.asarray(pids), jnp.asarray(valid), 2.0)
  x = jnp.asarray(feats)
  np.testing.assert_allclose(jax.jit(fn)(x), fn(x), rtol=1e-6)


# ----------------------------------------------------------------------------
# memory update


def _check_update(mem, feats, pids, valid, momentum=0.5, normalize_lut=True,
                  queue_dims=None, fn=None):
  fn = fn or oim.update_memory
  new = fn(mem, jnp.asarray(feats), jnp.asarray(pids), jnp.asarray(valid),
           momentum=momentum, normalize_lut=normalize_lut,
           queue_dims=queue_dims)
  lut, queue, ptr = np_update(mem.lut, mem.queue, int(mem.queue_ptr), feats,
                              pids, valid, momentum, normalize_lut, queue_dims)
  np.testing.assert_allclose(new.lut, lut, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new.queue, queue)
  assert int(new.queue_ptr) == ptr
  assert new.lut.dtype == jnp.float32 and new.queue_ptr.dtype == jnp.int32
  return new


@pytest.mark.parametrize("normalize_lut", [True, False])
def test_update_duplicated_pids_sequential(normalize_lut):
  rng = np.random.default_rng(0)
  k, q, d, m = 5, 7, 8, 30
  mem = _memory(rng, k, q, d, ptr=2)
  feats = _feats(rng, m, d)
  # Many repeats of a few ids, interleaved with unlabeled and padding.
  pids = rng.choice([0, 1, 1, 3, -1], m).astype(np.int32)
  valid = rng.uniform(size=m) < 0.85
  new = _check_update(mem, feats, pids, valid, momentum=0.3,
                      normalize_lut=normalize_lut)
  # Rows of ids that never appear are untouched.
  np.testing.assert_array_equal(new.lut[np.array([2, 4])],
                                mem.lut[np.array([2, 4])])


def test_update_from_zero_memory_alignps_cuhk():
  # AlignPS CUHK: zero init, LUT not normalized, queue writes 64 of 96 dims.
  rng = np.random.default_rng(1)
  mem = oim.init_memory(6, 4, 96)
  feats = _feats(rng, 20, 96)
  pids = rng.integers(-1, 6, 20).astype(np.int32)
  valid = np.ones(20, bool)
  new = _check_update(mem, feats, pids, valid, normalize_lut=False,
                      queue_dims=64)
  np.testing.assert_array_equal(new.queue[:, 64:], 0.0)


def test_update_queue_wraps_around_and_partial_dims():
  rng = np.random.default_rng(2)
  k, q, d, m = 3, 4, 80, 23
  mem = _memory(rng, k, q, d, ptr=3)
  feats = _feats(rng, m, d)
  pids = np.full(m, -1, np.int32)  # more unlabeled than Q: wraps many times
  pids[[4, 9]] = [0, 2]
  valid = np.ones(m, bool)
  valid[[1, 12]] = False
  new = _check_update(mem, feats, pids, valid, queue_dims=64)
  # Dims beyond queue_dims keep their old (random) values.
  np.testing.assert_array_equal(new.queue[:, 64:], mem.queue[:, 64:])
  _check_update(mem, feats, pids, valid)  # full rows
  # One short of a full turn, and exactly Q.
  _check_update(mem, feats[:4], np.full(4, -1, np.int32), np.ones(4, bool))
  _check_update(mem, feats[:3], np.full(3, -1, np.int32), np.ones(3, bool))


def test_update_without_queue_or_lut_and_odd_ids():
  rng = np.random.default_rng(3)
  d, m = 8, 12
  feats = _feats(rng, m, d)
  # -2 (not a label) and pid >= K are ignored; -1 has nowhere to go when Q=0.
  pids = np.array([0, -1, 2, -2, 7, 2, -1, 1, 0, -1, 3, 2], np.int32)
  valid = np.ones(m, bool)
  new = _check_update(_memory(rng, 4, 0, d), feats, pids, valid)
  assert new.queue.shape == (0, d) and int(new.queue_ptr) == 0
  _check_update(_memory(rng, 0, 5, d, ptr=4), feats, pids, valid)
  _check_update(_memory(rng, 4, 5, d, ptr=1), feats, pids,
                np.zeros(m, bool))  # nothing valid: unchanged


def test_update_jit_matches_eager_and_stops_gradient():
  rng = np.random.default_rng(4)
  mem = _memory(rng, 6, 5, 8, ptr=4)
  feats = _feats(rng, 16, 8)
  pids = rng.choice([0, 0, 2, 5, -1], 16).astype(np.int32)
  valid = rng.uniform(size=16) < 0.9
  jitted = jax.jit(oim.update_memory,
                   static_argnames=("normalize_lut", "queue_dims"))
  _check_update(mem, feats, pids, valid, queue_dims=4, fn=jitted)

  # The update lives inside a value_and_grad(has_aux) in the train step; it
  # must neither break reverse mode nor receive gradient.
  def loss_and_memory(x):
    logits = oim.oim_logits(x, mem)
    loss = oim.oim_loss(logits, jnp.asarray(pids), jnp.asarray(valid))["loss"]
    return loss, oim.update_memory(mem, x, jnp.asarray(pids),
                                   jnp.asarray(valid))

  (_, new), g = jax.jit(jax.value_and_grad(loss_and_memory, has_aux=True))(
      jnp.asarray(feats))
  assert np.all(np.isfinite(g))
  _check_update(mem, feats, pids, valid, fn=lambda *a, **kw: new)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_update_with_sharded_global_batch_matches_single_device(axis_type):
  rng = np.random.default_rng(5)
  mem = _memory(rng, 6, 5, 8, ptr=2)
  m = 24
  feats = _feats(rng, m, 8)
  pids = rng.choice([0, 1, 1, 4, -1], m).astype(np.int32)
  valid = rng.uniform(size=m) < 0.9
  axis_types = {"explicit": jax.sharding.AxisType.Explicit,
                "auto": jax.sharding.AxisType.Auto}[axis_type]
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_types,))
  dsh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  args = jax.device_put((jnp.asarray(feats), jnp.asarray(pids),
                         jnp.asarray(valid)), dsh)
  new = jax.jit(oim.update_memory, out_shardings=repl)(
      jax.device_put(mem, repl), *args)
  _check_update(mem, feats, pids, valid, fn=lambda *a, **kw: new)


def test_update_bad_inputs_raise():
  mem = oim.init_memory(3, 2, 8)
  with pytest.raises(ValueError, match="queue_dims"):
    oim.update_memory(mem, jnp.zeros((2, 8)), jnp.zeros(2, jnp.int32),
                      jnp.ones(2, bool), queue_dims=9)
  with pytest.raises(ValueError, match="valid"):
    oim.update_memory(mem, jnp.zeros((2, 8)), jnp.zeros(2, jnp.int32),
                      jnp.ones(3, bool))
  with pytest.raises(ValueError, match="D="):
    oim.update_memory(mem, jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32),
                      jnp.ones(2, bool))
