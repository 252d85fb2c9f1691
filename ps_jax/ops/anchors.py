"""Anchor boxes for region proposal networks (torchvision `AnchorGenerator`).

Conventions:
  * Boxes are xyxy f32 pixels of the network input, continuous coordinates
    (`ps_jax.ops.boxes`).
  * `cell_anchors(sizes, ratios)` are the A = len(ratios) * len(sizes) anchors
    of one feature-map cell, centred on (0, 0), ratio-major: for each aspect
    ratio r = h / w (outer loop) and each size s (inner loop), an anchor of
    width s / sqrt(r) and height s * sqrt(r) (area s^2), its corners rounded
    to whole pixels as torchvision rounds them.
  * `grid_anchors` places them at every cell of a stride-`stride` map: cell
    (i, j) shifts them by (j * stride, i * stride), i.e. anchors are centred
    on the cells' top-left corners, as torchvision does. The order is
    (row i, column j, anchor a), flattened to P = H * W * A: the order of a
    head output f32[B, H, W, A] reshaped to [B, P].

The Caffe OIM network uses py-faster-rcnn's generator (base 16, scales 8, 16,
32, ratios 0.5, 1, 2): the same 128, 256 and 512 px sizes and ratios, with
inclusive-pixel corners centred on (7.5, 7.5) of each cell and widths rounded
before the sizes are applied. Its anchors differ from these by at most a few
pixels (docs/oim.md), which the RPN regression absorbs.

Every function is static in its size arguments and returns jax arrays;
results are cached per argument tuple.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

# Caffe OIM / py-faster-rcnn: 16 * (8, 16, 32) px, ratios 0.5, 1, 2.
OIM_SIZES = (128.0, 256.0, 512.0)
# SeqNet / NAE's torchvision OIM baseline: one map, 15 anchors per cell.
SEQNET_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)


def _positive(values: Sequence[float], name: str) -> tuple[float, ...]:
  values = tuple(float(v) for v in values)
  if not values or not all(math.isfinite(v) and v > 0 for v in values):
    raise ValueError(f"{name}: expected one or more numbers > 0, got "
                     f"{values!r}.")
  return values


@functools.lru_cache(maxsize=None)
def _cell_anchors_np(sizes: tuple[float, ...], ratios: tuple[float, ...]
                     ) -> np.ndarray:
  # torchvision computes in float32: h_ratios = sqrt(r), w_ratios = 1 / h.
  scales = np.asarray(sizes, np.float32)
  h_ratios = np.sqrt(np.asarray(ratios, np.float32))
  w_ratios = np.float32(1.0) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
  return np.round(base).astype(np.float32)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float] = RATIOS
                 ) -> jnp.ndarray:
  """The anchors of one cell, centred on the origin.

  Args:
    sizes: anchor sides s (square root of the area), pixels.
    ratios: aspect ratios h / w.

  Returns:
    f32[A, 4] xyxy, A = len(ratios) * len(sizes), ratio-major.
  """
  sizes = _positive(sizes, "anchor sizes")
  ratios = _positive(ratios, "anchor ratios")
  return jnp.asarray(_cell_anchors_np(sizes, ratios))


@functools.lru_cache(maxsize=None)
def _grid_anchors_np(sizes: tuple[float, ...], ratios: tuple[float, ...],
                     height: int, width: int, stride: int) -> np.ndarray:
  base = _cell_anchors_np(sizes, ratios)
  ys = np.arange(height, dtype=np.float32) * np.float32(stride)
  xs = np.arange(width, dtype=np.float32) * np.float32(stride)
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4)


def grid_anchors(sizes: Sequence[float], ratios: Sequence[float],
                 feature_hw: Sequence[int], stride: int) -> jnp.ndarray:
  """Every anchor of a feature map.

  Args:
    sizes: anchor sides, pixels.
    ratios: aspect ratios h / w.
    feature_hw: (H, W) of the map; static.
    stride: input pixels per feature pixel; static.

  Returns:
    f32[H * W * A, 4] xyxy pixels, ordered (row, column, anchor).
  """
  sizes = _positive(sizes, "anchor sizes")
  ratios = _positive(ratios, "anchor ratios")
  height, width = (int(v) for v in feature_hw)
  if height < 1 or width < 1 or int(stride) < 1:
    raise ValueError(f"grid_anchors: expected a map of at least 1x1 and a "
                     f"stride >= 1, got {feature_hw!r} and {stride!r}.")
  return jnp.asarray(_grid_anchors_np(sizes, ratios, height, width,
                                      int(stride)))
