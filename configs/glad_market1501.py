"""GLAD (Wei et al. 2017) on Market-1501.

  python train.py --config=configs/glad_market1501.py \\
      --config.init_from=/weights/googlenet-1378be20.pth --workdir=workdir/glad_market

Four streams (the crop, head, upper body, lower body) through one GoogLeNet
trunk from torchvision's ImageNet weights, an identity classifier per
stream, the 4 x 1024-d concatenated descriptor (docs/reid.md).

Market-1501 has no keypoints and ps_jax runs no pose estimator, so the parts
are the fixed-ratio estimate (head 0-20 %, upper body 15-55 %, lower body
50-100 % of the crop height): this is "GLAD (fixed-ratio parts)", not the
paper's keypoint-aligned GLAD, and the results file says so.

Stated by the paper: GoogLeNet, four streams sharing the trunk, a softmax
loss per stream summed, the concatenated descriptor. Not stated, chosen
here: the crop at 256 x 128 and every part resized to 128 x 128, random
flip and translation, batch 32, AMSGrad lr 3e-4 with L2 weight decay 5e-4,
60 epochs with the lr divided by 10 at epochs 20 and 40 (torchreid's
recipe, as for IDE and MLFN). Deviation: batch norm frozen at its
ImageNet values (statistics and affine terms).
"""

from configs import common

EPOCH = 12936 // 32


def get_config():
  c = common.base(system="glad")
  c.dataset = common.dataset("market1501")
  c.data = common.reid_data((256, 128), batch_size=32)
  c.model = dict(trunk="googlenet", width_multiplier=1.0, norm="frozen",
                 transform_input=True, part_hw=(128, 128), keypoints="fixed")
  c.loss = common.reid_loss(label_smoothing=0.0)
  c.optim = common.adam(3e-4, weight_decay=5e-4, warmup_steps=0,
                        decay_steps=(20 * EPOCH, 40 * EPOCH), amsgrad=True)
  c.run = common.run(num_steps=60 * EPOCH, log_every=50,
                     checkpoint_every=5 * EPOCH)
  c.eval = common.reid_evaluation()
  return c
