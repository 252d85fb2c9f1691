"""IDE on the synthetic re-ID crops (the crop view of the built-in benchmark).

  python train.py --config=configs/ide_synthetic.py --workdir=workdir/ide_synthetic

A quarter-width ResNet-50 with GroupNorm, trained from scratch as a
150-way identity classifier on the ground-truth crops of the `default`
synthetic training scenes; pool5 is the descriptor. Crops at 128 x 64, the
recipe of the Market-1501 config (softmax with label smoothing, random flip
and translation, Adam with coupled weight decay, step decay) with a larger
lr for training from scratch: batch 32, Adam 1e-3 with L2 5e-4, 100
warm-up steps, x0.1 at step 1,400 of 1,700. The whole run, dataset build
and evaluation included, fits in 15 minutes on a 2-core CPU (docs/reid.md
has the results).
"""

from configs import common


def get_config():
  c = common.base(system="ide")
  c.dataset = common.dataset("synthetic_reid", config="default")
  c.data = common.reid_data((128, 64), batch_size=32, eval_batch_size=128)
  c.model = dict(depth=50, width_multiplier=0.25, style="pytorch",
                 norm="group", dropout=0.0, bottleneck_dim=0)
  c.loss = common.reid_loss(label_smoothing=0.1)
  c.optim = common.adam(1e-3, weight_decay=5e-4, warmup_steps=100,
                        decay_steps=(1400,))
  c.run = common.run(num_steps=1700, log_every=50, checkpoint_every=250)
  c.eval = common.reid_evaluation()
  return c
