"""Export a trained person-search system for inference without its code.

  python -m ps_jax.export --workdir runs/synthetic --out alignps_export
  python -m ps_jax.export --workdir runs/synthetic --out alignps_gpu \\
      --bucket 320,320 --batch 8 --platforms cpu,cuda

The system's predict function (an image batch at one fixed bucket ->
fixed-size detections, their embeddings and a query box's embedding) is
traced and serialized with `jax.export`, and written with every variable of
the model and a manifest to a new directory, atomically. `ps_jax.exported`
loads and runs it with jax, numpy and Pillow alone (`load_exported`), and
`ps-search index --exported DIR` indexes with it. What is in the directory
and the limits (one bucket, one batch size, the platforms it was lowered
for): `ps_jax/exported.py` and docs/export.md.

The parameters are inputs of the exported function, not constants baked
into it: the function file stays small and the weights are a plain
safetensors file. The system's predict options (score threshold, maximum
detections, query rule) are part of the function.

Platforms: jax.export lowers for any of cpu, cuda, rocm and tpu on any
machine, e.g. for cuda on a CPU-only one; one artefact may hold several.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ps_jax import exported as exported_lib
from ps_jax.data import augment
from ps_jax.systems import base

PROG = "python -m ps_jax.export"
DEFAULT_PLATFORMS = ("cpu",)
# normalization mode -> (channel order, mean, std), 0-255 units
# (augment.normalize).
NORMALIZATIONS = {
    "imagenet_rgb": ("RGB", augment.IMAGENET_RGB_MEAN,
                     augment.IMAGENET_RGB_STD),
    "caffe_bgr": ("BGR", augment.CAFFE_BGR_MEAN, augment.CAFFE_BGR_STD),
}


class ExportError(ValueError):
  """An export that cannot be done as asked; the message says why."""


def variable_names(variables: Any) -> tuple[list[str], list[Any], Any]:
  """(names, leaves, treedef) of a variables pytree; a leaf's name is its
  path joined by "/" ("params/backbone/conv1/kernel").

  Raises:
    ExportError: two leaves get the same name, or there are none.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
  names = ["/".join(_key(k) for k in path) for path, _ in flat]
  seen = set()
  for name in names:
    if name in seen:
      raise ExportError(f"two variables are both named {name!r}")
    seen.add(name)
  if not names:
    raise ExportError("the model has no variables")
  return names, [leaf for _, leaf in flat], treedef


