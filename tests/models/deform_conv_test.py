"""Tests for the DeformConv linen module."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models.deform_conv import DeformConv
from ps_jax.ops import deform_conv as dc


def _x(seed=0, shape=(2, 9, 10, 4)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


@pytest.mark.parametrize("strides,padding,dilation,groups", [
    ((1, 1), 1, (1, 1), 1),
    ((2, 2), 2, (2, 2), 2),
    ((2, 1), ((1, 0), (1, 1)), (1, 1), 4),
])
def test_fresh_layer_equals_plain_conv(strides, padding, dilation, groups):
  x = _x()
  layer = DeformConv(5, strides=strides, padding=padding, dilation=dilation,
                     offset_groups=groups)
  variables = layer.init(jax.random.key(0), x)
  params = variables["params"]
  # The bias is zero-initialised; make it non-trivial so it is compared too.
  params = dict(params, bias=jnp.arange(5, dtype=jnp.float32))
  got = layer.apply({"params": params}, x)
  pad = dc.canonical_padding(padding)
  conv = nn.Conv(5, (3, 3), strides=strides, padding=pad,
                 kernel_dilation=dilation)
  want = conv.apply(
      {"params": {"kernel": params["kernel"], "bias": params["bias"]}}, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_param_shapes_and_counts():
  x = _x(shape=(1, 8, 8, 4))
  for modulated, per_tap in ((False, 2), (True, 3)):
    layer = DeformConv(6, offset_groups=2, modulated=modulated)
    params = layer.init(jax.random.key(0), x)["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "kernel": (3, 3, 4, 6), "bias": (6,),
        "conv_offset": {"kernel": (3, 3, 4, per_tap * 2 * 9),
                        "bias": (per_tap * 2 * 9,)}}
    # Offset branch starts at exactly zero.
    for leaf in jax.tree.leaves(params["conv_offset"]):
      assert not np.any(leaf)
  params = DeformConv(6, use_bias=False).init(jax.random.key(0), x)["params"]
  assert "bias" not in params


def test_modulated_mask_starts_at_half():
  x = _x(1)
  v1 = DeformConv(3, use_bias=False)
  v2 = DeformConv(3, use_bias=False, modulated=True)
  p1 = v1.init(jax.random.key(0), x)
  p2 = v2.init(jax.random.key(0), x)
  np.testing.assert_allclose(p1["params"]["kernel"], p2["params"]["kernel"])
  np.testing.assert_allclose(v2.apply(p2, x), 0.5 * v1.apply(p1, x),
                             rtol=1e-5, atol=1e-6)


def test_offset_branch_drives_sampling():
  # With conv_offset's bias set, every output pixel gets the same offsets and
  # mask logits, so the layer must equal the op fed those constants.
  x = _x(2, (1, 7, 8, 4))
  layer = DeformConv(3, offset_groups=2, modulated=True, strides=(2, 2))
  params = layer.init(jax.random.key(0), x)["params"]
  rng = np.random.default_rng(3)
  offset_bias = rng.uniform(-1.5, 1.5, 36).astype(np.float32)
  mask_logits = rng.normal(size=18).astype(np.float32)
  params["conv_offset"]["bias"] = jnp.concatenate(
      [jnp.asarray(offset_bias), jnp.asarray(mask_logits)])
  got = layer.apply({"params": params}, x)
  ho, wo = got.shape[1:3]
  offsets = jnp.broadcast_to(jnp.asarray(offset_bias), (1, ho, wo, 36))
  mask = jnp.broadcast_to(jax.nn.sigmoid(jnp.asarray(mask_logits)),
                          (1, ho, wo, 18))
  want = dc.deform_conv2d(x, offsets, params["kernel"], mask, stride=2,
                          padding=1, offset_groups=2) + params["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The offsets moved the samples: the result differs from a plain conv.
  plain = dc.deform_conv2d(x, jnp.zeros_like(offsets), params["kernel"],
                           stride=2, padding=1, offset_groups=2)
  plain = plain + params["bias"]
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-2


def test_gradients_reach_the_offset_branch():
  x = _x(4, (1, 6, 6, 2))
  layer = DeformConv(2, modulated=True)
  params = layer.init(jax.random.key(0), x)["params"]
  grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(
      params)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  assert np.abs(grads["conv_offset"]["kernel"]).max() > 0


def test_bad_groups_raise():
  with pytest.raises(ValueError, match="offset_groups"):
    DeformConv(3, offset_groups=3).init(jax.random.key(0), _x())
