"""Helpers that return config *sections* shared by the experiment files.

Each experiment file (`configs/<name>.py`) calls these and shows its whole
recipe, so two experiments differ by a readable diff. `ps_jax.experiment`
turns a config into typed objects once, at the entry point; a section's keys
are the fields of the object it becomes:
  c.system  -> the system's name in ps_jax.systems.build ('alignps', 'oim',
               'ide', 'mlfn', 'glad')
  c.model   -> ps_jax.models.AlignPS(**c.model) (OIM: ps_jax.models.oim.OIMNet;
               crop re-ID: ps_jax.models.reid.{ide.IDE,mlfn.MLFN,glad.GLAD})
  c.loss    -> ps_jax.systems.alignps.AlignPSLoss(**c.loss) (OIM:
               ps_jax.systems.oim.OIMLoss; crop re-ID:
               ps_jax.systems.reid.ReIDLoss)
  c.optim   -> ps_jax.train.optim.OptimOptions(**c.optim)
  c.data    -> ps_jax.data.pipeline.PipelineConfig(**c.data) (crop re-ID:
               ps_jax.data.crops.CropPipelineConfig)
  c.dataset -> ps_jax.experiment.DatasetOptions(**c.dataset)
  c.run     -> ps_jax.experiment.RunOptions(**c.run)
  c.eval    -> ps_jax.eval.protocols.EvalOptions (det_thresh,
               gallery_sizes, duplicates) and the system's predict options (AlignPS:
               ps_jax.systems.alignps.AlignPSPredict, OIM:
               ps_jax.systems.oim.OIMPredict; the other keys)

Sequences are tuples, so that train.py can override them on the command
line: --config.data.train_scales=256x256,320x320 (image sizes "HxW"),
--config.data.test_scale=320x320, --config.eval.gallery_sizes=50,100,-1,
--config.optim.decay_steps=500,700.
"""

from __future__ import annotations

import ml_collections

# AlignPS's multi-scale training list, (height, width): mmdet
# `img_scale=[(667, 400), (1000, 600), (1333, 800), (1500, 900),
# (1666, 1000), (2000, 1200)]` (long side, short side) with keep_ratio, i.e.
# the image is resized to fit inside each pair.
ALIGNPS_TRAIN_SCALES = ((400, 667), (600, 1000), (800, 1333), (900, 1500),
                        (1000, 1666), (1200, 2000))
ALIGNPS_TEST_SCALE = (900, 1500)
INF = 1e8
# Only the stride-8 level can hold positives (AlignPS "stage1").
ALIGNPS_REGRESS_RANGES = ((-1.0, INF), (-2.0, -1.0), (-2.0, -1.0),
                          (-2.0, -1.0), (-2.0, -1.0))


def base(system: str = "alignps") -> ml_collections.ConfigDict:
  """An empty experiment config with the top-level keys every run has."""
  c = ml_collections.ConfigDict()
  # Which system (method) the experiment trains; see ps_jax.systems.build.
  c.system = system
  # A local torchvision / caffe-style ResNet file for the backbone
  # (ps_jax.models.weights); "" trains from scratch. Nothing is downloaded.
  c.init_from = ""
  return c


def dataset(name: str, config: str | None = None,
            data_dir: str | None = None,
            manual_dir: str | None = None) -> ml_collections.ConfigDict:
  """Which TFDS dataset to build or load (`data_builders.build`)."""
  return ml_collections.ConfigDict(dict(
      name=name, config=config or "", data_dir=data_dir or "",
      manual_dir=manual_dir or ""))


def data(train_scales, test_scale, *, batch_size: int, max_boxes: int,
         normalization: str = "caffe_bgr", flip_prob: float = 0.5,
         num_workers: int = 0, eval_batch_size: int | None = None,
         **options) -> ml_collections.ConfigDict:
  """The input pipeline. `batch_size` is the global batch over all devices
  (a multiple of the device count). `options` are further PipelineConfig
  keys (e.g. `resize_antialias`), present only where a config sets them
  (see `evaluation`)."""
  return ml_collections.ConfigDict(dict(
      train_scales=tuple(tuple(s) for s in train_scales),
      test_scale=tuple(test_scale), batch_size=batch_size,
      eval_batch_size=eval_batch_size or batch_size, max_boxes=max_boxes,
      normalization=normalization, flip_prob=flip_prob,
      num_workers=num_workers, **options))


