"""Fixtures shared by the training tests, and the systems they run over.

Every test of the trainer that is not about one method runs once per system
in `SYSTEMS`: a new system inherits the 1-vs-8-device step test, the
loss-decrease test and the kill-and-resume test by adding a case here (its
tiny experiment).

Compiling the tiny AlignPS train step takes tens of seconds on a 2-core CPU
and dominates these tests, so:
  * the tiny configs train at a single scale bucket, so the step compiles
    once per mesh (the bucket mechanism itself is tested with the pipeline);
  * every `train_and_evaluate` call jits its own step function, and the
    suite's persistent compilation cache (tests/conftest.py) turns the
    second and later compilations of the same program (same system, same
    mesh) into a load from disk. Results are identical either way.
"""

import json
import pathlib
from collections.abc import Callable

import ml_collections
import orbax.checkpoint as ocp
import pytest

from configs import oim_synthetic_tiny
from configs import synthetic_tiny
from ps_jax import checkpoint
from ps_jax import experiment

# The one bucket the tiny tests train at (height, width).
TINY_SCALE = (96, 96)
# The systems the trainer's tests run over (see the module docstring).
SYSTEMS = ("alignps", "oim", "toy")


@pytest.fixture(scope="session")
def make_tiny_config(tiny_synthetic_dir
                     ) -> Callable[[], ml_collections.ConfigDict]:
  """Returns a function making a fresh configs/synthetic_tiny.py config on
  the session's dataset, with one scale bucket and no evaluation at the end;
  locked, so a misspelt key in a test fails."""
  def make():
    config = synthetic_tiny.get_config()
    config.lock()
    config.dataset.data_dir = tiny_synthetic_dir
    config.data.train_scales = [TINY_SCALE]
    config.run.eval_at_end = False
    return config
  return make


@pytest.fixture
def tiny_config(make_tiny_config) -> ml_collections.ConfigDict:
  """A fresh `make_tiny_config()` for one test to modify."""
  return make_tiny_config()


@pytest.fixture(scope="session")
def make_experiment(toy_system_cls):
  """make(system_name, config) -> the tiny experiment of that system.

  'alignps' is the config's own system (configs/synthetic_tiny.py); 'oim'
  takes the system, model, loss and predict keys of
  configs/oim_synthetic_tiny.py and keeps the rest of the config (data,
  optimizer, run, protocol keys); 'toy' is the worked example of
  docs/architecture.md, passed to the trainer as a built system on the same
  data, optimizer and run settings.
  """
  def make(name: str, config: ml_collections.ConfigDict):
    if name == "alignps":
      return experiment.from_config(config)
    if name == "oim":
      return experiment.from_config(as_oim(config))
    if name == "toy":
      return experiment.from_config(config, system=toy_system_cls())
    raise ValueError(f"no tiny experiment for system {name!r}")
  return make


def as_oim(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of an AlignPS tiny config that trains the tiny OIM instead."""
  oim = oim_synthetic_tiny.get_config()
  config = ml_collections.ConfigDict(config.to_dict())
  eval_keys = ("det_thresh", "gallery_sizes", "duplicates")
  for key in eval_keys:
    if key in config.eval:
      oim.eval[key] = config.eval[key]
  config.system = "oim"
  config.model, config.loss, config.eval = oim.model, oim.loss, oim.eval
  config.lock()
  return config


@pytest.fixture(scope="module", params=SYSTEMS)
def system(request) -> str:
  """The name of the system a parametrised trainer test runs with."""
  return request.param


@pytest.fixture(scope="session")
def saved_state() -> Callable[..., object]:
  """`read(workdir, step)`: the whole TrainState saved at `step`, as the raw
  tree of arrays on disk (no target, so nothing is cast or reshaped)."""

  def read(workdir, step):
    mngr = checkpoint.manager(workdir, async_save=False)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    mngr.close()
    return restored["state"]

  return read


def read_metrics(workdir) -> dict[int, dict[str, float]]:
  """metrics.jsonl by step, without the wall-clock rate; a step logged
  twice fails the test."""
  out = {}
  path = pathlib.Path(workdir) / "metrics.jsonl"
  for line in path.read_text().splitlines():
    row = json.loads(line)
    step = row.pop("step")
    assert step not in out, f"step {step} logged twice"
    row.pop("train/steps_per_sec")
    row.pop("train/input_wait")
    out[step] = row
  return out
