"""Tests of the train.py command line: config errors at start-up, --help.

Each test runs train.py in a subprocess, as a user would. A misspelt config
key must fail while the flags are parsed, before anything is built or
trained (so the workdir is never created), and the message must name the
valid keys at the level where the path goes wrong. ml_collections raises the
error in two places: while the flag is defined (no --config on the command
line: the default config gets the overrides) and while flags are parsed
(with --config); both are covered. A value out of range, or a workdir that
cannot be used, is one line on stderr (`train.py: error: ...`), exit status
1, before any dataset is built; PS_JAX_TRACEBACK=1 shows the traceback.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from configs import synthetic
from configs import synthetic_tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
  return subprocess.run([sys.executable, str(ROOT / "train.py"), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


@pytest.mark.parametrize("config_args,get_config", [
    (["--config=configs/synthetic_tiny.py"], synthetic_tiny.get_config),
    (["--config", "configs/synthetic_tiny.py"], synthetic_tiny.get_config),
    ([], synthetic.get_config),  # the default config
], ids=["config=", "config_space", "default"])
def test_misspelt_key_fails_at_start_up_naming_valid_keys(
    tmp_path, config_args, get_config):
  workdir = tmp_path / "run"
  proc = _train(*config_args, "--config.optim.lrr=1", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "--config.optim.lrr" in proc.stderr
  assert "valid keys of config.optim" in proc.stderr
  for key in get_config().optim.keys():
    assert key in proc.stderr, key
  assert not workdir.exists()  # it stopped before training


def test_misspelt_section_names_the_top_level_keys(tmp_path):
  workdir = tmp_path / "run"
  proc = _train("--config=configs/synthetic_tiny.py", "--config.optimm.lr=1",
                f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "valid keys of config:" in proc.stderr
  for key in synthetic_tiny.get_config().keys():
    assert key in proc.stderr, key
  assert not workdir.exists()


def test_help():
  proc = _train("--help")
  # absl prints the help and exits with status 1, by design.
  assert "Traceback" not in proc.stderr, proc.stderr
  out = proc.stdout + proc.stderr
  assert "Train (and then evaluate) a person-search model." in out
  assert "--config" in out and "--workdir" in out
  assert "--allow_config_change" in out and "PS_JAX_TRACEBACK=1" in out
  assert "--config.data.train_scales=256x256,320x320" in out


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
  """The `train.py: error: ` line, checking it is the only output of the
  failure (no traceback) and the exit status."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines()
            if l.startswith("train.py: error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0][len("train.py: error: "):]


@pytest.mark.parametrize("override, message", [
    ("--config.run.num_steps=0", "run.num_steps=0; expected an integer >= 1"),
    ("--config.model.reid_dim=-1",
     "model.reid_dim=-1; expected an integer >= 1, or None"),
    # The list syntax parses; the value is then checked.
    ("--config.data.train_scales=96x96,0x128",
     "data.train_scales=[0, 128]; expected an image size"),
], ids=["num_steps", "reid_dim", "train_scales"])
def test_a_bad_value_is_one_line_before_anything_is_built(
    tmp_path, override, message):
  workdir = tmp_path / "run"
  proc = _train("--config=configs/synthetic_tiny.py",
                f"--config.dataset.data_dir={tmp_path / 'tfds'}", override,
                f"--workdir={workdir}")
  assert _one_line_error(proc).startswith(message)
  assert not workdir.exists() and not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("config, message", [
    ("configs/synthetic_tiny.py", "expected an existing weights file, or ''"),
    ("configs/ide_synthetic_tiny.py", "a trained detector's workdir"),
])
def test_init_from_must_exist(tmp_path, config, message):
  """A folder is no weights file; for IDE a folder must hold a checkpoint
  (IDE_det)."""
  folder = tmp_path / "not_a_run"
  folder.mkdir()
  workdir = tmp_path / "run"
  proc = _train(f"--config={config}", f"--config.init_from={folder}",
                f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                f"--workdir={workdir}")
  assert message in _one_line_error(proc)
  assert not (tmp_path / "tfds").exists()


def _logged_config(stderr: str) -> dict:
  """The config train.py logs at start-up (YAML), as plain data."""
  lines = stderr.splitlines()
  start = next(i for i, l in enumerate(lines) if l.endswith("] Config:"))
  body = []
  for line in lines[start + 1:]:
    if re.match(r"[IWEF]\d{4} |train\.py: ", line):
      break
    body.append(line)
  return yaml.unsafe_load("\n".join(body))


def test_list_fields_are_overridden_with_commas(tmp_path):
  proc = _train("--config=configs/synthetic_tiny.py",
                "--config.data.train_scales=96x96,128x160",
                "--config.data.test_scale=(128, 160)",
                "--config.eval.gallery_sizes=10,-1",
                "--config.optim.decay_steps=4,5",
                "--config.model.stage_with_dcn=False,False,False,False",
                "--config.eval.det_thresh=1.5",  # fails after the others
                f"--workdir={tmp_path / 'run'}")
  assert _one_line_error(proc) == ("eval.det_thresh=1.5; expected a number "
                                   "in [0, 1]")
  config = _logged_config(proc.stderr)
  assert config["data"]["train_scales"] == ((96, 96), (128, 160))
  assert config["data"]["test_scale"] == (128, 160)
  assert config["eval"]["gallery_sizes"] == (10, -1)
  assert config["optim"]["decay_steps"] == (4, 5)
  assert config["model"]["stage_with_dcn"] == (False,) * 4
  # A single bucket.
  proc = _train("--config=configs/synthetic_tiny.py",
                "--config.data.train_scales=96x96",
                "--config.eval.det_thresh=1.5",
                f"--workdir={tmp_path / 'run'}")
  assert _logged_config(proc.stderr)["data"]["train_scales"] == (96, 96)


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "run").write_text("")
  proc = _train("--config=configs/synthetic_tiny.py",
                f"--workdir={tmp_path / 'run'}")
  assert _one_line_error(proc) == (f"workdir {tmp_path / 'run'} is a file, "
                                   "not a folder")


def test_traceback_on_request(tmp_path):
  proc = _train("--config=configs/synthetic_tiny.py",
                "--config.run.checkpoint_every=0",
                f"--workdir={tmp_path / 'run'}", PS_JAX_TRACEBACK="1")
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr
  assert "ConfigError: run.checkpoint_every=0" in proc.stderr