def alignps_model(**overrides) -> ml_collections.ConfigDict:
  """AlignPS R50 (docs/alignps.md): caffe ResNet-50, AFA neck, FCOS."""
  m = dict(
      depth=50, width_multiplier=1.0, style="caffe", frozen_stages=1,
      backbone_norm="frozen", stage_with_dcn=(False, False, False, False),
      neck_channels=256, neck_fuse="concat", neck_dcn=True,
      head_num_convs=4, head_dcn_on_last_conv=True, reid_dim=256,
      strides=(8, 16, 32, 64, 128), dtype="float32")
  m.update(overrides)
  return ml_collections.ConfigDict(m)


def alignps_loss(**overrides) -> ml_collections.ConfigDict:
  """AlignPS losses: focal, GIoU, centerness, focal OIM and triplet."""
  loss = dict(
      regress_ranges=ALIGNPS_REGRESS_RANGES, center_sample_radius=1.5,
      focal_alpha=0.25, focal_gamma=2.0,
      oim_queue_size=5000, oim_lut_scale=10.0, oim_queue_scale=10.0,
      oim_momentum=0.5, oim_normalize_lut=False, oim_queue_dims=64,
      oim_focal_gamma=2.0, triplet=True, triplet_margin=0.3,
      w_cls=1.0, w_box=1.0, w_ctr=1.0, w_oim=1.0, w_triplet=1.0)
  loss.update(overrides)
  return ml_collections.ConfigDict(loss)


def oim_model(**overrides) -> ml_collections.ConfigDict:
  """The OIM network (docs/oim.md): torchvision ResNet-50 split into a
  res2-res4 trunk and a res5 RoI head, SeqNet's anchors and max pooling."""
  m = dict(
      depth=50, width_multiplier=1.0, style="pytorch", frozen_stages=0,
      backbone_norm="frozen", anchor_sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
      anchor_ratios=(0.5, 1.0, 2.0), rpn_channels=None, roi_size=14,
      roi_sampling_ratio=2, head_pool="max", reid_dim=256, dtype="float32")
  m.update(overrides)
  return ml_collections.ConfigDict(m)


def oim_loss(**overrides) -> ml_collections.ConfigDict:
  """OIM sampling and losses, Caffe OIM's values (`ps_jax.systems.oim`)."""
  loss = dict(
      rpn_fg_iou=0.7, rpn_bg_iou=0.3, rpn_batch=256, rpn_fg_fraction=0.5,
      rpn_allowed_border=None, rpn_pre_nms_top_k=12000,
      rpn_post_nms_top_k=2000, rpn_nms_iou=0.7, rpn_min_size=16.0,
      rpn_small_first=True, rpn_beta=1.0 / 9.0, roi_samples=128,
      roi_fg_fraction=0.25, roi_fg_iou=0.5, roi_bg_iou_high=0.5,
      roi_bg_iou_low=0.0, box_beta=1.0, oim_scale=10.0, oim_momentum=0.5,
      oim_queue_size=5000, oim_normalize_lut=True, w_rpn_cls=1.0,
      w_rpn_box=1.0, w_cls=1.0, w_box=1.0, w_oim=1.0)
  loss.update(overrides)
  return ml_collections.ConfigDict(loss)


def oim_evaluation(*, det_thresh: float, query_mode: str = "roi",
                   max_dets: int = 100, score_threshold: float = 0.05,
                   nms_iou: float = 0.4, rpn_pre_nms_top_k: int = 6000,
                   rpn_post_nms_top_k: int = 300,
                   embed_at: str = "proposal", gallery_sizes=(),
                   **options) -> ml_collections.ConfigDict:
  """`evaluation` for the OIM system: its test-time proposal counts, the
  query box as the RoI, where detections are embedded
  (`ps_jax.systems.oim.OIMPredict`)."""
  return ml_collections.ConfigDict(dict(
      det_thresh=det_thresh, query_mode=query_mode, max_dets=max_dets,
      embed_at=embed_at,
      score_threshold=score_threshold, nms_iou=nms_iou,
      rpn_pre_nms_top_k=rpn_pre_nms_top_k,
      rpn_post_nms_top_k=rpn_post_nms_top_k,
      gallery_sizes=tuple(gallery_sizes), **options))


