"""AlignPS as a system: the network, its losses, its OIM memory, its predict.

  AlignPSSystem(model=AlignPS(...), loss=AlignPSLoss(...),
                predict=AlignPSPredict(...), num_ids=K)

Training (`loss` + `update_extra`): model.apply -> FCOS targets -> detection
losses -> re-ID samples -> focal OIM + triplet; then the OIM memory update.
The extra state is the `OIMMemory` (lookup table of the K labeled training
identities and the queue of unlabeled people). Because `update_extra` reads
the embeddings of the *global* batch, every device ends the step with the
same lookup table and queue, and 1 device and 8 devices give the same result.

Re-ID samples. Every positive point is a re-ID sample (the AlignPS paper,
§2.4). To keep
shapes static, the positive points of the global batch are packed, in order
(image, then level, then point), into `max_reid_samples` slots with a valid
mask; positives beyond that budget are dropped and counted in the metrics
(`reid_overflow`). With centre sampling of radius r strides, a box has at most
(2r + 1)^2 positives on its level, which sizes the budget from the batch's
static shape. `loss.reid_max_samples` sets a smaller budget: the OIM logits
and the triplet distances cost time in proportion to the slots (the triplet
quadratically), and a batch of mostly small or absent people fills few of
them; the `reid_overflow` metric says whether positives were dropped.

Prediction (`predict`): the network in prediction mode (P3 only), a fixed
`max_dets` detections per image (`models.person_search.predict_detections`:
pre-NMS top-k, score threshold, NMS, score = cls x centerness, L2-normalized
embeddings) and the embedding of one query box per image
(`query_embedding`: AlignPS's best-IoU detection, or the box centre). Boxes go
back to original pixels with the exact inverse of the pipeline's per-axis
resize, x * orig_w / image_w and y * orig_h / image_h.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ps_jax import checks
from ps_jax import pretrained
from ps_jax.losses import fcos as fcos_losses
from ps_jax.losses import oim
from ps_jax.losses import triplet as triplet_losses
from ps_jax.models import person_search
from ps_jax.models.person_search import AlignPS
from ps_jax.ops import assign
from ps_jax.ops import vectors
from ps_jax.systems import base


@dataclasses.dataclass(frozen=True)
class AlignPSLoss:
  """Loss settings (the `loss` config section)."""
  regress_ranges: Sequence[Sequence[float]]
  center_sample_radius: float | None = 1.5
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  oim_queue_size: int = 5000
  oim_lut_scale: float = 10.0     # AlignPS: scores *= 10 (temperature 0.1)
  oim_queue_scale: float = 10.0   # AlignPS PRW: 10 for the queue, 15 for LUT
  oim_momentum: float = 0.5
  oim_normalize_lut: bool = False  # AlignPS CUHK leaves the LUT unnormalized
  oim_queue_dims: int | None = 64  # AlignPS CUHK writes 64 of 256 dims
  oim_focal_gamma: float = 2.0
  triplet: bool = True
  triplet_margin: float = 0.3
  w_cls: float = 1.0
  w_box: float = 1.0
  w_ctr: float = 1.0
  w_oim: float = 1.0
  w_triplet: float = 1.0
  reid_max_samples: int | None = None  # None: the bound max_reid_samples

  def __post_init__(self):
    """Checks every value's range (ValueError naming the field)."""
    _require("loss", "reid_max_samples", self.reid_max_samples,
             "an integer >= 1, or None for the batch's bound",
             self.reid_max_samples is None or (
                 _integer(self.reid_max_samples)
                 and self.reid_max_samples >= 1))
    ranges = self.regress_ranges
    _require("loss", "regress_ranges", ranges,
             "one (low, high) pair per level, low < high",
             _sequence(ranges) and len(ranges) > 0 and all(
                 _sequence(r) and len(r) == 2 and all(_number(v) for v in r)
                 and r[0] < r[1] for r in ranges))
    object.__setattr__(self, "regress_ranges", tuple(
        tuple(float(v) for v in r) for r in ranges))
    radius = self.center_sample_radius
    _require("loss", "center_sample_radius", radius,
             "> 0, or None to sample the whole box",
             radius is None or (_number(radius) and radius > 0))
    _require("loss", "focal_alpha", self.focal_alpha, "a number in [0, 1]",
             _number(self.focal_alpha) and 0 <= self.focal_alpha <= 1)
    _require("loss", "oim_momentum", self.oim_momentum,
             "a number in [0, 1) (1 would never update the lookup table)",
             _number(self.oim_momentum) and 0 <= self.oim_momentum < 1)
    for name in ("focal_gamma", "oim_focal_gamma", "triplet_margin", "w_cls",
                 "w_box", "w_ctr", "w_oim", "w_triplet"):
      value = getattr(self, name)
      _require("loss", name, value, "a number >= 0",
               _number(value) and value >= 0)
    for name in ("oim_lut_scale", "oim_queue_scale"):
      value = getattr(self, name)
      _require("loss", name, value, "a number > 0",
               _number(value) and value > 0)
    _require("loss", "oim_queue_size", self.oim_queue_size,
             "an integer >= 0 (0: no queue)",
             _integer(self.oim_queue_size) and self.oim_queue_size >= 0)
    _require("loss", "oim_queue_dims", self.oim_queue_dims,
             "an integer >= 1, or None for every dimension",
             self.oim_queue_dims is None or (
                 _integer(self.oim_queue_dims) and self.oim_queue_dims >= 1))
    for name in ("oim_normalize_lut", "triplet"):
      _require("loss", name, getattr(self, name), "True or False",
               isinstance(getattr(self, name), bool))


