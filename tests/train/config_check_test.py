"""Tests of ps_jax/train/config_check.py and of its use by the train loop.

The comparison is tested on plain dicts. The loop is tested on a workdir
holding one saved checkpoint of the tiny AlignPS (no training): a changed
recipe or model is refused before the loop builds its state, and the
opt-in resumes, logs and records the change.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from ps_jax import checkpoint
from ps_jax import experiment
from ps_jax import mesh as mesh_lib
from ps_jax.data import pipeline
from ps_jax.train import config_check
from ps_jax.train import loop
from ps_jax.train import step as step_lib

SAVED_STEP = 3


def _config(**sections):
  base = {"system": "alignps", "init_from": "",
          "dataset": {"name": "synthetic_person_search", "config": "tiny",
                      "data_dir": "/a", "manual_dir": ""},
          "data": {"batch_size": 8, "max_boxes": 4,
                   "train_scales": [[96, 96]], "normalization": "caffe_bgr",
                   "num_threads": 2},
          "model": {"reid_dim": 64, "strides": [8, 16]},
          "loss": {"oim_queue_size": 16, "w_cls": 1.0},
          "optim": {"lr": 0.01, "decay_steps": [700]},
          "run": {"num_steps": 6, "log_every": 2, "checkpoint_every": 3,
                  "eval_at_end": True},
          "eval": {"det_thresh": 0.5}}
  for name, values in sections.items():
    base[name] = {**base[name], **values}
  return base


@pytest.mark.parametrize("key, kind", [
    ("system", "model"), ("model.reid_dim", "model"),
    ("model.anything_new", "model"), ("dataset.name", "model"),
    ("dataset.config", "model"), ("loss.oim_queue_size", "model"),
    ("loss.oim_queue_dims", "model"), ("data.normalization", "model"),
    ("loss.w_cls", "recipe"), ("optim.lr", "recipe"),
    ("run.num_steps", "recipe"), ("run.checkpoint_every", "recipe"),
    ("run.seed", "recipe"), ("data.batch_size", "recipe"),
    ("data.max_boxes", "recipe"), ("data.num_workers", "recipe"),
    ("eval.det_thresh", "recipe"), ("new_section.key", "recipe"),
    ("dataset.data_dir", "harmless"), ("dataset.manual_dir", "harmless"),
    ("init_from", "harmless"), ("run.log_every", "harmless"),
    ("run.eval_at_end", "harmless"), ("data.num_threads", "harmless"),
    ("data.prefetch", "harmless"), ("data.eval_batch_size", "harmless"),
])
def test_kinds(key, kind):
  assert config_check.kind_of(key) == kind


def test_same_config_and_json_round_trip_are_no_change():
  saved = _config()
  current = _config(data={"train_scales": [(96, 96)]},
                    optim={"decay_steps": (700,)})
  assert config_check.diff(saved, current) == []
  assert config_check.check(saved, current, step=3, where="w") == []


def test_harmless_differences_are_accepted_silently():
  current = _config(dataset={"data_dir": "/b"}, run={"log_every": 1,
                                                     "eval_at_end": False},
                    data={"num_threads": 8})
  current["init_from"] = "/weights.npz"
  assert config_check.check(_config(), current, step=3, where="w") == []


def test_recipe_change_is_refused_naming_every_key_and_both_values():
  current = _config(optim={"lr": 0.02}, run={"num_steps": 10})
  with pytest.raises(config_check.ConfigChangeError) as e:
    config_check.check(_config(), current, step=3, where="/w/ckpt")
  message = str(e.value)
  assert "checkpoint at step 3 in /w/ckpt" in message
  assert ("the checkpoint was made with optim.lr=0.01; this run has 0.02"
          in message)
  assert ("the checkpoint was made with run.num_steps=6; this run has 10"
          in message)
  assert "allow_config_change" in message


def test_recipe_change_with_the_opt_in_is_returned():
  current = _config(optim={"lr": 0.02})
  changes = config_check.check(_config(), current, step=3, where="w",
                               allow_change=True)
  assert [(c.key, c.saved, c.current, c.kind) for c in changes] == [
      ("optim.lr", 0.01, 0.02, "recipe")]


def test_model_change_is_refused_even_with_the_opt_in():
  current = _config(model={"reid_dim": 32, "strides": [8]},
                    loss={"oim_queue_size": 32}, optim={"lr": 0.02})
  del current["model"]["reid_dim"]
  current["model"]["extra_key"] = True
  with pytest.raises(config_check.ConfigChangeError) as e:
    config_check.check(_config(), current, step=3, where="w",
                       allow_change=True)
  message = str(e.value)
  for line in ("model.reid_dim=64; this run has <absent>",
               "model.extra_key=<absent>; this run has true",
               "model.strides=[8, 16]; this run has [8]",
               "loss.oim_queue_size=16; this run has 32",
               "optim.lr=0.01; this run has 0.02"):
    assert line in message, line
  assert "new workdir" in message


def test_write_config_and_record_changes(tmp_path):
  path = config_check.write_config(tmp_path, _config())
  assert json.loads(path.read_text()) == _config()
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
  change = config_check.Change("optim.lr", 0.01, 0.02, "recipe")
  config_check.record_changes(tmp_path, 3, [change])
  config_check.record_changes(tmp_path, 5, [change])
  rows = [json.loads(l) for l in
          (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [3, 5]
  assert rows[0]["changes"] == {"optim.lr": [0.01, 0.02]}


@pytest.fixture(scope="module")
def saved_run(make_tiny_config, tmp_path_factory):
  """A workdir with the tiny AlignPS's initial state, data iterator and
  config saved at step SAVED_STEP (= run.num_steps: a resume has nothing
  left to train)."""
  config = make_tiny_config()
  config.run.num_steps = SAVED_STEP
  exp = experiment.from_config(config)
  workdir = tmp_path_factory.mktemp("saved_run")
  state, _, _ = step_lib.init_state(exp.system, exp.optim, exp.run.seed,
                                    exp.data.train_scales[0],
                                    mesh_lib.make_mesh())
  # As if trained to SAVED_STEP: the loop resumes from the state's step.
  state = state.replace(step=jax.device_put(
      np.asarray(SAVED_STEP, state.step.dtype), state.step.sharding))
  data_iter = pipeline.train_iterator(
      pipeline.data_source(exp.builder, "train"), exp.data,
      seed=exp.run.seed)
  mngr = checkpoint.manager(workdir)
  checkpoint.save(mngr, SAVED_STEP, state, data_iter, exp.config)
  mngr.wait_until_finished()
  mngr.close()
  return workdir


@pytest.fixture
def resume_config(make_tiny_config):
  config = make_tiny_config()
  config.run.num_steps = SAVED_STEP
  return config


def _no_build(*args, **kwargs):
  raise AssertionError("the state was built before the config check")


@pytest.mark.parametrize("allow", [False, True])
def test_resume_with_another_model_is_refused_before_building(
    saved_run, resume_config, monkeypatch, allow):
  resume_config.model.reid_dim = 32
  monkeypatch.setattr(step_lib, "init_state", _no_build)
  with pytest.raises(config_check.ConfigChangeError,
                     match=r"made with model.reid_dim=16; this run has 32"):
    loop.train_and_evaluate(experiment.from_config(resume_config),
                            str(saved_run), allow_config_change=allow)


def test_resume_with_another_lr_is_refused_before_building(
    saved_run, resume_config, monkeypatch):
  resume_config.optim.lr = 0.02
  monkeypatch.setattr(step_lib, "init_state", _no_build)
  with pytest.raises(config_check.ConfigChangeError,
                     match=r"made with optim.lr=0.01; this run has 0.02"):
    loop.train_and_evaluate(experiment.from_config(resume_config),
                            str(saved_run))
  assert not (saved_run / "config_changes.jsonl").exists()


def test_resume_with_another_lr_and_the_opt_in_is_recorded(
    saved_run, resume_config, tmp_path):
  workdir = tmp_path / "run"  # a private copy: this run writes into it
  shutil.copytree(saved_run, workdir)
  resume_config.optim.lr = 0.02
  resume_config.dataset.data_dir += "/"  # harmless: not recorded
  results = loop.train_and_evaluate(experiment.from_config(resume_config),
                                    str(workdir), allow_config_change=True)
  assert results["step"] == SAVED_STEP
  rows = [json.loads(l) for l in
          (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert len(rows) == 1
  assert rows[0]["step"] == SAVED_STEP
  assert rows[0]["changes"] == {"optim.lr": [0.01, 0.02]}
  saved = json.loads((workdir / "config.json").read_text())
  assert saved == experiment.plain_config(resume_config)


def test_one_scale_bucket_spelt_two_ways_is_no_change():
  # --config.data.train_scales=96x96 gives the pair; a config file the list.
  saved = {"data": {"train_scales": [[96, 96]]}}
  assert not config_check.diff(saved, {"data": {"train_scales": (96, 96)}})
  changed = config_check.diff(saved, {"data": {"train_scales": (96, 128)}})
  assert [c.key for c in changed] == ["data.train_scales"]