def sgd(lr: float, *, weight_decay: float, warmup_steps: int,
        decay_steps, clip_norm: float | None = 35.0,
        bias_lr_mult: float = 2.0, warmup_ratio: float = 1.0 / 3.0,
        **options) -> ml_collections.ConfigDict:
  """SGD with AlignPS's parameter groups (`ps_jax.train.optim`).

  `options` are further OptimOptions keys (e.g. `norm_weight_decay`),
  present only where a config sets them (see `evaluation`).
  `lr_reference_batch` (0: off) scales `lr` linearly to the global batch
  when set to the batch `lr` was set for (docs/scaling.md), e.g.
  --config.optim.lr_reference_batch=4 for AlignPS's recipe."""
  return ml_collections.ConfigDict(dict(
      lr=lr, momentum=0.9, weight_decay=weight_decay,
      bias_lr_mult=bias_lr_mult, warmup_steps=warmup_steps,
      warmup_ratio=warmup_ratio,
      decay_steps=tuple(decay_steps), decay_factor=0.1, clip_norm=clip_norm,
      lr_reference_batch=0,
      **options))


def adamw(lr: float, *, weight_decay: float, warmup_steps: int,
          decay_steps, clip_norm: float = 35.0, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, warmup_ratio: float = 1e-3,
          **options) -> ml_collections.ConfigDict:
  """AdamW over the same parameter groups and schedule (`ps_jax.train.optim`).

  Decoupled weight decay; conv biases keep the base lr (the 2x multiplier is
  an SGD habit); the warm-up starts from `warmup_ratio` of the base rate,
  near zero, as Adam's first steps are large before its statistics settle.
  """
  return ml_collections.ConfigDict(dict(
      optimizer="adamw", lr=lr, momentum=b1, b2=b2, eps=eps,
      weight_decay=weight_decay, bias_lr_mult=1.0,
      warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
      decay_steps=tuple(decay_steps), decay_factor=0.1, clip_norm=clip_norm,
      lr_reference_batch=0,
      **options))


def run(*, num_steps: int, log_every: int, checkpoint_every: int,
        seed: int = 0) -> ml_collections.ConfigDict:
  """Loop length, logging and checkpoint cadence."""
  return ml_collections.ConfigDict(dict(
      num_steps=num_steps, log_every=log_every,
      checkpoint_every=checkpoint_every, max_to_keep=3, seed=seed,
      eval_at_end=True))


def evaluation(*, det_thresh: float, query_mode: str = "best_iou",
               max_dets: int = 100, score_threshold: float = 0.05,
               nms_iou: float = 0.5, pre_nms_top_k: int = 1000,
               gallery_sizes=(), **options) -> ml_collections.ConfigDict:
  """Prediction post-processing and protocol options (`ps_jax.eval`).

  `gallery_sizes` lists the CUHK-style gallery sizes to report (empty: every
  size the dataset stores); PRW-style datasets always report both the
  all-cameras and the cross-camera gallery. `options` are further keys
  (e.g. `duplicates`), present only where a config sets them, so that the
  configs that leave them at their defaults keep the keys of their
  checkpoints."""
  return ml_collections.ConfigDict(dict(
      det_thresh=det_thresh, query_mode=query_mode, max_dets=max_dets,
      score_threshold=score_threshold, nms_iou=nms_iou,
      pre_nms_top_k=pre_nms_top_k, gallery_sizes=tuple(gallery_sizes),
      **options))


# --------------------------------------------------------- crop re-ID nets


