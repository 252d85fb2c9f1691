"""The trainer on the crop re-ID systems (IDE, MLFN, GLAD).

The trainer's system-parametrised tests (step_test.py, loop_test.py) run on
the scene pipeline; these run the same promises on the crop pipeline and the
tiny synthetic crops (`synthetic_reid/tiny`, built in the session's data
dir):
  * two steps on 8 simulated devices equal the steps on 1 (losses, and the
    parameter updates leaf by leaf), for MLFN at 128 x 64 and width 1/8.
    In the tiny configs (64 x 32, width 1/16) GroupNorm normalises one or
    two channels over a 2 x 1 map, which turns the last-bit differences
    between a batch of 8 and 8 batches of 1 into differences of 0.1-2 % in
    the features. The batches get a little Gaussian noise: the synthetic
    crops are flat-coloured (and random translation pads them with a
    constant), so many 3 x 3 max-pool windows hold equal maxima, and which
    of them receives the gradient depends on last-bit differences of the
    forward pass. GLAD (ResNet trunk, same size) does not pass: without the
    noise its first gradients differ by 1-3 % between 1 and 8 devices (both
    valid gradients of the max); with it, or with average pools in place
    of the max pools, they agree to 5e-5, and from equal parameters its
    second gradients agree to 1.4e-4, yet after two train steps the
    updates of its first stage's norms differ by about 6 %, not explained
    yet (docs/reid.md);
  * a GLAD run stopped after a checkpoint and resumed logs and ends exactly
    as the uninterrupted run, and its loss goes down;
  * the evaluation at the end writes Market-1501 mAP and rank-1.
"""

import importlib
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from configs import common
from ps_jax import checkpoint
from ps_jax import experiment
from ps_jax import mesh as mesh_lib
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.search import cli as search_cli
from ps_jax.train import loop
from ps_jax.train import step as step_lib
from tests.train.conftest import read_metrics

NUM_STEPS = 16
STOP_AFTER = 8


def _config(name, data_dir, num_steps=NUM_STEPS, sgd=False,
            well_conditioned=False):
  config = importlib.import_module(f"configs.{name}_synthetic_tiny"
                                   ).get_config()
  if well_conditioned:  # (module docstring)
    config.data.image_hw = (128, 64)
    config.model.width_multiplier = 0.125
    if name == "glad":
      config.model.trunk = "resnet"
      config.model.part_hw = (64, 64)
  if sgd:
    # Adam divides each gradient by its own magnitude, which turns the
    # reduction-order noise of a near-zero gradient into a visible update;
    # SGD keeps the comparison of gradients direct.
    config.optim = common.sgd(0.01, weight_decay=5e-4, warmup_steps=0,
                              decay_steps=())
  config.dataset.data_dir = data_dir
  config.run.num_steps = num_steps
  config.run.log_every = 1
  config.run.checkpoint_every = STOP_AFTER
  config.lock()
  return config


@pytest.mark.parametrize("name", ["mlfn"])
def test_step_matches_on_one_and_eight_devices(name, tiny_synthetic_dir):
  exp = experiment.from_config(_config(name, tiny_synthetic_dir, sgd=True,
                                       well_conditioned=True))
  mesh8 = mesh_lib.make_mesh()
  assert mesh8.size == 8
  state, tx, schedule = step_lib.init_state(exp.system, exp.optim,
                                            exp.run.seed, exp.init_hw, mesh8)
  it = crops.train_iterator(pipeline.data_source(exp.builder, "train"),
                            exp.data, seed=0)
  batches = [next(it), next(it)]
  assert batches[0]["has_keypoints"].all()
  noise = np.random.default_rng(5)  # no tied max-pool maxima (docstring)
  for b in batches:
    b["image"] = b["image"] + noise.normal(0, 0.05, b["image"].shape).astype(
        np.float32)
  host = jax.tree.map(lambda x: np.array(x, copy=True), state)
  # Kept apart: on one CPU device the donated state may share host's memory.
  before = jax.tree.map(lambda x: np.array(x, copy=True), host.params)
  out = {}
  for n in (8, 1):
    mesh = mesh_lib.make_mesh(n)
    step = step_lib.make_train_step(exp.system, tx, schedule, mesh, seed=0)
    s = jax.device_put(host, mesh_lib.replicated(mesh))
    losses = []
    for b in batches:
      s, metrics = step(s, mesh_lib.host_to_global(b, mesh))
      losses.append(float(metrics["loss"]))
    out[n] = (losses, jax.device_get(s.params))
  np.testing.assert_allclose(out[8][0], out[1][0], rtol=1e-5)
  # The updates agree leaf by leaf to a small fraction of their size (the
  # parameters themselves would hide a wrong update under the initial values).
  worst = []
  for (path, a), b, p0 in zip(jax.tree_util.tree_leaves_with_path(out[8][1]),
                              jax.tree.leaves(out[1][1]),
                              jax.tree.leaves(before)):
    d8, d1 = np.asarray(a) - p0, np.asarray(b) - p0
    # The floor, 1e-7 per entry, covers updates that are rounding noise:
    # the zero-initialised branches' first ones, and the stem conv's bias,
    # whose gradient under the per-channel norm after it is exactly 0.
    size = np.linalg.norm(d1) + 1e-7 * np.sqrt(d1.size)
    worst.append((float(np.linalg.norm(d8 - d1) / size),
                  jax.tree_util.keystr(path)))
  assert max(worst)[0] < 1e-3, sorted(worst)[-5:]




