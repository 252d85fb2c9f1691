"""Tests for ps_jax.models.backbone (ResNet, FrozenBatchNorm, freezing)."""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import backbone

KEY = jax.random.key(0)


def _random_variables(module, *args, seed=0, **kwargs):
  """Variables of `module` filled with numpy randoms (no init compile).

  Kernels ~ N(0, 1/fan_in), norm scales in [0.5, 1.5], biases and means
  N(0, 0.1), variances in [0.5, 2].
  """
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), KEY,
                          *args)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "var":
      v = rng.uniform(0.5, 2.0, s.shape)
    elif name == "scale":
      v = rng.uniform(0.5, 1.5, s.shape)
    elif name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      v = rng.normal(0.0, 1.0 / math.sqrt(fan_in), s.shape)
    else:
      v = rng.normal(0.0, 0.1, s.shape)
    return jnp.asarray(v, s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_conv(x, k, stride=1, pad=None):
  """Reference NHWC x HWIO convolution with symmetric zero padding."""
  kh, kw = k.shape[:2]
  pad = kh // 2 if pad is None else pad
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride,
                j:j + stride * (wo - 1) + 1:stride]
      out += patch @ k[i, j]
  return out


def _np_frozen_bn(x, p, s, eps=1e-5):
  return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# torchvision's published parameter counts (weights meta "num_params").
@pytest.mark.parametrize("depth,count", [
    (18, 11_689_512), (34, 21_797_672), (50, 25_557_032),
    (101, 44_549_160)])
def test_classifier_param_count_matches_torchvision(depth, count):
  model = backbone.ResNet(depth=depth, with_classifier=True)
  shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, 64, 64, 3)))
  n_params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n_params == count
  # Running statistics are buffers (not params): one mean and one var per BN
  # channel, i.e. as many as BN scales.
  bn_scales = sum(
      x.size for p, x in jax.tree_util.tree_leaves_with_path(shapes["params"])
      if p[-1].key == "scale")
  stats = jax.tree.leaves(shapes[backbone.FROZEN_BN])
  assert sum(x.size for x in stats) == 2 * bn_scales
  assert set(shapes) == {"params", backbone.FROZEN_BN}


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("style", ["pytorch", "caffe"])
@pytest.mark.parametrize("hw", [(64, 96), (70, 100)])
def test_feature_shapes(depth, style, hw):
  model = backbone.ResNet(depth=depth, width_multiplier=1 / 8, style=style)
  x = jnp.zeros((2, *hw, 3))
  variables = jax.eval_shape(model.init, KEY, x)
  feats = jax.eval_shape(model.apply, variables, x)
  chans = backbone.out_channels(depth, 1 / 8)
  assert len(feats) == 4
  for level, f in zip((2, 3, 4, 5), feats):
    s = 2**level
    assert f.shape == (2, -(-hw[0] // s), -(-hw[1] // s), chans[level])
    assert f.dtype == jnp.float32


def test_return_levels_and_compute_dtype():
  model = backbone.ResNet(depth=18, width_multiplier=1 / 8,
                          return_levels=(5, 3), dtype=jnp.bfloat16)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(model.init, KEY, x)
  c5, c3 = jax.eval_shape(model.apply, variables, x)
  assert c5.shape == (1, 2, 2, 64) and c3.shape == (1, 8, 8, 16)
  assert c5.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def _np_bottleneck(x, p, s, stride, style):
  s1, s2 = (1, stride) if style == "pytorch" else (stride, 1)
  relu = lambda a: np.maximum(a, 0)
  y = relu(_np_frozen_bn(_np_conv(x, p["conv1"]["kernel"], s1), p["bn1"],
                         s["bn1"]))
  y = relu(_np_frozen_bn(_np_conv(y, p["conv2"]["kernel"], s2), p["bn2"],
                         s["bn2"]))
  y = _np_frozen_bn(_np_conv(y, p["conv3"]["kernel"]), p["bn3"], s["bn3"])
  idn = _np_frozen_bn(_np_conv(x, p["downsample_conv"]["kernel"], stride),
                      p["downsample_bn"], s["downsample_bn"])
  return relu(y + idn)


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_bottleneck_matches_numpy(style):
  block = backbone.Bottleneck(features=4, strides=2, style=style)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 7, 8)),
                  jnp.float32)
  v = _random_variables(block, x, seed=2)
  got = np.asarray(jax.jit(block.apply)(v, x))
  want = _np_bottleneck(np.asarray(x, np.float64), _np(v["params"]),
                        _np(v[backbone.FROZEN_BN]), 2, style)
  assert got.shape == (2, 5, 4, 16)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_basic_block_matches_numpy():
  block = backbone.BasicBlock(features=6, strides=2)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 6, 4)),
                  jnp.float32)
  v = _random_variables(block, x, seed=4)
  p, s = _np(v["params"]), _np(v[backbone.FROZEN_BN])
  relu = lambda a: np.maximum(a, 0)
  xn = np.asarray(x, np.float64)
  y = relu(_np_frozen_bn(_np_conv(xn, p["conv1"]["kernel"], 2), p["bn1"],
                         s["bn1"]))
  y = _np_frozen_bn(_np_conv(y, p["conv2"]["kernel"]), p["bn2"], s["bn2"])
  idn = _np_frozen_bn(_np_conv(xn, p["downsample_conv"]["kernel"], 2),
                      p["downsample_bn"], s["downsample_bn"])
  np.testing.assert_allclose(np.asarray(jax.jit(block.apply)(v, x)),
                             relu(y + idn), rtol=1e-4, atol=1e-4)


