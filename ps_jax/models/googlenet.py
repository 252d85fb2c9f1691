"""GoogLeNet (Inception v1) in Flax linen, and torchvision's weights for it.

The network is torchvision's `googlenet` as released with ImageNet weights
(`googlenet-1378be20.pth`, ported from TensorFlow), written for NHWC:

  stage        module(s)                            out channels (width 1)
  stem         conv1 7x7/2 (pad 3) -> maxpool 3/2    64
               conv2 1x1 -> conv3 3x3 (pad 1)        64, 192
               maxpool 3/2                           192
  inception3   3a, 3b -> maxpool 3/2                 256, 480
  inception4   4a, 4b, 4c, 4d, 4e -> maxpool 2/2     512, 512, 512, 528, 832
  inception5   5a, 5b                                832, 1024
  classifier   global average pool -> fc             num_classes

Conventions and facts of torchvision's model that matter for its weights:
  * Every conv is a "BasicConv2d": conv without bias -> batch norm with
    eps = 1e-3 (not torch's default 1e-5) -> ReLU. Here that is `BasicConv`
    with submodules `conv` and `bn`; `norm="frozen"` makes `bn` a
    `FrozenBatchNorm` (statistics in the `FROZEN_BN` collection, as the
    ResNets of `ps_jax.models.backbone`), so imported weights give
    torchvision's eval-mode numbers.
  * An inception block concatenates, on channels, four branches:
      branch1    1x1 conv                                  ch1x1
      branch2    1x1 conv (ch3x3red) -> 3x3 conv           ch3x3
      branch3    1x1 conv (ch5x5red) -> 3x3 conv           ch5x5
      branch4    3x3/1 max pool (pad 1) -> 1x1 conv        pool_proj
    branch3 is the paper's 5x5 branch, but torchvision's module (and hence
    its weight file) has a 3x3 kernel there; we follow the file.
  * Every max pool uses torch's `ceil_mode=True` arithmetic: output size
    ceil((H + 2p - k) / s) + 1, minus one if the last window would start in
    the right padding (`pool_output_size`). A 224 input gives 7x7 at
    inception5b, 256x128 gives 8x4.
  * `transform_input=True` re-normalises an input normalised with the
    ImageNet mean / std (`imagenet_rgb` in ps_jax.data) to (x - 0.5) / 0.5 per
    channel, the scale the TensorFlow weights were trained on. torchvision
    switches it on when it loads the pretrained weights, so use it with them.
  * The auxiliary classifiers (aux1 after 4a, aux2 after 4d) are not built:
    they only serve training, and torchvision drops them from the pretrained
    model (the file's `aux1.*` / `aux2.*` tensors were never trained).
  * No dropout before `fc`: it is the identity at inference.

Variable names mirror torchvision's state-dict keys, with a Sequential's
`.{i}.` written `_{i}` (as `ResNet` writes `layer1.0` as `layer1_0`):
    params/conv1/conv/kernel              <- conv1.conv.weight (OIHW -> HWIO)
    params/conv1/bn/{scale,bias}          <- conv1.bn.{weight,bias}
    frozen_bn/conv1/bn/{mean,var}         <- conv1.bn.running_{mean,var}
    params/inception3a/branch1/conv/kernel
                                          <- inception3a.branch1.conv.weight
    params/inception3a/branch2_1/bn/scale <- inception3a.branch2.1.bn.weight
    params/inception4e/branch4_1/conv/kernel
                                          <- inception4e.branch4.1.conv.weight
    params/fc/{kernel,bias}               <- fc.{weight (transposed),bias}
(branch4.0 is the parameter-free max pool). `num_batches_tracked`, `aux1.*`
and `aux2.*` are ignored, `fc.*` too when the model has no classifier.

Parameter counts (params collection; BN scale and bias counted, as torch
does, running statistics not): 6,624,904 with a 1000-way classifier, equal to
torchvision's `googlenet(aux_logits=False)`; 5,599,904 without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ps_jax.models.backbone import FROZEN_BN
# pylint: disable-next=protected-access
from ps_jax.models.backbone import _norm_layer
from ps_jax.models.backbone import conv_kernel_init
from ps_jax.models import weights

Array = jax.Array
Dtype = Any

BN_EPS = 1e-3  # torchvision BasicConv2d's BatchNorm2d(eps=0.001).
NORMALIZATION = "imagenet_rgb"  # what torchvision's weights expect as input.
# transform_input: imagenet-normalised (x - mean) / std -> (x - 0.5) / 0.5.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Inception blocks at width 1: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5,
# pool_proj), in network order; the block's output is ch1x1 + ch3x3 + ch5x5
# + pool_proj channels.
INCEPTION = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
# Max pools (kernel, stride) after these modules; all ceil_mode, no padding.
_POOL_AFTER = {"conv1": (3, 2), "conv3": (3, 2), "inception3b": (3, 2),
               "inception4e": (2, 2)}


def scaled(channels: int, width_multiplier: float) -> int:
  """`channels * width_multiplier` rounded to an int, at least 1."""
  return max(1, int(round(channels * width_multiplier)))


def out_channels(width_multiplier: float = 1.0) -> int:
  """Channels of the inception5b feature map (1024 at width 1)."""
  b1, _, b2, _, b3, b4 = INCEPTION["inception5b"]
  return sum(scaled(c, width_multiplier) for c in (b1, b2, b3, b4))


def pool_output_size(size: int, kernel: int, stride: int, padding: int = 0,
                     ceil_mode: bool = True) -> int:
  """Output length of torch's MaxPool2d along one axis.

  floor (or, with `ceil_mode`, ceil) of (size + 2 * padding - kernel) /
  stride, plus one; in ceil mode a last window that would start in the right
  padding is dropped (torch's rule).

  Raises:
    ValueError: the input is too small to give one output.
  """
  span = size + 2 * padding - kernel
  out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
  if ceil_mode and (out - 1) * stride >= size + padding:
    out -= 1
  if out < 1:
    raise ValueError(f"max pool {kernel}/{stride} (pad {padding}): input "
                     f"length {size} is too small.")
  return out


def max_pool_ceil(x: Array, kernel: int, stride: int, padding: int = 0
                  ) -> Array:
  """torch `MaxPool2d(kernel, stride, padding, ceil_mode=True)` on NHWC.

  Args:
    x: [B, H, W, C].
  Returns:
    [B, H', W', C] with H' = pool_output_size(H, ...) (same for W). Padding
    is -inf, so padded positions never win; the extra right padding of ceil
    mode only completes the last (partial) window.
  """
  pads = []
  for size in x.shape[1:3]:
    out = pool_output_size(size, kernel, stride, padding)
    hi = max(0, (out - 1) * stride + kernel - size - padding)
    pads.append((padding, hi))
  return nn.max_pool(x, (kernel, kernel), strides=(stride, stride),
                     padding=tuple(pads))


class BasicConv(nn.Module):
  """conv (no bias) -> norm -> ReLU: torchvision's BasicConv2d.

  Attributes:
    features: output channels.
    kernel: square kernel size.
    stride: conv stride.
    padding: symmetric zero padding (torch's `padding`).
    norm: 'frozen' (FrozenBatchNorm, eps 1e-3) or 'group' (trainable GN).
    dtype: compute dtype; parameters stay float32.
  """
  features: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  norm: str = "frozen"
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C_in] -> [B, H', W', features] (torch conv sizes)."""
    p = self.padding
    x = nn.Conv(self.features, (self.kernel, self.kernel),
                strides=(self.stride, self.stride), padding=((p, p), (p, p)),
                use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=conv_kernel_init, name="conv")(x)
    x = _norm_layer(self.norm, self.dtype, "bn", epsilon=BN_EPS)(x)
    return nn.relu(x)


class Inception(nn.Module):
  """One inception block: four branches concatenated on channels.

  Attributes:
    ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj: branch widths (see
      the module doc; the "5x5" branch has a 3x3 kernel, as torchvision).
    norm, dtype: as `BasicConv`.
  """
  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  norm: str = "frozen"
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C] -> [B, H, W, ch1x1 + ch3x3 + ch5x5 + pool_proj]."""
    conv = lambda f, k, name: BasicConv(f, k, padding=k // 2, norm=self.norm,
                                        dtype=self.dtype, name=name)
    b1 = conv(self.ch1x1, 1, "branch1")(x)
    b2 = conv(self.ch3x3, 3, "branch2_1")(conv(self.ch3x3red, 1,
                                               "branch2_0")(x))
    b3 = conv(self.ch5x5, 3, "branch3_1")(conv(self.ch5x5red, 1,
                                               "branch3_0")(x))
    b4 = conv(self.pool_proj, 1, "branch4_1")(max_pool_ceil(x, 3, 1, 1))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
  """GoogLeNet / Inception v1 returning inception5b's features (or logits).

  Attributes:
    width_multiplier: scales every channel count (`scaled`: rounded, at
      least 1); 1.0 is torchvision's network exactly, smaller values give
      tiny models for tests and synthetic data. The input stays 3 channels.
    norm: 'frozen' (conv + FrozenBatchNorm with eps 1e-3: torchvision's
      BasicConv2d in eval mode once statistics are imported) or 'group'
      (trainable GroupNorm with gcd(32, C) groups, for training from
      scratch).
    transform_input: re-normalise imagenet-normalised input to the
      (x - 0.5) / 0.5 scale first (module doc); on for torchvision's weights.
    with_classifier: global average pool + dense `fc` instead of features.
    num_classes: outputs of `fc`.
    dtype: compute dtype; parameters stay float32.
  """
  width_multiplier: float = 1.0
  norm: str = "frozen"
  transform_input: bool = False
  with_classifier: bool = False
  num_classes: int = 1000
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Runs the network.

    Args:
      x: f32[B, H, W, 3] images, normalised with `NORMALIZATION`
        ('imagenet_rgb') for torchvision's weights.
    Returns:
      The inception5b map [B, h, w, out_channels(width_multiplier)] in the
      compute dtype (h = 7 for H = 224, 8 for 256, 4 for 128: torch's conv
      and ceil-mode pool arithmetic, about ceil(H / 32)); or f32[B,
      num_classes] logits if `with_classifier`.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"images: expected [B, H, W, 3], got {x.shape}.")
    if self.norm not in ("frozen", "group"):
      raise ValueError(
          f"norm: expected 'frozen' or 'group', got {self.norm!r}.")
    c = lambda v: scaled(v, self.width_multiplier)
    if self.transform_input:
      std = jnp.asarray(_IMAGENET_STD, jnp.float32)
      mean = jnp.asarray(_IMAGENET_MEAN, jnp.float32)
      x = x.astype(jnp.float32) * (std / 0.5) + (mean - 0.5) / 0.5
    x = x.astype(self.dtype or x.dtype)

    def conv(f, k, name, stride=1):
      return BasicConv(c(f), k, stride=stride, padding=k // 2,
                       norm=self.norm, dtype=self.dtype, name=name)

    stem = (("conv1", 64, 7, 2), ("conv2", 64, 1, 1), ("conv3", 192, 3, 1))
    for name, f, k, s in stem:
      x = conv(f, k, name, s)(x)
      if name in _POOL_AFTER:
        x = max_pool_ceil(x, *_POOL_AFTER[name])
    for name, widths in INCEPTION.items():
      x = Inception(*(c(v) for v in widths), norm=self.norm,
                    dtype=self.dtype, name=name)(x)
      if name in _POOL_AFTER:
        x = max_pool_ceil(x, *_POOL_AFTER[name])

    if self.with_classifier:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      return nn.Dense(self.num_classes, dtype=jnp.float32,
                      param_dtype=jnp.float32,
                      kernel_init=nn.initializers.truncated_normal(0.01),
                      name="fc")(pooled)
    return x


def is_frozen_param(path: Sequence[str], *, norm: str = "frozen") -> bool:
  """Whether a GoogLeNet parameter must never be updated.

  With norm='frozen' the batch-norm scale and bias (a `bn` module's leaves)
  are frozen: their gradient is stopped, and the optimizer must also skip
  them (no weight decay). Use with `backbone.trainable_mask`.

  Args:
    path: names from the GoogLeNet root to the leaf, e.g.
      ("inception3a", "branch2_1", "bn", "scale").
    norm: as `GoogLeNet.norm`.
  """
  return norm == "frozen" and "bn" in tuple(str(p) for p in path)[:-1]


# --------------------------------------------------------------------------
# torchvision state dict -> variables.
# --------------------------------------------------------------------------

_IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^aux[12]\.")
_STEM_KEY = "conv1.conv.weight"
# (collection, leaf) -> torchvision leaf, for the leaves of `conv`, `bn`, `fc`.
_LEAF = {("params", "conv", "kernel"): "weight",
         ("params", "bn", "scale"): "weight",
         ("params", "bn", "bias"): "bias",
         (FROZEN_BN, "bn", "mean"): "running_mean",
         (FROZEN_BN, "bn", "var"): "running_var",
         ("params", "fc", "kernel"): "weight",
         ("params", "fc", "bias"): "bias"}


def _torch_key(collection: str, path: tuple[str, ...]) -> str | None:
  """Our (collection, module path + leaf) -> torchvision key, or None."""
  if len(path) < 2:
    return None
  leaf = _LEAF.get((collection, path[-2], path[-1]))
  if leaf is None or (path[-2] == "fc") != (path[:-1] == ("fc",)):
    return None
  mods = [re.sub(r"^(branch\d)_(\d+)$", r"\1.\2", m) for m in path[:-1]]
  return ".".join(mods + [leaf])


def _strip_wrapper(state_dict: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], int]:
  """Keys under the wrapper prefix (`module.`, `backbone.` ...), stripped.

  The prefix is whatever precedes `conv1.conv.weight` (none preferred).
  Returns the stripped dict and how many keys lay outside the prefix.
  """
  prefixes = sorted(k[:-len(_STEM_KEY)] for k in state_dict
                    if k.endswith(_STEM_KEY)
                    and (k == _STEM_KEY or k[-len(_STEM_KEY) - 1] == "."))
  if not prefixes:
    return dict(state_dict), 0  # the stem is then reported missing.
  if len(prefixes) > 1 and "" not in prefixes:
    raise ValueError("torchvision_googlenet_to_variables: several GoogLeNets "
                     f"in one state dict, under prefixes {prefixes}.")
  prefix = "" if "" in prefixes else prefixes[0]
  out = {k[len(prefix):]: v for k, v in state_dict.items()
         if k.startswith(prefix)}
  return out, len(state_dict) - len(out)


def _to_model_layout(value: np.ndarray, ndim: int) -> np.ndarray:
  if ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if ndim == 2:
    return value.T  # [classes, C] -> [C, classes]
  return value


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _rebuild(node: Any, path: tuple[str, ...],
             new: Mapping[tuple[str, ...], Any]) -> Any:
  if isinstance(node, Mapping):
    return {k: _rebuild(v, path + (str(k),), new) for k, v in node.items()}
  return new.get(path, node)


def torchvision_googlenet_to_variables(
    state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any], *,
    prefix: str | Sequence[str] = "") -> dict[str, Any]:
  """Puts a torchvision GoogLeNet state dict into a model's variables.

  Args:
    state_dict: {key: array} with torchvision's names (module doc), e.g.
      from `ps_jax.pretrained.load_state_dict`: conv weights f32[O, I, kh,
      kw], BN vectors f32[C], fc.weight f32[classes, C]. A wrapper prefix
      such as `module.` (whatever precedes `conv1.conv.weight`) is stripped
      and keys outside it ignored; `num_batches_tracked`, `aux1.*`,
      `aux2.*`, and `fc.*` when the model has no `fc`, are ignored.
    variables: {"params": ..., "frozen_bn": ...} of a `GoogLeNet` with
      norm='frozen' (e.g. from `model.init`, or `jax.eval_shape(model.init,
      ...)`: every GoogLeNet leaf is replaced). Not modified.
    prefix: where the GoogLeNet sits in each collection, as 'a/b' or
      ('a', 'b'); '' for a bare GoogLeNet.
  Returns:
    New variables: every GoogLeNet leaf from the file (same dtype, and
    sharding for jax arrays, as before; float32 for abstract leaves), other
    variables untouched. Feed input normalised with `NORMALIZATION`
    ('imagenet_rgb') to a model with transform_input=True.
  Raises:
    ValueError: no `frozen_bn` collection or an unknown `prefix`; unknown,
      missing and mis-shaped keys, each kind listing every offender.
  """
  where = "torchvision_googlenet_to_variables"
  if isinstance(prefix, str):
    prefix = tuple(p for p in prefix.split("/") if p)
  prefix = tuple(prefix)
  if FROZEN_BN not in variables or "params" not in variables:
    raise ValueError(
        f"{where}: variables need 'params' and {FROZEN_BN!r} collections "
        f"(have {sorted(variables)}); importing needs norm='frozen'.")
  targets: dict[str, tuple[tuple[str, ...], Any]] = {}
  unmapped = []
  for collection in ("params", FROZEN_BN):
    node = variables[collection]
    for i, p in enumerate(prefix):
      if not isinstance(node, Mapping) or p not in node:
        raise ValueError(f"{where}: prefix {'/'.join(prefix[:i + 1])!r} not "
                         f"in variables[{collection!r}].")
      node = node[p]
    for path, leaf in weights.leaves(node).items():
      key = _torch_key(collection, path)
      full = (collection,) + prefix + path
      if key is None:
        unmapped.append("/".join(full))
      else:
        targets[key] = (full, leaf)
  if unmapped:
    raise ValueError(f"{where}: model variables that are not a GoogLeNet's "
                     f"with norm='frozen': {sorted(unmapped)}.")
  has_fc = "fc.weight" in targets

  sd, outside = _strip_wrapper(state_dict)
  unknown, shapes, new = [], [], {}
  for key, value in sd.items():
    if _IGNORED.search(key) or (key.startswith("fc.") and not has_fc):
      continue
    if key not in targets:
      unknown.append(key)
      continue
    path, like = targets[key]
    value = np.asarray(value)
    want = tuple(like.shape)
    if value.ndim != len(want) or _to_model_layout(
        value, value.ndim).shape != want:
      shapes.append(f"{key}: {tuple(value.shape)} in the file, the model "
                    f"needs {_torch_shape(want)} (torch layout)")
      continue
    new[path] = weights.as_like(_to_model_layout(value, value.ndim), like)
  missing = sorted(k for k in targets if k not in sd)

  errors = []
  if unknown:
    errors.append(f"{len(unknown)} unknown key(s): {sorted(unknown)}")
  if missing:
    errors.append(f"{len(missing)} missing key(s): {missing}")
  if shapes:
    errors.append(f"{len(shapes)} mis-shaped key(s): {sorted(shapes)}")
    stem = sd.get(_STEM_KEY)
    if stem is not None and np.ndim(stem) == 4 and _STEM_KEY in targets:
      file_c = np.shape(stem)[0]
      model_c = targets[_STEM_KEY][1].shape[-1]
      if file_c != model_c:
        errors.append(f"the file's conv1 has {file_c} channels and the "
                      f"model's {model_c}: width_multiplier="
                      f"{file_c / 64:g} would fit (torchvision's file is "
                      "width 1.0)")
  if errors:
    raise ValueError(f"{where}: " + "; ".join(errors) + ".")
  if outside:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("googlenet: ignored %d keys outside the GoogLeNet's prefix.",
                 outside)
  out = {c: (_rebuild(v, (c,), new) if c in ("params", FROZEN_BN) else v)
         for c, v in variables.items()}
  return out


def import_googlenet(variables: Mapping[str, Any],
                     path: str | os.PathLike, *,
                     prefix: str | Sequence[str] = "") -> dict[str, Any]:
  """`torchvision_googlenet_to_variables` on a file.

  Args:
    variables: as `torchvision_googlenet_to_variables`.
    path: .npz, .safetensors or .pth/.pt (read by
      `ps_jax.pretrained.load_state_dict`; .pth needs torch).
    prefix: as `torchvision_googlenet_to_variables`.
  Returns:
    The new variables; the model must run with transform_input=True on
    'imagenet_rgb' input to reproduce torchvision.
  Raises:
    ValueError: as `torchvision_googlenet_to_variables` (the message starts
      with the path); `load_state_dict`'s errors.
  """
  # The models never read files themselves; ps_jax.pretrained does.
  from ps_jax import pretrained  # pylint: disable=g-import-not-at-top
  state_dict = pretrained.load_state_dict(path)
  try:
    return torchvision_googlenet_to_variables(state_dict, variables,
                                              prefix=prefix)
  except ValueError as e:
    raise ValueError(f"{os.fspath(path)}: {e}") from e
