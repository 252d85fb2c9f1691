"""MLFN (Chang et al. 2018) on Market-1501.

  python train.py --config=configs/mlfn_market1501.py --workdir=workdir/mlfn_market
  # or start from a torchreid MLFN state dict (ImageNet or re-ID trained),
  # whose batch norms stay frozen at the file's values, in torchreid's own
  # block form:
  python train.py --config=configs/mlfn_market1501.py --config.model.norm=frozen \\
      --config.model.branch_relu=True --config.model.zero_init_residual=False \\
      --config.init_from=/weights/mlfn_imagenet.pth.tar --workdir=...

MLFN exactly as torchreid builds it (16 blocks 3/4/6/3, 32 factor modules
per block, 512-d factor signature, 1024-d fused descriptor), trained with
the identity softmax loss (docs/reid.md).

What is stated: 256 x 128 input, identity softmax, Adam (the paper); random
flip and random crop (torchreid's model-zoo row, Market-1501 R1 90.1 / mAP
74.3). What is not, and is chosen here: Adam lr 3e-4, L2 weight decay 5e-4,
batch 32, 60 epochs with the lr divided by 10 at epochs 20 and 40
(torchreid's defaults for its softmax recipes). The MLFN ImageNet weights
torchreid points to must be fetched by hand; without them the net trains
from its initialisation. Deviations: batch-norm statistics are frozen
(`norm="frozen"`) when weights are imported; from scratch, GroupNorm
(`norm="group"`) replaces batch norm, since ps_jax keeps no batch
statistics, and each block's branch has no ReLU before the add and starts
at zero (`branch_relu=False`, `zero_init_residual=True`): on the synthetic
crops, trained from scratch under GroupNorm, torchreid's form lost to
colour histograms and this one did not (docs/reid.md).
"""

from configs import common

EPOCH = 12936 // 32


def get_config():
  c = common.base(system="mlfn")
  c.dataset = common.dataset("market1501")
  c.data = common.reid_data((256, 128), batch_size=32)
  c.model = dict(groups=32, width_multiplier=1.0, norm="group",
                 branch_relu=False, zero_init_residual=True)
  c.loss = common.reid_loss(label_smoothing=0.0)
  c.optim = common.adam(3e-4, weight_decay=5e-4, warmup_steps=0,
                        decay_steps=(20 * EPOCH, 40 * EPOCH))
  c.run = common.run(num_steps=60 * EPOCH, log_every=50,
                     checkpoint_every=5 * EPOCH)
  c.eval = common.reid_evaluation()
  return c
