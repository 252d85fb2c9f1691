"""Tests for `python -m ps_jax.eval`, run in-process through `main(argv)`."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from ps_jax.eval import __main__ as eval_main

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_help(capsys):
  with pytest.raises(SystemExit) as e:
    eval_main.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--workdir", "--config", "--step", "--untrained",
               "--baseline", "--det_thresh", "--query_mode",
               "--gallery_sizes", "--no_cache", "eval_results.json"):
    assert flag in out


def test_evaluates_the_checkpoint_with_overrides(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--gallery_sizes",
                         "20,full", "--det_thresh", "0.3"]) == 0
  out = capsys.readouterr().out
  assert "model=step_3" in out and "full_set(+10)" in out
  assert "gallery_10" not in out and "detection" in out
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["det_thresh"] == 0.3 and results["step"] == 3
  assert {"search/gallery_20", "search/full_set"} <= set(results)
  assert f"results: {workdir / 'eval_results.json'}" in out


def test_untrained_is_evaluated_beside_the_checkpoint(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--untrained",
                         "--gallery_sizes", "10"]) == 0
  assert "model=untrained" in capsys.readouterr().out
  results = json.loads((workdir / "eval_results_untrained.json").read_text())
  assert results["model"] == "untrained" and results["step"] is None
  assert not (workdir / "eval_results.json").exists()


def test_python_m_on_one_device_reads_an_eight_device_checkpoint(workdir):
  # The checkpoint was written from 8 (simulated) devices; a process with
  # one device must still restore it (no orbax topology mismatch).
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "ps_jax.eval", "--workdir", str(workdir),
       "--gallery_sizes", "10"], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "gallery_10" in proc.stdout
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["step"] == 3 and "search/gallery_20" not in results


def test_baseline_from_a_config_file_without_checkpoint(
    tmp_path, tiny_config, capsys):
  out_file = tmp_path / "r.json"
  assert eval_main.main([
      "--workdir", str(tmp_path / "new"), "--baseline", "color_hist",
      "--config", str(REPO / "configs" / "synthetic_tiny.py"),
      "--data_dir", tiny_config.dataset.data_dir,
      "--output", str(out_file)]) == 0
  assert "model=baseline_color_hist" in capsys.readouterr().out
  assert json.loads(out_file.read_text())["search/gallery_10"]["mAP"] > 0


@pytest.mark.parametrize("args, message", [
    ([], "no checkpoint in .*missing/ckpt: train first"),
    (["--untrained"], "no checkpoint .*or pass --config"),
    (["--baseline", "color_hist", "--config", "nope.py"],
     "no config file nope.py"),
])
def test_clear_errors_without_a_checkpoint(tmp_path, capsys, args, message):
  missing = tmp_path / "missing"
  assert eval_main.main(["--workdir", str(missing)] + args) == 1
  err = capsys.readouterr().err
  assert err.startswith("python -m ps_jax.eval: error: ")
  assert re.search(message, err), err
  assert not missing.exists()


def test_bad_option_values(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--gallery_sizes",
                         "7"]) == 1
  assert "gallery sizes [7] are not in the dataset" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    eval_main.main(["--workdir", str(workdir), "--gallery_sizes", "big"])
  assert "'big' is not a gallery size" in capsys.readouterr().err
  assert eval_main.main(["--workdir", str(workdir), "--step", "99"]) == 1
  assert "no checkpoint for step 99" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    eval_main.main(["--workdir", str(workdir), "--untrained", "--baseline",
                    "color_hist"])
