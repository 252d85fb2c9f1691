"""End-to-end evaluation of a system (or a baseline) on a dataset's protocol.

  evaluate(system, variables, data=..., options=..., mesh=..., workdir=...,
           label="step_800")
  evaluate_baseline("color_hist", data=..., options=..., workdir=...)

Both predict the gallery (the `test` split) and the queries (the `query`
split), or read them from the prediction cache (`ps_jax.eval.cache`), run
the protocols of the dataset (`ps_jax.eval.protocols`), log a table and write
the results as JSON (default `<workdir>/eval_results.json`). Which weights
are evaluated (a checkpoint, the caller's, the untrained initialisation) is
the caller's choice: the train loop passes its final state, `python -m
ps_jax.eval` restores a checkpoint or initialises the system.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from ps_jax import mesh as mesh_lib
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.eval import baselines
from ps_jax.eval import cache as cache_lib
from ps_jax.eval import crop_reid
from ps_jax.eval import predict
from ps_jax.eval import protocols
from ps_jax.eval import report
from ps_jax.eval.protocols import EvalError
from ps_jax.eval.protocols import EvalOptions
from ps_jax.systems import base


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The dataset to evaluate on and how its images are fed.

  Attributes:
    builder: the dataset's prepared TFDS builder (`test` and `query` splits).
    label: 'name/config', for results and the cache key.
    pipeline: the input settings (test_scale, normalization, eval batch):
      a `pipeline.PipelineConfig`, or a `crops.CropPipelineConfig` for crop
      re-ID datasets.
  """
  builder: Any
  label: str
  pipeline: Any


@dataclasses.dataclass
class _Splits:
  protocol: str
  gallery_src: Any
  query_src: Any
  gallery: protocols.GalleryInfo
  queries: protocols.QueryInfo


def _read_splits(data: EvalData, options: EvalOptions) -> _Splits:
  protocol = protocols.check_dataset(data.builder)
  gallery_src = pipeline.data_source(data.builder, "test")
  query_src = pipeline.data_source(data.builder, "query")
  splits = _Splits(protocol, gallery_src, query_src,
                   protocols.read_gallery(gallery_src),
                   protocols.read_queries(query_src))
  if protocol == "cuhk":  # fail on bad sizes before predicting
    protocols.cuhk_sizes(options.gallery_sizes, splits.queries.galleries)
  return splits


def replicate(variables: Any, mesh: Any) -> Any:
  """`variables` replicated on `mesh` (a no-op for the train loop's state).

  With several processes, process-local arrays (a fresh init, a restore
  without target) go through host memory: a global sharding cannot take
  them directly.
  """
  if jax.process_count() > 1:
    variables = jax.tree.map(
        lambda x: np.asarray(x) if isinstance(x, jax.Array)
        and x.is_fully_addressable else x, variables)
  return jax.device_put(variables, mesh_lib.replicated(mesh))


def evaluate(system: Any, variables: Any, *, data: EvalData,
             options: EvalOptions, mesh: Any, workdir: str | pathlib.Path,
             label: str, step: int | None = None, use_cache: bool = True,
             output: str | pathlib.Path | None = None,
             cache_dir: str | pathlib.Path | None = None) -> dict[str, Any]:
  """Predict with `system` (or read the cache) and evaluate.

  Args:
    system: a person-search system (`ps_jax.systems.PersonSearchSystem`),
      or a crop re-ID system (`CropReIDSystem`: scored by
      `crop_reid.evaluate_crops` on Market-1501-style data, no cache).
    variables: its variables (any devices; replicated on `mesh` here).
    data: the dataset and input settings.
    options: the protocol options.
    mesh: the device mesh the splits are predicted on.
    workdir: the prediction cache goes under `<workdir>/eval_cache/`.
    label: what is evaluated ('step_800', 'untrained', ...): names the
      cache entry and the results' `model` field.
    step: the training step of `variables`, for the results.
    use_cache: read cached predictions when valid (they are always written).
    output: the results file (default `<workdir>/eval_results.json`).
    cache_dir: where new predictions are cached, for a read-only workdir
      (default `<workdir>/eval_cache`); the workdir's cache is read first.
  Returns:
    The results dict written to the JSON file.
  Raises:
    EvalError: the dataset or an option cannot be evaluated.
  """
  if isinstance(system, base.CropReIDSystem):
    return crop_reid.evaluate_crops(system, variables, data=data, mesh=mesh,
                                    workdir=workdir, label=label, step=step,
                                    output=output)
  splits = _read_splits(data, options)
  variables = replicate(variables, mesh)
  key_parts = {
      "dataset": cache_lib.dataset_id(data.label, data.builder),
      "params": cache_lib.variables_fingerprint(variables),
      "system": cache_lib.describe(system),
      "data": {k: cache_lib.describe(getattr(data.pipeline, k))
               for k in ("test_scale", "normalization", "size_divisor")}}
  if not data.pipeline.resize_antialias:
    # Keyed only when off, so the caches of existing runs stay valid.
    key_parts["data"]["resize_antialias"] = False
  if data.pipeline.portrait_buckets:
    key_parts["data"]["portrait_buckets"] = True

  def compute():
    step_fn = predict.make_predict_step(system)
    return (predict.predict_split(step_fn, variables, splits.gallery_src,
                                  data.pipeline, mesh, desc="gallery"),
            predict.predict_split(step_fn, variables, splits.query_src,
                                  data.pipeline, mesh,
                                  query_boxes=splits.queries.boxes,
                                  desc="queries"))

  results = _score(splits, compute, key_parts, data=data, options=options,
                   workdir=workdir, label=label, use_cache=use_cache,
                   with_detection=True, cache_dir=cache_dir)
  results["step"] = step
  return report.finish(results, workdir, output, "eval_results.json")


