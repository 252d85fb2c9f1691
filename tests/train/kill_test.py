"""A real `train.py` process SIGKILLed while it writes a checkpoint resumes
exactly.

Three subprocesses of `train.py` on configs/synthetic_tiny.py (6 steps,
a checkpoint every 2):
  full     runs to the end;
  killed   is sent SIGKILL by itself at the moment orbax is about to rename
           the finished temporary directory of the step-4 checkpoint into
           place, i.e. in the middle of the checkpoint write (the wrapper
           below patches orbax's atomic rename in the child only; nothing in
           ps_jax knows about it);
  resumed  the same command again: it must resume from step 2 (the last
           complete checkpoint; the half-written step 4 is not listed) and
           end with the same state, byte for byte, and the same metrics as
           the full run.
The suite's persistent compilation cache (tests/conftest.py), which the three
processes share, keeps this to about one compilation.
"""

import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from ps_jax import checkpoint
from tests.train.conftest import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILL_AT = 4

# Runs train.py in this process after making orbax's atomic rename of the
# step-KILL_AT checkpoint kill the process instead.
_WRAPPER = """
import os, runpy, signal, sys
from orbax.checkpoint._src.path import atomicity

kill_at = int(os.environ["PS_JAX_TEST_KILL_AT"])
finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize_or_die(self, *args, **kwargs):
  if self.get().name.startswith(f"{kill_at}."):
    os.kill(os.getpid(), signal.SIGKILL)
  return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _train(workdir, data_dir, *, kill: bool
           ) -> subprocess.CompletedProcess:
  env = dict(os.environ, PS_JAX_TEST_KILL_AT=str(KILL_AT))
  args = [str(ROOT / "train.py"),
          "--config=" + str(ROOT / "configs" / "synthetic_tiny.py"),
          f"--config.dataset.data_dir={data_dir}",
          "--config.run.num_steps=6", "--config.run.checkpoint_every=2",
          "--config.run.log_every=1", "--config.run.eval_at_end=False",
          f"--workdir={workdir}"]
  cmd = ([sys.executable, "-c", _WRAPPER] if kill else [sys.executable])
  return subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900, check=False)




@pytest.fixture(scope="module")
def runs(tiny_synthetic_dir, tmp_path_factory):
  full = tmp_path_factory.mktemp("full")
  proc = _train(full, tiny_synthetic_dir, kill=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  killed = tmp_path_factory.mktemp("killed")
  proc = _train(killed, tiny_synthetic_dir, kill=True)
  listing = sorted(p.name for p in (killed / "ckpt").iterdir())
  after_kill = checkpoint.manager(killed, async_save=False).all_steps()
  resumed = _train(killed, tiny_synthetic_dir, kill=False)
  return {"full": full, "killed": killed, "kill_rc": proc.returncode,
          "kill_stderr": proc.stderr, "listing": listing,
          "after_kill": list(after_kill), "resumed": resumed}


def test_the_kill_came_during_the_step_4_write(runs):
  assert runs["kill_rc"] == -signal.SIGKILL, runs["kill_stderr"][-3000:]
  # Step 2 is complete; step 4 exists only as orbax's temporary directory.
  assert runs["after_kill"] == [2]
  assert any(name.startswith(f"{KILL_AT}.") and name != str(KILL_AT)
             for name in runs["listing"]), runs["listing"]


def test_the_resumed_run_equals_the_uninterrupted_run(runs, saved_state):
  assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
  assert "Resumed from" in runs["resumed"].stderr
  assert read_metrics(runs["killed"]) == read_metrics(runs["full"])
  a, b = saved_state(runs["full"], 6), saved_state(runs["killed"], 6)
  flat_a = {k: np.asarray(v) for k, v in _flatten(a)}
  flat_b = {k: np.asarray(v) for k, v in _flatten(b)}
  assert flat_a.keys() == flat_b.keys() and len(flat_a) > 10
  for k in flat_a:
    assert flat_a[k].tobytes() == flat_b[k].tobytes(), k


def _flatten(tree):
  """(path, numpy array) of every leaf of a restored state."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    yield jax.tree_util.keystr(path), np.asarray(leaf)
