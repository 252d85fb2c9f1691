"""Tests for ps_jax.ops.points (hand values and SAME-conv shape invariants)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import points as points_lib


def test_level_points_hand_values():
  pts = points_lib.level_points(2, 3, 8)
  assert pts.dtype == jnp.float32 and pts.shape == (6, 2)
  np.testing.assert_array_equal(
      pts, [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]])
  # Odd stride: offset is stride // 2 (mmdet), not stride / 2.
  np.testing.assert_array_equal(
      points_lib.level_points(1, 2, 3), [[1, 1], [4, 1]])


def test_level_points_row_major_matches_nhwc_reshape():
  h, w, s = 3, 5, 16
  grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1)  # [h,w,2]
  flat = grid.reshape(h * w, 2)  # same order as features.reshape(h * w, C)
  np.testing.assert_array_equal(
      points_lib.level_points(h, w, s), flat * s + s // 2)


def test_make_points_concatenates_levels():
  pts, strides, levels = points_lib.make_points([(2, 3), (1, 2)], [8, 16])
  assert pts.shape == (8, 2) and strides.shape == (8,)
  assert levels.dtype == jnp.int32 and strides.dtype == jnp.float32
  np.testing.assert_array_equal(pts[:6], points_lib.level_points(2, 3, 8))
  np.testing.assert_array_equal(pts[6:], [[8, 8], [24, 8]])
  np.testing.assert_array_equal(strides, [8] * 6 + [16] * 2)
  np.testing.assert_array_equal(levels, [0] * 6 + [1] * 2)


def test_feature_sizes_hand_values():
  assert points_lib.feature_sizes((100, 64), (8, 16, 32, 64, 128)) == [
      (13, 8), (7, 4), (4, 2), (2, 1), (1, 1)]


@pytest.mark.parametrize("hw", [(64, 64), (100, 72), (97, 130)])
def test_feature_sizes_match_same_padded_stride2_chain(hw):
  # Shape-only (eval_shape): nothing is compiled.
  x = jax.ShapeDtypeStruct((1, *hw, 1), jnp.float32)
  kernel = jnp.zeros((3, 3, 1, 1), jnp.float32)
  sizes = []
  for _ in range(7):
    x = jax.eval_shape(
        lambda v: jax.lax.conv_general_dilated(
            v, kernel, (2, 2), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
    sizes.append(x.shape[1:3])
  # Strides 8..128 are the 3rd..7th stride-2 steps.
  assert points_lib.feature_sizes(hw, (8, 16, 32, 64, 128)) == sizes[2:]


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="strides"):
    points_lib.make_points([(2, 2)], [8, 16])
  with pytest.raises(ValueError, match="stride"):
    points_lib.level_points(2, 2, 0)
  with pytest.raises(ValueError, match=r"feature_hw\[0\]\[1\]"):
    points_lib.make_points([(2, 2.5)], [8])
  with pytest.raises(ValueError, match="height"):
    points_lib.feature_sizes((0, 10), (8,))
