"""Training and evaluation input pipelines: data source -> host numpy batches.

Both read a random-access data source (a TFDS ArrayRecord data source, or any
sequence of records in the schema.py scene format) with Grain and apply the
ops of `augment.py` in this order: decode -> resize to the batch's bucket ->
drop degenerate boxes -> (train: horizontal flip) -> normalize -> pad.

Training batch (`train_iterator`), all numpy, B = the per-process batch size:
  image        f32[B, H, W, 3]  normalized; (H, W) = the batch's padded bucket.
  boxes_xyxy   f32[B, N, 4]     absolute pixels of the network input.
  pids         i32[B, N]        >= 0 labeled, -1 unlabeled (and padding).
  boxes_valid  bool[B, N]       False for padding slots.
  image_hw     i32[B, 2]        (height, width) of the resized image content.
  orig_hw      i32[B, 2]        (height, width) of the original image.
  scale        f32[B]           resized px / original px (augment.fit_scale).
  index        i32[B]           record index in the data source.
N = max_boxes. Boxes were scaled per axis by image_hw / orig_hw (exactly as
mmdet), so the exact map back to original pixels is x * orig_w / image_w,
y * orig_h / image_h; dividing by `scale` agrees to within half a network
pixel.

Evaluation batches (`eval_batches`) have the same keys plus
  example_valid  bool[B]   False for the padding examples of the last batch.
  image_id       str[B]    numpy unicode array; "" for padding (host only).
Padding examples have zero images, no valid boxes, orig_hw = image_hw = 0,
scale = 1 and index = -1.

Scale buckets and static shapes. Every image of a training batch is resized
into the same bucket, so a batch has one static shape and each bucket compiles
once. The bucket of batch number k (counted from the start of training in
this process's stream) is drawn from (seed, k) alone, so every process picks
the same bucket for the same global step, and a resumed iterator picks the
same buckets as an uninterrupted one. Shuffling (per-epoch reshuffled) and
flips are seeded from `seed` too: the same seed gives the same batches.
One scale per batch is a consequence of the static shapes, not the
reference's rule: AlignPS/mmdet draws a scale for every image and pads the
batch to its largest image. The expected scale of an image is the same (each
bucket is equally likely), but the images of a batch are never at different
scales.

Multi-process: the training stream is global (`ps_jax.data.order`): every
epoch shuffles all records, global batch k is positions [k G, (k + 1) G) of
that order (G = B x process_count) and process p takes slice p of it; the
flips and the bucket are drawn from the seed and the global position. So
1 process x 8 devices and 2 processes x 4 devices train on the same batches,
and a checkpoint resumes on another process count. All processes must use
the same seed.

Portrait buckets (`portrait_buckets=True`, AlignPS's paper configs). An image
taller than wide is resized into the transposed bucket (W, H) instead of
being shrunk into the landscape canvas (`augment.oriented_bucket`), so it
gets the size mmdet's keep-ratio resize gives it. A batch must still have one
shape, so portrait and landscape images are batched apart, as mmdet's
GroupSampler does: every epoch each group is shuffled, padded with random
repeats of its own images to a whole number of global batches, cut into
global batches, and the batches of both groups are shuffled together
(`orientation.grouped_epoch_order`). The order is computed over the whole
source from (seed, epoch) and process p takes slice p of every global batch
(the same global stream as the default order), so all processes agree on
each batch's shape. Evaluation runs the landscape images first, then the portrait ones,
each padded to whole global batches (the predictions are put back in record
order by the caller). Finding each record's orientation reads the JPEG
header of every record once, when the dataset is set up.

The training iterator is a `grain.DatasetIterator`: `get_state()` /
`set_state()` and `grain.checkpoint.CheckpointSave/Restore` (orbax) resume it
exactly. With `num_workers > 0`, decoding runs in that many spawned worker
processes (Grain `mp_prefetch`). Grain reads its absl flags to set up those
workers, and absl raises on reading a flag before the flags are parsed: outside
`absl.app.run`, call `flags.FLAGS.mark_as_parsed()` before the first batch.

Bad input: a split file that is missing, truncated or corrupt raises
DataError naming the file and the command that rebuilds the dataset (when
`data_source` opens the split, or when the record is read); a record whose
image cannot be decoded or that has more people than `max_boxes` raises
ValueError naming the image_id (and the setting); degenerate boxes are
dropped (and logged with the image id); an image without people is kept
with all `boxes_valid` False. To have the image id in decode
errors, open TFDS sources with `data_source()`, which leaves the JPEG
undecoded for this module to decode (TFDS would otherwise fail inside its own
decoder, before the image id is known).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from ps_jax import checks
from ps_jax.data import augment
from ps_jax.data import order
from ps_jax.data import orientation

TRAIN_KEYS = ("image", "boxes_xyxy", "pids", "boxes_valid", "image_hw",
              "orig_hw", "scale", "index")
EVAL_KEYS = TRAIN_KEYS + ("example_valid", "image_id")

# Salt that separates the bucket stream from the other uses of the seed.
_BUCKET_SALT = 0x6275636B


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of the input pipeline (the keys of a config's `data` section).

  Attributes:
    batch_size: examples per training batch *in this process*. (The config
      section's `batch_size` is global; the train loop passes
      `batch_size=global // process_count` as an override.)
    train_scales: (H, W) buckets for training, pixels; one drawn per batch.
      Also one (H, W) pair or a string "HxW,HxW" (`parse_scales`).
    test_scale: the (H, W) bucket for evaluation (or "HxW").
    max_boxes: N, padded boxes per image.
    eval_batch_size: examples per evaluation batch in this process; 0 means
      `batch_size`.
    flip_prob: probability of a horizontal flip (training only).
    normalization: "caffe_bgr" or "imagenet_rgb" (augment.normalize).
    size_divisor: buckets are padded up to a multiple of this (mmdet Pad).
    min_box_size: boxes with width or height <= this many network pixels
      after resizing are dropped (and logged).
    shuffle_seed: the seed used when `train_iterator` gets seed=None.
    resize_antialias: True (default) resizes with Pillow's antialiased
      bilinear filter; False with the reference's (mmcv/OpenCV bilinear,
      no antialiasing when shrinking; `augment.resize_bilinear`).
    portrait_buckets: False (default) fits every image into the bucket as
      it is; True gives images taller than wide the transposed bucket
      (`augment.oriented_bucket`) and batches them apart from the others
      (module docstring). Needs landscape or square buckets (H <= W).
    num_workers: Grain worker processes; 0 decodes in this process.
    num_threads: threads of Grain's in-process reader (per worker).
    prefetch: batches buffered ahead (per worker / by the reader).
  """
  batch_size: int
  train_scales: tuple[tuple[int, int], ...]
  test_scale: tuple[int, int]
  max_boxes: int
  eval_batch_size: int = 0
  flip_prob: float = 0.5
  normalization: str = "caffe_bgr"
  size_divisor: int = 32
  min_box_size: float = 0.0
  resize_antialias: bool = True
  portrait_buckets: bool = False
  shuffle_seed: int = 0
  num_workers: int = 0
  num_threads: int = 2
  prefetch: int = 2

  def __post_init__(self):
    object.__setattr__(self, "train_scales", parse_scales(self.train_scales))
    object.__setattr__(self, "test_scale",
                       _hw_pair(self.test_scale, "data.test_scale"))
    for name in ("batch_size", "max_boxes", "size_divisor", "num_threads",
                 "prefetch"):
      require_int(name, getattr(self, name), 1)
    for name in ("eval_batch_size", "num_workers"):
      require_int(name, getattr(self, name), 0)
    require_int("shuffle_seed", self.shuffle_seed, None)
    require(_is_number(self.flip_prob) and 0.0 <= self.flip_prob <= 1.0,
             "flip_prob", self.flip_prob, "a number in [0, 1]")
    require(_is_number(self.min_box_size) and self.min_box_size >= 0,
             "min_box_size", self.min_box_size, "a number >= 0")
    require(self.normalization in augment.NORMALIZATIONS, "normalization",
             self.normalization, f"one of {augment.NORMALIZATIONS}")
    require(isinstance(self.resize_antialias, bool), "resize_antialias",
             self.resize_antialias, "True or False")
    require(isinstance(self.portrait_buckets, bool), "portrait_buckets",
             self.portrait_buckets, "True or False")
    if self.portrait_buckets:
      for name, buckets in (("train_scales", self.train_scales),
                            ("test_scale", (self.test_scale,))):
        require(all(h <= w for h, w in buckets), name, buckets,
                 "buckets no taller than wide (H <= W) with "
                 "portrait_buckets=True")

  @classmethod
  def from_config(cls, cfg: "PipelineConfig | Mapping[str, Any]",
                  **overrides: Any) -> "PipelineConfig":
    """From a PipelineConfig or a mapping / ConfigDict with the field names.

    Raises ValueError on a key that is not a field, so that a misspelt
    setting fails instead of being ignored.
    """
    return options_from(cls, cfg, overrides, "input pipeline")

  @property
  def per_process_eval_batch_size(self) -> int:
    return self.eval_batch_size or self.batch_size


