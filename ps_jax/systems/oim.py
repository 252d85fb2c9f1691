"""OIM (Xiao et al. 2017) as a system: Faster R-CNN + online instance
matching, behind the contract of `ps_jax.systems.base`.

  OIMSystem(model=OIMNet(...), loss_options=OIMLoss(...),
            predict_options=OIMPredict(...), num_ids=K)

Training (`loss` + `update_extra`), per global batch:
  1. `OIMNet.trunk`: C4, RPN logits and deltas, anchors.
  2. RPN targets (`rcnn_targets.rpn_targets`: IoU 0.7 / 0.3, 256 anchors
     per image, half positive) and the RPN losses.
  3. Proposals from the RPN outputs, gradients stopped
     (`proposals.proposals`, the train-time top-k and NMS).
  4. RoIs drawn from the proposals plus the GT boxes
     (`rcnn_targets.sample_rois`: `roi_samples` per image, foreground IoU >=
     0.5, `roi_fg_fraction` of them at most), with the person id of each
     foreground RoI's GT.
  5. `OIMNet.roi_head` on the RoIs: box classification and regression losses,
     and the L2-normalised identity features of the foreground RoIs, each a
     separate OIM sample in slot order (image, then RoI slot).
  6. The OIM loss against the lookup table and the queue (scale `oim_scale`
     for both; labeled samples average, as SeqNet's cross-entropy with an
     ignore index); `update_extra` then writes the same samples into the
     memory (momentum 0.5, unlabeled people into the queue), from the global
     batch, so every device holds the same table and queue.
Random draws (RPN anchors, RoIs) use the step's key split per image, so a
batch's draw does not depend on how it is sharded.

Prediction (`predict`): test-time proposals, the RoI head on them, class-1
regression and clipping, softmax person scores, score threshold, NMS and the
`max_dets` best; each detection's embedding is the one of its proposal (before
regression), as the Caffe test script does (`embed_at='proposal'`), or the RoI
head's on the regressed box (`'box'`: a second pass over the `max_dets`
kept boxes, as SeqNet's second stage re-reads its refined boxes). The query embedding comes from
the ground-truth query box used as the RoI (`query_mode='roi'`, the standard
for two-stage methods), or from the detection that overlaps it best
(`'best_iou'`, AlignPS's rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ps_jax import checks
from ps_jax import pretrained
from ps_jax.losses import oim
from ps_jax.losses import rcnn as rcnn_losses
from ps_jax.models import person_search
from ps_jax.models.oim import OIMNet
from ps_jax.models import oim as oim_model
from ps_jax.ops import box_coder
from ps_jax.ops import boxes as box_ops
from ps_jax.ops import nms as nms_lib
from ps_jax.ops import proposals as proposals_lib
from ps_jax.ops import rcnn_targets
from ps_jax.ops import vectors
from ps_jax.systems import base


def _require(section: str, name: str, value: Any, expected: str,
             ok: bool) -> None:
  checks.require(ok, f"{section}.{name}", value, expected)


_integer, _number = checks.is_integer, checks.is_number


def _check_fields(section: str, obj: Any, rules: Mapping[str, tuple]) -> None:
  for name, (expected, ok) in rules.items():
    value = getattr(obj, name)
    _require(section, name, value, expected, ok(value))


_INT_GE1 = ("an integer >= 1", lambda v: _integer(v) and v >= 1)
_UNIT = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
_IOU = ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1)
_GE0 = ("a number >= 0", lambda v: _number(v) and v >= 0)
_GT0 = ("a number > 0", lambda v: _number(v) and v > 0)


@dataclasses.dataclass(frozen=True)
class OIMLoss:
  """Sampling and loss settings (the `loss` config section); defaults are the
  Caffe OIM recipe (seed: py-faster-rcnn's config and OIM's resnet50.yml)."""
  rpn_fg_iou: float = 0.7
  rpn_bg_iou: float = 0.3
  rpn_batch: int = 256
  rpn_fg_fraction: float = 0.5
  rpn_allowed_border: float | None = None
  rpn_pre_nms_top_k: int = 12000
  rpn_post_nms_top_k: int = 2000
  rpn_nms_iou: float = 0.7
  rpn_min_size: float = 16.0
  rpn_small_first: bool = True
  rpn_beta: float = 1.0 / 9.0
  roi_samples: int = 128
  roi_fg_fraction: float = 0.25
  roi_fg_iou: float = 0.5
  roi_bg_iou_high: float = 0.5
  roi_bg_iou_low: float = 0.0
  box_beta: float = 1.0
  oim_scale: float = 10.0
  oim_momentum: float = 0.5
  oim_queue_size: int = 5000
  oim_normalize_lut: bool = True
  w_rpn_cls: float = 1.0
  w_rpn_box: float = 1.0
  w_cls: float = 1.0
  w_box: float = 1.0
  w_oim: float = 1.0

  def __post_init__(self):
    """Checks every value's range (ValueError naming the field)."""
    rules = {name: _INT_GE1 for name in (
        "rpn_batch", "rpn_pre_nms_top_k", "rpn_post_nms_top_k",
        "roi_samples")}
    rules.update({name: _UNIT for name in (
        "rpn_fg_fraction", "roi_fg_fraction", "rpn_bg_iou",
        "roi_bg_iou_low", "roi_bg_iou_high")})
    rules.update({name: _IOU for name in (
        "rpn_fg_iou", "rpn_nms_iou", "roi_fg_iou")})
    rules.update({name: _GE0 for name in (
        "rpn_min_size", "rpn_beta", "box_beta", "w_rpn_cls", "w_rpn_box",
        "w_cls", "w_box", "w_oim")})
    rules["oim_scale"] = _GT0
    rules["oim_momentum"] = ("a number in [0, 1)",
                             lambda v: _number(v) and 0 <= v < 1)
    rules["oim_queue_size"] = ("an integer >= 0 (0: no queue)",
                               lambda v: _integer(v) and v >= 0)
    rules["rpn_allowed_border"] = (
        "None (keep every anchor) or a number >= 0",
        lambda v: v is None or (_number(v) and v >= 0))
    for name in ("rpn_small_first", "oim_normalize_lut"):
      rules[name] = ("True or False", lambda v: isinstance(v, bool))
    _check_fields("loss", self, rules)
    _require("loss", "rpn_bg_iou", self.rpn_bg_iou,
             f"<= loss.rpn_fg_iou ({self.rpn_fg_iou})",
             self.rpn_bg_iou <= self.rpn_fg_iou)
    _require("loss", "roi_bg_iou_high", self.roi_bg_iou_high,
             f"between loss.roi_bg_iou_low ({self.roi_bg_iou_low}) and "
             f"loss.roi_fg_iou ({self.roi_fg_iou})",
             self.roi_bg_iou_low <= self.roi_bg_iou_high <= self.roi_fg_iou)


