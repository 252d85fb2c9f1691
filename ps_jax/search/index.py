"""A gallery index: every detected person of a set of images, with embeddings.

Indexing runs a trained model once over a gallery (a folder of images, or a
TFDS split) and keeps, per detection, its box, detection score and re-id
embedding, so queries afterwards need no model run over the gallery and the
index loads without the model (`GalleryIndex.load`).

On disk an index is a directory (no pickle anywhere):
  index.json             format version, embedding dim, the model that made
                         it (workdir, step, fingerprint; see `identity`),
                         one entry per image, and the names of the array
                         files below;
  boxes.<gen>.npy        f32[M, 4] boxes [x1, y1, x2, y2], original pixels
                         of the image as read (EXIF orientation applied);
  scores.<gen>.npy       f32[M] detection scores in [0, 1];
  embeddings.<gen>.npy   f32[M, D] L2-normalized re-id embeddings;
  image_of_det.<gen>.npy i32[M] row of `images` each detection belongs to.
M counts the detections of all images; the detections of image i are the
rows [offset_i, offset_i + count_i), images in `index.json` order.

Saves are atomic and reads are checked (`ps_jax.search.storage`): a writer
that dies at any point leaves the previous index untouched. One writer at a
time per directory.

Images are identified by their absolute path plus modification time and size
(files), or by builder directory, split and record number (TFDS), so `add`
skips what is already indexed and re-indexes files that changed.

Embeddings of two models do not compare, so an index refuses to be extended
by a model whose fingerprint differs from the one that made it
(`check_model`); `reembed` moves a whole index to another model. Format
version 2 added the fingerprint; version 1 indexes still load, their model
unknown.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from absl import logging
import numpy as np
import tqdm

from ps_jax.search import identity
from ps_jax.search import images as images_lib
from ps_jax.search import storage
from ps_jax.search.images import SearchError
from ps_jax.search.images import read_image

FORMAT_NAME = storage.FORMAT_NAME
FORMAT_VERSION = storage.FORMAT_VERSION
INDEX_FILE = storage.INDEX_FILE
ARRAY_NAMES = storage.ARRAY_NAMES
ON_ERROR = ("skip", "raise")
# One image's detections: boxes f32[n, 4], scores f32[n], embeddings f32[n, D].
_Dets = tuple[np.ndarray, np.ndarray, np.ndarray]


@runtime_checkable
class Predictor(Protocol):
  """What the search needs from a trained model (ps_jax.eval.predict).

  Tests inject small fakes; `ps_jax.eval.predict.Predictor` is the real one.
  Optional attributes, recorded in the index when present
  (`identity.model_identity`): `fingerprint` (str, equal for predictors
  that embed alike; without one the index cannot tell models apart), `step`
  (int, the checkpoint step), `variables_fingerprint` (str) and
  `system_description` (dict).
  """

  embedding_dim: int

  def detect(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Detect and embed people.

    Args:
      images: uint8[H, W, 3] RGB images of any sizes.
    Returns:
      Per image {"boxes": f32[n, 4] xyxy original pixels, "scores": f32[n],
      "embeddings": f32[n, D] L2-normalized}.
    """
    ...

  def embed_query(self, image: np.ndarray,
                  box_xyxy: Sequence[float]) -> np.ndarray:
    """f32[D] L2-normalized embedding of the person in `box_xyxy` (pixels)."""
    ...


@dataclasses.dataclass
class ImageEntry:
  """One indexed image.

  Attributes:
    name: what a hit shows: the absolute file path, or the TFDS image_id.
    width, height: image size in pixels (the frame of its boxes).
    offset, count: its detections are rows [offset, offset + count).
    path, mtime_ns, size_bytes: files only; the change check of `add`.
    builder_dir, split, record, image_id: TFDS only; `record` is the index in
      the split's data source.
  """

  name: str
  width: int
  height: int
  offset: int = 0
  count: int = 0
  path: str | None = None
  mtime_ns: int | None = None
  size_bytes: int | None = None
  builder_dir: str | None = None
  split: str | None = None
  record: int | None = None
  image_id: str | None = None

  @property
  def key(self) -> tuple[str, ...]:
    """Identity of the image across `add` calls."""
    if self.path is not None:
      return ("file", self.path)
    return ("tfds", str(self.builder_dir), str(self.split), str(self.record))

  def to_json(self) -> dict[str, Any]:
    """The entry as stored in index.json (unset fields left out)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], where: str) -> ImageEntry:
    """Parses `to_json`'s dict; errors name the file `where`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    missing = {"name", "width", "height", "offset", "count"} - set(d)
    if unknown or missing:
      raise SearchError(
          f"{where}: image entry {dict(d)} has unknown fields "
          f"{sorted(unknown)} or misses {sorted(missing)}")
    if (d.get("path") is None) == (d.get("builder_dir") is None):
      raise SearchError(f"{where}: image entry {d['name']!r} needs exactly "
                        "one of 'path' (file) or 'builder_dir' (TFDS)")
    return cls(**d)


