"""RoIAlign with torchvision.ops.roi_align semantics, channels last.

Conventions:
  * Features are f32[B, H, W, C]; boxes are xyxy in pixels of the network
    input and are mapped to the feature map by `spatial_scale` (1 / stride).
  * Sampling follows torchvision's CPU kernel: with `aligned=True` the box is
    shifted by -0.5 feature pixels (pixel centres at integer + 0.5 in box
    coordinates); with `aligned=False` the box is forced to be at least 1x1.
    Each of the oh x ow bins averages a grid of sampling_ratio x
    sampling_ratio bilinear samples at the sub-bin centres. A sample with
    y < -1, y > H, x < -1 or x > W reads 0; otherwise its coordinates are
    clamped into [0, H-1] x [0, W-1] before interpolating (so the border
    band (-1, 0) repeats the edge pixel rather than fading to 0).
  * `sampling_ratio <= 0` is torchvision's adaptive grid,
    ceil(roi_height / oh) x ceil(roi_width / ow) samples per bin, which varies
    per box. Shapes stay static by visiting a fixed maximum grid per axis
    (`max_sampling_grid`, by default ceil(H / oh) x ceil(W / ow), enough for
    any box that fits in the feature map) and masking the unused samples;
    results equal torchvision's whenever a box's adaptive grid fits. A larger
    box gets max_sampling_grid evenly spaced samples per bin instead (an
    approximation, averaged over the samples actually taken). The cost grows
    with that maximum: on big maps prefer sampling_ratio > 0 (torchvision's
    MultiScaleRoIAlign uses 2) or pass a small `max_sampling_grid`.

How: bilinear interpolation is separable, so each bin row has 2 * gy
(row, weight) taps and each bin column 2 * gx (column, weight) taps; the
output accumulates weight * feature-row gathers over the 4 * gy * gx tap pairs
(an unrolled loop when it is short, a fori_loop that skips taps no box uses
otherwise), which XLA fuses without materialising per-sample tensors.
Gradients flow to the features (a scatter-add) and also to the box
coordinates (piecewise linear); stop_gradient the boxes for torchvision's
behaviour.
"""
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

# Longest tap loop that is unrolled; longer (adaptive) grids use a fori_loop
# to keep the program small.
_MAX_UNROLLED_TAPS = 64


