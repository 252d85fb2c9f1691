"""The multi-process flags of the argparse entry points (ps_jax/launch.py)."""
import argparse
import subprocess
import sys

from ps_jax import launch


def test_flags_parse_and_default_to_none():
  p = argparse.ArgumentParser()
  launch.add_distributed_args(p)
  args = p.parse_args([])
  assert (args.coordinator_address, args.num_processes,
          args.process_id) == (None, None, None)
  args = p.parse_args(["--coordinator_address=h:1", "--num_processes=2",
                       "--process_id=1"])
  assert (args.coordinator_address, args.num_processes,
          args.process_id) == ("h:1", 2, 1)


def test_importing_it_does_not_import_jax():
  # --help of the entry points stays fast: the module must not pull in jax.
  code = ("import sys; import ps_jax.launch; "
          "print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "False"
