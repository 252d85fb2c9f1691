"""Tests for ps_jax.models.googlenet (GoogLeNet and torchvision's weights).

The architecture is written out again here, independently of the module: a
table of every conv (torchvision name, in / out channels, kernel), from
which the parameter count is derived and a random state dict in
torchvision's names is built. Imported weights are compared with a numpy
forward pass (im2col conv on OIHW weights, inference batch norm with eps
1e-3, torch's ceil-mode max pool, the four-branch concat) at a small width,
and, where torch and torchvision import, with torchvision's googlenet.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import googlenet
from ps_jax.models.backbone import FROZEN_BN

KEY = jax.random.key(0)
EPS = 1e-3
# Inception blocks: (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
# from torchvision's googlenet; maxpools (3/2, 3/2, 3/2, 2/2) follow conv1,
# conv3, inception3b and inception4e.
BLOCKS = [
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
]
POOL_AFTER = {"conv1": (3, 2), "conv3": (3, 2), "inception3b": (3, 2),
              "inception4e": (2, 2)}


def conv_table(w=1.0):
  """[(torchvision BasicConv2d name, in, out, kernel)] in network order."""
  c = lambda v: max(1, int(round(v * w)))
  rows = [("conv1", 3, c(64), 7), ("conv2", c(64), c(64), 1),
          ("conv3", c(64), c(192), 3)]
  cin = c(192)
  for name, b1, r3, b3, r5, b5, pp in BLOCKS:
    rows += [(f"{name}.branch1", cin, c(b1), 1),
             (f"{name}.branch2.0", cin, c(r3), 1),
             (f"{name}.branch2.1", c(r3), c(b3), 3),
             (f"{name}.branch3.0", cin, c(r5), 1),
             # torchvision's "5x5" branch has a 3x3 kernel.
             (f"{name}.branch3.1", c(r5), c(b5), 3),
             (f"{name}.branch4.1", cin, c(pp), 1)]
    cin = c(b1) + c(b3) + c(b5) + c(pp)
  return rows


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract(model, h=64, w=64):
  return jax.eval_shape(model.init, KEY, jnp.zeros((1, h, w, 3)))


# --------------------------------------------------------------------------
# Architecture: parameter counts and output sizes.
# --------------------------------------------------------------------------


def test_param_count_matches_torchvision_layer_by_layer():
  table = conv_table(1.0)
  assert len(table) == 3 + 9 * 6
  # Each BasicConv2d: a bias-free conv plus BN weight and bias.
  convs = sum(cin * cout * k * k + 2 * cout for _, cin, cout, k in table)
  # inception5b concatenates branch1, branch2.1, branch3.1 and branch4.1.
  assert sum(table[i][2] for i in (-6, -4, -2, -1)) == 1024
  fc = 1024 * 1000 + 1000
  assert convs + fc == 6_624_904  # torchvision googlenet(aux_logits=False)

  with_fc = abstract(googlenet.GoogLeNet(with_classifier=True))
  assert n_params(with_fc["params"]) == 6_624_904
  feats = abstract(googlenet.GoogLeNet())
  assert n_params(feats["params"]) == 6_624_904 - (1024 * 1000 + 1000)
  assert n_params(feats["params"]) == 5_599_904
  # Running mean and var: two per output channel of every conv.
  assert n_params(feats[FROZEN_BN]) == 2 * sum(r[2] for r in table)
  assert googlenet.out_channels(1.0) == 1024
  assert googlenet.out_channels(0.125) == 128


@pytest.mark.parametrize("hw,want", [
    ((224, 224), (7, 7)),
    ((256, 128), (8, 4)),
    # 100: conv1 50 -> pools 25, 12, 6, 3 (ceil); floor pools give 24, 11, 5,
    # 2. 75: conv1 38 -> 19, 9, 4, 2; floor: 18, 8, 3, 1.
    ((100, 75), (3, 2)),
])
def test_feature_map_sizes_follow_ceil_mode(hw, want):
  model = googlenet.GoogLeNet()
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2, *want, 1024)
  assert out.dtype == jnp.float32


def test_pool_output_size_is_torchs():
  # (size, kernel, stride, padding) -> (ceil, floor), derived by hand.
  cases = {(112, 3, 2, 0): (56, 55), (14, 2, 2, 0): (7, 7),
           (7, 3, 2, 0): (3, 3), (8, 3, 2, 0): (4, 3),
           (9, 3, 1, 1): (9, 9),
           # ceil would give 4, but its last window starts in the padding.
           (5, 2, 2, 1): (3, 3)}
  for (n, k, s, p), (ceil, floor) in cases.items():
    assert googlenet.pool_output_size(n, k, s, p) == ceil, (n, k, s, p)
    assert googlenet.pool_output_size(n, k, s, p, ceil_mode=False) == floor
  with pytest.raises(ValueError, match="too small"):
    googlenet.pool_output_size(1, 3, 2, 0, ceil_mode=False)


def test_classifier_and_dtype():
  model = googlenet.GoogLeNet(width_multiplier=0.125, with_classifier=True,
                              num_classes=7, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert variables["params"]["fc"]["kernel"].shape == (128, 7)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  feature_model = googlenet.GoogLeNet(width_multiplier=0.125,
                                      dtype=jnp.bfloat16)
  feats = jax.eval_shape(feature_model.apply,
                         jax.eval_shape(feature_model.init, KEY, x), x)
  assert feats.shape == (3, 1, 1, 128) and feats.dtype == jnp.bfloat16


# --------------------------------------------------------------------------
# Random torchvision state dicts and the numpy reference forward.
# --------------------------------------------------------------------------


def random_state_dict(w, seed=0, num_classes=10, extras=True):
  """torchvision googlenet keys, random weights and statistics."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, cin, cout, k in conv_table(w):
    sd[f"{name}.conv.weight"] = rng.normal(
        0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(
        np.float32)
    # Some variances near 0, where eps = 1e-3 (vs 1e-5) matters.
    sd[f"{name}.bn.running_var"] = rng.uniform(0.001, 2.0, cout).astype(
        np.float32)
    if extras:
      sd[f"{name}.bn.num_batches_tracked"] = np.array(3, np.int64)
  t = conv_table(w)  # inception5b's branch outputs make the features.
  cin = t[-6][2] + t[-4][2] + t[-2][2] + t[-1][2]
  sd["fc.weight"] = rng.normal(0, 0.1, (num_classes, cin)).astype(np.float32)
  sd["fc.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  if extras:  # The released file still holds the untrained aux heads.
    sd["aux1.conv.conv.weight"] = np.zeros((128, 4, 1, 1), np.float32)
    sd["aux2.fc2.bias"] = np.zeros(1000, np.float32)
  return sd


def np_conv(x, w, stride, pad):
  """torch conv2d: x f64[B, H, W, C], w [O, C, kh, kw] -> [B, H', W', O]."""
  _, c, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  cols = np.empty((x.shape[0], ho, wo, kh, kw, c))
  for i in range(kh):
    for j in range(kw):
      cols[:, :, :, i, j, :] = xp[:, i:i + stride * (ho - 1) + 1:stride,
                                  j:j + stride * (wo - 1) + 1:stride, :]
  return np.einsum("bhwijc,ocij->bhwo", cols, w.astype(np.float64))


def np_basic_conv(sd, name, x, stride=1):
  w = sd[f"{name}.conv.weight"]
  g = lambda k: sd[f"{name}.bn.{k}"].astype(np.float64)
  y = np_conv(x, w, stride, w.shape[-1] // 2)
  y = (y - g("running_mean")) / np.sqrt(g("running_var") + EPS)
  return np.maximum(y * g("weight") + g("bias"), 0)


def np_max_pool_ceil(x, k, s, p=0):
  """MaxPool2d(k, s, p, ceil_mode=True), by explicit windows."""
  def size(n):
    out = -(-(n + 2 * p - k) // s) + 1  # ceil division
    return out - 1 if (out - 1) * s >= n + p else out
  ho, wo = size(x.shape[1]), size(x.shape[2])
  out = np.empty((x.shape[0], ho, wo, x.shape[3]))
  for i in range(ho):
    for j in range(wo):
      r0, c0 = i * s - p, j * s - p
      win = x[:, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
      out[:, i, j] = win.max(axis=(1, 2))
  return out


def np_googlenet(sd, x, transform_input):
  """{module name: output} of torchvision's googlenet in eval mode."""
  if transform_input:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224,
                                                           0.225])
    x = x * std / 0.5 + (mean - 0.5) / 0.5
  outs = {}
  x = np_basic_conv(sd, "conv1", x, stride=2)
  x = np_max_pool_ceil(x, 3, 2)
  x = np_basic_conv(sd, "conv3", np_basic_conv(sd, "conv2", x))
  x = np_max_pool_ceil(x, 3, 2)
  for name, *_ in BLOCKS:
    b = lambda br, t: np_basic_conv(sd, f"{name}.{br}", t)
    x = np.concatenate([
        b("branch1", x), b("branch2.1", b("branch2.0", x)),
        b("branch3.1", b("branch3.0", x)),
        b("branch4.1", np_max_pool_ceil(x, 3, 1, 1))], axis=-1)
    outs[name] = x
    if name in POOL_AFTER:
      x = np_max_pool_ceil(x, *POOL_AFTER[name])
  pooled = x.mean(axis=(1, 2))
  outs["fc"] = pooled @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"]
  return outs


def test_numpy_reference_ceil_pool_differs_from_floor():
  # Guards the reference: 8 -> 4 windows (ceil), the last one partial.
  x = np.arange(2 * 8 * 8 * 1, dtype=np.float64).reshape(2, 8, 8, 1)
  y = np_max_pool_ceil(x, 3, 2)
  assert y.shape == (2, 4, 4, 1)
  assert y[0, 3, 3, 0] == x[0, 7, 7, 0]


# --------------------------------------------------------------------------
# The importer.
# --------------------------------------------------------------------------


def test_imported_model_matches_numpy_reference():
  w = 0.125
  sd = random_state_dict(w, num_classes=10)
  model = googlenet.GoogLeNet(width_multiplier=w, transform_input=True,
                              with_classifier=True, num_classes=10)
  shapes = abstract(model, 64, 56)
  variables = googlenet.torchvision_googlenet_to_variables(sd, shapes)
  assert all(isinstance(v, jax.Array) and v.dtype == jnp.float32
             for v in jax.tree.leaves(variables))
  k = variables["params"]["inception4b"]["branch3_1"]["conv"]["kernel"]
  wt = sd["inception4b.branch3.1.conv.weight"]
  assert k.shape == (3, 3, wt.shape[1], wt.shape[0])
  assert k[2, 0, 1, 0] == wt[0, 1, 2, 0]

  # 56 -> 28 -> 14 (ceil; floor would give 13) -> 7 -> 3 -> 2 at 5b.
  x = np.random.default_rng(1).normal(size=(2, 64, 56, 3))
  apply = jax.jit(functools.partial(model.apply, capture_intermediates=True,
                                    mutable=["intermediates"]))
  logits, state = apply(variables, jnp.asarray(x, jnp.float32))
  want = np_googlenet(sd, x.astype(np.float32).astype(np.float64),
                      transform_input=True)
  inter = state["intermediates"]
  for name, *_ in BLOCKS:
    got = np.asarray(inter[name]["__call__"][0], np.float64)
    assert got.shape == want[name].shape, name
    scale = np.abs(want[name]).max()
    assert scale > 1e-2, name  # not trivially zero
    np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-4 * scale,
                               err_msg=name)
  assert want["inception5b"].shape == (2, 2, 2, 128)
  np.testing.assert_allclose(np.asarray(logits), want["fc"], rtol=1e-4,
                             atol=1e-4 * np.abs(want["fc"]).max())


def test_feature_model_ignores_fc_and_wrapper_prefix_is_stripped():
  w = 0.125
  sd = random_state_dict(w)
  shapes = abstract(googlenet.GoogLeNet(width_multiplier=w), 32, 32)
  plain = googlenet.torchvision_googlenet_to_variables(sd, shapes)
  assert "fc" not in plain["params"]
  wrapped = {"module." + k: v for k, v in sd.items()}
  got = googlenet.torchvision_googlenet_to_variables(wrapped, shapes)
  jax.tree.map(np.testing.assert_array_equal, got, plain)
  np.testing.assert_array_equal(plain[FROZEN_BN]["conv1"]["bn"]["var"],
                                sd["conv1.bn.running_var"])
  np.testing.assert_array_equal(
      plain["params"]["inception5b"]["branch4_1"]["bn"]["scale"],
      sd["inception5b.branch4.1.bn.weight"])
  # Every float of the file except fc and aux lands somewhere exactly once.
  n_file = sum(v.size for k, v in sd.items() if v.dtype == np.float32
               and not k.startswith(("fc.", "aux")))
  assert n_params(plain) == n_file
  # Nested under a prefix in a bigger model; the other modules untouched.
  outer = {c: {"backbone": t, "head": {"x": jnp.ones(2)}}
           for c, t in shapes.items()}
  nested = googlenet.torchvision_googlenet_to_variables(
      sd, outer, prefix="backbone")
  jax.tree.map(np.testing.assert_array_equal,
               {c: t["backbone"] for c, t in nested.items()}, plain)
  assert nested["params"]["head"]["x"] is outer["params"]["head"]["x"]


def test_import_errors_name_every_offender():
  w = 0.125
  sd = random_state_dict(w)
  shapes = abstract(googlenet.GoogLeNet(width_multiplier=w,
                                        with_classifier=True,
                                        num_classes=10), 32, 32)
  bad = dict(sd)
  bad["inception3a.branch5.conv.weight"] = np.zeros((1, 1, 1, 1))
  bad["conv4.bn.weight"] = np.zeros(3)
  del bad["conv3.conv.weight"]
  del bad["inception4d.branch2.1.bn.running_var"]
  del bad["fc.bias"]
  bad["inception5a.branch1.conv.weight"] = np.zeros((5, 4, 1, 1))
  bad["conv2.bn.bias"] = np.zeros((8, 1))
  with pytest.raises(ValueError) as e:
    googlenet.torchvision_googlenet_to_variables(bad, shapes)
  msg = str(e.value)
  for key in ("inception3a.branch5.conv.weight", "conv4.bn.weight",
              "conv3.conv.weight", "inception4d.branch2.1.bn.running_var",
              "fc.bias", "inception5a.branch1.conv.weight", "conv2.bn.bias"):
    assert key in msg, key
  assert "2 unknown" in msg and "3 missing" in msg and "2 mis-shaped" in msg

  # A full-width file into a small model: the width that would fit.
  wide = dict(sd, **{"conv1.conv.weight": np.zeros((64, 3, 7, 7))})
  with pytest.raises(ValueError, match="width_multiplier=1 "):
    googlenet.torchvision_googlenet_to_variables(wide, shapes)
  # Group norm has nothing to put the statistics in.
  gn = abstract(googlenet.GoogLeNet(width_multiplier=w, norm="group"), 32, 32)
  with pytest.raises(ValueError, match="norm='frozen'"):
    googlenet.torchvision_googlenet_to_variables(sd, gn)
  with pytest.raises(ValueError, match="prefix"):
    googlenet.torchvision_googlenet_to_variables(sd, shapes, prefix="nope")


def test_import_googlenet_reads_a_file(tmp_path):
  w = 0.125
  sd = random_state_dict(w)
  path = tmp_path / "googlenet.npz"
  np.savez(path, **sd)
  shapes = abstract(googlenet.GoogLeNet(width_multiplier=w), 32, 32)
  got = googlenet.import_googlenet(shapes, path)
  want = googlenet.torchvision_googlenet_to_variables(sd, shapes)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  del sd["conv1.bn.bias"]
  np.savez(path, **sd)
  with pytest.raises(ValueError, match=r"googlenet\.npz.*conv1\.bn\.bias"):
    googlenet.import_googlenet(shapes, path)


def test_matches_torchvision_forward():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = torchvision.models.googlenet(weights=None, aux_logits=False,
                                     transform_input=True, init_weights=True)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.01, 2.0)
  net.eval()
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  model = googlenet.GoogLeNet(transform_input=True, with_classifier=True)
  variables = googlenet.torchvision_googlenet_to_variables(
      sd, abstract(model, 65, 47))
  x = np.random.default_rng(0).normal(size=(2, 65, 47, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------
# Training from scratch.
# --------------------------------------------------------------------------


def random_variables(module, x, seed=0):
  """`module`'s variables from numpy randoms, without compiling an init
  (XLA's CPU compile of 57 random initialisers alone takes a minute)."""
  shapes = jax.eval_shape(module.init, KEY, x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if path[-1].key == "kernel":
      v = rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape)
    elif path[-1].key == "scale":
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = rng.normal(0, 0.1, s.shape)
    return jnp.asarray(v, s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_group_norm_model_runs():
  model = googlenet.GoogLeNet(width_multiplier=0.125, norm="group",
                              with_classifier=True, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = random_variables(model, x)
  assert set(variables) == {"params"}
  assert "gn" in variables["params"]["inception3a"]["branch1"]["bn"]
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 5)
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_group_norm_blocks_have_finite_gradients():
  # The stem conv and one inception block, each at a small spatial size
  # and the tiny widths (GN groups of 1-2 channels) a 0.125 model has.
  # (Differentiating the whole 57-conv network compiles for 20-40 s on a
  # CPU; the blocks are what it is made of.)
  blocks = [
      (googlenet.BasicConv(8, 7, stride=2, padding=3, norm="group"),
       (2, 16, 16, 3)),
      (googlenet.Inception(*(max(1, round(v / 8)) for v in BLOCKS[2][1:]),
                           norm="group"), (2, 3, 3, 60)),
  ]
  for module, shape in blocks:
    x = jax.random.normal(jax.random.key(2), shape)
    params = random_variables(module, x)["params"]

    def loss(params, x, module=module):
      y = module.apply({"params": params}, x)
      return jnp.mean(jnp.sin(y) * y)

    (gp, gx) = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for path, g in jax.tree_util.tree_leaves_with_path((gp, gx)):
      assert bool(jnp.all(jnp.isfinite(g))), path
      assert float(jnp.abs(g).max()) > 0, path  # every parameter learns


def test_frozen_bn_params_are_marked_frozen():
  assert googlenet.is_frozen_param(("inception3a", "branch2_1", "bn",
                                    "scale"))
  assert not googlenet.is_frozen_param(("conv1", "conv", "kernel"))
  assert not googlenet.is_frozen_param(("conv1", "bn", "gn", "scale"),
                                       norm="group")
