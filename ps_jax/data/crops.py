"""Crop re-identification input pipelines: data source -> host numpy batches.

The re-ID counterpart of `pipeline.py` (which batches whole scenes): both read
a random-access data source with Grain, but here every record is one person
crop in the Market-1501 re-ID schema (data_builders/market1501):
  image      JPEG bytes (a `pipeline.data_source` source leaves them encoded)
             or a decoded uint8[h, w, 3] array.
  image_id   str or bytes, for error messages and evaluation.
  pid        int32 identity; -1 is Market's junk id.
  camera     int32.
  keypoints  optional f32[4, 2], (x, y) as fractions of the crop's width and
             height, of the head top, neck, left hip and right hip (only the
             synthetic crop dataset has them). `visible` is ignored.

Ops, in order (torchreid's `build_transforms` with `random2d_translation`,
`random_flip` and `random_erase`): decode -> resize (or random translation)
-> horizontal flip -> normalize -> random erasing. Evaluation only resizes
and normalizes.
  resize       The whole crop is resized to `image_hw` = (H, W), aspect ratio
               not kept (torchreid's `Resize((H, W))`), with Pillow's bilinear
               filter (antialiased when shrinking) or, with
               `resize_antialias=False`, `augment.resize_bilinear`.
  translation  `random_crop=True`, torchreid's `Random2DTranslation(H, W,
               p=0.5)`: with probability 0.5 the crop is resized to
               (round(1.125 H), round(1.125 W)) and an H x W window is cut at
               (y0, x0) = (round(U(0, dh)), round(U(0, dw))), dh and dw the
               size surplus; otherwise it is plainly resized to (H, W).
  flip         With probability `flip_prob` the image is mirrored left-right.
  normalize    `augment.normalize` (`normalization`, default "imagenet_rgb").
  erasing      With probability `random_erasing_prob`, Zhong et al.'s random
               erasing as torchreid's `RandomErasing`: up to 100 tries of a
               rectangle of area U(0.02, 0.4) * H * W and aspect (h / w)
               U(0.3, 1 / 0.3), kept at the first try that fits strictly
               inside the image, at a uniform position. It is filled with 0,
               i.e. the dataset mean colour in normalized units (torchreid
               fills with the constants (0.4914, 0.4822, 0.4465) in
               normalized units, which is not the mean colour).
Keypoints follow the pixels: they stay fractions of the OUTPUT image, so a
translation maps x -> (x * W' - x0) / W (and y alike; W' = round(1.125 W)),
and a flip maps x -> 1 - x and swaps the left and right hips (the hip drawn
on the person's left side of the mirrored image is labelled left). A
translation may move a keypoint outside [0, 1]; it is not clipped.

Training batch (`train_iterator`), all numpy, B = the per-process batch size:
  image          f32[B, H, W, 3]  normalized.
  pid            i32[B]           identity of the record.
  camera         i32[B]           camera of the record.
  keypoints      f32[B, 4, 2]     (x, y) fractions of the output image; zeros
                                  where `has_keypoints` is False.
  has_keypoints  bool[B]          the record has keypoints.
  index          i32[B]           record index in the data source.
Evaluation batches (`eval_batches`) have the same keys plus
  example_valid  bool[B]   False for the padding examples of the last batch.
  image_id       str[B]    numpy unicode array; "" for padding (host only).
Padding examples have a zero image, pid -2 (not -1, which is Market's junk
id), camera -1, index -1, zero keypoints and `has_keypoints` False.

Samplers (`sampler`). Both define one global stream (`ps_jax.data.order`):
process p of n takes slice p of every global batch of G = batch_size x n,
and all randomness comes from the seed and the global position, as in
`pipeline.py`: the same seed gives the same global batches on any number of
processes, and an iterator restored with `set_state` continues exactly.
  "random"    All records, reshuffled every epoch; batches run across epoch
              boundaries.
  "identity"  torchreid's RandomIdentitySampler, P x K batches
              (`identity_epoch_batches`): every epoch, each identity's crops
              are shuffled, an identity with fewer than K = `num_instances`
              crops is padded with random repeats of its own crops, the crops
              are cut into chunks of K (a remainder under K is left out for
              that epoch), and global batches are drawn of P = G / K distinct
              identities (G = batch_size * process_count) chosen uniformly
              among the identities with chunks left, one chunk each, until
              fewer than P identities have chunks left. The epoch's global
              batches are computed over the whole source from (seed, epoch)
              alone, so every process computes the same ones, and process p
              takes slice [p * B, (p + 1) * B) of each: since B is a
              multiple of K, a process's batch holds B / K whole identity
              groups. The number of batches differs (slightly) from epoch to
              epoch; as in torchreid, identities with chunks left when the
              epoch ends (fewer than P of them) miss the rest of that epoch.
              Set-up reads the `pid` of every record once (one pass over the
              split: the records are read but their JPEGs are not decoded,
              about the cost of reading the split's files once), and records
              with pid < 0 (junk) are left out. Restoring an iterator deep
              into a run recomputes the lengths of the epochs before it
              (milliseconds per epoch for Market-1501's 12,936 crops).

Multi-process evaluation: process p takes records p, p + n, ...; every
process yields `pipeline.num_eval_batches(len(source), B, n)` batches, the
last ones padded.

Bad input: a record whose image cannot be decoded, is empty (0 pixels) or
whose keypoints are not [4, 2] raises ValueError naming its image_id (or its
index when it has none); a DataError from the source (`pipeline.data_source`:
a damaged split file) passes through unchanged. Worker processes
(`num_workers > 0`) need parsed absl flags, as in `pipeline.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from ps_jax import checks
from ps_jax.data import augment
from ps_jax.data import order
from ps_jax.data import pipeline
from ps_jax.data.pipeline import num_eval_batches

# The scene pipeline's helpers (decoding, settings, processes, Grain reader).
# pylint: disable=protected-access
_as_str = augment._as_str
_decode_image = augment._decode_image
_hw_pair = pipeline._hw_pair
_process = pipeline._process
_read = pipeline._read
_to_iter = pipeline._to_iter
# pylint: enable=protected-access

TRAIN_KEYS = ("image", "pid", "camera", "keypoints", "has_keypoints", "index")
EVAL_KEYS = TRAIN_KEYS + ("example_valid", "image_id")
SAMPLERS = ("random", "identity")
NUM_KEYPOINTS = 4
# Keypoint rows: head top, neck, left hip, right hip; a flip swaps the hips.
KEYPOINT_NAMES = ("head_top", "neck", "left_hip", "right_hip")
_FLIP_KEYPOINTS = (0, 1, 3, 2)
PADDING_PID = -2

# torchreid's Random2DTranslation: the enlarged size and its probability.
TRANSLATION_SCALE = 1.125
TRANSLATION_PROB = 0.5
# torchreid's RandomErasing (Zhong et al.): area fraction, aspect, tries.
ERASING_AREA = (0.02, 0.4)
ERASING_MIN_ASPECT = 0.3
ERASING_TRIES = 100

# Salt that separates the identity sampler's stream from the other uses of
# the seed.
_IDENTITY_SALT = 0x69647331


@dataclasses.dataclass(frozen=True)
class CropPipelineConfig:
  """Settings of the crop re-ID input pipeline (a config's `data` section).

  Attributes:
    batch_size: examples per training batch *in this process* (the train
      loop passes `batch_size=global // process_count` as an override).
    image_hw: (H, W) of every network input, pixels; also "HxW".
    eval_batch_size: examples per evaluation batch in this process; 0 means
      `batch_size`.
    flip_prob: probability of a horizontal flip (training only).
    random_crop: torchreid's random 2D translation (module docstring).
    random_erasing_prob: probability of random erasing (training only).
    normalization: "imagenet_rgb" or "caffe_bgr" (augment.normalize).
    sampler: "random" (shuffled epochs of records) or "identity" (P x K
      identity-balanced batches; module docstring).
    num_instances: K, crops per identity in a batch (sampler "identity";
      `batch_size` must be a multiple of it).
    shuffle_seed: the seed used when `train_iterator` gets seed=None.
    num_workers: Grain worker processes; 0 decodes in this process.
    num_threads: threads of Grain's in-process reader (per worker).
    prefetch: batches buffered ahead (per worker / by the reader).
    resize_antialias: True (default) resizes with Pillow's antialiased
      bilinear filter (torchreid's); False with `augment.resize_bilinear`.
  """
  batch_size: int
  image_hw: tuple[int, int] = (256, 128)
  eval_batch_size: int = 0
  flip_prob: float = 0.5
  random_crop: bool = False
  random_erasing_prob: float = 0.0
  normalization: str = "imagenet_rgb"
  sampler: str = "random"
  num_instances: int = 4
  shuffle_seed: int = 0
  num_workers: int = 0
  num_threads: int = 2
  prefetch: int = 2
  resize_antialias: bool = True

  def __post_init__(self):
    object.__setattr__(self, "image_hw",
                       _hw_pair(self.image_hw, "data.image_hw"))
    for name in ("batch_size", "num_instances", "num_threads", "prefetch"):
      _require_int(name, getattr(self, name), 1)
    for name in ("eval_batch_size", "num_workers"):
      _require_int(name, getattr(self, name), 0)
    _require_int("shuffle_seed", self.shuffle_seed, None)
    for name in ("flip_prob", "random_erasing_prob"):
      value = getattr(self, name)
      _require(checks.is_number(value) and 0.0 <= value <= 1.0, name, value,
               "a number in [0, 1]")
    for name in ("random_crop", "resize_antialias"):
      _require(isinstance(getattr(self, name), bool), name,
               getattr(self, name), "True or False")
    _require(self.normalization in augment.NORMALIZATIONS, "normalization",
             self.normalization, f"one of {augment.NORMALIZATIONS}")
    _require(self.sampler in SAMPLERS, "sampler", self.sampler,
             f"one of {SAMPLERS}")
    if self.sampler == "identity":
      _require(self.batch_size % self.num_instances == 0, "batch_size",
               self.batch_size,
               f"a multiple of data.num_instances={self.num_instances} "
               "with data.sampler='identity' (P identities x K crops)")

  @classmethod
  def from_config(cls, cfg: "CropPipelineConfig | Mapping[str, Any]",
                  **overrides: Any) -> "CropPipelineConfig":
    """From a CropPipelineConfig or a mapping / ConfigDict of its fields.

    Raises ValueError on a key that is not a field, so that a misspelt
    setting fails instead of being ignored.
    """
    return pipeline.options_from(cls, cfg, overrides, "crop input pipeline")

  @property
  def per_process_eval_batch_size(self) -> int:
    return self.eval_batch_size or self.batch_size


_require = pipeline.require
_require_int = pipeline.require_int


# Example ops. The working example is a dict with `image` (uint8[h, w, 3],
# f32 after normalizing), `keypoints` f32[4, 2], `has_keypoints`, `pid`,
# `camera`, `image_id` and `index`.


def decode(record: Mapping[str, Any], index: int) -> dict[str, Any]:
  """A re-ID record (module docstring) -> the working example.

  Raises:
    ValueError naming the image_id (or the record index) if the image cannot
      be decoded or is empty, or the keypoints are not [4, 2].
  """
  image_id = _as_str(record.get("image_id", f"<record {index}>"))
  where = f"image {image_id!r} (record {index})"
  image = _decode_image(record["image"], where)
  if 0 in image.shape:
    raise ValueError(f"{where}: the image is empty ({image.shape[0]}x"
                     f"{image.shape[1]} pixels)")
  keypoints = np.zeros((NUM_KEYPOINTS, 2), np.float32)
  has_keypoints = record.get("keypoints") is not None
  if has_keypoints:
    kp = np.asarray(record["keypoints"], np.float32)
    if kp.shape != (NUM_KEYPOINTS, 2):
      raise ValueError(f"{where}: keypoints have shape {kp.shape}; expected "
                       f"[{NUM_KEYPOINTS}, 2] (x, y) fractions of "
                       f"{KEYPOINT_NAMES}")
    keypoints = kp.copy()
  return {
      "image": image,
      "keypoints": keypoints,
      "has_keypoints": np.bool_(has_keypoints),
      "pid": np.int32(np.asarray(record["pid"])),
      "camera": np.int32(np.asarray(record["camera"])),
      "image_id": image_id,
      "index": int(index),
  }


def resize_image(image: np.ndarray, hw: Sequence[int],
                 antialias: bool = True) -> np.ndarray:
  """uint8[h, w, 3] -> uint8[H, W, 3], aspect not kept (bilinear)."""
  new_h, new_w = (int(v) for v in hw)
  if image.shape[:2] == (new_h, new_w):
    return image
  if antialias:
    return np.asarray(Image.fromarray(image).resize(
        (new_w, new_h), Image.Resampling.BILINEAR))
  return augment.resize_bilinear(image, (new_h, new_w))


def resize(example: dict[str, Any], rng: np.random.Generator | None, *,
           image_hw: Sequence[int], antialias: bool = True) -> dict[str, Any]:
  """The whole crop resized to `image_hw`; keypoint fractions unchanged."""
  del rng
  out = dict(example)
  out["image"] = resize_image(example["image"], image_hw, antialias)
  return out


def translation_size(image_hw: Sequence[int]) -> tuple[int, int]:
  """The enlarged (H', W') of a random translation: round(1.125 * side)."""
  h, w = (int(round(v * TRANSLATION_SCALE)) for v in image_hw)
  return h, w


def random_translate(example: dict[str, Any], rng: np.random.Generator, *,
                     image_hw: Sequence[int], antialias: bool = True
                     ) -> dict[str, Any]:
  """torchreid's Random2DTranslation (module docstring), keypoints along."""
  if rng.random() >= TRANSLATION_PROB:
    return resize(example, rng, image_hw=image_hw, antialias=antialias)
  h, w = (int(v) for v in image_hw)
  big_h, big_w = translation_size(image_hw)
  x0 = int(round(rng.uniform(0, big_w - w)))
  y0 = int(round(rng.uniform(0, big_h - h)))
  big = resize_image(example["image"], (big_h, big_w), antialias)
  out = dict(example)
  out["image"] = np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w])
  if example["has_keypoints"]:  # (absent keypoints stay zeros)
    kp = example["keypoints"]
    out["keypoints"] = np.stack(
        [(kp[:, 0] * big_w - x0) / w, (kp[:, 1] * big_h - y0) / h],
        axis=-1).astype(np.float32)
  return out