def _axis_taps(start, bin_size, grid, size, out_n, max_grid):
  """Interpolation taps of one axis for every bin and sample.

  Args:
    start: f32[R] box start on this axis, feature pixels.
    bin_size: f32[R] bin length, feature pixels.
    grid: i32[R] samples per bin along this axis, <= max_grid (<= 0: no
      samples).
    size: feature map length on this axis (H or W).
    out_n: number of bins (oh or ow).
    max_grid: static upper bound of `grid`.

  Returns:
    (index i32[R, out_n, 2 * max_grid] in [0, size), weight f32[R, out_n,
    2 * max_grid]); unused samples have weight 0.
  """
  p = jnp.arange(out_n, dtype=jnp.float32)[None, :, None]  # [1, P, 1]
  s = jnp.arange(max_grid, dtype=jnp.float32)[None, None, :]  # [1, 1, G]
  grid_f = jnp.maximum(grid, 1).astype(jnp.float32)[:, None, None]
  b = bin_size[:, None, None]
  pos = start[:, None, None] + p * b + (s + 0.5) * b / grid_f  # [R, P, G]
  used = (s < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
  pos = jnp.clip(pos, 0.0, size - 1.0)
  low_f = jnp.floor(pos)
  frac = pos - low_f  # 0 at the last row/column, like torchvision's clamp
  low = low_f.astype(jnp.int32)
  high = jnp.minimum(low + 1, size - 1)
  index = jnp.stack([low, high], axis=-1)  # [R, P, G, 2]
  weight = jnp.where(used[..., None],
                     jnp.stack([1.0 - frac, frac], axis=-1), 0.0)
  shape = (*pos.shape[:2], 2 * max_grid)
  return index.reshape(shape), weight.reshape(shape)


def _pool(flat, base, boxes, height, width, out_hw, spatial_scale,
          sampling_ratio, aligned, max_grid, grid_slack=0.0):
  """Pools every box from the flattened maps.

  Args:
    flat: f32[B * H * W, C] feature maps, row-major.
    base: i32[R] offset of each box's image in `flat` (b * H * W).
    boxes: f32[R, 4] xyxy, input pixels.
    height, width: H and W.
    out_hw: (oh, ow).
    spatial_scale, sampling_ratio, aligned: as in `roi_align`.
    max_grid: (gy, gx) static bounds of the adaptive grid.
    grid_slack: the adaptive grid is ceil(roi / bins - grid_slack).

  Returns:
    f32[R, oh, ow, C].
  """
  oh, ow = out_hw
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = [boxes[:, i] * spatial_scale - offset for i in range(4)]
  roi_w = x2 - x1
  roi_h = y2 - y1
  if not aligned:
    roi_w = jnp.maximum(roi_w, 1.0)
    roi_h = jnp.maximum(roi_h, 1.0)
  if sampling_ratio > 0:
    grid_h = jnp.full(roi_h.shape, sampling_ratio, jnp.int32)
    grid_w = grid_h
    max_h = max_w = sampling_ratio
  else:
    max_h, max_w = max_grid
    grid_h = jnp.minimum(jnp.ceil(roi_h / oh - grid_slack).astype(jnp.int32),
                         max_h)
    grid_w = jnp.minimum(jnp.ceil(roi_w / ow - grid_slack).astype(jnp.int32),
                         max_w)
  iy, wy = _axis_taps(y1, roi_h / oh, grid_h, height, oh, max_h)
  ix, wx = _axis_taps(x1, roi_w / ow, grid_w, width, ow, max_w)
  count = jnp.maximum(jnp.maximum(grid_h, 0) * jnp.maximum(grid_w, 0), 1)
  # Fold 1 / count into the row weights: one multiply per tap less.
  wy = wy / count.astype(jnp.float32)[:, None, None]
  rows = base[:, None, None] + iy * width  # [R, oh, Ty]
  num_x = ix.shape[-1]
  num_taps = iy.shape[-1] * num_x

  def tap(t, acc, take):
    ty, tx = t // num_x, t % num_x
    index = take(rows, ty)[:, :, None] + take(ix, tx)[:, None, :]  # [R,oh,ow]
    weight = take(wy, ty)[:, :, None] * take(wx, tx)[:, None, :]
    values = jnp.take(flat, index, axis=0, mode="clip")  # [R,oh,ow,C]
    return acc + weight[..., None].astype(flat.dtype) * values

  acc = jnp.zeros((boxes.shape[0], oh, ow, flat.shape[-1]), flat.dtype)
  if num_taps <= _MAX_UNROLLED_TAPS:
    static_take = lambda a, i: a[..., i]
    for t in range(num_taps):
      acc = tap(t, acc, static_take)
    return acc
  # Adaptive grids: most taps of the static maximum are unused by every box
  # (zero weight), so skip them at run time.
  dynamic_take = lambda a, i: lax.dynamic_index_in_dim(a, i, -1, False)
  used_y = jnp.any(wy != 0, axis=(0, 1))  # [Ty]
  used_x = jnp.any(wx != 0, axis=(0, 1))  # [Tx]

  def body(t, acc):
    used = used_y[t // num_x] & used_x[t % num_x]
    return lax.cond(used, lambda a: tap(t, a, dynamic_take), lambda a: a, acc)

  return lax.fori_loop(0, num_taps, body, acc)


def _output_hw(output_size: Union[int, Sequence[int]]) -> tuple[int, int]:
  if isinstance(output_size, int):
    out = (output_size, output_size)
  else:
    out = tuple(output_size)
  if len(out) != 2 or not all(isinstance(v, int) and v > 0 for v in out):
    raise ValueError(
        "roi_align: output_size must be a positive int or (oh, ow), got "
        f"{output_size!r}.")
  return out


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    max_sampling_grid: Union[int, Sequence[int], None] = None,
    grid_slack: float = 0.0,
) -> jax.Array:
  """Pools a fixed-size feature patch for each box (torchvision semantics).

  Args:
    features: f32[B, H, W, C] feature map.
    boxes: either f32[R, 5] rows (batch_index, x1, y1, x2, y2) as in
      torchvision (any mix of images; an index outside [0, B) pools zeros),
      or f32[B, R, 4] xyxy boxes per image. Coordinates in input pixels.
    output_size: oh = ow, or (oh, ow).
    spatial_scale: multiplies box coordinates to get feature pixels
      (1 / stride of the map).
    sampling_ratio: samples per bin along each axis; <= 0 selects the
      adaptive ceil(roi_size / output_size) (see the module docstring).
    aligned: shift boxes by -0.5 feature pixels (Detectron2's ROIAlignV2).
    max_sampling_grid: static cap (int or (gh, gw)) of the adaptive grid; by
      default ceil(H / oh) and ceil(W / ow). Ignored when sampling_ratio > 0.
    grid_slack: the adaptive grid is ceil(roi_size / output_size -
      grid_slack): 0 is torchvision's; a small slack keeps a box that is an
      integer multiple of the output size, up to float rounding, on that
      multiple's grid (`crop_and_resize`).

  Returns:
    f32[R, oh, ow, C] for f32[R, 5] boxes, f32[B, R, oh, ow, C] for
    f32[B, R, 4] boxes.
  """
  features = jnp.asarray(features)
  boxes = jnp.asarray(boxes, jnp.float32)
  if features.ndim != 4:
    raise ValueError(
        f"roi_align: features must be f32[B, H, W, C], got shape "
        f"{features.shape}.")
  batch, height, width, _ = features.shape
  out_hw = _output_hw(output_size)
  oh, ow = out_hw
  if max_sampling_grid is None:
    max_grid = (max(1, math.ceil(height / oh)), max(1, math.ceil(width / ow)))
  elif isinstance(max_sampling_grid, int):
    max_grid = (max_sampling_grid, max_sampling_grid)
  else:
    max_grid = tuple(max_sampling_grid)
  if len(max_grid) != 2 or min(max_grid) < 1:
    raise ValueError(
        "roi_align: max_sampling_grid must be a positive int or pair, got "
        f"{max_sampling_grid!r}.")
  flat = features.reshape(batch * height * width, -1)  # [B*H*W, C]
  pool = lambda base, xyxy: _pool(flat, base, xyxy, height, width, out_hw,
                                  spatial_scale, sampling_ratio, aligned,
                                  max_grid, grid_slack)

  if boxes.ndim == 2 and boxes.shape[1] == 5:
    index = boxes[:, 0].astype(jnp.int32)
    inside = (index >= 0) & (index < batch)
    base = jnp.clip(index, 0, batch - 1) * (height * width)
    out = pool(base, boxes[:, 1:])
    return jnp.where(inside[:, None, None, None], out, 0.0)

  if boxes.ndim == 3 and boxes.shape[0] == batch and boxes.shape[2] == 4:
    num = boxes.shape[1]
    base = jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * (height * width),
                      num)  # [B*R]
    out = pool(base, boxes.reshape(batch * num, 4))
    return out.reshape(batch, num, *out.shape[1:])

  raise ValueError(
      f"roi_align: boxes must be f32[R, 5] (batch_index, x1, y1, x2, y2) or "
      f"f32[B={batch}, R, 4], got shape {boxes.shape}.")


