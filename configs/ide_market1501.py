"""IDE (the PRW paper's ID-discriminative embedding) on Market-1501.

  python -m data_builders build market1501 --manual_dir /data/Market-1501-v15.09.15
  python train.py --config=configs/ide_market1501.py \\
      --config.init_from=/weights/resnet50-0676ba61.pth --workdir=workdir/ide_market

ResNet-50 from torchvision's ImageNet weights, fine-tuned as a 751-way
identity classifier; pool5 (2048-d) is the descriptor (docs/reid.md).

What the paper states: ResNet-50 fine-tuned from ImageNet as an N-way
identity classifier, the pool5 descriptor. What it does not state, and what
is chosen here (torchreid's ResNet-50 softmax recipe on Market-1501, the
common modern reproduction): 256 x 128 crops, random flip and random
translation, batch 32, AMSGrad lr 3e-4 with L2 weight decay 5e-4, 60 epochs
(404 steps each) with the lr divided by 10 at epochs 20 and 40, label
smoothing 0.1. Deviation: batch norm stays as ImageNet left it, statistics
and affine terms (`norm="frozen"`), as ps_jax keeps no batch statistics.
"""

from configs import common

EPOCH = 12936 // 32  # Market-1501 train crops / batch


def get_config():
  c = common.base(system="ide")
  c.dataset = common.dataset("market1501")
  c.data = common.reid_data((256, 128), batch_size=32)
  c.model = dict(depth=50, width_multiplier=1.0, style="pytorch",
                 norm="frozen", dropout=0.0, bottleneck_dim=0)
  c.loss = common.reid_loss(label_smoothing=0.1)
  c.optim = common.adam(3e-4, weight_decay=5e-4, warmup_steps=0,
                        decay_steps=(20 * EPOCH, 40 * EPOCH), amsgrad=True)
  c.run = common.run(num_steps=60 * EPOCH, log_every=50,
                     checkpoint_every=5 * EPOCH)
  c.eval = common.reid_evaluation()
  return c
