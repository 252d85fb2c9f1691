"""The on-disk format of a gallery index: atomic writes, checked reads.

A directory holds `index.json` (format name and version, generation, the
index's metadata and the names of its array files) and one `.npy` file per
array, named `<array>.<generation>.npy`. `write` saves a new generation:
the arrays first under temporary names, renamed into place, then
`index.json` replaced in one `os.replace` (the commit point); a writer that
dies at any point leaves the previous `index.json` and the arrays it names
untouched, and the next successful write removes stale files. `read` checks
the format, the version and every array's shape and dtype, and names the
file at fault. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_jax.search.images import SearchError

FORMAT_NAME = "ps_jax.search.GalleryIndex"
# 2: the model's fingerprint is recorded and checked; readers of version 1
# would ignore it and mix models.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
INDEX_FILE = "index.json"
ARRAY_NAMES = ("boxes", "scores", "embeddings", "image_of_det")


def exists(directory: str | os.PathLike[str]) -> bool:
  """Whether `directory` holds a (committed) index."""
  return (pathlib.Path(directory) / INDEX_FILE).is_file()


def write(directory: str | os.PathLike[str], meta: Mapping[str, Any],
          arrays: Mapping[str, np.ndarray]) -> int:
  """Writes a new generation of the index in `directory` atomically.

  Args:
    directory: the index directory (created if missing).
    meta: JSON data of the index (embedding_dim, model, num_images,
      num_detections, images).
    arrays: one array per name in ARRAY_NAMES.
  Returns:
    The generation written (1 for a new index, then +1 per write).
  Raises:
    SearchError: `directory` has an index.json that is not an index.
  """
  d = pathlib.Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  index_path = d / INDEX_FILE
  gen = 1
  if index_path.exists():
    try:
      old = json.loads(index_path.read_text())
      if old.get("format") != FORMAT_NAME:
        raise ValueError(f"format {old.get('format')!r}")
      gen = int(old["generation"]) + 1
    except (ValueError, AttributeError, KeyError, TypeError) as e:
      raise SearchError(f"{index_path}: exists but is not a gallery index "
                        f"({e}); refusing to overwrite it") from e
  files = {k: f"{k}.{gen:06d}.npy" for k in ARRAY_NAMES}
  meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
          "generation": gen, **meta, "arrays": files}
  tmp_suffix = f".tmp{os.getpid()}"
  written = []
  try:
    for k in ARRAY_NAMES:
      tmp = d / (files[k] + tmp_suffix)
      written.append(tmp)
      with open(tmp, "wb") as f:
        np.save(f, arrays[k], allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, d / files[k])
      written.append(d / files[k])
    tmp = d / (INDEX_FILE + tmp_suffix)
    written.append(tmp)
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, index_path)  # the commit point
  except BaseException:
    for p in written:
      p.unlink(missing_ok=True)
    raise
  # The new index is committed; what it does not name is stale.
  for p in d.iterdir():
    stale_array = p.suffix == ".npy" and p.name not in files.values() and (
        p.name.split(".", 1)[0] in ARRAY_NAMES)
    if stale_array or ".tmp" in p.suffix:
      p.unlink(missing_ok=True)
  return gen


def read(directory: str | os.PathLike[str], *, mmap: bool = False
         ) -> tuple[dict[str, Any], dict[str, np.ndarray], pathlib.Path]:
  """(metadata, arrays, path of index.json) of the index in `directory`.

  Args:
    directory: the index directory.
    mmap: memory-map the arrays (read-only) instead of reading them.
  Raises:
    SearchError naming the file if the index is missing, of another format
    or version, or an array has the wrong shape or dtype.
  """
  d = pathlib.Path(directory)
  index_path = d / INDEX_FILE
  if not d.is_dir():
    raise SearchError(f"{d}: no such index directory")
  if not index_path.is_file():
    raise SearchError(f"{d}: no {INDEX_FILE}, so not a gallery index (or "
                      "its first save was interrupted)")
  try:
    meta = json.loads(index_path.read_text())
  except ValueError as e:
    raise SearchError(f"{index_path}: not valid JSON ({e})") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
    raise SearchError(f"{index_path}: not a {FORMAT_NAME} file")
  version = meta.get("format_version")
  if version not in READABLE_VERSIONS:
    raise SearchError(
        f"{index_path}: format version {version}, this ps_jax reads "
        f"versions {', '.join(map(str, READABLE_VERSIONS))}; rebuild the "
        "index")
  arrays = {}
  for k in ARRAY_NAMES:
    p = d / meta["arrays"][k]
    try:
      arrays[k] = np.load(p, mmap_mode="r" if mmap else None,
                          allow_pickle=False)
    except (OSError, ValueError) as e:
      raise SearchError(f"{p}: cannot read index array ({e})") from e
  m, dim = int(meta["num_detections"]), int(meta["embedding_dim"])
  expected = {"boxes": ((m, 4), np.float32), "scores": ((m,), np.float32),
              "embeddings": ((m, dim), np.float32),
              "image_of_det": ((m,), np.int32)}
  for k, (shape, dtype) in expected.items():
    if arrays[k].shape != shape or arrays[k].dtype != dtype:
      raise SearchError(
          f"{d / meta['arrays'][k]}: {arrays[k].dtype}{list(arrays[k].shape)}"
          f", expected {np.dtype(dtype)}{list(shape)}")
  return meta, arrays, index_path
