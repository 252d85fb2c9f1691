"""Tests for ps_jax/experiment.py: a config becomes typed, checked objects
once."""

import json
import re

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
  config.model.depth = 50  # deformable stages need bottleneck blocks
  config.model.stage_with_dcn = [False, True, True, True]
  config.eval.gallery_sizes = [50, -1]
  config.optim.decay_steps = [700]
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


@pytest.mark.parametrize("section, key, value, expected", [
    ("run", "num_steps", 0, "an integer >= 1"),
    ("run", "checkpoint_every", 0, "an integer >= 1"),
    ("run", "log_every", -5, "an integer >= 1"),
    ("run", "max_to_keep", 0, "an integer >= 1"),
    ("run", "seed", 1.5, "an integer"),
    ("optim", "lr", -0.1, "a number >= 0"),
    ("optim", "momentum", 1.0, r"a number in \[0, 1\)"),
    ("optim", "weight_decay", -1e-4, "a number >= 0"),
    ("optim", "warmup_steps", -1, "an integer >= 0"),
    ("optim", "decay_steps", [700, 500], "increasing integers >= 1"),
    ("optim", "decay_factor", 0.0, r"a number in \(0, 1\]"),
    ("optim", "clip_norm", 0.0, "> 0, or None"),
    ("data", "batch_size", 0, "an integer >= 1"),
    ("data", "train_scales", [], "at least one image size"),
    ("data", "test_scale", [320, 0], "an image size .* positive integers"),
    ("data", "flip_prob", 1.5, r"a number in \[0, 1\]"),
    ("data", "normalization", "rgb", "one of"),
    ("data", "num_workers", -1, "an integer >= 0"),
    ("model", "reid_dim", -1, "an integer >= 1, or None"),
    ("model", "neck_channels", 0, "an integer >= 1"),
    ("model", "depth", 19, r"one of \(18, 34, 50, 101\)"),
    ("model", "style", "tf", "one of"),
    ("model", "backbone_norm", "batch", "one of"),
    ("model", "neck_fuse", "sum", "one of"),
    ("model", "neck_offset_init", "kaiming", "one of"),
    ("model", "head_sub_mean_region", "padded", "one of"),
    ("model", "dtype", "float8", "one of"),
    ("model", "strides", [8, 16], "8 \\* 2\\^l"),
    ("model", "stage_with_dcn", [False, True, True, True],
     "all False for depth 18 or 34"),
    ("loss", "oim_lut_scale", 0.0, "a number > 0"),
    ("loss", "oim_queue_size", -1, "an integer >= 0"),
    ("loss", "oim_momentum", 1.0, r"a number in \[0, 1\)"),
    ("loss", "center_sample_radius", 0.0, "> 0, or None"),
    ("loss", "w_oim", -1.0, "a number >= 0"),
    ("loss", "regress_ranges", [[-1, 1e8]], "one .* pair per level"),
    ("eval", "det_thresh", 1.5, r"a number in \[0, 1\]"),
    ("eval", "max_dets", 0, "an integer >= 1"),
    ("eval", "score_threshold", -0.1, r"a number in \[0, 1\]"),
    ("eval", "query_mode", "nearest", "'best_iou' or 'center'"),
    ("eval", "gallery_sizes", [50, 0], "gallery sizes >= 1 and -1"),
    ("eval", "duplicates", "twice", "one of .*'repeat'"),
    ("eval", "cws", "yes", "True or False"),
    ("eval", "prw_paper", 1, "True or False"),
    ("eval", "cbgm", "on", "True or False"),
    ("eval", "cbgm_k2", -3, "an integer >= 0"),
    ("optim", "norm_weight_decay", "yes", "True or False"),
    ("dataset", "name", "cuhk", "one of .*cuhk_sysu"),
])
def test_every_range_is_checked_before_the_dataset_is_built(
    tmp_path, section, key, value, expected):
  config = synthetic.get_config().to_dict()
  config["dataset"]["data_dir"] = str(tmp_path)
  config[section][key] = value
  # No builder is passed: a value checked too late would build the dataset.
  with pytest.raises(experiment.ConfigError) as e:
    experiment.from_config(config)
  message = str(e.value)
  assert message.startswith(f"{section}.{key}=")
  assert re.search(f"; expected {expected}", message), message
  assert not list(tmp_path.iterdir())