@dataclasses.dataclass(frozen=True)
class OIMPredict:
  """Test-time settings (the predict keys of the `eval` section); defaults:
  the Caffe OIM test script (6000 / 300 proposals, NMS 0.4)."""
  max_dets: int = 100
  rpn_pre_nms_top_k: int = 6000
  rpn_post_nms_top_k: int = 300
  score_threshold: float = 0.05
  nms_iou: float = 0.4
  query_mode: str = "roi"
  embed_at: str = "proposal"

  def __post_init__(self):
    """Checks every value's range (ValueError naming the field)."""
    _check_fields("eval", self, {
        "max_dets": _INT_GE1, "rpn_pre_nms_top_k": _INT_GE1,
        "rpn_post_nms_top_k": _INT_GE1, "score_threshold": _UNIT,
        "nms_iou": _IOU,
        "query_mode": ("'roi' or 'best_iou'",
                       lambda v: v in ("roi", "best_iou")),
        "embed_at": ("'proposal' (Caffe OIM) or 'box' (the regressed "
                     "detection box, a second pass of the RoI head)",
                     lambda v: v in ("proposal", "box"))})


_DEPTHS = (18, 34, 50, 101)


def check_model(model: OIMNet) -> None:
  """Checks the network's options before anything is initialised.

  Raises:
    ValueError: naming the first option out of range and what is allowed.
  """
  _check_fields("model", model, {
      "depth": (f"one of {_DEPTHS}", lambda v: v in _DEPTHS),
      "width_multiplier": ("a number > 0 giving at least 1 channel",
                           lambda v: _number(v) and round(64 * v) >= 1),
      "style": ("'pytorch' or 'caffe'", lambda v: v in ("pytorch", "caffe")),
      "frozen_stages": ("an integer in -1..3 (the trunk has 3 stages)",
                        lambda v: _integer(v) and -1 <= v <= 3),
      "backbone_norm": ("'frozen' or 'group'",
                        lambda v: v in ("frozen", "group")),
      "anchor_sizes": ("one or more numbers > 0",
                       lambda v: _positive_numbers(v)),
      "anchor_ratios": ("one or more numbers > 0",
                        lambda v: _positive_numbers(v)),
      "rpn_channels": ("an integer >= 1, or None for the trunk's channels",
                       lambda v: v is None or (_integer(v) and v >= 1)),
      "roi_size": _INT_GE1,
      "roi_sampling_ratio": ("an integer (<= 0: adaptive)", _integer),
      "head_pool": (f"one of {oim_model.POOLS}",
                    lambda v: v in oim_model.POOLS),
      "reid_dim": _INT_GE1,
      "dtype": ("one of ('float32', 'bfloat16', 'float16')",
                lambda v: v in ("float32", "bfloat16", "float16")),
  })


