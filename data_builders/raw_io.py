"""Safe readers for the official raw files of the real-dataset builders.

Every helper here fails with an error that names the file at fault and what
was expected of it, so a user with an incomplete or corrupt download sees the
cause instead of a scipy or PIL stack trace:

* `RawFileMissingError` (a FileNotFoundError): an expected file or folder is
  absent. The message gives the exact path and the step of the builder's
  MANUAL_DOWNLOAD_INSTRUCTIONS that provides it.
* `RawFormatError` (a ValueError): a file exists but its content is not what
  the official release holds (truncated or non-MATLAB `.mat`, missing
  variable or struct field, unparsable line, file name escaping the manual
  directory, unreadable image).

Conventions of the MATLAB helpers (scipy.io.loadmat with default arguments,
as every public loader calls it): char fields come back as `(1,)` unicode
arrays, structs as `(1, N)` structured arrays whose fields hold object
arrays, and integer-valued doubles may come back as `uint8` / `uint16`, so
every numeric value leaves this module as float64 (`mat_numbers`) before any
arithmetic is done on it. The helpers also accept the `squeeze_me=True`
layout (str, scalars, squeezed arrays), which `load_mat(squeeze=True)` uses
for very large struct arrays.

Paths are `etils.epath.Path`s so builders also run on cloud storage.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import scipy.io

PathLike = epath.PathLike

# Quality used when an image must be re-encoded (non-RGB or non-JPEG source).
REENCODE_JPEG_QUALITY = 95


class RawFileMissingError(FileNotFoundError):
  """An expected file or folder of the raw download is missing."""


class RawFormatError(ValueError):
  """A raw file does not have the content the official release has."""


def require(path: PathLike, step: str, *, is_dir: bool = False
            ) -> epath.Path:
  """Returns `path` if it exists (as a folder if `is_dir`), else raises.

  Args:
    path: the exact path expected.
    step: the step of MANUAL_DOWNLOAD_INSTRUCTIONS that provides it, e.g.
      "step 2 (unpack the archive)".
    is_dir: whether a folder is expected.

  Raises:
    RawFileMissingError naming the path and the step.
  """
  path = epath.Path(path)
  ok = path.is_dir() if is_dir else path.is_file()
  if not ok:
    kind = "folder" if is_dir else "file"
    other = (" (a file of that name exists)" if is_dir and path.exists() else
             " (a folder of that name exists)" if path.exists() else "")
    raise RawFileMissingError(
        f"Missing {kind} {path}{other}. It comes from {step} of the manual "
        f"download instructions.")
  return path


def find_root(manual_dir: PathLike, markers: Sequence[str],
              candidates: Sequence[str], step: str) -> epath.Path:
  """The dataset root inside the manual dir: the folder holding `markers`.

  The root is `manual_dir` itself, or one of `candidates` below it (the folder
  names the official archives unpack to), or the only sub-folder of
  `manual_dir` that holds every marker.

  Args:
    manual_dir: the folder the user passed as --manual_dir.
    markers: relative paths that must all exist in the root.
    candidates: sub-folder names tried first, in order.
    step: the instruction step that creates the root (for the error).

  Raises:
    RawFileMissingError naming the first marker expected in `manual_dir`.
  """
  manual_dir = epath.Path(manual_dir)

  def holds_all(d: epath.Path) -> bool:
    return all((d / m).exists() for m in markers)

  if holds_all(manual_dir):
    return manual_dir
  for name in candidates:
    if holds_all(manual_dir / name):
      return manual_dir / name
  subdirs = ([d for d in sorted(manual_dir.iterdir()) if d.is_dir()]
             if manual_dir.is_dir() else [])
  found = [d for d in subdirs if holds_all(d)]
  if len(found) == 1:
    return found[0]
  if len(found) > 1:
    raise RawFormatError(
        f"{manual_dir} holds several dataset roots ({[str(f) for f in found]}"
        f"); keep only one.")
  # A folder holding some of the markers is the root with parts missing.
  for d in [manual_dir, *(manual_dir / c for c in candidates), *subdirs]:
    missing = [m for m in markers if not (d / m).exists()]
    if len(missing) < len(markers):
      raise RawFileMissingError(
          f"Missing {d / missing[0]} (the dataset root {d} has "
          f"{[m for m in markers if m not in missing]} but not {missing}). "
          f"It comes from {step} of the manual download instructions.")
  raise RawFileMissingError(
      f"Missing {manual_dir / markers[0]} (nor found in "
      f"{', '.join(str(manual_dir / c) for c in candidates)} or any single "
      f"sub-folder of {manual_dir}; every one of {list(markers)} must be "
      f"there). It comes from {step} of the manual download instructions.")


def safe_join(root: PathLike, name: str, *, source: str) -> epath.Path:
  """`root / name` for a file name read from an annotation file.

  Names from annotation files are never allowed to leave `root`: an empty,
  absolute (POSIX, Windows drive or UNC) name, or one with a `..` component,
  raises. Backslashes count as separators (Windows-made annotations).

  Args:
    root: the folder the name is relative to (inside the manual dir).
    name: the file name as read from the annotation.
    source: the annotation file (and position) the name was read from.

  Raises:
    RawFormatError naming `source` and `name`.
  """
  norm = str(name).strip().replace("\\", "/")
  bad = (not norm or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm)
         or ".." in norm.split("/"))
  if bad:
    raise RawFormatError(
        f"{source}: file name {name!r} is empty, absolute or contains '..'; "
        f"annotation file names must be relative names inside {root}.")
  norm = posixpath.normpath(norm)
  return epath.Path(root) / norm


def load_mat(path: PathLike, step: str, *, squeeze: bool = False
             ) -> dict[str, Any]:
  """The variables of a MATLAB v5 `.mat` file (scipy.io.loadmat).

  Args:
    path: the `.mat` file.
    step: the instruction step that provides it (for a missing file).
    squeeze: loadmat's `squeeze_me`: unit dimensions removed, 1x1 values as
      scalars and char values as str. Far less memory for large struct
      arrays; the other helpers here accept both layouts.

  Returns:
    variable name -> value, without loadmat's `__header__`-style entries.

  Raises:
    RawFileMissingError if the file is absent; RawFormatError naming the file
    if it is empty, truncated, not a MATLAB file, or an HDF5-based v7.3 file.
  """
  path = require(path, step)
  data = path.read_bytes()
  if data.startswith(b"MATLAB 7.3"):
    raise RawFormatError(
        f"{path} is an HDF5-based MATLAB v7.3 file; the official release "
        f"ships v5 files (re-save it in MATLAB with save(..., '-v7')).")
  try:
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=squeeze)
  # scipy reports a damaged file with many exception types (MatReadError,
  # ValueError, OSError, IndexError, zlib.error, ...); all mean the same here.
  except Exception as e:  # pylint: disable=broad-except
    raise RawFormatError(
        f"{path} is not a readable MATLAB .mat file ({len(data)} bytes; "
        f"truncated or not a MATLAB file?): {type(e).__name__}: {e}") from e
  return {k: v for k, v in mat.items() if not k.startswith("__")}


def mat_var(mat: Mapping[str, Any], names: Sequence[str], path: PathLike
            ) -> Any:
  """The first of `names` present in `mat` (variable-name variants).

  Raises:
    RawFormatError naming the file, the names tried and the names present.
  """
  for name in names:
    if name in mat:
      return mat[name]
  raise RawFormatError(
      f"{path}: none of the variables {list(names)} is present; the file "
      f"holds {sorted(mat)}.")


def mat_field(record: Any, name: str, where: str) -> Any:
  """Field `name` of one MATLAB struct element (a numpy structured record).

  Raises:
    RawFormatError naming `where` and the fields present.
  """
  fields = getattr(getattr(record, "dtype", None), "names", None) or ()
  if name not in fields:
    raise RawFormatError(
        f"{where}: expected a MATLAB struct with field {name!r}; found "
        f"fields {list(fields)}.")
  return record[name]


def struct_elements(value: Any, where: str) -> list[Any]:
  """The elements of a MATLAB struct array, in MATLAB (column-major) order.

  Unwraps the `(1, 1)` object cells loadmat puts around nested structs.
  """
  arr = _unwrap(value)
  if isinstance(arr, np.void) and arr.dtype.names:
    return [arr]  # one struct, as loadmat(squeeze_me=True) may return it
  if isinstance(arr, np.ndarray) and arr.size == 0:
    return []  # an empty MATLAB struct array or `[]`
  if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
    raise RawFormatError(
        f"{where}: expected a MATLAB struct array, got "
        f"{type(arr).__name__} {getattr(arr, 'dtype', '')}.")
  return list(arr.ravel(order="F"))


def cell_elements(value: Any, where: str) -> list[Any]:
  """The elements of a MATLAB cell array (any shape), column-major order."""
  arr = np.asarray(value)
  if arr.dtype != object:
    raise RawFormatError(
        f"{where}: expected a MATLAB cell array, got dtype {arr.dtype}.")
  return list(arr.ravel(order="F"))


def mat_str(value: Any, where: str) -> str:
  """A MATLAB char value (as loadmat returns it) as a Python string.

  Accepts `(1,)` unicode arrays (the loadmat default), char matrices split
  into characters, str, and any nesting of size-1 object cells around them.
  """
  v = _unwrap(value)
  if isinstance(v, str):
    return v
  if isinstance(v, np.ndarray) and v.dtype.kind == "U":
    return "".join(v.ravel().tolist())
  raise RawFormatError(
      f"{where}: expected a MATLAB char value, got {type(v).__name__} "
      f"{getattr(v, 'dtype', '')} {getattr(v, 'shape', '')}.")


def mat_numbers(value: Any, where: str, size: int | None = None
                ) -> np.ndarray:
  """A numeric MATLAB value as a flat float64 array.

  loadmat returns integer-valued doubles as uint8/uint16 (the official
  CUHK-SYSU boxes), where `x + w` would wrap at 256, so the cast happens here,
  before any arithmetic.

  Args:
    value: the value from loadmat.
    where: a description of the value for errors.
    size: the number of elements required (None: any, including 0).

  Returns:
    f64[size] (flattened column-major, as MATLAB stores it).
  """
  v = _unwrap(value)
  arr = np.asarray(v)
  if arr.dtype.kind not in "biuf":
    raise RawFormatError(
        f"{where}: expected a numeric MATLAB value, got dtype {arr.dtype}.")
  arr = arr.astype(np.float64).ravel(order="F")
  if size is not None and arr.size != size:
    raise RawFormatError(
        f"{where}: expected {size} numbers, got {arr.size} "
        f"({arr.tolist()[:8]}).")
  if not np.all(np.isfinite(arr)):
    raise RawFormatError(f"{where}: non-finite value in {arr.tolist()[:8]}.")
  return arr


def _unwrap(value: Any) -> Any:
  """Strips the size-1 object cells (MATLAB cells, struct fields) around."""
  while (isinstance(value, np.ndarray) and value.dtype == object
         and value.size == 1):
    value = value.ravel()[0]
  return value


def read_text_lines(path: PathLike, step: str) -> list[tuple[int, str]]:
  """Non-empty lines of a text file, tolerant of CRLF, CR and a UTF-8 BOM.

  Returns:
    (1-based line number, stripped line) for every non-blank line.
  """
  path = require(path, step)
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise RawFormatError(f"{path} is not a UTF-8/ASCII text file: {e}") from e
  return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())
          if line.strip()]


def load_image(path: epath.Path, source: str) -> tuple[Any, int, int]:
  """An image for `tfds.features.Image(encoding_format="jpeg")` and its size.

  The file is fully decoded once so a truncated or corrupt image fails the
  build (naming it) instead of a training run. RGB JPEGs are stored as-is
  (their path is returned); any other mode or format (grayscale, CMYK, PNG
  under a .jpg name) is converted to an RGB JPEG, because the schema decodes
  every image to 3 channels.

  Args:
    path: the image file (already checked to lie inside the manual dir).
    source: the annotation file that refers to the image (for errors).

  Returns:
    (path or JPEG bytes, width, height) with width/height in pixels.

  Raises:
    RawFileMissingError naming the image and `source` if the file is absent;
    RawFormatError naming both if it cannot be decoded.
  """
  if not path.is_file():
    raise RawFileMissingError(
        f"Image {path} referred to by {source} does not exist.")
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      width, height = im.size
      if im.format == "JPEG" and im.mode == "RGB":
        return path, width, height
      buf = io.BytesIO()
      im.convert("RGB").save(buf, format="JPEG",
                             quality=REENCODE_JPEG_QUALITY)
  except Exception as e:  # pylint: disable=broad-except
    # PIL signals corrupt data with OSError, SyntaxError, ValueError, ...
    raise RawFormatError(
        f"Image {path} referred to by {source} cannot be decoded: "
        f"{type(e).__name__}: {e}") from e
  logging.log_first_n(
      logging.INFO, "Re-encoding %s (not an RGB JPEG) as an RGB JPEG.", 10,
      path)
  return buf.getvalue(), width, height


def warn_count(what: str, found: int, expected: int,
               expected_by: str = "the official release documents") -> bool:
  """Logs a warning if `found` differs from the `expected` count.

  Args:
    what: what was counted, naming the file it was counted in.
    found: the count in the files.
    expected: the documented (or cross-checked) count.
    expected_by: where `expected` comes from, for the message.

  Returns:
    whether the counts agree.
  """
  if int(found) != int(expected):
    logging.warning(
        "%s: found %d, %s %d. Check that the download is complete (a "
        "deliberate subset is fine).", what, int(found), expected_by,
        int(expected))
    return False
  return True


def log_dropped(what: str, items: Iterable[str], limit: int = 5) -> int:
  """Logs a warning with the count and the first few `items`; returns count."""
  items = list(items)
  if items:
    logging.warning("%s: %d (first %d: %s)", what, len(items),
                    min(limit, len(items)), "; ".join(items[:limit]))
  return len(items)

