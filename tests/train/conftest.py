"""Fixtures shared by the training tests.

Compiling the tiny AlignPS train step takes tens of seconds on a 2-core CPU
and dominates these tests, so:
  * `make_tiny_config` / `tiny_config` train at a single scale bucket, so
    the step compiles once per mesh (the bucket mechanism itself is tested
    with the pipeline);
  * a persistent XLA compilation cache lives for the test session: every
    `train_and_evaluate` call jits its own step function, and the cache turns
    the second and later compilations of the same program (same config, same
    mesh) into a load from disk. Results are identical either way.

`tiny_synthetic_dir` builds the `tiny` synthetic dataset once per session, as
the fixture of the same name in tests/data/conftest.py does.
"""

from collections.abc import Callable

import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import pytest

from configs import synthetic_tiny
from data_builders import build

# The one bucket the tiny tests train at (height, width).
TINY_SCALE = (96, 96)


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
  data_dir = tmp_path_factory.mktemp("tfds_tiny_synthetic")
  build.build_dataset("synthetic_person_search", "tiny", data_dir=data_dir)
  return str(data_dir)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  options = {"jax_compilation_cache_dir":
                 str(tmp_path_factory.mktemp("xla_cache")),
             "jax_persistent_cache_min_compile_time_secs": 0.0,
             "jax_persistent_cache_min_entry_size_bytes": 0}
  before = {k: getattr(jax.config, k) for k in options}
  for k, v in options.items():
    jax.config.update(k, v)
  # The cache decides once per process whether it is on; start it afresh.
  compilation_cache.reset_cache()
  yield
  for k, v in before.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


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
