"""FCOS target assignment (mmdet `FCOSHead._get_target_single`).

Conventions:
  * Points come from `ps_jax.ops.points.make_points`: f32[P, 2] (x, y) pixels
    with their level's stride and level index.
  * GT boxes are xyxy pixels of the network input, padded to N with a
    `gt_valid` mask; padded rows are never assigned.
  * Regress ranges are pixels, one (lower, upper) pair per level. A point may
    take a GT if lower <= max(l, t, r, b) <= upper (both ends inclusive, as in
    mmdet). `INF` = 1e8 stands for "no upper bound" (mmdet uses the same value);
    it is exact in float32 and far above any image size.
  * A point is a candidate for a GT if it lies strictly inside the box (all of
    l, t, r, b > 0) or, with centre sampling, strictly inside the box clipped
    to the square of half-side `radius * stride` around the box centre. Among
    candidates the GT of smallest area wins; equal areas go to the lowest GT
    index (argmin).
  * AlignPS ("stage1") uses `ALIGNPS_REGRESS_RANGES`: level 0 accepts every
    distance, levels >= 1 accept none (upper bound -1 < any distance), so only
    the stride-8 map has positives while the other levels still count as
    negatives in the classification loss.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ps_jax.ops import box_coder
from ps_jax.ops import boxes as boxes_lib

INF = 1e8
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0),
                       (256.0, 512.0), (512.0, INF))
# AlignPS configs: regress_ranges=((-1, INF), (-2, -1), (-2, -1), (-2, -1),
# (-2, -1)), i.e. detection and re-ID only on P3.
ALIGNPS_REGRESS_RANGES = ((-1.0, INF), (-2.0, -1.0), (-2.0, -1.0),
                          (-2.0, -1.0), (-2.0, -1.0))


def _check_shapes(points, point_strides, point_levels, gt_boxes, gt_pids,
                  gt_valid, regress_ranges):
  num_points = points.shape[0]
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"points: expected f32[P, 2], got {points.shape}.")
  for name, arr in (("point_strides", point_strides),
                    ("point_levels", point_levels)):
    if arr.shape != (num_points,):
      raise ValueError(
          f"{name}: expected shape ({num_points},) to match points, got "
          f"{arr.shape}.")
  if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
    raise ValueError(f"gt_boxes: expected f32[N, 4], got {gt_boxes.shape}.")
  num_gts = gt_boxes.shape[0]
  for name, arr in (("gt_pids", gt_pids), ("gt_valid", gt_valid)):
    if arr.shape != (num_gts,):
      raise ValueError(
          f"{name}: expected shape ({num_gts},) to match gt_boxes, got "
          f"{arr.shape}.")
  if regress_ranges.ndim != 2 or regress_ranges.shape[1] != 2:
    raise ValueError(
        f"regress_ranges: expected [L, 2] (lower, upper) pairs, got "
        f"{regress_ranges.shape}.")


def fcos_targets(
    points: jax.Array,
    point_strides: jax.Array,
    point_levels: jax.Array,
    gt_boxes: jax.Array,
    gt_pids: jax.Array,
    gt_valid: jax.Array,
    regress_ranges: jax.Array | Sequence[tuple[float, float]],
    center_sample_radius: float | None = 1.5,
    norm_by_stride: bool = True,
) -> dict[str, jax.Array]:
  """FCOS targets of one image (vmap over images, see batched_fcos_targets).

  Args:
    points: f32[P, 2] (x, y) point positions, pixels.
    point_strides: f32[P] stride of each point's level, pixels.
    point_levels: i32[P] level index of each point, in [0, L).
    gt_boxes: f32[N, 4] GT boxes, xyxy pixels (N may be 0).
    gt_pids: i32[N] person id of each GT (>= 0 labeled, -1 unlabeled).
    gt_valid: bool[N] False for padding rows.
    regress_ranges: f32[L, 2] (lower, upper) max-distance range per level,
      pixels; e.g. `FCOS_REGRESS_RANGES` or `ALIGNPS_REGRESS_RANGES`.
    center_sample_radius: centre-sampling radius in units of the point's
      stride (mmdet/AlignPS: 1.5); None samples the whole box.
    norm_by_stride: divide the `ltrb` targets by the point's stride (mmdet
      `norm_on_bbox=True`).

  Returns:
    A dict of
      pos: bool[P] the point is a positive (has an assigned GT).
      ltrb: f32[P, 4] (left, top, right, bottom) distances from the point to
        its assigned box, pixels or strides (`norm_by_stride`); 0 where not
        positive.
      centerness: f32[P] sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)),
        in (0, 1]; 0 where not positive.
      pids: i32[P] assigned GT's pid; -1 where not positive, so use `pos` to
        tell background from unlabeled persons.
      gt_index: i32[P] index of the assigned GT in [0, N); -1 where not
        positive.
      boxes: f32[P, 4] assigned GT box, xyxy pixels; 0 where not positive.
  """
  points = jnp.asarray(points, jnp.float32)
  point_strides = jnp.asarray(point_strides, jnp.float32)
  point_levels = jnp.asarray(point_levels, jnp.int32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  gt_pids = jnp.asarray(gt_pids, jnp.int32)
  gt_valid = jnp.asarray(gt_valid, jnp.bool_)
  regress_ranges = jnp.asarray(regress_ranges, jnp.float32)
  _check_shapes(points, point_strides, point_levels, gt_boxes, gt_pids,
                gt_valid, regress_ranges)
  num_points, num_gts = points.shape[0], gt_boxes.shape[0]

  if num_gts == 0:
    # argmin over an empty axis is undefined; N is static, so branch in Python.
    return dict(
        pos=jnp.zeros((num_points,), jnp.bool_),
        ltrb=jnp.zeros((num_points, 4), jnp.float32),
        centerness=jnp.zeros((num_points,), jnp.float32),
        pids=jnp.full((num_points,), -1, jnp.int32),
        gt_index=jnp.full((num_points,), -1, jnp.int32),
        boxes=jnp.zeros((num_points, 4), jnp.float32),
    )

  xs = points[:, 0:1]  # [P, 1]
  ys = points[:, 1:2]  # [P, 1]
  x1, y1, x2, y2 = (gt_boxes[None, :, k] for k in range(4))  # each [1, N]
  ltrb = box_coder.ltrb_encode(points[:, None], gt_boxes[None])  # [P, N, 4]

  if center_sample_radius is None:
    inside = jnp.min(ltrb, axis=-1) > 0  # [P, N]
  else:
    radius = point_strides[:, None] * center_sample_radius  # [P, 1]
    cx = (x1 + x2) / 2
    cy = (y1 + y2) / 2
    # Centre region clipped to the box, so "inside it" implies inside the box.
    cx1 = jnp.maximum(cx - radius, x1)
    cy1 = jnp.maximum(cy - radius, y1)
    cx2 = jnp.minimum(cx + radius, x2)
    cy2 = jnp.minimum(cy + radius, y2)
    center_dist = jnp.stack([xs - cx1, ys - cy1, cx2 - xs, cy2 - ys], axis=-1)
    inside = jnp.min(center_dist, axis=-1) > 0  # [P, N]

  max_dist = jnp.max(ltrb, axis=-1)  # [P, N]
  ranges = regress_ranges[point_levels]  # [P, 2]
  in_range = ((max_dist >= ranges[:, 0:1]) & (max_dist <= ranges[:, 1:2]))

  candidate = inside & in_range & gt_valid[None, :]  # [P, N]
  areas = boxes_lib.box_area(gt_boxes)  # [N]
  masked_areas = jnp.where(candidate, areas[None, :], jnp.inf)
  gt_index = jnp.argmin(masked_areas, axis=1).astype(jnp.int32)  # [P]
  pos = jnp.any(candidate, axis=1)  # [P]

  assigned_ltrb = jnp.take_along_axis(
      ltrb, gt_index[:, None, None], axis=1)[:, 0]  # [P, 4]
  assigned_ltrb = jnp.where(pos[:, None], assigned_ltrb, 0.0)

  # Centerness is scale free, so pixels or strides give the same value.
  left, top, right, bottom = (assigned_ltrb[:, k] for k in range(4))
  lr_max = jnp.maximum(left, right)
  tb_max = jnp.maximum(top, bottom)
  ok = pos & (lr_max > 0) & (tb_max > 0)
  ratio = (jnp.minimum(left, right) / jnp.where(ok, lr_max, 1.0)
           * jnp.minimum(top, bottom) / jnp.where(ok, tb_max, 1.0))
  centerness = jnp.where(ok, jnp.sqrt(jnp.where(ok, ratio, 1.0)), 0.0)

  assigned_boxes = jnp.where(pos[:, None], gt_boxes[gt_index], 0.0)
  ltrb_targets = box_coder.ltrb_encode(
      points, assigned_boxes, point_strides if norm_by_stride else None)

  return dict(
      pos=pos,
      ltrb=jnp.where(pos[:, None], ltrb_targets, 0.0),
      centerness=centerness,
      pids=jnp.where(pos, gt_pids[gt_index], -1),
      gt_index=jnp.where(pos, gt_index, -1),
      boxes=assigned_boxes,
  )


def batched_fcos_targets(
    points: jax.Array,
    point_strides: jax.Array,
    point_levels: jax.Array,
    gt_boxes: jax.Array,
    gt_pids: jax.Array,
    gt_valid: jax.Array,
    regress_ranges: jax.Array | Sequence[tuple[float, float]],
    center_sample_radius: float | None = 1.5,
    norm_by_stride: bool = True,
) -> dict[str, jax.Array]:
  """`fcos_targets` for a batch of images sharing the same points.

  Args:
    points: f32[P, 2] (x, y) pixels.
    point_strides: f32[P] pixels.
    point_levels: i32[P] level index.
    gt_boxes: f32[B, N, 4] xyxy pixels.
    gt_pids: i32[B, N] person ids (-1 unlabeled).
    gt_valid: bool[B, N] False for padding rows.
    regress_ranges: f32[L, 2] pixels.
    center_sample_radius: in strides, or None (see `fcos_targets`).
    norm_by_stride: see `fcos_targets`.

  Returns:
    The dict of `fcos_targets` with a leading B axis on every entry:
    pos bool[B, P], ltrb f32[B, P, 4], centerness f32[B, P], pids i32[B, P],
    gt_index i32[B, P], boxes f32[B, P, 4].
  """
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  if gt_boxes.ndim != 3:
    raise ValueError(
        f"gt_boxes: expected f32[B, N, 4], got shape {gt_boxes.shape}.")
  single = functools.partial(
      fcos_targets,
      regress_ranges=jnp.asarray(regress_ranges, jnp.float32),
      center_sample_radius=center_sample_radius,
      norm_by_stride=norm_by_stride)
  return jax.vmap(single, in_axes=(None, None, None, 0, 0, 0))(
      points, point_strides, point_levels, gt_boxes, gt_pids, gt_valid)