@dataclasses.dataclass
class IndexingReport:
  """What one `add` call did (counts of images, and the failures)."""

  added: int = 0
  reindexed: int = 0
  unchanged: int = 0
  detections: int = 0
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Source:
  """An image to index: its entry (without size, offset, count) and a loader.

  `load(entry)` returns the pixels and may complete the entry (TFDS fills in
  the image_id, known only once the record is decoded).
  """

  entry: ImageEntry
  load: Callable[[ImageEntry], np.ndarray]


def _file_source(path: str) -> _Source:
  st = os.stat(path)
  return _Source(
      ImageEntry(name=path, width=0, height=0, path=path,
                 mtime_ns=st.st_mtime_ns, size_bytes=st.st_size),
      lambda entry: read_image(entry.path))


def _check_detections(out: Any, name: str, dim: int) -> _Dets:
  """Validates one image's predictor output; returns boxes, scores, emb."""
  if not isinstance(out, Mapping) or not {"boxes", "scores",
                                          "embeddings"} <= set(out):
    raise SearchError(f"{name}: predictor returned {type(out).__name__}, "
                      "expected a dict with boxes, scores and embeddings")
  boxes = np.asarray(out["boxes"], np.float32)
  scores = np.asarray(out["scores"], np.float32)
  emb = np.asarray(out["embeddings"], np.float32)
  n = scores.shape[0] if scores.ndim == 1 else -1
  if boxes.shape != (n, 4) or emb.shape != (n, dim):
    raise SearchError(
        f"{name}: predictor returned boxes {boxes.shape}, scores "
        f"{scores.shape}, embeddings {emb.shape}; expected (n, 4), (n,), "
        f"(n, {dim})")
  return boxes, scores, emb


def _progress(total: int, enabled: bool | None, desc: str) -> tqdm.tqdm:
  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm.tqdm(total=total, unit="img", desc=desc, disable=not enabled,
                   file=sys.stderr, dynamic_ncols=True)


