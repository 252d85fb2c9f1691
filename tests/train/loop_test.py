"""Tests of the training loop (ps_jax/train/loop.py) on synthetic_tiny.

Each runs once per system of tests/train/conftest.py (AlignPS, OIM and the
toy system of docs/architecture.md), through the system contract only. Real runs
on the 8 simulated devices (the first two shared by several tests):
  full     30 steps without a break, every step logged, checkpoints every 8
           steps, then the end-to-end evaluation;
  resumed  the same config to step 16, killed after step 11 (`stop_after`,
           which saves a checkpoint as the periodic save would have) and
           restarted in a new call, which must pick up state, the system's
           extra state (AlignPS, OIM: the OIM memory) and data order from the
           checkpoint and so reproduce the full run bit for bit;
  poisoned NaN images from step 5 on: the loop must stop with
           NonFiniteLossError and keep the step-4 checkpoint.
All use one scale bucket and the same model, so the step is compiled once
per system and then read from the session's compilation cache
(tests/train/conftest.py).
"""

import json
import math

import jax
import numpy as np
import pytest

from configs import common
from ps_jax import checkpoint
from ps_jax import mesh as mesh_lib
from ps_jax.train import loop
from tests.train.conftest import read_metrics

NUM_STEPS = 30
CHECKPOINT_EVERY = 8
KILL_AFTER = 11
RESUME_TO = 16  # a checkpoint step of the full run


def _configure(config, num_steps):
  config.run.num_steps = num_steps
  config.run.log_every = 1
  config.run.checkpoint_every = CHECKPOINT_EVERY
  config.run.max_to_keep = 10
  return config




@pytest.fixture(scope="module")
def full(system, make_tiny_config, make_experiment, tmp_path_factory):
  config = _configure(make_tiny_config(), NUM_STEPS)
  config.run.eval_at_end = True
  workdir = tmp_path_factory.mktemp(f"full_{system}")
  results = loop.train_and_evaluate(make_experiment(system, config),
                                    str(workdir))
  return {"workdir": workdir, "results": results,
          "metrics": read_metrics(workdir)}


@pytest.fixture(scope="module")
def resumed(system, make_tiny_config, make_experiment, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"resumed_{system}")
  killed = loop.train_and_evaluate(
      make_experiment(system, _configure(make_tiny_config(), RESUME_TO)),
      str(workdir), stop_after=KILL_AFTER)
  saved = checkpoint.manager(workdir, async_save=False).all_steps()
  # A new experiment, iterator, state and jitted step, as in a new process.
  results = loop.train_and_evaluate(
      make_experiment(system, _configure(make_tiny_config(), RESUME_TO)),
      str(workdir))
  return {"workdir": workdir, "killed": killed, "saved_at_kill": saved,
          "results": results, "metrics": read_metrics(workdir)}


# Measured (means of the first and last 5 of 30 steps): AlignPS total 8.0
# -> 5.2, classification 0.90 -> 0.34, box GIoU 1.00 -> 0.60 (the total's
# step-to-step noise is about 1); OIM total 5.05 -> 4.31, box classification
# 0.68 -> 0.35, RPN objectness 0.69 -> 0.58; toy 0.84 -> 0.20.
LOSS_DROP = {"alignps": {"train/loss": 0.8, "train/loss_cls": 0.6,
                         "train/loss_box": 0.85},
             "oim": {"train/loss": 0.93, "train/loss_cls": 0.65,
                     "train/loss_rpn_cls": 0.92},
             "toy": {"train/loss": 0.5}}


def test_loss_goes_down(system, full):
  metrics = full["metrics"]
  assert sorted(metrics) == list(range(1, NUM_STEPS + 1))

  def mean(key, steps):
    return np.mean([metrics[s][key] for s in steps])

  first, last = range(1, 6), range(NUM_STEPS - 4, NUM_STEPS + 1)
  for key, factor in LOSS_DROP[system].items():
    assert mean(key, last) < factor * mean(key, first), key
  for row in metrics.values():
    assert row.get("train/reid_overflow", 0) == 0
    assert all(math.isfinite(v) for v in row.values())


def test_results_and_checkpoints(full):
  results = full["results"]
  assert results["step"] == NUM_STEPS
  want = full["metrics"][NUM_STEPS]
  assert {k: v for k, v in results["metrics"].items()
          if k not in ("train/steps_per_sec", "train/input_wait")} == want
  # The share of the time the loop waited for the input pipeline.
  assert 0 <= results["metrics"]["train/input_wait"] <= 1
  mngr = checkpoint.manager(full["workdir"], async_save=False)
  assert mngr.all_steps() == [8, 16, 24, 30]
  config, variables, step = checkpoint.restore_variables(full["workdir"])
  assert step == NUM_STEPS
  assert config["run"]["num_steps"] == NUM_STEPS
  assert set(variables) >= {"params"}


