"""The two-step experiment end to end (ps_jax/train/stages.py): a finished
detector stage is reused, a missing re-ID stage is trained, the pair is
evaluated with and without CWS, and the eval entry point rebuilds it from
the workdir's config.json."""

import json

import ml_collections
import numpy as np
import pytest

from configs import common
from configs import ide_synthetic_tiny
from ps_jax import experiment
from ps_jax.eval import __main__ as eval_main
from ps_jax.train import stages

# The shared tiny AlignPS checkpoint is at this step (tests/conftest.py).
from tests.conftest import TINY_STEP


def _config(tiny_eval_config, tiny_synthetic_dir, detector_workdir,
            reid_workdir):
  detector = ml_collections.ConfigDict(tiny_eval_config.to_dict())
  detector.run.num_steps = TINY_STEP  # the shared checkpoint is finished
  reid = ide_synthetic_tiny.get_config()
  reid.run.num_steps = 1
  c = common.two_step(detector, reid, detector_workdir=str(detector_workdir),
                      reid_workdir=str(reid_workdir), max_crops=4)
  c.dataset.data_dir = tiny_synthetic_dir  # the default of both stages
  c.eval.gallery_sizes = (10,)
  return c


@pytest.fixture(scope="module")
def run(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
        tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two_step")
  config = _config(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
                   workdir / "ide")
  exp = experiment.from_config(config)
  return config, workdir, stages.train_and_evaluate(exp, workdir)


def test_trains_the_missing_stage_and_evaluates_with_and_without_cws(run):
  config, workdir, results = run
  assert results["stages"]["detector"] == "reused"
  assert results["stages"]["reid"]["step"] == 1
  assert results["steps"] == {"detector": TINY_STEP, "reid": 1}
  ev = results["eval"]
  assert ev["model"] == f"two_step_detector{TINY_STEP}_reid1"
  assert {"search/gallery_10", "search/gallery_10+cws"} <= set(ev)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["system"] == "two_step"
  assert saved["reid"]["model"] == experiment.plain_config(
      config.reid)["model"]


def test_a_second_run_reuses_both_stages(run, tiny_eval_config):
  config, workdir, first = run
  again = stages.train_and_evaluate(experiment.from_config(config), workdir)
  assert again["stages"] == {"detector": "reused", "reid": "reused"}
  for key in ("search/gallery_10", "search/gallery_10+cws"):
    assert again["eval"][key]["mAP"] == first["eval"][key]["mAP"]


def test_the_eval_entry_point_rebuilds_the_pair_from_the_workdir(run,
                                                                 capsys):
  _, workdir, first = run
  assert eval_main.main(["--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  assert f"model=two_step_detector{TINY_STEP}_reid1" in out
  assert "gallery_10+cws" in out
  results = json.loads((workdir / "eval_results.json").read_text())
  assert (results["search/gallery_10"]["mAP"]
          == first["eval"]["search/gallery_10"]["mAP"])


def test_a_reused_stage_of_another_model_is_refused(tiny_eval_config,
                                                    tiny_synthetic_dir,
                                                    tiny_checkpoint,
                                                    tmp_path):
  # The re-ID stage pointed at the detector's finished run.
  config = _config(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
                   tiny_checkpoint)
  config.reid.run.num_steps = TINY_STEP
  exp = experiment.from_config(config)
  with pytest.raises(experiment.ConfigError,
                     match="reid_workdir=.* holds a checkpoint of another "
                           "system"):
    stages.train_and_evaluate(exp, tmp_path)
  # Empty workdirs: <workdir>/detector and <workdir>/reid, here missing.
  exp = experiment.from_config(_config(tiny_eval_config, tiny_synthetic_dir,
                                       "", ""))
  with pytest.raises(FileNotFoundError, match="detector: no checkpoint in "
                     ".*nothing/detector/ckpt"):
    experiment.restore_stages(exp, tmp_path / "nothing")


def test_config_errors_name_the_field(tiny_eval_config, tiny_synthetic_dir,
                                      tiny_checkpoint, tmp_path):
  config = _config(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
                   tmp_path)
  config.reid.data.normalization = "caffe_bgr"
  with pytest.raises(experiment.ConfigError,
                     match="reid.data.normalization.*the detector's"):
    experiment.from_config(config)
  config = _config(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
                   tmp_path)
  config.eval.query_mode = "center"
  with pytest.raises(experiment.ConfigError, match="no predict keys"):
    experiment.from_config(config)
  config = _config(tiny_eval_config, tiny_synthetic_dir, tiny_checkpoint,
                   tmp_path)
  config.model.max_crops = 0
  with pytest.raises(experiment.ConfigError, match="model.max_crops"):
    experiment.from_config(config)


def test_ps_search_loads_the_pair_from_the_workdir(run):
  """`ps-search` indexes with the pair: a query box's embedding is the
  re-ID net's, of the dimension it gives."""
  from ps_jax.search import cli  # pylint: disable=g-import-not-at-top
  _, workdir, _ = run
  predictor = cli.load_predictor(str(workdir), None)
  assert predictor.step == TINY_STEP  # the detector's
  image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), np.uint8)
  emb = predictor.embed_query(image, (10, 10, 40, 90))
  assert emb.shape == (predictor.system.reid.embedding_dim,)
  assert abs(np.linalg.norm(emb) - 1) < 1e-5


@pytest.mark.parametrize("name, arg", [("two_step_prw", ""),
                                       ("two_step_prw", "det"),
                                       ("two_step_cuhk", ""),
                                       ("two_step_cuhk", "det"),
                                       ("two_step_synthetic", "")])
def test_the_shipped_configs_pair_compatible_stages(name, arg):
  """What `from_config` checks before loading a dataset, on the configs
  whose datasets need a download: both stages build, share the input
  normalization, and the pair's eval holds protocol keys only."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config(
      *([arg] if arg else []))
  det = experiment.build_system(config.detector, 5)
  reid = experiment.build_system(config.reid, 5)
  assert det.embedding_dim > 0 and reid.embedding_dim > 0
  assert (config.detector.data.normalization
          == config.reid.data.normalization)
  assert set(config.eval) <= {"det_thresh", "gallery_sizes", "duplicates",
                              "cws", "prw_paper"}
  assert config.eval.cws
  assert config.eval.prw_paper == (name != "two_step_cuhk")
  if arg == "det":  # IDE_det: the re-ID stage starts from the detector
    assert config.reid.init_from == config.detector_workdir
    assert config.reid.model.depth == 50 and config.reid.model.norm == (
        config.detector.model.backbone_norm)
