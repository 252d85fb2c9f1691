"""Exported inference (ps_jax/export.py, ps_jax/exported.py).

Each person-search system (AlignPS, OIM, the two-step pair) is exported
from the session's tiny weights, loaded in a fresh process by the loader
alone (ps_jax itself not importable there) and run on images of other sizes
than its bucket; its detections and query embeddings must equal those of
the in-process `ps_jax.eval.predict.Predictor`. The three exports cover
between them both normalizations and resize filters, portrait buckets, a
batch of 2 with padding, lowering for cpu and cuda at once, and a model with
a non-param collection. One subprocess runs every check of the fresh
process. `ps-search --exported` is tested in tests/search/exported_test.py.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.numpy

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as synthetic_builder)
from ps_jax import experiment
from ps_jax import export
from ps_jax import exported
from ps_jax.data import pipeline
from ps_jax.data import synthetic
from ps_jax.eval import predict
from ps_jax.systems import base
from ps_jax.systems import reid
from ps_jax.systems import two_step

from tests.conftest import ROOT

# Query boxes per image (xyxy pixels of that image); the last reaches
# outside every image and is clipped.
QUERY_BOXES = [(10, 12, 40, 90), (30, 5, 52, 70), (-5, 20, 500, 60)]

# Runs in a fresh interpreter: the loader from its file, with ps_jax made
# unimportable, on every exported model; writes the outputs to an npz file.
_SCRIPT = r"""
import importlib.util, json, sys
import numpy as np
sys.modules["ps_jax"] = None  # any import of ps_jax now fails
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
exported = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exported)
models, images = json.loads(sys.argv[2]), np.load(sys.argv[3])
boxes = json.loads(sys.argv[4])
out = {}
for name, (directory, which) in models.items():
  p = exported.load_exported(directory)
  mine = [images[str(i)] for i in which]
  for i, det in enumerate(p.detect(mine)):
    for k, v in det.items():
      out[f"{name}/{i}/{k}"] = v
  for i, box in enumerate(boxes):
    out[f"{name}/q{i}"] = p.embed_query(mine[i % len(mine)], box)
  out[f"{name}/identity"] = np.array(json.dumps(
      [p.embedding_dim, p.step, p.fingerprint, p.system_description]))
np.savez(sys.argv[5], **out)
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("flax", "ps_jax", "tensorflow",
                                      "tensorflow_datasets", "optax")
               and sys.modules[m] is not None)
