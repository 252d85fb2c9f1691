"""Tests for `ps_jax.eval.run.evaluate` on the tiny checkpoint of conftest.py.

The untrained tiny model's numbers mean nothing; these tests check what is
evaluated, where results and caches go, when a cache is (not) re-used and
the protocol bookkeeping (gallery sizes, full set, errors).
"""

import json
import types

import jax
import numpy as np
import pytest

from ps_jax.eval import predict
from ps_jax.eval import run

SEARCH_KEYS = {"mAP", "top1", "top5", "top10"}


def _config(tiny_config, **eval_overrides):
  config = tiny_config.copy_and_resolve_references()
  for k, v in eval_overrides.items():
    config.eval[k] = v
  return config


def _forbid_prediction(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("predicted instead of reading the cache")
  monkeypatch.setattr(predict, "predict_split", fail)


def test_evaluate_a_checkpoint_and_reuse_its_cache(
    workdir, tiny_config, tiny_builder, tiny_model, tiny_variables,
    monkeypatch):
  results = run.evaluate(_config(tiny_config), workdir, builder=tiny_builder,
                         model=tiny_model)
  written = json.loads((workdir / "eval_results.json").read_text())
  assert written == results
  assert results["protocol"] == "cuhk" and results["step"] == 3
  assert results["model"] == "step_3"
  assert results["dataset"] == "synthetic_person_search/tiny"
  assert (results["num_queries"], results["num_gallery_images"]) == (10, 40)
  for size in (10, 20):
    res = results[f"search/gallery_{size}"]
    assert set(res) == SEARCH_KEYS
    assert all(0.0 <= v <= 1.0 for v in res.values())
  for name in ("all", "labeled"):
    assert set(results[f"detection/{name}"]) == {"recall", "ap"}
  assert 0.0 <= results["query_from_detection"] <= 1.0
  # Synthetic galleries hold at most 3 images of the target, so the full set
  # (every image ranked) would score true matches as negatives: left out.
  assert "search/full_set" not in results
  assert "outside their gallery_10 list" in results["full_set_note"]
  cache = workdir / "eval_cache"
  (entry,) = cache.iterdir()
  assert entry.name.startswith("step_3-")
  assert {p.name for p in entry.iterdir()} == {"gallery.npz", "query.npz",
                                              "key.json"}
  assert json.loads((entry / "key.json").read_text())["predict"][
      "query_mode"] == "best_iou"

  # Protocol options re-use the cached predictions; the full set runs when
  # asked for explicitly, extending the smallest lists.
  _forbid_prediction(monkeypatch)
  again = run.evaluate(_config(tiny_config, det_thresh=0.5,
                               gallery_sizes=(10, -1)),
                       workdir, builder=tiny_builder, model=tiny_model)
  assert again["det_thresh"] == 0.5 and again["cache"] == results["cache"]
  assert set(again["search/full_set"]) == SEARCH_KEYS
  assert again["full_set_base"] == 10 and "search/gallery_20" not in again
  # The same parameters from memory (as the train loop passes them) too.
  same = run.evaluate(_config(tiny_config), workdir, builder=tiny_builder,
                      model=tiny_model, variables=tiny_variables, step=3)
  assert same["search/gallery_10"] == results["search/gallery_10"]
  # Other parameters, another query mode or no_cache must predict again.
  changed = jax.tree.map(lambda x: x + 1e-3, tiny_variables)
  for kwargs, config in (
      (dict(variables=changed, step=3), _config(tiny_config)),
      ({}, _config(tiny_config, query_mode="center")),
      (dict(use_cache=False), _config(tiny_config))):
    with pytest.raises(AssertionError, match="predicted instead"):
      run.evaluate(config, workdir, builder=tiny_builder, model=tiny_model,
                   **kwargs)


def test_untrained_is_the_training_start(workdir, tiny_config, tiny_builder,
                                         tiny_model, tiny_variables):
  config = _config(tiny_config)
  init = run.init_variables(config, tiny_model)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(init),
               jax.device_get(tiny_variables))
  results = run.evaluate(config, workdir, builder=tiny_builder,
                         model=tiny_model, untrained=True)
  assert results["model"] == "untrained" and results["step"] is None
  assert json.loads((workdir / "eval_results_untrained.json").read_text())[
      "model"] == "untrained"
  assert not (workdir / "eval_results.json").exists()