class GalleryIndex:
  """Detections and embeddings of a gallery of images.

  Attributes:
    embedding_dim: D.
    model_info: JSON-able description of the model that made the index
      (`workdir`, and `identity.model_identity`'s keys), checked by `add`
      and shown by the CLI.
    format_version: the on-disk format it was loaded from (FORMAT_VERSION
      for a new index; `save` writes FORMAT_VERSION).
    images: list of ImageEntry, in array order.
    boxes: f32[M, 4] xyxy, original pixels of each detection's image.
    scores: f32[M] detection scores in [0, 1].
    embeddings: f32[M, D] L2-normalized.
    image_of_det: i32[M] row of `images` of each detection.
    generation: the saved generation these arrays were loaded from or last
      saved as (None if never saved); approximate indexes (`ann`) record it.
  """

  def __init__(self, embedding_dim: int,
               model_info: Mapping[str, Any] | None = None):
    if int(embedding_dim) <= 0:
      raise SearchError(f"embedding_dim must be positive, got {embedding_dim}")
    self.embedding_dim = int(embedding_dim)
    self.model_info = dict(model_info or {})
    self.format_version = FORMAT_VERSION
    self.images: list[ImageEntry] = []
    self.boxes = np.zeros((0, 4), np.float32)
    self.scores = np.zeros((0,), np.float32)
    self.embeddings = np.zeros((0, self.embedding_dim), np.float32)
    self.image_of_det = np.zeros((0,), np.int32)
    self.generation: int | None = None
    self._data_sources: dict[tuple[str, str], Any] = {}

  def __len__(self) -> int:
    return len(self.images)

  @property
  def num_detections(self) -> int:
    return int(self.scores.shape[0])

  def __repr__(self) -> str:
    return (f"GalleryIndex({len(self)} images, {self.num_detections} "
            f"detections, D={self.embedding_dim}, model={self.model_info})")

  # Building.

  @classmethod
  def build(cls, predictor: Predictor,
            images: Iterable[str | os.PathLike[str]], *,
            model_info: Mapping[str, Any] | None = None,
            **add_kwargs: Any) -> GalleryIndex:
    """Indexes image files with `predictor` (see `add` for the options).

    Raises:
      SearchError if no image could be indexed.
    """
    index = cls(predictor.embedding_dim, model_info)
    report = index.add(predictor, images, **add_kwargs)
    if len(index) == 0:
      raise SearchError(
          "no image could be indexed: "
          + "; ".join(f"{n}: {why}" for n, why in report.failed[:5]))
    return index

  def add(self, predictor: Predictor,
          images: Iterable[str | os.PathLike[str]], *, batch_size: int = 8,
          on_error: str = "skip", progress: bool | None = None,
          model_info: Mapping[str, Any] | None = None,
          save_to: str | os.PathLike[str] | None = None,
          save_every: int = 0) -> IndexingReport:
    """Adds image files; skips those already indexed and unchanged.

    A file already in the index whose modification time or size changed is
    indexed again (its old detections are dropped).

    Args:
      predictor: the model; its `embedding_dim` must equal the index's.
      images: image file paths (see `find_images` for folders and globs).
      batch_size: images per `predictor.detect` call.
      on_error: "skip" (default) logs a warning naming an unreadable or
        corrupt file and goes on, so one bad frame does not stop a long run;
        "raise" stops at the first one with a SearchError naming it.
      progress: show a progress bar on stderr; None: only if stderr is a
        terminal.
      model_info: the model's description (e.g. its workdir), completed by
        `identity.model_identity(predictor)`; it must name the index's model
        (`check_model`): embeddings of different models do not compare.
      save_to: if set, the index directory saved to every `save_every`
        images and at the end, so an interrupted run resumes with `add`.
      save_every: images between intermediate saves (0: only at the end).
    Returns:
      An IndexingReport.
    Raises:
      SearchError if the predictor is not the index's model (`check_model`)
      or an image fails with on_error="raise".
    """
    if on_error not in ON_ERROR:
      raise SearchError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    paths = [os.path.abspath(os.fspath(p)) for p in images]
    sources = []
    report = IndexingReport()
    for p in dict.fromkeys(paths):
      try:
        sources.append(_file_source(p))
      except OSError as e:
        self._fail(report, p, f"cannot read file ({e.strerror or e})",
                   on_error)
    return self._add_sources(predictor, sources, report, batch_size=batch_size,
                             on_error=on_error, progress=progress,
                             model_info=model_info, save_to=save_to,
                             save_every=save_every)

  @classmethod
  def from_tfds(cls, predictor: Predictor, builder: Any, split: str, *,
                model_info: Mapping[str, Any] | None = None,
                **add_kwargs: Any) -> GalleryIndex:
    """Indexes a TFDS split (see `add_tfds` for the arguments)."""
    index = cls(predictor.embedding_dim, model_info)
    index.add_tfds(predictor, builder, split, **add_kwargs)
    if len(index) == 0:
      raise SearchError(f"TFDS split {split!r} has no image to index")
    return index

  def add_tfds(self, predictor: Predictor, builder: Any, split: str, *,
               limit: int | None = None, **add_kwargs: Any) -> IndexingReport:
    """Adds the images of a prepared TFDS split, skipping indexed records.

    Args:
      predictor: the model.
      builder: a prepared `tfds.core.DatasetBuilder` or the path of its
        versioned directory (the one holding `dataset_info.json`), in a
        random-access format (ArrayRecord); records need an `image` (a TFDS
        Image feature) and an `image_id` feature, as every ps_jax
        person-search builder has. The index stores the directory and reads
        images back from it (`load_image`) without the builder class; a
        record whose image cannot be decoded fails under its image_id.
      split: the split name, e.g. "test".
      limit: index only the first `limit` records.
      **add_kwargs: as for `add`.
    """
    builder_dir = os.path.abspath(os.fspath(
        builder if isinstance(builder, (str, os.PathLike)) else
        builder.data_dir))
    src = self._data_source(builder_dir, split)
    n = len(src) if limit is None else min(int(limit), len(src))
    # Records are decoded only when indexed: listing the image_ids first
    # would decode every image twice.
    sources = [self._tfds_source(builder_dir, split, i) for i in range(n)]
    return self._add_sources(predictor, sources, IndexingReport(),
                             **add_kwargs)

  def _tfds_source(self, builder_dir: str, split: str, record: int,
                   name: str | None = None) -> _Source:
    """Record `record` of a split; failures name it `name` until decoded."""

    def load_record(entry: ImageEntry) -> np.ndarray:
      src = self._data_source(builder_dir, split)
      ex = images_lib.read_record(src, builder_dir, split, entry.record)
      entry.image_id = entry.name = images_lib.image_id_of(ex, entry.record)
      return images_lib.decode_record_image(ex, entry.name)

    return _Source(ImageEntry(name=name or f"{split}[{record}]", width=0,
                              height=0, builder_dir=builder_dir, split=split,
                              record=record), load_record)

  def reembed(self, predictor: Predictor, *,
              model_info: Mapping[str, Any] | None = None,
              batch_size: int = 8, on_error: str = "skip",
              progress: bool | None = None,
              save_to: str | os.PathLike[str] | None = None
              ) -> IndexingReport:
    """Indexes every image of the index again, with another model.

    For an index made by another model (training went on, another run) or
    one that does not record its model (format version 1): all detections
    and embeddings, the model info and the embedding dim are replaced at
    once, when every image is done, so an error or an interruption leaves
    the index (and `save_to`) as it was.

    Args:
      predictor: the new model.
      model_info: its description (e.g. its workdir), completed by
        `identity.model_identity(predictor)`; it replaces the index's.
      batch_size: images per `predictor.detect` call.
      on_error: "skip" drops images that can no longer be read (listed in
        the report's `failed`); "raise" stops at the first one.
      progress: show a progress bar on stderr; None: only on a terminal.
      save_to: if set, the index directory saved to once, at the end.
    Returns:
      An IndexingReport; `reindexed` counts the images re-embedded.
    Raises:
      SearchError if no image could be re-embedded (the index is unchanged).
    """
    if on_error not in ON_ERROR:
      raise SearchError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    report = IndexingReport()
    sources = []
    for e in self.images:
      if e.path is None:
        sources.append(self._tfds_source(e.builder_dir, e.split, e.record,
                                         e.name))
        continue
      try:
        sources.append(_file_source(e.path))
      except OSError as err:
        self._fail(report, e.path, f"cannot read file ({err.strerror or err})",
                   on_error)
    fresh = GalleryIndex(predictor.embedding_dim, model_info)
    fresh._data_sources = self._data_sources  # pylint: disable=protected-access
    fresh._add_sources(  # pylint: disable=protected-access
        predictor, sources, report, batch_size=batch_size, on_error=on_error,
        progress=progress)
    if not fresh.images:
      raise SearchError("no image of the index could be re-embedded: "
                        + "; ".join(f"{n}: {why}" for n, why in
                                    report.failed[:5]))
    for k in ("embedding_dim", "model_info", "images", *ARRAY_NAMES):
      setattr(self, k, getattr(fresh, k))
    report.reindexed, report.added = report.added, 0
    if save_to is not None:
      self.save(save_to)
    return report

  def _fail(self, report: IndexingReport, name: str, why: str,
            on_error: str) -> None:
    if on_error == "raise":
      raise SearchError(f"{name}: {why}")
    logging.warning("skipping %s: %s", name, why)
    report.failed.append((name, why))

  def _add_sources(self, predictor: Predictor, sources: Sequence[_Source],
                   report: IndexingReport, *, batch_size: int = 8,
                   on_error: str = "skip", progress: bool | None = None,
                   model_info: Mapping[str, Any] | None = None,
                   save_to: str | os.PathLike[str] | None = None,
                   save_every: int = 0) -> IndexingReport:
    if on_error not in ON_ERROR:
      raise SearchError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if batch_size < 1:
      raise SearchError(f"batch_size must be >= 1, got {batch_size}")
    info = {**dict(model_info or {}),
            **identity.model_identity(predictor)}
    if info:
      self.check_model(info)
      self.model_info = {**self.model_info, **info}
    self.check_predictor(predictor)

    known = {e.key: e for e in self.images}
    todo = []
    for s in sources:
      old = known.get(s.entry.key)
      if old is not None and (old.mtime_ns, old.size_bytes) == (
          s.entry.mtime_ns, s.entry.size_bytes):
        report.unchanged += 1
      else:
        todo.append(s)
    pending: list[tuple[ImageEntry, _Dets]] = []
    since_save = 0
    with _progress(len(todo), progress, "indexing") as bar:
      for start in range(0, len(todo), batch_size):
        batch, pixels = [], []
        for s in todo[start:start + batch_size]:
          try:
            im = s.load(s.entry)
          except SearchError as e:
            self._fail(report, s.entry.name, str(e).removeprefix(
                f"{s.entry.name}: "), on_error)
            continue
          if im.ndim != 3 or im.shape[2] != 3 or min(im.shape[:2]) < 1:
            self._fail(report, s.entry.name,
                       f"image has shape {im.shape}, expected [H, W, 3]",
                       on_error)
            continue
          s.entry.height, s.entry.width = int(im.shape[0]), int(im.shape[1])
          batch.append(s)
          pixels.append(im)
        if pixels:
          outs = predictor.detect(pixels)
          if len(outs) != len(pixels):
            raise SearchError(f"predictor returned {len(outs)} results for "
                              f"{len(pixels)} images")
          for s, out in zip(batch, outs):
            pending.append((s.entry, _check_detections(
                out, s.entry.name, self.embedding_dim)))
        bar.update(min(batch_size, len(todo) - start))
        since_save += len(pixels)
        if save_to is not None and save_every and since_save >= save_every:
          self._commit(pending, report)
          pending, since_save = [], 0
          self.save(save_to)
    changed = bool(pending)
    self._commit(pending, report)
    # Nothing new (all unchanged or unreadable) leaves the directory as it
    # was: no empty index is created for a folder of broken files.
    if save_to is not None and self.images and (
        changed or not self.exists(save_to)):
      self.save(save_to)
    if report.failed:
      logging.warning("%d image(s) could not be indexed (first: %s: %s)",
                      len(report.failed), *report.failed[0])
    return report

  def _commit(self, pending: Sequence[tuple[ImageEntry, _Dets]],
              report: IndexingReport) -> None:
    """Appends new images; drops older versions of the same images."""
    if not pending:
      return
    new_keys = {e.key for e, _ in pending}
    keep_img = [i for i, e in enumerate(self.images) if e.key not in new_keys]
    replaced = len(self.images) - len(keep_img)
    keep_img_arr = np.asarray(keep_img, np.int32)
    det_keep = np.isin(self.image_of_det, keep_img_arr)
    old = [self.images[i] for i in keep_img]
    new = [e for e, _ in pending]
    counts = [e.count for e in old] + [len(d[1]) for _, d in pending]
    self.boxes = np.concatenate(
        [self.boxes[det_keep]] + [d[0] for _, d in pending]).astype(np.float32)
    self.scores = np.concatenate(
        [self.scores[det_keep]] + [d[1] for _, d in pending]).astype(np.float32)
    self.embeddings = np.concatenate(
        [self.embeddings[det_keep]] + [d[2] for _, d in pending]
    ).astype(np.float32).reshape(-1, self.embedding_dim)
    self.images = old + new
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    for e, o, c in zip(self.images, offsets, counts):
      e.offset, e.count = int(o), int(c)
    self.image_of_det = np.repeat(np.arange(len(self.images), dtype=np.int32),
                                  counts).astype(np.int32)
    report.reindexed += replaced
    report.added += len(new) - replaced
    report.detections += int(sum(len(d[1]) for _, d in pending))

  def check_model(self, model_info: Mapping[str, Any], *,
                  allow_unknown: bool = False) -> bool:
    """Checks that `model_info` names the model of the index's embeddings.

    See `identity.check_same_model`; an index without images holds no
    embeddings, so any model fits it.

    Returns:
      True if the models agree, False if it cannot be told and
      `allow_unknown`.
    Raises:
      SearchError naming both models if they differ, or if it cannot be told
      and not `allow_unknown`.
    """
    if not self.images:
      return True
    return identity.check_same_model(self.model_info, model_info,
                                     allow_unknown=allow_unknown)

  def check_predictor(self, predictor: Predictor) -> None:
    """Raises SearchError if the predictor's embedding dim differs."""
    dim = int(getattr(predictor, "embedding_dim", -1))
    if dim != self.embedding_dim:
      raise SearchError(
          f"the model's embedding dim is {dim} but the index holds "
          f"{self.embedding_dim}-dim embeddings: use the model that made the "
          f"index ({self.model_info or 'unknown'})")

  # Reading images back.

  def _data_source(self, builder_dir: str,
                   split: str) -> Sequence[Mapping[str, Any]]:
    """`images.open_split`, opened once per (directory, split)."""
    key = (builder_dir, split)
    if key not in self._data_sources:
      self._data_sources[key] = images_lib.open_split(builder_dir, split)
    return self._data_sources[key]

  def load_image(self, i: int) -> np.ndarray:
    """uint8[H, W, 3] RGB pixels of image `i`, as they were indexed."""
    e = self.images[i]
    if e.path is not None:
      im = read_image(e.path)
    else:
      src = self._data_source(e.builder_dir, e.split)
      ex = (images_lib.read_record(src, e.builder_dir, e.split, e.record)
            if e.record < len(src) else None)
      if ex is None or images_lib.image_id_of(ex, e.record) != e.image_id:
        raise SearchError(f"{e.builder_dir} split {e.split}: record "
                          f"{e.record} is no longer {e.image_id!r}; the "
                          "dataset changed since indexing")
      im = images_lib.decode_record_image(ex, e.name)
    if im.shape[:2] != (e.height, e.width):
      raise SearchError(f"{e.name}: image is now {im.shape[1]}x{im.shape[0]}"
                        f", was {e.width}x{e.height} when indexed")
    return im

  def detections_of(self, i: int) -> dict[str, np.ndarray]:
    """Boxes f32[n, 4], scores f32[n], embeddings f32[n, D] of image `i`."""
    e = self.images[i]
    sl = slice(e.offset, e.offset + e.count)
    return {"boxes": self.boxes[sl], "scores": self.scores[sl],
            "embeddings": self.embeddings[sl]}

  # Saving and loading.

  def save(self, directory: str | os.PathLike[str]) -> None:
    """Writes the index to `directory` atomically (see the module doc)."""
    self.generation = storage.write(directory, {
        "embedding_dim": self.embedding_dim,
        "model": self.model_info,
        "num_images": len(self.images),
        "num_detections": self.num_detections,
        "images": [e.to_json() for e in self.images],
    }, {"boxes": self.boxes, "scores": self.scores,
        "embeddings": self.embeddings, "image_of_det": self.image_of_det})

  @classmethod
  def exists(cls, directory: str | os.PathLike[str]) -> bool:
    """Whether `directory` holds a (committed) index."""
    return storage.exists(directory)

  @classmethod
  def load(cls, directory: str | os.PathLike[str],
           mmap: bool = False) -> GalleryIndex:
    """Loads an index saved by `save`; needs no model.

    Args:
      directory: the index directory.
      mmap: memory-map the arrays (read-only) instead of reading them.
    Raises:
      SearchError naming the file if the index is missing or inconsistent.
    """
    meta, arrays, index_path = storage.read(directory, mmap=mmap)
    version = meta["format_version"]
    model = dict(meta.get("model") or {})
    if version == 1:
      # Version 1 recorded no fingerprint; nothing in it identifies the
      # weights (its step was often unknown too).
      for k in ("fingerprint", "variables_fingerprint", "system"):
        model.pop(k, None)
    index = cls(meta["embedding_dim"], model)
    index.format_version = int(version)
    index.generation = meta.get("generation")
    index.images = [ImageEntry.from_json(e, str(index_path))
                    for e in meta["images"]]
    for k, v in arrays.items():
      setattr(index, k, v)
    counts = np.asarray([e.count for e in index.images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if (counts.sum() != index.num_detections or
        not np.array_equal(offsets, [e.offset for e in index.images]) or
        not np.array_equal(index.image_of_det, np.repeat(
            np.arange(len(counts)), counts))):
      raise SearchError(f"{index_path}: image offsets/counts do not match the "
                        "detection arrays")
    return index

  def summary(self) -> dict[str, Any]:
    """JSON-able overview: sizes, model, sources, format version.

    The model always shows its workdir, step and fingerprint, None where
    unknown (e.g. an index of format version 1).
    """
    files = sum(e.path is not None for e in self.images)
    model = {"workdir": None, "step": None, "fingerprint": None,
             **self.model_info}
    return {"images": len(self.images), "detections": self.num_detections,
            "embedding_dim": self.embedding_dim, "model": model,
            "image_files": files, "tfds_images": len(self.images) - files,
            "format_version": self.format_version}


