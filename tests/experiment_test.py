"""Tests for ps_jax/experiment.py: a config becomes typed, built objects once."""

import json

import pytest

from configs import common
from configs import synthetic
from ps_jax import experiment
from ps_jax.data import pipeline
from ps_jax.eval import protocols
from ps_jax.systems import alignps
from ps_jax.train import optim


def test_from_config_builds_every_section(tiny_eval_config):
  exp = experiment.from_config(tiny_eval_config)
  assert exp.system_name == "alignps"
  assert isinstance(exp.system, alignps.AlignPSSystem)
  assert exp.system.num_ids == exp.num_ids > 0  # from the dataset metadata
  assert exp.system.predict_options.score_threshold == 0.0
  assert isinstance(exp.data, pipeline.PipelineConfig)
  assert isinstance(exp.optim, optim.OptimOptions)
  assert exp.eval == protocols.EvalOptions(det_thresh=0.0, gallery_sizes=())
  assert exp.dataset.label == "synthetic_person_search/tiny"
  assert exp.run.num_steps == tiny_eval_config.run.num_steps
  # The saved config is plain JSON and rebuilds the same experiment (this is
  # how evaluation and search rebuild a checkpoint's system).
  saved = json.loads(json.dumps(exp.config))
  again = experiment.from_config(saved, builder=exp.builder)
  assert again.system == exp.system and again.data == exp.data
  assert again.optim == exp.optim and again.eval == exp.eval


def test_list_valued_config_fields_become_tuples():
  config = synthetic.get_config()
  config.model.stage_with_dcn = [False, True, True, True]
  config.eval.gallery_sizes = [50, -1]
  system = experiment.build_system(config, num_ids=3)
  assert system.model.stage_with_dcn == (False, True, True, True)
  assert experiment.eval_options(config).gallery_sizes == (50, -1)
  assert experiment.optim_options(config).decay_steps == (700,)
  hash(system)  # a static argument of jitted functions


def test_configs_without_a_system_key_are_alignps():
  config = synthetic.get_config().to_dict()
  del config["system"]
  assert isinstance(experiment.build_system(config, num_ids=3),
                    alignps.AlignPSSystem)


@pytest.mark.parametrize("section, key, message", [
    ("optim", "lrr", r"config.optim: unknown key\(s\) \['lrr'\]"),
    ("run", "num_stepz", r"config.run: unknown key\(s\) \['num_stepz'\]"),
    ("model", "neck_chanels", r"model: unknown key\(s\) \['neck_chanels'\]"),
])
def test_unknown_keys_name_the_section_and_the_valid_keys(section, key,
                                                          message):
  config = synthetic.get_config().to_dict()
  config[section][key] = 1
  with pytest.raises(ValueError, match=message + ".*valid keys"):
    experiment.from_config(config, builder=_FakeBuilder())


def test_bad_run_values_fail_before_any_work():
  config = synthetic.get_config().to_dict()
  config["run"]["checkpoint_every"] = 0
  with pytest.raises(ValueError, match="run.checkpoint_every=0"):
    experiment.from_config(config, builder=_FakeBuilder())
  config = synthetic.get_config().to_dict()
  config["system"] = "seqnet"
  with pytest.raises(ValueError, match="system: expected one of"):
    experiment.from_config(config, builder=_FakeBuilder())


def test_load_config_file(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from configs import common\n"
                  "def get_config(arg=None):\n"
                  "  c = common.base()\n"
                  "  c.init_from = arg or ''\n"
                  "  return c\n")
  assert experiment.load_config_file(f"{path}:w.npz").init_from == "w.npz"
  assert experiment.load_config_file(str(path)).system == "alignps"
  with pytest.raises(FileNotFoundError, match="no config file"):
    experiment.load_config_file(str(tmp_path / "nope.py"))
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="has no get_config"):
    experiment.load_config_file(str(tmp_path / "empty.py"))
  assert common.base().system == "alignps"


class _FakeBuilder:
  name = "fake"

  class info:  # pylint: disable=invalid-name
    metadata = {"num_train_ids": 3}
