"""Tests for ps_jax.ops.anchors: hand values and a per-anchor loop reference
written from torchvision's AnchorGenerator (w = s / sqrt(r), h = s * sqrt(r),
corners +-w/2, +-h/2 rounded, ratio-major; shifted by (j, i) * stride)."""
import math

import numpy as np
import pytest

from ps_jax.ops import anchors


def test_cell_anchors_hand_values():
  got = np.asarray(anchors.cell_anchors((32.0,), (0.5, 1.0, 2.0)))
  # r = 0.5: w = 32 / sqrt(.5) = 45.25, h = 22.63 -> corners +-22.6, +-11.3.
  np.testing.assert_array_equal(got, [[-23, -11, 23, 11],
                                      [-16, -16, 16, 16],
                                      [-11, -23, 11, 23]])


def _ref_grid(sizes, ratios, h, w, stride):
  out = []
  for i in range(h):
    for j in range(w):
      for r in ratios:
        for s in sizes:
          aw, ah = s / math.sqrt(r), s * math.sqrt(r)
          cell = [round(-aw / 2), round(-ah / 2), round(aw / 2),
                  round(ah / 2)]
          out.append([cell[0] + j * stride, cell[1] + i * stride,
                      cell[2] + j * stride, cell[3] + i * stride])
  return np.asarray(out, np.float32)


@pytest.mark.parametrize("sizes,ratios,hw,stride", [
    (anchors.SEQNET_SIZES, anchors.RATIOS, (3, 4), 16),
    (anchors.OIM_SIZES, anchors.RATIOS, (2, 5), 16),
    ((24.0, 40.0), (1.0, 2.5), (4, 3), 8),
])
def test_grid_anchors_match_loop_reference(sizes, ratios, hw, stride):
  got = np.asarray(anchors.grid_anchors(sizes, ratios, hw, stride))
  want = _ref_grid(sizes, ratios, *hw, stride)
  assert got.shape == (hw[0] * hw[1] * len(sizes) * len(ratios), 4)
  np.testing.assert_array_equal(got, want)


def test_areas_and_ratios_are_the_asked_ones():
  cell = np.asarray(anchors.cell_anchors(anchors.SEQNET_SIZES))
  w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
  sizes = np.tile(anchors.SEQNET_SIZES, 3)
  ratios = np.repeat(anchors.RATIOS, 5)
  np.testing.assert_allclose(np.sqrt(w * h), sizes, rtol=0.03)
  np.testing.assert_allclose(h / w, ratios, rtol=0.06)


@pytest.mark.parametrize("sizes,ratios", [((), (1.0,)), ((32.0,), (0.0,)),
                                          ((float("nan"),), (1.0,))])
def test_bad_sizes_or_ratios_are_named(sizes, ratios):
  with pytest.raises(ValueError, match="anchor"):
    anchors.cell_anchors(sizes, ratios)


def test_empty_map_is_refused():
  with pytest.raises(ValueError, match="grid_anchors"):
    anchors.grid_anchors((32.0,), (1.0,), (0, 4), 16)