def _positive_numbers(v: Any) -> bool:
  return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
          and all(_number(x) and x > 0 for x in v))


def _join_res5(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Variables with res5's blocks moved into the backbone subtree."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    if "res5" in tree:
      tree["backbone"] = {**tree.get("backbone", {}), **tree.pop("res5")}
    out[collection] = tree
  return out


def _split_res5(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `_join_res5`: layer4 blocks back into "res5"."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    if "backbone" in tree:
      trunk = dict(tree["backbone"])
      res5 = {k: trunk.pop(k) for k in list(trunk) if k.startswith("layer4_")}
      if res5:
        tree["backbone"], tree["res5"] = trunk, res5
    out[collection] = tree
  return out


@dataclasses.dataclass(frozen=True)
class OIMSystem:
  """OIM behind the system contract (`ps_jax.systems.base`).

  Attributes:
    model: the network (`ps_jax.models.oim.OIMNet`).
    loss_options: sampling and loss settings.
    predict_options: test-time settings.
    num_ids: K, labeled training identities (lookup-table rows).
  """
  model: OIMNet
  loss_options: OIMLoss = OIMLoss()
  predict_options: OIMPredict = OIMPredict()
  num_ids: int = 0

  @property
  def embedding_dim(self) -> int:
    return int(self.model.reid_dim)

  # ------------------------------------------------------------ training

  def init(self, rng: jax.Array, images: jax.Array):
    variables = self.model.init(rng, images)
    memory = oim.init_memory(self.num_ids, self.loss_options.oim_queue_size,
                             self.embedding_dim)
    return variables, memory

  def is_frozen(self, path: Sequence[str]) -> bool:
    return self.model.is_frozen(path)

  def init_from(self, variables: Any, path: str, *,
                normalization: str) -> Any:
    # The file holds one ResNet; here it is split into the trunk
    # ("backbone": stem, res2-res4) and the RoI head's res5 ("res5", blocks
    # named layer4_*). Import into the joined tree, then split it again.
    joined, _ = pretrained.init_backbone_from_file(
        _join_res5(variables), path, style=self.model.style,
        backbone_norm=self.model.backbone_norm,
        data_normalization=normalization)
    return _split_res5(joined)

  def _apply(self, params: Any, model_state: Any, *args, method) -> Any:
    return self.model.apply({"params": params, **model_state}, *args,
                            method=method)

  def loss(self, params: Any, model_state: Any, extra: oim.OIMMemory,
           batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]:
    """Total loss and auxiliaries (metrics, the OIM samples)."""
    cfg = self.loss_options
    gt_boxes, gt_valid = batch["boxes_xyxy"], batch["boxes_valid"]
    b = gt_boxes.shape[0]
    out = self._apply(params, model_state, batch["image"],
                      method=OIMNet.trunk)
    rpn_keys, roi_keys = jnp.split(jax.random.split(rng, 2 * b), 2)
    anchors = out["anchors"]
    rpn = jax.vmap(lambda k, g, v, hw: rcnn_targets.rpn_targets(
        k, anchors, g, v, hw, fg_iou=cfg.rpn_fg_iou, bg_iou=cfg.rpn_bg_iou,
        budget=cfg.rpn_batch, positive_fraction=cfg.rpn_fg_fraction,
        allowed_border=cfg.rpn_allowed_border))(
            rpn_keys, gt_boxes, gt_valid, batch["image_hw"])
    rpn_loss = rcnn_losses.rpn_losses(
        out["rpn_logits"], out["rpn_deltas"], rpn["positive"],
        rpn["negative"], rpn["deltas"], beta=cfg.rpn_beta)

    props = jax.vmap(lambda o, d, hw: proposals_lib.proposals(
        anchors, o, d, hw, pre_nms_top_k=cfg.rpn_pre_nms_top_k,
        post_nms_top_k=cfg.rpn_post_nms_top_k, nms_iou=cfg.rpn_nms_iou,
        min_size=cfg.rpn_min_size, small_first=cfg.rpn_small_first))(
            jax.lax.stop_gradient(out["rpn_logits"]),
            jax.lax.stop_gradient(out["rpn_deltas"]), batch["image_hw"])
    rois = jax.vmap(lambda k, p, pv, g, pid, v: rcnn_targets.sample_rois(
        k, p, pv, g, pid, v, num_samples=cfg.roi_samples,
        fg_fraction=cfg.roi_fg_fraction, fg_iou=cfg.roi_fg_iou,
        bg_iou_high=cfg.roi_bg_iou_high, bg_iou_low=cfg.roi_bg_iou_low))(
            roi_keys, props["boxes"], props["valid"], gt_boxes,
            batch["pids"], gt_valid)

    head = self._apply(params, model_state, out["c4"], rois["rois"],
                       method=OIMNet.roi_head)
    det = rcnn_losses.box_head_losses(
        head["cls_logits"], head["box_deltas"],
        rois["foreground"].astype(jnp.int32), rois["valid"], rois["deltas"],
        beta=cfg.box_beta)

    s = rois["rois"].shape[1]
    feats = vectors.l2_normalize(
        head["embedding"].reshape(b * s, -1).astype(jnp.float32))
    valid = rois["foreground"].reshape(b * s)
    pids = rois["pids"].reshape(b * s)  # -2 (ignored) where not foreground
    logits = oim.oim_logits(feats, extra, lut_scale=cfg.oim_scale,
                            queue_scale=cfg.oim_scale)
    reid = oim.oim_loss(logits, pids, valid, reduction="mean_labeled")

    total = (cfg.w_rpn_cls * rpn_loss["loss_objectness"]
             + cfg.w_rpn_box * rpn_loss["loss_rpn_box"]
             + cfg.w_cls * det["loss_cls"] + cfg.w_box * det["loss_box"]
             + cfg.w_oim * reid["loss"])
    metrics = {
        "loss": total, "loss_rpn_cls": rpn_loss["loss_objectness"],
        "loss_rpn_box": rpn_loss["loss_rpn_box"], "loss_cls": det["loss_cls"],
        "loss_box": det["loss_box"], "loss_oim": reid["loss"],
        "num_fg_rois": jnp.sum(valid.astype(jnp.float32)),
        "num_labeled_rois": reid["num_labeled"],
        "num_proposals": jnp.sum(props["valid"].astype(jnp.float32)),
    }
    aux = {"metrics": metrics, "feats": feats, "pids": pids, "valid": valid}
    return total, aux

  def update_extra(self, extra: oim.OIMMemory, aux: Mapping[str, Any]
                   ) -> oim.OIMMemory:
    cfg = self.loss_options
    return oim.update_memory(extra, aux["feats"], aux["pids"], aux["valid"],
                             momentum=cfg.oim_momentum,
                             normalize_lut=cfg.oim_normalize_lut)

  # ---------------------------------------------------------- prediction

  def predict(self, variables: Any, batch: Mapping[str, jax.Array],
              query_boxes: jax.Array) -> dict[str, jax.Array]:
    opts = self.predict_options
    image_hw = jnp.asarray(batch["image_hw"], jnp.float32)
    orig_hw = jnp.asarray(batch["orig_hw"], jnp.float32)
    scale = base.network_scale(batch)  # (y, x)
    scale_xyxy = jnp.tile(scale[:, ::-1], (1, 2))[:, None, :]  # [B, 1, 4]
    out = self.model.apply(variables, batch["image"], method=OIMNet.trunk)
    anchors = out["anchors"]
    props = jax.vmap(lambda o, d, hw: proposals_lib.proposals(
        anchors, o, d, hw, pre_nms_top_k=opts.rpn_pre_nms_top_k,
        post_nms_top_k=opts.rpn_post_nms_top_k,
        nms_iou=self.loss_options.rpn_nms_iou,
        min_size=self.loss_options.rpn_min_size,
        small_first=self.loss_options.rpn_small_first))(
            out["rpn_logits"], out["rpn_deltas"], batch["image_hw"])
    # The query box, in network pixels, rides along as one more RoI.
    query_net = jnp.asarray(query_boxes, jnp.float32)[:, None, :] * scale_xyxy
    rois = jnp.concatenate([props["boxes"], query_net], axis=1)
    head = self.model.apply(variables, out["c4"], rois,
                            method=OIMNet.roi_head)
    emb = vectors.l2_normalize(head["embedding"].astype(jnp.float32))
    r = props["boxes"].shape[1]
    scores = jax.nn.softmax(head["cls_logits"][:, :r], axis=-1)[..., 1]
    boxes = box_coder.decode(props["boxes"], head["box_deltas"][:, :r, 1],
                             box_coder.ROI_HEADS_WEIGHTS)
    boxes = box_ops.clip_boxes(boxes, image_hw[:, 0:1], image_hw[:, 1:2])
    keep, keep_valid = nms_lib.batched_nms(
        boxes, scores, iou_threshold=opts.nms_iou,
        max_outputs=int(opts.max_dets),
        score_threshold=float(opts.score_threshold), valid=props["valid"])
    take = lambda x: jnp.take_along_axis(
        x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)
    det_boxes = jnp.minimum(
        take(boxes) / scale_xyxy,
        jnp.tile(orig_hw[:, ::-1], (1, 2))[:, None, :])
    if opts.embed_at == "box":
      # The identity branch again, on each kept detection's regressed box.
      again = self.model.apply(variables, out["c4"], take(boxes),
                               method=OIMNet.roi_head)
      det_emb = vectors.l2_normalize(again["embedding"].astype(jnp.float32))
    else:
      det_emb = take(emb[:, :r])
    valid = keep_valid
    det = {"boxes": jnp.where(valid[..., None], det_boxes, 0.0),
           "scores": jnp.where(valid, take(scores), 0.0),
           "embeddings": jnp.where(valid[..., None], det_emb, 0.0),
           "valid": valid}
    query_emb = emb[:, r]
    from_det = jnp.zeros(query_emb.shape[:1], bool)
    if opts.query_mode == "best_iou":
      # The best-overlapping detection; the query RoI where none overlaps.
      best = person_search.best_iou_detection(det, query_boxes)
      from_det = best["from_detection"]
      query_emb = jnp.where(from_det[:, None], best["embedding"], query_emb)
    return {**det, "query_embedding": query_emb,
            "query_from_detection": from_det}


def from_options(*, model: Mapping[str, Any], loss: Mapping[str, Any],
                 predict: Mapping[str, Any], num_ids: int) -> OIMSystem:
  """An OIMSystem from plain option mappings (config sections).

  Raises:
    ValueError: a key that is not a field (the valid ones are listed), or a
      value out of range (named, with what is allowed).
  """
  network = base.typed("model", OIMNet, model)
  check_model(network)
  return OIMSystem(
      model=network, loss_options=base.typed("loss", OIMLoss, loss),
      predict_options=base.typed("eval", OIMPredict, predict),
      num_ids=int(num_ids))
