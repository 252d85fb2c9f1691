"""`ps-search index` with 2 processes under jax.distributed builds the
index that 1 process builds.

The session's tiny checkpoint indexes five synthetic scenes (an odd count,
so the processes get unequal shares): once here, once by two
`python -m ps_jax.search` processes with one CPU device each, which divide
every batch between them (`ps_jax.search.distributed`); process 0 alone
writes the index and prints the summary.
"""

import json
import pathlib

import numpy as np
from PIL import Image

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as synthetic_builder)
from ps_jax.data import synthetic
from ps_jax.search import cli
from ps_jax.search import index as index_lib
from tests.conftest import TwoProcesses


def test_two_processes_index_as_one(tiny_checkpoint, tmp_path, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(5):
    scene = synthetic.generate_scene(synthetic_builder.TINY, "test", i)
    Image.fromarray(scene["image"]).save(photos / f"scene_{i}.png")
  one = tmp_path / "one"
  assert cli.main(["index", "--workdir", str(tiny_checkpoint), "--images",
                   str(photos), "--out", str(one), "--batch-size", "3"]) == 0
  capsys.readouterr()

  two = tmp_path / "two"
  runner = TwoProcesses(local_devices=1)
  log = tmp_path / "index.log"
  procs = runner.start(
      ["-m", "ps_jax.search", "index", "--workdir", tiny_checkpoint,
       "--images", photos, "--out", two, "--batch-size", "3"], log)
  runner.wait(procs, log)
  # Process 0 printed the summary; process 1 nothing.
  summary = json.loads(_json_of(log, 0))
  assert summary["images"] == 5 and summary["detections"] > 0
  assert "{\n" not in pathlib.Path(f"{log}.1").read_text()

  a, b = index_lib.GalleryIndex.load(one), index_lib.GalleryIndex.load(two)
  assert [e.name for e in a.images] == [e.name for e in b.images]
  assert a.model_info["fingerprint"] == b.model_info["fingerprint"]
  for name in ("boxes", "scores", "embeddings", "image_of_det"):
    np.testing.assert_allclose(getattr(a, name), getattr(b, name),
                               rtol=1e-6, atol=1e-6, err_msg=name)


def _json_of(log, process):
  """The JSON object a process printed (the rest of its output is logs)."""
  text = pathlib.Path(f"{log}.{process}").read_text()
  start = text.index("{\n")
  return text[start:text.index("\n}", start) + 2]
