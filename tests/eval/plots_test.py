"""Tests of the PNG line charts (ps_jax/eval/plots.py)."""

import numpy as np
import pytest
from PIL import Image

from ps_jax.eval import plots
from ps_jax.eval import report


def test_nice_ticks_cover_the_range_in_round_steps():
  assert plots.nice_ticks(1.4, 8) == [0, 2, 4, 6, 8]
  assert plots.nice_ticks(0, 57.3) == [0, 20, 40, 60]
  assert plots.nice_ticks(0.03, 0.18) == [0.0, 0.05, 0.1, 0.15, 0.2]
  assert plots.nice_ticks(3, 3) == [3, 3.2, 3.4, 3.6, 3.8, 4]


def test_line_chart_draws_each_series_in_its_colour(tmp_path):
  path = plots.line_chart({"mAP": ([0, 10], [0, 50]),
                           "mAP+cws": ([0, 10], [0, 60]),
                           "rank-1": ([0, 5, 10], [10, 40, 70])},
                          "dets", "%", "title", tmp_path / "c.png")
  img = np.asarray(Image.open(path).convert("RGB"))
  assert img.shape == (480, 720, 3)
  colours = {tuple(c) for c in img.reshape(-1, 3)}
  assert plots.COLOURS[0] in colours  # mAP and its dashed CWS twin
  assert plots.COLOURS[1] in colours  # rank-1
  assert plots.COLOURS[2] not in colours  # no third base series
  with pytest.raises(ValueError, match="no series"):
    plots.line_chart({}, "x", "y", "t", tmp_path / "e.png")
  with pytest.raises(ValueError, match="2 x and 1 y"):
    plots.line_chart({"a": ([0, 1], [0])}, "x", "y", "t", tmp_path / "e.png")


def test_report_draws_the_prw_paper_curves_only_when_present(tmp_path):
  curve = {"detections_per_image": [1.0, 2.0, 3.0], "mAP": [0.5, 0.4, 0.3],
           "rank1": [0.6, 0.5, 0.45], "rank20": [1.0, 1.0, 1.0],
           "thresholds": [0.9, 0.5, 0.1]}
  results = {"model": "m", "dataset": "d", "prw_paper/num_queries": 3,
             "prw_paper/curve": curve, "prw_paper/curve+cws": curve}
  out = report.finish(dict(results), tmp_path, None, "eval_results.json")
  assert out["prw_paper_chart"] == str(tmp_path
                                       / "eval_results_prw_paper.png")
  assert Image.open(out["prw_paper_chart"]).size == (720, 480)
  out = report.finish({"model": "m"}, tmp_path, None, "other.json")
  assert "prw_paper_chart" not in out
  # The results file holds what finish returns, chart paths included.
  row = {"mAP": 0.5, "top1": 0.5, "top5": 0.6, "top10": 0.7}
  rows = {"dataset": "d", "model": "m", "search/gallery_50": row,
          "search/gallery_100": row}
  out = report.finish(rows, tmp_path, None, "eval_results_new.json")
  assert out["gallery_size_chart"] == str(tmp_path / "eval_gallery_sizes.png")
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads((tmp_path / "eval_results_new.json").read_text()) == out


def test_gallery_size_chart_draws_every_model_of_the_dataset(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  for name, dataset, model, sizes in [
      ("eval_results.json", "d", "step_9", (50, 100, 500)),
      ("eval_results_color_hist.json", "d", "baseline", (50, 100)),
      ("eval_results_other.json", "e", "elsewhere", (50, 100)),
      ("eval_results_untrained.json", "d", "untrained", (50,))]:
    rows = {f"search/gallery_{n}": {"mAP": 0.5} for n in sizes}
    rows["search/gallery_50+cws"] = {"mAP": 0.9}
    (tmp_path / name).write_text(json.dumps(
        {"dataset": dataset, "model": model, **rows}))
  (tmp_path / "eval_results_broken.json").write_text("{")
  path = report.gallery_size_chart(tmp_path, "d")
  assert path == tmp_path / "eval_gallery_sizes.png"
  img = np.asarray(Image.open(path).convert("RGB"))
  colours = {tuple(c) for c in img.reshape(-1, 3)}
  # Two models with two or more sizes: two lines; one size is no line.
  assert plots.COLOURS[0] in colours and plots.COLOURS[1] in colours
  assert plots.COLOURS[2] not in colours
  assert report.gallery_size_chart(tmp_path, "nothing") is None
