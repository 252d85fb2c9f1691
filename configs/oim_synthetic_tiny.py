"""A tiny OIM on the `tiny` synthetic dataset, for tests and smoke runs.

  python train.py --config=configs/oim_synthetic_tiny.py --workdir=/tmp/oim_tiny

Builds its dataset in about a second and trains a few steps in seconds; the
numbers it reports mean nothing beyond "the whole path runs".
"""

from configs import common


def get_config():
  c = common.base(system="oim")
  c.dataset = common.dataset("synthetic_person_search", config="tiny")
  c.data = common.data(train_scales=[(96, 96), (128, 128)],
                       test_scale=(128, 128), batch_size=8, max_boxes=4,
                       normalization="imagenet_rgb")
  c.model = common.oim_model(
      depth=18, width_multiplier=0.125, frozen_stages=-1,
      backbone_norm="group", anchor_sizes=(16.0, 32.0, 64.0), rpn_channels=16,
      roi_size=4, reid_dim=16)
  c.loss = common.oim_loss(
      rpn_batch=32, rpn_pre_nms_top_k=200, rpn_post_nms_top_k=32,
      rpn_min_size=2.0, roi_samples=16, roi_fg_fraction=0.5,
      oim_queue_size=16)
  c.optim = common.sgd(0.01, weight_decay=1e-4, warmup_steps=2,
                       decay_steps=())
  c.run = common.run(num_steps=6, log_every=2, checkpoint_every=3)
  c.eval = common.oim_evaluation(det_thresh=0.05, rpn_pre_nms_top_k=200,
                                 rpn_post_nms_top_k=32, max_dets=16)
  return c
