"""Crop re-identification nets (IDE, MLFN, GLAD) as systems.

  ReIDSystem(model=IDE(...) | MLFN(...) | GLAD(...), loss_options=ReIDLoss(),
             num_ids=K)

One system serves the three networks, which differ only in their module:
each is called as `model(images, keypoints, has_keypoints, train=...)` and
returns a `descriptor` f32[B, D] and a tuple of identity `logits` (one per
classifier: IDE and MLFN have one, GLAD one per stream).

Training (`loss`), per global batch of crops (`ps_jax.data.crops`):
  * softmax cross-entropy of every classifier against the crop's identity,
    with optional label smoothing (Szegedy et al.; torchreid's
    CrossEntropyLoss(label_smooth=True) uses 0.1), summed over classifiers
    (GLAD's four streams, as in the paper);
  * optionally a batch-hard triplet loss on the L2-normalised descriptors
    (`w_triplet` > 0; pair it with the identity sampler of the crop
    pipeline, `data.sampler="identity"`, so each batch has positives).
  There is no extra state (`update_extra` returns None). Dropout draws from
  the step's key.

Embedding (`embed`): the descriptor in prediction mode, L2-normalised;
`features` gives it raw, for the Euclidean-distance protocol.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from ps_jax import checks
from ps_jax import pretrained
from ps_jax.losses import triplet
from ps_jax.models import googlenet
from ps_jax.models import weights
from ps_jax.models.reid import glad as glad_lib
from ps_jax.models.reid import ide as ide_lib
from ps_jax.models.reid import mlfn as mlfn_lib
from ps_jax.ops import vectors
from ps_jax.systems import base

MODELS = {"ide": ide_lib.IDE, "mlfn": mlfn_lib.MLFN, "glad": glad_lib.GLAD}
# Compute dtypes a crop net's `model.dtype` may name.
DTYPES = ("float32", "bfloat16", "float16")
# Batch-norm module names of the ResNet ("bn1", "downsample_bn"), GoogLeNet
# ("bn") and MLFN ("fm_bn1", "fc_x_bn", "fsm/bn3") layouts.
_FROZEN_BN_NAME = re.compile(r"(^|_)bn\d*$")


@dataclasses.dataclass(frozen=True)
class ReIDLoss:
  """The `loss` section of a crop re-ID config.

  Attributes:
    label_smoothing: epsilon of label smoothing (0: plain cross-entropy).
    w_id: weight of the identity (softmax) losses.
    w_triplet: weight of the batch-hard triplet loss (0: off).
    triplet_margin: its margin, in distance units of the L2-normalised
      descriptors.
  """
  label_smoothing: float = 0.0
  w_id: float = 1.0
  w_triplet: float = 0.0
  triplet_margin: float = 0.3

  def __post_init__(self):
    checks.require(checks.is_number(self.label_smoothing)
                   and 0 <= self.label_smoothing < 1, "loss.label_smoothing",
                   self.label_smoothing, "a number in [0, 1)")
    for name in ("w_id", "w_triplet", "triplet_margin"):
      value = getattr(self, name)
      checks.require(checks.is_number(value) and value >= 0, f"loss.{name}",
                     value, "a number >= 0")


def identity_loss(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with label smoothing.

  Args:
    logits: f32[B, K].
    labels: i32[B] in [0, K).
    label_smoothing: the target puts 1 - eps + eps / K on the label and
      eps / K elsewhere.
  Returns:
    f32[] mean over the batch.
  """
  k = logits.shape[-1]
  target = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                              target))


