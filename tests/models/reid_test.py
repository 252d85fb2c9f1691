"""Tests of the IDE and GLAD crop re-ID modules (ps_jax/models/reid/).

MLFN has its own file (mlfn_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import backbone
from ps_jax.models import googlenet
from ps_jax.models.reid import glad
from ps_jax.models.reid import ide


def _num_params(module, *args, **kwargs):
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      shapes["params"]))


# ------------------------------------------------------------------ IDE


def test_ide_is_resnet50_pool5_plus_a_classifier():
  images = jnp.zeros((2, 256, 128, 3))
  # torchvision's resnet50 has 25,557,032 parameters with its 1000-way fc
  # (2048 * 1000 + 1000); IDE swaps the fc for a 751-way classifier.
  resnet50_no_fc = 25_557_032 - (2048 * 1000 + 1000)
  assert _num_params(ide.IDE(num_classes=0), images) == resnet50_no_fc
  assert _num_params(ide.IDE(num_classes=751), images) == (
      resnet50_no_fc + 2048 * 751 + 751)
  out = jax.eval_shape(
      lambda: ide.IDE(num_classes=751).init_with_output(
          jax.random.key(0), images)[0])
  assert out["descriptor"].shape == (2, 2048)
  assert [l.shape for l in out["logits"]] == [(2, 751)]


def test_ide_bottleneck_and_dropout_options():
  model = ide.IDE(num_classes=5, width_multiplier=0.0625, norm="group",
                  bottleneck_dim=16, dropout=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 64, 32, 3))
  variables = model.init(jax.random.key(0), x)
  eval_out = model.apply(variables, x)
  assert eval_out["descriptor"].shape == (4, backbone.out_channels(
      50, 0.0625)[5])  # pool5 stays the descriptor
  a = model.apply(variables, x, train=True,
                  rngs={"dropout": jax.random.key(2)})["logits"][0]
  b = model.apply(variables, x, train=True,
                  rngs={"dropout": jax.random.key(3)})["logits"][0]
  assert not np.allclose(a, b)  # dropout is active in training only
  np.testing.assert_array_equal(model.apply(variables, x)["logits"][0],
                                model.apply(variables, x)["logits"][0])
  with_bn = ide.IDE(num_classes=5, width_multiplier=0.0625, norm="group",
                    bottleneck_dim=16, descriptor="bottleneck")
  v2 = with_bn.init(jax.random.key(0), x)
  assert with_bn.apply(v2, x)["descriptor"].shape == (4, 16)


@pytest.mark.parametrize("kwargs, field", [
    (dict(dropout=1.0), "dropout"),
    (dict(descriptor="bottleneck"), "bottleneck"),
    (dict(descriptor="fc7"), "descriptor"),
    (dict(num_classes=-1), "num_classes"),
])
def test_ide_options_are_checked(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ide.IDE(**kwargs).check()


# ----------------------------------------------------------------- GLAD


def test_part_spans_from_keypoints_by_hand():
  # Head top at 0.05, neck at 0.18, hips at 0.50 and 0.54 (line 0.52).
  kp = np.array([[[0.5, 0.05], [0.5, 0.18], [0.6, 0.50], [0.4, 0.54]]],
                np.float32)
  spans, used = glad.part_spans(kp, np.array([True]), overlap=0.05)
  np.testing.assert_allclose(
      spans[0], [[0.0, 0.23], [0.13, 0.57], [0.47, 1.0]], atol=1e-6)
  assert bool(used[0])


def test_part_spans_fall_back_to_fixed_ratios():
  good = [[0.5, 0.05], [0.5, 0.18], [0.6, 0.50], [0.4, 0.54]]
  upside_down = [[0.5, 0.6], [0.5, 0.3], [0.6, 0.2], [0.4, 0.2]]
  outside = [[0.5, -0.5], [0.5, 0.18], [0.6, 0.50], [0.4, 0.54]]
  kp = np.array([good, upside_down, outside, good], np.float32)
  has = np.array([True, True, True, False])
  spans, used = glad.part_spans(kp, has)
  assert used.tolist() == [True, False, False, False]
  for i in (1, 2, 3):
    np.testing.assert_allclose(spans[i], glad.FIXED_PARTS)


def test_part_boxes_are_full_width_pixel_rows():
  spans = jnp.asarray([[[0.0, 0.2], [0.15, 0.55], [0.5, 1.0]]])
  np.testing.assert_allclose(
      glad.part_boxes(spans, (128, 64))[0],
      [[0, 0, 64, 25.6], [0, 19.2, 64, 70.4], [0, 64, 64, 128]], rtol=1e-6)


def test_cut_parts_is_a_bilinear_crop_and_resize():
  # A linear ramp stays a ramp under bilinear sampling: the part rows read
  # the ramp at the centres of their output pixels.
  h, w = 40, 8
  rows = np.arange(h, dtype=np.float32)[:, None, None]
  image = np.broadcast_to(rows, (h, w, 1))[None].astype(np.float32)
  boxes = np.array([[[0, 10, 8, 30], [0, 2, 8, 10], [0, 25, 8, 38]]],
                   np.float32)
  parts = np.asarray(glad.cut_parts(jnp.asarray(image), boxes, (10, 4)))
  assert parts.shape == (1, 3, 10, 4, 1)
  for k, (y0, y1) in enumerate([(10, 30), (2, 10), (25, 38)]):
    centres = y0 + (np.arange(10) + 0.5) * (y1 - y0) / 10
    # Pixel centres are at integer + 0.5: the value v sits at y = v + 0.5.
    want = centres - 0.5
    np.testing.assert_allclose(parts[0, k, :, 0, 0], want, atol=1e-4)


def test_glad_four_streams_share_one_trunk():
  model = glad.GLAD(num_classes=7, width_multiplier=0.0625, norm="group",
                    part_hw=(32, 32))
  x = jax.random.normal(jax.random.key(0), (2, 64, 32, 3))
  kp = jnp.tile(jnp.asarray([[0.5, 0.05], [0.5, 0.2], [0.6, 0.5],
                             [0.4, 0.5]]), (2, 1, 1))
  # Jitted throughout: op by op, GLAD's four streams took minutes.
  variables = jax.jit(model.init)(jax.random.key(1), x, kp,
                                  jnp.array([True, False]))
  params = variables["params"]
  assert set(params) == {"trunk"} | {f"classifier_{s}"
                                     for s in glad.STREAMS}
  trunk_only = _num_params(googlenet.GoogLeNet(width_multiplier=0.0625,
                                               norm="group"), x)
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(
      params["trunk"])) == trunk_only
  out = jax.jit(model.apply)(variables, x, kp, jnp.array([True, False]))
  c = googlenet.out_channels(0.0625)
  assert out["descriptor"].shape == (2, 4 * c) == (2, model.descriptor_dim)
  assert len(out["logits"]) == 4
  assert out["parts_from_keypoints"].tolist() == [True, False]
  # The global stream's slice is the trunk on the whole crop.
  whole = jax.jit(googlenet.GoogLeNet(width_multiplier=0.0625,
                                      norm="group").apply)(
                                          {"params": params["trunk"]}, x)
  np.testing.assert_allclose(out["descriptor"][:, :c],
                             jnp.mean(whole, axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)


def test_glad_fixed_keypoints_ignore_the_dataset():
  model = glad.GLAD(width_multiplier=0.0625, norm="group", keypoints="fixed")
  x = jax.random.normal(jax.random.key(0), (1, 64, 32, 3))
  kp = jnp.asarray([[[0.5, 0.3], [0.5, 0.4], [0.6, 0.7], [0.4, 0.7]]])
  variables = jax.jit(model.init)(jax.random.key(1), x)
  out = jax.jit(model.apply)(variables, x, kp, jnp.array([True]))
  assert not bool(out["parts_from_keypoints"][0])
  np.testing.assert_allclose(out["part_boxes"][0],
                             glad.part_boxes(jnp.asarray(
                                 [glad.FIXED_PARTS]), (64, 32))[0])


def test_glad_resnet_trunk_option():
  model = glad.GLAD(trunk="resnet", width_multiplier=0.0625, norm="group")
  x = jnp.zeros((1, 64, 32, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                      x)[0])
  assert out["descriptor"].shape == (1, 4 * backbone.out_channels(
      50, 0.0625)[5])


@pytest.mark.parametrize("kwargs, field", [
    (dict(trunk="vgg"), "trunk"),
    (dict(keypoints="pose"), "keypoints"),
    (dict(part_hw=(32,)), "part_hw"),
    (dict(part_overlap=0.6), "part_overlap"),
])
def test_glad_options_are_checked(kwargs, field):
  with pytest.raises(ValueError, match=field):
    glad.GLAD(**kwargs).check()
