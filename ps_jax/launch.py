"""The command-line flags of a multi-process run, for argparse entry points.

`python -m ps_jax.eval` and `ps-search` take the flags that train.py defines
with absl: --coordinator_address, --num_processes, --process_id
(docs/scaling.md). This module imports neither jax nor the model code, so
that `--help` stays fast; `ps_jax.mesh.initialize_from_args` starts the run.
"""

from __future__ import annotations

import argparse


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
  """Adds the three flags to `parser`, in a group of their own."""
  group = parser.add_argument_group(
      "multi-process (docs/scaling.md)",
      "Start under jax.distributed. Clusters jax detects (Slurm, Open MPI, "
      "Cloud TPU) need none of these; a manual launch gives all three to "
      "every process (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
      "JAX_PROCESS_ID).")
  group.add_argument("--coordinator_address", default=None,
                     metavar="HOST:PORT",
                     help="address of process 0, the same for every process")
  group.add_argument("--num_processes", type=int, default=None,
                     help="number of processes of the run")
  group.add_argument("--process_id", type=int, default=None,
                     help="this process's index, 0 .. num_processes - 1")
