"""Evaluation results as a table and a JSON file."""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging


def interval(ci: Any) -> str:
  """'[28.1, 38.9]' in percent, or '' without an interval."""
  if not ci:
    return ""
  return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(results: Mapping[str, Any]) -> str:
  """A plain-text table of `evaluate` results (percentages), with the 95 %
  bootstrap intervals of mAP and top-1 where the results have them; crop
  re-ID results (`reid/...` rows) get `format_reid_table`."""
  if any(k.startswith("reid/") for k in results):
    return format_reid_table(results)
  title = " ".join(f"{k}={results[k]}" for k in ("dataset", "model")
                   if k in results)
  lines = [title] if title else []
  base = results.get("full_set_base", 50)
  rows = []
  for key, v in results.items():
    if key.startswith("search/"):
      name = key[7:]
      if name.split("+")[0].split("@")[0] == "full_set" and base != 50:
        name = name.replace("full_set", f"full_set(+{base})", 1)
      rows.append((name, v))
  # Subset rows (gallery_100@low_resolution+cws) widen the name column.
  width = max([22] + [len(name) + 2 for name, _ in rows])
  lines.append(f"{'search':<{width}}{'mAP':>8}{'(95% CI)':>15}{'top-1':>8}"
               f"{'(95% CI)':>15}{'top-5':>8}{'top-10':>8}")
  for name, v in rows:
    lines.append(f"{name:<{width}}{100 * v['mAP']:>8.2f}"
                 f"{interval(v.get('mAP_ci95')):>15}"
                 f"{100 * v['top1']:>8.2f}"
                 f"{interval(v.get('top1_ci95')):>15}"
                 f"{100 * v['top5']:>8.2f}{100 * v['top10']:>8.2f}")
  det = [(k[10:], v) for k, v in results.items()
         if k.startswith("detection/")]
  if det:
    lines.append(f"{'detection':<22}{'AP':>8}{'recall':>8}")
    for name, v in det:
      lines.append(f"{name:<22}{100 * v['ap']:>8.2f}"
                   f"{100 * v['recall']:>8.2f}")
  paper = [(k[10:], v) for k, v in results.items()
           if k.startswith("prw_paper/") and isinstance(v, Mapping)
           and "detections_per_image" in v
           and not isinstance(v["detections_per_image"], list)]
  if paper:
    lines.append(f"{'PRW paper protocol':<22}{'mAP':>8}{'rank-1':>8}"
                 f"{'rank-20':>8}{'dets/img':>10}")
    for name, v in paper:
      lines.append(f"{name:<22}{100 * v['mAP']:>8.2f}"
                   f"{100 * v['rank1']:>8.2f}{100 * v['rank20']:>8.2f}"
                   f"{v['detections_per_image']:>10.2f}")
  lines.append(f"det_thresh {results.get('det_thresh')}, "
               f"{results.get('num_queries')} queries, "
               f"{results.get('num_gallery_images')} gallery images"
               + "".join(f"; {k.split('@')[1]}: {v} queries"
                         for k, v in results.items()
                         if k.startswith("num_queries@"))
               + (f"; PRW paper protocol: {results['prw_paper/num_queries']}"
                  " queries seen by another camera"
                  if "prw_paper/num_queries" in results else ""))
  return "\n".join(lines)


def prw_paper_chart(results: Mapping[str, Any], path: str | pathlib.Path
                    ) -> pathlib.Path | None:
  """The PRW paper protocol's curves (mAP and rank-1 against detections per
  image, plain and CWS) of `results` as a PNG; None if it has none."""
  series = {}
  for suffix in ("", "+cws"):
    curve = results.get(f"prw_paper/curve{suffix}")
    if curve:
      for key, name in (("mAP", "mAP"), ("rank1", "rank-1")):
        series[name + suffix] = (curve["detections_per_image"],
                                 [100 * v for v in curve[key]])
  if not series:
    return None
  from ps_jax.eval import plots  # pylint: disable=g-import-not-at-top
  return plots.line_chart(
      series, "mean detections per gallery image (score threshold lowered)",
      "%", f"PRW paper protocol: {results.get('model')} on "
      f"{results.get('dataset')}", path)


