"""Tests for ps_jax.models.reid.mlfn (MLFN and its torchreid importer).

The architecture facts are written out here independently of the module
(torchreid's `torchreid/models/mlfn.py`): the parameter count is derived
layer by layer, and imported weights are checked against a slow float64
numpy forward pass on torchreid-named OIHW weights (grouped convs by explicit
loops, BN in inference form, torchreid's repeat/view/permute gate expansion,
ReLU before the residual add, the fusion). Widths are reduced (1/16, groups
4) and inputs are 64x32 to keep CPU time small. Variables come from
`jax.eval_shape(model.init, ...)` filled by the importer or by `np_init`:
compiling `model.init` (hundreds of threefry calls) takes about a minute on
a CPU, compiling `model.apply` a few seconds, so all applies of the small
model share one jitted function and one set of shapes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models.backbone import FROZEN_BN
from ps_jax.models.reid import mlfn

KEY = jax.random.key(0)
BN_EPS = 1e-5
BLOCKS = (3, 4, 6, 3)

# torchreid at width 1.0: stem, block outputs per stage, FSM (c1, c2) per
# stage, embedding, groups.
FULL = dict(stem=64, outs=(256, 512, 1024, 2048),
            fsm=((128, 64), (256, 128), (512, 128), (512, 128)), embed=1024,
            groups=32)
# The same at width 1/16 with 4 groups (mid widths 8, 16, 32, 64).
SMALL = dict(stem=4, outs=(16, 32, 64, 128),
             fsm=((8, 4), (16, 8), (32, 8), (32, 8)), embed=64, groups=4)
SMALL_KW = dict(width_multiplier=1 / 16, groups=4)
SMALL_MODEL = mlfn.MLFN(num_classes=10, **SMALL_KW)
SMALL_APPLY = jax.jit(SMALL_MODEL.apply)  # compiled once for [2, 64, 32, 3].


def block_specs(arch):
  """[(in, out, stride, (c1, c2))] for the 16 blocks."""
  specs, cin = [], arch["stem"]
  for stage, (n, out, fsm) in enumerate(zip(BLOCKS, arch["outs"],
                                            arch["fsm"])):
    for b in range(n):
      specs.append((cin, out, 2 if (b == 0 and stage > 0) else 1, fsm))
      cin = out
  return specs


# --------------------------------------------------------------------------
# Parameter count, derived layer by layer.
# --------------------------------------------------------------------------


def count_params(arch):
  """torch-style count (weights, biases, BN weight + bias), no classifier.

  Returns {part: count}.
  """
  g = arch["groups"]
  bn = lambda c: 2 * c  # noqa: E731 (weight + bias; running stats are buffers)
  parts = {"stem": 3 * arch["stem"] * 7 * 7 + arch["stem"]  # conv with bias
                   + bn(arch["stem"]),
           "factor_modules": 0, "shortcuts": 0, "fsm": 0, "fusion": 0}
  for cin, out, stride, (c1, c2) in block_specs(arch):
    mid = out // 2
    parts["factor_modules"] += (cin * mid + bn(mid)  # fm_conv1, no bias
                                + mid * (mid // g) * 9 + bn(mid)  # grouped
                                + mid * out + bn(out))  # fm_conv3
    if cin != out or stride > 1:
      parts["shortcuts"] += cin * out + bn(out)
    parts["fsm"] += (cin * c1 + c1 + bn(c1) + c1 * c2 + c2 + bn(c2)
                     + c2 * g + g + bn(g))  # 1x1 convs with bias
  e = arch["embed"]
  parts["fusion"] = (arch["outs"][-1] * e + bn(e)  # fc_x, no bias
                     + 16 * g * e + bn(e))  # fc_s, no bias
  return parts


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_count_matches_torchreid():
  parts = count_params(FULL)
  assert parts == {"stem": 9_600, "factor_modules": 20_193_792,
                   "shortcuts": 2_776_576, "fsm": 6_867_520,
                   "fusion": 2_625_536}
  total = sum(parts.values())
  assert total == 32_473_024 == mlfn.TORCHREID_NUM_PARAMS
  assert round(total / 1e6, 1) == 32.5  # torchreid's published size.
  x = jnp.zeros((1, 256, 128, 3))
  variables = jax.eval_shape(mlfn.MLFN().init, KEY, x)
  assert n_params(variables["params"]) == total
  assert set(variables) == {"params", FROZEN_BN}
  with_head = jax.eval_shape(mlfn.MLFN(num_classes=751).init, KEY, x)
  assert n_params(with_head["params"]) == total + 1024 * 751 + 751


def test_parameter_count_small_width():
  variables = jax.eval_shape(mlfn.MLFN(**SMALL_KW).init, KEY,
                             jnp.zeros((1, 64, 32, 3)))
  assert n_params(variables["params"]) == sum(count_params(SMALL).values())
  assert mlfn.stage_channels(1 / 16, 4) == SMALL["outs"]
  assert mlfn.descriptor_dim(1 / 16) == SMALL["embed"]


def test_shapes_at_256x128():
  model = mlfn.MLFN(num_classes=751)
  x = jnp.zeros((2, 256, 128, 3))
  variables = jax.eval_shape(model.init, KEY, x)
  out = jax.eval_shape(model.apply, variables, x)
  assert mlfn.descriptor_dim(1.0) == 1024
  assert out["descriptor"].shape == (2, 1024)
  assert out["factor_signature"].shape == (2, 512)
  assert out["logits"].shape == (2, 751)
  assert all(v.dtype == jnp.float32 for v in out.values())
  no_head = jax.eval_shape(mlfn.MLFN().apply,
                           jax.eval_shape(mlfn.MLFN().init, KEY, x), x)
  assert set(no_head) == {"descriptor", "factor_signature"}


# --------------------------------------------------------------------------
# Random torchreid state dicts and the numpy reference forward.
# --------------------------------------------------------------------------


def random_state_dict(arch, num_classes=10, seed=0, prefix="module."):
  """torchreid MLFN keys, random values; `prefix` as DataParallel saves."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cout, cin_per_group, k, bias=False):
    std = np.sqrt(2.0 / (cin_per_group * k * k))
    sd[name + ".weight"] = rng.normal(0, std, (cout, cin_per_group, k, k)
                                      ).astype(np.float32)
    if bias:
      sd[name + ".bias"] = rng.normal(0, 0.1, cout).astype(np.float32)

  def bn(name, c):
    sd[name + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + ".bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[name + ".running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[name + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[name + ".num_batches_tracked"] = np.array(3, np.int64)

  g = arch["groups"]
  conv("conv1", arch["stem"], 3, 7, bias=True)
  bn("bn1", arch["stem"])
  for i, (cin, out, stride, (c1, c2)) in enumerate(block_specs(arch)):
    p, mid = f"feature.{i}.", out // 2
    conv(p + "fm_conv1", mid, cin, 1)
    bn(p + "fm_bn1", mid)
    conv(p + "fm_conv2", mid, mid // g, 3)
    bn(p + "fm_bn2", mid)
    conv(p + "fm_conv3", out, mid, 1)
    bn(p + "fm_bn3", out)
    conv(p + "fsm.1", c1, cin, 1, bias=True)
    bn(p + "fsm.2", c1)
    conv(p + "fsm.4", c2, c1, 1, bias=True)
    bn(p + "fsm.5", c2)
    conv(p + "fsm.7", g, c2, 1, bias=True)
    bn(p + "fsm.8", g)
    if cin != out or stride > 1:
      conv(p + "downsample.0", out, cin, 1)
      bn(p + "downsample.1", out)
  conv("fc_x.0", arch["embed"], arch["outs"][-1], 1)
  bn("fc_x.1", arch["embed"])
  conv("fc_s.0", arch["embed"], 16 * g, 1)
  bn("fc_s.1", arch["embed"])
  sd["classifier.weight"] = rng.normal(0, 0.1, (num_classes, arch["embed"])
                                       ).astype(np.float32)
  sd["classifier.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  return {prefix + k: v for k, v in sd.items()}


def np_conv(x, w, b=None, stride=1, groups=1):
  """NHWC x, torch OIHW w ([O, I / groups, k, k]), padding k // 2."""
  k = w.shape[-1]
  p = k // 2
  bsz, h, wd, cin = x.shape
  cout = w.shape[0]
  ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ci, co = cin // groups, cout // groups
  y = np.zeros((bsz, ho, wo, cout))
  for gi in range(groups):
    xg = xp[..., gi * ci:(gi + 1) * ci]
    wg = w[gi * co:(gi + 1) * co].astype(np.float64)
    for i in range(k):
      for j in range(k):
        patch = xg[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
        y[..., gi * co:(gi + 1) * co] += patch @ wg[:, :, i, j].T
  return y if b is None else y + b


def np_bn(x, sd, name):
  return ((x - sd[name + ".running_mean"])
          / np.sqrt(sd[name + ".running_var"] + BN_EPS)
          * sd[name + ".weight"] + sd[name + ".bias"])


def np_maxpool(x):
  """3x3, stride 2, padding 1 (torch pads with -inf)."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  return np.max([xp[:, i:i + 2 * h:2, j:j + 2 * w:2]
                 for i in range(3) for j in range(3)], axis=0)


relu = lambda x: np.maximum(x, 0)  # noqa: E731
sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731


def np_mlfn(sd, x, groups, branch_relu=True):
  """torchreid MLFN forward (eval mode + classifier) in float64 numpy;
  branch_relu=False drops the ReLU on each block's branch before the add."""
  sd = {k[len("module."):] if k.startswith("module.") else k:
        np.asarray(v, np.float64) for k, v in sd.items()}
  x = np.asarray(x, np.float64)
  x = relu(np_bn(np_conv(x, sd["conv1.weight"], sd["conv1.bias"], 2), sd,
                 "bn1"))
  x = np_maxpool(x)
  gates, i = [], 0
  for stage, n in enumerate(BLOCKS):
    for b in range(n):
      p, stride = f"feature.{i}.", 2 if (b == 0 and stage > 0) else 1
      # Factor Selection Module on the block input.
      s = x.mean(axis=(1, 2), keepdims=True)
      s = relu(np_bn(np_conv(s, sd[p + "fsm.1.weight"], sd[p + "fsm.1.bias"]),
                     sd, p + "fsm.2"))
      s = relu(np_bn(np_conv(s, sd[p + "fsm.4.weight"], sd[p + "fsm.4.bias"]),
                     sd, p + "fsm.5"))
      s = sigmoid(np_bn(np_conv(s, sd[p + "fsm.7.weight"],
                                sd[p + "fsm.7.bias"]), sd, p + "fsm.8"))
      s = s[:, 0, 0, :]  # [B, groups]
      y = relu(np_bn(np_conv(x, sd[p + "fm_conv1.weight"]), sd, p + "fm_bn1"))
      y = relu(np_bn(np_conv(y, sd[p + "fm_conv2.weight"], stride=stride,
                             groups=groups), sd, p + "fm_bn2"))
      # torchreid: s.repeat(1, n) -> view(b, n, g) -> permute -> view(b, c).
      bsz, c = y.shape[0], y.shape[-1]
      ss = np.tile(s, (1, c // groups)).reshape(bsz, c // groups, groups)
      ss = ss.transpose(0, 2, 1).reshape(bsz, c)
      y = y * ss[:, None, None, :]
      y = np_bn(np_conv(y, sd[p + "fm_conv3.weight"]), sd, p + "fm_bn3")
      if branch_relu:
        y = relu(y)
      res = x
      if p + "downsample.0.weight" in sd:
        res = np_bn(np_conv(x, sd[p + "downsample.0.weight"], stride=stride),
                    sd, p + "downsample.1")
      x = relu(res + y)
      gates.append(s)
      i += 1
  sig = np.concatenate(gates, axis=1)
  deep = x.mean(axis=(1, 2), keepdims=True)
  deep = relu(np_bn(np_conv(deep, sd["fc_x.0.weight"]), sd, "fc_x.1"))
  fs = relu(np_bn(np_conv(sig[:, None, None, :], sd["fc_s.0.weight"]), sd,
                  "fc_s.1"))
  v = ((deep + fs) * 0.5)[:, 0, 0, :]
  logits = v @ sd["classifier.weight"].T + sd["classifier.bias"]
  return v, sig, logits


def images(n=2, h=64, w=32, seed=1):
  return np.random.default_rng(seed).normal(0, 1, (n, h, w, 3)
                                            ).astype(np.float32)


def shapes_of(model, x_shape=(1, 64, 32, 3)):
  """The model's variables as ShapeDtypeStructs (no init compiled)."""
  return jax.eval_shape(model.init, KEY, jnp.zeros(x_shape))


def np_init(model, seed=0):
  """Concrete variables without compiling `model.init`: kaiming-normal
  kernels, unit norm scales and variances, zero biases and means."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, std, leaf.shape).astype(np.float32))
    fill_value = 1.0 if name in ("scale", "var") else 0.0
    return jnp.full(leaf.shape, fill_value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes_of(model))


def assert_close(got, want):
  scale = np.max(np.abs(want))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4,
                             atol=1e-4 * scale)


def test_import_matches_numpy_reference():
  sd = random_state_dict(SMALL, num_classes=10)
  new = mlfn.torchreid_mlfn_to_variables(sd, shapes_of(SMALL_MODEL))
  x = images()
  out = SMALL_APPLY(new, x)
  v, sig, logits = np_mlfn(sd, x, SMALL["groups"])
  assert out["descriptor"].shape == (2, SMALL["embed"])
  assert out["factor_signature"].shape == (2, 16 * SMALL["groups"])
  assert np.std(v) > 1e-3 and np.std(sig) > 1e-3  # not degenerate
  assert_close(out["factor_signature"], sig)
  assert_close(out["descriptor"], v)
  assert_close(out["logits"], logits)
  # Grouped kernel layout: torch [O, I/g, 3, 3] -> [3, 3, I/g, O].
  k = new["params"]["feature_5"]["fm_conv2"]["kernel"]
  np.testing.assert_array_equal(
      np.asarray(k), sd["module.feature.5.fm_conv2.weight"].transpose(
          2, 3, 1, 0))
  assert k.shape == (3, 3, 4, 16)


def test_resnet_form_without_branch_relu_matches_numpy():
  """branch_relu=False: the block adds BN(fm_conv3) without the ReLU."""
  model = mlfn.MLFN(num_classes=10, branch_relu=False, **SMALL_KW)
  sd = random_state_dict(SMALL, num_classes=10)
  new = mlfn.torchreid_mlfn_to_variables(sd, shapes_of(model))
  x = images()
  out = jax.jit(model.apply)(new, x)
  v, sig, logits = np_mlfn(sd, x, SMALL["groups"], branch_relu=False)
  assert_close(out["descriptor"], v)
  assert_close(out["logits"], logits)
  # The ReLU matters: torchreid's form gives another descriptor.
  v_relu, _, _ = np_mlfn(sd, x, SMALL["groups"])
  assert np.max(np.abs(v - v_relu)) > 1e-2 * np.max(np.abs(v))


def test_zero_init_residual_starts_every_block_as_its_shortcut():
  """fm_bn3's scales start at 0, so a block with an identity shortcut
  passes its (non-negative) input through unchanged."""
  model = mlfn.MLFN(num_classes=5, norm="group", branch_relu=False,
                    zero_init_residual=True, **SMALL_KW)
  x = jnp.asarray(images())
  variables = model.init(KEY, x)
  for i in range(16):
    scale = variables["params"][f"feature_{i}"]["fm_bn3"]["gn"]["scale"]
    assert np.all(np.asarray(scale) == 0)
  _, inter = model.apply(
      variables, x, capture_intermediates=lambda m, _: isinstance(
          m, mlfn.MLFNBlock))
  blocks = inter["intermediates"]
  # feature_1 (stage 1, no projection) maps feature_0's output to itself.
  inp = np.asarray(blocks["feature_0"]["__call__"][0][0])
  out = np.asarray(blocks["feature_1"]["__call__"][0][0])
  np.testing.assert_array_equal(out, inp)


@pytest.mark.parametrize("kw", [dict(zero_init_residual=True, norm="group"),
                                dict(zero_init_residual=True,
                                     branch_relu=False)])
def test_zero_init_residual_needs_resnet_form_and_trainable_norm(kw):
  with pytest.raises(ValueError, match="zero_init_residual"):
    mlfn.MLFN(**SMALL_KW, **kw).init(KEY, jnp.zeros((1, 64, 32, 3)))


def test_import_mlfn_reads_npz(tmp_path):
  sd = random_state_dict(SMALL, prefix="")
  path = tmp_path / "mlfn.npz"
  np.savez(path, **sd)
  variables = np_init(SMALL_MODEL)
  got = mlfn.import_mlfn(variables, path)
  want = mlfn.torchreid_mlfn_to_variables(sd, variables)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(ValueError, match="mlfn.npz"):
    sd.pop("fc_s.1.bias")
    np.savez(path, **sd)
    mlfn.import_mlfn(variables, path)


def test_import_classifier_skipped_when_shapes_differ():
  sd = random_state_dict(SMALL, num_classes=10)
  variables = np_init(mlfn.MLFN(num_classes=7, **SMALL_KW))
  new = mlfn.torchreid_mlfn_to_variables(sd, variables)
  jax.tree.map(np.testing.assert_array_equal, new["params"]["classifier"],
               variables["params"]["classifier"])
  np.testing.assert_array_equal(
      new["params"]["fc_s_conv"]["kernel"],
      sd["module.fc_s.0.weight"].transpose(2, 3, 1, 0))
  # No classifier in the model: the file's is ignored.
  model0 = mlfn.MLFN(**SMALL_KW)
  new0 = mlfn.torchreid_mlfn_to_variables(sd, shapes_of(model0))
  assert "classifier" not in new0["params"]
  out = jax.eval_shape(model0.apply, new0, images(1))
  assert set(out) == {"descriptor", "factor_signature"}


def test_import_errors_list_every_offender():
  sd = random_state_dict(SMALL)
  del sd["module.feature.7.fsm.5.running_var"]
  del sd["module.conv1.bias"]
  sd["module.feature.0.fsm.9.weight"] = np.zeros(3, np.float32)
  sd["module.fc_x.0.weight"] = np.zeros((5, 128, 1, 1), np.float32)
  sd["module.feature.3.fm_conv2.weight"] = np.zeros((16, 16, 3, 3),
                                                     np.float32)
  variables = shapes_of(SMALL_MODEL)
  with pytest.raises(ValueError) as e:
    mlfn.torchreid_mlfn_to_variables(sd, variables)
  msg = str(e.value)
  for name in ("feature.7.fsm.5.running_var", "conv1.bias",
               "module.feature.0.fsm.9.weight", "module.fc_x.0.weight",
               "module.feature.3.fm_conv2.weight", "2 missing", "1 unknown",
               "2 mis-shaped"):
    assert name in msg, (name, msg)
  # A model without frozen BN cannot take running statistics.
  gn = mlfn.MLFN(norm="group", **SMALL_KW)
  gn_vars = shapes_of(gn)
  with pytest.raises(ValueError, match="norm='frozen'"):
    mlfn.torchreid_mlfn_to_variables(random_state_dict(SMALL), gn_vars)


def test_gates_near_zero_remove_the_grouped_branch():
  """sigmoid(-1e4) = 0: the 3x3 branch's weights no longer matter."""
  sd = random_state_dict(SMALL)
  for i in range(16):
    sd[f"module.feature.{i}.fsm.8.bias"] = np.full(
        SMALL["groups"], -1e4, np.float32)
  variables = shapes_of(SMALL_MODEL)
  closed = mlfn.torchreid_mlfn_to_variables(sd, variables)
  apply = SMALL_APPLY

  def perturbed(v):
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: -a if any(
            getattr(k, "key", None) in ("fm_conv1", "fm_conv2") for k in path)
        else a, v["params"])
    return {**v, "params": params}

  x = images()
  base = apply(closed, x)
  assert np.all(np.asarray(base["factor_signature"]) == 0)
  moved = apply(perturbed(closed), x)
  np.testing.assert_allclose(moved["descriptor"], base["descriptor"],
                             rtol=1e-6, atol=1e-6)
  # With open gates the same perturbation does change the descriptor.
  opened = mlfn.torchreid_mlfn_to_variables(random_state_dict(SMALL),
                                            variables)
  a, b = apply(opened, x), apply(perturbed(opened), x)
  assert np.max(np.abs(a["descriptor"] - b["descriptor"])) > 1e-3


def test_group_norm_trains():
  """norm='group': finite loss and gradients, input-dependent gates.

  Gradients are taken for the last block, the fusion and the classifier
  only: XLA then drops the backward pass through the first 15 blocks, which
  would triple the CPU compile time (about 30 s) without checking anything
  that the last block does not (its FSM has the same three 1x1-map norms).
  """
  model = mlfn.MLFN(num_classes=5, norm="group", **SMALL_KW)
  x = jnp.asarray(images())
  variables = np_init(model)
  assert set(variables) == {"params"}
  assert n_params(variables["params"]) == (
      sum(count_params(SMALL).values()) + SMALL["embed"] * 5 + 5)
  labels = jnp.array([1, 3])
  trained = ("feature_15", "fc_x_conv", "fc_x_bn", "fc_s_conv", "fc_s_bn",
             "classifier")
  sub = {k: variables["params"][k] for k in trained}

  def loss(sub_params):
    params = {**variables["params"], **sub_params}
    out = model.apply({"params": params}, x)
    logp = jax.nn.log_softmax(out["logits"])
    return -jnp.mean(logp[jnp.arange(2), labels]) + jnp.mean(
        out["descriptor"] ** 2), out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(sub)
  assert np.isfinite(value)
  assert np.all(np.isfinite(out["descriptor"]))
  # Gates depend on the image: the two crops get different signatures.
  sig = np.asarray(out["factor_signature"])
  assert np.max(np.abs(sig[0] - sig[1])) > 1e-4
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # The FSM's norms on 1x1 maps stay input-dependent: with a per-channel
  # GroupNorm (its last norm has one channel per group) the gates would be
  # constant and the FSM's first conv would get no gradient.
  block = grads["feature_15"]
  assert np.max(np.abs(block["fsm"]["conv1"]["kernel"])) > 0
  assert np.max(np.abs(block["fm_conv2"]["kernel"])) > 0
  assert np.max(np.abs(grads["fc_s_conv"]["kernel"])) > 0


def test_is_frozen_param():
  assert mlfn.is_frozen_param(("feature_0", "fsm", "bn3", "bias"))
  assert mlfn.is_frozen_param(("feature_3", "downsample_bn", "scale"))
  assert mlfn.is_frozen_param(("fc_x_bn", "scale"))
  assert mlfn.is_frozen_param(("bn1", "bias"))
  assert not mlfn.is_frozen_param(("feature_0", "fm_conv2", "kernel"))
  assert not mlfn.is_frozen_param(("classifier", "kernel"))
  assert not mlfn.is_frozen_param(("bn1", "bias"), norm="group")


@pytest.mark.parametrize("impl", ["native", "dense"])
def test_grouped_conv_matches_numpy(impl):
  rng = np.random.default_rng(3)
  x = rng.normal(0, 1, (2, 7, 5, 8)).astype(np.float32)
  conv = mlfn.GroupedConv(12, 3, strides=2, groups=4, impl=impl)
  variables = conv.init(KEY, jnp.asarray(x))
  kernel = np.asarray(variables["params"]["kernel"])
  assert kernel.shape == (3, 3, 2, 12)
  want = np_conv(x, kernel.transpose(3, 2, 0, 1), stride=2, groups=4)
  assert_close(conv.apply(variables, jnp.asarray(x)), want)


def test_block_diagonal_kernel_places_the_blocks():
  k = np.arange(2 * 2 * 2 * 6, dtype=np.float32).reshape(2, 2, 2, 6) + 1
  full = np.asarray(mlfn.block_diagonal_kernel(jnp.asarray(k), 3))
  assert full.shape == (2, 2, 6, 6)
  for g in range(3):
    for h in range(3):
      block = full[:, :, 2 * g:2 * g + 2, 2 * h:2 * h + 2]
      want = k[..., 2 * h:2 * h + 2] if g == h else 0 * block
      np.testing.assert_array_equal(block, want)


def test_grouped_conv_impls_agree_in_value_and_gradient():
  x = jnp.asarray(images(2, 16, 8))
  block = mlfn.MLFNBlock(32, strides=2, fsm_widths=(8, 4), groups=4,
                         norm="group", grouped_conv="native")
  dense = block.clone(grouped_conv="dense")
  variables = block.init(KEY, x)

  def loss(params, m):
    y, gates = m.apply({**variables, "params": params}, x)
    return jnp.sum(y ** 2) + jnp.sum(gates)

  (a, ga), (b, gb) = [jax.value_and_grad(loss)(variables["params"], m)
                      for m in (block, dense)]
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    # Summation orders differ, so compare each gradient as a whole.
    assert np.linalg.norm(u - v) <= 1e-4 * np.linalg.norm(u) + 1e-7


def test_grouped_conv_rejects_unknown_impl():
  with pytest.raises(ValueError, match="grouped_conv"):
    mlfn.GroupedConv(8, groups=2, impl="fast").init(KEY, jnp.zeros((1, 4, 4,
                                                                    8)))
