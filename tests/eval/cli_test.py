"""Tests for `python -m ps_jax.eval`, run in-process through `main(argv)`.

Errors a user can fix are one line on stderr and exit status 1; a finished
run on read-only storage is evaluated with --output and nothing is written
into its workdir.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as spsb)
from ps_jax import experiment
from ps_jax.data import pipeline
from ps_jax.eval import __main__ as eval_main

# The synthetic builder's version: the folder its datasets are built in.
_VERSION = str(spsb.SyntheticPersonSearch.VERSION)

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_help(capsys):
  with pytest.raises(SystemExit) as e:
    eval_main.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--workdir", "--config", "--step", "--untrained",
               "--baseline", "--det_thresh", "--query_mode",
               "--gallery_sizes", "--cws", "--no_cache", "eval_results.json"):
    assert flag in out


def test_evaluates_the_checkpoint_with_overrides(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--gallery_sizes",
                         "20,full", "--det_thresh", "0.3", "--cws"]) == 0
  out = capsys.readouterr().out
  assert "model=step_3" in out and "full_set(+10)" in out
  assert "gallery_20+cws" in out and "full_set(+10)+cws" in out
  assert "gallery_10" not in out and "detection" in out
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["det_thresh"] == 0.3 and results["step"] == 3
  assert {"search/gallery_20", "search/full_set", "search/gallery_20+cws",
          "search/full_set+cws"} <= set(results)
  assert f"results: {workdir / 'eval_results.json'}" in out


def test_prw_paper_protocol_rows_and_curve(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--prw_paper",
                         "--gallery_sizes", "10",
                         "--output", str(workdir / "paper.json")]) == 0
  out = capsys.readouterr().out
  assert "PRW paper protocol" in out and "all_detections" in out
  results = json.loads((workdir / "paper.json").read_text())
  assert results["prw_paper/num_queries"] >= 1
  assert {"prw_paper/all_detections", "prw_paper/curve"} <= set(results)
  assert results["prw_paper_chart"] == str(workdir / "paper_prw_paper.png")
  assert (workdir / "paper_prw_paper.png").is_file()


def test_cbgm_rows(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--cbgm",
                         "--gallery_sizes", "10",
                         "--output", str(workdir / "cbgm.json")]) == 0
  assert "gallery_10+cbgm" in capsys.readouterr().out
  results = json.loads((workdir / "cbgm.json").read_text())
  assert {"search/gallery_10", "search/gallery_10+cbgm"} <= set(results)


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


def _error(capsys) -> str:
  err = capsys.readouterr().err
  prefix = "python -m ps_jax.eval: error: "
  lines = [l for l in err.splitlines() if l.startswith(prefix)]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0][len(prefix):]


def _files(path: pathlib.Path) -> dict[str, float]:
  return {str(p.relative_to(path)): p.stat().st_mtime
          for p in path.rglob("*")}


def test_workdir_that_is_a_file(tmp_path, capsys):
  (tmp_path / "run").write_text("")
  assert eval_main.main(["--workdir", str(tmp_path / "run")]) == 1
  assert _error(capsys) == f"workdir {tmp_path / 'run'} is a file, not a folder"


def test_a_read_only_workdir_is_evaluated_with_output(workdir, tmp_path,
                                                      capsys, monkeypatch):
  # Tests run as root, which may write anywhere: the workdir is made
  # read-only through os.access, which is what the CLI asks (a read-only
  # filesystem answers the same for root). test_read_only_mount below
  # checks a real one where it can.
  access = os.access
  monkeypatch.setattr(
      os, "access", lambda path, mode: access(path, mode) and (
          not mode & os.W_OK or not str(path).startswith(str(workdir))))
  before = _files(workdir)
  assert eval_main.main(["--workdir", str(workdir),
                         "--gallery_sizes", "10"]) == 1
  assert _error(capsys) == (f"workdir {workdir} is not writable: pass "
                            "--output FILE for the results (new predictions "
                            "are then cached beside it)")
  out = tmp_path / "out" / "r.json"
  assert eval_main.main(["--workdir", str(workdir), "--output", str(out),
                         "--gallery_sizes", "10"]) == 0
  results = json.loads(out.read_text())
  assert results["step"] == 3
  assert results["cache"].startswith(str(out.parent / "eval_cache"))
  assert (pathlib.Path(results["cache"]) / "gallery.npz").exists()
  assert _files(workdir) == before  # nothing written into the workdir


def test_read_only_mount(workdir, tmp_path):
  """The workdir on a really read-only filesystem (a bind mount in a private
  mount namespace); skipped where mounting is not allowed."""
  mount = tmp_path / "ro"
  mount.mkdir()
  out = tmp_path / "out" / "r.json"
  script = (f"mount --bind -o ro {workdir} {mount} && "
            f"mount -o remount,bind,ro {mount} || exit 77; "
            f"touch {mount}/probe 2>/dev/null && exit 77; "
            f"{sys.executable} -m ps_jax.eval --workdir {mount} "
            f"--output {out} --gallery_sizes 10")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  try:
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO,
                          env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  except FileNotFoundError:
    pytest.skip("no unshare command")
  if proc.returncode == 77 or "unshare: " in proc.stderr:
    pytest.skip("read-only bind mounts are not allowed here")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "workdir" in proc.stderr and "is not writable" in proc.stderr
  assert json.loads(out.read_text())["step"] == 3
  assert not (workdir / "eval_cache").exists()


def _dataset_copy(tiny_config, tmp_path) -> pathlib.Path:
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_config.dataset.data_dir, data_dir)
  return data_dir


def test_a_corrupt_shard_names_the_file_and_the_rebuild_command(
    workdir, tiny_config, tmp_path, capsys):
  data_dir = _dataset_copy(tiny_config, tmp_path)
  shard = (data_dir / "synthetic_person_search" / "tiny" / _VERSION /
           "synthetic_person_search-query.array_record-00000-of-00001")
  with open(shard, "r+b") as f:
    f.truncate(1000)
  args = ["--workdir", str(workdir), "--data_dir", str(data_dir)]
  assert eval_main.main(args) == 1
  assert _error(capsys) == (
      f"{shard} is truncated or not an ArrayRecord file; rebuild the "
      "dataset: python -m data_builders build synthetic_person_search "
      f"--config tiny --data_dir {data_dir} --overwrite")
  with pytest.raises(pipeline.DataError):  # -v: the traceback
    eval_main.main(args + ["-v"])


def test_a_garbage_dataset_info_is_named(workdir, tiny_config, tmp_path,
                                         capsys):
  data_dir = _dataset_copy(tiny_config, tmp_path)
  info = (data_dir / "synthetic_person_search" / "tiny" / _VERSION /
          "dataset_info.json")
  info.write_text("garbage")
  assert eval_main.main(["--workdir", str(workdir), "--data_dir",
                         str(data_dir)]) == 1
  message = _error(capsys)
  assert message.startswith(f"{info} cannot be read (")
  assert message.endswith(
      "rebuild the dataset: python -m data_builders build "
      f"synthetic_person_search --config tiny --data_dir {data_dir} "
      "--overwrite")


def test_a_bad_value_in_the_saved_config_is_one_line(workdir, capsys):
  assert eval_main.main(["--workdir", str(workdir), "--det_thresh",
                         "1.5"]) == 1
  assert _error(capsys) == "eval.det_thresh=1.5; expected a number in [0, 1]"
  assert isinstance(experiment.ConfigError("x"), experiment.USER_ERRORS)
