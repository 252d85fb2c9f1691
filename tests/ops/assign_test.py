"""Tests for ps_jax.ops.assign against a per-point, per-GT numpy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import assign
from ps_jax.ops import points as points_lib

STRIDES = (8, 16, 32, 64, 128)
# FCOS ranges scaled to tiny test images so every level gets positives.
SMALL_RANGES = ((-1.0, 12.0), (12.0, 24.0), (24.0, 40.0), (40.0, 64.0),
                (64.0, assign.INF))
# One compile per shape is far cheaper on CPU than eager op-by-op dispatch;
# test_jit_and_batched_match_per_image checks jit == eager.
_fcos_targets = jax.jit(
    assign.fcos_targets,
    static_argnames=("center_sample_radius", "norm_by_stride"))


def _points(hw):
  return points_lib.make_points(points_lib.feature_sizes(hw, STRIDES), STRIDES)


def _reference(points, strides, levels, boxes, pids, valid, ranges, radius,
               norm):
  """mmdet _get_target_single as explicit loops, in float32 like the op."""
  points = np.asarray(points, np.float32)
  strides = np.asarray(strides, np.float32)
  boxes = np.asarray(boxes, np.float32)
  ranges = np.asarray(ranges, np.float32)
  num_points = len(points)
  out = dict(pos=np.zeros(num_points, bool),
             ltrb=np.zeros((num_points, 4), np.float32),
             centerness=np.zeros(num_points, np.float32),
             pids=np.full(num_points, -1, np.int32),
             gt_index=np.full(num_points, -1, np.int32),
             boxes=np.zeros((num_points, 4), np.float32))
  for p in range(num_points):
    x, y = points[p]
    lo, hi = ranges[levels[p]]
    best, best_area = -1, None
    for n in range(len(boxes)):
      if not valid[n]:
        continue
      x1, y1, x2, y2 = boxes[n]
      dists = (x - x1, y - y1, x2 - x, y2 - y)
      if radius is None:
        inside = min(dists) > 0
      else:
        r = strides[p] * np.float32(radius)
        cx, cy = (x1 + x2) / np.float32(2), (y1 + y2) / np.float32(2)
        cx1, cy1 = max(cx - r, x1), max(cy - r, y1)
        cx2, cy2 = min(cx + r, x2), min(cy + r, y2)
        inside = min(x - cx1, y - cy1, cx2 - x, cy2 - y) > 0
      if not (inside and lo <= max(dists) <= hi):
        continue
      area = (x2 - x1) * (y2 - y1)
      if best < 0 or area < best_area:  # strict: ties keep the lower index
        best, best_area = n, area
    if best < 0:
      continue
    x1, y1, x2, y2 = boxes[best]
    l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
    out["pos"][p] = True
    out["gt_index"][p] = best
    out["pids"][p] = pids[best]
    out["boxes"][p] = boxes[best]
    out["centerness"][p] = np.sqrt(min(l, r) / max(l, r) * min(t, b)
                                   / max(t, b))
    out["ltrb"][p] = np.array([l, t, r, b]) / (strides[p] if norm else 1.0)
  return out


def _random_gts(rng, n, hw):
  """Boxes inside an hw image: some duplicates, degenerate and invalid."""
  h, w = hw
  xy = rng.uniform(-8, [w, h], (n, 2))
  wh = rng.uniform(2, [w, h], (n, 2))
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  if n >= 3:
    boxes[1] = boxes[0]                          # exact tie on area
    boxes[2, 2:] = boxes[2, :2] + [0.0, 10.0]    # zero width
  pids = rng.integers(-1, 5, n).astype(np.int32)
  valid = rng.uniform(size=n) < 0.8
  return boxes, pids, valid


def _check(got, want):
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-6,
                               atol=1e-6, err_msg=key)
  assert got["pos"].dtype == jnp.bool_
  assert got["pids"].dtype == jnp.int32 and got["gt_index"].dtype == jnp.int32


@pytest.mark.parametrize("hw,n,seed", [((64, 64), 0, 0), ((64, 96), 1, 1),
                                       ((80, 64), 6, 2), ((64, 64), 12, 3)])
@pytest.mark.parametrize("radius", [1.5, None])
@pytest.mark.parametrize("ranges", ["small", "alignps"])
def test_matches_reference(hw, n, seed, radius, ranges):
  rng = np.random.default_rng(seed)
  pts, strides, levels = _points(hw)
  boxes, pids, valid = _random_gts(rng, n, hw)
  rr = SMALL_RANGES if ranges == "small" else assign.ALIGNPS_REGRESS_RANGES
  got = _fcos_targets(pts, strides, levels, boxes, pids, valid, rr,
                            center_sample_radius=radius)
  want = _reference(pts, strides, levels, boxes, pids, valid, rr, radius,
                    norm=True)
  _check(got, want)
  if n >= 3 and ranges == "small":
    assert want["pos"].any()  # the random case exercises assignment


def test_alignps_ranges_only_level0_positive():
  pts, strides, levels = _points((96, 96))
  boxes = np.array([[4, 4, 92, 92], [30, 10, 50, 80]], np.float32)
  out = _fcos_targets(pts, strides, levels, boxes, np.array([3, -1]),
                            np.array([True, True]),
                            assign.ALIGNPS_REGRESS_RANGES)
  pos = np.asarray(out["pos"])
  assert pos.any()
  assert (np.asarray(levels)[pos] == 0).all()
  # Centre sampling radius 1.5 * 8 = 12 px around each box centre.
  centers = np.asarray(out["boxes"])[pos]
  centers = (centers[:, :2] + centers[:, 2:]) / 2
  assert (np.abs(np.asarray(pts)[pos] - centers) < 12).all()
  # The unlabeled person's positives carry pid -1 but are still positives.
  assert ((np.asarray(out["pids"]) == -1) & pos).any()


def test_hand_values_single_box():
  pts, strides, levels = points_lib.make_points([(4, 4)], [8])
  boxes = np.array([[0, 0, 32, 32]], np.float32)
  args = (pts, strides, levels, boxes, np.array([7]), np.array([True]),
          ((-1.0, assign.INF),))
  out = _fcos_targets(*args)
  # Centre (16, 16), region (4, 28) strictly: points at 12 and 20.
  expected_pos = np.zeros(16, bool)
  expected_pos[[5, 6, 9, 10]] = True
  np.testing.assert_array_equal(out["pos"], expected_pos)
  np.testing.assert_allclose(out["ltrb"][5], [1.5, 1.5, 2.5, 2.5])
  np.testing.assert_allclose(out["centerness"][5], 0.6, rtol=1e-6)
  np.testing.assert_array_equal(out["pids"][5], 7)
  # Without centre sampling every point strictly inside is positive.
  out = _fcos_targets(*args, center_sample_radius=None,
                            norm_by_stride=False)
  assert np.asarray(out["pos"]).all()
  np.testing.assert_allclose(out["ltrb"][0], [4, 4, 28, 28])
  np.testing.assert_allclose(out["centerness"][0], 4 / 28, rtol=1e-6)


def test_range_bounds_inclusive_and_edges_exclusive():
  pts = np.array([[8, 8], [8, 8], [0, 8]], np.float32)
  strides = np.array([8, 8, 8], np.float32)
  levels = np.array([0, 1, 0], np.int32)
  # Point (8, 8): max distance to the box is exactly 8 == level-0 upper and
  # level-1 lower bound, so both levels accept it. (0, 8) lies on the edge.
  boxes = np.array([[0, 0, 16, 16]], np.float32)
  out = _fcos_targets(pts, strides, levels, boxes, np.array([0]),
                            np.array([True]), ((-1.0, 8.0), (8.0, 16.0)),
                            center_sample_radius=None)
  np.testing.assert_array_equal(out["pos"], [True, True, False])


def test_smallest_area_wins_and_ties_go_to_lowest_index():
  pts, strides, levels = points_lib.make_points([(4, 4)], [8])
  boxes = np.array([[0, 0, 32, 32],     # big
                    [8, 8, 24, 24],     # small, tied with 2
                    [8, 8, 24, 24],
                    [0, 0, 30, 30]], np.float32)
  out = _fcos_targets(pts, strides, levels, boxes,
                            np.array([10, 11, 12, 13]), np.ones(4, bool),
                            ((-1.0, assign.INF),), center_sample_radius=None)
  gi = np.asarray(out["gt_index"]).reshape(4, 4)
  np.testing.assert_array_equal(gi[1:3, 1:3], 1)   # inside the small boxes
  np.testing.assert_array_equal(gi[0], 3)          # 30x30 beats 32x32
  np.testing.assert_array_equal(np.asarray(out["pids"]).reshape(4, 4)[0], 13)


def test_padded_gts_are_ignored():
  rng = np.random.default_rng(7)
  hw = (64, 64)
  pts, strides, levels = _points(hw)
  boxes, pids, _ = _random_gts(rng, 8, hw)
  valid = np.array([True, False, True, False, True, True, False, True])
  got = _fcos_targets(pts, strides, levels, boxes, pids, valid,
                            SMALL_RANGES)
  # Same result as with the padded rows removed (indices remapped).
  keep = np.flatnonzero(valid)
  sub = _fcos_targets(pts, strides, levels, boxes[keep], pids[keep],
                            np.ones(len(keep), bool), SMALL_RANGES)
  np.testing.assert_array_equal(got["pos"], sub["pos"])
  sub_index = np.asarray(sub["gt_index"])
  remapped = np.where(sub_index >= 0, keep[sub_index], -1)
  np.testing.assert_array_equal(got["gt_index"], remapped)
  np.testing.assert_array_equal(got["pids"], sub["pids"])
  assert not np.isin(np.asarray(got["gt_index"]), np.flatnonzero(~valid)).any()
  # All-padding behaves like no GT at all.
  none = _fcos_targets(pts, strides, levels, boxes, pids,
                             np.zeros(8, bool), SMALL_RANGES)
  assert not np.asarray(none["pos"]).any()
  assert (np.asarray(none["pids"]) == -1).all()


def test_jit_and_batched_match_per_image():
  rng = np.random.default_rng(11)
  hw = (64, 64)
  pts, strides, levels = _points(hw)
  per_image = [_random_gts(rng, 5, hw) for _ in range(3)]
  boxes, pids, valid = (np.stack(x) for x in zip(*per_image))
  batched = jax.jit(
      assign.batched_fcos_targets,
      static_argnames=("center_sample_radius", "norm_by_stride"))(
          pts, strides, levels, boxes, pids, valid, SMALL_RANGES)
  for i in range(3):
    eager = assign.fcos_targets(pts, strides, levels, boxes[i], pids[i],
                                valid[i], SMALL_RANGES)
    for key in eager:
      assert batched[key].shape == (3,) + eager[key].shape
      np.testing.assert_allclose(batched[key][i], eager[key], atol=1e-6,
                                 err_msg=key)


def test_bad_shapes_raise():
  pts, strides, levels = points_lib.make_points([(2, 2)], [8])
  with pytest.raises(ValueError, match="gt_valid"):
    assign.fcos_targets(pts, strides, levels, np.zeros((3, 4)),
                        np.zeros(3, np.int32), np.ones(2, bool),
                        ((-1.0, 1.0),))
  with pytest.raises(ValueError, match="regress_ranges"):
    assign.fcos_targets(pts, strides, levels, np.zeros((3, 4)),
                        np.zeros(3, np.int32), np.ones(3, bool), (-1.0, 1.0))
