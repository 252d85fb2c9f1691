"""Test set-up shared by the whole suite.

Every test sees 8 simulated CPU devices, so sharding code runs exactly as on an
8-accelerator host. The flags must be set before jax is imported anywhere.

The tests' arrays are tiny, so their time is XLA's compilation, and most of
that is LLVM optimising the generated loops: at backend optimization level 1
a GLAD init compiles in 11 s instead of 50 s (level 2, the default), with the
same values. Level 0 was as fast, but moved float rounding enough to flip a
discrete choice in the OIM step (1 and 8 devices then disagreed by 3 %).
Set --xla_backend_optimization_level yourself to test another level.
"""
import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = (
    _flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run, shared by
# pytest-xdist's workers and by the train.py, eval and ps-search processes
# the tests start: many tests compile the same tiny programs (one system's
# step on one mesh), and every compilation after the first is a read from
# disk of the same executable. The first process to import this file makes
# the directory (pytest-xdist's controller, before it starts the workers,
# which inherit the variable) and removes it when the run ends. Set
# JAX_COMPILATION_CACHE_DIR yourself to use (and keep) your own.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="ps_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# Grain's worker processes read absl flags; pytest does not parse them.
from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

from configs import oim_synthetic_tiny  # noqa: E402
from configs import synthetic_tiny  # noqa: E402
from data_builders import build  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The step of the shared tiny checkpoint (`tiny_checkpoint`).
TINY_STEP = 3


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the `tiny` synthetic dataset, built once."""
  data_dir = tmp_path_factory.mktemp("tfds_tiny_synthetic")
  build.build_dataset("synthetic_person_search", "tiny", data_dir=data_dir)
  return str(data_dir)


@pytest.fixture(scope="session")
def tiny_eval_config(tiny_synthetic_dir):
  """configs/synthetic_tiny.py on the session's dataset, keeping every
  candidate detection (score_threshold 0) so untrained weights still
  produce boxes. Locked: a misspelt key in a test fails."""
  config = synthetic_tiny.get_config()
  config.lock()
  config.dataset.data_dir = tiny_synthetic_dir
  config.eval.score_threshold = 0.0
  config.eval.det_thresh = 0.0
  return config


@pytest.fixture(scope="session")
def tiny_experiment(tiny_eval_config):
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  return experiment.from_config(tiny_eval_config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_experiment) -> pathlib.Path:
  """The one tiny checkpoint the evaluation and search tests share.

  A training workdir holding a real checkpoint at step TINY_STEP: the train
  loop's initial state of `tiny_eval_config`, saved as the loop saves it
  (`checkpoint.save`), without compiling a train step. What is tested with
  it (restoring, predicting, evaluating, indexing, searching) does not
  depend on how far the weights were trained.
  """
  return _initial_checkpoint(tiny_experiment,
                             tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def tiny_oim_checkpoint(tmp_path_factory, tiny_synthetic_dir) -> pathlib.Path:
  """`tiny_checkpoint` for configs/oim_synthetic_tiny.py (every candidate
  kept; detections embedded at their own boxes)."""
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  config = oim_synthetic_tiny.get_config()
  config.lock()
  config.dataset.data_dir = tiny_synthetic_dir
  config.eval.score_threshold = 0.0
  config.eval.det_thresh = 0.0
  config.eval.embed_at = "box"
  return _initial_checkpoint(experiment.from_config(config),
                             tmp_path_factory.mktemp("tiny_oim_run"))


def _initial_checkpoint(exp, workdir: pathlib.Path) -> pathlib.Path:
  """`workdir` with the train loop's initial state of `exp` saved as the
  loop saves it, at step TINY_STEP, without compiling a train step."""
  # pylint: disable=g-import-not-at-top
  from ps_jax import checkpoint
  from ps_jax import mesh as mesh_lib
  from ps_jax.train import step as step_lib
  # pylint: enable=g-import-not-at-top
  state, _, _ = step_lib.init_state(exp.system, exp.optim, exp.run.seed,
                                    exp.data.train_scales[0],
                                    mesh_lib.make_mesh())
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, TINY_STEP, state, None, exp.config)
  mngr.wait_until_finished()
  mngr.close()
  return workdir


def load_toy_system() -> type:
  """The toy system of docs/architecture.md, executed from the doc itself,
  so the worked example there is the code the tests train."""
  text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
  match = re.search(r"```python\n(# toy_system\.py\n.*?)```", text, re.S)
  assert match, "docs/architecture.md lost its toy_system.py example"
  namespace: dict = {}
  code = compile(match.group(1), "docs/architecture.md:toy_system.py",
                 "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  return namespace["ToySystem"]


@pytest.fixture(scope="session")
def toy_system_cls() -> type:
  return load_toy_system()


class TwoProcesses:
  """Launches a command as 2 processes under jax.distributed (each with
  `local_devices` CPU devices, --coordinator_address, --num_processes and
  --process_id appended) and waits for them; `logs` shows their output."""

  def __init__(self, local_devices: int = 4, env: dict | None = None):
    import os  # pylint: disable=g-import-not-at-top,redefined-outer-name
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    # This suite's optimization level (see the top), its own device count.
    level = re.findall(r"--xla_backend_optimization_level=\S+",
                       os.environ.get("XLA_FLAGS", ""))
    self.env["XLA_FLAGS"] = " ".join(level[-1:] + [
        f"--xla_force_host_platform_device_count={local_devices}"])

  def start(self, args, log):
    """Popen of `python <args...>` for processes 0 and 1; output to
    `<log>.0` and `<log>.1`."""
    # pylint: disable=g-import-not-at-top
    import socket
    import subprocess
    import sys
    # pylint: enable=g-import-not-at-top
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    procs = []
    for pid in range(2):
      out = open(f"{log}.{pid}", "w", encoding="utf-8")
      procs.append(subprocess.Popen(
          [sys.executable] + [str(a) for a in args] + [
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2", f"--process_id={pid}"],
          cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT))
    return procs

  @staticmethod
  def logs(log, tail: int | None = 2500) -> str:
    """Both processes' output (the last `tail` characters of each; None:
    all of it)."""
    texts = [pathlib.Path(f"{log}.{p}").read_text(encoding="utf-8")
             for p in range(2)]
    return "\n".join(f"--- process {p} ---\n" + (
        t if tail is None else t[-tail:]) for p, t in enumerate(texts))

  def wait(self, procs, log, timeout: float = 900):
    """Waits for both; fails the test (with their logs) on a timeout or a
    non-zero exit."""
    import subprocess  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    deadline = time.time() + timeout
    for p in procs:
      try:
        p.wait(max(deadline - time.time(), 1))
      except subprocess.TimeoutExpired:
        for q in procs:
          q.kill()
        pytest.fail(f"2-process run timed out after {timeout} s\n"
                    f"{self.logs(log)}")
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}\n{self.logs(log)}"


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Tests that start subprocesses of their own (several jax processes)
  run first, so that pytest-xdist's other worker runs the rest meanwhile
  instead of waiting for them at the end."""
  items.sort(key=lambda item: "multiprocess_test" not in item.nodeid)
