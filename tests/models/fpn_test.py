"""Tests for ps_jax.models.fpn (AFA neck and plain FPN)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import fpn

KEY = jax.random.key(0)
C = 8  # neck width in these tests
# C3, C4, C5 of a 64 x 96 image with backbone widths 16/32/64, plus an odd
# pyramid (C3 of a 100 x 70 image) where nearest upsampling is not a repeat.
SIZES = {"even": [(8, 12), (4, 6), (2, 3)], "odd": [(13, 9), (7, 5), (4, 3)]}


def _inputs(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
          for (h, w), c in zip(sizes, (16, 32, 64))]


def _random_params(neck, feats, seed):
  shapes = jax.eval_shape(neck.init, KEY, feats)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if "conv_offset" in jax.tree_util.keystr(path):
      return jnp.zeros(s.shape, s.dtype)
    if path[-1].key == "kernel":
      std = 1.0 / np.sqrt(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(0, std, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_conv(x, p, stride=1):
  k = p["kernel"]
  kh = k.shape[0]
  pad = kh // 2
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kh) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, k.shape[-1]))
  for i in range(kh):
    for j in range(kh):
      out += x[:, i:i + stride * (ho - 1) + 1:stride,
               j:j + stride * (wo - 1) + 1:stride] @ k[i, j]
  return out + p.get("bias", 0.0)


def _np_upsample(x, h, w):
  rows = [int(np.floor(r * x.shape[1] / h)) for r in range(h)]
  cols = [int(np.floor(c * x.shape[2] / w)) for c in range(w)]
  return x[:, rows][:, :, cols]


def _np_neck(feats, p, fuse, num_outs=5, relu_before_extra=True):
  """Reference: laterals, top-down fusion, output convs, P6/P7 on P5 out."""
  lat = [_np_conv(f, p[f"lateral_{i}"]) for i, f in enumerate(feats)]
  for i in range(len(lat) - 1, 0, -1):
    up = _np_upsample(lat[i], *lat[i - 1].shape[1:3])
    lat[i - 1] = (np.concatenate([lat[i - 1], up], -1) if fuse == "concat"
                  else lat[i - 1] + up)
  outs = [_np_conv(x, p[f"fpn_{i}"]) for i, x in enumerate(lat)]
  for i in range(len(feats), num_outs):
    src = outs[-1]
    if i > len(feats) and relu_before_extra:
      src = np.maximum(src, 0)
    outs.append(_np_conv(src, p[f"fpn_{i}"], stride=2))
  return outs


def _as_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def test_upsample_nearest_matches_torch_rule():
  x = jnp.arange(3 * 2, dtype=jnp.float32).reshape(1, 3, 2, 1)
  y = fpn.upsample_nearest(x, 5, 4)
  # torch nearest with size=(5, 4): rows floor(r * 3 / 5) = 0,0,1,1,2 and
  # columns floor(c * 2 / 4) = 0,0,1,1.
  want = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3],
                   [4, 4, 5, 5]], np.float32)
  np.testing.assert_array_equal(np.asarray(y)[0, ..., 0], want)


@pytest.mark.parametrize("fuse,dcn,lateral_kernel", [
    ("concat", True, 3), ("add", False, 1)])
def test_param_shapes(fuse, dcn, lateral_kernel):
  neck = fpn.AFANeck(out_channels=C, fuse=fuse, use_dcn_lateral=dcn,
                     use_dcn_output=dcn, lateral_kernel=lateral_kernel)
  p = jax.eval_shape(neck.init, KEY, _inputs(SIZES["even"]))["params"]
  assert sorted(p) == sorted([f"lateral_{i}" for i in range(3)]
                             + [f"fpn_{i}" for i in range(5)])
  for i, cin in enumerate((16, 32, 64)):
    assert p[f"lateral_{i}"]["kernel"].shape[:3] == (
        lateral_kernel, lateral_kernel, cin)
    # Concatenation: P3's output conv sees 3C channels, P4's 2C, P5's C.
    width = (3 - i) * C if fuse == "concat" else C
    assert p[f"fpn_{i}"]["kernel"].shape == (3, 3, width, C)
    # mmcv's DeformConv2dPack has no bias; plain convs do.
    assert ("bias" in p[f"fpn_{i}"]) is (not dcn)
    assert ("conv_offset" in p[f"fpn_{i}"]) is dcn
    if dcn:  # DCN v1: 2 * 9 offsets, no mask
      assert p[f"fpn_{i}"]["conv_offset"]["kernel"].shape[-1] == 18
  for i in (3, 4):
    assert p[f"fpn_{i}"]["kernel"].shape == (3, 3, C, C)
    assert "bias" in p[f"fpn_{i}"]


@pytest.mark.parametrize("fuse", ["concat", "add"])
@pytest.mark.parametrize("sizes", ["even", "odd"])
def test_plain_neck_matches_numpy(fuse, sizes):
  neck = fpn.AFANeck(out_channels=C, fuse=fuse, use_dcn_lateral=False,
                     use_dcn_output=False,
                     lateral_kernel=1 if fuse == "add" else 3)
  feats = _inputs(SIZES[sizes], seed=1)
  p = _random_params(neck, feats, seed=2)
  got = jax.jit(neck.apply)({"params": p}, feats)
  want = _np_neck([np.asarray(f, np.float64) for f in feats], _as_np(p),
                  fuse)
  assert len(got) == 5
  for g, w in zip(got, want):
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4)
  h, w_ = SIZES[sizes][2]
  assert got[3].shape[1:3] == (-(-h // 2), -(-w_ // 2))
  assert got[4].shape[1:3] == (-(-h // 4), -(-w_ // 4))


def test_afa_with_zero_offsets_equals_plain_convs_and_eval_gives_p3():
  # DCN v1 with zero offsets samples the regular grid: the AFA neck equals
  # its plain-conv twin with the same kernels (and zero conv biases).
  feats = _inputs(SIZES["odd"], seed=3)
  afa = fpn.AFANeck(out_channels=C)
  plain = fpn.AFANeck(out_channels=C, use_dcn_lateral=False,
                      use_dcn_output=False)
  p_plain = _random_params(plain, feats, seed=4)
  for name in p_plain:
    if name.startswith("lateral_") or name in ("fpn_0", "fpn_1", "fpn_2"):
      p_plain[name]["bias"] = jnp.zeros_like(p_plain[name]["bias"])
  p_afa = _random_params(afa, feats, seed=5)  # offsets zero
  for name in p_afa:
    p_afa[name]["kernel"] = p_plain[name]["kernel"]
    if "bias" in p_afa[name]:
      p_afa[name]["bias"] = p_plain[name]["bias"]
  apply = jax.jit(afa.apply, static_argnames="num_levels")
  got = apply({"params": p_afa}, feats)
  want = jax.jit(plain.apply)({"params": p_plain}, feats)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-5)
  # Prediction computes only P3, identical to the training P3.
  p3 = apply({"params": p_afa}, feats, num_levels=1)
  assert len(p3) == 1
  np.testing.assert_allclose(np.asarray(p3[0]), np.asarray(got[0]),
                             rtol=1e-6, atol=1e-6)


def test_init_builds_every_level_even_when_asked_for_one():
  feats = _inputs(SIZES["even"])
  neck = fpn.AFANeck(out_channels=C)
  p = jax.eval_shape(functools.partial(neck.init, num_levels=1), KEY,
                     feats)["params"]
  assert {"fpn_3", "fpn_4", "fpn_2"} <= set(p)


def test_xavier_init_for_plain_convs():
  feats = _inputs(SIZES["even"])
  neck = fpn.AFANeck(out_channels=64, use_dcn_lateral=False,
                     use_dcn_output=False)
  p = jax.jit(neck.init)(jax.random.key(1, impl="rbg"), feats)["params"]
  k = np.asarray(p["fpn_3"]["kernel"])  # 3x3x64x64
  limit = np.sqrt(6.0 / (9 * 64 + 9 * 64))
  assert np.abs(k).max() <= limit
  assert abs(k.std() - limit / np.sqrt(3)) < 0.1 * limit
  assert np.all(np.asarray(p["fpn_3"]["bias"]) == 0)


@pytest.mark.parametrize("offset_init", ["zeros", "xavier"])
def test_offset_init_of_the_deformable_convs(offset_init):
  feats = _inputs(SIZES["even"])
  neck = fpn.AFANeck(out_channels=64, offset_init=offset_init)
  p = jax.jit(neck.init)(jax.random.key(1, impl="rbg"), feats)["params"]
  # Every deformable conv of the neck has a 3x3 offset branch with
  # 2 * 3 * 3 = 18 outputs (DCN v1, one offset group).
  cins = {"lateral_0": 16, "lateral_1": 32, "lateral_2": 64,
          "fpn_0": 3 * 64, "fpn_1": 2 * 64, "fpn_2": 64}
  for name, cin in cins.items():
    offset = p[name]["conv_offset"]
    k = np.asarray(offset["kernel"])
    assert k.shape == (3, 3, cin, 18), name
    assert np.all(np.asarray(offset["bias"]) == 0), name
    if offset_init == "zeros":
      assert np.all(k == 0), name
    else:
      # torch's xavier_uniform_ on an [18, cin, 3, 3] weight:
      # U(+-sqrt(6 / (fan_in + fan_out))), fan_in = 9 cin, fan_out = 9 * 18.
      limit = np.sqrt(6.0 / (9 * cin + 9 * 18))
      assert np.abs(k).max() <= limit, name
      assert abs(k.std() - limit / np.sqrt(3)) < 0.1 * limit, name
      assert abs(k.mean()) < 0.1 * limit, name
  # The main deformable kernels do not depend on the option.
  ref = jax.jit(fpn.AFANeck(out_channels=64).init)(
      jax.random.key(1, impl="rbg"), feats)["params"]
  np.testing.assert_array_equal(p["fpn_0"]["kernel"], ref["fpn_0"]["kernel"])


@pytest.mark.parametrize("kwargs,field", [
    (dict(fuse="max"), "fuse"), (dict(extra_convs_on="c6"), "extra_convs_on"),
    (dict(num_outs=2), "num_outs"), (dict(offset_init="ones"), "offset_init")])
def test_bad_config_names_the_field(kwargs, field):
  neck = fpn.AFANeck(out_channels=C, **kwargs)
  with pytest.raises(ValueError, match=field):
    jax.eval_shape(neck.init, KEY, _inputs(SIZES["even"]))
