"""Which record each process reads at each step: one global stream.

Every training sampler of ps_jax (the scene pipeline's shuffle and portrait
groups, the crop pipeline's shuffle and P x K identities) is defined as a
*global* stream: global position g = 0, 1, 2, ... holds one record, and
global batch k is positions [k G, (k + 1) G), G = B x n for n processes of
B examples each. Process p takes slice [p B, (p + 1) B) of every global
batch (`global_position`), and everything random about an example (its
flip, crop, erasing; the scale bucket of its batch) is drawn from the seed
and g. So the global batch of every step is the same whatever the number of
processes:

  * 2 processes x 4 devices train exactly as 1 process x 8 devices (same
    batches, same augmentation; only the order of floating-point reductions
    across devices may differ);
  * a checkpoint written by n processes resumes on m processes with the
    same global batch size and continues the same stream: a Grain
    iterator's saved state is the number of batches it has produced, the
    same number in every process.

A run that changes the global batch size changes G, and with it which
records fall in which step: resuming then starts the new stream at the
saved batch count, so some records of the current epoch are seen twice or
not at all (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain


def global_position(position: int, batch_size: int, process_index: int,
                    process_count: int) -> int:
  """Global stream position of position `position` of process p's stream.

  Args:
    position: index in this process's stream (B examples per batch).
    batch_size: B, examples per batch in each process.
    process_index, process_count: p and n.
  Returns:
    (k n + p) B + s, where k, s = divmod(position, B).
  """
  batch, slot = divmod(int(position), int(batch_size))
  return (batch * int(process_count) + int(process_index)) * int(
      batch_size) + slot


class ShuffledOrder:
  """Global position -> record: all n records, reshuffled every epoch.

  Grain's `MapDataset.range(n).shuffle(seed).repeat(None)` read at random
  positions, so a single-process run reads exactly the order it read before
  the stream was made global. Picklable (Grain worker processes).
  """

  def __init__(self, num_records: int, seed: int):
    self._order = (grain.MapDataset.range(int(num_records))
                   .shuffle(seed=int(seed) % 2**32)
                   .repeat(None))

  def __call__(self, g: int) -> int:
    return int(self._order[int(g)])


class ProcessStream:
  """This process's stream position -> the example at the global position.

  Use with `grain.MapDataset.map_with_index` on an infinite dataset whose
  elements are ignored. Picklable when `example` and `record_of` are.

  Args:
    example: (global position g, record index) -> one example dict.
    record_of: global position -> record index.
    batch_size, process_index, process_count: as in `global_position`.
  """

  def __init__(self, example: Callable[[int, int], Any],
               record_of: Callable[[int], int], batch_size: int,
               process_index: int, process_count: int):
    self._example = example
    self._record_of = record_of
    self._batch = int(batch_size)
    self._pi = int(process_index)
    self._pc = int(process_count)

  def __call__(self, position: int, _: Any) -> Any:
    g = global_position(position, self._batch, self._pi, self._pc)
    return self._example(g, self._record_of(g))


def stream(example: Callable[[int, int], Any],
           record_of: Callable[[int], int], batch_size: int,
           process_index: int, process_count: int) -> grain.MapDataset:
  """The infinite MapDataset of this process's examples, not yet batched."""
  return (grain.MapDataset.range(1).repeat(None).map_with_index(
      ProcessStream(example, record_of, batch_size, process_index,
                    process_count)))
