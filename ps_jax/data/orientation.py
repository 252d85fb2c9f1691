"""Portrait and landscape images in separate batches (portrait buckets).

With `PipelineConfig.portrait_buckets`, an image taller than wide goes into
the transposed bucket (`augment.oriented_bucket`), so a batch must hold one
orientation only to keep one static shape. This module computes which
records go together; `pipeline.py` wires it into Grain.

  record_hw            (height, width) of a record's image, from its header.
  grouped_epoch_order  one training epoch's record order, mmdet's
                       GroupSampler rule over the whole source.
  grouped_epoch_length its length (the same every epoch).
  eval_slots           one process's (record, bucket) evaluation slots.

Everything is host-side NumPy; the orders depend only on their arguments, so
every process computes the same one and a resumed run continues it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

# Salt of the grouped epoch order's random stream.
_GROUP_SALT = 0x67726F75


def record_hw(record: Mapping[str, Any]) -> tuple[int, int]:
  """(height, width) of a record's image, from the JPEG header when the image
  is still encoded (a `pipeline.data_source` record) or from the array's
  shape."""
  image = record["image"]
  if isinstance(image, (bytes, np.bytes_)):
    width, height = Image.open(io.BytesIO(bytes(image))).size
    return int(height), int(width)
  shape = np.shape(image)
  return int(shape[0]), int(shape[1])


def grouped_epoch_length(portrait: np.ndarray, global_batch: int) -> int:
  """Records in one epoch of `grouped_epoch_order`: each orientation group
  rounded up to whole global batches."""
  portrait = np.asarray(portrait, bool)
  groups = (int((~portrait).sum()), int(portrait.sum()))
  return sum(-(-n // global_batch) * global_batch for n in groups)


def grouped_epoch_order(portrait: np.ndarray, global_batch: int, seed: int,
                        epoch: int) -> np.ndarray:
  """The record order of one epoch with portrait and landscape images in
  separate global batches (mmdet's GroupSampler rule, over the whole source).

  Each orientation group is shuffled and padded with random repeats of its
  own records to a multiple of `global_batch`; the global batches of both
  groups are then shuffled together.

  Args:
    portrait: bool[n], True for an image taller than wide.
    global_batch: G, images per global batch (all processes together).
    seed: the training seed; epoch: the epoch number (both seed the order).

  Returns:
    i64[grouped_epoch_length(portrait, G)] record indices; rows of G are one
    orientation.
  """
  portrait = np.asarray(portrait, bool)
  rng = np.random.default_rng([_GROUP_SALT, int(seed) % 2**32, int(epoch)])
  batches = []
  for group in (np.flatnonzero(~portrait), np.flatnonzero(portrait)):
    if len(group) == 0:
      continue
    order = rng.permutation(group)
    extra = -len(order) % global_batch
    order = np.concatenate([order, rng.choice(order, extra)])
    batches.append(order.reshape(-1, global_batch))
  rows = np.concatenate(batches)
  return rows[rng.permutation(len(rows))].reshape(-1).astype(np.int64)


def eval_slots(portrait: np.ndarray, test_scale: tuple[int, int],
               batch_size: int, process_index: int, process_count: int
               ) -> list[tuple[int, tuple[int, int]]]:
  """This process's (record, bucket) evaluation slots: landscape records in
  order on `test_scale`, then portrait ones on the transposed bucket, each
  group padded (record -1) to whole global batches of batch_size x
  process_count; process p takes slice p of every global batch."""
  portrait = np.asarray(portrait, bool)
  g = batch_size * process_count
  slots = []
  for records, bucket in (
      (np.flatnonzero(~portrait), tuple(test_scale)),
      (np.flatnonzero(portrait), tuple(test_scale)[::-1])):
    padded = np.full((-(-len(records) // g) * g,), -1, np.int64)
    padded[:len(records)] = records
    for batch in padded.reshape(-1, g):
      mine = batch[process_index * batch_size:(process_index + 1) * batch_size]
      slots += [(int(r), bucket) for r in mine]
  return slots
