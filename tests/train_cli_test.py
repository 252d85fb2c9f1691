"""Tests of the train.py command line: config errors at start-up, --help.

Each test runs train.py in a subprocess, as a user would. A misspelt config
key must fail while the flags are parsed, before anything is built or
trained (so the workdir is never created), and the message must name the
valid keys at the level where the path goes wrong. ml_collections raises the
error in two places: while the flag is defined (no --config on the command
line: the default config gets the overrides) and while flags are parsed
(with --config); both are covered.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import synthetic
from configs import synthetic_tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
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
