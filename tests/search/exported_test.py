"""`ps-search` with an exported model (`--exported`, ps_jax/export.py).

The session's tiny AlignPS checkpoint is exported by the command line at
its test scale; indexing a few synthetic scenes with it gives the index the
workdir gives, and the two indexes know the same model (fingerprint), so
either model extends or queries either index.
"""

import json

import numpy as np
from PIL import Image
import pytest

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as synthetic_builder)
from ps_jax import export
from ps_jax.data import synthetic
from ps_jax.search import cli
from ps_jax.search import index as index_lib

from tests.conftest import TINY_STEP


def test_index_and_query_with_an_exported_model(tiny_checkpoint, tmp_path,
                                                capsys):
  model = tmp_path / "model"
  assert export.main(["--workdir", str(tiny_checkpoint), "--out",
                      str(model)]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["exported"] == str(model) and summary["step"] == TINY_STEP
  assert summary["buckets"] == [[128, 128]]
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(2):
    scene = synthetic.generate_scene(synthetic_builder.TINY, "test", i)
    Image.fromarray(scene["image"]).save(photos / f"scene{i}.png")

  by_workdir, by_export = tmp_path / "by_workdir", tmp_path / "by_export"
  assert cli.main(["index", "--workdir", str(tiny_checkpoint), "--images",
                   str(photos), "--out", str(by_workdir)]) == 0
  capsys.readouterr()
  assert cli.main(["index", "--exported", str(model), "--images",
                   str(photos), "--out", str(by_export),
                   "--batch-size", "2"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["model"]["exported"] == str(model)
  assert info["model"]["workdir"] is None  # summary() shows it unknown
  assert info["model"]["step"] == TINY_STEP
  a = index_lib.GalleryIndex.load(by_workdir)
  b = index_lib.GalleryIndex.load(by_export)
  assert a.num_detections == b.num_detections > 0
  for name in ("boxes", "scores", "embeddings"):
    np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_array_equal(b.image_of_det, a.image_of_det)
  assert "workdir" not in b.model_info
  for key in ("fingerprint", "variables_fingerprint", "system"):
    assert a.model_info[key] == b.model_info[key]
  assert summary["fingerprint"] == a.model_info["fingerprint"]

  # The same model: the exported one extends the workdir's index (nothing
  # changed, so nothing is run).
  assert cli.main(["index", "--exported", str(model), "--images",
                   str(photos), "--out", str(by_workdir), "--append"]) == 0
  assert json.loads(capsys.readouterr().out)["unchanged"] == 2

  # A query defaults to the exported model that made the index; a
  # detection's own box finds itself (AlignPS's best_iou query rule).
  target = int(np.argmax(b.scores))
  image = b.images[b.image_of_det[target]]
  box = ",".join(f"{v:.4f}" for v in b.boxes[target])
  assert cli.main(["query", "--index", str(by_export), "--image", image.path,
                   "--box", box, "--top-k", "2"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["model"]["exported"] == str(model)
  assert result["hits"][0]["detection"] == target
  assert result["hits"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["index", "--images", "p", "--out", "o"],
     "one of the arguments --workdir --exported is required"),
    (["index", "--workdir", "w", "--exported", "e", "--images", "p", "--out",
      "o"], "argument --exported: not allowed with argument --workdir"),
    (["index", "--exported", "{tmp}/none", "--images", "{tmp}", "--out",
      "{tmp}/o"], "{tmp}/none: no such directory"),
    (["index", "--exported", "{tmp}", "--images", "{tmp}", "--out",
      "{tmp}/o"], "{tmp}: no manifest.json"),
    (["index", "--exported", "{tmp}", "--step", "3", "--images", "{tmp}",
      "--out", "{tmp}/o"], "--step goes with --workdir"),
])
def test_exported_user_errors(argv, message, tmp_path, capsys):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  argv = [a.format(tmp=tmp_path) for a in argv]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("ps-search: error: ")
  assert message.format(tmp=tmp_path) in err


def test_help_names_exported(capsys):
  for command in ("index", "query"):
    with pytest.raises(SystemExit):
      cli.build_parser().parse_args([command, "--help"])
    assert "--exported DIR" in capsys.readouterr().out