@dataclasses.dataclass(frozen=True)
class AlignPSPredict:
  """Post-processing settings (the predict keys of the `eval` section)."""
  max_dets: int = 100
  pre_nms_top_k: int = 1000
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  query_mode: str = "best_iou"

  def __post_init__(self):
    """Checks every value's range (ValueError naming the field)."""
    _require("eval", "query_mode", self.query_mode, "'best_iou' or 'center'",
             self.query_mode in ("best_iou", "center"))
    for name in ("max_dets", "pre_nms_top_k"):
      value = getattr(self, name)
      _require("eval", name, value, "an integer >= 1",
               _integer(value) and value >= 1)
    _require("eval", "score_threshold", self.score_threshold,
             "a number in [0, 1]", _number(self.score_threshold)
             and 0 <= self.score_threshold <= 1)
    _require("eval", "nms_iou", self.nms_iou, "a number in (0, 1]",
             _number(self.nms_iou) and 0 < self.nms_iou <= 1)


def _require(section: str, name: str, value: Any, expected: str,
             ok: bool) -> None:
  checks.require(ok, f"{section}.{name}", value, expected)


_integer, _number = checks.is_integer, checks.is_number


def _sequence(value: Any) -> bool:
  return isinstance(value, Sequence) and not isinstance(value, str)


# ResNet depths (ps_jax.models.backbone) and the choices of the model's
# string options.
_DEPTHS = (18, 34, 50, 101)
_CHOICES = {"style": ("caffe", "pytorch"),
            "backbone_norm": ("frozen", "group"),
            "neck_fuse": ("concat", "add"),
            "neck_offset_init": ("zeros", "xavier"),
            "head_sub_mean_region": ("canvas", "image", "image_pad32"),
            "dtype": ("float32", "bfloat16", "float16")}


def check_model(model: AlignPS) -> None:
  """Checks the network's options before anything is initialised or traced.

  Raises:
    ValueError: naming the first option out of range and what is allowed.
  """
  _require("model", "depth", model.depth, f"one of {_DEPTHS}",
           _integer(model.depth) and model.depth in _DEPTHS)
  for name, choices in _CHOICES.items():
    value = getattr(model, name)
    _require("model", name, value, f"one of {choices}",
             isinstance(value, str) and value in choices)
  width = model.width_multiplier
  _require("model", "width_multiplier", width,
           "a number > 0 giving at least 1 channel (>= 1/128)",
           _number(width) and round(64 * width) >= 1)
  _require("model", "frozen_stages", model.frozen_stages,
           "an integer in -1..4 (-1: none)", _integer(model.frozen_stages)
           and -1 <= model.frozen_stages <= 4)
  dcn = model.stage_with_dcn
  _require("model", "stage_with_dcn", dcn,
           "4 booleans, for res2..res5", _sequence(dcn) and len(dcn) == 4
           and all(isinstance(v, bool) for v in dcn))
  _require("model", "stage_with_dcn", dcn,
           "all False for depth 18 or 34 (deformable convs need bottleneck "
           "blocks, depth 50 or 101)", model.depth >= 50 or not any(dcn))
  for name in ("neck_channels", "neck_lateral_kernel", "head_norm_groups",
               "predict_levels"):
    value = getattr(model, name)
    _require("model", name, value, "an integer >= 1",
             _integer(value) and value >= 1)
  _require("model", "head_num_convs", model.head_num_convs,
           "an integer >= 0", _integer(model.head_num_convs)
           and model.head_num_convs >= 0)
  _require("model", "reid_dim", model.reid_dim,
           "an integer >= 1, or None for the neck's channels",
           model.reid_dim is None or (_integer(model.reid_dim)
                                      and model.reid_dim >= 1))
  strides = model.strides
  _require("model", "strides", strides,
           "8 * 2^l for at least 3 levels, e.g. (8, 16, 32, 64, 128)",
           _sequence(strides) and len(strides) >= 3
           and tuple(strides) == tuple(8 * 2**i for i in range(len(strides))))
  _require("model", "predict_levels", model.predict_levels,
           f"at most the {len(strides)} levels of model.strides",
           model.predict_levels <= len(strides))
  _require("model", "head_sub_mean_valid_only",
           model.head_sub_mean_valid_only,
           "True or False (True is head_sub_mean_region='image'; it "
           "cannot be combined with another region)",
           isinstance(model.head_sub_mean_valid_only, bool) and not (
               model.head_sub_mean_valid_only
               and model.head_sub_mean_region not in ("canvas", "image")))