def format_reid_table(results: Mapping[str, Any]) -> str:
  """A plain-text table of crop re-ID results (percentages, 95 % CIs)."""
  title = " ".join(f"{k}={results[k]}" for k in ("dataset", "model")
                   if k in results)
  lines = [title] if title else []
  lines.append(f"{'re-ID (Market-1501)':<22}{'mAP':>8}{'(95% CI)':>15}"
               f"{'rank-1':>8}{'(95% CI)':>15}{'rank-5':>8}{'rank-10':>8}")
  for key, v in results.items():
    if key.startswith("reid/"):
      lines.append(f"{key[5:]:<22}{100 * v['mAP']:>8.2f}"
                   f"{interval(v.get('mAP_ci95')):>15}"
                   f"{100 * v['rank1']:>8.2f}"
                   f"{interval(v.get('rank1_ci95')):>15}"
                   f"{100 * v['rank5']:>8.2f}{100 * v['rank10']:>8.2f}")
  some = next((v for k, v in results.items() if k.startswith("reid/")), {})
  lines.append(f"{results.get('num_queries')} queries "
               f"({some.get('num_valid_queries')} with a match in another "
               f"camera), {results.get('num_gallery')} gallery crops")
  if results.get("parts"):
    lines.append(f"GLAD parts: {results['parts']}")
  return "\n".join(lines)


def write_results(results: Mapping[str, Any], path: str | pathlib.Path
                  ) -> None:
  """Write `results` as JSON (process 0 only; other processes skip)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=2))


GALLERY_CHART = "eval_gallery_sizes.png"


def gallery_size_chart(folder: str | pathlib.Path, dataset: str,
                       current: tuple[pathlib.Path, Mapping[str, Any]]
                       | None = None) -> pathlib.Path | None:
  """mAP against CUHK-style gallery size (as the CUHK-SYSU papers plot it)
  for every results file `eval_results*.json` in `folder` on `dataset`,
  one line per evaluated model (the model, its baselines, ...), drawn to
  `<folder>/eval_gallery_sizes.png`; None if fewer than two sizes were
  evaluated. The x axis is logarithmic, one tick per size. `current`,
  (path, results) of results not yet written, stands in for that file."""
  folder = pathlib.Path(folder)
  series, sizes = {}, set()
  paths = set(folder.glob("eval_results*.json"))
  if current is not None:
    paths.add(current[0])
  for path in sorted(paths):
    if current is not None and path == current[0]:
      other = current[1]
    else:
      try:
        other = json.loads(path.read_text(encoding="utf-8"))
      except (OSError, ValueError):
        continue  # a file being written, or not ours: not in the chart
    if other.get("dataset") != dataset:
      continue
    points = sorted(
        (int(k[len("search/gallery_"):]), 100 * v["mAP"])
        for k, v in other.items()
        if re.fullmatch(r"search/gallery_\d+", k))
    if len(points) >= 2:
      sizes.update(n for n, _ in points)
      series[str(other.get("model", path.stem))] = (
          [math.log10(n) for n, _ in points], [m for _, m in points])
  if not series:
    return None
  from ps_jax.eval import plots  # pylint: disable=g-import-not-at-top
  return plots.line_chart(
      series, "gallery size", "mAP %", f"mAP against gallery size on "
      f"{dataset}", folder / GALLERY_CHART,
      x_ticks=[(math.log10(n), str(n)) for n in sorted(sizes)])


def finish(results: dict[str, Any], workdir: str | pathlib.Path,
           output: str | pathlib.Path | None, name: str) -> dict[str, Any]:
  """Writes `results` to `output`, else `<workdir>/<name>`, records the path
  in `results["output"]`, draws the PRW paper protocol's curves beside it
  (`<name>_prw_paper.png`, recorded as `results["prw_paper_chart"]`) when
  the results have them, redraws the mAP-against-gallery-size chart of
  every `eval_results*.json` beside it (`gallery_size_chart`), logs the
  table, and returns `results`."""
  out = pathlib.Path(output) if output else pathlib.Path(workdir) / name
  results["output"] = str(out)
  if "prw_paper/num_queries" in results and jax.process_index() == 0:
    png = prw_paper_chart(results, out.with_name(out.stem + "_prw_paper.png"))
    if png is not None:
      results["prw_paper_chart"] = str(png)
  if (jax.process_index() == 0 and out.name.startswith("eval_results")
      and out.suffix == ".json"):
    chart = gallery_size_chart(out.parent, results.get("dataset"),
                               current=(out, results))
    if chart is not None:
      results["gallery_size_chart"] = str(chart)
  write_results(results, out)
  logging.info("Evaluation (%s):\n%s", results["model"], format_table(results))
  return results
