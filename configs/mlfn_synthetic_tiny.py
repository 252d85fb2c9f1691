"""A tiny MLFN on the `tiny` synthetic re-ID crops, for tests and smoke runs.

  python train.py --config=configs/mlfn_synthetic_tiny.py --workdir=/tmp/mlfn_tiny

Builds its dataset in seconds and trains a few steps; the mAP and rank-1 it
reports mean nothing beyond "the whole path runs".
"""

from configs import common


def get_config():
  c = common.base(system="mlfn")
  c.dataset = common.dataset("synthetic_reid", config="tiny")
  c.data = common.reid_data((64, 32), batch_size=8, eval_batch_size=16)
  c.model = dict(groups=32, width_multiplier=0.0625, norm="group",
                 branch_relu=False, zero_init_residual=True)
  c.loss = common.reid_loss(label_smoothing=0.1)
  c.optim = common.adam(1e-3, weight_decay=5e-4, warmup_steps=2,
                        decay_steps=())
  c.run = common.run(num_steps=4, log_every=2, checkpoint_every=2)
  c.eval = common.reid_evaluation()
  return c
