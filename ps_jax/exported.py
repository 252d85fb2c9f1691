"""Run an exported person-search model: jax, numpy and Pillow, no model code.

`python -m ps_jax.export` (`ps_jax/export.py`) writes a trained system's
predict function, serialized by `jax.export`, with its weights into a
directory; this module loads and runs it. It imports only the standard
library, numpy, jax and Pillow (never flax, nor any other part of ps_jax),
so it also works as a single file copied next to the artefact on a machine
without ps_jax:

  from ps_jax import exported            # or: import exported

  predictor = exported.load_exported("alignps_export")
  dets = predictor.detect([image])       # image: uint8[H, W, 3] RGB
  dets[0]["boxes"], dets[0]["scores"], dets[0]["embeddings"]
  q = predictor.embed_query(image, (x1, y1, x2, y2))   # f32[D]

The predictor implements `ps_jax.search.Predictor`, so `ps-search index
--exported DIR` and `GalleryIndex.build(predictor, ...)` take it.

The artefact directory (FORMAT_VERSION 1):
  manifest.json        what is below, the input settings, the model's
                       fingerprint (`ps_jax.search.identity`), versions;
  params.safetensors   every variable of the model (params and the other
                       collections), named by its path ("params/backbone/
                       conv1/kernel"), in the safetensors format;
  predict_HxW.jaxexport  the serialized function of the bucket H x W (two
                       files when the model uses portrait buckets):
                       fn(params {name: array}, image f32[B, Hc, Wc, 3],
                       image_hw i32[B, 2], orig_hw i32[B, 2], query_boxes
                       f32[B, 4]) -> {boxes f32[B, M, 4], scores f32[B, M],
                       embeddings f32[B, M, D], valid bool[B, M],
                       query_embedding f32[B, D], query_from_detection
                       bool[B]}, with (Hc, Wc) the bucket padded up to a
                       multiple of the size divisor, B the exported batch
                       size, boxes in original pixels, and the rows of
                       padding examples (orig_hw 0) not valid.

Images are prepared as `ps_jax.eval.predict.Predictor` prepares them (the
code is repeated here to keep this module free of ps_jax): resized to fit
the bucket keeping their aspect ratio (Pillow's bilinear filter, or
OpenCV's INTER_LINEAR taps without antialiasing), normalized with the
manifest's mean and std, and padded with zeros at the bottom and right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np
from PIL import Image

FORMAT_NAME = "ps_jax.exported_predictor"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PARAMS_FILE = "params.safetensors"
# The keys of the exported function's output (ps_jax.systems.base).
PREDICT_OUTPUTS = ("boxes", "scores", "embeddings", "valid",
                   "query_embedding", "query_from_detection")
# jax.export's platform names; jax.default_backend() calls cuda/rocm "gpu".
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

_log = logging.getLogger(__name__)
# SHA-256 of a function file -> its jitted call: loading the same model
# again in a process reuses the compiled function.
_COMPILED: dict[str, Any] = {}


class ExportedModelError(ValueError):
  """An exported model that cannot be read or run; the message names the
  file and what was expected."""


def function_file(bucket_hw: Sequence[int]) -> str:
  """The file name of the function of bucket (H, W): "predict_HxW.jaxexport"."""
  return "predict_{}x{}.jaxexport".format(*(int(v) for v in bucket_hw))


# The safetensors format: u64 little-endian header size N, N bytes of JSON
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
# {str: str}}, then the little-endian C-order bytes of every tensor (offsets
# from the end of the header).
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
              "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
              "BF16": jnp.bfloat16}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` to `path` in the safetensors format (names sorted).

  Raises:
    ExportedModelError: a tensor of a dtype safetensors has no name for.
  """
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  arrays, offset = [], 0
  for name in sorted(tensors):
    arr = np.asarray(tensors[name], order="C")  # 0-d stays 0-d
    native = arr.dtype.newbyteorder("=")
    if native not in _ST_NAMES:
      raise ExportedModelError(f"{path}: tensor {name!r} has dtype "
                               f"{arr.dtype}; expected one of "
                               f"{sorted(str(d) for d in _ST_NAMES)}")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    header[name] = {"dtype": _ST_NAMES[native],
                    "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    arrays.append(arr)
    offset += arr.nbytes
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for arr in arrays:
      f.write(arr.tobytes())
    f.flush()
    os.fsync(f.fileno())


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file, name -> array.

  Raises:
    ExportedModelError naming the file (and the tensor) if it is truncated,
    its header is not the format's, or a tensor's bytes do not match its
    dtype and shape.
  """
  with open(path, "rb") as f:
    return parse_safetensors(f.read(), path)


def parse_safetensors(data: bytes, path: str) -> dict[str, np.ndarray]:
  """`read_safetensors` of the file's bytes `data`; errors name `path`."""
  bad = f"{path}: not a valid safetensors file"
  if len(data) < 8:
    raise ExportedModelError(f"{bad} ({len(data)} bytes; truncated)")
  (n,) = struct.unpack("<Q", data[:8])
  if n > len(data) - 8:
    raise ExportedModelError(f"{bad} (header of {n} bytes in a file of "
                             f"{len(data)}; truncated or damaged)")
  try:
    header = json.loads(data[8:8 + n])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportedModelError(f"{bad} (header is not JSON: {e})") from e
  if not isinstance(header, dict):
    raise ExportedModelError(f"{bad} (header is not a JSON object)")
  body = memoryview(data)[8 + n:]
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_ST_DTYPES[spec["dtype"]]).newbyteorder("<")
      shape = tuple(int(v) for v in spec["shape"])
      begin, end = (int(v) for v in spec["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise ExportedModelError(f"{bad} (tensor {name!r}: entry {spec!r}; "
                               "expected dtype, shape and data_offsets)"
                               ) from e
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= len(body) or end - begin != size:
      raise ExportedModelError(
          f"{bad} (tensor {name!r}: bytes [{begin}, {end}) of a "
          f"{len(body)}-byte body, expected {size} bytes for {dtype.name}"
          f"{list(shape)}; truncated or damaged)")
    out[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).astype(
        dtype.newbyteorder("="), copy=False)
  return out


def fit_size(hw: Sequence[int], bucket_hw: Sequence[int]) -> tuple[int, int]:
  """(new_h, new_w) of an image of size `hw` resized to fit `bucket_hw`:
  factor min(H / h, W / w), sizes rounded as mmcv (int(x * s + 0.5)) and
  clamped to [1, H] x [1, W] (ps_jax.data.augment.fit_scale)."""
  h, w = int(hw[0]), int(hw[1])
  bh, bw = int(bucket_hw[0]), int(bucket_hw[1])
  s = min(bh / h, bw / w)
  return (min(max(int(h * s + 0.5), 1), bh),
          min(max(int(w * s + 0.5), 1), bw))


def padded_size(bucket_hw: Sequence[int], size_divisor: int
                ) -> tuple[int, int]:
  """The bucket's sides rounded up to multiples of `size_divisor`."""
  d = int(size_divisor)
  return tuple(-(-int(v) // d) * d for v in bucket_hw)  # type: ignore


def resize(image: np.ndarray, new_hw: Sequence[int], antialias: bool
           ) -> np.ndarray:
  """uint8[h, w, 3] -> uint8[new_h, new_w, 3], bilinear.

  `antialias`: Pillow's bilinear filter (its support widens when
  shrinking); else OpenCV's INTER_LINEAR taps, source position (d + 0.5) *
  in / out - 0.5 clamped to the image, rounded to the nearest level
  (ps_jax.data.augment.resize_bilinear).
  """
  new_h, new_w = (int(v) for v in new_hw)
  if (new_h, new_w) == image.shape[:2]:
    return image
  if antialias:
    return np.asarray(Image.fromarray(image).resize(
        (new_w, new_h), Image.Resampling.BILINEAR))

  def taps(n_out, n_in):
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    first = np.floor(src).astype(np.int64)
    return (first, np.minimum(first + 1, n_in - 1),
            (src - first).astype(np.float32))

  y0, y1, fy = taps(new_h, image.shape[0])
  x0, x1, fx = taps(new_w, image.shape[1])
  src = image.astype(np.float32)
  fy = fy[:, None, None]
  rows = src[y0] * (1.0 - fy) + src[y1] * fy
  fx = fx[None, :, None]
  out = rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def check_image(image: Any) -> np.ndarray:
  """`image` as uint8[H, W, 3]; ValueError for anything else."""
  arr = np.asarray(image)
  if (arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0
      or arr.dtype != np.uint8):
    raise ValueError(f"expected an RGB image uint8[H, W, 3], got "
                     f"{arr.dtype}{list(arr.shape)}")
  return arr


def check_box(image: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
  """`box_xyxy` clipped to the image, with a warning showing both boxes if
  it reached outside (as `ps_jax.eval.predict.Predictor.checked_box`).

  Raises:
    ValueError: the box is not 4 finite numbers, or is empty once clipped.
  """
  h, w = np.shape(image)[:2]
  box = np.asarray(box_xyxy, np.float64).reshape(4)
  fmt = lambda b: "[" + ", ".join(f"{round(float(v), 3):g}" for v in b) + "]"
  if not np.all(np.isfinite(box)):
    raise ValueError(f"query box {fmt(box)} is not finite")
  clipped = np.clip(box, 0.0, [w, h, w, h])
  if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
    raise ValueError(
        f"query box {fmt(box)} is empty inside the {w}x{h} image (clipped "
        f"to it: {fmt(clipped)}); expected x1 < x2 and y1 < y2 in pixels")
  if np.any(clipped != box):
    _log.warning("query box %s reaches outside the %dx%d image; clipped to "
                 "%s", fmt(box), w, h, fmt(clipped))
  return clipped


def preprocess(image: np.ndarray, bucket_hw: Sequence[int], *,
               size_divisor: int, mean: Sequence[float], std: Sequence[float],
               channel_order: str, resize_antialias: bool
               ) -> tuple[np.ndarray, np.ndarray]:
  """A uint8[H, W, 3] RGB image as the network takes it, as
  `ps_jax.eval.predict.Predictor` prepares it.

  Resized to fit `bucket_hw` (`fit_size`, `resize`), channels reordered to
  `channel_order` ("RGB" or "BGR"), (x - mean) / std in 0-255 units, and
  padded with zeros to the bucket rounded up to a multiple of
  `size_divisor`.

  Returns:
    (f32[Hc, Wc, 3] the canvas, i32[2] (h, w) of its content).
  """
  new_hw = fit_size(image.shape[:2], bucket_hw)
  x = resize(check_image(image), new_hw, resize_antialias)
  if channel_order == "BGR":
    x = x[..., ::-1]
  x = x.astype(np.float32)
  x -= np.asarray(mean, np.float32)
  if any(float(v) != 1.0 for v in std):
    x *= np.asarray([1.0 / float(v) for v in std], np.float32)
  canvas = np.zeros((*padded_size(bucket_hw, size_divisor), 3), np.float32)
  canvas[:new_hw[0], :new_hw[1]] = x
  return canvas, np.asarray(new_hw, np.int32)


def _field(manifest: Mapping[str, Any], path: str, kind: Any,
           where: str) -> Any:
  """manifest[a][b]... for path "a.b", checked to be of type `kind`."""
  value: Any = manifest
  for key in path.split("."):
    if not isinstance(value, Mapping) or key not in value:
      raise ExportedModelError(f"{where}: field {path!r} is missing")
    value = value[key]
  if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
    raise ExportedModelError(f"{where}: field {path!r} is {value!r}; "
                             f"expected {getattr(kind, '__name__', kind)}")
  return value


def read_manifest(directory: str) -> dict[str, Any]:
  """The checked manifest.json of an exported model directory.

  Raises:
    ExportedModelError naming the directory or the file and the field.
  """
  if not os.path.isdir(directory):
    raise ExportedModelError(f"{directory}: no such directory (an exported "
                             "model: python -m ps_jax.export --out DIR)")
  path = os.path.join(directory, MANIFEST_FILE)
  if not os.path.isfile(path):
    raise ExportedModelError(f"{directory}: no {MANIFEST_FILE}; expected a "
                             "directory written by python -m ps_jax.export")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportedModelError(f"{path}: not JSON ({e})") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
    raise ExportedModelError(f"{path}: format is not {FORMAT_NAME!r}")
  version = _field(manifest, "format_version", int, path)
  if version > FORMAT_VERSION:
    raise ExportedModelError(
        f"{path}: format_version {version}, newer than this loader's "
        f"{FORMAT_VERSION}; update ps_jax")
  for name, kind in (("embedding_dim", int), ("batch_size", int),
                     ("buckets", list), ("platforms", list),
                     ("params.file", str), ("params.sha256", str),
                     ("functions", dict), ("input.size_divisor", int),
                     ("input.mean", list), ("input.std", list),
                     ("input.channel_order", str),
                     ("input.resize_antialias", bool),
                     ("input.portrait_buckets", bool)):
    _field(manifest, name, kind, path)
  spec = manifest["input"]
  numbers = lambda v: len(v) == 3 and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
  checks = (
      ("input.channel_order", spec["channel_order"] in ("RGB", "BGR"),
       "'RGB' or 'BGR'"),
      ("input.mean", numbers(spec["mean"]), "three numbers"),
      ("input.std", numbers(spec["std"]) and 0.0 not in spec["std"],
       "three non-zero numbers"),
      ("input.size_divisor", spec["size_divisor"] >= 1, "an integer >= 1"),
      ("batch_size", manifest["batch_size"] >= 1, "an integer >= 1"),
      ("embedding_dim", manifest["embedding_dim"] >= 1, "an integer >= 1"),
      ("buckets", len(manifest["buckets"]) in (1, 2) and all(
          isinstance(b, list) and len(b) == 2 and all(
              isinstance(v, int) and v >= 1 for v in b)
          for b in manifest["buckets"]), "one or two [H, W] of integers >= 1"))
  for name, ok, expected in checks:
    if not ok:
      value = _field(manifest, name, object, path)
      raise ExportedModelError(f"{path}: field {name!r} is {value!r}; "
                               f"expected {expected}")
  return manifest


class ExportedPredictor:
  """An exported person-search model (`ps_jax.search.Predictor`).

  Attributes:
    directory: the artefact directory.
    manifest: its manifest.json.
    embedding_dim: D.
    batch_size: B, images per call of the exported function (fewer are
      padded).
    buckets: the (H, W) buckets images are resized into: one, or a
      landscape one and its transpose for portrait images.
    step: the checkpoint step of the weights, if known.
    fingerprint, variables_fingerprint, system_description: the identity
      the real predictor of the same weights and settings has
      (`ps_jax.search.identity`), so indexes made by either accept both.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    manifest = read_manifest(self.directory)
    self.manifest = manifest
    where = os.path.join(self.directory, MANIFEST_FILE)
    self.platforms = tuple(str(p) for p in manifest["platforms"])
    self._check_platform()
    self.embedding_dim = int(manifest["embedding_dim"])
    self.batch_size = int(manifest["batch_size"])
    self.step = manifest.get("step")
    self.fingerprint = manifest.get("fingerprint")
    self.variables_fingerprint = manifest.get("variables_fingerprint")
    self.system_description = manifest.get("system")
    spec = manifest["input"]
    self._input = {k: spec[k] for k in ("size_divisor", "mean", "std",
                                        "channel_order", "resize_antialias")}
    self._portrait = bool(spec["portrait_buckets"])
    self._divisor = int(spec["size_divisor"])
    self.buckets = [tuple(int(v) for v in b) for b in manifest["buckets"]]
    params = self._load_params(manifest["params"])
    self._calls = {}
    for bucket in self.buckets:
      self._calls[bucket] = self._load_function(bucket, params, where)
    self._params = jax.device_put(params)

  def __repr__(self) -> str:
    system = (self.system_description or {}).get("type", "?")
    return (f"ExportedPredictor({self.directory!r}, {system}, buckets="
            f"{self.buckets}, batch_size={self.batch_size}, "
            f"platforms={list(self.platforms)})")

  def _check_platform(self) -> None:
    backend = jax.default_backend()
    names = {"gpu": ("cuda", "rocm")}.get(backend, (backend,))
    if not set(names) & set(self.platforms):
      raise ExportedModelError(
          f"{self.directory}: exported for {list(self.platforms)}, but jax "
          f"runs on {backend} here; export again with --platforms "
          f"{','.join(self.platforms + names[:1])}")

  def _read(self, name: str, sha256: str | None) -> tuple[str, bytes]:
    """(path, bytes) of a file the manifest names, checked against its
    recorded SHA-256."""
    path = os.path.join(self.directory, name)
    if os.path.basename(name) != name or not os.path.isfile(path):
      raise ExportedModelError(f"{path}: missing (named in {MANIFEST_FILE})")
    with open(path, "rb") as f:
      data = f.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
      raise ExportedModelError(
          f"{path}: its SHA-256 is not the one {MANIFEST_FILE} records: the "
          "file was damaged or replaced; export the model again")
    return path, data

  def _load_params(self, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    path, data = self._read(spec["file"], spec["sha256"])
    self._params_path = path
    return parse_safetensors(data, path)

  def _load_function(self, bucket: tuple[int, int],
                     params: Mapping[str, np.ndarray], where: str):
    key = "{}x{}".format(*bucket)
    spec = self.manifest["functions"].get(key)
    if not isinstance(spec, Mapping) or "file" not in spec:
      raise ExportedModelError(f"{where}: functions has no entry {key!r} "
                               f"for bucket {list(bucket)}")
    path, blob = self._read(str(spec["file"]), spec.get("sha256"))
    try:
      fn = jax_export.deserialize(bytearray(blob))
    except Exception as e:  # pylint: disable=broad-except
      raise ExportedModelError(
          f"{path}: cannot deserialize ({type(e).__name__}: {e}); it was "
          f"written with jax {self.manifest.get('versions', {}).get('jax')}"
          f", this is jax {jax.__version__}") from e
    args, _ = jax.tree_util.tree_unflatten(fn.in_tree, fn.in_avals)
    want, image = args[0], args[1]
    canvas = padded_size(bucket, self._divisor)
    if tuple(image.shape) != (self.batch_size, *canvas, 3):
      raise ExportedModelError(
          f"{path}: takes images {list(image.shape)}, but {MANIFEST_FILE} "
          f"says batch {self.batch_size} of {list(canvas)} (bucket "
          f"{list(bucket)} padded to a multiple of {self._divisor})")
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
      raise ExportedModelError(
          f"{self._params_path}: does not hold the function's parameters: "
          f"missing {missing[:5]}, unexpected {extra[:5]} ({len(missing)} "
          f"and {len(extra)})")
    for name, aval in want.items():
      got = params[name]
      if tuple(got.shape) != tuple(aval.shape) or got.dtype != aval.dtype:
        raise ExportedModelError(
            f"{self._params_path}: tensor {name!r} is {got.dtype}"
            f"{list(got.shape)}; {os.path.basename(path)} expects "
            f"{aval.dtype}{list(aval.shape)}")
    key = hashlib.sha256(blob).hexdigest()
    if key not in _COMPILED:
      _COMPILED[key] = jax.jit(fn.call)
    return _COMPILED[key]

  def bucket_of(self, hw: Sequence[int]) -> tuple[int, int]:
    """The bucket an image of size (h, w) is resized into."""
    if self._portrait and int(hw[0]) > int(hw[1]):
      return max(self.buckets, key=lambda b: b[0] - b[1])
    return self.buckets[0]

  def preprocess(self, image: np.ndarray
                 ) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """(bucket, f32[Hc, Wc, 3] network input, i32[2] its content's (h, w))
    of a uint8[H, W, 3] RGB image."""
    image = check_image(image)
    bucket = self.bucket_of(image.shape[:2])
    return (bucket, *preprocess(image, bucket, **self._input))

  def predict(self, images: Sequence[np.ndarray],
              query_boxes: Sequence[Sequence[float] | None] | None = None
              ) -> list[dict[str, np.ndarray]]:
    """The exported function's outputs for each image, in order.

    Args:
      images: uint8[H, W, 3] RGB images of any sizes.
      query_boxes: per image an xyxy box in its pixels, or None (then the
        query outputs are those of the box (0, 0, 0, 0)).
    Returns:
      Per image {name: its row of the output} for every PREDICT_OUTPUTS
      name: boxes f32[M, 4] original pixels, scores f32[M], embeddings
      f32[M, D], valid bool[M], query_embedding f32[D],
      query_from_detection bool[].
    """
    boxes = list(query_boxes) if query_boxes is not None else [None] * len(
        images)
    if len(boxes) != len(images):
      raise ValueError(f"{len(images)} images but {len(boxes)} query boxes")
    groups: dict[tuple[int, int], list[int]] = {}
    prepared = []
    for i, image in enumerate(images):
      bucket, x, hw = self.preprocess(image)
      groups.setdefault(bucket, []).append(i)
      prepared.append((x, hw, np.asarray(image).shape[:2]))
    results: list[dict[str, np.ndarray]] = [{} for _ in images]
    b = self.batch_size
    for bucket, rows in groups.items():
      for start in range(0, len(rows), b):
        chunk = rows[start:start + b]
        x = np.zeros((b, *prepared[chunk[0]][0].shape), np.float32)
        image_hw = np.zeros((b, 2), np.int32)
        orig_hw = np.zeros((b, 2), np.int32)
        q = np.zeros((b, 4), np.float32)
        for j, i in enumerate(chunk):
          x[j], image_hw[j], orig_hw[j] = prepared[i]
          if boxes[i] is not None:
            q[j] = np.asarray(boxes[i], np.float32).reshape(4)
        out = jax.device_get(self._calls[bucket](self._params, x, image_hw,
                                                 orig_hw, q))
        for j, i in enumerate(chunk):
          results[i] = {k: np.asarray(out[k][j]) for k in PREDICT_OUTPUTS}
    return results

  def detect(self, images: Sequence[np.ndarray]
             ) -> list[dict[str, np.ndarray]]:
    """Per image: boxes f32[n, 4] original pixels, scores f32[n],
    embeddings f32[n, D] L2-normalized, sorted by score."""
    out = []
    for r in self.predict(images):
      v = r["valid"]
      out.append({"boxes": r["boxes"][v], "scores": r["scores"][v],
                  "embeddings": r["embeddings"][v]})
    return out

  def embed_query(self, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    """f32[D] L2-normalized embedding of the person at `box_xyxy` (original
    pixels), by the exported system's query rule. A box reaching outside
    the image is clipped to it, with a warning.

    Raises:
      ValueError: the box is not 4 finite numbers, or is empty once clipped.
    """
    image = check_image(image)
    box = check_box(image, box_xyxy)
    return self.predict([image], [box])[0]["query_embedding"]


def load_exported(directory: str) -> ExportedPredictor:
  """The exported model in `directory`, ready to run.

  Raises:
    ExportedModelError: the directory, its manifest or a file it names is
      missing or damaged (named), or the model was exported for another
      platform than the one jax runs on.
  """
  return ExportedPredictor(directory)


__all__ = ["ExportedModelError", "ExportedPredictor", "FORMAT_NAME",
           "FORMAT_VERSION", "load_exported", "parse_safetensors",
           "read_manifest", "read_safetensors", "write_safetensors"]
