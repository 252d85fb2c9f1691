"""GLAD on the synthetic re-ID crops, with the generator's keypoints.

  python train.py --config=configs/glad_synthetic.py --workdir=workdir/glad_synthetic

The four streams (crop, head, upper body, lower body) through one
quarter-width GoogLeNet with GroupNorm, trained from scratch on the
ground-truth crops of the `default` synthetic training scenes. The parts
come from the four keypoints the synthetic dataset stores for every crop
(head top, neck, hips), as the paper's come from a pose estimator: this is
keypoint-aligned GLAD. The crop is 128 x 64 and every part 64 x 64; batch
32, Adam 1e-3 with L2 5e-4, 100 warm-up steps, x0.1 at step 1,200 of 1,500,
label smoothing 0.1. The whole run, dataset build and evaluation included,
fits in 15 minutes on a 2-core CPU (docs/reid.md has the results).
"""

from configs import common


def get_config():
  c = common.base(system="glad")
  c.dataset = common.dataset("synthetic_reid", config="default")
  c.data = common.reid_data((128, 64), batch_size=32, eval_batch_size=128)
  c.model = dict(trunk="googlenet", width_multiplier=0.25, norm="group",
                 part_hw=(64, 64), keypoints="dataset")
  c.loss = common.reid_loss(label_smoothing=0.1)
  c.optim = common.adam(1e-3, weight_decay=5e-4, warmup_steps=100,
                        decay_steps=(1200,))
  c.run = common.run(num_steps=1500, log_every=50, checkpoint_every=250)
  c.eval = common.reid_evaluation()
  return c
