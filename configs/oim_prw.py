"""OIM on PRW: the Caffe recipe of configs/oim_cuhk.py, or SeqNet's
torchvision baseline with `:seqnet`, with PRW's memory sizes.

  python -m data_builders build prw --manual_dir=/data/prw
  python train.py --config=configs/oim_prw.py --workdir=workdir/oim_prw \
      --config.init_from=/data/weights/resnet50_caffe.npz

The lookup table has a row per labeled training id, read from the dataset
(483 for PRW); the queue holds 500 unlabeled people (SeqNet's PRW value).
`:seqnet` trains 18 epochs of 5,704 frames, decaying at epoch 16. Paper
(OIM on PRW): 21.3 mAP, 49.9 (or 49.4) top-1.
"""

from configs import common
from configs import oim_cuhk

TRAIN_IMAGES = 5704


def get_config(arg: str = ""):
  c = oim_cuhk.get_config(arg)
  c.dataset = common.dataset("prw")
  c.loss.oim_queue_size = 500
  if arg == "seqnet":
    steps_per_epoch = -(-TRAIN_IMAGES // c.data.batch_size)
    c.optim.warmup_steps = steps_per_epoch
    c.optim.decay_steps = (16 * steps_per_epoch,)
    c.run.num_steps = 18 * steps_per_epoch
    c.run.checkpoint_every = steps_per_epoch
  return c
