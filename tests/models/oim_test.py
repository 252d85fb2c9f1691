"""Tests for ps_jax.models.oim: the parameter count of the full network
against the published architecture, output shapes and the anchor order, and
which parameters are frozen."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import oim
from ps_jax.ops import anchors as anchors_lib


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_full_size_parameter_count():
  """ResNet-50 without its classifier (25,557,032 - 2048 * 1000 - 1000 =
  23,508,032 as torchvision counts it, BN weight and bias included), an RPN
  with a 1024-wide 3x3 conv and 15 anchors, and three FC heads on the
  2048-d res5 vector: 2 scores, 8 deltas, 256 identity dims."""
  resnet50 = 25_557_032 - (2048 * 1000 + 1000)
  rpn = (1024 * 1024 * 9 + 1024) + (1024 * 15 + 15) + (1024 * 60 + 60)
  heads = (2048 * 2 + 2) + (2048 * 8 + 8) + (2048 * 256 + 256)
  model = oim.OIMNet()
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))
  assert _count(shapes["params"]) == resnet50 + rpn + heads
  # Caffe's RPN is 512 wide and has 9 anchors (sizes 128, 256, 512).
  caffe = oim.OIMNet(rpn_channels=512, anchor_sizes=anchors_lib.OIM_SIZES)
  shapes = jax.eval_shape(caffe.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))
  rpn_caffe = (1024 * 512 * 9 + 512) + (512 * 9 + 9) + (512 * 36 + 36)
  assert _count(shapes["params"]) == resnet50 + rpn_caffe + heads


@pytest.fixture(scope="module")
def tiny():
  model = oim.OIMNet(depth=18, width_multiplier=0.125, backbone_norm="group",
                     frozen_stages=-1, anchor_sizes=(16.0, 32.0),
                     rpn_channels=8, roi_size=4, reid_dim=8)
  images = jax.random.normal(jax.random.key(1), (2, 64, 96, 3))
  variables = model.init(jax.random.key(0), images)
  return model, variables, images


def test_trunk_shapes_and_anchor_order(tiny):
  model, variables, images = tiny
  out = model.apply(variables, images, method=oim.OIMNet.trunk)
  assert out["c4"].shape == (2, 4, 6, 32)
  a = 2 * 3
  assert out["rpn_logits"].shape == (2, 4 * 6 * a)
  assert out["rpn_deltas"].shape == (2, 4 * 6 * a, 4)
  np.testing.assert_array_equal(
      out["anchors"], anchors_lib.grid_anchors((16.0, 32.0), (0.5, 1.0, 2.0),
                                               (4, 6), 16))
  # Logit p of the flat axis is anchor p % A at cell p // A (row-major):
  # the same as reading the 1x1 conv's output map directly.
  params = variables["params"]
  c4 = out["c4"]
  x = jax.nn.relu(jax.lax.conv_general_dilated(
      c4, params["rpn_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
      + params["rpn_conv"]["bias"])
  direct = jnp.einsum("bhwc,ca->bhwa", x,
                      params["rpn_cls"]["kernel"][0, 0]) + params["rpn_cls"][
                          "bias"]
  np.testing.assert_allclose(out["rpn_logits"].reshape(2, 4, 6, a), direct,
                             atol=1e-5)


def test_roi_head_shapes_and_boxes_matter(tiny):
  model, variables, images = tiny
  out = model.apply(variables, images, method=oim.OIMNet.trunk)
  rois = jnp.array([[[0, 0, 32, 64], [40, 8, 90, 60], [0, 0, 32, 64]]] * 2,
                   jnp.float32)
  head = model.apply(variables, out["c4"], rois, method=oim.OIMNet.roi_head)
  assert head["cls_logits"].shape == (2, 3, 2)
  assert head["box_deltas"].shape == (2, 3, 2, 4)
  assert head["embedding"].shape == (2, 3, 8)
  emb = np.asarray(head["embedding"])
  np.testing.assert_allclose(emb[:, 0], emb[:, 2], atol=1e-6)
  assert np.abs(emb[:, 0] - emb[:, 1]).max() > 1e-4
  # Each image's RoIs read that image's features.
  assert np.abs(emb[0] - emb[1]).max() > 1e-4


def test_frozen_parameters():
  model = oim.OIMNet(frozen_stages=1)
  assert model.is_frozen(("backbone", "conv1", "kernel"))
  assert model.is_frozen(("backbone", "layer1_0", "conv1", "kernel"))
  assert not model.is_frozen(("backbone", "layer2_0", "conv1", "kernel"))
  # Frozen batch norm everywhere, also in the res5 head.
  assert model.is_frozen(("params", "res5", "layer4_0", "bn1", "scale"))
  assert not model.is_frozen(("res5", "layer4_0", "conv1", "kernel"))
  assert not model.is_frozen(("rpn_conv", "kernel"))
  group = oim.OIMNet(frozen_stages=-1, backbone_norm="group")
  assert not group.is_frozen(("res5", "layer4_0", "bn1", "gn", "scale"))
  assert not group.is_frozen(("backbone", "conv1", "kernel"))


def test_bad_head_pool_is_named():
  model = oim.OIMNet(depth=18, width_multiplier=0.125, head_pool="mean")
  with pytest.raises(ValueError, match="head_pool"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