@pytest.fixture(scope="module")
def glad_runs(tiny_synthetic_dir, tmp_path_factory):
  full = tmp_path_factory.mktemp("glad_full")
  results = loop.train_and_evaluate(
      experiment.from_config(_config("glad", tiny_synthetic_dir)), str(full))
  resumed = tmp_path_factory.mktemp("glad_resumed")
  config = _config("glad", tiny_synthetic_dir)
  loop.train_and_evaluate(experiment.from_config(config), str(resumed),
                          stop_after=STOP_AFTER)
  loop.train_and_evaluate(experiment.from_config(config), str(resumed))
  return {"full": full, "resumed": resumed, "results": results}


def test_resumed_run_equals_the_uninterrupted_run(glad_runs):
  full = read_metrics(glad_runs["full"])
  resumed = read_metrics(glad_runs["resumed"])
  assert sorted(full) == sorted(resumed) == list(range(1, NUM_STEPS + 1))
  for step in full:
    assert full[step] == resumed[step], step
  _, a, _ = checkpoint.restore_variables(glad_runs["full"])
  _, b, _ = checkpoint.restore_variables(glad_runs["resumed"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_loss_goes_down(tiny_synthetic_dir):
  """Ten train steps on one batch of tiny GLAD crops: the summed loss of
  the four streams falls (the 16-step runs above move it too little at
  the tiny config's lr to tell from noise)."""
  exp = experiment.from_config(_config("glad", tiny_synthetic_dir))
  mesh = mesh_lib.make_mesh(1)
  state, tx, schedule = step_lib.init_state(exp.system, exp.optim,
                                            exp.run.seed, exp.init_hw, mesh)
  it = crops.train_iterator(pipeline.data_source(exp.builder, "train"),
                            exp.data, seed=0)
  batch = mesh_lib.host_to_global(next(it), mesh)
  step = step_lib.make_train_step(exp.system, tx, schedule, mesh, seed=0)
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.97 * losses[0], losses


def test_ps_search_indexes_and_queries_crops(glad_runs, tiny_synthetic_dir,
                                             tmp_path, capsys):
  """`ps-search` with a crop re-ID checkpoint: every image is one crop,
  embedded as the evaluation embeds a crop without keypoints (GLAD's
  fixed-ratio parts: a user's crop carries no keypoints), and a crop finds
  itself."""
  workdir = str(glad_runs["full"])
  exp, variables, _ = experiment.restore(workdir)
  source = pipeline.data_source(exp.builder, "query")
  folder = tmp_path / "crops"
  folder.mkdir()
  for i in range(4):  # PNG is lossless: the files hold the records' pixels
    Image.fromarray(crops.decode(source[i], i)["image"]).save(
        folder / f"c{i}.png")
  assert search_cli.main(["index", "--workdir", workdir, "--images",
                          str(folder), "--out", str(tmp_path / "ix")]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["images"] == summary["detections"] == 4

  assert search_cli.main(["query", "--index", str(tmp_path / "ix"), "--crop",
                          str(folder / "c2.png"), "--top-k", "4"]) == 0
  hits = json.loads(capsys.readouterr().out)["hits"]
  assert len(hits) == 4
  assert hits[0]["image"].endswith("c2.png")
  assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
  w, h = Image.open(folder / "c2.png").size
  assert hits[0]["box"] == [0.0, 0.0, float(w), float(h)]

  # The evaluation's embeddings of the same records (its resizing and
  # normalisation), one crop per batch as the predictor embeds them, with
  # the dataset's keypoints withheld.
  embed = jax.jit(exp.system.embed)
  feats = np.concatenate([
      np.asarray(embed(variables, {
          **{k: v for k, v in b.items() if k != "image_id"},
          "has_keypoints": np.zeros_like(b["has_keypoints"])}))
      for b in crops.eval_batches([source[i] for i in range(4)], exp.data,
                                  eval_batch_size=1)])
  for hit in hits:
    j = int(pathlib.Path(hit["image"]).stem[1:])
    assert hit["similarity"] == pytest.approx(float(feats[2] @ feats[j]),
                                              abs=1e-5)
