"""The global training stream shared by every sampler."""
import pickle

import grain
import numpy as np

from ps_jax.data import order


def test_global_position_by_hand():
  # B = 2, n = 3: process 1 reads positions 2, 3, then 8, 9, then 14, 15.
  got = [order.global_position(i, 2, 1, 3) for i in range(6)]
  assert got == [2, 3, 8, 9, 14, 15]
  # One process: its stream is the global stream.
  assert [order.global_position(i, 4, 0, 1) for i in range(9)] == list(
      range(9))


def test_processes_partition_the_global_stream():
  seen = sorted(order.global_position(i, 3, p, 4)
                for p in range(4) for i in range(30))
  assert seen == list(range(120))


def test_shuffled_order_is_grains_repeated_shuffle_and_pickles():
  shuffled = order.ShuffledOrder(5, seed=11)
  reference = grain.MapDataset.range(5).shuffle(seed=11).repeat(None)
  got = [shuffled(g) for g in range(15)]
  assert got == [int(reference[g]) for g in range(15)]
  for e in range(3):  # every epoch is a permutation
    assert sorted(got[5 * e:5 * e + 5]) == list(range(5))
  assert got[:5] != got[5:10] or got[5:10] != got[10:15]
  clone = pickle.loads(pickle.dumps(shuffled))
  assert [clone(g) for g in range(15)] == got


def test_stream_hands_global_positions_to_the_example():
  ds = order.stream(lambda g, r: (g, r), lambda g: 100 + g, batch_size=2,
                    process_index=1, process_count=2)
  assert [ds[i] for i in range(4)] == [(2, 102), (3, 103), (6, 106),
                                       (7, 107)]
  assert np.iinfo(np.int64).max >= len(ds)  # endless
