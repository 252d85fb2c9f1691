"""Tests of ps_jax.search.index: build, save/load, incremental add, errors."""

import io
import json
import os
import pathlib
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from ps_jax.search import identity
from ps_jax.search import images as images_lib
from ps_jax.search import index as index_lib

SearchError = index_lib.SearchError


class FakePredictor:
  """Two fixed "people" per image (left and right halves), colour embedding.

  A person's embedding is the normalized [mean R, G, B, 64] of its box, its
  detection score the box's mean brightness, so results are predictable.
  """

  def __init__(self, embedding_dim: int = 4):
    self.embedding_dim = embedding_dim
    self.detected = []  # shapes of every image passed to detect

  def _embed(self, image, box):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mean = image[y1:y2, x1:x2].reshape(-1, 3).mean(0)
    v = np.zeros(self.embedding_dim, np.float32)
    v[:4] = [*mean, 64.0]
    return v / np.linalg.norm(v)

  def detect(self, images):
    out = []
    for im in images:
      self.detected.append(im.shape)
      h, w = im.shape[:2]
      boxes = np.array([[0, 0, w // 2, h], [w // 2, 0, w, h]], np.float32)
      out.append({
          "boxes": boxes,
          "scores": np.array([im[:, :w // 2].mean(), im[:, w // 2:].mean()],
                             np.float32) / 255,
          "embeddings": np.stack([self._embed(im, b) for b in boxes]),
      })
    return out

  def embed_query(self, image, box_xyxy):
    return self._embed(image, box_xyxy)


def write_image(path, left, right, size=(40, 64)) -> str:
  """A PNG whose left and right halves have the given RGB colours."""
  h, w = size
  im = np.zeros((h, w, 3), np.uint8)
  im[:, :w // 2] = left
  im[:, w // 2:] = right
  Image.fromarray(im).save(path)
  return str(path)


@pytest.fixture
def folder(tmp_path):
  d = tmp_path / "photos"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):
    write_image(d / f"img{i}.png", rng.integers(0, 256, 3),
                rng.integers(0, 256, 3), size=(32 + 4 * i, 48 + 8 * i))
  return d


def assert_same_index(a, b):
  assert a.embedding_dim == b.embedding_dim
  assert a.model_info == b.model_info
  assert [e.to_json() for e in a.images] == [e.to_json() for e in b.images]
  for k in index_lib.ARRAY_NAMES:
    x, y = getattr(a, k), getattr(b, k)
    assert x.dtype == y.dtype and x.shape == y.shape, k
    np.testing.assert_array_equal(x, y, err_msg=k)


def test_build_matches_predictor_and_round_trips(folder, tmp_path):
  pred = FakePredictor()
  paths = images_lib.find_images([folder])
  assert [os.path.basename(p) for p in paths] == [
      f"img{i}.png" for i in range(5)]
  index = index_lib.GalleryIndex.build(pred, paths, batch_size=2,
                                       model_info={"workdir": "w", "step": 3})
  assert len(index) == 5 and index.num_detections == 10
  for i, p in enumerate(paths):
    e = index.images[i]
    im = images_lib.read_image(p)
    assert (e.name, e.height, e.width) == (p, *im.shape[:2])
    expected = pred.detect([im])[0]
    got = index.detections_of(i)
    for k in ("boxes", "scores", "embeddings"):
      np.testing.assert_array_equal(got[k], expected[k])
  np.testing.assert_array_equal(index.image_of_det, np.repeat(np.arange(5), 2))

  out = tmp_path / "idx"
  index.save(out)
  loaded = index_lib.GalleryIndex.load(out)
  assert_same_index(index, loaded)
  mm = index_lib.GalleryIndex.load(out, mmap=True)
  assert_same_index(index, mm)
  np.testing.assert_array_equal(loaded.load_image(3),
                                images_lib.read_image(paths[3]))
  meta = json.loads((out / "index.json").read_text())
  assert meta["format_version"] == index_lib.FORMAT_VERSION
  assert meta["embedding_dim"] == 4 and meta["num_detections"] == 10
  # Saving again replaces the arrays of the previous generation.
  loaded.save(out)
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["index.json"] + [f"{k}.000002.npy" for k in index_lib.ARRAY_NAMES])
  assert_same_index(index, index_lib.GalleryIndex.load(out))


def test_empty_detections_are_kept_as_images(folder, tmp_path):
  class NoOne(FakePredictor):

    def detect(self, images):
      d = self.embedding_dim
      return [{"boxes": np.zeros((0, 4)), "scores": np.zeros((0,)),
               "embeddings": np.zeros((0, d))} for _ in images]

  index = index_lib.GalleryIndex.build(NoOne(), [folder / "img0.png"])
  index.save(tmp_path / "idx")
  loaded = index_lib.GalleryIndex.load(tmp_path / "idx")
  assert len(loaded) == 1 and loaded.num_detections == 0
  assert loaded.embeddings.shape == (0, 4)


def test_incremental_add_skips_unchanged_and_reindexes_changed(folder,
                                                               tmp_path):
  paths = images_lib.find_images([folder])
  pred = FakePredictor()
  index = index_lib.GalleryIndex.build(pred, paths[:3])
  index.save(tmp_path / "idx")
  index = index_lib.GalleryIndex.load(tmp_path / "idx")
  pred.detected.clear()
  report = index.add(pred, paths)
  assert (report.added, report.unchanged, report.reindexed) == (2, 3, 0)
  assert len(pred.detected) == 2  # only the new images went to the model

  # Rewrite img1 with other colours and a later mtime: it is re-indexed.
  write_image(paths[1], (255, 0, 0), (0, 0, 255), size=(20, 30))
  st = os.stat(paths[1])
  os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  pred.detected.clear()
  report = index.add(pred, paths)
  assert (report.added, report.unchanged, report.reindexed) == (0, 4, 1)
  assert pred.detected == [(20, 30, 3)]

  # The same content as a fresh build over all files (order aside).
  fresh = index_lib.GalleryIndex.build(FakePredictor(), paths)
  assert len(index) == len(fresh) == 5
  by_name = {e.name: i for i, e in enumerate(index.images)}
  for j, e in enumerate(fresh.images):
    i = by_name[e.name]
    assert (index.images[i].width, index.images[i].height) == (e.width,
                                                               e.height)
    for k, v in fresh.detections_of(j).items():
      np.testing.assert_array_equal(index.detections_of(i)[k], v)
  index.save(tmp_path / "idx")
  assert_same_index(index, index_lib.GalleryIndex.load(tmp_path / "idx"))


@pytest.mark.parametrize("fail_at", ["array", "rename_array", "index_json"])
def test_crashing_save_leaves_previous_index(folder, tmp_path, monkeypatch,
                                             fail_at):
  paths = images_lib.find_images([folder])
  old = index_lib.GalleryIndex.build(FakePredictor(), paths[:2])
  out = tmp_path / "idx"
  old.save(out)
  before = sorted(p.name for p in out.iterdir())
  new = index_lib.GalleryIndex.build(FakePredictor(), paths)

  real_save, real_replace = np.save, os.replace
  calls = {"save": 0}

  def bad_save(f, arr, **kw):
    calls["save"] += 1
    if calls["save"] == 3:
      f.write(b"partial")
      raise OSError("disk full")
    real_save(f, arr, **kw)

  def bad_replace(src, dst):
    name = pathlib.Path(dst).name
    if (fail_at == "index_json" and name == "index.json") or (
        fail_at == "rename_array" and name.startswith("embeddings")):
      raise OSError("crash")
    real_replace(src, dst)

  if fail_at == "array":
    monkeypatch.setattr(np, "save", bad_save)
  monkeypatch.setattr(os, "replace", bad_replace)
  with pytest.raises(OSError):
    new.save(out)
  monkeypatch.undo()
  assert sorted(p.name for p in out.iterdir()) == before
  assert_same_index(old, index_lib.GalleryIndex.load(out))
  new.save(out)  # and the next save works
  assert_same_index(new, index_lib.GalleryIndex.load(out))


def test_crash_in_first_save_leaves_no_index(folder, tmp_path, monkeypatch):
  index = index_lib.GalleryIndex.build(FakePredictor(), [folder / "img0.png"])
  real_replace = os.replace

  def bad_replace(src, dst):
    if pathlib.Path(dst).name == "index.json":
      raise KeyboardInterrupt
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", bad_replace)
  with pytest.raises(KeyboardInterrupt):
    index.save(tmp_path / "idx")
  monkeypatch.undo()
  assert list((tmp_path / "idx").iterdir()) == []
  with pytest.raises(SearchError, match="no index.json"):
    index_lib.GalleryIndex.load(tmp_path / "idx")


def test_save_every_checkpoints_during_indexing(folder, tmp_path):
  paths = images_lib.find_images([folder])

  class DiesAtImage4(FakePredictor):

    def detect(self, images):
      if len(self.detected) + len(images) > 4:
        raise RuntimeError("killed")
      return super().detect(images)

  index = index_lib.GalleryIndex(4)
  with pytest.raises(RuntimeError):
    index.add(DiesAtImage4(), paths, batch_size=2, save_to=tmp_path / "idx",
              save_every=2)
  saved = index_lib.GalleryIndex.load(tmp_path / "idx")
  assert [e.name for e in saved.images] == paths[:4]
  pred = FakePredictor()
  report = saved.add(pred, paths)
  assert (report.added, report.unchanged) == (1, 4)


def test_unreadable_images_skip_or_raise(folder, tmp_path):
  (folder / "garbage.jpg").write_bytes(b"not an image")
  buf = io.BytesIO()
  Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(buf, format="PNG")
  (folder / "truncated.png").write_bytes(buf.getvalue()[:60])
  paths = images_lib.find_images([folder])
  assert len(paths) == 7
  index = index_lib.GalleryIndex(4)
  report = index.add(FakePredictor(), paths)
  assert len(index) == 5 and report.added == 5
  failed = {os.path.basename(n): why for n, why in report.failed}
  assert set(failed) == {"garbage.jpg", "truncated.png"}
  assert "cannot read image" in failed["garbage.jpg"]
  with pytest.raises(SearchError, match="garbage.jpg"):
    index_lib.GalleryIndex(4).add(FakePredictor(), paths, on_error="raise")
  with pytest.raises(SearchError, match="no image could be indexed"):
    index_lib.GalleryIndex.build(FakePredictor(),
                                 [folder / "garbage.jpg"])
  with pytest.raises(SearchError, match="on_error"):
    index.add(FakePredictor(), paths, on_error="ignore")


def test_find_images_errors_and_patterns(folder, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(SearchError, match="empty.*no image files"):
    images_lib.find_images([tmp_path / "empty"])
  with pytest.raises(SearchError, match="missing.*no such file"):
    images_lib.find_images([tmp_path / "missing"])
  with pytest.raises(SearchError, match="matches no image"):
    images_lib.find_images([str(tmp_path / "*.gif")])
  with pytest.raises(SearchError, match="no image files, folders"):
    images_lib.find_images([])
  sub = folder / "sub"
  sub.mkdir()
  deep = write_image(sub / "deep.PNG", 1, 2)
  (folder / "notes.txt").write_text("x")
  flat = images_lib.find_images([folder])
  assert len(flat) == 5 and deep not in flat
  rec = images_lib.find_images([folder], recursive=True)
  assert len(rec) == 6 and deep in rec
  globbed = images_lib.find_images([str(folder / "**" / "*")])
  assert sorted(globbed) == sorted(rec)
  # Duplicates (a folder and a file in it) are dropped, order kept.
  both = images_lib.find_images([folder / "img3.png", folder])
  assert len(both) == 5 and both[0].endswith("img3.png")


def test_read_image_applies_exif_rotation_and_modes(tmp_path):
  im = np.zeros((20, 30, 3), np.uint8)
  im[:, :10] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 clockwise to display"
  Image.fromarray(im).save(tmp_path / "rot.jpg", exif=exif, quality=95)
  assert images_lib.read_image(tmp_path / "rot.jpg").shape == (30, 20, 3)
  Image.fromarray(im[..., 0]).save(tmp_path / "grey.png")
  grey = images_lib.read_image(tmp_path / "grey.png")
  assert grey.shape == (20, 30, 3) and grey.dtype == np.uint8
  with pytest.raises(SearchError, match="nothing.png: no such image file"):
    images_lib.read_image(tmp_path / "nothing.png")


def test_dimension_and_model_mismatch(folder, tmp_path):
  paths = images_lib.find_images([folder])
  index = index_lib.GalleryIndex.build(FakePredictor(4), paths[:1],
                                       model_info={"workdir": "a"})
  with pytest.raises(SearchError, match="embedding dim is 8.*4-dim"):
    index.add(FakePredictor(8), paths)
  with pytest.raises(SearchError, match="made by model"):
    index.add(FakePredictor(4), paths, model_info={"workdir": "b"})

  class WrongShape(FakePredictor):

    def detect(self, images):
      out = super().detect(images)
      out[0]["embeddings"] = out[0]["embeddings"][:, :3]
      return out

  with pytest.raises(SearchError, match=r"img1.png.*\(n, 4\)"):
    index.add(WrongShape(4), paths[1:2])


def test_load_rejects_inconsistent_index(folder, tmp_path):
  index = index_lib.GalleryIndex.build(
      FakePredictor(), images_lib.find_images([folder]))
  out = tmp_path / "idx"
  index.save(out)
  meta = json.loads((out / "index.json").read_text())

  def load_with(**changes):
    m = json.loads(json.dumps(meta))
    for k, v in changes.items():
      m[k] = v
    (out / "index.json").write_text(json.dumps(m))
    return index_lib.GalleryIndex.load(out)

  with pytest.raises(SearchError, match="format version 99"):
    load_with(format_version=99)
  bad_images = [dict(e) for e in meta["images"]]
  bad_images[1]["count"] = 3
  with pytest.raises(SearchError, match="offsets/counts"):
    load_with(images=bad_images)
  with pytest.raises(SearchError, match=r"embeddings.*float32\[10, 5\]"):
    load_with(embedding_dim=5)
  (out / "index.json").write_text("{not json")
  with pytest.raises(SearchError, match="not valid JSON"):
    index_lib.GalleryIndex.load(out)
  # ...and save refuses to overwrite what it cannot recognise.
  with pytest.raises(SearchError, match="refusing to overwrite"):
    index.save(out)


class _TinyGallery(tfds.core.GeneratorBasedBuilder):
  """Three PNG scenes with the `image` and `image_id` features."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="png"),
            "image_id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      buf = io.BytesIO()
      Image.fromarray(tiny_scene(i)).save(buf, format="PNG")
      yield i, {"image": buf.getvalue(), "image_id": f"scene_{i}.jpg"}


def tiny_scene(i: int) -> np.ndarray:
  im = np.zeros((24 + 8 * i, 32, 3), np.uint8)
  im[:, :16] = (40 * i, 200, 10)
  im[:, 16:] = (250, 30 * i, 90)
  return im


def test_index_a_tfds_split(tmp_path):
  builder = _TinyGallery(data_dir=tmp_path / "tfds", file_format="array_record")
  builder.download_and_prepare()
  pred = FakePredictor()
  index = index_lib.GalleryIndex.from_tfds(pred, builder, "test")
  assert [e.name for e in index.images] == [f"scene_{i}.jpg" for i in range(3)]
  assert index.images[2].height == 40
  index.save(tmp_path / "idx")
  loaded = index_lib.GalleryIndex.load(tmp_path / "idx")
  assert_same_index(index, loaded)
  for i in range(3):
    np.testing.assert_array_equal(loaded.load_image(i), tiny_scene(i))
    np.testing.assert_array_equal(loaded.detections_of(i)["embeddings"],
                                  pred.detect([tiny_scene(i)])[0]["embeddings"])
  pred.detected.clear()
  report = loaded.add_tfds(pred, builder.data_dir, "test")
  assert (report.added, report.unchanged) == (0, 3) and not pred.detected
  assert loaded.summary()["tfds_images"] == 3
  # Re-embedding reads every record back from the dataset.
  wider = FakePredictor(6)
  report = loaded.reembed(wider, save_to=tmp_path / "idx")
  assert report.reindexed == 3 and len(wider.detected) == 3
  again = index_lib.GalleryIndex.load(tmp_path / "idx")
  assert again.embedding_dim == 6
  assert [e.name for e in again.images] == [e.name for e in index.images]
  with pytest.raises(SearchError, match="no split 'val'"):
    index_lib.GalleryIndex(4).add_tfds(pred, builder.data_dir, "val")
  with pytest.raises(SearchError, match="not a prepared TFDS"):
    index_lib.GalleryIndex(4).add_tfds(pred, tmp_path, "test")


class _CorruptGallery(_TinyGallery):
  """As `_TinyGallery`, but the PNG of record 1 is cut short."""

  def _generate_examples(self):
    for key, ex in super()._generate_examples():
      if key == 1:
        ex = {**ex, "image": ex["image"][:40]}
      yield key, ex


def test_tfds_corrupt_record_is_skipped_by_its_image_id(tmp_path):
  builder = _CorruptGallery(data_dir=tmp_path / "tfds",
                            file_format="array_record")
  builder.download_and_prepare()
  index = index_lib.GalleryIndex(4)
  report = index.add_tfds(FakePredictor(), builder.data_dir, "test")
  assert [e.name for e in index.images] == ["scene_0.jpg", "scene_2.jpg"]
  assert [name for name, _ in report.failed] == ["scene_1.jpg"]
  assert "cannot decode" in report.failed[0][1]
  with pytest.raises(SearchError, match="scene_1.jpg: cannot decode"):
    index_lib.GalleryIndex(4).add_tfds(FakePredictor(), builder.data_dir,
                                       "test", on_error="raise")


def test_tfds_moved_or_damaged_dataset_names_the_path(tmp_path):
  builder = _TinyGallery(data_dir=tmp_path / "tfds", file_format="array_record")
  builder.download_and_prepare()
  old_dir = pathlib.Path(builder.data_dir)
  index_lib.GalleryIndex.from_tfds(FakePredictor(), builder, "test").save(
      tmp_path / "idx")
  moved = tmp_path / "moved"
  old_dir.rename(moved)
  loaded = index_lib.GalleryIndex.load(tmp_path / "idx")
  with pytest.raises(SearchError,
                     match=re.escape(f"{old_dir}: not a prepared TFDS")):
    loaded.load_image(0)
  # The dataset is back, but its split file is gone.
  moved.rename(old_dir)
  (record_file,) = old_dir.glob("*-test.array_record-*")
  record_file.unlink()
  with pytest.raises(SearchError,
                     match=re.escape(f"misses its file {record_file}")):
    index_lib.GalleryIndex.load(tmp_path / "idx").load_image(0)


def test_progress_bar_only_when_asked_or_on_a_terminal(folder, capsys):
  paths = images_lib.find_images([folder])
  index_lib.GalleryIndex(4).add(FakePredictor(), paths)  # stderr: not a tty
  assert capsys.readouterr().err == ""
  index_lib.GalleryIndex(4).add(FakePredictor(), paths, progress=True)
  assert "indexing" in capsys.readouterr().err


class Model(FakePredictor):
  """A FakePredictor that tells its fingerprint and step; another
  fingerprint embeds differently (the embedding negated)."""

  def __init__(self, fingerprint, step=None, embedding_dim=4):
    super().__init__(embedding_dim)
    self.fingerprint, self.step = fingerprint, step

  def _embed(self, image, box):
    v = super()._embed(image, box)
    return -v if self.fingerprint.startswith("b") else v


def test_add_checks_the_fingerprint(folder):
  paths = images_lib.find_images([folder])
  index = index_lib.GalleryIndex.build(Model("a" * 32, 3), paths[:2],
                                       model_info={"workdir": "/w"})
  assert index.model_info == {"workdir": "/w", "step": 3,
                              "fingerprint": "a" * 32}
  with pytest.raises(SearchError, match=re.escape(
      "the index holds embeddings of step 3 of /w (fingerprint aaaaaaaa), "
      "this model is step 5 of /w (fingerprint bbbbbbbb): embeddings of "
      "different models do not compare; re-embed the whole index")):
    index.add(Model("b" * 32, 5), paths, model_info={"workdir": "/w"})
  assert len(index) == 2
  # The same weights from a copied run directory compare.
  index.add(Model("a" * 32, 3), paths[2:3], model_info={"workdir": "/copy"})
  assert len(index) == 3 and index.model_info["workdir"] == "/copy"
  with pytest.raises(SearchError, match="this model has no fingerprint"):
    index.add(FakePredictor(), paths, model_info={"workdir": "/copy"})
  assert index.check_model({"workdir": "/copy"}, allow_unknown=True) is False
  # The fingerprint says which part differs, when the predictor tells it.
  index.model_info["variables_fingerprint"] = "v" * 32
  with pytest.raises(SearchError, match=r"\(same weights, other system"):
    index.check_model({"fingerprint": "c" * 32,
                       "variables_fingerprint": "v" * 32})


def test_reembed_replaces_everything_or_nothing(folder, tmp_path):
  paths = images_lib.find_images([folder])
  out = tmp_path / "idx"
  index = index_lib.GalleryIndex.build(Model("a" * 32, 3), paths,
                                       model_info={"workdir": "/w"})
  index.save(out)
  before = (out / "index.json").read_text()
  os.remove(paths[1])
  with pytest.raises(SearchError, match="img1.png: cannot read file"):
    index.reembed(Model("b" * 32, 5), on_error="raise", save_to=out)
  assert index.model_info["step"] == 3 and len(index) == 5
  assert (out / "index.json").read_text() == before

  new = Model("b" * 32, 5, embedding_dim=6)
  report = index.reembed(new, model_info={"workdir": "/w"}, save_to=out)
  assert (report.reindexed, report.added) == (4, 0)
  assert [n for n, _ in report.failed] == [paths[1]]
  loaded = index_lib.GalleryIndex.load(out)
  assert loaded.model_info == {"workdir": "/w", "step": 5,
                               "fingerprint": "b" * 32}
  assert loaded.embedding_dim == 6
  assert [e.path for e in loaded.images] == [p for p in paths if p != paths[1]]
  for i, e in enumerate(loaded.images):
    np.testing.assert_array_equal(
        loaded.detections_of(i)["embeddings"],
        new.detect([images_lib.read_image(e.path)])[0]["embeddings"])
  for p in paths:
    if os.path.exists(p):
      os.remove(p)
  with pytest.raises(SearchError, match="no image of the index could be "
                     "re-embedded"):
    loaded.reembed(new)
  assert len(loaded) == 4


def test_version_1_index_loads_with_its_model_unknown(folder, tmp_path):
  out = tmp_path / "idx"
  index_lib.GalleryIndex.build(Model("a" * 32, 3),
                               images_lib.find_images([folder])).save(out)
  meta = json.loads((out / "index.json").read_text())
  meta["format_version"] = 1
  meta["model"] = {"workdir": "/w", "step": None, "fingerprint": "x"}
  (out / "index.json").write_text(json.dumps(meta))
  index = index_lib.GalleryIndex.load(out)
  assert index.format_version == 1 and index.model_info == {
      "workdir": "/w", "step": None}
  assert index.summary()["model"]["fingerprint"] is None
  assert index.check_model(identity.model_identity(Model("a" * 32)),
                           allow_unknown=True) is False
  with pytest.raises(SearchError, match="does not record the fingerprint"):
    index.add(Model("a" * 32, 3), [], model_info={"workdir": "/w"})
  index.reembed(Model("a" * 32, 3), save_to=out)
  meta = json.loads((out / "index.json").read_text())
  assert meta["format_version"] == 2
  assert meta["model"]["fingerprint"] == "a" * 32