def hflip(example: dict[str, Any], rng: np.random.Generator, *,
          prob: float = 0.5) -> dict[str, Any]:
  """Mirrors left-right with probability `prob`: x -> 1 - x, hips swapped."""
  if prob <= 0.0 or rng.random() >= prob:
    return dict(example)
  out = dict(example)
  out["image"] = np.ascontiguousarray(example["image"][:, ::-1])
  if example["has_keypoints"]:  # (absent keypoints stay zeros)
    kp = example["keypoints"][list(_FLIP_KEYPOINTS)]
    out["keypoints"] = np.stack([1.0 - kp[:, 0], kp[:, 1]],
                                axis=-1).astype(np.float32)
  return out


def random_erase(example: dict[str, Any], rng: np.random.Generator, *,
                 prob: float) -> dict[str, Any]:
  """torchreid's RandomErasing on a normalized image, filled with 0 (the mean
  colour; module docstring)."""
  if prob <= 0.0 or rng.random() >= prob:
    return dict(example)
  image = example["image"]
  h, w = image.shape[:2]
  for _ in range(ERASING_TRIES):
    area = rng.uniform(*ERASING_AREA) * h * w
    aspect = rng.uniform(ERASING_MIN_ASPECT, 1.0 / ERASING_MIN_ASPECT)
    eh = int(round(math.sqrt(area * aspect)))
    ew = int(round(math.sqrt(area / aspect)))
    if ew < w and eh < h:
      y0 = int(rng.integers(0, h - eh + 1))
      x0 = int(rng.integers(0, w - ew + 1))
      out = dict(example)
      out["image"] = image.copy()
      out["image"][y0:y0 + eh, x0:x0 + ew] = 0.0
      return out
  return dict(example)


