"""Evaluation results as a table and a JSON file."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax


def _interval(ci: Any) -> str:
  """'[28.1, 38.9]' in percent, or '' without an interval."""
  if not ci:
    return ""
  return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(results: Mapping[str, Any]) -> str:
  """A plain-text table of `evaluate` results (percentages), with the 95 %
  bootstrap intervals of mAP and top-1 where the results have them."""
  title = " ".join(f"{k}={results[k]}" for k in ("dataset", "model")
                   if k in results)
  lines = [title] if title else []
  lines.append(f"{'search':<22}{'mAP':>8}{'(95% CI)':>15}{'top-1':>8}"
               f"{'(95% CI)':>15}{'top-5':>8}{'top-10':>8}")
  for key, v in results.items():
    if key.startswith("search/"):
      name = key[7:]
      if name == "full_set" and results.get("full_set_base", 50) != 50:
        name = f"full_set(+{results['full_set_base']})"
      lines.append(f"{name:<22}{100 * v['mAP']:>8.2f}"
                   f"{_interval(v.get('mAP_ci95')):>15}"
                   f"{100 * v['top1']:>8.2f}"
                   f"{_interval(v.get('top1_ci95')):>15}"
                   f"{100 * v['top5']:>8.2f}{100 * v['top10']:>8.2f}")
  det = [(k[10:], v) for k, v in results.items()
         if k.startswith("detection/")]
  if det:
    lines.append(f"{'detection':<22}{'AP':>8}{'recall':>8}")
    for name, v in det:
      lines.append(f"{name:<22}{100 * v['ap']:>8.2f}"
                   f"{100 * v['recall']:>8.2f}")
  lines.append(f"det_thresh {results.get('det_thresh')}, "
               f"{results.get('num_queries')} queries, "
               f"{results.get('num_gallery_images')} gallery images")
  return "\n".join(lines)


def write_results(results: Mapping[str, Any], path: str | pathlib.Path
                  ) -> None:
  """Write `results` as JSON (process 0 only; other processes skip)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=2))