def test_the_global_batch_splits_over_the_devices():
  config = synthetic.get_config().to_dict()
  config["data"]["batch_size"] = 12  # 8 simulated devices (conftest.py)
  with pytest.raises(experiment.ConfigError,
                     match=r"data.batch_size=12; expected a multiple of the "
                           r"8 devices"):
    experiment.from_config(config, builder=_FakeBuilder())
  # Evaluation rounds its batch up to the devices instead.
  exp = experiment.from_config(config, builder=_FakeBuilder(),
                               for_training=False)
  assert exp.data.batch_size == 12


def test_command_line_forms_of_list_fields():
  config = synthetic.get_config().to_dict()
  config["data"]["train_scales"] = "96x128,128x160"
  config["data"]["test_scale"] = "128x160"
  config["eval"]["gallery_sizes"] = "50,full"
  exp = experiment.from_config(config, builder=_FakeBuilder())
  assert exp.data.train_scales == ((96, 128), (128, 160))
  assert exp.data.test_scale == (128, 160)
  assert exp.eval.gallery_sizes == (50, -1)
  config["data"]["train_scales"] = [96, 96]  # one bucket: =96x96
  config["eval"]["gallery_sizes"] = [100, "full"]
  exp = experiment.from_config(config, builder=_FakeBuilder())
  assert exp.data.train_scales == ((96, 96),)
  assert exp.eval.gallery_sizes == (100, -1)
  config["eval"]["gallery_sizes"] = "50,--1"
  with pytest.raises(experiment.ConfigError,
                     match=r"eval.gallery_sizes='50,--1'; expected"):
    experiment.from_config(config, builder=_FakeBuilder())


def test_dataset_metadata_without_identities_is_a_data_error():
  builder = _FakeBuilder()
  builder.info = type("info", (), {"metadata": {}})
  with pytest.raises(pipeline.DataError,
                     match="num_train_ids=None in its metadata.json.*"
                           "python -m data_builders build fake"):
    experiment.from_config(synthetic.get_config(), builder=builder)


def test_one_line_messages_and_the_traceback_switch(monkeypatch):
  error = ValueError("keys of the recipe:\n  a=1; was 2\n  b=3\n")
  assert experiment.one_line(error) == "keys of the recipe: a=1; was 2; b=3"
  assert experiment.one_line(KeyError()) == "KeyError"
  monkeypatch.delenv(experiment.TRACEBACK_ENV, raising=False)
  assert not experiment.show_traceback()
  monkeypatch.setenv(experiment.TRACEBACK_ENV, "1")
  assert experiment.show_traceback()
  monkeypatch.setenv(experiment.TRACEBACK_ENV, "0")
  assert not experiment.show_traceback()
  for error_type in (experiment.ConfigError, experiment.WorkdirError,
                     pipeline.DataError, protocols.EvalError):
    assert issubclass(error_type, experiment.USER_ERRORS)


def test_check_workdir(tmp_path, monkeypatch):
  experiment.check_workdir(tmp_path / "new" / "run")
  (tmp_path / "file").write_text("")
  with pytest.raises(experiment.WorkdirError, match="is a file, not a"):
    experiment.check_workdir(tmp_path / "file")
  with pytest.raises(experiment.WorkdirError, match="is a file"):
    experiment.check_workdir(tmp_path / "file" / "run")
  # Tests run as root, which may write anywhere: the OS is asked through
  # os.access, as for a read-only filesystem.
  monkeypatch.setattr(experiment.os, "access", lambda path, mode: False)
  assert not experiment.writable(tmp_path)
  with pytest.raises(experiment.WorkdirError,
                     match=f"workdir {tmp_path} is not writable"):
    experiment.check_workdir(tmp_path)
  with pytest.raises(experiment.WorkdirError,
                     match=f"cannot create workdir .*: {tmp_path} is not "
                           "writable"):
    experiment.check_workdir(tmp_path / "run")


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
  with pytest.raises(experiment.ConfigError, match="has no get_config"):
    experiment.load_config_file(str(tmp_path / "empty.py"))
  assert common.base().system == "alignps"


