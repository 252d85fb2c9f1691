"""Tests for ps_jax.pretrained (weight files and init_from).

The conversion of state dicts is tested in tests/models/weights_test.py; here
the files: .npz and .safetensors round trips, clear errors naming the file,
.pth through torch (skipped without torch) and the training-time entry point
`init_backbone_from_file`, with a small torchvision-named ResNet-18.
"""
import functools
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from ps_jax.models import AlignPS
from ps_jax import pretrained
from ps_jax.models import weights

KEY = jax.random.key(0)
# AlignPS on a ResNet-18 of base width 4 (width_multiplier = 4 / 64).
TINY = dict(depth=18, width_multiplier=1 / 16, neck_channels=8,
            head_norm_groups=4, reid_dim=None)


def resnet18_state_dict(base=4, seed=0):
  """torchvision ResNet-18 keys with random weights, widths base/64 of it."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv_bn(conv, bn, cout, cin, k):
    sd[conv + ".weight"] = rng.normal(0, 0.1, (cout, cin, k, k)).astype(
        np.float32)
    sd[bn + ".weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[bn + ".bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[bn + ".running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[bn + ".running_var"] = rng.uniform(0.5, 2.0, cout).astype(np.float32)

  conv_bn("conv1", "bn1", base, 3, 7)
  cin = base
  for s in range(4):
    width = base * 2**s
    for b in range(2):
      p = f"layer{s + 1}.{b}."
      conv_bn(p + "conv1", p + "bn1", width, cin, 3)
      conv_bn(p + "conv2", p + "bn2", width, width, 3)
      if b == 0 and s > 0:
        conv_bn(p + "downsample.0", p + "downsample.1", width, cin, 1)
      cin = width
  return sd


@functools.lru_cache(maxsize=None)
def _alignps(overrides):
  model = AlignPS(**dict(TINY, **dict(overrides)))
  shapes = jax.eval_shape(functools.partial(model.init, train=True), KEY,
                          jnp.zeros((1, 64, 64, 3)))
  return model, shapes


def alignps(**overrides):
  """(model, abstract variables); cached: nothing here mutates them."""
  return _alignps(tuple(sorted(overrides.items())))


# --------------------------------------------------------------------------
# load_state_dict.
# --------------------------------------------------------------------------


def test_npz_and_safetensors_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      "a.weight": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
      "b.half": rng.normal(size=(5,)).astype(np.float16),
      "c.bf16": rng.normal(size=(2, 3)).astype(jnp.bfloat16),
      "d.count": np.array(3, np.int64),
      "e.empty": np.zeros((0, 4), np.float32),
  }
  safetensors_numpy.save_file(arrays, os.fspath(tmp_path / "w.safetensors"))
  np.savez(tmp_path / "w.npz", **{k: v for k, v in arrays.items()
                                  if k != "c.bf16"})
  for name in ("w.safetensors", "w.npz"):
    got = pretrained.load_state_dict(tmp_path / name)
    assert set(got) == set(arrays) - ({"c.bf16"} if name == "w.npz" else set())
    for k, v in got.items():
      assert v.dtype == arrays[k].dtype and v.shape == arrays[k].shape, k
      np.testing.assert_array_equal(v.astype(np.float64),
                                    arrays[k].astype(np.float64))


def test_file_errors_name_the_file(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    pretrained.load_state_dict(tmp_path / "nope.npz")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip file at all")
  with pytest.raises(ValueError, match="bad.npz"):
    pretrained.load_state_dict(bad)
  other = tmp_path / "w.h5"
  other.write_bytes(b"x")
  with pytest.raises(ValueError, match=r"w\.h5.*\.npz"):
    pretrained.load_state_dict(other)
  good = tmp_path / "good.safetensors"
  safetensors_numpy.save_file({"x": np.ones((4, 4), np.float32)},
                              os.fspath(good))
  data = good.read_bytes()
  (n,) = struct.unpack("<Q", data[:8])
  cases = {
      "truncated": data[:-8],
      "hugeheader": struct.pack("<Q", 10**12) + data[8:],
      "notjson": data[:8] + b"#" + data[9:],
      "badoffsets": data[:8] + data[8:8 + n].replace(b"[0,64]", b"[0,60]")
                    + data[8 + n:],
      "tiny": b"abc",
  }
  assert cases["badoffsets"] != data
  for name, blob in cases.items():
    p = tmp_path / f"{name}.safetensors"
    p.write_bytes(blob)
    with pytest.raises(ValueError, match=f"{name}.safetensors"):
      pretrained.load_state_dict(p)
  # .pth without torch: a clear ImportError with the .npz conversion.
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"x")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"w\.pth.*needs torch.*\.npz") as e:
    pretrained.load_state_dict(pth)
  assert pretrained.PTH_TO_NPZ in str(e.value)


def test_pth_is_read_and_unwrapped(tmp_path):
  torch = pytest.importorskip("torch")
  sd = {"conv.weight": torch.randn(3, 2, 1, 1), "n": torch.tensor(5),
        "b": torch.randn(4).bfloat16()}
  for wrapper in (None, "state_dict", "model"):
    path = tmp_path / f"{wrapper}.pth"
    torch.save(sd if wrapper is None else {wrapper: sd, "meta": {}}, path)
    got = pretrained.load_state_dict(path)
    assert set(got) == set(sd)
    for k, t in sd.items():
      np.testing.assert_array_equal(got[k], t.float().numpy()
                                    if k == "b" else t.numpy())
    assert got["b"].dtype == np.float32
  torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "odd.pth")
  with pytest.raises(ValueError, match=r"odd\.pth.*step"):
    pretrained.load_state_dict(tmp_path / "odd.pth")


def test_safetensors_written_by_torch_are_read(tmp_path):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("safetensors.torch")
  tensors = {"w": torch.randn(3, 4, 5), "h": torch.randn(7).half(),
             "b": torch.randn(2, 2).bfloat16(), "n": torch.tensor(5)}
  st.save_file(tensors, os.fspath(tmp_path / "t.safetensors"))
  got = pretrained.load_state_dict(tmp_path / "t.safetensors")
  assert set(got) == set(tensors)
  for k, t in tensors.items():
    np.testing.assert_array_equal(got[k].astype(np.float64),
                                  t.double().numpy())


# --------------------------------------------------------------------------
# init_backbone_from_file.
# --------------------------------------------------------------------------


def test_init_backbone_from_file_as_the_training_loop_calls_it(tmp_path):
  sd = resnet18_state_dict(seed=9)
  path = tmp_path / "r18.npz"
  np.savez(path, **sd)
  model, shapes = alignps(style="pytorch")
  new, norm = pretrained.init_backbone_from_file(
      shapes, path, style=model.style, backbone_norm=model.backbone_norm,
      data_normalization="imagenet_rgb")
  assert norm == "imagenet_rgb"
  want, _ = weights.import_backbone(shapes, sd, format="torchvision")
  jax.tree.map(np.testing.assert_array_equal, new, want)
  np.testing.assert_array_equal(new["params"]["backbone"]["bn1"]["scale"],
                                sd["bn1.weight"])
  # The same file through .safetensors, caffe style, no normalization check.
  st_path = tmp_path / "r18.safetensors"
  safetensors_numpy.save_file(sd, os.fspath(st_path))
  new, norm = pretrained.init_backbone_from_file(
      shapes, st_path, style="caffe", backbone_norm="frozen")
  assert norm == "caffe_bgr"
  jax.tree.map(np.testing.assert_array_equal, new, want)


def test_init_backbone_from_file_without_a_path_is_a_no_op():
  _, shapes = alignps()
  for path in ("", None):
    same, norm = pretrained.init_backbone_from_file(
        shapes, path, style="caffe", backbone_norm="group")
    assert same is shapes and norm is None


def test_init_backbone_from_file_bare_resnet(tmp_path):
  from ps_jax.models import backbone  # pylint: disable=g-import-not-at-top
  sd = resnet18_state_dict()
  path = tmp_path / "r18.npz"
  np.savez(path, **sd)
  net = backbone.ResNet(depth=18, width_multiplier=1 / 16, style="pytorch")
  shapes = jax.eval_shape(net.init, KEY, jnp.zeros((1, 64, 64, 3)))
  new, _ = pretrained.init_backbone_from_file(
      shapes, path, style="pytorch", backbone_norm="frozen", prefix="")
  np.testing.assert_array_equal(new["params"]["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))


def test_init_backbone_from_file_errors(tmp_path):
  sd = resnet18_state_dict()
  path = tmp_path / "r18.npz"
  np.savez(path, **sd)
  _, shapes = alignps()
  with pytest.raises(ValueError,
                     match=r"r18\.npz.*data.normalization='imagenet_rgb'.*"
                     "'caffe_bgr'"):
    pretrained.init_backbone_from_file(
        shapes, path, style="pytorch", backbone_norm="frozen",
        data_normalization="caffe_bgr")
  with pytest.raises(ValueError, match=r"r18\.npz.*backbone_norm='frozen'"):
    pretrained.init_backbone_from_file(shapes, path, style="caffe",
                                       backbone_norm="group")
  with pytest.raises(ValueError, match=r"r18\.npz.*style.*'tf'"):
    pretrained.init_backbone_from_file(shapes, path, style="tf",
                                       backbone_norm="frozen")
  model, wide = alignps(width_multiplier=1 / 8)
  with pytest.raises(ValueError, match=r"^init_from=.*r18\.npz.*width"):
    pretrained.init_backbone_from_file(wide, path, style=model.style,
                                       backbone_norm=model.backbone_norm)
  del sd["layer1.0.conv1.weight"]
  np.savez(tmp_path / "broken.npz", **sd)
  with pytest.raises(ValueError,
                     match=r"^init_from=.*broken\.npz.*layer1\.0\.conv1"):
    pretrained.init_backbone_from_file(shapes, tmp_path / "broken.npz",
                                       style="caffe", backbone_norm="frozen")
  np.savez(tmp_path / "other.npz", w=np.zeros(3, np.float32))
  with pytest.raises(ValueError, match=r"^init_from=.*other\.npz.*no ResNet"):
    pretrained.init_backbone_from_file(shapes, tmp_path / "other.npz",
                                       style="caffe", backbone_norm="frozen")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    pretrained.init_backbone_from_file(shapes, tmp_path / "missing.npz",
                                       style="caffe", backbone_norm="frozen")


def test_oim_imports_one_resnet_into_its_trunk_and_res5_head(tmp_path):
  """The OIM network splits the ResNet (stem..res4 in the trunk, res5 in
  the RoI head); a file's layer4 lands in the head, the rest in the trunk,
  each leaf equal to a whole ResNet's import of the same file."""
  from ps_jax import systems  # pylint: disable=import-outside-toplevel
  from ps_jax.models.backbone import ResNet  # pylint: disable=import-outside-toplevel
  sd = resnet18_state_dict(seed=4)
  path = tmp_path / "r18.npz"
  np.savez(path, **sd)
  system = systems.build("oim", num_ids=3, model=dict(
      depth=18, width_multiplier=1 / 16, rpn_channels=4, roi_size=4,
      reid_dim=8), loss={}, predict={})
  variables, _ = jax.eval_shape(system.init, KEY, jnp.zeros((1, 64, 64, 3)))
  new = system.init_from(variables, str(path), normalization="imagenet_rgb")
  whole = jax.eval_shape(ResNet(depth=18, width_multiplier=1 / 16).init, KEY,
                         jnp.zeros((1, 64, 64, 3)))
  want, _ = weights.import_backbone(whole, sd, format="torchvision",
                                    prefix="")
  for collection in ("params", "frozen_bn"):
    got = dict(new[collection]["backbone"], **new[collection]["res5"])
    assert set(new[collection]["res5"]) == {"layer4_0", "layer4_1"}
    assert "layer4_0" not in new[collection]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, got, want[collection])
  # The RPN and the heads keep their initial values.
  assert new["params"]["rpn_conv"] is variables["params"]["rpn_conv"]
  with pytest.raises(ValueError, match="init_from=.*normalization"):
    system.init_from(variables, str(path), normalization="caffe_bgr")
