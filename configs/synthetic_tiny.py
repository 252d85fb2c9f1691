"""A tiny AlignPS on the `tiny` synthetic dataset, for tests and smoke runs.

  python train.py --config=configs/synthetic_tiny.py --workdir=/tmp/ps_tiny

Builds its dataset in about a second and trains a few steps in seconds; the
numbers it reports mean nothing beyond "the whole path runs".
"""

from configs import common


def get_config():
  c = common.base()
  c.dataset = common.dataset("synthetic_person_search", config="tiny")
  c.data = common.data(train_scales=[(96, 96), (128, 128)],
                       test_scale=(128, 128), batch_size=8, max_boxes=4,
                       normalization="imagenet_rgb")
  c.model = common.alignps_model(
      depth=18, width_multiplier=0.125, style="pytorch", frozen_stages=-1,
      backbone_norm="group", neck_channels=16, reid_dim=16,
      head_num_convs=1)
  c.loss = common.alignps_loss(oim_queue_size=16, oim_queue_dims=None)
  c.optim = common.sgd(0.01, weight_decay=1e-4, warmup_steps=2,
                       decay_steps=())
  c.run = common.run(num_steps=6, log_every=2, checkpoint_every=3)
  c.eval = common.evaluation(det_thresh=0.05)
  return c
