"""GLAD, the global-local alignment descriptor (Wei et al., ACM MM 2017).

Four streams share one convolutional trunk: the whole crop, and three
horizontal parts cut from it (head, upper body, lower body). Each stream has
its own global average pool and its own identity classifier (the training
loss sums the four softmax losses); the descriptor is the concatenation of
the four pooled features (4 x 1024-d with GoogLeNet).

  GLAD(num_classes=751)(images f32[B, H, W, 3], keypoints f32[B, 4, 2],
                        has_keypoints bool[B], train=True)
      -> {"descriptor": f32[B, 4C], "logits": 4 x f32[B, num_classes],
          "part_boxes": f32[B, 3, 4]}

Parts (`part_boxes`). The paper runs a pose estimator (Deeper Cut) on each
crop and keeps four keypoints: head top, neck and the two hips. Each part
spans the full crop width:

  head        from the head top to the neck,
  upper body  from the neck to the hip line (the mean y of the hips),
  lower body  from the hip line to the bottom of the crop,

each boundary moved outwards by `part_overlap` (a fraction of the crop
height) so adjacent parts overlap slightly, then clipped to the crop. ps_jax
has no pose estimator: the keypoints come from the dataset when it has them
(the synthetic crops store the generator's own), else from fixed fractions
of the crop height (`FIXED_PARTS`: head 0-0.20, upper 0.15-0.55, lower
0.50-1.00), a GLAD variant the results must name as "fixed-ratio parts"
(`keypoints="fixed"`). Keypoints that are implausible for a standing person
(the neck not below the head top, the hips less than 10 % of the height
below the neck, anything outside [-0.1, 1.1]) fall back to the fixed parts
for that crop.

Each part is cut from the network input and resized to `part_hw` by
bilinear sampling (RoIAlign on the pixels, aligned, 2 x 2 samples per
output pixel), jitted with the rest. The trunk is GoogLeNet as in the paper
(`trunk="googlenet"`, torchvision weights importable) or ResNet-50
(`trunk="resnet"`, a labelled deviation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ps_jax.models import backbone
from ps_jax.models import googlenet
from ps_jax.models.reid import ide
from ps_jax.ops import roi_align as roi_align_lib

TRUNKS = ("googlenet", "resnet")
KEYPOINT_SOURCES = ("dataset", "fixed")
STREAMS = ("global", "head", "upper", "lower")
# (top, bottom) of head, upper and lower body, fractions of the crop height.
FIXED_PARTS = ((0.0, 0.20), (0.15, 0.55), (0.50, 1.0))
# Keypoint rows of the datasets (head top, neck, left hip, right hip).
HEAD_TOP, NECK, LEFT_HIP, RIGHT_HIP = range(4)


def part_spans(keypoints: jax.Array, has_keypoints: jax.Array, *,
               overlap: float = 0.05,
               fixed: Sequence[Sequence[float]] = FIXED_PARTS
               ) -> tuple[jax.Array, jax.Array]:
  """(top, bottom) of the three parts, fractions of the crop height.

  Args:
    keypoints: f32[B, 4, 2] (x, y) fractions of the crop: head top, neck,
      left hip, right hip.
    has_keypoints: bool[B]; False uses `fixed` for that crop.
    overlap: each keypoint-derived boundary is moved outwards by this
      fraction of the height.
    fixed: the three (top, bottom) pairs used without (plausible) keypoints.
  Returns:
    (spans f32[B, 3, 2] (top, bottom) in [0, 1], from_keypoints bool[B]).
  """
  y = jnp.asarray(keypoints, jnp.float32)[..., 1]
  head, neck = y[:, HEAD_TOP], y[:, NECK]
  hips = 0.5 * (y[:, LEFT_HIP] + y[:, RIGHT_HIP])
  plausible = (jnp.all((y >= -0.1) & (y <= 1.1), axis=1) & (neck > head)
               & (hips >= neck + 0.1))
  use = jnp.asarray(has_keypoints, bool) & plausible
  tops = jnp.stack([head - overlap, neck - overlap, hips - overlap], axis=1)
  bottoms = jnp.stack([neck + overlap, hips + overlap,
                       jnp.ones_like(hips)], axis=1)
  from_kp = jnp.clip(jnp.stack([tops, bottoms], axis=-1), 0.0, 1.0)
  fixed = jnp.broadcast_to(jnp.asarray(fixed, jnp.float32), from_kp.shape)
  return jnp.where(use[:, None, None], from_kp, fixed), use


def part_boxes(spans: jax.Array, image_hw: Sequence[int]) -> jax.Array:
  """f32[B, 3, 4] xyxy pixel boxes of the parts: full width, the spans'
  rows, in an image of `image_hw` (H, W)."""
  h, w = (float(v) for v in image_hw)
  top, bottom = spans[..., 0] * h, spans[..., 1] * h
  zeros = jnp.zeros_like(top)
  return jnp.stack([zeros, top, zeros + w, bottom], axis=-1)


def cut_parts(images: jax.Array, boxes: jax.Array, part_hw: Sequence[int]
              ) -> jax.Array:
  """f32[B, 3, ph, pw, C]: each box of `boxes` f32[B, 3, 4] (xyxy pixels)
  cut from `images` f32[B, H, W, C] and resized to `part_hw` by bilinear
  sampling (RoIAlign, aligned, 2 x 2 samples per output pixel)."""
  return roi_align_lib.roi_align(images, boxes, tuple(part_hw),
                                 sampling_ratio=2, aligned=True)


class GLAD(nn.Module):
  """Four-stream (global + three parts) descriptor with a shared trunk.

  Attributes:
    num_classes: training identities (0: descriptor only); each stream has
      its own classifier.
    trunk: 'googlenet' (the paper) or 'resnet' (ResNet-50, a deviation).
    width_multiplier: scales the trunk's widths (small CPU models).
    norm: the trunk's norm, 'frozen' (imported statistics) or 'group'.
    transform_input: GoogLeNet's torchvision input re-normalisation (on
      with torchvision's ImageNet weights).
    part_hw: (H, W) every part is resized to; (0, 0) means (H / 2, W) of the
      input crop.
    keypoints: 'dataset' (the batch's keypoints where it has them) or
      'fixed' (always the fixed-ratio parts).
    part_overlap: see `part_spans`.
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 0
  trunk: str = "googlenet"
  width_multiplier: float = 1.0
  norm: str = "frozen"
  transform_input: bool = False
  part_hw: Sequence[int] = (0, 0)
  keypoints: str = "dataset"
  part_overlap: float = 0.05
  dtype: Any = None

  def check(self) -> None:
    """ValueError naming the option that is out of range."""
    if self.trunk not in TRUNKS:
      raise ValueError(f"model.trunk={self.trunk!r}: expected one of "
                       f"{TRUNKS}")
    if self.keypoints not in KEYPOINT_SOURCES:
      raise ValueError(f"model.keypoints={self.keypoints!r}: expected one "
                       f"of {KEYPOINT_SOURCES}")
    if self.num_classes < 0:
      raise ValueError(f"model.num_classes={self.num_classes}: expected >= 0")
    if (len(tuple(self.part_hw)) != 2
        or any(int(v) < 0 for v in self.part_hw)):
      raise ValueError(f"model.part_hw={self.part_hw!r}: expected (H, W), "
                       "(0, 0) for half the crop height")
    if not 0.0 <= self.part_overlap < 0.5:
      raise ValueError(f"model.part_overlap={self.part_overlap}: expected "
                       "in [0, 0.5)")

  @property
  def stream_dim(self) -> int:
    if self.trunk == "googlenet":
      return googlenet.out_channels(self.width_multiplier)
    return backbone.out_channels(50, self.width_multiplier)[5]

  @property
  def descriptor_dim(self) -> int:
    return len(STREAMS) * self.stream_dim

  def _trunk(self) -> nn.Module:
    if self.trunk == "googlenet":
      return googlenet.GoogLeNet(
          width_multiplier=self.width_multiplier, norm=self.norm,
          transform_input=self.transform_input, dtype=self.dtype,
          name="trunk")
    return _ResNetTrunk(width_multiplier=self.width_multiplier,
                        norm=self.norm, dtype=self.dtype, name="trunk")

  @nn.compact
  def __call__(self, images: jax.Array, keypoints: jax.Array | None = None,
               has_keypoints: jax.Array | None = None, train: bool = False
               ) -> dict[str, Any]:
    """images f32[B, H, W, 3]; keypoints f32[B, 4, 2] and has_keypoints
    bool[B] (None: no crop has keypoints) -> descriptor, logits, parts."""
    self.check()
    b, h, w, _ = images.shape
    if keypoints is None or self.keypoints == "fixed":
      keypoints = jnp.zeros((b, 4, 2), jnp.float32)
      has_keypoints = jnp.zeros((b,), bool)
    spans, from_kp = part_spans(keypoints, has_keypoints,
                                overlap=self.part_overlap)
    boxes = part_boxes(spans, (h, w))
    ph, pw = (int(v) for v in self.part_hw)
    part_hw = (ph or h // 2, pw or w)
    parts = cut_parts(images.astype(jnp.float32), jax.lax.stop_gradient(boxes),
                      part_hw)
    trunk = self._trunk()
    pooled = [ide.global_pool(trunk(images))]
    part_maps = trunk(parts.reshape((b * 3,) + parts.shape[2:]))
    pooled += list(jnp.moveaxis(
        ide.global_pool(part_maps).reshape(b, 3, -1), 1, 0))
    out = {"descriptor": jnp.concatenate(pooled, axis=-1), "logits": (),
           "part_boxes": boxes, "parts_from_keypoints": from_kp}
    if self.num_classes:
      out["logits"] = tuple(
          ide.classifier(self.num_classes, f"classifier_{name}")(p)
          for name, p in zip(STREAMS, pooled))
    return out


class _ResNetTrunk(nn.Module):
  """ResNet-50 to C5, the labelled alternative to GLAD's GoogLeNet."""
  width_multiplier: float = 1.0
  norm: str = "frozen"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (c5,) = backbone.ResNet(depth=50, width_multiplier=self.width_multiplier,
                            norm=self.norm, return_levels=(5,),
                            dtype=self.dtype, name="resnet")(x)
    return c5