def options_from(cls: type, cfg: Any, overrides: Mapping[str, Any],
                 what: str) -> Any:
  """A `cls` dataclass from an instance of it or a mapping / ConfigDict of
  its fields, `overrides` replacing fields.

  Raises:
    ValueError: a key that is not a field (a misspelt setting fails instead
      of being ignored), naming `what` and the known fields.
  """
  if isinstance(cfg, cls):
    values = dataclasses.asdict(cfg)
  else:
    values = dict(cfg.items())
  values.update(overrides)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"unknown {what} setting(s) {unknown}; "
                     f"known: {sorted(names)}")
  return cls(**values)


def require(ok: bool, name: str, value: Any, expected: str) -> None:
  """ValueError naming `data.<name>` unless `ok`."""
  checks.require(ok, f"data.{name}", value, expected)



_is_number = checks.is_number


def require_int(name: str, value: Any, low: int | None) -> None:
  """ValueError naming `data.<name>` unless `value` is an integer >= low."""
  ok = checks.is_integer(value)
  if low is None:
    require(ok, name, value, "an integer")
  else:
    require(ok and value >= low, name, value, f"an integer >= {low}")


def _hw_pair(value: Any, name: str) -> tuple[int, int]:
  """(H, W) from a pair of positive integers or a string "HxW"."""
  if isinstance(value, str):
    value = value.lower().split("x")
  try:
    h, w = (int(v) for v in value)
    ok = all(float(v) == int(v) for v in value) and h >= 1 and w >= 1
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{name}={value!r}; expected an image size (H, W) or "
                     "'HxW' of positive integers, e.g. '320x320'")
  return h, w


