"""Shared fixtures of the evaluation tests.

They view the session's tiny dataset and tiny checkpoint (tests/conftest.py:
`tiny_eval_config`, `tiny_experiment`, `tiny_checkpoint`) under the names
these tests use.
"""

import shutil

import pytest

from ps_jax import checkpoint
from ps_jax.eval import run as run_lib


@pytest.fixture(scope="session")
def tiny_config(tiny_eval_config):
  return tiny_eval_config


@pytest.fixture(scope="session")
def tiny_workdir(tiny_checkpoint):
  return tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_variables(tiny_checkpoint):
  _, variables, _ = checkpoint.restore_variables(tiny_checkpoint)
  return variables


@pytest.fixture(scope="session")
def tiny_data(tiny_experiment):
  exp = tiny_experiment
  return run_lib.EvalData(exp.builder, exp.dataset.label, exp.data)


@pytest.fixture
def workdir(tmp_path, tiny_checkpoint):
  """A private copy of the tiny workdir (its checkpoint, no eval outputs)."""
  copy = tmp_path / "workdir"
  shutil.copytree(tiny_checkpoint / "ckpt", copy / "ckpt")
  return copy
