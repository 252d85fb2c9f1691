"""Tests for ps_jax.models.weights (ImageNet ResNet state dict import).

The features of an imported backbone are compared with a slow numpy forward
pass written here from torchvision's / mmdet's definitions (im2col conv on
OIHW weights, running-statistics BN, torch's max-pool padding, both stride
placements), and, when torch is importable, with a torch ResNet built with
torchvision's module names. Widths are reduced (base 4 or 8 channels) to keep
CPU time small; the importer is width-agnostic as long as shapes match.
Reading weight files is tested in tests/pretrained_test.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import AlignPS
from ps_jax.models import backbone
from ps_jax.models import weights

KEY = jax.random.key(0)
BN_EPS = 1e-5
# Torchvision's architecture, written out independently of the code under
# test: block type and blocks per stage.
ARCH = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


# --------------------------------------------------------------------------
# Random torchvision-style state dicts and the numpy reference forward.
# --------------------------------------------------------------------------


def random_state_dict(depth, base=64, seed=0, num_classes=10,
                      identity_stats=False):
  """torchvision ResNet keys with random weights; widths scaled by base/64."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cout, cin, k):
    std = np.sqrt(2.0 / (cin * k * k))
    sd[name + ".weight"] = rng.normal(0, std, (cout, cin, k, k)).astype(
        np.float32)

  def bn(name, c):
    sd[name + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + ".bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    if identity_stats:
      sd[name + ".running_mean"] = np.zeros(c, np.float32)
      sd[name + ".running_var"] = np.ones(c, np.float32)
    else:
      sd[name + ".running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
      sd[name + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[name + ".num_batches_tracked"] = np.array(7, np.int64)

  kind, blocks = ARCH[depth]
  exp = 4 if kind == "bottleneck" else 1
  conv("conv1", base, 3, 7)
  bn("bn1", base)
  cin = base
  for s, n in enumerate(blocks):
    width = base * 2**s
    for b in range(n):
      p = f"layer{s + 1}.{b}."
      if kind == "bottleneck":
        conv(p + "conv1", width, cin, 1)
        conv(p + "conv2", width, width, 3)
        conv(p + "conv3", width * 4, width, 1)
        for k, c in ((1, width), (2, width), (3, width * 4)):
          bn(p + f"bn{k}", c)
      else:
        conv(p + "conv1", width, cin, 3)
        conv(p + "conv2", width, width, 3)
        bn(p + "bn1", width)
        bn(p + "bn2", width)
      if b == 0 and (s > 0 or kind == "bottleneck"):
        conv(p + "downsample.0", width * exp, cin, 1)
        bn(p + "downsample.1", width * exp)
      cin = width * exp
  sd["fc.weight"] = rng.normal(0, 0.01, (num_classes, cin)).astype(np.float32)
  sd["fc.bias"] = np.zeros(num_classes, np.float32)
  return sd


def np_conv(x, w, stride, pad):
  """torch.nn.functional.conv2d semantics: x f64[B,H,W,C], w [O,C,kh,kw]."""
  _, c, kh, kw = w.shape
  assert x.shape[-1] == c
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  cols = np.empty((x.shape[0], ho, wo, kh, kw, c))
  for i in range(kh):
    for j in range(kw):
      cols[:, :, :, i, j, :] = xp[:, i:i + stride * (ho - 1) + 1:stride,
                                  j:j + stride * (wo - 1) + 1:stride, :]
  return np.einsum("bhwijc,ocij->bhwo", cols, w.astype(np.float64))


def np_bn(x, sd, name):
  g = lambda k: sd[f"{name}.{k}"].astype(np.float64)
  return ((x - g("running_mean")) / np.sqrt(g("running_var") + BN_EPS)
          * g("weight") + g("bias"))


def np_max_pool(x):
  """nn.MaxPool2d(3, stride=2, padding=1): pad with -inf, floor sizes."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, xp[:, i:i + 2 * (ho - 1) + 1:2,
                               j:j + 2 * (wo - 1) + 1:2])
  return out


def np_resnet(sd, depth, x, style):
  """C2..C5 of torchvision ('pytorch') or mmdet caffe-style ResNet."""
  relu = lambda t: np.maximum(t, 0)
  kind, blocks = ARCH[depth]
  x = relu(np_bn(np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
  x = np_max_pool(x)
  feats = []
  for s, n in enumerate(blocks):
    for b in range(n):
      p = f"layer{s + 1}.{b}."
      stride = 2 if (b == 0 and s > 0) else 1
      if kind == "bottleneck":
        s1, s2 = (1, stride) if style == "pytorch" else (stride, 1)
        y = relu(np_bn(np_conv(x, sd[p + "conv1.weight"], s1, 0), sd,
                       p + "bn1"))
        y = relu(np_bn(np_conv(y, sd[p + "conv2.weight"], s2, 1), sd,
                       p + "bn2"))
        y = np_bn(np_conv(y, sd[p + "conv3.weight"], 1, 0), sd, p + "bn3")
      else:
        y = relu(np_bn(np_conv(x, sd[p + "conv1.weight"], stride, 1), sd,
                       p + "bn1"))
        y = np_bn(np_conv(y, sd[p + "conv2.weight"], 1, 1), sd, p + "bn2")
      if p + "downsample.0.weight" in sd:
        x = np_bn(np_conv(x, sd[p + "downsample.0.weight"], stride, 0), sd,
                  p + "downsample.1")
      x = relu(y + x)
    feats.append(x)
  return feats


def abstract_resnet(depth, base, style, **kw):
  model = backbone.ResNet(depth=depth, width_multiplier=base / 64,
                          style=style, **kw)
  shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, 64, 64, 3)))
  return model, shapes


def assert_features_close(got, want, label=""):
  assert len(got) == len(want) == 4
  for lvl, (g, w) in enumerate(zip(got, want), start=2):
    g = np.asarray(g, np.float64)
    assert g.shape == w.shape, (label, lvl, g.shape, w.shape)
    scale = np.abs(w).max()
    assert scale > 1e-3  # the features are not trivially zero
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=f"{label} C{lvl}")


IMAGES = {
    "2x64x64": np.random.default_rng(1).normal(size=(2, 64, 64, 3)),
    # Not a multiple of 32: odd sizes at C4/C5 exercise torch's padding and
    # floor arithmetic in the strided convs and the max-pool.
    "1x56x72": np.random.default_rng(2).normal(size=(1, 56, 72, 3)),
}


# --------------------------------------------------------------------------
# Numerical agreement with the numpy reference.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("depth,base,style,fmt", [
    (18, 8, "pytorch", "torchvision"),
    (50, 4, "pytorch", "torchvision"),
    (50, 4, "caffe", "caffe"),
])
def test_imported_features_match_numpy_reference(depth, base, style, fmt):
  sd = random_state_dict(depth, base, seed=depth)
  model, shapes = abstract_resnet(depth, base, style)
  # The abstract (eval_shape) tree is enough: every leaf gets replaced.
  variables, norm = weights.import_backbone(shapes, sd, format=fmt, prefix="")
  assert norm == weights.NORMALIZATION_FOR_FORMAT[fmt]
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(variables))
  apply = jax.jit(model.apply)
  for name, x in IMAGES.items():
    got = apply(variables, jnp.asarray(x, jnp.float32))
    want = np_resnet(sd, depth, x.astype(np.float32).astype(np.float64),
                     style)
    assert_features_close(got, want, name)


def test_caffe_and_pytorch_styles_give_different_features():
  # Guards the reference itself: stride placement must matter.
  sd = random_state_dict(50, 4, seed=3)
  x = IMAGES["1x56x72"]
  a = np_resnet(sd, 50, x, "pytorch")[1]
  b = np_resnet(sd, 50, x, "caffe")[1]
  assert a.shape == b.shape
  assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_affine_only_caffe_file_equals_identity_statistics():
  # detectron2's MSRA weights have only BN weight/bias: they must import as
  # mean 0, var 1 (with eps), as mmdet's converter and detectron2 do.
  sd = random_state_dict(18, 8, identity_stats=True)
  affine = {k: v for k, v in sd.items() if "running" not in k}
  _, shapes = abstract_resnet(18, 8, "caffe")
  want, _ = weights.import_backbone(shapes, sd, format="caffe", prefix="")
  got, _ = weights.import_backbone(shapes, affine, format="caffe", prefix="")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(ValueError, match="running_mean"):
    weights.import_backbone(shapes, affine, format="torchvision", prefix="")


# --------------------------------------------------------------------------
# Key mapping.
# --------------------------------------------------------------------------


def test_torchvision_mapping_transposes_and_places_every_tensor():
  sd = random_state_dict(50, 4)
  params, stats = weights.torchvision_resnet_to_params(sd, 50)
  w = sd["layer2.0.conv2.weight"]  # [O, I, kh, kw]
  k = params["layer2_0"]["conv2"]["kernel"]  # [kh, kw, I, O]
  for o, i, a, b in [(0, 0, 0, 0), (3, 1, 2, 0), (5, 7, 1, 2)]:
    assert k[a, b, i, o] == w[o, i, a, b]
  np.testing.assert_array_equal(
      params["layer1_0"]["downsample_conv"]["kernel"][0, 0],
      sd["layer1.0.downsample.0.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(params["layer4_0"]["downsample_bn"]["scale"],
                                sd["layer4.0.downsample.1.weight"])
  np.testing.assert_array_equal(params["bn1"]["bias"], sd["bn1.bias"])
  np.testing.assert_array_equal(stats["layer3_5"]["bn3"]["var"],
                                sd["layer3.5.bn3.running_var"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], sd["bn1.running_mean"])
  assert "fc" not in params  # ignored without a classifier
  n_convs = sum("weight" in k and sd[k].ndim == 4 for k in sd)
  n_kernels = sum(p[-1].key == "kernel"
                  for p, _ in jax.tree_util.tree_leaves_with_path(params))
  assert n_kernels == n_convs == 53
  leaves = jax.tree.leaves((params, stats))
  assert all(x.dtype == np.float32 for x in leaves)
  # Every float of the file except fc lands somewhere exactly once.
  n_file = sum(v.size for k, v in sd.items()
               if v.dtype == np.float32 and not k.startswith("fc."))
  assert sum(x.size for x in leaves) == n_file


def test_classifier_is_mapped_when_asked():
  sd = random_state_dict(18, 8, num_classes=10)
  params, _ = weights.torchvision_resnet_to_params(sd, 18,
                                                   with_classifier=True)
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  _, shapes = abstract_resnet(18, 8, "pytorch", with_classifier=True,
                              num_classes=10)
  v, _ = weights.import_backbone(shapes, sd, format="torchvision", prefix="")
  np.testing.assert_array_equal(v["params"]["fc"]["bias"], sd["fc.bias"])
  del sd["fc.bias"]
  with pytest.raises(ValueError, match=r"fc\.bias"):
    weights.torchvision_resnet_to_params(sd, 18, with_classifier=True)


def to_detectron2(sd):
  """torchvision names -> detectron2 names (written out independently)."""
  out = {}
  for k, v in sd.items():
    if k.endswith("num_batches_tracked") or k.startswith("fc."):
      continue
    parts = k.split(".")
    if parts[0] == "conv1":
      out["stem.conv1." + parts[1]] = v
    elif parts[0] == "bn1":
      out["stem.conv1.norm." + parts[1]] = v
    else:
      stage = int(parts[0][len("layer"):]) + 1
      head = f"res{stage}.{parts[1]}."
      mod, leaf = parts[2], parts[-1]
      if mod == "downsample":
        mod = "shortcut" if parts[3] == "0" else "shortcut.norm"
      elif mod.startswith("bn"):
        mod = f"conv{mod[2]}.norm"
      out[head + mod + "." + leaf] = v
  return out


def to_caffe2(sd):
  """torchvision names -> Detectron (caffe2) blob names, affine BN only."""
  out = {"conv1_w": sd["conv1.weight"], "res_conv1_bn_s": sd["bn1.weight"],
         "res_conv1_bn_b": sd["bn1.bias"]}
  for k, v in sd.items():
    parts = k.split(".")
    if not parts[0].startswith("layer") or parts[-1] not in ("weight",
                                                             "bias"):
      continue
    head = f"res{int(parts[0][5:]) + 1}_{parts[1]}_"
    mod = parts[2]
    if mod == "downsample":
      name = "branch1" + ("_bn" if parts[3] == "1" else "")
    else:
      name = "branch2" + "abc"[int(mod[-1]) - 1] + ("_bn" if mod[:2] == "bn"
                                                    else "")
    leaf = {"weight": "s" if name.endswith("_bn") else "w", "bias": "b"}
    out[head + name + "_" + leaf[parts[-1]]] = v
  out["pred_w"] = sd["fc.weight"]
  out["pred_b"] = sd["fc.bias"]
  out["res2_0_branch2a_w_momentum"] = np.zeros(3, np.float32)  # ignored
  return out


def test_detectron2_and_caffe2_layouts_give_the_same_tree():
  sd = random_state_dict(50, 4, identity_stats=True)
  want = weights.caffe_resnet_to_params(sd, 50)
  d2 = weights.caffe_resnet_to_params(to_detectron2(sd), 50)
  c2 = weights.caffe_resnet_to_params(to_caffe2(sd), 50)
  jax.tree.map(np.testing.assert_array_equal, d2, want)
  jax.tree.map(np.testing.assert_array_equal, c2, want)
  assert weights.detect_format(to_caffe2(sd)) == "caffe"
  assert weights.detect_format(sd) == "caffe"  # identity statistics
  assert weights.detect_format(random_state_dict(50, 4)) == "torchvision"
  assert weights.detect_format(to_detectron2(random_state_dict(
      50, 4))) == "torchvision"  # torchvision converted to detectron2 names


def test_wrapper_prefix_is_stripped_and_the_rest_ignored():
  sd = random_state_dict(18, 8)
  wrapped = {"backbone." + k: v for k, v in sd.items()}
  wrapped["neck.lateral.weight"] = np.zeros((3, 3), np.float32)
  want = weights.torchvision_resnet_to_params(sd, 18)
  got = weights.torchvision_resnet_to_params(wrapped, 18)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  two = dict(wrapped, **{"ema." + k: v for k, v in sd.items()})
  with pytest.raises(ValueError, match=r"several ResNets.*backbone\..*ema\."):
    weights.torchvision_resnet_to_params(two, 18)
  with pytest.raises(ValueError, match="no ResNet stem"):
    weights.torchvision_resnet_to_params({"a.weight": np.zeros(3)}, 18)


def test_unknown_and_missing_keys_are_all_listed():
  sd = random_state_dict(18, 8)
  for k in ("layer2.1.conv2.weight", "layer4.0.downsample.1.running_var"):
    del sd[k]
  sd["layer1.0.conv3.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  sd["layer5.0.conv1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  sd["bn1.foo"] = np.zeros(8, np.float32)
  with pytest.raises(ValueError) as e:
    weights.torchvision_resnet_to_params(sd, 18)
  msg = str(e.value)
  for k in ("layer2.1.conv2.weight", "layer4.0.downsample.1.running_var",
            "layer1.0.conv3.weight", "layer5.0.conv1.weight", "bn1.foo"):
    assert k in msg, k
  assert "3 unknown" in msg and "2 missing" in msg


@pytest.mark.parametrize("depth", [34, 101])
def test_every_depth_imports_into_the_backbone(depth):
  # 18 and 50 are covered numerically above; here the block structure.
  sd = random_state_dict(depth, 4)
  _, shapes = abstract_resnet(depth, 4, "pytorch")
  v, _ = weights.import_backbone(shapes, sd, format="torchvision", prefix="")
  n_file = sum(x.size for k, x in sd.items()
               if x.dtype == np.float32 and not k.startswith("fc."))
  assert sum(x.size for x in jax.tree.leaves(v)) == n_file


def test_depth_mismatch_lists_the_extra_blocks():
  sd = random_state_dict(34, 4)
  with pytest.raises(ValueError) as e:
    weights.torchvision_resnet_to_params(sd, 18)
  for k in ("layer1.2.conv1.weight", "layer3.5.bn2.running_var"):
    assert k in str(e.value)
  with pytest.raises(ValueError, match="depth"):
    weights.torchvision_resnet_to_params(sd, 20)


# --------------------------------------------------------------------------
# Import into the AlignPS tree.
# --------------------------------------------------------------------------

TINY = dict(depth=50, width_multiplier=1 / 16, neck_channels=8,
            head_norm_groups=4, reid_dim=None)


@functools.lru_cache(maxsize=None)
def _alignps_shapes(overrides):
  model = AlignPS(**dict(TINY, **dict(overrides)))
  return jax.eval_shape(functools.partial(model.init, train=True), KEY,
                        jnp.zeros((1, 64, 64, 3)))


def alignps_shapes(**overrides):
  """Abstract AlignPS variables (cached: the importer never mutates them)."""
  return _alignps_shapes(tuple(sorted(overrides.items())))


def test_import_into_alignps_replaces_exactly_the_backbone():
  sd = random_state_dict(50, 4, seed=5)
  shapes = alignps_shapes()
  new, norm = weights.import_backbone(shapes, sd, format="caffe")
  assert norm == "caffe_bgr"
  assert shapes["params"]["backbone"]["conv1"]["kernel"].__class__ is (
      jax.ShapeDtypeStruct)  # the input is not modified
  for name in ("neck", "head"):
    assert new["params"][name] is shapes["params"][name]
  _, bare = abstract_resnet(50, 4, "caffe")
  want, _ = weights.import_backbone(bare, sd, format="caffe", prefix="")
  got = {"params": new["params"]["backbone"],
         backbone.FROZEN_BN: new[backbone.FROZEN_BN]["backbone"]}
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # The tree paths this maps to, spelled out.
  p = new["params"]["backbone"]
  np.testing.assert_array_equal(p["layer4_2"]["conv3"]["kernel"],
                                sd["layer4.2.conv3.weight"].transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(
      new[backbone.FROZEN_BN]["backbone"]["layer2_0"]["downsample_bn"]["mean"],
      sd["layer2.0.downsample.1.running_mean"])


def test_dcn_offsets_keep_their_init():
  sd = random_state_dict(50, 4)
  shapes = alignps_shapes(stage_with_dcn=(False, True, True, True))
  # Replicated over the 8 test devices, as the training state is.
  repl = jax.sharding.NamedSharding(jax.make_mesh((8,), ("data",)),
                                    jax.sharding.PartitionSpec())
  variables = jax.tree.map(
      lambda s: jax.device_put(np.full(s.shape, 0.25, s.dtype), repl), shapes)
  new, _ = weights.import_backbone(variables, sd, format="torchvision")
  b = new["params"]["backbone"]
  assert all(x.sharding == repl for x in jax.tree.leaves(new))
  np.testing.assert_array_equal(b["layer3_1"]["conv2"]["kernel"],
                                sd["layer3.1.conv2.weight"].transpose(
                                    2, 3, 1, 0))
  off = b["layer3_1"]["conv2"]["conv_offset"]
  assert off is variables["params"]["backbone"]["layer3_1"]["conv2"][
      "conv_offset"]
  # A trained mmdet DCN backbone carries offsets: they are imported.
  sd["layer3.1.conv2.conv_offset.weight"] = np.ones(
      (27, 32, 3, 3), np.float32)
  sd["layer3.1.conv2.conv_offset.bias"] = np.arange(27, dtype=np.float32)
  with pytest.raises(ValueError, match="conv_offset"):  # bad shape first
    weights.import_backbone(variables, sd, format="torchvision")
  sd["layer3.1.conv2.conv_offset.weight"] = np.ones((27, 16, 3, 3),
                                                    np.float32)
  new, _ = weights.import_backbone(variables, sd, format="torchvision")
  off = new["params"]["backbone"]["layer3_1"]["conv2"]["conv_offset"]
  np.testing.assert_array_equal(off["bias"], np.arange(27))
  assert np.all(np.asarray(off["kernel"]) == 1)


def test_width_mismatch_is_a_clear_error_listing_every_shape():
  sd = random_state_dict(50, 8)  # twice the model's width
  with pytest.raises(ValueError) as e:
    weights.import_backbone(alignps_shapes(), sd, format="caffe")
  msg = str(e.value)
  assert "width_multiplier=0.125" in msg and "width_multiplier=1.0" in msg
  assert "layer4.2.bn3.running_var" in msg and "layer1.0.conv1.weight" in msg
  n_file = sum(not k.endswith("num_batches_tracked") and not k.startswith(
      "fc.") for k in sd)
  assert f"{n_file} mis-shaped" in msg


def test_bad_prefix_norm_and_format_are_named():
  sd = random_state_dict(50, 4)
  shapes = alignps_shapes()
  with pytest.raises(ValueError, match="prefix.*'body'.*backbone"):
    weights.import_backbone(shapes, sd, prefix="body")
  with pytest.raises(ValueError, match="format"):
    weights.import_backbone(shapes, sd, format="tf")
  gn = alignps_shapes(backbone_norm="group")
  with pytest.raises(ValueError, match="backbone_norm='frozen'"):
    weights.import_backbone(gn, sd)
  with pytest.raises(ValueError, match=r"ResNet-18.*layer1\.0\.conv3"):
    weights.import_backbone(alignps_shapes(depth=18, width_multiplier=1 / 16),
                            sd)


# --------------------------------------------------------------------------
# Against torch itself (runs where torch is installed).
# --------------------------------------------------------------------------


def torch_resnet(depth, base, style):
  """A torch ResNet with torchvision's module names and mmdet's caffe style."""
  torch = pytest.importorskip("torch")
  nn = torch.nn

  def conv(cin, cout, k, s):
    return nn.Conv2d(cin, cout, k, s, k // 2, bias=False)

  class Block(nn.Module):

    def __init__(self, kind, cin, width, stride):
      super().__init__()
      exp = 4 if kind == "bottleneck" else 1
      if kind == "bottleneck":
        s1, s2 = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1, self.bn1 = conv(cin, width, 1, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, s2), nn.BatchNorm2d(width)
        self.conv3 = conv(width, width * 4, 1, 1)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2),
                      (self.conv3, self.bn3)]
      else:
        self.conv1 = conv(cin, width, 3, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, 1), nn.BatchNorm2d(width)
        self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
      self.downsample = None
      if stride != 1 or cin != width * exp:
        self.downsample = nn.Sequential(conv(cin, width * exp, 1, stride),
                                        nn.BatchNorm2d(width * exp))

    def forward(self, x):
      y = x
      for i, (c, b) in enumerate(self.convs):
        y = b(c(y))
        if i < len(self.convs) - 1:
          y = torch.relu(y)
      idt = x if self.downsample is None else self.downsample(x)
      return torch.relu(y + idt)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      kind, blocks = ARCH[depth]
      exp = 4 if kind == "bottleneck" else 1
      self.conv1, self.bn1 = conv(3, base, 7, 2), nn.BatchNorm2d(base)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = base
      for s, n in enumerate(blocks):
        layer = []
        for b in range(n):
          layer.append(Block(kind, cin, base * 2**s,
                             2 if (b == 0 and s > 0) else 1))
          cin = base * 2**s * exp
        setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
      self.fc = nn.Linear(cin, 10)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      feats = []
      for s in range(4):
        x = getattr(self, f"layer{s + 1}")(x)
        feats.append(x)
      return feats

  torch.manual_seed(depth)
  net = Net()
  with torch.no_grad():  # non-trivial statistics
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


@pytest.mark.parametrize("depth,base,style", [
    (18, 8, "pytorch"),
    (50, 4, "caffe"),
])
def test_features_match_torch(depth, base, style):
  torch = pytest.importorskip("torch")
  net = torch_resnet(depth, base, style)
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  tv_keys = set(random_state_dict(depth, base))
  assert set(sd) == tv_keys  # torchvision's exact key set
  fmt = "torchvision" if style == "pytorch" else "caffe"
  model, shapes = abstract_resnet(depth, base, style)
  variables, _ = weights.import_backbone(shapes, sd, format=fmt, prefix="")
  x = IMAGES["1x56x72"].astype(np.float32)
  with torch.no_grad():
    want = [f.permute(0, 2, 3, 1).double().numpy()
            for f in net(torch.from_numpy(x).permute(0, 3, 1, 2))]
  got = jax.jit(model.apply)(variables, jnp.asarray(x))
  assert_features_close(got, want)