@dataclasses.dataclass(frozen=True)
class ReIDSystem:
  """A crop re-ID network behind the system contract (module docstring)."""
  model: Any
  loss_options: ReIDLoss
  num_ids: int

  @property
  def embedding_dim(self) -> int:
    return int(self.model.descriptor_dim)

  @property
  def uses_keypoints(self) -> bool:
    return isinstance(self.model, glad_lib.GLAD)

  def _apply(self, variables: Any, batch: Mapping[str, jax.Array], *,
             train: bool, rng: jax.Array | None = None) -> dict[str, Any]:
    out = self.model.apply(
        variables, batch["image"], batch.get("keypoints"),
        batch.get("has_keypoints"), train=train,
        rngs={"dropout": rng} if rng is not None else None)
    logits = out["logits"]
    if not isinstance(logits, tuple):  # one classifier as an array
      logits = () if logits is None else (logits,)
    return {**out, "logits": logits}

  def init(self, rng: jax.Array, images: jax.Array):
    b = images.shape[0]
    batch = {"image": images, "keypoints": jnp.zeros((b, 4, 2), jnp.float32),
             "has_keypoints": jnp.zeros((b,), bool)}
    variables = self.model.init(
        {"params": rng, "dropout": rng}, batch["image"], batch["keypoints"],
        batch["has_keypoints"], train=False)
    return variables, None

  def is_frozen(self, path: Sequence[str]) -> bool:
    """With `norm="frozen"` the batch-norm affine terms stay at their
    imported values (the statistics are not parameters): no gradient
    reaches them, and the optimizer must not decay them either."""
    return (getattr(self.model, "norm", "") == "frozen" and bool(path)
            and path[-1] in ("scale", "bias")
            and any(_FROZEN_BN_NAME.search(p) for p in path[:-1]))

  def init_from(self, variables: Any, path: str, *,
                normalization: str) -> Any:
    """ImageNet weights into the trunk (IDE: a torchvision/caffe ResNet;
    GLAD: torchvision's GoogLeNet, or a ResNet-50 for the ResNet trunk), a
    whole trained MLFN from a torchreid state dict, or, for IDE, the
    backbone of a trained ps_jax detector (`path` its workdir: IDE_det,
    `init_from_detector`)."""
    where = f"init_from={path!r}"
    model = self.model
    if isinstance(model, ide_lib.IDE) and os.path.isdir(path):
      return init_from_detector(variables, path, normalization=normalization,
                                model=model)
    if isinstance(model, ide_lib.IDE):
      variables, _ = pretrained.init_backbone_from_file(
          variables, path, style=model.style, backbone_norm=model.norm,
          data_normalization=normalization)
      return variables
    if isinstance(model, glad_lib.GLAD) and model.trunk == "resnet":
      variables, _ = pretrained.init_backbone_from_file(
          variables, path, style="pytorch", backbone_norm=model.norm,
          prefix="trunk/resnet", data_normalization=normalization)
      return variables
    if normalization != "imagenet_rgb":
      raise ValueError(f"{where}: torchvision GoogLeNet and torchreid MLFN "
                       "weights expect data.normalization='imagenet_rgb', "
                       f"got {normalization!r}")
    if model.norm != "frozen":
      raise ValueError(f"{where}: imported weights need model.norm='frozen' "
                       f"(got {model.norm!r})")
    if isinstance(model, mlfn_lib.MLFN) and not model.branch_relu:
      raise ValueError(f"{where}: torchreid MLFN weights fit torchreid's "
                       "block, model.branch_relu=True (got False; set "
                       "model.zero_init_residual=False with it)")
    state_dict = pretrained.load_state_dict(path)
    if isinstance(model, glad_lib.GLAD):
      try:
        return googlenet.torchvision_googlenet_to_variables(
            state_dict, variables, prefix="trunk")
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    try:
      return mlfn_lib.torchreid_mlfn_to_variables(state_dict, variables)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e

  def loss(self, params: Any, model_state: Any, extra: Any,
           batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]:
    del extra
    cfg = self.loss_options
    out = self._apply({"params": params, **model_state}, batch, train=True,
                      rng=rng)
    labels = jnp.asarray(batch["pid"], jnp.int32)
    id_losses = [identity_loss(lg, labels, cfg.label_smoothing)
                 for lg in out["logits"]]
    loss_id = sum(id_losses) if id_losses else jnp.zeros((), jnp.float32)
    metrics = {"loss_id": loss_id}
    total = cfg.w_id * loss_id
    if cfg.w_triplet:
      tri = triplet.batch_hard_triplet_loss(
          out["descriptor"].astype(jnp.float32), labels,
          jnp.ones(labels.shape, bool), margin=cfg.triplet_margin,
          normalize=True)
      metrics["loss_triplet"] = tri["loss"]
      total = total + cfg.w_triplet * tri["loss"]
    if out["logits"]:
      hits = jnp.argmax(out["logits"][0], axis=-1) == labels
      metrics["accuracy"] = jnp.mean(hits.astype(jnp.float32))
    metrics["loss"] = total
    return total, {"metrics": metrics}

  def update_extra(self, extra: Any, aux: Mapping[str, Any]) -> Any:
    del aux
    return extra

  def features(self, variables: Any, batch: Mapping[str, jax.Array]
               ) -> jax.Array:
    """f32[B, D] raw descriptors of a batch of crops (prediction mode)."""
    return self._apply(variables, batch, train=False)["descriptor"].astype(
        jnp.float32)

  def embed(self, variables: Any, batch: Mapping[str, jax.Array]
            ) -> jax.Array:
    """f32[B, D] L2-normalised descriptors of a batch of crops."""
    return vectors.l2_normalize(self.features(variables, batch))