def reid_data(image_hw=(256, 128), *, batch_size: int,
              normalization: str = "imagenet_rgb", flip_prob: float = 0.5,
              random_crop: bool = True, random_erasing_prob: float = 0.0,
              sampler: str = "random", num_instances: int = 4,
              num_workers: int = 0, eval_batch_size: int | None = None
              ) -> ml_collections.ConfigDict:
  """The crop pipeline (`ps_jax.data.crops.CropPipelineConfig`): every crop
  resized to `image_hw` (H, W), torchreid's flip and random translation,
  optional random erasing, `sampler="identity"` for P x K batches of
  `num_instances` crops per identity (batch-hard triplet)."""
  return ml_collections.ConfigDict(dict(
      image_hw=tuple(image_hw), batch_size=batch_size,
      eval_batch_size=eval_batch_size or batch_size,
      normalization=normalization, flip_prob=flip_prob,
      random_crop=random_crop, random_erasing_prob=random_erasing_prob,
      sampler=sampler, num_instances=num_instances, num_workers=num_workers))


def reid_loss(*, label_smoothing: float = 0.0, w_triplet: float = 0.0,
              triplet_margin: float = 0.3) -> ml_collections.ConfigDict:
  """Identity softmax (+ optional batch-hard triplet) of the crop re-ID
  nets (`ps_jax.systems.reid.ReIDLoss`)."""
  return ml_collections.ConfigDict(dict(
      label_smoothing=label_smoothing, w_id=1.0, w_triplet=w_triplet,
      triplet_margin=triplet_margin))


def adam(lr: float, *, weight_decay: float, warmup_steps: int, decay_steps,
         amsgrad: bool = False, warmup_ratio: float = 0.1,
         clip_norm: float | None = None) -> ml_collections.ConfigDict:
  """torch.optim.Adam (coupled L2 weight decay; `amsgrad`) with step decay,
  as torchreid trains re-ID nets (`ps_jax.train.optim`)."""
  return ml_collections.ConfigDict(dict(
      optimizer="amsgrad" if amsgrad else "adam", lr=lr, momentum=0.9,
      b2=0.999, eps=1e-8, weight_decay=weight_decay, bias_lr_mult=1.0,
      warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
      decay_steps=tuple(decay_steps), decay_factor=0.1, clip_norm=clip_norm,
      lr_reference_batch=0,
      norm_weight_decay=True))


def reid_evaluation() -> ml_collections.ConfigDict:
  """Crop re-ID evaluation: the Market-1501 protocol, cosine and Euclidean
  rankings (`ps_jax.eval.crop_reid`); no options to set."""
  return ml_collections.ConfigDict()


# --------------------------------------------------------------- two-step


def two_step(detector: ml_collections.ConfigDict,
             reid: ml_collections.ConfigDict, *, detector_workdir: str = "",
             reid_workdir: str = "", max_crops: int = 20,
             crop_sampling: int = 4, cws: bool = True,
             prw_paper: bool = False) -> ml_collections.ConfigDict:
  """A two-step experiment (`ps_jax.systems.two_step`): two whole configs,
  each trained into its workdir ('' for <workdir>/detector, <workdir>/reid)
  unless a finished checkpoint is there, then evaluated together on the
  detector's dataset, data and protocol (its eval section without the
  detector's own predict keys, which stay in detector.eval), with and
  without CWS, and with `prw_paper` the PRW paper's cross-camera protocol
  too (it needs cameras). The crop size is the re-ID config's
  `data.image_hw`."""
  c = base(system="two_step")
  del c.init_from  # the stages have their own
  c.detector = detector
  c.reid = reid
  c.detector_workdir = detector_workdir
  c.reid_workdir = reid_workdir
  c.dataset = ml_collections.ConfigDict(detector.dataset.to_dict())
  c.data = ml_collections.ConfigDict(detector.data.to_dict())
  c.model = ml_collections.ConfigDict(dict(max_crops=max_crops,
                                           crop_sampling=crop_sampling))
  protocol = ("det_thresh", "gallery_sizes", "duplicates")
  c.eval = ml_collections.ConfigDict(
      {k: v for k, v in detector.eval.to_dict().items() if k in protocol})
  c.eval.cws = cws
  c.eval.prw_paper = prw_paper
  c.run = ml_collections.ConfigDict(dict(seed=0, eval_at_end=True))
  return c