print(json.dumps({"heavy": heavy}))
"""


def _images():
  """A tiny synthetic scene (129 x 158, shrunk into the buckets), a crop of
  another (60 x 90, enlarged) and a portrait crop of the first (129 x 70)."""
  scenes = [synthetic.generate_scene(synthetic_builder.TINY, "test", i)[
      "image"] for i in range(2)]
  return [scenes[0], np.ascontiguousarray(scenes[1][:60, :90]),
          np.ascontiguousarray(scenes[0][:, :70])]


def _tiny_ide():
  """An IDE net with frozen batch norm: a `frozen_bn` collection beside
  `params`."""
  return reid.from_options(
      "ide", model=dict(depth=18, width_multiplier=0.125, norm="frozen"),
      loss={}, predict={}, num_ids=0)


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_oim_checkpoint, tmp_path_factory):
  """name -> (export dir, the real predictor of the same settings)."""
  tmp = tmp_path_factory.mktemp("exported")
  exp, variables, step = experiment.restore(tiny_checkpoint)
  oim_exp, oim_variables, _ = experiment.restore(tiny_oim_checkpoint)
  ide = _tiny_ide()
  ide_variables, _ = ide.init(jax.random.key(1),
                              np.zeros((1, 32, 16, 3), np.float32))
  pair = two_step.from_parts(exp.system, ide, {"crop_hw": (32, 16),
                                               "max_crops": 4})
  pair_variables = {"detector": variables, "reid": ide_variables}
  portrait = dataclasses.replace(exp.data, portrait_buckets=True)
  bgr = dataclasses.replace(exp.data, normalization="caffe_bgr",
                            resize_antialias=False)
  cases = {
      # AlignPS: portrait buckets (two functions), lowered for cpu + cuda.
      "alignps": (exp.system, variables, portrait,
                  dict(bucket=(96, 128), platforms=("cpu", "cuda"),
                       step=step)),
      # OIM: two images per call (the last call padded).
      "oim": (oim_exp.system, oim_variables, oim_exp.data,
              dict(batch_size=2)),
      # The pair, with a BGR mean-only normalization and no antialiasing.
      "two_step": (pair, pair_variables, bgr, {}),
  }
  out = {}
  for name, (system, v, data, options) in cases.items():
    manifest = export.export_predictor(system, v, data, str(tmp / name),
                                       **options)
    settings = dataclasses.replace(data, test_scale=tuple(
        manifest["buckets"][0]))
    out[name] = (str(tmp / name), predict.Predictor(
        system, v, settings, step=options.get("step")), manifest)
  return out


# The images each model runs on: AlignPS's only the portrait one, so that
# its portrait function is compiled and not also its landscape one (which
# tests/search/exported_test.py runs).
IMAGES_OF = {"alignps": [2], "oim": [0, 1, 2], "two_step": [0, 1, 2]}


def test_a_fresh_process_runs_every_system_without_ps_jax(models, tmp_path):
  images = _images()
  np.savez(tmp_path / "images.npz", **{str(i): im
                                       for i, im in enumerate(images)})
  dirs = {name: (d, IMAGES_OF[name]) for name, (d, _, _) in models.items()}
  proc = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(ROOT / "ps_jax" / "exported.py"),
       json.dumps(dirs), str(tmp_path / "images.npz"),
       json.dumps(QUERY_BOXES), str(tmp_path / "out.npz")],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  # Neither flax nor any part of ps_jax (models, systems, data) was loaded.
  assert report["heavy"] == []
  got = np.load(tmp_path / "out.npz")
  for name, (_, real, manifest) in models.items():
    mine = [images[i] for i in IMAGES_OF[name]]
    for i, det in enumerate(real.detect(mine)):
      assert len(det["scores"]) > 0
      for k, v in det.items():
        np.testing.assert_allclose(got[f"{name}/{i}/{k}"], v, rtol=1e-5,
                                   atol=1e-5, err_msg=f"{name} image {i} {k}")
    for i, box in enumerate(QUERY_BOXES):
      want = real.embed_query(mine[i % len(mine)], box)
      np.testing.assert_allclose(got[f"{name}/q{i}"], want, rtol=1e-5,
                                 atol=1e-5, err_msg=f"{name} query {i}")
    dim, step, fingerprint, system = json.loads(str(got[f"{name}/identity"]))
    assert (dim, step) == (real.embedding_dim, real.step)
    assert fingerprint == real.fingerprint == manifest["fingerprint"]
    assert system == real.system_description
  assert models["alignps"][2]["platforms"] == ["cpu", "cuda"]
  assert models["alignps"][2]["buckets"] == [[96, 128], [128, 96]]
  assert models["two_step"][2]["system"]["type"] == "TwoStepSystem"
  assert models["two_step"][1].embedding_dim == 64


def test_manifest_and_files(models):
  directory, _, manifest = models["oim"]
  assert sorted(os.listdir(directory)) == [
      "manifest.json", "params.safetensors", "predict_128x128.jaxexport"]
  assert json.loads(open(os.path.join(directory, "manifest.json")).read()
                    ) == manifest
  assert manifest["format_version"] == exported.FORMAT_VERSION
  assert manifest["batch_size"] == 2 and manifest["platforms"] == ["cpu"]
  assert manifest["input"]["size_divisor"] == 32
  assert manifest["outputs"]["boxes"]["shape"][0] == 2
  assert set(manifest["outputs"]) == set(base.PREDICT_OUTPUTS)
  assert manifest["versions"]["jax"] == jax.__version__
  # Every variable, named by its path, in a standard safetensors file.
  tensors = safetensors.numpy.load_file(os.path.join(directory,
                                                     "params.safetensors"))
  assert len(tensors) == manifest["params"]["count"]
  assert all(k.startswith("params/") for k in tensors)
  names = export.variable_names(
      {"params": {"a": np.zeros(2)}, "frozen_bn": {"b": {"mean": 1.0}}})[0]
  assert names == ["frozen_bn/b/mean", "params/a"]
  assert exported.PREDICT_OUTPUTS == base.PREDICT_OUTPUTS


def test_safetensors_round_trip(tmp_path):
  tensors = {"f": np.arange(6, dtype=np.float32).reshape(2, 3),
             "scalar": np.float32(2.5), "i": np.array([1, -2], np.int32),
             "b": np.array([True, False]),
             "h": np.arange(3).astype(jax.numpy.bfloat16)}
  path = str(tmp_path / "t.safetensors")
  exported.write_safetensors(path, tensors, {"k": "v"})
  back = exported.read_safetensors(path)
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == np.asarray(v).dtype
    np.testing.assert_array_equal(back[k], v)
  # The safetensors library reads ours, and we read its files.
  plain = {k: np.asarray(v) for k, v in tensors.items() if k != "h"}
  exported.write_safetensors(path, plain)
  for k, v in safetensors.numpy.load_file(path).items():
    np.testing.assert_array_equal(v, plain[k])
  lib_path = str(tmp_path / "lib.safetensors")
  safetensors.numpy.save_file(plain, lib_path)
  for k, v in exported.read_safetensors(lib_path).items():
    np.testing.assert_array_equal(v, plain[k])


@pytest.mark.parametrize("normalization, antialias, portrait, size", [
    ("imagenet_rgb", True, False, (37, 91)),
    ("caffe_bgr", False, False, (300, 200)),
    ("caffe_bgr", True, True, (90, 41)),
    ("imagenet_rgb", False, True, (64, 96)),
])
def test_preprocessing_equals_the_predictors(normalization, antialias,
                                             portrait, size):
  """The loader's numpy preprocessing against Predictor._batch (the data
  pipeline's ops), byte for byte."""
  data = pipeline.PipelineConfig(
      batch_size=1, train_scales=((64, 96),), test_scale=(64, 96),
      max_boxes=1, normalization=normalization, resize_antialias=antialias,
      portrait_buckets=portrait)
  real = predict.Predictor(types.SimpleNamespace(embedding_dim=1), None,
                           data)
  order, mean, std = export.NORMALIZATIONS[normalization]
  image = np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)
  want = real._batch(image)  # pylint: disable=protected-access
  bucket = (96, 64) if portrait and size[0] > size[1] else (64, 96)
  got, hw = exported.preprocess(
      image, bucket, size_divisor=32, mean=mean, std=std,
      channel_order=order, resize_antialias=antialias)
  np.testing.assert_array_equal(got, want["image"][0])
  np.testing.assert_array_equal(hw, want["image_hw"][0])


