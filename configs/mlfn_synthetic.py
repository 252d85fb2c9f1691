"""MLFN on the synthetic re-ID crops (the crop view of the built-in benchmark).

  python train.py --config=configs/mlfn_synthetic.py --workdir=workdir/mlfn_synthetic

MLFN's full structure (16 blocks, 32 factor modules each, the factor
signature fused with the deep feature) at a quarter of its widths, with
GroupNorm, trained from scratch with the identity softmax on the
ground-truth crops of the `default` synthetic training scenes, at 96 x 48.
One deviation from torchreid's block: no ReLU on the branch before the add,
and each branch's last norm starts at scale 0 (`branch_relu=False`,
`zero_init_residual=True`, ResNet's form). With torchreid's form the loss
sat at chance for 300 steps and the run lost to colour histograms
(docs/reid.md). Batch 32, Adam 1e-3 with L2 5e-4, 100 warm-up steps, x0.1
at step 1,000 of 1,200, label smoothing 0.1. The whole run, dataset build
and evaluation included, fits in 15 minutes on a 2-core CPU (docs/reid.md
has the results).
"""

from configs import common


def get_config():
  c = common.base(system="mlfn")
  c.dataset = common.dataset("synthetic_reid", config="default")
  c.data = common.reid_data((96, 48), batch_size=32, eval_batch_size=128)
  c.model = dict(groups=32, width_multiplier=0.25, norm="group",
                 branch_relu=False, zero_init_residual=True)
  c.loss = common.reid_loss(label_smoothing=0.1)
  c.optim = common.adam(1e-3, weight_decay=5e-4, warmup_steps=100,
                        decay_steps=(1000,))
  c.run = common.run(num_steps=1200, log_every=50, checkpoint_every=250)
  c.eval = common.reid_evaluation()
  return c