def init_from_detector(variables: Any, workdir: str, *,
                       normalization: str, model: Any = None) -> Any:
  """IDE_det (the PRW paper's "cascaded fine-tuning"): the ResNet backbone
  of a trained ps_jax person-search model (AlignPS, OIM) into IDE's.

  Every array under `backbone` in each collection of `variables` whose
  path also exists in the detector's checkpoint takes the detector's value;
  the others keep their initialisation (OIM's backbone ends at C4: its
  last stage lives in its box head, so IDE's layer4 stays fresh), and the
  log names them. The classifier always keeps its init.

  Args:
    variables: IDE's {"params": ..., ["frozen_bn": ...]}; not modified.
    workdir: the detector's training workdir (its newest checkpoint is
      read, `checkpoint.restore_variables`).
    normalization: IDE's data normalization; it must be the detector's.
    model: the IDE, whose `depth` and `style` must be the detector's (a
      caffe and a pytorch ResNet have the same shapes but not the same
      function); None skips that check.
  Raises:
    ValueError (starting `init_from=<workdir>`): another input
      normalization, depth, style or norm, an array of another shape, or no
      array in common.
  """
  # Here, not at the top: checkpoint loads orbax and grain.
  from ps_jax import checkpoint  # pylint: disable=g-import-not-at-top
  where = f"init_from={workdir!r}"
  config, detector, step = checkpoint.restore_variables(workdir)
  theirs_norm = (config.get("data") or {}).get("normalization")
  if theirs_norm != normalization:
    raise ValueError(f"{where}: the detector was trained on "
                     f"data.normalization={theirs_norm!r}, this config uses "
                     f"{normalization!r}; set data.normalization to the "
                     "detector's")
  det_model = config.get("model") or {}
  for key in ("depth", "style") if model is not None else ():
    if key in det_model and det_model[key] != getattr(model, key):
      raise ValueError(f"{where}: the detector's backbone has {key}="
                       f"{det_model[key]!r}, IDE's {getattr(model, key)!r}; "
                       f"set model.{key} to the detector's")
  ours_cols = sorted(c for c, t in variables.items() if "backbone" in t)
  theirs_cols = sorted(c for c, t in detector.items() if "backbone" in t)
  if ours_cols != theirs_cols:
    raise ValueError(f"{where}: the detector's backbone has collections "
                     f"{theirs_cols}, IDE's {ours_cols}: another norm (set "
                     "model.norm to the detector's backbone_norm)")
  new = dict(variables)
  imported, kept, shapes = [], [], []
  for collection, tree in variables.items():
    if "backbone" not in tree:
      continue
    theirs = weights.leaves(detector.get(collection, {}).get("backbone", {}))
    for p, leaf in weights.leaves(tree["backbone"]).items():
      name = "/".join((collection, "backbone") + p)
      if p not in theirs:
        kept.append(name)
      elif tuple(theirs[p].shape) != tuple(leaf.shape):
        shapes.append(f"{name}: detector {tuple(theirs[p].shape)}, IDE "
                      f"{tuple(leaf.shape)}")
      else:
        new[collection] = weights.set_path(
            new[collection], ("backbone",) + p,
            weights.as_like(np.asarray(theirs[p]), leaf))
        imported.append(name)
  if shapes:
    raise ValueError(f"{where}: {len(shapes)} backbone array(s) differ in "
                     f"shape (another width or depth?): {shapes}")
  if not imported:
    raise ValueError(f"{where}: no backbone array of the detector fits "
                     "IDE's")
  logging.info("IDE_det: %d backbone arrays from the detector at step %d "
               "(%s); %d keep their init: %s", len(imported), step, workdir,
               len(kept), kept)
  return new


def from_options(name: str, *, model: Mapping[str, Any],
                 loss: Mapping[str, Any], predict: Mapping[str, Any],
                 num_ids: int) -> ReIDSystem:
  """The crop re-ID system `name` ('ide', 'mlfn', 'glad') from config
  sections; `model.num_classes` is set to `num_ids` unless the config says.

  Raises:
    ValueError: an unknown key or an option out of range (named).
  """
  if predict:
    raise ValueError(f"eval: unknown key(s) {sorted(predict)} for a crop "
                     "re-ID system; it has no prediction options")
  values = dict(model)
  values.setdefault("num_classes", int(num_ids))
  if values.get("dtype") not in (None, *DTYPES):
    raise ValueError(f"model.dtype={values['dtype']!r}; expected one of "
                     f"{list(DTYPES)} (the compute dtype; parameters stay "
                     "float32)")
  network = base.typed("model", MODELS[name], values)
  if hasattr(network, "check"):
    network.check()
  return ReIDSystem(model=network,
                    loss_options=base.typed("loss", ReIDLoss, loss),
                    num_ids=int(num_ids))


__all__ = ["MODELS", "ReIDLoss", "ReIDSystem", "from_options",
           "identity_loss", "init_from_detector"]