def _copy(models, tmp_path, name):
  """A copy of the exported OIM model at tmp_path / name."""
  target = tmp_path / name
  shutil.copytree(models["oim"][0], target)
  return target


def _edit_manifest(directory, **changes):
  path = directory / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest.update(changes)
  path.write_text(json.dumps(manifest))


def test_load_errors_name_the_file(models, tmp_path):
  with pytest.raises(exported.ExportedModelError, match="no such directory"):
    exported.load_exported(str(tmp_path / "nothing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(exported.ExportedModelError,
                     match=f"{empty}: no manifest.json"):
    exported.load_exported(str(empty))

  # One byte of the weights changed: the checksum names the file.
  bad = _copy(models, tmp_path, "bad")
  params = bad / "params.safetensors"
  data = bytearray(params.read_bytes())
  data[-3] ^= 0xFF
  params.write_bytes(bytes(data))
  with pytest.raises(exported.ExportedModelError,
                     match=f"{params}: its SHA-256 is not the one"):
    exported.load_exported(str(bad))
  # Truncated (and its checksum not checked): the reader names the file.
  params.write_bytes(bytes(data[:-100]))
  with pytest.raises(exported.ExportedModelError,
                     match=f"{params}: not a valid safetensors file .*"
                           "truncated"):
    exported.read_safetensors(str(params))
  params.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
  with pytest.raises(exported.ExportedModelError, match="header is not JSON"):
    exported.read_safetensors(str(params))
  os.remove(params)
  with pytest.raises(exported.ExportedModelError,
                     match=f"{params}: missing"):
    exported.load_exported(str(bad))

  cases = [
      ({"format_version": 99}, "format_version 99, newer than"),
      ({"batch_size": "2"}, "field 'batch_size' is '2'; expected int"),
      ({"buckets": [[0, 5]]}, "field 'buckets' is .*one or two"),
      ({"platforms": ["tpu"]}, r"exported for \['tpu'\], but jax runs on "
                               "cpu here; export again with --platforms "
                               "tpu,cpu"),
  ]
  for i, (changes, message) in enumerate(cases):
    target = _copy(models, tmp_path, f"edited{i}")
    _edit_manifest(target, **changes)
    with pytest.raises(exported.ExportedModelError, match=message):
      exported.load_exported(str(target))
  # Weights that do not fit the function: named with what it expects.
  target = _copy(models, tmp_path, "other_weights")
  params = str(target / "params.safetensors")
  tensors = exported.read_safetensors(params)
  name = sorted(tensors)[0]
  tensors[name] = np.zeros((7,) + tensors[name].shape, np.float32)
  exported.write_safetensors(params, tensors)
  manifest = json.loads((target / "manifest.json").read_text())
  manifest["params"]["sha256"] = hashlib.sha256(
      open(params, "rb").read()).hexdigest()
  (target / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(exported.ExportedModelError, match=re.escape(
      f"{params}: tensor {name!r} is float32[7, ")):
    exported.load_exported(str(target))
  del tensors[name]
  exported.write_safetensors(params, tensors)
  manifest["params"]["sha256"] = hashlib.sha256(
      open(params, "rb").read()).hexdigest()
  (target / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(exported.ExportedModelError, match=re.escape(
      f"{params}: does not hold the function's parameters: missing "
      f"[{name!r}]")):
    exported.load_exported(str(target))

  target = _copy(models, tmp_path, "nofield")
  manifest = json.loads((target / "manifest.json").read_text())
  del manifest["input"]["mean"]
  (target / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(exported.ExportedModelError,
                     match="manifest.json: field 'input.mean' is missing"):
    exported.load_exported(str(target))


def test_buckets_and_bad_images(models):
  portrait = exported.load_exported(models["alignps"][0])
  assert portrait.buckets == [(96, 128), (128, 96)]
  assert [portrait.bucket_of(hw) for hw in ((70, 100), (100, 70), (9, 9))
          ] == [(96, 128), (128, 96), (96, 128)]
  # Images of other sizes run in the fresh process above; these fail
  # before the model runs.
  p = exported.load_exported(models["oim"][0])
  assert p.bucket_of((500, 20)) == (128, 128)
  for image in (np.zeros((20, 30), np.uint8), np.zeros((20, 30, 4), np.uint8),
                np.zeros((20, 30, 3), np.float32)):
    with pytest.raises(ValueError, match="expected an RGB image uint8"):
      p.detect([image])
  with pytest.raises(ValueError, match=r"query box \[50, 0, 60, 5\] is "
                     "empty inside the 30x20 image"):
    p.embed_query(np.zeros((20, 30, 3), np.uint8), (50, 0, 60, 5))


def test_export_errors(models, tiny_checkpoint, tmp_path, capsys):
  directory, real, _ = models["oim"]
  # pylint: disable=protected-access
  system, variables, data = real.system, real._variables, real._data
  # pylint: enable=protected-access
  with pytest.raises(export.ExportError, match="already exists"):
    export.export_predictor(system, variables, data, directory)
  (tmp_path / "photos").mkdir()
  with pytest.raises(export.ExportError, match="is not an exported model"):
    export.export_predictor(system, variables, data, tmp_path / "photos",
                            overwrite=True)
  for kwargs, message in [
      (dict(bucket=(0, 64)), r"bucket \(0, 64\): expected \(H, W\)"),
      (dict(batch_size=0), "batch size 0: expected an integer >= 1"),
      (dict(platforms=("gpu",)), r"platforms \['gpu'\]: expected"),
  ]:
    with pytest.raises(export.ExportError, match=message):
      export.export_predictor(system, variables, data, tmp_path / "x",
                              **kwargs)
  with pytest.raises(export.ExportError, match="taller than wide"):
    export.export_predictor(system, variables, dataclasses.replace(
        data, portrait_buckets=True), tmp_path / "x", bucket=(128, 64))
  with pytest.raises(export.ExportError, match="not a person-search system"):
    export.export_predictor(_tiny_ide(), variables, data, tmp_path / "x")
  with pytest.raises(export.ExportError, match="folder .* does not exist"):
    export.export_predictor(system, variables, data, tmp_path / "a" / "b")
  assert not os.path.exists(tmp_path / "x")
  # The command line: one line, exit 2.
  for argv, message in [
      (["--workdir", tmp_path / "none", "--out", tmp_path / "o"],
       "--workdir .*none: no such directory"),
      (["--workdir", tiny_checkpoint, "--out", tmp_path / "o", "--bucket",
        "12"], "argument --bucket: '12' is not H,W"),
      (["--workdir", tiny_checkpoint, "--out", directory],
       "already exists"),
      (["--workdir", tiny_checkpoint, "--out", tmp_path / "o", "--step",
        "99"], "99"),
  ]:
    assert export.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m ps_jax.export: error: ")
    assert err.count("\n") == 1 and re.search(message, err)
  with pytest.raises(SystemExit):
    export.build_parser().parse_args(["--help"])
  helptext = capsys.readouterr().out
  for flag in ("--workdir", "--out", "--bucket", "--batch", "--platforms",
               "--overwrite", "--step"):
    assert flag in helptext