def test_colour_histogram_baseline(tmp_path, tiny_config, tiny_builder):
  output = tmp_path / "out" / "hist.json"
  results = run.evaluate(_config(tiny_config), tmp_path, builder=tiny_builder,
                         baseline="color_hist", output=output)
  assert json.loads(output.read_text()) == results
  assert results["model"] == "baseline_color_hist"
  assert results["detections"] == "ground truth (baseline)"
  assert not any(k.startswith("detection/") for k in results)
  # Ground-truth boxes: every query's target can be found.
  assert results["search/gallery_10"]["mAP"] > 0.2
  table = run.format_table(results)
  assert "gallery_10" in table and "detection" not in table.split("\n", 1)[1]


def _info(gallery, queries):
  """GalleryInfo / QueryInfo from {image: pids} and [(image, pid, list)]."""
  names = list(gallery)
  g = run.GalleryInfo(names, [np.zeros((len(p), 4)) for p in gallery.values()],
                      [np.asarray(p) for p in gallery.values()],
                      np.zeros(len(names), np.int32))
  q = run.QueryInfo([x[0] for x in queries],
                    np.array([x[1] for x in queries]),
                    np.zeros(len(queries), np.int32),
                    np.zeros((len(queries), 4), np.float32),
                    {5: [x[2] for x in queries]})
  return g, q


def test_full_set_problem():
  gallery = {"a": [1, -1], "b": [2], "c": [1], "q": [1]}
  # pid 1 is in a and c (q is the query's own image): both must be listed.
  g, q = _info(gallery, [("q", 1, ["a", "c"]), ("a", 2, ["b"])])
  assert run.full_set_problem(g, q, 5) is None
  g, q = _info(gallery, [("q", 1, ["a", "b"]), ("a", 2, ["b"])])
  assert run.full_set_problem(g, q, 5).startswith("1 of 2 queries")


def test_gallery_sizes_and_dataset_errors(tiny_config, tiny_builder,
                                          tmp_path):
  assert run.cuhk_sizes((), [100, 50]) == ([50, 100, -1], 50)
  assert run.cuhk_sizes((), [10, 20], full_set=False) == ([10, 20], 10)
  assert run.cuhk_sizes((20, -1, 20), [10, 20]) == ([20, -1], 10)
  with pytest.raises(run.EvalError, match=r"\[7\] are not in the dataset"):
    run.cuhk_sizes((7,), [10, 20])
  with pytest.raises(run.EvalError, match="no gallery_<n> lists"):
    run.cuhk_sizes((), [])
  with pytest.raises(run.EvalError, match=r"gallery sizes \[30\]"):
    run.evaluate(_config(tiny_config, gallery_sizes=(30,)), tmp_path,
                 builder=tiny_builder, baseline="color_hist")

  def builder(splits, protocol):
    info = types.SimpleNamespace(splits=dict.fromkeys(splits),
                                 metadata={"protocol": protocol})
    return types.SimpleNamespace(name="fake", info=info)

  assert run.check_dataset(builder(["train", "test", "query"], "prw")) == "prw"
  with pytest.raises(run.EvalError, match=r"'fake'.*missing \['query'\]"):
    run.check_dataset(builder(["train", "test"], "cuhk"))
  with pytest.raises(run.EvalError, match="'market1501'"):
    run.check_dataset(builder(["train", "test", "query"], "market1501"))
  with pytest.raises(run.EvalError, match="exclusive"):
    run.evaluate(tiny_config, tmp_path, builder=tiny_builder, untrained=True,
                 baseline="color_hist")
  with pytest.raises(run.EvalError, match="baseline='sift'"):
    run.evaluate(tiny_config, tmp_path, builder=tiny_builder, baseline="sift")
