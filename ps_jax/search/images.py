"""Where indexed images come from: image files and TFDS records.

`find_images` turns files, folders and glob patterns into image paths;
`read_image` reads a file upright (EXIF orientation applied). `open_split`,
`read_record`, `image_id_of` and `decode_record_image` read the images of a
TFDS split the way the input pipeline does. Every failure is a `SearchError`
naming the file, directory or record.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageOps

# Lower-case suffixes of the files a folder is searched for.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                    ".tiff", ".ppm")


class SearchError(ValueError):
  """A user-facing error: bad input file, index, option or model mismatch."""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an image file as uint8[H, W, 3] RGB, EXIF orientation applied.

  Raises:
    SearchError naming the file if it is missing, not an image or corrupt.
  """
  try:
    with Image.open(path) as im:
      # Camera photos often store a rotation flag instead of rotated pixels;
      # boxes must refer to the upright image the user sees.
      im = ImageOps.exif_transpose(im)
      im.load()  # decode now, so a truncated file fails here
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except FileNotFoundError as e:
    raise SearchError(f"{path}: no such image file") from e
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise SearchError(f"{path}: cannot read image ({e})") from e


def find_images(patterns: Iterable[str | os.PathLike[str]],
                recursive: bool = False) -> list[str]:
  """Absolute image paths named by files, folders and glob patterns.

  Folders give their files with an image suffix (`IMAGE_EXTENSIONS`, any
  case), sorted; with `recursive` also those of subfolders. Glob patterns
  (`*`, `?`, `[`; `**` matches subfolders) give the matching files with an
  image suffix. Plain file names are taken as given. Duplicates are dropped,
  first occurrence wins.

  Raises:
    SearchError if a name does not exist, a pattern or folder holds no
    image, or nothing at all was named.
  """
  out: dict[str, None] = {}
  patterns = [os.fspath(p) for p in patterns]
  if not patterns:
    raise SearchError("no image files, folders or patterns given")

  def is_image(p: str) -> bool:
    return os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)

  for pattern in patterns:
    if os.path.isdir(pattern):
      if recursive:
        found = [os.path.join(root, f)
                 for root, _, files in os.walk(pattern) for f in files]
      else:
        found = [os.path.join(pattern, f) for f in os.listdir(pattern)]
      found = sorted(p for p in found if is_image(p))
      if not found:
        raise SearchError(
            f"{pattern}: folder holds no image files (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}"
            f"{'' if recursive else '; pass --recursive for subfolders'})")
    elif glob.has_magic(pattern):
      found = sorted(p for p in glob.glob(pattern, recursive=True)
                     if is_image(p))
      if not found:
        raise SearchError(f"{pattern}: pattern matches no image files")
    elif os.path.isfile(pattern):
      found = [pattern]
    else:
      raise SearchError(f"{pattern}: no such file or folder")
    for p in found:
      out.setdefault(os.path.abspath(p), None)
  return list(out)


def open_split(builder_dir: str, split: str) -> Sequence[Mapping[str, Any]]:
  """A TFDS split's random-access source, images left encoded.

  Opened with `ps_jax.data.pipeline.data_source`, as training and
  evaluation read splits: TFDS's own data source.

  Raises:
    SearchError naming the directory if it is not a prepared dataset (it
    was moved or deleted), lacks the split or a file of it, or is not in a
    random-access file format.
  """
  # Imported here: loading and querying an index need neither.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ps_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(builder_dir, "dataset_info.json")):
    raise SearchError(f"{builder_dir}: not a prepared TFDS dataset "
                      "directory (no dataset_info.json)")
  builder = tfds.builder_from_directory(builder_dir)
  if split not in builder.info.splits:
    raise SearchError(f"{builder_dir}: no split {split!r} (has "
                      f"{sorted(builder.info.splits)})")
  for path in builder.info.splits[split].filepaths:
    if not os.path.isfile(os.fspath(path)):
      raise SearchError(f"{builder_dir}: split {split!r} misses its file "
                        f"{os.fspath(path)}")
  try:
    return pipeline.data_source(builder, split)
  except Exception as e:  # TFDS's own error, e.g. a TFRecord dataset
    raise SearchError(f"{builder_dir}: cannot open split {split!r} as a "
                      f"random-access source ({type(e).__name__}: {e})"
                      ) from e


def image_id_of(ex: Mapping[str, Any], i: int) -> str:
  if "image_id" not in ex:
    raise SearchError(f"TFDS record {i} has no image_id feature "
                      f"(features: {sorted(ex)})")
  v = ex["image_id"]
  return v.decode() if isinstance(v, bytes) else str(v)


def read_record(src: Sequence[Mapping[str, Any]], builder_dir: str,
                split: str, record: int) -> Mapping[str, Any]:
  """Record `record` of a TFDS source; SearchError names where."""
  try:
    return src[record]
  except Exception as e:  # the source's own error (e.g. a file gone)
    raise SearchError(f"{builder_dir} split {split}: record {record} could "
                      f"not be read ({type(e).__name__}: {e})") from e


def decode_record_image(ex: Mapping[str, Any], name: str) -> np.ndarray:
  """The encoded `image` of a TFDS record -> uint8[H, W, 3] RGB.

  Decoded as the input pipeline decodes it (no EXIF rotation: the boxes of
  a TFDS record refer to the pixels as stored).
  """
  data = ex.get("image")
  if isinstance(data, np.ndarray) and data.dtype == object:
    data = data.item()
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise SearchError(f"{name}: the record has no encoded image feature "
                      f"(features: {sorted(ex)})")
  try:
    with Image.open(io.BytesIO(bytes(data))) as im:
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise SearchError(f"{name}: cannot decode the image of the record "
                      f"({e})") from e
