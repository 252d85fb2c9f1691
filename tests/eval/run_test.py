"""Tests for `ps_jax.eval.run.evaluate` on the tiny checkpoint of conftest.py.

The untrained tiny model's numbers mean nothing; these tests check what is
evaluated, where results and caches go, when a cache is (not) re-used and
the protocol bookkeeping (gallery sizes, full set, errors).
"""

import dataclasses
import json
import types

import jax
import numpy as np
import pytest

from ps_jax import mesh as mesh_lib
from ps_jax import systems
from ps_jax.eval import predict
from ps_jax.eval import protocols
from ps_jax.eval import report
from ps_jax.eval import run

SEARCH_KEYS = {"mAP", "top1", "top5", "top10", "mAP_ci95", "top1_ci95"}


def _options(**overrides):
  return protocols.EvalOptions(**{"det_thresh": 0.0, **overrides})


def _evaluate(exp, workdir, variables, *, system=None, options=None,
              **kwargs):
  return run.evaluate(system or exp.system, variables,
                      data=run.EvalData(exp.builder, exp.dataset.label,
                                        exp.data),
                      options=options or _options(),
                      mesh=mesh_lib.make_mesh(), workdir=workdir,
                      **{"label": "step_3", "step": 3, **kwargs})


def _forbid_prediction(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("predicted instead of reading the cache")
  monkeypatch.setattr(predict, "predict_split", fail)


def test_evaluate_a_checkpoint_and_reuse_its_cache(
    workdir, tiny_experiment, tiny_variables, monkeypatch):
  exp = tiny_experiment
  results = _evaluate(exp, workdir, tiny_variables)
  written = json.loads((workdir / "eval_results.json").read_text())
  assert written == results
  assert results["protocol"] == "cuhk" and results["step"] == 3
  assert results["model"] == "step_3"
  assert results["dataset"] == "synthetic_person_search/tiny"
  assert (results["num_queries"], results["num_gallery_images"]) == (10, 40)
  for size in (10, 20):
    res = results[f"search/gallery_{size}"]
    assert set(res) == SEARCH_KEYS
    for name in ("mAP", "top1"):
      low, high = res[f"{name}_ci95"]
      assert 0.0 <= low <= res[name] <= high <= 1.0
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
  key = json.loads((entry / "key.json").read_text())
  assert key["system"]["type"] == "AlignPSSystem"
  assert key["system"]["predict_options"]["query_mode"] == "best_iou"

  # Protocol options re-use the cached predictions; the full set runs when
  # asked for explicitly, extending the smallest lists.
  _forbid_prediction(monkeypatch)
  again = _evaluate(exp, workdir, tiny_variables,
                    options=_options(det_thresh=0.5, gallery_sizes=(10, -1)))
  assert again["det_thresh"] == 0.5 and again["cache"] == results["cache"]
  assert set(again["search/full_set"]) == SEARCH_KEYS
  assert again["full_set_base"] == 10 and "search/gallery_20" not in again
  # Other parameters, another query mode or no_cache must predict again.
  changed = jax.tree.map(lambda x: x + 1e-3, tiny_variables)
  center = dataclasses.replace(
      exp.system, predict_options=dataclasses.replace(
          exp.system.predict_options, query_mode="center"))
  for kwargs in (dict(variables=changed), dict(system=center),
                 dict(use_cache=False)):
    kwargs = {"variables": tiny_variables, **kwargs}
    with pytest.raises(AssertionError, match="predicted instead"):
      _evaluate(exp, workdir, **kwargs)


def test_untrained_is_the_training_start(tiny_experiment, tiny_variables):
  exp = tiny_experiment
  init, extra = systems.initialize(exp.system, exp.run.seed,
                                   exp.data.train_scales[0])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(init),
               jax.device_get(tiny_variables))
  assert extra.lut.shape == (exp.num_ids, exp.system.embedding_dim)


def test_colour_histogram_baseline(tmp_path, tiny_data):
  output = tmp_path / "out" / "hist.json"
  results = run.evaluate_baseline("color_hist", data=tiny_data,
                                  options=_options(), workdir=tmp_path,
                                  output=output)
  assert json.loads(output.read_text()) == results
  assert results["model"] == "baseline_color_hist"
  assert results["detections"] == "ground truth (baseline)"
  assert not any(k.startswith("detection/") for k in results)
  # Ground-truth boxes: every query's target can be found.
  assert results["search/gallery_10"]["mAP"] > 0.2
  table = report.format_table(results)
  assert "gallery_10" in table and "detection" not in table.split("\n", 1)[1]
  (tmp_path / "default").mkdir()
  run.evaluate_baseline("color_hist", data=tiny_data, options=_options(),
                        workdir=tmp_path / "default")
  assert (tmp_path / "default" / "eval_results_color_hist.json").exists()


def _info(gallery, queries):
  """GalleryInfo / QueryInfo from {image: pids} and [(image, pid, list)]."""
  names = list(gallery)
  g = protocols.GalleryInfo(names,
                            [np.zeros((len(p), 4)) for p in gallery.values()],
                            [np.asarray(p) for p in gallery.values()],
                            np.zeros(len(names), np.int32))
  q = protocols.QueryInfo([x[0] for x in queries],
                          np.array([x[1] for x in queries]),
                          np.zeros(len(queries), np.int32),
                          np.zeros((len(queries), 4), np.float32),
                          {5: [x[2] for x in queries]})
  return g, q


def test_full_set_problem():
  gallery = {"a": [1, -1], "b": [2], "c": [1], "q": [1]}
  # pid 1 is in a and c (q is the query's own image): both must be listed.
  g, q = _info(gallery, [("q", 1, ["a", "c"]), ("a", 2, ["b"])])
  assert protocols.full_set_problem(g, q, 5) is None
  g, q = _info(gallery, [("q", 1, ["a", "b"]), ("a", 2, ["b"])])
  assert protocols.full_set_problem(g, q, 5).startswith("1 of 2 queries")


def test_gallery_sizes_and_dataset_errors(tiny_data, tmp_path):
  assert protocols.cuhk_sizes((), [100, 50]) == ([50, 100, -1], 50)
  assert protocols.cuhk_sizes((), [10, 20], full_set=False) == ([10, 20], 10)
  assert protocols.cuhk_sizes((20, -1, 20), [10, 20]) == ([20, -1], 10)
  with pytest.raises(run.EvalError, match=r"\[7\] are not in the dataset"):
    protocols.cuhk_sizes((7,), [10, 20])
  with pytest.raises(run.EvalError, match="no gallery_<n> lists"):
    protocols.cuhk_sizes((), [])
  with pytest.raises(run.EvalError, match=r"gallery sizes \[30\]"):
    run.evaluate_baseline("color_hist", data=tiny_data,
                          options=_options(gallery_sizes=(30,)),
                          workdir=tmp_path)

  def builder(splits, protocol):
    info = types.SimpleNamespace(splits=dict.fromkeys(splits),
                                 metadata={"protocol": protocol})
    return types.SimpleNamespace(name="fake", info=info)

  assert protocols.check_dataset(
      builder(["train", "test", "query"], "prw")) == "prw"
  with pytest.raises(run.EvalError, match=r"'fake'.*missing \['query'\]"):
    protocols.check_dataset(builder(["train", "test"], "cuhk"))
  with pytest.raises(run.EvalError, match="'market1501'"):
    protocols.check_dataset(builder(["train", "test", "query"], "market1501"))
  with pytest.raises(run.EvalError, match="baseline='sift'"):
    run.evaluate_baseline("sift", data=tiny_data, options=_options(),
                          workdir=tmp_path)
