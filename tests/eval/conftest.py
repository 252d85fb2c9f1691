"""Shared fixtures of the evaluation tests: a tiny dataset and checkpoint.

Built once per test session (compilation dominates the cost): the `tiny`
synthetic dataset in a temporary directory, and a workdir holding a real
training checkpoint (`checkpoint.save` of the train loop's initial state,
written as `train_and_evaluate` writes it, without compiling a train step).
Its config keeps every candidate detection (score_threshold 0) so the
untrained weights still produce boxes.
"""

import shutil

import pytest

from configs import synthetic_tiny
from data_builders import build as data_build
from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax import models
from ps_jax.train import loop

TINY_STEP = 3


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
  config = synthetic_tiny.get_config()
  config.dataset.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.eval.score_threshold = 0.0
  config.eval.det_thresh = 0.0
  return config


@pytest.fixture(scope="session")
def tiny_builder(tiny_config):
  return data_build.load_builder(**tiny_config.dataset)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  return models.build_model(tiny_config.model)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_config, tiny_builder, tiny_model):
  workdir = tmp_path_factory.mktemp("run")
  num_ids = int(tiny_builder.info.metadata["num_train_ids"])
  state, _, _ = loop.init_state(tiny_config, tiny_model, num_ids,
                                mesh_lib.make_mesh())
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, TINY_STEP, state, None, tiny_config)
  mngr.wait_until_finished()
  mngr.close()
  return workdir


@pytest.fixture(scope="session")
def tiny_variables(tiny_workdir):
  _, variables, step = checkpoint.restore_variables(tiny_workdir)
  assert step == TINY_STEP
  return variables


@pytest.fixture
def workdir(tmp_path, tiny_workdir):
  """A private copy of the tiny workdir (its checkpoint, no eval outputs)."""
  copy = tmp_path / "workdir"
  shutil.copytree(tiny_workdir / "ckpt", copy / "ckpt")
  return copy
