"""OIM on CUHK-SYSU: the paper's Caffe recipe, or SeqNet's torchvision
baseline with `:seqnet`.

  python -m data_builders build cuhk_sysu --manual_dir=/data/cuhk_sysu
  python train.py --config=configs/oim_cuhk.py --workdir=workdir/oim_cuhk \
      --config.init_from=/data/weights/resnet50_caffe.npz
  python train.py --config=configs/oim_cuhk.py:seqnet --workdir=... \
      --config.init_from=/data/weights/resnet50_torchvision.pth

The paper (docs/oim.md): ImageNet ResNet-50, BN frozen, conv1 frozen;
anchors of 128, 256 and 512 px, a 512-wide RPN; 128 RoIs per image, a
quarter foreground; average-pooled res5; OIM with the 5,532 training ids
(read from the dataset), queue 5000, scale 10, momentum 0.5; SGD lr 0.001,
momentum 0.9, weight decay 5e-4, 2 images per update, 50,000 updates, x0.1 at
40,000; shorter side 600, longer at most 1000; NMS 0.4 and detection
threshold 0.5 at test time. Paper: 75.5 mAP / 78.7 top-1 on gallery 100.

`:seqnet` is the "OIM baseline" of SeqNet / NAE / COAT (about 88-90 mAP
there): anchors 32-512 px, a 1024-wide RPN, half the RoIs foreground,
max-pooled res5, OIM scale 30; images 900 / 1500, batch 5, ImageNet mean and
std; SGD lr 0.003 with a linear warm-up over the first epoch, x0.1 at epoch
16 of 20, gradients clipped at 10. Its identity embedding (NAE-style, two
BN-projected halves) is not reproduced: the plain 256-d projection is used
(docs/oim.md).
"""

from configs import common
from ps_jax.ops import anchors

TRAIN_IMAGES = 11206


def get_config(arg: str = ""):
  if arg not in ("", "seqnet"):
    raise ValueError(f"configs/oim_cuhk.py: expected no argument or "
                     f"':seqnet', got {arg!r}")
  c = common.base(system="oim")
  c.dataset = common.dataset("cuhk_sysu")
  if arg == "seqnet":
    batch, steps_per_epoch = 5, -(-TRAIN_IMAGES // 5)
    c.data = common.data(train_scales=[(900, 1500)], test_scale=(900, 1500),
                         batch_size=batch, max_boxes=32,
                         normalization="imagenet_rgb", portrait_buckets=True)
    c.model = common.oim_model()
    c.loss = common.oim_loss(rpn_min_size=1e-3, rpn_small_first=False,
                             roi_fg_fraction=0.5, box_beta=1.0 / 9.0,
                             oim_scale=30.0)
    c.optim = common.sgd(0.003, weight_decay=5e-4,
                         warmup_steps=steps_per_epoch,
                         decay_steps=(16 * steps_per_epoch,), clip_norm=10.0,
                         bias_lr_mult=1.0, warmup_ratio=1e-3,
                         norm_weight_decay=True)
    c.run = common.run(num_steps=20 * steps_per_epoch, log_every=50,
                       checkpoint_every=steps_per_epoch)
  else:
    c.data = common.data(train_scales=[(600, 1000)], test_scale=(600, 1000),
                         batch_size=2, max_boxes=32, normalization="caffe_bgr",
                         portrait_buckets=True)
    c.model = common.oim_model(style="caffe", anchor_sizes=anchors.OIM_SIZES,
                               rpn_channels=512, head_pool="avg")
    c.loss = common.oim_loss()
    c.optim = common.sgd(0.001, weight_decay=5e-4, warmup_steps=0,
                         decay_steps=(40000,), clip_norm=None)
    c.run = common.run(num_steps=50000, log_every=50, checkpoint_every=5000)
  c.eval = common.oim_evaluation(det_thresh=0.5)
  return c
