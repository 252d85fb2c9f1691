"""The device mesh, shardings, host batches -> global arrays, multi-host start.

Conventions:
  * One mesh axis, "data", over all devices of all processes. Batches are
    sharded on their leading (B) dimension, `P("data")`; the train state is
    replicated, `P()`.
  * The axis type is `AxisType.Auto`, not jax's new default `Explicit`.
    With Explicit axes the sharding becomes part of every array's type and
    some ops on a sharded batch (reshapes that merge B with another dim, the
    gathers/scatters of the OIM memory update over the global batch, top-k
    over it) need an explicit `out_sharding` or fail to trace; model and loss
    code here never mention devices, so the compiler's automatic sharding
    propagation (Auto) is the right contract. `jax.jit` with NamedSharding
    in/out shardings works the same under both, and `shard_map` under Auto
    reshards its inputs as needed, where under Explicit it rejects an input
    not already sharded like its `in_specs` ("in_specs passed to shard_map
    ... does not match the specs of the input").
  * Host batches become global arrays only here (`host_to_global`): each
    process passes its own per-process batch; the global batch is the
    concatenation over processes in process order, so its leading size is
    per-process batch x process_count.

Multi-host start-up (`maybe_initialize_distributed`) must run before anything
else touches jax devices.

Compiling together (`CompiledTogether`). Processes compile the same program
at different speeds: on CPU, jax's persistent compilation cache is written
by process 0 under a key that only process 0 computes, so a process 0 that
loads a step from the cache can start it minutes before process 1 has
compiled it. On CPU the first run of every program sets up its Gloo
collectives and waits only 30 s for the other processes ("Gloo context
initialization failed: DEADLINE_EXCEEDED"). So a multi-process run compiles
each new shape of its train and predict steps ahead of time and waits at a
barrier of the coordination service before running it.

On CPU the persistent cache is also turned off when several processes run:
a train step that process 0 loaded from the cache and process 1 compiled
afresh ran their collectives in different orders (one process in an
all-gather, the other in an all-reduce, both waiting for ever). Freshly
compiled on every process, the steps agree.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ("data",) mesh with Auto axis type (see module docstring).

  Args:
    num_devices: use the first `num_devices` of `jax.devices()`; None uses
      all. Only a single-process run may use fewer than all devices (every
      process must own part of the mesh).
  """
  devices = jax.devices()
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices={num_devices}; this run has "
                     f"{len(devices)} devices")
  if n != len(devices) and jax.process_count() > 1:
    raise ValueError(f"num_devices={num_devices} but a multi-process run "
                     f"must use all {len(devices)} devices")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that puts a full copy on every device of `mesh` (P())."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) dimension over "data"."""
  return NamedSharding(mesh, P(DATA_AXIS))


def _is_numeric(x: Any) -> bool:
  return isinstance(x, np.ndarray) and x.dtype.kind in "biuf"


def host_to_global(batch: Mapping[str, Any], mesh: Mesh
                   ) -> dict[str, jax.Array]:
  """This process's numpy batch -> global jax.Arrays sharded P("data").

  Args:
    batch: str -> np.ndarray with a leading per-process batch dimension b
      (e.g. a `ps_jax.data.pipeline` batch). b must be a multiple of the
      number of this process's devices in `mesh`.
    mesh: the mesh of `make_mesh`.

  Returns:
    The same keys, each a jax.Array of global leading size b x
    process_count, sharded NamedSharding(mesh, P("data")). Entries that are
    not numeric or boolean numpy arrays (e.g. the eval batch's `image_id`
    strings) are host-only and are left out; read them from `batch`.
  """
  local_devices = sum(d.process_index == jax.process_index()
                      for d in mesh.devices.flat)
  arrays = {}
  for k, v in batch.items():
    if not _is_numeric(v):
      continue
    if v.ndim == 0 or v.shape[0] % local_devices:
      raise ValueError(
          f"batch[{k!r}] has shape {v.shape}; its leading (batch) size must "
          f"be a multiple of this process's {local_devices} mesh devices")
    arrays[k] = v
  return jax.make_array_from_process_local_data(data_sharding(mesh), arrays)


