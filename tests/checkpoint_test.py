"""Tests of ps_jax/checkpoint.py: checkpoints that heal.

One real run of the toy system of docs/architecture.md (cheap to compile)
on configs/synthetic_tiny.py writes checkpoints at steps 2 and 4. Each test
damages a private copy of it the way disks and people do (what orbax writes
in a step directory: `state/` with `_METADATA`, `manifest.ocdbt` and the
OCDBT data files, `data_iter/process_0-of-1.json`, `config/metadata`, and
the step's `_CHECKPOINT_METADATA`), then resumes: the damaged step 4 is
moved aside, the run goes on from step 2 and ends with the same state as
the undamaged run.
"""

import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import synthetic_tiny
from ps_jax import checkpoint
from ps_jax import experiment
from ps_jax.train import config_check
from ps_jax.train import loop

NUM_STEPS = 4


@pytest.fixture(scope="module")
def toy_experiment(tiny_synthetic_dir, toy_system_cls):
  config = synthetic_tiny.get_config()
  config.dataset.data_dir = tiny_synthetic_dir
  config.data.train_scales = [(96, 96)]
  config.run.num_steps = NUM_STEPS
  config.run.checkpoint_every = 2
  config.run.eval_at_end = False
  return experiment.from_config(config, system=toy_system_cls())


@pytest.fixture(scope="module")
def pristine(toy_experiment, tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("pristine")
  loop.train_and_evaluate(toy_experiment, str(workdir))
  assert _steps(workdir) == [2, 4]
  return workdir


@pytest.fixture
def workdir(pristine, tmp_path) -> pathlib.Path:
  """A private copy of the pristine run, to damage."""
  copy = tmp_path / "run"
  shutil.copytree(pristine, copy)
  return copy


def _steps(workdir):
  mngr = checkpoint.manager(workdir, async_save=False)
  steps = list(mngr.all_steps())
  mngr.close()
  return steps


def _state(workdir, step):
  """The saved TrainState at `step` as {path: numpy array}."""
  mngr = checkpoint.manager(workdir, async_save=False)
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(state)}


def _files(directory, pattern):
  files = [p for p in directory.glob(pattern) if p.is_file()]
  assert files, f"no {pattern} in {directory}"
  return files


def _garble(path):
  path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8 + 1))


def _truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


# name -> how a step's directory is damaged.
DAMAGES = {
    "state _METADATA deleted":
        lambda d: (d / "state" / "_METADATA").unlink(),
    "state _METADATA garbled": lambda d: _garble(d / "state" / "_METADATA"),
    "state data files truncated":
        lambda d: [_truncate(p) for p in _files(d, "state/**/d/*")],
    "state manifest garbled":
        lambda d: [_garble(p) for p in _files(d, "state/**/manifest.ocdbt")],
    "data_iter garbage":
        lambda d: (d / "data_iter" / "process_0-of-1.json").write_text(
            "{not json"),
    "config item deleted": lambda d: shutil.rmtree(d / "config"),
    "config metadata garbled": lambda d: _garble(d / "config" / "metadata"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes(
    damage, workdir, pristine, toy_experiment, caplog):
  DAMAGES[damage](workdir / "ckpt" / "4")
  with caplog.at_level(logging.WARNING):
    results = loop.train_and_evaluate(toy_experiment, str(workdir))
  assert results["step"] == NUM_STEPS
  # Steps 3 and 4 ran again from step 2 and saved step 4 afresh: the state
  # is the undamaged run's, bit for bit.
  assert _steps(workdir) == [2, 4]
  want, got = _state(pristine, 4), _state(workdir, 4)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(want[k], got[k], err_msg=k)
  # The damaged directory is kept, under a name orbax does not list that
  # says which item failed.
  item = damage.split()[0]
  aside = list((workdir / "ckpt").glob(f"4.corrupt-{item}-*"))
  assert len(aside) == 1
  reason = (aside[0] / checkpoint.REASON_FILE).read_text()
  assert reason.startswith("step 4 did not load")
  assert f"\n{item}: " in reason
  assert "The checkpoint at step 4 in" in caplog.text
  assert f"does not load ({item}: " in caplog.text
  assert f"aside to {aside[0]}" in caplog.text


def test_every_checkpoint_damaged_is_one_clear_error(workdir,
                                                     toy_experiment):
  DAMAGES["state _METADATA garbled"](workdir / "ckpt" / "4")
  DAMAGES["config item deleted"](workdir / "ckpt" / "2")
  with pytest.raises(checkpoint.CheckpointError) as e:
    loop.train_and_evaluate(toy_experiment, str(workdir))
  lines = str(e.value).splitlines()
  assert lines[0].startswith(
      f"no checkpoint in {workdir / 'ckpt'} can be restored.")
  assert lines[1].startswith("  step 4: state: JSONDecodeError")
  assert lines[2].startswith("  step 2: config: KeyError")
  # Nothing is moved when nothing loads.
  assert not list((workdir / "ckpt").glob("*.corrupt-*"))
  assert _steps(workdir) == [2, 4]


def test_a_missing_checkpoint_metadata_file_is_not_damage(workdir,
                                                          toy_experiment):
  # Orbax restores the items without the step's _CHECKPOINT_METADATA.
  (workdir / "ckpt" / "4" / "_CHECKPOINT_METADATA").unlink()
  results = loop.train_and_evaluate(toy_experiment, str(workdir))
  assert results["step"] == NUM_STEPS
  assert not list((workdir / "ckpt").glob("*.corrupt-*"))


def test_restore_variables_skips_a_damaged_latest_checkpoint(workdir,
                                                             caplog):
  DAMAGES["state data files truncated"](workdir / "ckpt" / "4")
  with caplog.at_level(logging.WARNING):
    config, variables, step = checkpoint.restore_variables(workdir)
  assert step == 2
  assert config["run"]["num_steps"] == NUM_STEPS
  assert "params" in variables
  assert "The checkpoint at step 4 in" in caplog.text
  assert len(list((workdir / "ckpt").glob("4.corrupt-state-*"))) == 1
  assert _steps(workdir) == [2]


def test_restore_variables_needs_no_data_iterator(workdir):
  DAMAGES["data_iter garbage"](workdir / "ckpt" / "4")
  _, _, step = checkpoint.restore_variables(workdir)
  assert step == 4
  assert not list((workdir / "ckpt").glob("*.corrupt-*"))


def test_restore_variables_of_a_damaged_given_step_moves_nothing(workdir):
  DAMAGES["config item deleted"](workdir / "ckpt" / "4")
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"the checkpoint at step 4 in .* does not load: "
                           r"config: KeyError"):
    checkpoint.restore_variables(workdir, step=4)
  assert _steps(workdir) == [2, 4]


def test_the_config_of_the_step_restored_is_the_one_checked(workdir,
                                                            toy_experiment):
  # Step 2 was made with another learning rate (a resume allowed to change
  # it); step 4, made with this run's, is damaged: the resume from step 2
  # must be refused like any other recipe change.
  config_file = workdir / "ckpt" / "2" / "config" / "metadata"
  saved = json.loads(config_file.read_text())
  saved["optim"]["lr"] = 0.5
  config_file.write_text(json.dumps(saved))
  DAMAGES["state _METADATA garbled"](workdir / "ckpt" / "4")
  with pytest.raises(config_check.ConfigChangeError,
                     match=r"at step 2 .*\n.*\n  the checkpoint was made "
                           r"with optim.lr=0.5; this run has 0.01"):
    loop.train_and_evaluate(toy_experiment, str(workdir))
