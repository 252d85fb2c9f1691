"""Tests for ps_jax.models.heads (FCOS head with AlignPS re-ID read-out)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.models import heads

KEY = jax.random.key(0)
STRIDES = (8, 16)


def _feats(c=8, sizes=((6, 5), (3, 3)), b=2, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(0.5, 1.0, size=(b, h, w, c)), jnp.float32)
          for h, w in sizes]


def _random_params(head, feats, seed, **kwargs):
  shapes = jax.eval_shape(
      functools.partial(head.init, strides=STRIDES[:len(feats)], **kwargs),
      KEY, feats)["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if "conv_offset" in jax.tree_util.keystr(path):
      return jnp.zeros(s.shape, s.dtype)
    if name.startswith("scale_"):
      return jnp.asarray(rng.uniform(0.5, 2.0), s.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    if name == "kernel":
      std = 1.0 / np.sqrt(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(0, std, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_conv3(x, p):
  k = p["kernel"]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (k.shape[-1],))
  for i in range(3):
    for j in range(3):
      out += xp[:, i:i + h, j:j + w] @ k[i, j]
  return out + p.get("bias", 0.0)


def _np_gn(x, p, groups, eps=1e-5):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  g = (g - mean) / np.sqrt(var + eps)
  return g.reshape(b, h, w, c) * p["scale"] + p["bias"]


def _np_head(feats, p, num_convs, groups, norm_on_bbox=True):
  feats = list(feats)
  feats[0] = feats[0] - feats[0].mean(axis=(1, 2), keepdims=True)
  outs = {k: [] for k in ("cls_logits", "box_ltrb", "ctr_logits",
                          "reid_emb")}
  for level, x in enumerate(feats):
    cls_f, reg_f = x, x
    for i in range(num_convs):
      cls_f = np.maximum(_np_gn(_np_conv3(cls_f, p[f"cls_conv_{i}"]),
                                p[f"cls_gn_{i}"], groups), 0)
      reg_f = np.maximum(_np_gn(_np_conv3(reg_f, p[f"reg_conv_{i}"]),
                                p[f"reg_gn_{i}"], groups), 0)
    reg = p[f"scale_{level}"] * _np_conv3(reg_f, p["conv_reg"])
    box = np.maximum(reg, 0) if norm_on_bbox else np.exp(reg)
    b, h, w, _ = x.shape
    flat = lambda a: a.reshape(b, h * w, a.shape[-1])
    outs["cls_logits"].append(flat(_np_conv3(cls_f, p["conv_cls"])))
    outs["box_ltrb"].append(flat(box))
    outs["ctr_logits"].append(flat(_np_conv3(reg_f, p["conv_centerness"])))
    outs["reid_emb"].append(flat(x))
  return {k: np.concatenate(v, axis=1) for k, v in outs.items()}


def _as_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("norm_on_bbox", [True, False])
def test_head_matches_numpy_reference(norm_on_bbox):
  head = heads.FCOSHead(num_convs=2, dcn_on_last_conv=False,
                        norm_on_bbox=norm_on_bbox)
  feats = _feats(c=8, seed=1)
  p = _random_params(head, feats, seed=2)
  apply = jax.jit(head.apply, static_argnums=2)
  out, feature_hw = apply({"params": p}, feats, STRIDES)
  assert feature_hw == [(6, 5), (3, 3)]
  # gcd(32, 8) = 8 groups: GroupNorm per channel at this tiny width.
  want = _np_head([np.asarray(f, np.float64) for f in feats], _as_np(p), 2,
                  groups=8, norm_on_bbox=norm_on_bbox)
  for k, w in want.items():
    assert out[k].shape == w.shape and out[k].dtype == jnp.float32, k
    np.testing.assert_allclose(np.asarray(out[k]), w, rtol=1e-4, atol=1e-4,
                               err_msg=k)


def test_shapes_with_dcn_towers_and_reid_projection():
  head = heads.FCOSHead(reid_dim=5)
  feats = _feats(c=16)
  v = jax.eval_shape(head.init, KEY, feats, STRIDES)
  p = v["params"]
  for tower in ("cls", "reg"):
    assert "conv_offset" in p[f"{tower}_conv_3"]
    assert p[f"{tower}_conv_3"]["conv_offset"]["kernel"].shape[-1] == 27
    assert "conv_offset" not in p[f"{tower}_conv_2"]
    assert "bias" in p[f"{tower}_conv_0"]  # AlignPS conv_bias=True
  assert p["reid_proj"]["kernel"].shape == (1, 1, 16, 5)
  assert set(k for k in p if k.startswith("scale_")) == {"scale_0",
                                                         "scale_1"}
  out, _ = jax.eval_shape(head.apply, v, feats, STRIDES)
  n = 6 * 5 + 3 * 3
  assert out["cls_logits"].shape == (2, n, 1)
  assert out["box_ltrb"].shape == (2, n, 4)
  assert out["ctr_logits"].shape == (2, n, 1)
  assert out["reid_emb"].shape == (2, n, 5)


def test_init_follows_mmdet():
  head = heads.FCOSHead(num_convs=2, dcn_on_last_conv=False)
  feats = _feats(c=64, sizes=((4, 4),), b=1)
  p = jax.jit(head.init, static_argnums=2)(
      jax.random.key(3, impl="rbg"), feats, STRIDES[:1])["params"]
  np.testing.assert_allclose(np.asarray(p["conv_cls"]["bias"]),
                             [-math.log(99.0)], rtol=1e-6)
  assert float(p["scale_0"]) == 1.0
  k = np.asarray(p["cls_conv_0"]["kernel"])
  assert abs(k.std() - 0.01) < 0.001 and abs(k.mean()) < 0.001
  assert np.all(np.asarray(p["conv_reg"]["bias"]) == 0)


def test_subtract_spatial_mean_full_map_and_valid_region():
  rng = np.random.default_rng(4)
  x = rng.normal(2.0, 1.0, size=(2, 5, 6, 3)).astype(np.float32)
  y = np.asarray(heads.subtract_spatial_mean(jnp.asarray(x)))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y, x - x.mean(axis=(1, 2), keepdims=True),
                             atol=1e-5)
  valid = np.array([[3, 4], [5, 6]], np.int32)
  y = np.asarray(heads.subtract_spatial_mean(jnp.asarray(x),
                                             jnp.asarray(valid)))
  for b, (h, w) in enumerate(valid):
    want = x[b] - x[b, :h, :w].mean(axis=(0, 1))
    np.testing.assert_allclose(y[b], want, atol=1e-5)
    np.testing.assert_allclose(y[b, :h, :w].mean(axis=(0, 1)), 0.0,
                               atol=1e-5)


def test_reid_is_the_mean_subtracted_p3_feature_and_raw_higher_levels():
  head = heads.FCOSHead(num_convs=1, dcn_on_last_conv=False)
  feats = _feats(c=8, seed=5)
  p = _random_params(head, feats, seed=6)
  out, _ = jax.jit(head.apply, static_argnums=2)({"params": p}, feats,
                                                 STRIDES)
  emb = np.asarray(out["reid_emb"])
  p3 = np.asarray(feats[0]).reshape(2, 30, 8)
  np.testing.assert_allclose(emb[:, :30], p3 - p3.mean(axis=1,
                                                       keepdims=True),
                             atol=1e-5)
  np.testing.assert_allclose(emb[:, :30].mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(emb[:, 30:],
                             np.asarray(feats[1]).reshape(2, 9, 8),
                             atol=1e-6)


def test_valid_region_mean_uses_ceil_of_image_over_stride():
  head = heads.FCOSHead(num_convs=1, dcn_on_last_conv=False,
                        sub_mean_valid_only=True)
  feats = _feats(c=8, sizes=((6, 5),), seed=7)
  p = _random_params(head, feats, seed=8, image_hw=jnp.ones((2, 2), int))
  image_hw = jnp.asarray([[33, 17], [48, 40]], jnp.int32)  # cells 5x3, 6x5
  out, _ = jax.jit(head.apply, static_argnums=2)(
      {"params": p}, feats, STRIDES[:1], image_hw=image_hw)
  x = np.asarray(feats[0])
  emb = np.asarray(out["reid_emb"]).reshape(2, 6, 5, 8)
  np.testing.assert_allclose(emb[0], x[0] - x[0, :5, :3].mean(axis=(0, 1)),
                             atol=1e-5)
  np.testing.assert_allclose(emb[1], x[1] - x[1].mean(axis=(0, 1)),
                             atol=1e-5)
  with pytest.raises(ValueError, match="image_hw"):
    head.apply({"params": p}, feats, STRIDES[:1])


@pytest.mark.parametrize("batch_pad", [False, True])
def test_pad32_region_mean_is_the_reference_padding(batch_pad):
  head = heads.FCOSHead(num_convs=1, dcn_on_last_conv=False,
                        sub_mean_region="image_pad32")
  feats = _feats(c=8, sizes=((8, 10),), seed=9)  # a 64 x 80 canvas
  p = _random_params(head, feats, seed=10, image_hw=jnp.ones((2, 2), int))
  image_hw = jnp.asarray([[33, 17], [20, 40]], jnp.int32)
  out, _ = jax.jit(head.apply, static_argnums=(2, 4))(
      {"params": p}, feats, STRIDES[:1], image_hw, batch_pad)
  x = np.asarray(feats[0])
  emb = np.asarray(out["reid_emb"]).reshape(2, 8, 10, 8)
  # Padded to multiples of 32: 33 x 17 -> 64 x 32 (8 x 4 cells), 20 x 40 ->
  # 32 x 64 (4 x 8 cells); a training batch pads both to 64 x 64 (8 x 8).
  cells = [(8, 8), (8, 8)] if batch_pad else [(8, 4), (4, 8)]
  for b, (h, w) in enumerate(cells):
    np.testing.assert_allclose(emb[b], x[b] - x[b, :h, :w].mean(axis=(0, 1)),
                               atol=1e-5)


def test_mean_region_cells_by_hand():
  hw = jnp.asarray([[900, 1500], [844, 1500], [1, 1]], jnp.int32)
  # 900 x 1500 -> 928 x 1504 -> 116 x 188 stride-8 cells; a 1500 x 844
  # PRW frame -> 864 x 1504 (108 rows, the reference's 20 padded pixels).
  np.testing.assert_array_equal(
      heads.mean_region_cells(hw, 8, "image_pad32"),
      [[116, 188], [108, 188], [4, 4]])
  np.testing.assert_array_equal(
      heads.mean_region_cells(hw, 8, "image_pad32", batch_pad=True),
      [[116, 188]] * 3)
  np.testing.assert_array_equal(heads.mean_region_cells(hw, 8, "image"),
                                [[113, 188], [106, 188], [1, 1]])
  with pytest.raises(ValueError, match="sub_mean_region"):
    heads.FCOSHead(sub_mean_region="padded").mean_region


def test_mismatched_levels_and_strides_raise():
  head = heads.FCOSHead(num_convs=1, dcn_on_last_conv=False)
  with pytest.raises(ValueError, match="strides"):
    jax.eval_shape(head.init, KEY, _feats(), (8,))
