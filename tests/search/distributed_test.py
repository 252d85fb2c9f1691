"""SharedPredictor: n processes each run the model on their share of a
batch and all end with every image's detections, in order. The processes
are threads here, with an allgather that exchanges their arrays."""
import threading

import numpy as np
import pytest

from ps_jax.search import distributed

DIM = 3


class _Fake:
  """Image i (its first pixel holds i) has i % 4 detections, all made of i."""
  embedding_dim = DIM
  fingerprint = "fake"

  def __init__(self):
    self.seen = []

  def detect(self, images):
    out = []
    for im in images:
      i = int(im[0, 0, 0])
      self.seen.append(i)
      n = i % 4
      out.append({"boxes": np.full((n, 4), i, np.float32),
                  "scores": np.full((n,), i / 100, np.float32),
                  "embeddings": np.full((n, DIM), i, np.float32)})
    return out

  def embed_query(self, image, box):
    return np.ones((DIM,), np.float32)


def _exchange(n):
  """allgather functions for n threads: each call stacks every thread's
  array of that call, in thread order."""
  barrier = threading.Barrier(n)
  slots = [None] * n

  def make(p):
    def allgather(x):
      slots[p] = np.array(x)
      barrier.wait()
      out = np.stack(slots)
      barrier.wait()
      return out
    return allgather
  return [make(p) for p in range(n)]


@pytest.mark.parametrize("n,num_images", [(2, 7), (3, 5), (4, 2)])
def test_every_process_gets_every_image_in_order(n, num_images):
  images = [np.full((4, 4, 3), i, np.uint8) for i in range(num_images)]
  fakes = [_Fake() for _ in range(n)]
  gathers = _exchange(n)
  results = [None] * n

  def run(p):
    shared = distributed.SharedPredictor(fakes[p], process_index=p,
                                         process_count=n,
                                         allgather=gathers[p])
    results[p] = shared.detect(images)

  threads = [threading.Thread(target=run, args=(p,)) for p in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(30)
  expected = _Fake().detect(images)
  for p in range(n):
    # The model ran on this process's share only.
    assert fakes[p].seen == list(range(p, num_images, n))
    assert len(results[p]) == num_images
    for got, want in zip(results[p], expected):
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got[k].dtype == np.float32


def test_identity_and_queries_are_the_wrapped_models():
  shared = distributed.SharedPredictor(_Fake(), process_index=0,
                                       process_count=1,
                                       allgather=lambda x: np.asarray(x)[None])
  assert shared.fingerprint == "fake" and shared.embedding_dim == DIM
  np.testing.assert_array_equal(
      shared.embed_query(np.zeros((4, 4, 3), np.uint8), (0, 0, 1, 1)),
      np.ones((DIM,)))
  assert not hasattr(shared, "step")