def test_evaluation_at_the_end(full):
  path = full["workdir"] / "eval_results.json"
  assert path.exists()
  saved = json.loads(path.read_text())
  assert saved == json.loads(json.dumps(full["results"]["eval"]))
  # The tiny dataset: CUHK protocol, galleries of 10 and 20, 10 queries.
  assert saved["protocol"] == "cuhk"
  assert saved["num_queries"] == 10
  assert saved["checkpoint"] == f"step_{NUM_STEPS}"
  for name in ("search/gallery_10", "search/gallery_20"):
    for key in ("mAP", "top1", "top5", "top10"):
      assert 0.0 <= saved[name][key] <= 1.0, (name, key)
  for name in ("detection/all", "detection/labeled"):
    for key in ("ap", "recall"):
      assert 0.0 <= saved[name][key] <= 1.0, (name, key)


def test_kill_saves_a_checkpoint(resumed):
  assert resumed["killed"]["step"] == KILL_AFTER
  assert resumed["saved_at_kill"] == [CHECKPOINT_EVERY, KILL_AFTER]
  assert resumed["results"]["step"] == RESUME_TO


def test_resumed_run_reproduces_the_uninterrupted_run(full, resumed):
  # Every step logged once (the restart went on from step 11, it did not
  # start over), with the same numbers as the full run: before the kill
  # this is determinism, after it the restored state, memory and data order.
  assert sorted(resumed["metrics"]) == list(range(1, RESUME_TO + 1))
  for step in range(1, RESUME_TO + 1):
    assert resumed["metrics"][step] == full["metrics"][step], step


def test_resumed_state_equals_the_uninterrupted_state(full, resumed,
                                                      saved_state):
  a = saved_state(full["workdir"], RESUME_TO)
  b = saved_state(resumed["workdir"], RESUME_TO)
  flat_a = dict(_flatten(a))
  flat_b = dict(_flatten(b))
  assert flat_a.keys() == flat_b.keys()
  assert any(k.startswith("['params']") for k in flat_a)
  for k in flat_a:
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)
  assert int(flat_a["['step']"]) == RESUME_TO


def _flatten(tree):
  """(path, numpy array) of every leaf; PRNG keys as their key data."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    yield jax.tree_util.keystr(path), np.asarray(leaf)


def test_extra_state_is_checkpointed(system, resumed, saved_state):
  state = saved_state(resumed["workdir"], RESUME_TO)
  if system in ("alignps", "oim"):  # the OIM memory was written and saved
    assert np.abs(np.asarray(state["extra"]["lut"])).sum() > 0
    assert int(state["extra"]["queue_ptr"]) >= 0
  else:
    assert state.get("extra") is None


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    system, make_experiment, tiny_config, tmp_path, monkeypatch):
  config = _configure(tiny_config, 8)
  config.run.checkpoint_every = 2
  real = mesh_lib.host_to_global
  calls = []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) >= 5:  # the batch of step 5
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return real(batch, mesh)

  monkeypatch.setattr(mesh_lib, "host_to_global", poisoned)
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"non-finite loss nan .*step 4"):
    loop.train_and_evaluate(make_experiment(system, config), str(tmp_path))
  assert len(calls) == 5  # stopped at once
  assert sorted(read_metrics(tmp_path)) == [1, 2, 3, 4]
  assert checkpoint.manager(tmp_path, async_save=False).all_steps() == [2, 4]
  _, variables, step = checkpoint.restore_variables(tmp_path)
  assert step == 4
  for k, v in _flatten(variables):
    assert np.isfinite(v).all(), k


def test_metrics_log_drops_steps_past_the_restored_checkpoint(tmp_path):
  # A run killed at step 10 after checkpointing step 6 logged steps 7-10; the
  # resumed run (from step 6) logs them again, so the stale lines must go.
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "train/loss": float(s)})
                          + "\n" for s in range(2, 12, 2)))
  writer = loop._MetricsWriter(tmp_path, start_step=6)
  writer.write(8, {"train/loss": -1.0})
  writer.close()
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [(r["step"], r["train/loss"]) for r in rows] == [
      (2, 2.0), (4, 4.0), (6, 6.0), (8, -1.0)]


def test_adamw_resumes_bit_for_bit(make_tiny_config, make_experiment,
                                   tmp_path):
  # The AdamW state (both moments and the count, per parameter group) is
  # checkpointed and restored like SGD's momentum: a run killed after step 3
  # and restarted logs what the uninterrupted run logs. The toy system keeps
  # this test to the loop and the optimizer.
  def config():
    c = _configure(make_tiny_config(), 6)
    with c.unlocked():
      c.optim = common.adamw(1e-3, weight_decay=0.05, warmup_steps=2,
                             decay_steps=(5,))
    return c

  loop.train_and_evaluate(make_experiment("toy", config()),
                          str(tmp_path / "full"))
  loop.train_and_evaluate(make_experiment("toy", config()),
                          str(tmp_path / "resumed"), stop_after=3)
  loop.train_and_evaluate(make_experiment("toy", config()),
                          str(tmp_path / "resumed"))
  full = read_metrics(tmp_path / "full")
  resumed = read_metrics(tmp_path / "resumed")
  assert sorted(resumed) == sorted(full) == list(range(1, 7))
  assert full[1]["train/loss"] != full[6]["train/loss"]
  for step in full:
    assert resumed[step] == full[step], step