def parse_scales(value: Any) -> tuple[tuple[int, int], ...]:
  """Training scale buckets from a config value.

  Accepts a sequence of (H, W) pairs, a single (H, W) pair, or a string of
  comma-separated "HxW" sizes ("256x256,320x320"), the form the command
  line takes.

  Raises:
    ValueError: no bucket, or one that is not two positive integers.
  """
  if isinstance(value, str):
    value = [v for v in value.replace(" ", "").split(",") if v]
  elif (isinstance(value, Sequence) and len(value) == 2
        and all(_is_number(v) for v in value)):
    value = [value]  # one bucket, e.g. from --config.data.train_scales=96x96
  if not isinstance(value, Sequence) or not value:
    raise ValueError(f"data.train_scales={value!r}; expected at least one "
                     "image size (H, W), e.g. '256x256,320x320'")
  return tuple(_hw_pair(s, "data.train_scales") for s in value)


class DataError(ValueError):
  """The dataset on disk cannot be read: a missing, truncated or corrupt
  file, or unreadable metadata. The message names the file and the command
  that rebuilds the dataset."""


def rebuild_command(name: str, config: str | None = None,
                    data_dir: str | os.PathLike[str] | None = None,
                    manual: bool = False) -> str:
  """The command line that deletes a built dataset and builds it again."""
  parts = ["python -m data_builders build", shlex.quote(name)]
  if config:
    parts += ["--config", shlex.quote(config)]
  if data_dir:
    parts += ["--data_dir", shlex.quote(os.fspath(data_dir))]
  if manual:
    parts.append("--manual_dir <the official download>")
  return " ".join(parts + ["--overwrite"])


