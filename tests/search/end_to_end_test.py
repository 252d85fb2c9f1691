"""End to end: a tiny checkpoint, `ps-search index`, `ps-search query`.

Uses the session's tiny checkpoint of `configs/synthetic_tiny.py`
(tests/conftest.py; the weights mean nothing, so its score threshold is 0 to
get detections at all), writes a few synthetic test scenes as image files,
indexes them with the real `ps_jax.eval.predict.Predictor` through the CLI
and queries with the box of one indexed detection. In the AlignPS query
mode (`best_iou`) that query's embedding is the detection's own, so it must
rank first with similarity 1: the person found is the one asked for,
through checkpoint loading, the on-disk index and the ranking.
"""

import json

import numpy as np
from PIL import Image
import pytest

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as synthetic_builder)
from ps_jax.data import synthetic
from ps_jax.search import cli
from ps_jax.search import index as index_lib


def test_index_and_query_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
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
  assert summary["model"]["workdir"] == str(tiny_workdir)
  assert summary["model"]["step"] in (None, 3)  # 3 if the predictor tells

  index = index_lib.GalleryIndex.load(idx)
  assert index.embedding_dim == 16
  np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0,
                             rtol=1e-4)
  target = int(np.argmax(index.scores))
  image = index.images[index.image_of_det[target]]
  box = ",".join(f"{v:.4f}" for v in index.boxes[target])
  picture = tmp_path / "hits.png"
  assert cli.main(["query", "--index", str(idx), "--image", image.path,
                   "--box", box, "--top-k", "3", "--picture",
                   str(picture)]) == 0
  result = json.loads(capsys.readouterr().out)
  top = result["hits"][0]
  assert top["image"] == image.path
  assert top["detection"] == target
  assert top["similarity"] == pytest.approx(1.0, abs=1e-4)
  np.testing.assert_allclose(top["box"], index.boxes[target], atol=1e-3)
  with Image.open(picture) as pic:
    assert pic.height > 256