def global_to_host(tree: Any) -> Any:
  """Global jax.Arrays -> numpy holding this process's part.

  A leaf sharded on its leading dimension (P("data")) gives this process's
  rows in order (what `host_to_global` took from this process); a replicated
  leaf gives the whole array. Non-jax leaves pass through.
  """
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_replicated or x.ndim == 0:
      return np.asarray(x.addressable_data(0))
    shards = {}
    for s in x.addressable_shards:
      shards.setdefault(s.index[0].start or 0, np.asarray(s.data))
    return np.concatenate([shards[k] for k in sorted(shards)], axis=0)
  return jax.tree.map(one, tree)


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def distributed_requested() -> bool:
  """Whether the environment describes a multi-process run.

  True if any of:
    * JAX_COORDINATOR_ADDRESS is set (a manual launch; JAX_NUM_PROCESSES and
      JAX_PROCESS_ID give the count and this process's id);
    * Slurm: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_PROCID and
      SLURM_LOCALID are set and SLURM_NTASKS > 1 (srun with several tasks);
    * Open MPI: OMPI_MCA_orte_hnp_uri is set and OMPI_COMM_WORLD_SIZE > 1
      (mpirun with several ranks);
    * Cloud TPU: TPU_WORKER_HOSTNAMES lists more than one host (a multi-host
      slice);
    * PS_JAX_DISTRIBUTED=1 (let jax auto-detect any other cluster).
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if os.environ.get("PS_JAX_DISTRIBUTED", "") == "1":
    return True
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
           "SLURM_LOCALID")
  if all(v in os.environ for v in slurm) and (_int_env("SLURM_NTASKS")
                                              or 1) > 1:
    return True
  if ("OMPI_MCA_orte_hnp_uri" in os.environ
      and (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1):
    return True
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")
           if h.strip()]
  return len(hosts) > 1


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Calls jax.distributed.initialize() when a multi-process run is asked.

  Asked means: `coordinator_address` is given (the entry points' flags
  --coordinator_address, --num_processes, --process_id), or
  `distributed_requested()` sees a cluster or JAX_COORDINATOR_ADDRESS in
  the environment. Arguments take precedence over JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID; what neither gives, jax detects
  (Slurm, Open MPI, Cloud TPU). No-op (returns False) on a single host or if
  already initialized. Call it first, before any other jax call that touches
  devices. CPU processes talk through jax's CPU collectives (Gloo, jax's
  default; `jax_cpu_collectives_implementation`).

  Returns:
    True if this call initialized the distributed system.
  Raises:
    ValueError: num_processes or process_id without a coordinator address,
      or a process_id outside [0, num_processes).
  """
  env_address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  address = coordinator_address or env_address
  if address is None and (num_processes is not None
                          or process_id is not None):
    raise ValueError(
        "--num_processes / --process_id need --coordinator_address "
        "(host:port of process 0, the same for every process)")
  if num_processes is None and address == env_address:
    num_processes = _int_env("JAX_NUM_PROCESSES")
  if process_id is None and address == env_address:
    process_id = _int_env("JAX_PROCESS_ID")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes={num_processes}; expected >= 1")
  if (process_id is not None and num_processes is not None
      and not 0 <= process_id < num_processes):
    raise ValueError(f"process_id={process_id}; expected 0 <= process_id < "
                     f"num_processes={num_processes}")
  if jax.distributed.is_initialized():
    return False
  if address is None and not distributed_requested():
    return False
  kwargs = {}
  if address is not None:
    kwargs["coordinator_address"] = address
    if num_processes is not None:
      kwargs["num_processes"] = num_processes
    if process_id is not None:
      kwargs["process_id"] = process_id
  logging.info("Initializing jax.distributed (%s)",
               kwargs or "cluster auto-detection")
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if (jax.process_count() > 1 and jax.default_backend() == "cpu"
      and jax.config.jax_enable_compilation_cache
      and jax.config.jax_compilation_cache_dir):
    logging.warning(
        "Several CPU processes: jax's persistent compilation cache is "
        "turned off for this run (module docstring, 'Compiling together')")
    jax.config.update("jax_enable_compilation_cache", False)
  return True


def initialize_from_args(args: Any) -> bool:
  """`maybe_initialize_distributed` with an argparse namespace's flags."""
  return maybe_initialize_distributed(
      getattr(args, "coordinator_address", None),
      getattr(args, "num_processes", None),
      getattr(args, "process_id", None))


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Waits until every process has reached this barrier.

  The coordination service's barrier (no device computation, so nothing to
  compile or set up). No-op in a single process. Every process must call
  the same barriers in the same order.
  """
  if jax.process_count() == 1:
    return
  # pylint: disable-next=g-import-not-at-top
  from jax._src import distributed
  client = distributed.global_state.client
  if client is None:
    raise RuntimeError("several processes but no jax.distributed client")
  client.wait_at_barrier(f"ps_jax/{name}/{next(_barrier_ids)}",
                         int(timeout_s * 1000))


def _signature(args: Any) -> Any:
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                         getattr(x, "sharding", None)) for x in leaves)


class CompiledTogether:
  """A jitted function whose every new input signature, in a multi-process
  run, is compiled ahead of time on every process and run only once all of
  them have compiled it (module docstring). In a single process it is the
  jitted function itself.

  Args:
    jitted: a `jax.jit` function.
    name: names the barriers (logs of the coordination service).
  """

  def __init__(self, jitted: Callable[..., Any], name: str):
    self._jitted = jitted
    self._name = name
    self._compiled: dict[Any, Any] = {}

  def __call__(self, *args: Any) -> Any:
    if jax.process_count() == 1:
      return self._jitted(*args)
    key = _signature(args)
    fn = self._compiled.get(key)
    if fn is None:
      fn = self._jitted.lower(*args).compile()
      barrier(f"compiled/{self._name}")
      self._compiled[key] = fn
    return fn(*args)