def evaluate_baseline(name: str, *, data: EvalData, options: EvalOptions,
                      workdir: str | pathlib.Path, use_cache: bool = True,
                      output: str | pathlib.Path | None = None,
                      cache_dir: str | pathlib.Path | None = None
                      ) -> dict[str, Any]:
  """Evaluate a model-free baseline (`baselines.BASELINES`) on ground-truth
  gallery boxes (on the crops themselves for crop re-ID data); results default to `<workdir>/eval_results_<name>.json`,
  `cache_dir` as in `evaluate`."""
  if isinstance(data.pipeline, crops.CropPipelineConfig):
    return crop_reid.evaluate_crops_baseline(name, data=data, workdir=workdir,
                                             output=output)
  if name not in baselines.BASELINES:
    raise EvalError(f"baseline={name!r}; expected one of "
                    f"{baselines.BASELINES}")
  splits = _read_splits(data, options)
  key_parts = {"dataset": cache_lib.dataset_id(data.label, data.builder),
               "baseline": {"name": name, "bins": baselines.HSV_BINS,
                            "stripes": baselines.STRIPES}}

  def compute():
    return (baselines.color_hist_predictions(splits.gallery_src,
                                             desc="gallery"),
            baselines.color_hist_predictions(
                splits.query_src, query_boxes=splits.queries.boxes,
                desc="queries"))

  results = _score(splits, compute, key_parts, data=data, options=options,
                   workdir=workdir, label=f"baseline_{name}",
                   use_cache=use_cache, with_detection=False,
                   cache_dir=cache_dir)
  results["detections"] = "ground truth (baseline)"
  return report.finish(results, workdir, output, f"eval_results_{name}.json")


def _score(splits: _Splits, compute: cache_lib.Compute,
           key_parts: dict[str, Any], *, data: EvalData,
           options: EvalOptions, workdir: str | pathlib.Path, label: str,
           use_cache: bool, with_detection: bool,
           cache_dir: str | pathlib.Path | None) -> dict[str, Any]:
  name = f"{label}-{cache_lib.cache_key(key_parts)}"
  cache = pathlib.Path(workdir) / "eval_cache" / name
  write_to = None if cache_dir is None else pathlib.Path(cache_dir) / name
  gal, qry = cache_lib.cached_predictions(
      cache, key_parts, compute, splits.gallery.image_ids,
      splits.queries.image_ids, use_cache=use_cache, write_to=write_to)
  if write_to is not None and not (
      use_cache and (cache / "gallery.npz").exists()):
    cache = write_to  # where these predictions were cached
  results = protocols.run_protocols(options, splits.protocol, splits.gallery,
                                    splits.queries, gal, qry,
                                    with_detection=with_detection)
  results.update(dataset=data.label, model=label, checkpoint=label,
                 step=None, cache=str(cache))
  return results


__all__ = ["EvalData", "EvalError", "EvalOptions", "evaluate",
           "evaluate_baseline", "replicate"]