class _FakeBuilder:
  name = "fake"

  class info:  # pylint: disable=invalid-name
    metadata = {"num_train_ids": 3}


# The AlignPS paper configs (issue 12, item 4): the reference's behaviour.
# mmdet `img_scale` as (long, short) pairs; our buckets are (h, w).
_REFERENCE_IMG_SCALE = [(667, 400), (1000, 600), (1333, 800), (1500, 900),
                        (1666, 1000), (2000, 1200)]


def _paper_configs():
  # pylint: disable=g-import-not-at-top
  from configs import alignps_cuhk
  from configs import alignps_prw
  # pylint: enable=g-import-not-at-top
  return [("cuhk", alignps_cuhk.get_config()),
          ("cuhk:plus", alignps_cuhk.get_config("plus")),
          ("prw", alignps_prw.get_config()),
          ("prw:plus", alignps_prw.get_config("plus"))]


@pytest.mark.parametrize("name, config", _paper_configs(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_paper_configs_train_at_the_reference_scales(name, config):
  del name
  want = tuple((short, long) for long, short in _REFERENCE_IMG_SCALE)
  assert want == ((400, 667), (600, 1000), (800, 1333), (900, 1500),
                  (1000, 1666), (1200, 2000))
  data = pipeline.PipelineConfig.from_config(config.data)
  assert data.train_scales == want


def test_paper_cuhk_config_ranks_duplicated_entries_like_alignps():
  # pylint: disable=g-import-not-at-top
  from configs import alignps_cuhk
  from configs import alignps_prw
  # pylint: enable=g-import-not-at-top
  assert experiment.eval_options(
      alignps_cuhk.get_config()).duplicates == "repeat"
  assert experiment.eval_options(
      alignps_cuhk.get_config("plus")).duplicates == "repeat"
  # PRW has no gallery lists; the synthetic benchmark keeps SeqNet's rule.
  assert experiment.eval_options(
      alignps_prw.get_config()).duplicates == "seqnet"
  assert experiment.eval_options(synthetic.get_config()).duplicates == "seqnet"


def test_paper_configs_decay_norm_parameters_like_mmcv():
  for _, config in _paper_configs():
    assert experiment.optim_options(config).norm_weight_decay
  assert not experiment.optim_options(synthetic.get_config()).norm_weight_decay


def test_paper_configs_initialise_neck_offsets_like_alignps():
  for _, config in _paper_configs():
    assert experiment.build_system(
        config, num_ids=5).model.neck_offset_init == "xavier"
  assert experiment.build_system(
      synthetic.get_config(), num_ids=5).model.neck_offset_init == "zeros"


def test_paper_configs_resize_without_antialiasing():
  for _, config in _paper_configs():
    assert not pipeline.PipelineConfig.from_config(
        config.data).resize_antialias
  assert pipeline.PipelineConfig.from_config(
      synthetic.get_config().data).resize_antialias
  with pytest.raises(ValueError, match="data.resize_antialias=0"):
    pipeline.PipelineConfig.from_config(synthetic.get_config().data,
                                        resize_antialias=0)


def test_paper_configs_give_portrait_images_portrait_buckets():
  for _, config in _paper_configs():
    assert pipeline.PipelineConfig.from_config(config.data).portrait_buckets
  assert not pipeline.PipelineConfig.from_config(
      synthetic.get_config().data).portrait_buckets


def test_paper_configs_take_the_sub_mean_over_the_reference_padding():
  for _, config in _paper_configs():
    model = experiment.build_system(config, num_ids=5).model
    assert model.head_sub_mean_region == "image_pad32"
    assert model.needs_image_hw
  model = experiment.build_system(synthetic.get_config(), num_ids=5).model
  assert model.head_sub_mean_region == "canvas"
  assert not model.head_sub_mean_valid_only and not model.needs_image_hw


@pytest.mark.parametrize("name, config", _paper_configs(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_paper_configs_build_with_every_reference_option(name, config):
  num_ids = 5532 if name.startswith("cuhk") else 483
  system = experiment.build_system(config, num_ids=num_ids)
  assert system.num_ids == num_ids
  experiment.eval_options(config)
  experiment.optim_options(config)
  pipeline.PipelineConfig.from_config(config.data)


def test_paper_configs_train_with_sgd_and_the_main_job_with_adamw():
  for _, config in _paper_configs():
    assert experiment.optim_options(config).optimizer == "sgd"
  options = experiment.optim_options(synthetic.get_config())
  assert options.optimizer == "adamw"
  assert options.bias_lr_mult == 1.0 and options.weight_decay == 0.05
  with pytest.raises(ValueError, match="optim.optimizer='adagrad'"):
    config = synthetic.get_config()
    config.optim.optimizer = "adagrad"
    experiment.optim_options(config)


# The OIM configs (issue 13): the paper's recipe and SeqNet's baseline.


def _oim_configs():
  # pylint: disable=g-import-not-at-top
  from configs import oim_cuhk
  from configs import oim_prw
  from configs import oim_synthetic
  from configs import oim_synthetic_tiny
  # pylint: enable=g-import-not-at-top
  return [("cuhk", oim_cuhk.get_config()),
          ("cuhk:seqnet", oim_cuhk.get_config("seqnet")),
          ("prw", oim_prw.get_config()),
          ("prw:seqnet", oim_prw.get_config("seqnet")),
          ("synthetic", oim_synthetic.get_config()),
          ("synthetic_tiny", oim_synthetic_tiny.get_config())]


@pytest.mark.parametrize("name, config", _oim_configs(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_oim_configs_build_every_section(name, config):
  num_ids = {"cuhk": 5532, "prw": 483}.get(name.split(":")[0], 150)
  system = experiment.build_system(config, num_ids=num_ids)
  assert type(system).__name__ == "OIMSystem" and system.num_ids == num_ids
  experiment.eval_options(config)
  experiment.optim_options(config)
  pipeline.PipelineConfig.from_config(config.data)


def test_oim_paper_and_seqnet_recipes():
  # pylint: disable=g-import-not-at-top
  from configs import oim_cuhk
  from configs import oim_prw
  # pylint: enable=g-import-not-at-top
  caffe = oim_cuhk.get_config()
  system = experiment.build_system(caffe, num_ids=5532)
  model, loss = system.model, system.loss_options
  assert model.anchor_sizes == (128.0, 256.0, 512.0)
  assert model.rpn_channels == 512 and model.head_pool == "avg"
  assert model.style == "caffe" and caffe.data.normalization == "caffe_bgr"
  assert (loss.roi_samples, loss.roi_fg_fraction, loss.oim_scale,
          loss.oim_queue_size, loss.rpn_min_size) == (128, 0.25, 10.0, 5000,
                                                      16.0)
  assert (loss.rpn_pre_nms_top_k, loss.rpn_post_nms_top_k) == (12000, 2000)
  optim = experiment.optim_options(caffe)
  assert (optim.lr, optim.weight_decay, optim.decay_steps,
          caffe.run.num_steps, caffe.data.batch_size) == (
              0.001, 5e-4, (40000,), 50000, 2)
  predict = system.predict_options
  assert (predict.nms_iou, predict.rpn_pre_nms_top_k,
          predict.rpn_post_nms_top_k, predict.query_mode) == (0.4, 6000, 300,
                                                               "roi")
  assert experiment.eval_options(caffe).det_thresh == 0.5

  seqnet = oim_cuhk.get_config("seqnet")
  system = experiment.build_system(seqnet, num_ids=5532)
  assert system.model.anchor_sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
  assert system.model.rpn_channels is None
  assert system.model.head_pool == "max"
  assert system.loss_options.roi_fg_fraction == 0.5
  assert system.loss_options.oim_scale == 30.0
  optim = experiment.optim_options(seqnet)
  assert (optim.lr, optim.clip_norm, seqnet.data.batch_size) == (0.003, 10.0,
                                                                 5)
  assert seqnet.data.train_scales == ((900, 1500),)
  assert seqnet.run.num_steps == 20 * 2242
  assert optim.decay_steps == (16 * 2242,)

  assert oim_prw.get_config().loss.oim_queue_size == 500
  assert oim_prw.get_config("seqnet").run.num_steps == 18 * 1141
  with pytest.raises(ValueError, match="':seqnet'"):
    oim_cuhk.get_config("plus")
