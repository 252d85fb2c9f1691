"""End to end: a tiny checkpoint, `ps-search index`, `ps-search query`.

Uses the session's tiny checkpoint of `configs/synthetic_tiny.py`
(tests/conftest.py; the weights mean nothing, so its score threshold is 0 to
get detections at all), writes a few synthetic test scenes as image files,
indexes them with the real `ps_jax.eval.predict.Predictor` through the CLI
and queries with the box of one indexed detection. In the AlignPS query
mode (`best_iou`) that query's embedding is the detection's own, so it must
rank first with similarity 1: the person found is the one asked for,
through checkpoint loading, the on-disk index and the ranking. The index
records the checkpoint's step and fingerprint, and a query box reaching
outside its image is clipped, by the CLI and by the predictor itself.
"""

import json
import logging
import re

import jax

import numpy as np
from PIL import Image
import pytest

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as synthetic_builder)
from ps_jax import experiment
from ps_jax.data import synthetic
from ps_jax.eval import cache
from ps_jax.eval import predict
from ps_jax.search import cli
from ps_jax.search import index as index_lib


def test_index_and_query_a_checkpoint(tiny_checkpoint, tmp_path, capsys,
                                      caplog):
  tiny_workdir = tiny_checkpoint
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(3):
    scene = synthetic.generate_scene(synthetic_builder.TINY, "test", i)
    Image.fromarray(scene["image"]).save(photos / scene["image_id"].replace(
        ".jpg", ".png"))
  idx = tmp_path / "idx"
  assert cli.main(["index", "--workdir", str(tiny_workdir), "--images",
                   str(photos), "--out", str(idx)]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["images"] == 3 and summary["detections"] > 0
  model = summary["model"]
  assert model["workdir"] == str(tiny_workdir) and model["step"] == 3
  assert re.fullmatch("[0-9a-f]{32}", model["fingerprint"])
  assert cli.main(["info", "--index", str(idx)]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["model"] == model and info["format_version"] == 2

  # The fingerprint is the weights' (and the system's): the same for the
  # same checkpoint, another for other weights.
  exp, variables, step = experiment.restore(tiny_workdir)
  same = predict.Predictor(exp.system, variables, exp.data, step=step)
  assert (same.step, same.fingerprint) == (3, model["fingerprint"])
  assert model["variables_fingerprint"] == cache.variables_fingerprint(
      variables)
  assert model["system"] == same.system_description
  assert model["system"]["type"] == type(exp.system).__name__
  nudged = jax.tree.map(lambda x: x + 1, variables)
  assert predict.Predictor(exp.system, nudged, exp.data).fingerprint != (
      model["fingerprint"])

  index = index_lib.GalleryIndex.load(idx)
  assert index.embedding_dim == 16
  np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0,
                             rtol=1e-4)
  target = int(np.argmax(index.scores))
  image = index.images[index.image_of_det[target]]
  box = ",".join(f"{v:.4f}" for v in index.boxes[target])
  picture = tmp_path / "hits.png"
  loaded = []

  def load(workdir, step):
    loaded.append(cli.load_predictor(workdir, step))
    return loaded[-1]

  assert cli.main(["query", "--index", str(idx), "--image", image.path,
                   "--box", box, "--top-k", "3", "--picture",
                   str(picture)], predictor_factory=load) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["model"] == model
  top = result["hits"][0]
  assert top["image"] == image.path
  assert top["detection"] == target
  assert top["similarity"] == pytest.approx(1.0, abs=1e-4)
  np.testing.assert_allclose(top["box"], index.boxes[target], atol=1e-3)
  with Image.open(picture) as pic:
    assert pic.height > 256

  # A box reaching outside the image embeds as the box clipped to it.
  (predictor,) = loaded
  pixels = index.load_image(int(index.image_of_det[target]))
  h, w = pixels.shape[:2]
  x1, y1, x2, y2 = (float(v) for v in index.boxes[target])
  wide = (x1 - w, y1, x2 + w, y2)
  with caplog.at_level(logging.WARNING):
    got = predictor.embed_query(pixels, wide)
  assert "clipped to [0, " in caplog.text
  np.testing.assert_allclose(
      got, predictor.embed_query(pixels, (0, y1, w, y2)), rtol=1e-6,
      atol=1e-6)
  with pytest.raises(ValueError, match=re.escape(
      f"query box [{w + 1}, 0, {w + 9}, 5] is empty inside the {w}x{h} "
      f"image (clipped to it: [{w}, 0, {w}, 5]")):
    predictor.embed_query(pixels, (w + 1, 0, w + 9, 5))


def test_index_and_query_an_oim_checkpoint(tiny_oim_checkpoint, tmp_path,
                                           capsys):
  """ps-search with the two-stage system: its query embedding is the query
  box read as an RoI, and its detections are embedded at their own boxes
  (`embed_at='box'`), so a detection's box queries back to itself."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(2):
    scene = synthetic.generate_scene(synthetic_builder.TINY, "test", i)
    Image.fromarray(scene["image"]).save(photos / scene["image_id"].replace(
        ".jpg", ".png"))
  idx = tmp_path / "idx"
  assert cli.main(["index", "--workdir", str(tiny_oim_checkpoint),
                   "--images", str(photos), "--out", str(idx)]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["detections"] > 0
  assert summary["model"]["system"]["type"] == "OIMSystem"
  index = index_lib.GalleryIndex.load(idx)
  assert index.embedding_dim == 16
  target = int(np.argmax(index.scores))
  image = index.images[index.image_of_det[target]]
  box = ",".join(f"{v:.4f}" for v in index.boxes[target])
  assert cli.main(["query", "--index", str(idx), "--image", image.path,
                   "--box", box, "--top-k", "3"]) == 0
  top = json.loads(capsys.readouterr().out)["hits"][0]
  assert top["detection"] == target
  assert top["similarity"] == pytest.approx(1.0, abs=1e-3)