def _features(ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {
      "image": np.asarray(ex["image"], np.float32),
      "pid": np.int32(ex["pid"]),
      "camera": np.int32(ex["camera"]),
      "keypoints": np.asarray(ex["keypoints"], np.float32),
      "has_keypoints": np.bool_(ex["has_keypoints"]),
      "index": np.int32(ex["index"]),
  }


class _TrainExample:
  """(global stream position, record index) -> one augmented training
  example.

  A module-level class, so Grain can pickle it into worker processes.
  """

  def __init__(self, source, cfg: CropPipelineConfig, seed: int):
    self._source = source
    self._cfg = cfg
    self._seed = seed

  def __call__(self, g: int, record: int) -> dict[str, np.ndarray]:
    cfg = self._cfg
    # The 0 stood for the process index when each process had its own
    # stream; kept so that single-process streams stay as they were.
    rng = np.random.default_rng([int(self._seed) % 2**32, 0, int(g)])
    ex = decode(_read(self._source, int(record)), int(record))
    size = (random_translate if cfg.random_crop else resize)
    for op in (
        functools.partial(size, image_hw=cfg.image_hw,
                          antialias=cfg.resize_antialias),
        functools.partial(hflip, prob=cfg.flip_prob),
        functools.partial(augment.normalize, mode=cfg.normalization),
        functools.partial(random_erase, prob=cfg.random_erasing_prob),
    ):
      ex = op(ex, rng)
    return _features(ex)


# The identity (P x K) sampler.


def record_pids(source: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """i64[n], the `pid` of every record (one pass over the source; a
  `pipeline.data_source` source reads each record but decodes no JPEG)."""
  pids = np.empty((len(source),), np.int64)
  for i in range(len(source)):
    record = _read(source, i)
    try:
      pids[i] = int(np.asarray(record["pid"]))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"record {i} of the data source has no integer "
                       f"'pid' ({type(e).__name__}: {e})") from e
  return pids


def identity_epoch_batches(pids: np.ndarray, num_instances: int,
                           global_batch: int, seed: int, epoch: int
                           ) -> np.ndarray:
  """One epoch of torchreid's RandomIdentitySampler over the whole source.

  Args:
    pids: i64[n], the pid of every record; records with pid < 0 are left
      out.
    num_instances: K, crops per identity in a batch.
    global_batch: G, crops per global batch (a multiple of K); P = G / K.
    seed: the training seed; epoch: the epoch number (both seed the order).

  Returns:
    i64[num_batches, G] record indices: row b is global batch b, P runs of K
    records of one identity each, P distinct identities. Each identity's
    crops are shuffled and, when fewer than K, padded with random repeats of
    its own crops (torchreid draws all K with replacement; here every crop
    of the identity is kept); they are cut into chunks of K (the remainder
    is left out this epoch); batches take one chunk from each of P distinct
    identities drawn uniformly among those with chunks left, until fewer
    than P have chunks left.

  Raises:
    ValueError: fewer than P identities.
  """
  pids = np.asarray(pids, np.int64).reshape(-1)
  k = int(num_instances)
  if global_batch % k:
    raise ValueError(f"global batch {global_batch} is not a multiple of "
                     f"num_instances={k}")
  p = global_batch // k
  records = np.flatnonzero(pids >= 0)
  ids, member = np.unique(pids[records], return_inverse=True)
  if len(ids) < p:
    raise ValueError(
        f"the identity sampler needs at least P = {p} identities (global "
        f"batch {global_batch} / num_instances {k}) but the data source has "
        f"{len(ids)} (with pid >= 0)")
  rng = np.random.default_rng([_IDENTITY_SALT, int(seed) % 2**32,
                               int(epoch)])
  # Each identity's records in a fresh random order, grouped by identity.
  grouped = records[np.lexsort((rng.random(len(records)), member))]
  counts = np.bincount(member, minlength=len(ids))
  chunks = []
  for members in np.split(grouped, np.cumsum(counts)[:-1]):
    if len(members) < k:
      extra = rng.choice(members, k - len(members), replace=True)
      members = rng.permutation(np.concatenate([members, extra]))
    chunks.append(members[:len(members) - len(members) % k].reshape(-1, k))
  num_chunks = np.array([len(c) for c in chunks])
  first = np.concatenate([[0], np.cumsum(num_chunks)[:-1]])
  flat = np.concatenate(chunks)  # [total chunks, K]
  used = np.zeros_like(num_chunks)
  available = np.arange(len(ids))
  batches = []
  while len(available) >= p:
    chosen = available[rng.choice(len(available), p, replace=False)]
    batches.append(flat[first[chosen] + used[chosen]].reshape(-1))
    used[chosen] += 1
    available = available[used[available] < num_chunks[available]]
  return np.stack(batches).astype(np.int64)


class _IdentitySchedule:
  """Global stream position -> record, over epochs of
  `identity_epoch_batches` (whose lengths vary).

  Thread-safe (Grain's reader threads share it) and picklable.
  """

  # Epoch orders kept, for the threads reading across an epoch boundary.
  _CACHED_EPOCHS = 3

  def __init__(self, pids: np.ndarray, num_instances: int, global_batch: int,
               seed: int):
    self._pids = np.asarray(pids, np.int64)
    self._k = int(num_instances)
    self._global = int(global_batch)
    self._seed = int(seed)
    self._ends: list[int] = []  # global positions through epoch e
    self._orders: collections.OrderedDict[int, np.ndarray] = (
        collections.OrderedDict())
    self._lock = threading.Lock()
    self._epoch_batches(0)  # raises early on too few identities

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    del state["_lock"]
    state["_orders"] = collections.OrderedDict()
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _epoch_batches(self, epoch: int) -> np.ndarray:
    """[num_batches, G] of `epoch` (cached; call with the lock held or
    before sharing)."""
    batches = self._orders.get(epoch)
    if batches is None:
      batches = identity_epoch_batches(self._pids, self._k, self._global,
                                     self._seed, epoch)
      self._orders[epoch] = batches
      while len(self._orders) > self._CACHED_EPOCHS:
        self._orders.popitem(last=False)
      if epoch == len(self._ends):
        start = self._ends[-1] if self._ends else 0
        self._ends.append(start + batches.size)
    else:
      self._orders.move_to_end(epoch)
    return batches

  def locate(self, g: int) -> tuple[int, int]:
    """(epoch, position within the epoch) of a global position."""
    with self._lock:
      while not self._ends or self._ends[-1] <= g:
        self._epoch_batches(len(self._ends))
      epoch = int(np.searchsorted(self._ends, g, side="right"))
      start = self._ends[epoch - 1] if epoch else 0
      return epoch, g - start

  def __call__(self, g: int) -> int:
    epoch, offset = self.locate(int(g))
    with self._lock:
      batches = self._epoch_batches(epoch)
    return int(batches.reshape(-1)[offset])


def train_dataset(source: Sequence[Mapping[str, Any]],
                  cfg: CropPipelineConfig | Mapping[str, Any],
                  seed: int | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  **overrides: Any) -> grain.IterDataset:
  """The infinite training dataset of this process (see `train_iterator`)."""
  cfg = CropPipelineConfig.from_config(cfg, **overrides)
  seed = cfg.shuffle_seed if seed is None else int(seed)
  pi, pc = _process(process_index, process_count)
  n = len(source)
  if n == 0:
    raise ValueError("the training data source is empty")
  example = _TrainExample(source, cfg, seed)
  if cfg.sampler == "identity":
    record_of = _IdentitySchedule(record_pids(source), cfg.num_instances,
                                  cfg.batch_size * pc, seed)
  else:
    record_of = order.ShuffledOrder(n, seed)
  ds = order.stream(example, record_of, cfg.batch_size, pi, pc)
  return _to_iter(ds.batch(cfg.batch_size, drop_remainder=True), cfg)


def train_iterator(source: Sequence[Mapping[str, Any]],
                   cfg: CropPipelineConfig | Mapping[str, Any],
                   seed: int | None = None, *,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   **overrides: Any) -> grain.DatasetIterator:
  """An endless, checkpointable iterator over training batches of crops.

  Args:
    source: random-access re-ID records (module docstring): a TFDS ArrayRecord
      data source, ideally from `pipeline.data_source`, or a list.
    cfg: a CropPipelineConfig, or a config `data` section of its fields.
    seed: seeds the sampler and the augmentations; None uses
      `cfg.shuffle_seed`. Must be the same in every process.
    process_index, process_count: this process's share; default
      jax.process_index() / jax.process_count().
    **overrides: CropPipelineConfig fields replacing those of `cfg`
      (e.g. batch_size=global_batch // process_count).

  Returns:
    A grain.DatasetIterator of batch dicts (module docstring, TRAIN_KEYS);
    `get_state()` / `set_state()` (or grain.checkpoint) resume it exactly.

  Raises:
    ValueError: an empty source, fewer records than processes ("random"),
      or fewer identities than a global batch has ("identity").
  """
  return iter(train_dataset(source, cfg, seed, process_index=process_index,
                            process_count=process_count, **overrides))


class _EvalExample:
  """Position in this process's padded eval stream -> one example (record -1
  is padding). A module-level class, so Grain can pickle it."""

  def __init__(self, source, cfg: CropPipelineConfig, records: Sequence[int]):
    self._source = source
    self._cfg = cfg
    self._records = list(records)

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    cfg = self._cfg
    record = self._records[position]
    if record < 0:
      return padding_example(cfg.image_hw)
    ex = decode(_read(self._source, record), record)
    ex = resize(ex, None, image_hw=cfg.image_hw,
                antialias=cfg.resize_antialias)
    ex = augment.normalize(ex, None, mode=cfg.normalization)
    out = _features(ex)
    out["example_valid"] = np.bool_(True)
    out["image_id"] = np.str_(ex["image_id"])
    return out


def padding_example(image_hw: Sequence[int]) -> dict[str, np.ndarray]:
  """The example that pads the last evaluation batch (module docstring)."""
  return {
      "image": np.zeros(tuple(image_hw) + (3,), np.float32),
      "pid": np.int32(PADDING_PID),
      "camera": np.int32(-1),
      "keypoints": np.zeros((NUM_KEYPOINTS, 2), np.float32),
      "has_keypoints": np.bool_(False),
      "index": np.int32(-1),
      "example_valid": np.bool_(False),
      "image_id": np.str_(""),
  }


def eval_batches(source: Sequence[Mapping[str, Any]],
                 cfg: CropPipelineConfig | Mapping[str, Any], *,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 **overrides: Any) -> Iterator[dict[str, np.ndarray]]:
  """Every record once, in order, resized to `image_hw`, no augmentation.

  Process p of n takes records p, p + n, ...; every process yields
  `pipeline.num_eval_batches(len(source), eval batch size, n)` batches, the
  last ones padded with examples whose `example_valid` is False (pid -2,
  camera -1, index -1; module docstring).

  Args:
    source: random-access re-ID records (module docstring).
    cfg: a CropPipelineConfig or config `data` section; uses image_hw,
      eval_batch_size (per process; 0 = batch_size), normalization,
      resize_antialias, num_workers, num_threads, prefetch.
    process_index, process_count: default jax.process_index()/count().
    **overrides: CropPipelineConfig fields replacing those of `cfg`.

  Yields:
    Batch dicts with EVAL_KEYS (module docstring).
  """
  cfg = CropPipelineConfig.from_config(cfg, **overrides)
  pi, pc = _process(process_index, process_count)
  bs = cfg.per_process_eval_batch_size
  records = list(range(pi, len(source), pc))
  total = num_eval_batches(len(source), bs, pc) * bs
  records += [-1] * (total - len(records))
  if not records:
    return iter(())
  ds = (grain.MapDataset.range(len(records))
        .map(_EvalExample(source, cfg, records))
        .batch(bs))
  return iter(_to_iter(ds, cfg))