def crop_and_resize(
    images: jax.Array,
    boxes: jax.Array,
    output_hw: Sequence[int],
    *,
    max_sampling_grid: Union[int, Sequence[int]] = 4,
) -> jax.Array:
  """Boxes cut from images and resized to `output_hw`, aspect not kept.

  The crop a re-ID net sees (a detector's box resized to (h, w) as
  torchvision's `Resize((h, w))` does to a crop), batched and with static
  shapes. It is `roi_align` on pixels with `aligned=True`: output pixel
  (i, j) averages a grid of bilinear samples at the sub-pixel centres of
  the box's (i, j)-th bin, ceil(box_h / h) x ceil(box_w / w) of them (at
  most `max_sampling_grid` per axis). Enlarging, that is one bilinear
  sample at each bin centre (`jax.image.resize`'s bilinear on the crop);
  shrinking by an integer factor up to the grid cap, the exact mean of the
  source pixels' interpolants (a box filter), so small crops do not alias.
  Samples outside the image read the edge pixel (within 1 pixel) or 0.
  The grid is ceil(box / output - 1e-3): a box that is an integer multiple
  of the output size up to float rounding (its coordinates scaled from the
  original image inside a jitted step, say) keeps that multiple's grid
  rather than flipping to one more sample per pixel, which would blur it.

  Args:
    images: f32[B, H, W, C].
    boxes: f32[B, R, 4] xyxy in pixels of `images` (pixel (0, 0) spans
      [0, 1) x [0, 1)).
    output_hw: (h, w) of each crop.
    max_sampling_grid: static cap of samples per output pixel and axis.
  Returns:
    f32[B, R, h, w, C].
  """
  return roi_align(images, boxes, tuple(int(v) for v in output_hw),
                   spatial_scale=1.0, sampling_ratio=-1, aligned=True,
                   max_sampling_grid=max_sampling_grid, grid_slack=1e-3)
