"""Indexing with several processes: each runs the model on its share.

`ps-search index` under jax.distributed (docs/scaling.md) wraps its
predictor in `SharedPredictor`. Every process walks the same list of
images in the same order and reads every batch. Process p runs the model
on images p, p + n, ... of the batch, on its own devices. The detections
are then gathered, so every process holds the whole batch's results, in
order. Process 0 alone writes the index. The model's work is divided by n;
reading and decoding the images is not (it is small next to the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from ps_jax import mesh as mesh_lib

_KEYS = ("boxes", "scores", "embeddings")


class SharedPredictor:
  """A predictor whose `detect` divides each batch among the processes.

  Every process must call `detect` with the same images, in the same order
  (each call is a collective). `embed_query` and the identity attributes
  (`fingerprint`, `step`, ...) are the wrapped predictor's.

  Args:
    predictor: the model (`ps_jax.search.index.Predictor`).
    process_index, process_count: this process and the process count;
      default jax's.
    allgather: gathers a numpy array from every process, stacked on a new
      first axis (default `multihost_utils.process_allgather`); tests pass
      their own to check the division without a cluster.
  """

  def __init__(self, predictor: Any, *, process_index: int | None = None,
               process_count: int | None = None, allgather: Any = None):
    self._predictor = predictor
    self._pi = jax.process_index() if process_index is None else process_index
    self._pc = jax.process_count() if process_count is None else process_count
    self._allgather = allgather or _process_allgather
    self.embedding_dim = int(predictor.embedding_dim)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):
      raise AttributeError(name)
    return getattr(self._predictor, name)

  def embed_query(self, image: np.ndarray, box_xyxy: Sequence[float]
                  ) -> np.ndarray:
    return self._predictor.embed_query(image, box_xyxy)

  def detect(self, images: Sequence[np.ndarray]
             ) -> list[dict[str, np.ndarray]]:
    """Per image of `images`: boxes f32[n, 4], scores f32[n], embeddings
    f32[n, D], the same on every process."""
    mine = list(images)[self._pi::self._pc]
    outs = self._predictor.detect(mine) if mine else []
    # Every image's detections are padded to the largest count of the
    # batch, so that each process sends arrays of one shape.
    per = -(-len(images) // self._pc)  # images per process, rounded up
    counts = np.zeros((per,), np.int32)
    counts[:len(outs)] = [len(o["scores"]) for o in outs]
    counts = self._allgather(counts)  # [n, per]
    width = max(int(counts.max(initial=0)), 1)
    d = self.embedding_dim
    local = {"boxes": np.zeros((per, width, 4), np.float32),
             "scores": np.zeros((per, width), np.float32),
             "embeddings": np.zeros((per, width, d), np.float32)}
    for i, o in enumerate(outs):
      for k in _KEYS:
        v = np.asarray(o[k], np.float32)
        local[k][i, :len(v)] = v
    gathered = {k: self._allgather(v) for k, v in local.items()}
    results = []
    for j in range(len(images)):
      p, i = j % self._pc, j // self._pc
      c = int(counts[p, i])
      results.append({k: gathered[k][p, i, :c] for k in _KEYS})
    return results


def _process_allgather(x: np.ndarray) -> np.ndarray:
  # The model's programs compile at different speeds on different
  # processes; meet at a barrier before the collective (mesh.barrier).
  mesh_lib.barrier("search/detect")
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))
