"""IDE, the ID-discriminative embedding of the PRW paper (Zheng et al. 2017).

A ResNet-50 (or any depth of `ps_jax.models.backbone.ResNet`), ImageNet
initialised, fine-tuned as an N-way classifier over the training identities;
at test time the classifier is dropped and the global average pool of C5
("pool5", 2048-d at full width) is the descriptor.

  IDE(num_classes=751)(images f32[B, H, W, 3], train=True)
      -> {"descriptor": f32[B, D], "logits": (f32[B, num_classes],)}

Options the paper's description leaves open, and the common choices:

* `dropout`: dropout before the classifier (the Caffe IDE models of the
  PRW/Market baselines use 0.5 after pool5); 0 turns it off.
* `bottleneck_dim`: a linear bottleneck + LayerNorm between pool5 and the
  classifier (the widely used PyTorch IDE baseline has a 512-d bottleneck
  with batch norm; ps_jax keeps no batch statistics); 0 means the classifier reads pool5
  directly, as in the paper. The descriptor stays pool5 either way, as the
  paper's IDE; `descriptor="bottleneck"` takes the bottleneck output instead.

`logits` is a tuple (one entry per identity classifier) so that the crop
re-ID system treats IDE, MLFN and GLAD (four classifiers) alike.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ps_jax.models import backbone

DESCRIPTORS = ("pool5", "bottleneck")


def classifier(num_classes: int, name: str) -> nn.Dense:
  """An identity classifier: N(0, 0.001) weights, zero bias (torchreid's
  init of its classifiers)."""
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.001), name=name)


def global_pool(x: Any) -> Any:
  """f32[B, h, w, C] -> f32[B, C] global average pool, in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class IDE(nn.Module):
  """ResNet identity classifier whose pool5 is the re-ID descriptor.

  Attributes:
    num_classes: training identities (0: no classifier, descriptor only).
    depth: ResNet depth (50 in the paper).
    width_multiplier: scales every ResNet width (small CPU models).
    style: 'pytorch' (torchvision weights) or 'caffe'.
    norm: 'frozen' (batch norm kept as imported: statistics and affine
      terms) or 'group' (trainable GroupNorm, from scratch).
    dropout: dropout rate before the classifier.
    bottleneck_dim: 0, or the width of a linear bottleneck before the
      classifier.
    descriptor: 'pool5' (the paper) or 'bottleneck'.
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 0
  depth: int = 50
  width_multiplier: float = 1.0
  style: str = "pytorch"
  norm: str = "frozen"
  dropout: float = 0.0
  bottleneck_dim: int = 0
  descriptor: str = "pool5"
  dtype: Any = None

  def check(self) -> None:
    """ValueError naming the option that is out of range."""
    if self.num_classes < 0:
      raise ValueError(f"model.num_classes={self.num_classes}: expected >= 0")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dropout={self.dropout}: expected in [0, 1)")
    if self.bottleneck_dim < 0:
      raise ValueError(
          f"model.bottleneck_dim={self.bottleneck_dim}: expected >= 0")
    if self.descriptor not in DESCRIPTORS:
      raise ValueError(f"model.descriptor={self.descriptor!r}: expected one "
                       f"of {DESCRIPTORS}")
    if self.descriptor == "bottleneck" and not self.bottleneck_dim:
      raise ValueError("model.descriptor='bottleneck' needs "
                       "model.bottleneck_dim > 0")

  @property
  def descriptor_dim(self) -> int:
    if self.descriptor == "bottleneck":
      return self.bottleneck_dim
    return backbone.out_channels(self.depth, self.width_multiplier)[5]

  @nn.compact
  def __call__(self, images: Any, keypoints: Any = None,
               has_keypoints: Any = None, train: bool = False
               ) -> dict[str, Any]:
    """images f32[B, H, W, 3] normalised -> descriptor and logits (the
    keypoints of the crop re-ID model signature are not used)."""
    del keypoints, has_keypoints
    self.check()
    (c5,) = backbone.ResNet(
        depth=self.depth, width_multiplier=self.width_multiplier,
        style=self.style, norm=self.norm, return_levels=(5,),
        dtype=self.dtype, name="backbone")(images)
    pooled = global_pool(c5)
    feat = pooled
    if self.bottleneck_dim:
      feat = nn.Dense(self.bottleneck_dim, dtype=jnp.float32,
                      param_dtype=jnp.float32, name="bottleneck")(pooled)
      feat = nn.LayerNorm(dtype=jnp.float32, name="bottleneck_norm")(feat)
    out = {"descriptor": feat if self.descriptor == "bottleneck" else pooled,
           "logits": ()}
    if self.num_classes:
      x = nn.Dropout(self.dropout, deterministic=not train)(feat)
      out["logits"] = (classifier(self.num_classes, "classifier")(x),)
    return out