def test_frozen_batchnorm_formula_and_zero_grads():
  bn = backbone.FrozenBatchNorm()
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 5)), jnp.float32)
  v = _random_variables(bn, x, seed=6)
  want = _np_frozen_bn(np.asarray(x, np.float64), _np(v["params"]),
                       _np(v[backbone.FROZEN_BN]))
  np.testing.assert_allclose(np.asarray(bn.apply(v, x)), want, rtol=1e-5,
                             atol=1e-5)

  def loss(params, stats, x):
    return jnp.sum(bn.apply({"params": params, backbone.FROZEN_BN: stats},
                            x) ** 2)
  gp, gs, gx = jax.grad(loss, argnums=(0, 1, 2))(
      v["params"], v[backbone.FROZEN_BN], x)
  for g in jax.tree.leaves((gp, gs)):
    assert np.all(np.asarray(g) == 0)
  assert np.all(np.isfinite(np.asarray(gx))) and np.any(np.asarray(gx) != 0)


def _grads_and_mask(model, seed):
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(1, 64, 64, 3)),
                  jnp.float32)
  v = _random_variables(model, x, seed=seed)
  rest = {k: c for k, c in v.items() if k != "params"}

  def loss(params):
    feats = model.apply({"params": params, **rest}, x)
    return sum(jnp.mean(f**2) for f in feats)
  grads = jax.jit(jax.grad(loss))(v["params"])
  mask = backbone.trainable_mask(
      v["params"], functools.partial(backbone.is_frozen_param,
                                     frozen_stages=model.frozen_stages,
                                     norm=model.norm))
  flat_g = {jax.tree_util.keystr(p): np.asarray(g)
            for p, g in jax.tree_util.tree_leaves_with_path(grads)}
  flat_m = {jax.tree_util.keystr(p): m
            for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat_g.keys() == flat_m.keys()
  return flat_g, flat_m


def test_frozen_stages_and_frozen_bn_get_zero_grads_and_are_masked():
  model = backbone.ResNet(depth=18, width_multiplier=1 / 8, frozen_stages=1)
  grads, mask = _grads_and_mask(model, seed=7)
  bn = re.compile(r"\['(bn\d+|downsample_bn)'\]")
  for name, g in grads.items():
    frozen = (name.startswith("['conv1']") or name.startswith("['bn1']")
              or name.startswith("['layer1_") or bn.search(name) is not None)
    assert mask[name] == (not frozen), name
    if frozen:
      assert np.all(g == 0), name
    else:
      assert np.all(np.isfinite(g)) and np.any(g != 0), name
  assert any(mask.values()) and not all(mask.values())


def test_group_norm_backbone_trains_everything_but_the_frozen_stem():
  model = backbone.ResNet(depth=18, width_multiplier=1 / 8, frozen_stages=0,
                          norm="group")
  grads, mask = _grads_and_mask(model, seed=8)
  for name, g in grads.items():
    stem = name.startswith("['conv1']") or name.startswith("['bn1']")
    assert mask[name] == (not stem), name
    if stem:
      assert np.all(g == 0), name
    else:
      assert np.any(g != 0), name


@pytest.mark.parametrize("path,stages,norm,want", [
    (("conv1", "kernel"), -1, "group", False),
    (("conv1", "kernel"), 0, "group", True),
    (("bn1", "scale"), -1, "frozen", True),
    (("bn1", "gn", "scale"), -1, "group", False),
    (("layer1_2", "conv3", "kernel"), 1, "frozen", True),
    (("layer2_0", "conv1", "kernel"), 1, "frozen", False),
    (("layer2_0", "downsample_bn", "bias"), 1, "frozen", True),
    (("layer2_0", "downsample_conv", "kernel"), 1, "frozen", False),
    (("layer4_1", "conv2", "conv_offset", "bias"), 3, "frozen", False),
    (("layer4_1", "conv2", "conv_offset", "bias"), 4, "frozen", True),
])
def test_is_frozen_param(path, stages, norm, want):
  assert backbone.is_frozen_param(path, frozen_stages=stages,
                                  norm=norm) is want


def test_dcn_stage_at_init_is_a_half_scaled_plain_conv():
  # A fresh modulated DCN samples the regular grid with mask sigmoid(0)=0.5,
  # so res3 with DCN equals res3 with plain convs whose 3x3 kernels are
  # halved. This pins the DCN to the stride-2 3x3 conv of res3 (pytorch
  # style) and nowhere else.
  x = jnp.asarray(np.random.default_rng(9).normal(size=(1, 64, 64, 3)),
                  jnp.float32)
  dcn = backbone.ResNet(depth=50, width_multiplier=1 / 16,
                        stage_with_dcn=(False, True, False, False))
  plain = backbone.ResNet(depth=50, width_multiplier=1 / 16)
  v = _random_variables(plain, x, seed=10)
  shapes = jax.eval_shape(dcn.init, KEY, x)["params"]
  p_dcn = jax.tree.map(lambda a: a, v["params"])
  for name, block in shapes.items():
    if name.startswith("layer2_"):
      off = block["conv2"]["conv_offset"]
      assert off["kernel"].shape[-1] == 27  # 2*9 offsets + 9 mask logits
      p_dcn[name]["conv2"] = {
          "kernel": v["params"][name]["conv2"]["kernel"],
          "conv_offset": jax.tree.map(jnp.zeros_like, off)}
      v["params"][name]["conv2"]["kernel"] = (
          0.5 * v["params"][name]["conv2"]["kernel"])
    else:
      assert "conv_offset" not in block.get("conv2", {})
  got = jax.jit(dcn.apply)({**v, "params": p_dcn}, x)
  want = jax.jit(plain.apply)(v, x)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    (dict(depth=42), "depth"),
    (dict(style="tf"), "style"),
    (dict(stage_with_dcn=(True, False)), "stage_with_dcn"),
    (dict(norm="batch"), "norm"),
    (dict(frozen_stages=7), "frozen_stages"),
    (dict(return_levels=(1, 2)), "return_levels"),
    (dict(zero_init_residual=True), "zero_init_residual"),
    (dict(depth=18, stage_with_dcn=(False, True, False, False)),
     "stage_with_dcn"),
])
def test_bad_config_names_the_field(kwargs, field):
  model = backbone.ResNet(width_multiplier=1 / 16, **kwargs)
  with pytest.raises(ValueError, match=field):
    jax.eval_shape(model.init, KEY, jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("depth", [18, 50])
def test_a_three_stage_trunk_and_res5_stage_compose_to_the_whole_resnet(
    depth):
  """ResNet(num_stages=3) -> ResNetStage(stage=4) with the whole network's
  weights, split by name, gives the whole network's C4 and C5 (the OIM
  split)."""
  x = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
  whole = backbone.ResNet(depth=depth, width_multiplier=1 / 16,
                          return_levels=(4, 5))
  variables = _random_variables(whole, x)
  c4, c5 = whole.apply(variables, x)
  trunk = backbone.ResNet(depth=depth, width_multiplier=1 / 16,
                          return_levels=(4,), num_stages=3)
  head = backbone.ResNetStage(stage=4, depth=depth, width_multiplier=1 / 16)
  split = lambda keep: {c: {k: v for k, v in t.items() if keep(k)}
                        for c, t in variables.items()}
  (got4,) = trunk.apply(split(lambda k: not k.startswith("layer4_")), x)
  got5 = head.apply(split(lambda k: k.startswith("layer4_")), got4)
  np.testing.assert_allclose(got4, c4, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got5, c5, rtol=1e-5, atol=1e-5)


def test_num_stages_must_cover_the_returned_levels():
  with pytest.raises(ValueError, match="num_stages"):
    backbone.ResNet(depth=18, num_stages=3, return_levels=(5,)).init(
        KEY, jnp.zeros((1, 32, 32, 3)))