def max_reid_samples(batch_size: int, max_boxes: int,
                     center_sample_radius: float | None) -> int:
  """Slots for positive points: the most a batch can have with centre
  sampling, (2r + 1)^2 per box (rounded up), or 64 per box without it."""
  if center_sample_radius is None:
    per_box = 64
  else:
    side = int(2 * center_sample_radius) + 2
    per_box = side * side
  return batch_size * max_boxes * per_box


def pack_positives(pos: jax.Array, max_samples: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Indices of the first `max_samples` positives, in order.

  Args:
    pos: bool[M] positive flags over the flattened (image, point) axis.
    max_samples: static number of slots S.
  Returns:
    idx i32[S] indices into M (0 for empty slots), valid bool[S], and the
    number of positives that did not fit, i32[].
  """
  num = jnp.sum(pos.astype(jnp.int32))
  # A stable sort of "not positive" brings positives first, in their order.
  order = jnp.argsort(jnp.logical_not(pos), stable=True)
  if order.shape[0] < max_samples:
    order = jnp.pad(order, (0, max_samples - order.shape[0]))
  idx = order[:max_samples]
  valid = jnp.arange(max_samples) < num
  overflow = jnp.maximum(num - max_samples, 0)
  return jnp.where(valid, idx, 0), valid, overflow


@dataclasses.dataclass(frozen=True)
class AlignPSSystem:
  """AlignPS behind the system contract (`ps_jax.systems.base`).

  Attributes:
    model: the network (`ps_jax.models.AlignPS`).
    loss: loss settings.
    predict_options: post-processing settings.
    num_ids: K, labeled training identities (OIM lookup-table rows); from
      the dataset's metadata.
  """
  model: AlignPS
  loss_options: AlignPSLoss
  predict_options: AlignPSPredict = AlignPSPredict()
  num_ids: int = 0

  @property
  def embedding_dim(self) -> int:
    return int(self.model.reid_dim or self.model.neck_channels)

  # ------------------------------------------------------------ training

  def init(self, rng: jax.Array, images: jax.Array):
    variables = self.model.init(rng, images, train=True)
    memory = oim.init_memory(self.num_ids, self.loss_options.oim_queue_size,
                             self.embedding_dim)
    return variables, memory

  def is_frozen(self, path: Sequence[str]) -> bool:
    return self.model.is_frozen(path)

  def init_from(self, variables: Any, path: str, *,
                normalization: str) -> Any:
    variables, _ = pretrained.init_backbone_from_file(
        variables, path, style=self.model.style,
        backbone_norm=self.model.backbone_norm,
        data_normalization=normalization)
    return variables

  def loss(self, params: Any, model_state: Any, extra: oim.OIMMemory,
           batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, dict[str, Any]]:
    """Total loss and auxiliaries (metrics, packed re-ID samples)."""
    del rng  # AlignPS's losses draw no random numbers.
    cfg, memory = self.loss_options, extra
    kwargs = ({"image_hw": batch["image_hw"]} if self.model.needs_image_hw
              else {})
    out = self.model.apply({"params": params, **model_state}, batch["image"],
                           train=True, **kwargs)
    ranges = jnp.asarray(cfg.regress_ranges, jnp.float32)
    targets = assign.batched_fcos_targets(
        out["points"], out["strides"], out["levels"], batch["boxes_xyxy"],
        batch["pids"], batch["boxes_valid"], ranges,
        center_sample_radius=cfg.center_sample_radius, norm_by_stride=True)
    det = fcos_losses.fcos_detection_losses(
        out["cls_logits"][..., 0], out["box_ltrb"], out["ctr_logits"][..., 0],
        targets, out["points"], focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma)

    b, p, d = out["reid_emb"].shape
    max_samples = max_reid_samples(b, batch["boxes_xyxy"].shape[1],
                                   cfg.center_sample_radius)
    if cfg.reid_max_samples is not None:
      max_samples = min(max_samples, cfg.reid_max_samples)
    idx, valid, overflow = pack_positives(targets["pos"].reshape(b * p),
                                          max_samples)
    feats = vectors.l2_normalize(
        out["reid_emb"].reshape(b * p, d)[idx].astype(jnp.float32))
    pids = jnp.where(valid, targets["pids"].reshape(b * p)[idx], -1)

    logits = oim.oim_logits(feats, memory, lut_scale=cfg.oim_lut_scale,
                            queue_scale=cfg.oim_queue_scale)
    reid = oim.oim_loss(logits, pids, valid, focal_gamma=cfg.oim_focal_gamma,
                        reduction="mean_all")
    total = (cfg.w_cls * det["loss_cls"] + cfg.w_box * det["loss_box"]
             + cfg.w_ctr * det["loss_ctr"] + cfg.w_oim * reid["loss"])
    metrics = {"loss_cls": det["loss_cls"], "loss_box": det["loss_box"],
               "loss_ctr": det["loss_ctr"], "loss_oim": reid["loss"],
               "num_pos": det["num_pos"], "reid_overflow": overflow}
    if cfg.triplet:
      tri_feats, tri_pids, tri_valid = triplet_losses.alignps_triplet_inputs(
          feats, pids, valid, memory.lut)
      tri = triplet_losses.batch_hard_triplet_loss(
          tri_feats, tri_pids, tri_valid, margin=cfg.triplet_margin)
      total = total + cfg.w_triplet * tri["loss"]
      metrics["loss_triplet"] = tri["loss"]
    metrics["loss"] = total
    aux = {"metrics": metrics, "feats": feats, "pids": pids, "valid": valid}
    return total, aux

  def update_extra(self, extra: oim.OIMMemory, aux: Mapping[str, Any]
                   ) -> oim.OIMMemory:
    cfg = self.loss_options
    return oim.update_memory(
        extra, aux["feats"], aux["pids"], aux["valid"],
        momentum=cfg.oim_momentum, normalize_lut=cfg.oim_normalize_lut,
        queue_dims=cfg.oim_queue_dims)

  # ---------------------------------------------------------- prediction

  def predict(self, variables: Any, batch: Mapping[str, jax.Array],
              query_boxes: jax.Array) -> dict[str, jax.Array]:
    opts = self.predict_options
    kwargs = ({"image_hw": batch["image_hw"]} if self.model.needs_image_hw
              else {})
    out = self.model.apply(variables, batch["image"], train=False, **kwargs)
    scale = base.network_scale(batch)
    pred = person_search.predict_detections(
        out, batch["image_hw"], scale, max_dets=int(opts.max_dets),
        pre_nms_top_k=int(opts.pre_nms_top_k),
        score_threshold=float(opts.score_threshold),
        nms_iou=float(opts.nms_iou), norm_on_bbox=self.model.norm_on_bbox,
        orig_hw=batch["orig_hw"])
    q = person_search.query_embedding(pred, query_boxes, out, scale,
                                      mode=opts.query_mode)
    return {"boxes": pred["boxes"], "scores": pred["scores"],
            "embeddings": pred["embeddings"], "valid": pred["valid"],
            "query_embedding": q["embedding"],
            "query_from_detection": q["from_detection"]}


def from_options(*, model: Mapping[str, Any], loss: Mapping[str, Any],
                 predict: Mapping[str, Any], num_ids: int) -> AlignPSSystem:
  """An AlignPSSystem from plain option mappings (config sections).

  Every option is checked here, before anything is initialised or compiled
  (`check_model`; the loss and predict options check themselves), and so
  are the options that must agree across sections.

  Raises:
    ValueError: a key that is not a field (the valid ones are listed), or a
      value out of range (named, with what is allowed).
  """
  network = base.typed("model", AlignPS, model)
  check_model(network)
  loss_options = base.typed("loss", AlignPSLoss, loss)
  _require("loss", "regress_ranges", loss_options.regress_ranges,
           f"one (low, high) pair per level of model.strides "
           f"({len(network.strides)})",
           len(loss_options.regress_ranges) == len(network.strides))
  dim = int(network.reid_dim or network.neck_channels)
  queue_dims = loss_options.oim_queue_dims
  _require("loss", "oim_queue_dims", queue_dims,
           f"None or at most the embedding size {dim} (model.reid_dim, or "
           "model.neck_channels without a projection)",
           queue_dims is None or queue_dims <= dim)
  return AlignPSSystem(
      model=network, loss_options=loss_options,
      predict_options=base.typed("eval", AlignPSPredict, predict),
      num_ids=int(num_ids))
