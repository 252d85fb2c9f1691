"""Tests of ps_jax.mesh on the 8 simulated CPU devices (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ps_jax import mesh as mesh_lib


def _batch(b=8, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "image": rng.normal(size=(b, 4, 6, 3)).astype(np.float32),
      "boxes_valid": rng.random((b, 3)) > 0.5,
      "pids": rng.integers(-1, 9, (b, 3)).astype(np.int32),
      "scale": rng.random(b).astype(np.float32),
      "image_id": np.array([f"im{i}" for i in range(b)]),
      "example_valid": np.ones((b,), bool),
  }


def test_make_mesh():
  assert jax.device_count() == 8
  m = mesh_lib.make_mesh()
  assert m.axis_names == ("data",) and m.devices.size == 8
  assert m.axis_types == (AxisType.Auto,)
  m1 = mesh_lib.make_mesh(1)
  assert m1.devices.size == 1 and m1.devices.flat[0] == jax.devices()[0]
  with pytest.raises(ValueError, match="num_devices"):
    mesh_lib.make_mesh(9)
  assert mesh_lib.replicated(m).spec == P()
  assert mesh_lib.data_sharding(m).spec == P("data")


@pytest.mark.parametrize("num_devices", [1, 8])
def test_host_to_global_values_and_sharding(num_devices):
  m = mesh_lib.make_mesh(num_devices)
  host = _batch()
  out = mesh_lib.host_to_global(host, m)
  # Strings are host-only and left out.
  assert set(out) == set(host) - {"image_id"}
  for k, v in out.items():
    assert isinstance(v, jax.Array)
    assert v.sharding == NamedSharding(m, P("data")), k
    # One process: the global batch is this process's batch.
    assert v.shape == host[k].shape and v.dtype == host[k].dtype
    np.testing.assert_array_equal(np.asarray(v), host[k])
    assert len(v.addressable_shards) == num_devices
    rows = sorted((s.index[0].start or 0, s.data.shape[0])
                  for s in v.addressable_shards)
    assert rows == [(i * 8 // num_devices, 8 // num_devices)
                    for i in range(num_devices)]
  back = mesh_lib.global_to_host(out)
  for k, v in back.items():
    np.testing.assert_array_equal(v, host[k])


def test_jit_on_1_and_8_devices_agree():
  host = _batch()

  def f(batch):
    w = jnp.where(batch["boxes_valid"], batch["pids"], 0).sum(-1)
    return (batch["image"].mean((1, 2, 3)) * batch["scale"] + w).sum()

  results = []
  for n in (1, 8):
    m = mesh_lib.make_mesh(n)
    batch = mesh_lib.host_to_global(host, m)
    shardings = {k: mesh_lib.data_sharding(m) for k in batch}
    results.append(float(jax.jit(
        f, in_shardings=(shardings,),
        out_shardings=mesh_lib.replicated(m))(batch)))
  assert results[0] == pytest.approx(results[1], rel=1e-6)


def test_host_to_global_rejects_uneven_batch():
  with pytest.raises(ValueError, match=r"'pids'.*multiple of .* 8"):
    mesh_lib.host_to_global({"pids": np.zeros((6, 2), np.int32)},
                            mesh_lib.make_mesh())


def test_global_to_host_replicated_and_passthrough():
  m = mesh_lib.make_mesh()
  x = jax.device_put(np.arange(6.0), mesh_lib.replicated(m))
  out = mesh_lib.global_to_host({"x": x, "n": 3})
  np.testing.assert_array_equal(out["x"], np.arange(6.0))
  assert out["n"] == 3


_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                 "JAX_PROCESS_ID", "PS_JAX_DISTRIBUTED", "SLURM_JOB_ID",
                 "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri",
                 "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def clean_env(monkeypatch):
  for v in _CLUSTER_VARS:
    monkeypatch.delenv(v, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  return calls


def test_no_distributed_on_a_single_host(clean_env, monkeypatch):
  assert not mesh_lib.distributed_requested()
  assert not mesh_lib.maybe_initialize_distributed()
  slurm = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1",
           "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  for k, v in slurm.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "x")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host0")
  assert not mesh_lib.maybe_initialize_distributed()
  assert clean_env == []


def test_distributed_from_coordinator_env(clean_env, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  assert mesh_lib.maybe_initialize_distributed()
  assert clean_env == [{"coordinator_address": "10.0.0.1:1234",
                        "num_processes": 4, "process_id": 2}]


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n[1-2]",
     "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE":
     "4"},
    {"TPU_WORKER_HOSTNAMES": "h0,h1"},
    {"PS_JAX_DISTRIBUTED": "1"},
])
def test_distributed_from_cluster_env(clean_env, monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert mesh_lib.maybe_initialize_distributed()
  assert clean_env == [{}]  # jax auto-detects the cluster


def test_distributed_from_flags_over_the_environment(clean_env, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  # Another address: the variables' count and id belong to the other run.
  assert mesh_lib.maybe_initialize_distributed("host:9", 2, 1)
  assert clean_env == [{"coordinator_address": "host:9", "num_processes": 2,
                        "process_id": 1}]


@pytest.mark.parametrize("args,message", [
    ((None, 2, 0), "need --coordinator_address"),
    (("h:1", 2, 2), r"process_id=2; expected 0 <= process_id < "
                    r"num_processes=2"),
    (("h:1", 0, None), "num_processes=0"),
])
def test_bad_distributed_flags_are_named(clean_env, args, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.maybe_initialize_distributed(*args)
  assert clean_env == []


def test_compiled_together_is_the_jitted_function_in_one_process():
  calls = []

  def f(x):
    calls.append(1)  # traced once per new shape
    return x * 2
  fn = mesh_lib.CompiledTogether(jax.jit(f), "test")
  np.testing.assert_array_equal(fn(np.arange(3)), [0, 2, 4])
  np.testing.assert_array_equal(fn(np.arange(3) + 1), [2, 4, 6])
  assert len(calls) == 1
  mesh_lib.barrier("test")  # a no-op in one process
