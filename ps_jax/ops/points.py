"""Anchor points of dense (FCOS-style) heads.

Conventions (mmdet FCOSHead `_get_points_single`):
  * The point of feature cell (i, j) (row i, column j) at a level with stride s
    sits at (x, y) = (j * s + s // 2, i * s + s // 2) in network-input pixels.
  * Points of one level are row-major: flat index = i * w + j, the same order
    as `features.reshape(B, h * w, C)` of an NHWC map.
  * Levels are concatenated in the order given (finest first for an FPN), so
    the P axis of every dense head output lines up with `make_points`.
  * Feature map sizes are ceil(H / s), ceil(W / s): every downsampling in the
    models is a SAME-padded stride-2 conv or pool, and nested ceil divisions
    compose (ceil(ceil(H / 2) / 2) == ceil(H / 4)). This also equals PyTorch's
    size for the ResNet stem and FPN P6/P7 convs with their usual paddings.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_positive_int(value: int, name: str) -> int:
  if isinstance(value, bool) or int(value) != value or value <= 0:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}.")
  return int(value)


def feature_sizes(image_hw: tuple[int, int],
                  strides: Sequence[int]) -> list[tuple[int, int]]:
  """Feature map sizes of each level for a padded network input.

  Args:
    image_hw: (H, W) of the padded network input, pixels (static ints).
    strides: stride of each level in pixels, e.g. (8, 16, 32, 64, 128).

  Returns:
    One (h, w) per level with h = ceil(H / s), w = ceil(W / s).
  """
  if len(image_hw) != 2:
    raise ValueError(f"image_hw: expected (height, width), got {image_hw!r}.")
  height = _check_positive_int(image_hw[0], "image_hw[0] (height)")
  width = _check_positive_int(image_hw[1], "image_hw[1] (width)")
  sizes = []
  for s in strides:
    s = _check_positive_int(s, "strides[...]")
    sizes.append((-(-height // s), -(-width // s)))
  return sizes


def _level_points_np(height: int, width: int, stride: int) -> np.ndarray:
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  pts = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # [h*w, 2]
  return (pts * stride + stride // 2).astype(np.float32)


def level_points(height: int, width: int, stride: int) -> jax.Array:
  """Points of one feature map.

  Args:
    height: feature map height h (cells, static int).
    width: feature map width w (cells, static int).
    stride: level stride s in pixels (static int).

  Returns:
    f32[h * w, 2] (x, y) in network-input pixels, row-major over (i, j):
    point[i * w + j] = (j * s + s // 2, i * s + s // 2).
  """
  height = _check_positive_int(height, "height")
  width = _check_positive_int(width, "width")
  stride = _check_positive_int(stride, "stride")
  return jnp.asarray(_level_points_np(height, width, stride))


def make_points(
    feature_hw: Sequence[tuple[int, int]], strides: Sequence[int]
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Points of all levels, concatenated in level order.

  Args:
    feature_hw: (h, w) of each level's feature map, cells (static ints);
      see `feature_sizes`.
    strides: stride of each level in pixels (static ints), same length.

  Returns:
    points: f32[P, 2] (x, y) in network-input pixels, P = sum(h * w).
    point_strides: f32[P] stride (pixels) of each point's level.
    point_levels: i32[P] level index (0-based) of each point.
  """
  if len(feature_hw) != len(strides):
    raise ValueError(
        f"make_points: feature_hw has {len(feature_hw)} levels but strides "
        f"has {len(strides)}.")
  if not strides:
    raise ValueError("make_points: need at least one level.")
  pts, strs, lvls = [], [], []
  for level, ((h, w), s) in enumerate(zip(feature_hw, strides)):
    h = _check_positive_int(h, f"feature_hw[{level}][0]")
    w = _check_positive_int(w, f"feature_hw[{level}][1]")
    s = _check_positive_int(s, f"strides[{level}]")
    pts.append(_level_points_np(h, w, s))
    strs.append(np.full((h * w,), s, np.float32))
    lvls.append(np.full((h * w,), level, np.int32))
  return (jnp.asarray(np.concatenate(pts)), jnp.asarray(np.concatenate(strs)),
          jnp.asarray(np.concatenate(lvls)))