def builder_rebuild_command(builder: Any) -> str:
  """`rebuild_command` of a built dataset's TFDS builder."""
  config = getattr(getattr(builder, "builder_config", None), "name", None)
  data_dir = getattr(builder, "data_dir", None)
  # data_dir is <root>/<name>[/<config>]/<version>.
  root = (pathlib.Path(os.fspath(data_dir)).parents[2 if config else 1]
          if data_dir else None)
  manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  return rebuild_command(builder.name, config, root, manual)


def _split_files(builder: Any, split: str) -> list[tuple[str, int, int]]:
  """(file, records skipped, records read) of a split, in record order."""
  splits = builder.info.splits
  if split not in splits:
    raise DataError(
        f"dataset {builder.name} in {builder.data_dir} has no {split!r} "
        f"split (its dataset_info.json lists {sorted(splits)}); rebuild it: "
        f"{builder_rebuild_command(builder)}")
  return [(os.fspath(f.filename), int(f.skip), int(f.take))
          for f in splits[split].file_instructions]


def _check_shard(path: str, builder: Any, records: int) -> None:
  """DataError naming `path` if it is missing, truncated or not a record
  file; reads only the file's footer and index."""
  problem = None
  if not os.path.isfile(path):
    problem = "is missing"
  elif getattr(builder.info.file_format, "value", None) == "array_record":
    # pylint: disable-next=g-import-not-at-top
    from array_record.python import array_record_module
    try:
      reader = array_record_module.ArrayRecordReader(
          path, options="readahead_buffer_size:0")
      try:
        if not reader.ok():
          problem = "is truncated or not an ArrayRecord file"
        elif reader.num_records() < records:
          problem = (f"holds {reader.num_records()} records, fewer than the "
                     f"{records} the dataset's metadata says")
      finally:
        reader.close()  # raises the reader's error if it is not ok
    except Exception as e:  # pylint: disable=broad-except
      problem = problem or f"is truncated or corrupt ({e})"
  if problem:
    raise DataError(f"{path} {problem}; rebuild the dataset: "
                    f"{builder_rebuild_command(builder)}")


class _CheckedSource(Sequence):
  """A TFDS data source whose read errors name the file and the fix.

  Picklable (for Grain's worker processes) when the wrapped source is.
  """

  def __init__(self, source: Any, files: list[tuple[str, int, int]],
               split: str, rebuild: str):
    self._source = source
    self._files = files
    self._ends = np.cumsum([take for _, _, take in files])
    self._split = split
    self._rebuild = rebuild

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, record: int) -> Mapping[str, Any]:
    if not 0 <= record < len(self):
      raise IndexError(f"record {record} of the {self._split!r} split: "
                       f"expected 0..{len(self) - 1}")
    try:
      return self._source[record]
    except Exception as e:  # the record file's error, without its name
      path = self._files[int(np.searchsorted(self._ends, record,
                                             side="right"))][0]
      raise DataError(
          f"{path}: record {record} of the {self._split!r} split cannot be "
          f"read ({type(e).__name__}: {e}); the file is truncated or "
          f"corrupt: rebuild the dataset: {self._rebuild}") from e