def _key(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def predict_function(system: base.PersonSearchSystem, names: Sequence[str],
                     treedef: Any):
  """fn(params {name: array}, image f32[B, H, W, 3], image_hw i32[B, 2],
  orig_hw i32[B, 2], query_boxes f32[B, 4]) -> `system.predict`'s dict
  (the keys of base.PREDICT_OUTPUTS), padding examples (orig_hw 0) marked
  not valid."""

  def fn(params, image, image_hw, orig_hw, query_boxes):
    variables = jax.tree_util.tree_unflatten(treedef,
                                             [params[n] for n in names])
    batch = {"image": image, "image_hw": image_hw, "orig_hw": orig_hw}
    out = dict(system.predict(variables, batch, query_boxes))
    base.check_predictions(out, type(system).__name__)
    out["valid"] = out["valid"] & (orig_hw[:, 0] > 0)[:, None]
    return {k: out[k] for k in base.PREDICT_OUTPUTS}

  return fn


def check_bucket(bucket: Any, portrait_buckets: bool) -> tuple[int, int]:
  """`bucket` as (H, W), both integers >= 1 (H <= W with portrait buckets).

  Raises:
    ExportError saying what was expected.
  """
  try:
    h, w = (int(v) for v in bucket)
    ok = all(float(v) == int(v) for v in bucket) and h >= 1 and w >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ExportError(f"bucket {bucket!r}: expected (H, W), two integers "
                      ">= 1 (pixels)")
  if portrait_buckets and h > w:
    raise ExportError(
        f"bucket {h}x{w} is taller than wide, but the model uses portrait "
        "buckets (data.portrait_buckets): give the landscape bucket (H <= W)"
        "; portrait images go into its transpose")
  return h, w


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """`platforms` as a tuple of jax.export platform names, checked."""
  out = tuple(str(p).strip().lower() for p in platforms)
  bad = [p for p in out if p not in exported_lib.PLATFORMS]
  if not out or bad or len(set(out)) != len(out):
    raise ExportError(f"platforms {list(platforms)}: expected one or more "
                      f"different names of {list(exported_lib.PLATFORMS)}")
  return out


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _write(path: str, data: bytes) -> None:
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _avals(tree: Any) -> dict[str, Any]:
  return {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
          for k, v in tree.items()}


def export_predictor(system: Any, variables: Any, data: Any, out_dir: str, *,
                     bucket: Sequence[int] | None = None,
                     batch_size: int = 1,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS,
                     step: int | None = None,
                     source: Mapping[str, Any] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
  """Exports `system.predict` with `variables` to the directory `out_dir`.

  Args:
    system: a person-search system (`base.PersonSearchSystem`).
    variables: its variables {"params": ..., <other collections>}; all are
      exported.
    data: the scene pipeline settings the model was evaluated with
      (`pipeline.PipelineConfig`): normalization, size divisor, resize
      filter, portrait buckets, and the default bucket (`test_scale`).
    out_dir: the directory to create (its parent must exist).
    bucket: (H, W) the images are resized into; default `data.test_scale`.
      With `data.portrait_buckets` a landscape bucket, exported with its
      transpose for portrait images.
    batch_size: B, images per call of the exported function.
    platforms: jax.export platforms to lower for ("cpu", "cuda", "rocm",
      "tpu"); several give one artefact that runs on each.
    step: the checkpoint step of `variables`, recorded.
    source: what the weights came from (e.g. {"workdir": ...}), recorded.
    overwrite: replace an existing exported model at `out_dir` (never
      another kind of directory).
  Returns:
    The manifest written (manifest.json).
  Raises:
    ExportError: a setting out of range, a system that is not a
      person-search one, or `out_dir` exists (named).
  """
  if not (hasattr(system, "predict") and hasattr(system, "embedding_dim")):
    raise ExportError(f"{type(system).__name__} is not a person-search "
                      "system (no predict); only person-search systems "
                      "export (AlignPS, OIM, two-step)")
  if not hasattr(data, "test_scale"):
    raise ExportError(f"data settings {type(data).__name__} are not a scene "
                      "pipeline's (no test_scale)")
  portrait = bool(data.portrait_buckets)
  hw = check_bucket(data.test_scale if bucket is None else bucket, portrait)
  buckets = [hw] + ([hw[::-1]] if portrait and hw[0] != hw[1] else [])
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or (
      batch_size < 1):
    raise ExportError(f"batch size {batch_size!r}: expected an integer >= 1")
  batch_size = int(batch_size)
  platforms = check_platforms(platforms)
  if data.normalization not in NORMALIZATIONS:
    raise ExportError(f"normalization {data.normalization!r}: expected one "
                      f"of {sorted(NORMALIZATIONS)}")
  out = _check_out(out_dir, overwrite)

  names, leaves, treedef = variable_names(variables)
  host = [np.asarray(jax.device_get(v)) for v in leaves]
  params = dict(zip(names, host))
  fn = jax.jit(predict_function(system, names, treedef))
  param_specs = {n: jax.ShapeDtypeStruct(v.shape, v.dtype)
                 for n, v in params.items()}
  functions, blobs, outputs = {}, {}, None
  for b in buckets:
    canvas = augment.padded_size(b, data.size_divisor)
    specs = (param_specs,
             jax.ShapeDtypeStruct((batch_size, *canvas, 3), jnp.float32),
             jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
             jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
             jax.ShapeDtypeStruct((batch_size, 4), jnp.float32))
    try:
      exp = jax.export.export(fn, platforms=platforms)(*specs)
    except (ValueError, TypeError) as e:
      raise ExportError(
          f"exporting {type(system).__name__} at bucket {b[0]}x{b[1]} "
          f"(canvas {canvas[0]}x{canvas[1]}) failed: "
          f"{type(e).__name__}: {e}") from e
    name = exported_lib.function_file(b)
    blobs[name] = bytes(exp.serialize())
    functions["{}x{}".format(*b)] = {
        "file": name, "bucket": list(b), "canvas": list(canvas),
        "sha256": hashlib.sha256(blobs[name]).hexdigest(),
        "calling_convention_version": int(exp.calling_convention_version)}
    outputs = _avals(jax.tree_util.tree_unflatten(exp.out_tree,
                                                  exp.out_avals))
    logging.info("exported %s at %dx%d for %s: %d bytes",
                 type(system).__name__, b[0], b[1], platforms,
                 len(blobs[name]))

  identity = _identity(system, variables, data, hw, step)
  order, mean, std = NORMALIZATIONS[data.normalization]
  manifest = {
      "format": exported_lib.FORMAT_NAME,
      "format_version": exported_lib.FORMAT_VERSION,
      **identity,
      "embedding_dim": int(system.embedding_dim),
      "batch_size": batch_size,
      "buckets": [list(b) for b in buckets],
      "platforms": list(platforms),
      "input": {"normalization": data.normalization, "channel_order": order,
                "mean": list(mean), "std": list(std),
                "size_divisor": int(data.size_divisor),
                "resize_antialias": bool(data.resize_antialias),
                "portrait_buckets": portrait,
                "config_test_scale": list(data.test_scale)},
      "functions": functions,
      "outputs": outputs,
      "params": {"file": exported_lib.PARAMS_FILE, "count": len(params),
                 "bytes": int(sum(v.nbytes for v in host))},
      "source": dict(source or {}),
      "versions": {"ps_jax": _version("ps_jax"), "jax": jax.__version__,
                   "jaxlib": _version("jaxlib")},
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  _write_directory(out, manifest, params, blobs)
  logging.info("wrote %s (%d variables, %d bytes)", out, len(params),
               manifest["params"]["bytes"])
  return manifest


def _identity(system: Any, variables: Any, data: Any, bucket: tuple[int, int],
              step: int | None) -> dict[str, Any]:
  """step, fingerprint, variables_fingerprint and system (description) of
  the real predictor with these weights at this bucket: the same as a
  workdir's predictor when the bucket is its test scale."""
  from ps_jax.eval import predict  # pylint: disable=g-import-not-at-top
  settings = dataclasses.replace(data, test_scale=tuple(bucket))
  real = predict.Predictor(system, variables, settings, step=step)
  out = {"step": None if step is None else int(step)}
  out.update(fingerprint=real.fingerprint,
             variables_fingerprint=real.variables_fingerprint,
             system=dict(real.system_description))
  return out


def _check_out(out_dir: str, overwrite: bool) -> str:
  out = os.path.abspath(out_dir)
  parent = os.path.dirname(out)
  if not os.path.isdir(parent):
    raise ExportError(f"--out {out_dir}: folder {parent} does not exist")
  if os.path.lexists(out):
    if not overwrite:
      raise ExportError(f"--out {out_dir} already exists: choose a new "
                        "directory, or pass --overwrite to replace an "
                        "exported model")
    if not os.path.isfile(os.path.join(out, exported_lib.MANIFEST_FILE)):
      raise ExportError(f"--out {out_dir} exists and is not an exported "
                        f"model (no {exported_lib.MANIFEST_FILE}); refusing "
                        "to replace it")
  return out


def _write_directory(out: str, manifest: dict[str, Any],
                     params: Mapping[str, np.ndarray],
                     blobs: Mapping[str, bytes]) -> None:
  """Writes the artefact into a temporary sibling of `out`, then renames it
  to `out`: a crash leaves no half-written model at `out`. An existing
  model there is first renamed aside, then deleted."""
  parent, base_name = os.path.split(out)
  tmp = tempfile.mkdtemp(prefix=f".{base_name}.tmp-", dir=parent)
  try:
    params_path = os.path.join(tmp, exported_lib.PARAMS_FILE)
    exported_lib.write_safetensors(params_path, params,
                                   {"format": exported_lib.FORMAT_NAME})
    manifest["params"]["sha256"] = _sha256(params_path)
    for name, blob in blobs.items():
      _write(os.path.join(tmp, name), blob)
    _write(os.path.join(tmp, exported_lib.MANIFEST_FILE),
           (json.dumps(manifest, indent=1) + "\n").encode())
    aside = None
    if os.path.lexists(out):
      aside = os.path.join(parent, f".{base_name}.old-{uuid.uuid4().hex}")
      os.rename(out, aside)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if aside is not None:
    shutil.rmtree(aside, ignore_errors=True)
  fd = os.open(parent, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def export_workdir(workdir: str, out_dir: str, *, step: int | None = None,
                   **options: Any) -> dict[str, Any]:
  """`export_predictor` of a training workdir's checkpoint (the latest
  unless `step`); a two-step workdir exports its pair of stages.

  Raises:
    ExportError: `workdir` is missing or holds a crop re-ID model.
    FileNotFoundError: no checkpoint (for `step`).
    ps_jax.experiment.UserError, checkpoint.CheckpointError: a damaged or
      inconsistent workdir (named).
  """
  if not os.path.isdir(workdir):
    raise ExportError(f"--workdir {workdir}: no such directory (the "
                      "training run's --workdir, holding ckpt/)")
  # pylint: disable=g-import-not-at-top
  from ps_jax import experiment
  from ps_jax.data import crops
  # pylint: enable=g-import-not-at-top
  exp, variables, step = experiment.restore(workdir, step)
  if isinstance(exp.data, crops.CropPipelineConfig):
    raise ExportError(
        f"--workdir {workdir} holds a crop re-ID model "
        f"({type(exp.system).__name__}); only person-search systems export "
        "(AlignPS, OIM, two-step)")
  return export_predictor(
      exp.system, variables, exp.data, out_dir, step=step,
      source={"workdir": os.path.abspath(workdir), "step": step}, **options)


def _bucket(text: str) -> tuple[int, int]:
  parts = text.lower().replace("x", ",").split(",")
  try:
    hw = tuple(int(p) for p in parts)
  except ValueError:
    hw = ()
  if len(hw) != 2 or min(hw) < 1:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not H,W (two positive integers, pixels)")
  return hw  # type: ignore


def _positive(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    v = 0
  if v < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return v


def _platforms(text: str) -> tuple[str, ...]:
  try:
    return check_platforms(text.split(","))
  except ExportError as e:
    raise argparse.ArgumentTypeError(str(e)) from e


class _Parser(argparse.ArgumentParser):

  def error(self, message: str):  # pytype: disable=signature-mismatch
    raise ExportError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
  """The command's argument parser."""
  p = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
              description=(
                  "Export a trained person-search model (AlignPS, OIM, "
                  "two-step) for\ninference without ps_jax's model code: "
                  "its predict function at one\nimage bucket, serialized "
                  "by jax.export, its weights (safetensors) and\na "
                  "manifest, written atomically to a new directory. Load "
                  "it with\nps_jax.exported.load_exported(DIR), or index "
                  "with ps-search index\n--exported DIR (docs/export.md)."
                  "\n\nexample:\n  python -m ps_jax.export --workdir "
                  "runs/synthetic --out alignps_export"))
  p.add_argument("--workdir", required=True,
                 help="the training run's directory (train.py --workdir); "
                 "a two-step run exports its detector and re-ID net together")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="directory to create for the exported model")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step to export (default: the latest)")
  p.add_argument(
      "--bucket", type=_bucket, default=None, metavar="H,W",
      help="image size the function takes: every image is resized to fit "
      "it, keeping its aspect ratio, and padded (default: the config's "
      "data.test_scale, at which it predicts as the workdir does)")
  p.add_argument("--batch", type=_positive, default=1, metavar="B",
                 help="images per call of the exported function; fewer are "
                 "padded (default: %(default)s)")
  p.add_argument(
      "--platforms", type=_platforms, default=DEFAULT_PLATFORMS,
      metavar="P[,P...]",
      help="platforms to lower for, of cpu, cuda, rocm, tpu (default: cpu);"
      " lowering for cuda or tpu works on a CPU-only machine")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an exported model already at --out")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (0 ok, 2 user error)."""
  # pylint: disable=g-import-not-at-top
  from ps_jax import checkpoint
  from ps_jax import experiment
  # pylint: enable=g-import-not-at-top
  try:
    args = build_parser().parse_args(argv)
    manifest = export_workdir(
        args.workdir, args.out, step=args.step, bucket=args.bucket,
        batch_size=args.batch, platforms=args.platforms,
        overwrite=args.overwrite)
  except (ExportError, FileNotFoundError, experiment.UserError,
          checkpoint.CheckpointError) as e:
    if experiment.show_traceback():
      raise
    print(f"{PROG}: error: {experiment.one_line(e)}", file=sys.stderr)
    return 2
  out = os.path.abspath(args.out)
  print(json.dumps({
      "exported": out, "system": manifest["system"]["type"],
      "step": manifest["step"], "fingerprint": manifest["fingerprint"],
      "buckets": manifest["buckets"], "batch_size": manifest["batch_size"],
      "platforms": manifest["platforms"],
      "files": {n: os.path.getsize(os.path.join(out, n))
                for n in sorted(os.listdir(out))}}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
