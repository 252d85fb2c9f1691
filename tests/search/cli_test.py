"""Tests of the ps-search command line, with a fake model injected."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ps_jax import checkpoint
from ps_jax import experiment
from ps_jax.search import cli
from ps_jax.search import images as images_lib
from ps_jax.search import index as index_lib

# Distinct clothing colours; the person with TARGET appears once, in
# scene2.png (right half).
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30),
           (30, 200, 200), (120, 60, 10)]
TARGET = (240, 120, 200)


FP_A, FP_B = "a" * 32, "b" * 32


class FakePredictor:
  """Two fixed "people" per image (left / right half), colour embedding.

  Another `roll` is another model: its embeddings are rotated.
  """

  def __init__(self, embedding_dim=4, fingerprint=FP_A, step=None, roll=0):
    self.embedding_dim = embedding_dim
    self.fingerprint = fingerprint
    self.step = step
    self.roll = roll
    self.detected = 0

  def _embed(self, image, box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    v = np.zeros(self.embedding_dim, np.float32)
    v[:3] = image[y1:y2, x1:x2].reshape(-1, 3).mean(0) - 127.5
    return np.roll(v / np.linalg.norm(v), self.roll)

  def detect(self, images):
    self.detected += len(images)
    out = []
    for im in images:
      h, w = im.shape[:2]
      boxes = np.array([[0, 0, w // 2, h], [w // 2, 0, w, h]], np.float32)
      out.append({"boxes": boxes, "scores": np.array([0.9, 0.7], np.float32),
                  "embeddings": np.stack([self._embed(im, b) for b in boxes])})
    return out

  def embed_query(self, image, box_xyxy):
    return self._embed(image, box_xyxy)


class Factory:
  """Records the (workdir, step) the CLI asks for; one model, no steps."""

  def __init__(self, embedding_dim=4):
    self.calls = []
    self.predictor = FakePredictor(embedding_dim)

  def __call__(self, workdir, step):
    self.calls.append((workdir, step))
    return self.predictor


class TrainingRun:
  """A fake training run: its checkpoints, step -> fingerprint.

  Loads the latest checkpoint unless asked for a step, as
  `cli.load_predictor` does; the predictor tells its step and fingerprint.
  Each checkpoint is another model (`FakePredictor.roll` = its position).
  """

  def __init__(self, checkpoints):
    self.checkpoints = dict(checkpoints)
    self.calls = []

  def __call__(self, workdir, step):
    self.calls.append((workdir, step))
    step = max(self.checkpoints) if step is None else step
    if step not in self.checkpoints:
      raise FileNotFoundError(f"no checkpoint for step {step} in {workdir}")
    return FakePredictor(fingerprint=self.checkpoints[step], step=step,
                         roll=sorted(self.checkpoints).index(step))


def scene(left, right, h=36, w=48):
  im = np.zeros((h, w, 3), np.uint8)
  im[:, :w // 2] = left
  im[:, w // 2:] = right
  return im


@pytest.fixture
def photos(tmp_path):
  d = tmp_path / "photos"
  d.mkdir()
  for i in range(5):
    right = TARGET if i == 2 else COLOURS[(i + 1) % 6]
    Image.fromarray(scene(COLOURS[i], right)).save(d / f"scene{i}.png")
  (tmp_path / "run").mkdir()
  return d


def run(argv, capsys, factory=None):
  code = cli.main([str(a) for a in argv], predictor_factory=factory)
  out, err = capsys.readouterr()
  assert "Traceback" not in err
  return code, out, err


def test_index_query_info_end_to_end(photos, tmp_path, capsys):
  factory = Factory()
  idx = tmp_path / "idx"
  code, out, _ = run(["index", "--workdir", tmp_path / "run", "--images",
                      photos, "--out", idx, "--batch-size", "2"],
                     capsys, factory)
  assert code == 0
  summary = json.loads(out)
  assert (summary["images"], summary["detections"], summary["added"]) == (
      5, 10, 5)
  assert factory.calls == [(str(tmp_path / "run"), None)]

  # Query with a crop of the target person: scene2's right half ranks first.
  crop = tmp_path / "crop.png"
  Image.fromarray(np.full((30, 12, 3), TARGET, np.uint8)).save(crop)
  picture = tmp_path / "hits.png"
  code, out, _ = run(["query", "--index", idx, "--crop", crop, "--top-k", "3",
                      "--picture", picture, "--tile-height", "64"],
                     capsys, factory)
  assert code == 0
  result = json.loads(out)
  top = result["hits"][0]
  assert top["rank"] == 1 and top["image"] == str(photos / "scene2.png")
  assert top["box"] == [24, 0, 48, 36]
  assert top["similarity"] == pytest.approx(1.0, abs=1e-5)
  assert len(result["hits"]) == 3 and result["ranking"] == "similarity"
  # The model of the index is reused when --workdir is not given.
  assert factory.calls[-1] == (str(tmp_path / "run"), None)
  with Image.open(picture) as pic:
    assert pic.format == "PNG" and pic.height > 64

  # The same person from an image + box, with --cws, into a --json file.
  query = tmp_path / "q.png"
  Image.fromarray(scene((0, 0, 0), TARGET, h=50, w=60)).save(query)
  code, out, _ = run(["query", "--index", idx, "--image", query, "--box",
                      "30,0,60,50", "--cws", "--one-per-image", "--json",
                      tmp_path / "r.json"], capsys, factory)
  assert code == 0 and out == ""
  result = json.loads((tmp_path / "r.json").read_text())
  assert result["ranking"] == "cws"
  assert result["hits"][0]["image"] == str(photos / "scene2.png")
  assert result["hits"][0]["score"] == pytest.approx(0.7, abs=1e-5)
  images = [h["image"] for h in result["hits"]]
  assert len(images) == len(set(images)) == 5

  code, out, _ = run(["info", "--index", idx], capsys)
  assert code == 0 and json.loads(out)["detections"] == 10


def test_append_and_existing_index(photos, tmp_path, capsys):
  factory = Factory()
  idx = tmp_path / "idx"
  base = ["index", "--workdir", tmp_path / "run", "--out", idx]
  assert run(base + ["--images", photos / "scene0.png", photos / "scene1.png"],
             capsys, factory)[0] == 0
  code, _, err = run(base + ["--images", photos], capsys, factory)
  assert code == 2 and "already holds an index: pass --append" in err
  factory.predictor.detected = 0
  code, out, _ = run(base + ["--images", str(photos / "*.png"), "--append"],
                     capsys, factory)
  assert code == 0
  summary = json.loads(out)
  assert (summary["added"], summary["unchanged"], summary["images"]) == (
      3, 2, 5)
  assert factory.predictor.detected == 3
  factory.predictor.fingerprint = FP_B  # the other workdir's model
  code, _, err = run(["index", "--workdir", tmp_path, "--out", idx,
                      "--images", photos, "--append"], capsys, factory)
  assert code == 2 and "embeddings of different models" in err
  assert f"of {tmp_path / 'run'} (fingerprint aaaaaaaa)" in err
  assert f"of {tmp_path} (fingerprint bbbbbbbb)" in err


def test_corrupt_images_skip_or_strict(photos, tmp_path, capsys):
  (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  base = ["index", "--workdir", tmp_path / "run", "--images", photos]
  code, out, _ = run(base + ["--out", tmp_path / "a"], capsys, Factory())
  assert code == 0
  summary = json.loads(out)
  assert summary["images"] == 5
  assert [f["image"] for f in summary["failed"]] == [
      str(photos / "broken.jpg")]
  code, _, err = run(base + ["--out", tmp_path / "b", "--strict"], capsys,
                     Factory())
  assert code == 2 and "broken.jpg: cannot read image" in err
  assert not index_lib.GalleryIndex.exists(tmp_path / "b")
  # Only broken files: an error, and no empty index left behind.
  code, _, err = run(["index", "--workdir", tmp_path / "run", "--images",
                      photos / "broken.jpg", "--out", tmp_path / "c"], capsys,
                     Factory())
  assert code == 2 and "no image could be indexed: " in err
  assert not index_lib.GalleryIndex.exists(tmp_path / "c")


@pytest.mark.parametrize("argv,message", [
    (["query", "--index", "IDX", "--image", "Q"], "--image needs --box"),
    (["query", "--index", "IDX", "--image", "Q", "--box", "1,2,3"],
     "not x1,y1,x2,y2"),
    (["query", "--index", "IDX", "--crop", "Q", "--box", "1,2,3,4"],
     "--box goes with --image"),
    (["query", "--index", "IDX", "--image", "Q", "--box", "30,5,10,20"],
     "--box for .*q.png.*empty inside the 60x50 image"),
    (["query", "--index", "IDX", "--crop", "MISSING"],
     "missing.png: no such image file"),
    (["query", "--index", "NOWHERE", "--crop", "Q"],
     "no such index directory"),
    (["query", "--index", "IDX", "--crop", "Q", "--top-k", "0"],
     "'0' is not a positive integer"),
    (["query", "--index", "IDX", "--crop", "Q", "--picture", "NODIR"],
     "folder .*nodir does not exist"),
    (["index", "--workdir", "RUN", "--images", "EMPTY", "--out", "OUT"],
     "empty: folder holds no image files"),
    (["index", "--workdir", "RUN", "--images", "MISSING", "--out", "OUT"],
     "missing.png: no such file or folder"),
    (["index", "--images", "EMPTY", "--out", "OUT"],
     "one of the arguments --workdir --exported is required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["info", "--index", "EMPTY"], "no index.json"),
])
def test_user_errors_exit_2_with_a_message(photos, tmp_path, capsys, argv,
                                           message):
  factory = Factory()
  idx = tmp_path / "idx"
  assert run(["index", "--workdir", tmp_path / "run", "--images", photos,
              "--out", idx], capsys, factory)[0] == 0
  Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "q.png")
  (tmp_path / "empty").mkdir()
  subst = {"IDX": idx, "Q": tmp_path / "q.png", "RUN": tmp_path / "run",
           "EMPTY": tmp_path / "empty", "MISSING": tmp_path / "missing.png",
           "NOWHERE": tmp_path / "nowhere", "OUT": tmp_path / "out",
           "NODIR": tmp_path / "nodir" / "p.png"}
  code, out, err = run([subst.get(a, a) for a in argv], capsys, factory)
  assert code == 2 and out == ""
  assert err.startswith("ps-search: error: ") and err.count("\n") == 1
  assert __import__("re").search(message, err), err


def test_model_with_other_embedding_dim_is_refused(photos, tmp_path, capsys):
  idx = tmp_path / "idx"
  run(["index", "--workdir", tmp_path / "run", "--images", photos, "--out",
       idx, "--step", "7"], capsys, Factory())
  factory = Factory(embedding_dim=8)
  code, _, err = run(["query", "--index", idx, "--crop", photos /
                      "scene0.png"], capsys, factory)
  assert code == 2 and "embedding dim is 8" in err
  assert factory.calls == [(str(tmp_path / "run"), 7)]  # the index's step


def test_missing_workdir_and_checkpoint_are_user_errors(photos, tmp_path,
                                                        capsys):
  code, _, err = run(["index", "--workdir", tmp_path / "nope", "--images",
                      photos, "--out", tmp_path / "idx"], capsys)
  assert code == 2 and "nope: no such directory" in err

  def no_checkpoint(workdir, step):
    raise FileNotFoundError(f"no checkpoint in {workdir}/ckpt: train first")

  code, _, err = run(["index", "--workdir", tmp_path / "run", "--images",
                      photos, "--out", tmp_path / "idx"], capsys,
                     no_checkpoint)
  assert code == 2 and "no checkpoint in" in err


def test_damaged_checkpoint_is_a_user_error(photos, tmp_path, capsys,
                                            monkeypatch):

  def damaged(workdir, step):
    raise checkpoint.CheckpointError(f"step {step} of {workdir}:\n  bad")

  monkeypatch.setattr(experiment, "restore", damaged)
  code, out, err = run(["index", "--workdir", tmp_path / "run", "--images",
                        photos, "--out", tmp_path / "idx", "--step", "4"],
                       capsys)
  assert code == 2 and out == ""
  assert err == f"ps-search: error: step 4 of {tmp_path / 'run'}: bad\n"


def test_help_explains_every_option(capsys):
  for sub in ["index", "query", "info"]:
    with pytest.raises(SystemExit) as e:
      cli.main([sub, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    sub_parser = parser._subparsers._group_actions[0].choices[sub]
    for action in sub_parser._actions:
      assert action.help, (sub, action.option_strings)
      for opt in action.option_strings:
        assert opt in text


def test_python_dash_m_entry_point():
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  done = subprocess.run([sys.executable, "-m", "ps_jax.search", "--help"],
                        capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert "index" in done.stdout and "query" in done.stdout
  done = subprocess.run([sys.executable, "-m", "ps_jax.search", "info",
                         "--index", "/nonexistent/idx"], capture_output=True,
                        text=True, env=env, check=False)
  assert done.returncode == 2
  assert done.stderr.strip() == (
      "ps-search: error: /nonexistent/idx: no such index directory")


def test_index_knows_its_model_and_refuses_another(photos, tmp_path, capsys):
  run_dir, idx = tmp_path / "run", tmp_path / "idx"
  training = TrainingRun({3: FP_A})
  code, out, _ = run(["index", "--workdir", run_dir, "--images",
                      photos / "scene0.png", photos / "scene2.png", "--out",
                      idx], capsys, training)
  assert code == 0
  model = json.loads(out)["model"]
  assert (model["workdir"], model["step"], model["fingerprint"]) == (
      str(run_dir), 3, FP_A)
  meta = json.loads((idx / "index.json").read_text())
  assert meta["format_version"] == 2 and meta["model"] == model
  code, out, _ = run(["info", "--index", idx], capsys)
  assert code == 0 and json.loads(out)["model"]["step"] == 3
  assert json.loads(out)["model"]["fingerprint"] == FP_A

  # Training goes on: query and --append still load the index's step.
  training.checkpoints[5] = FP_B
  crop = tmp_path / "crop.png"
  Image.fromarray(np.full((30, 12, 3), TARGET, np.uint8)).save(crop)
  code, out, _ = run(["query", "--index", idx, "--crop", crop], capsys,
                     training)
  assert code == 0 and training.calls[-1] == (str(run_dir), 3)
  assert json.loads(out)["hits"][0]["image"] == str(photos / "scene2.png")
  code, _, _ = run(["index", "--workdir", run_dir, "--images",
                    photos / "scene1.png", "--out", idx, "--append"], capsys,
                   training)
  assert code == 0 and training.calls[-1] == (str(run_dir), 3)

  # The newer checkpoint is another model: an error naming both.
  before = (idx / "index.json").read_text()
  for argv in (["query", "--index", idx, "--crop", crop, "--step", "5"],
               ["index", "--workdir", run_dir, "--images", photos, "--out",
                idx, "--append", "--step", "5"]):
    code, out, err = run(argv, capsys, training)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert (f"the index holds embeddings of step 3 of {run_dir} (fingerprint "
            f"aaaaaaaa), this model is step 5 of {run_dir} (fingerprint "
            "bbbbbbbb)") in err
    assert "ps-search index --reembed" in err
  assert (idx / "index.json").read_text() == before

  # The index's checkpoint is gone: the error says what to do.
  del training.checkpoints[3]
  code, _, err = run(["query", "--index", idx, "--crop", crop], capsys,
                     training)
  assert code == 2 and "no checkpoint for step 3" in err
  assert "step 3 made the index" in err and "--reembed" in err

  # --reembed moves the whole index to the latest checkpoint at once.
  code, out, _ = run(["index", "--workdir", run_dir, "--out", idx,
                      "--reembed"], capsys, training)
  assert code == 0
  summary = json.loads(out)
  assert (summary["reembedded"], summary["images"], summary["added"]) == (
      3, 3, 0)
  assert (summary["model"]["step"], summary["model"]["fingerprint"]) == (
      5, FP_B)
  index = index_lib.GalleryIndex.load(idx)
  new_model = training(str(run_dir), 5)
  for i, e in enumerate(index.images):
    np.testing.assert_array_equal(
        index.detections_of(i)["embeddings"],
        new_model.detect([images_lib.read_image(e.path)])[0]["embeddings"])
  code, out, _ = run(["query", "--index", idx, "--crop", crop], capsys,
                     training)
  assert code == 0 and json.loads(out)["model"]["step"] == 5
  assert json.loads(out)["hits"][0]["image"] == str(photos / "scene2.png")


def test_reembed_needs_an_index_and_adds_images(photos, tmp_path, capsys):
  training = TrainingRun({3: FP_A})
  idx = tmp_path / "idx"
  code, _, err = run(["index", "--workdir", tmp_path / "run", "--out", idx,
                      "--reembed"], capsys, training)
  assert code == 2 and "holds no index to re-embed" in err
  code, _, err = run(["index", "--workdir", tmp_path / "run", "--out", idx],
                     capsys, training)
  assert code == 2 and "index needs --images or --tfds" in err
  assert run(["index", "--workdir", tmp_path / "run", "--out", idx,
              "--images", photos / "scene0.png"], capsys, training)[0] == 0
  training.checkpoints[5] = FP_B
  code, out, _ = run(["index", "--workdir", tmp_path / "run", "--out", idx,
                      "--reembed", "--images", photos], capsys, training)
  assert code == 0
  summary = json.loads(out)
  assert (summary["reembedded"], summary["added"], summary["unchanged"],
          summary["images"]) == (1, 4, 1, 5)
  assert summary["model"]["fingerprint"] == FP_B


def test_version_1_index_loads_with_its_model_unknown(photos, tmp_path,
                                                      capsys):
  run_dir, idx = tmp_path / "run", tmp_path / "idx"
  training = TrainingRun({3: FP_A})
  assert run(["index", "--workdir", run_dir, "--images", photos, "--out",
              idx], capsys, training)[0] == 0
  # What version 1 wrote: no fingerprint, and the step unknown.
  meta = json.loads((idx / "index.json").read_text())
  meta["format_version"] = 1
  meta["model"] = {"workdir": str(run_dir), "step": None}
  (idx / "index.json").write_text(json.dumps(meta))
  code, out, _ = run(["info", "--index", idx], capsys)
  summary = json.loads(out)
  assert code == 0 and summary["format_version"] == 1
  assert summary["model"] == {"workdir": str(run_dir), "step": None,
                              "fingerprint": None}
  # A query works, with a warning that the model cannot be checked.
  code, out, err = run(["query", "--index", idx, "--crop",
                        photos / "scene0.png"], capsys, training)
  assert code == 0 and json.loads(out)["hits"]
  assert err.startswith("ps-search: warning: cannot check that ")
  assert "the index records no fingerprint" in err and "--reembed" in err
  # Appending could mix models: refused until the index is re-embedded.
  code, _, err = run(["index", "--workdir", run_dir, "--images", photos,
                      "--out", idx, "--append"], capsys, training)
  assert code == 2 and "does not record the fingerprint" in err
  assert "--reembed" in err
  code, out, _ = run(["index", "--workdir", run_dir, "--out", idx,
                      "--reembed"], capsys, training)
  assert code == 0 and json.loads(out)["model"]["fingerprint"] == FP_A
  meta = json.loads((idx / "index.json").read_text())
  assert meta["format_version"] == 2 and meta["model"]["step"] == 3


def test_query_box_partly_outside_is_clipped_with_a_warning(photos, tmp_path,
                                                            capsys):
  idx = tmp_path / "idx"
  factory = Factory()
  assert run(["index", "--workdir", tmp_path / "run", "--images", photos,
              "--out", idx], capsys, factory)[0] == 0
  query = tmp_path / "q.png"
  Image.fromarray(scene((0, 0, 0), TARGET, h=50, w=60)).save(query)
  code, out, err = run(["query", "--index", idx, "--image", query,
                        "--box=30,-10,75,50"], capsys, factory)
  assert code == 0
  assert err == (f"ps-search: warning: --box for {query}: [30, -10, 75, 50] "
                 "reaches outside the 60x50 image; clipped to [30, 0, 60, "
                 "50]\n")
  result = json.loads(out)
  assert result["query"]["box"] == [30, 0, 60, 50]
  assert result["query"]["box_given"] == [30, -10, 75, 50]
  assert result["hits"][0]["image"] == str(photos / "scene2.png")
  code, out, err = run(["query", "--index", idx, "--image", query,
                        "--box", "70,10,90,40"], capsys, factory)
  assert code == 2 and out == ""
  assert err == (f"ps-search: error: --box for {query}: [70, 10, 90, 40] is "
                 "empty inside the 60x50 image (clipped to it: [60, 10, 60, "
                 "40]; need x1 < x2 and y1 < y2 in pixels)\n")