def data_source(builder: Any, split: str) -> Sequence[Mapping[str, Any]]:
  """A TFDS builder's random-access source for `split`, JPEGs undecoded.

  The pipeline decodes the image itself (and names the image id if that
  fails); records are otherwise as TFDS returns them. The split's files are
  checked first (present, complete, as many records as the metadata says),
  and a record that cannot be read later raises a DataError too: both name
  the file and the command that rebuilds the dataset.

  Raises:
    DataError: the split is missing or one of its files is missing,
      truncated or corrupt.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  files = _split_files(builder, split)
  for path, skip, take in files:
    _check_shard(path, builder, skip + take)
  source = builder.as_data_source(
      split, decoders={"image": tfds.decode.SkipDecoding()})
  return _CheckedSource(source, files, split,
                        builder_rebuild_command(builder))


def bucket_index(seed: int, batch_index: int, num_buckets: int) -> int:
  """The bucket of training batch `batch_index`: uniform, from (seed, k)."""
  if num_buckets == 1:
    return 0
  rng = np.random.default_rng([_BUCKET_SALT, int(seed) % 2**32,
                               int(batch_index)])
  return int(rng.integers(num_buckets))


def portrait_flags(source: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """bool[n]: True where record i's image is taller than wide.

  Raises ValueError naming the record when its image header is unreadable.
  """
  flags = np.zeros((len(source),), bool)
  for i in range(len(source)):
    try:
      h, w = orientation.record_hw(_read(source, i))
    except (OSError, ValueError) as e:
      raise ValueError(f"record {i}: cannot read the image size ({e})") from e
    flags[i] = h > w
  return flags


def _read(source: Sequence[Mapping[str, Any]], record: int) -> Mapping:
  try:
    return source[record]
  except DataError:
    raise  # names its file already
  except Exception as e:  # the source's own error, with where it happened
    raise ValueError(f"record {record} of the data source could not be read "
                     f"({type(e).__name__}: {e})") from e


def _batch_features(ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {
      "image": ex["image"],
      "boxes_xyxy": ex["boxes_xyxy"],
      "pids": ex["pids"],
      "boxes_valid": ex["boxes_valid"],
      "image_hw": ex["image_hw"],
      "orig_hw": ex["orig_hw"],
      "scale": np.float32(ex["scale"]),
      "index": np.int32(ex["index"]),
  }


class _TrainExample:
  """(global stream position g, record index) -> one preprocessed training
  example (`ps_jax.data.order`).

  A module-level class, so Grain can pickle it into worker processes.
  """

  def __init__(self, source, cfg: PipelineConfig, seed: int,
               global_batch: int):
    self._source = source
    self._cfg = cfg
    self._seed = seed
    self._global_batch = global_batch

  def __call__(self, g: int, record: int) -> dict[str, np.ndarray]:
    cfg = self._cfg
    bucket = cfg.train_scales[bucket_index(
        self._seed, g // self._global_batch, len(cfg.train_scales))]
    # The 0 stood for the process index when each process had its own
    # stream; kept so that single-process streams stay as they were.
    rng = np.random.default_rng([int(self._seed) % 2**32, 0, g])
    ex = augment.decode(_read(self._source, record), record)
    if cfg.portrait_buckets:
      bucket = augment.oriented_bucket(ex["image_hw"], bucket)
    for op in (
        functools.partial(augment.resize_to_bucket, bucket_hw=bucket,
                          antialias=cfg.resize_antialias),
        functools.partial(augment.drop_degenerate_boxes,
                          min_size=cfg.min_box_size),
        functools.partial(augment.hflip, prob=cfg.flip_prob),
        functools.partial(augment.normalize, mode=cfg.normalization),
        functools.partial(augment.pad_to, max_boxes=cfg.max_boxes,
                          canvas_hw=augment.padded_size(bucket,
                                                        cfg.size_divisor)),
    ):
      ex = op(ex, rng)
    return _batch_features(ex)


class _GroupedOrder:
  """Global stream position -> record of the portrait/landscape grouped
  order (`orientation.grouped_epoch_order`), computed per epoch.

  A module-level class, so Grain can pickle it into worker processes.
  """

  def __init__(self, portrait: np.ndarray, global_batch: int, seed: int):
    self._portrait = np.asarray(portrait, bool)
    self._global = global_batch
    self._seed = seed
    self._length = orientation.grouped_epoch_length(self._portrait,
                                                    self._global)
    # (epoch, its order), replaced as one object: Grain's reader threads
    # share it.
    self._cached = (-1, None)

  def __call__(self, g: int) -> int:
    epoch, k = divmod(int(g), self._length)
    cached = self._cached
    if cached[0] != epoch:
      cached = (epoch, orientation.grouped_epoch_order(
          self._portrait, self._global, self._seed, epoch))
      self._cached = cached
    return int(cached[1][k])


def _process(process_index: int | None, process_count: int | None
             ) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in "
                     f"[0, process_count={process_count})")
  return process_index, process_count


def _to_iter(ds: grain.MapDataset, cfg: PipelineConfig) -> grain.IterDataset:
  # Grain's default reader holds 500 elements; our elements are whole batches
  # of large images, so the buffer is bounded by the config.
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=cfg.num_threads,
      prefetch_buffer_size=max(cfg.prefetch, cfg.num_threads)))
  if cfg.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch))
  return it


def train_dataset(source: Sequence[Mapping[str, Any]],
                  cfg: PipelineConfig | Mapping[str, Any],
                  seed: int | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  **overrides: Any) -> grain.IterDataset:
  """The infinite training dataset of this process (see `train_iterator`)."""
  cfg = PipelineConfig.from_config(cfg, **overrides)
  seed = cfg.shuffle_seed if seed is None else int(seed)
  pi, pc = _process(process_index, process_count)
  n = len(source)
  if n == 0:
    raise ValueError("the training data source is empty")
  global_batch = cfg.batch_size * pc
  example = _TrainExample(source, cfg, seed, global_batch)
  record_of = (_GroupedOrder(portrait_flags(source), global_batch, seed)
               if cfg.portrait_buckets else order.ShuffledOrder(n, seed))
  ds = order.stream(example, record_of, cfg.batch_size, pi, pc)
  return _to_iter(ds.batch(cfg.batch_size, drop_remainder=True), cfg)


def train_iterator(source: Sequence[Mapping[str, Any]],
                   cfg: PipelineConfig | Mapping[str, Any],
                   seed: int | None = None, *,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   **overrides: Any) -> grain.DatasetIterator:
  """An endless, checkpointable iterator over training batches.

  Args:
    source: random-access records in the schema.py scene format (a TFDS
      ArrayRecord data source, ideally from `data_source`, or a list).
    cfg: a PipelineConfig, or a config `data` section with its field names.
    seed: seeds shuffling, buckets and flips; None uses `cfg.shuffle_seed`.
      Must be the same in every process.
    process_index, process_count: this process's shard; default
      jax.process_index() / jax.process_count().
    **overrides: PipelineConfig fields replacing those of `cfg`
      (e.g. batch_size=global_batch // process_count).

  Returns:
    A grain.DatasetIterator of batch dicts (module docstring, TRAIN_KEYS).
  """
  return iter(train_dataset(source, cfg, seed, process_index=process_index,
                            process_count=process_count, **overrides))


class _EvalExample:
  """Position in this process's padded eval stream -> one example.

  `slots` holds (record, bucket) per position; record -1 is a padding
  example on the canvas of that bucket.
  """

  def __init__(self, source, cfg: PipelineConfig,
               slots: Sequence[tuple[int, tuple[int, int]]]):
    self._source = source
    self._cfg = cfg
    self._slots = list(slots)

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    cfg = self._cfg
    record, bucket = self._slots[position]
    canvas = augment.padded_size(bucket, cfg.size_divisor)
    if record < 0:
      return _padding_example(canvas, cfg.max_boxes)
    ex = augment.decode(_read(self._source, record), record)
    for op in (
        functools.partial(augment.resize_to_bucket, bucket_hw=bucket,
                          antialias=cfg.resize_antialias),
        functools.partial(augment.drop_degenerate_boxes,
                          min_size=cfg.min_box_size),
        functools.partial(augment.normalize, mode=cfg.normalization),
        functools.partial(augment.pad_to, canvas_hw=canvas,
                          max_boxes=cfg.max_boxes),
    ):
      ex = op(ex, None)
    out = _batch_features(ex)
    out["example_valid"] = np.bool_(True)
    out["image_id"] = np.str_(ex["image_id"])
    return out


def _padding_example(canvas_hw: Sequence[int], max_boxes: int
                     ) -> dict[str, np.ndarray]:
  return {
      "image": np.zeros(tuple(canvas_hw) + (3,), np.float32),
      "boxes_xyxy": np.zeros((max_boxes, 4), np.float32),
      "pids": np.full((max_boxes,), -1, np.int32),
      "boxes_valid": np.zeros((max_boxes,), bool),
      "image_hw": np.zeros((2,), np.int32),
      "orig_hw": np.zeros((2,), np.int32),
      "scale": np.float32(1.0),
      "index": np.int32(-1),
      "example_valid": np.bool_(False),
      "image_id": np.str_(""),
  }


def num_eval_batches(num_records: int, batch_size: int,
                     process_count: int = 1) -> int:
  """Batches every process yields for `num_records` records (the same on all
  processes, so the global batches line up)."""
  per_process = -(-num_records // process_count)
  return -(-per_process // batch_size)


def eval_batches(source: Sequence[Mapping[str, Any]],
                 cfg: PipelineConfig | Mapping[str, Any], *,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 **overrides: Any) -> Iterator[dict[str, np.ndarray]]:
  """Every record once, in order, at `test_scale`, without augmentation.

  Process p of n takes records p, p + n, ...; every process yields
  `num_eval_batches(len(source), eval batch size, n)` batches, the last ones
  padded with examples whose `example_valid` is False. With
  `portrait_buckets`, landscape records come first and portrait ones (on the
  transposed canvas) after them, each group padded to whole global batches
  and process p taking slice p of each (module docstring), so records are
  not in index order: place the outputs by their `index`.

  Args:
    source: random-access records in the schema.py scene format.
    cfg: a PipelineConfig or config `data` section; uses test_scale,
      eval_batch_size (per process; 0 = batch_size), max_boxes,
      normalization, size_divisor, min_box_size, num_workers.
    process_index, process_count: default jax.process_index()/count().
    **overrides: PipelineConfig fields replacing those of `cfg`.

  Yields:
    Batch dicts with EVAL_KEYS (module docstring).
  """
  cfg = PipelineConfig.from_config(cfg, **overrides)
  pi, pc = _process(process_index, process_count)
  bs = cfg.per_process_eval_batch_size
  if cfg.portrait_buckets:
    slots = orientation.eval_slots(portrait_flags(source), cfg.test_scale,
                                   bs, pi, pc)
  else:
    records = list(range(pi, len(source), pc))
    total = num_eval_batches(len(source), bs, pc) * bs
    slots = [(r, cfg.test_scale) for r in records]
    slots += [(-1, cfg.test_scale)] * (total - len(records))
  if not slots:
    return iter(())
  ds = (grain.MapDataset.range(len(slots))
        .map(_EvalExample(source, cfg, slots))
        .batch(bs))
  return iter(_to_iter(ds, cfg))
