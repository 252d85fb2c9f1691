"""OIM on the built-in synthetic person-search benchmark.

  python train.py --config=configs/oim_synthetic.py --workdir=workdir/oim_synthetic

A narrow ResNet-18 OIM trained from scratch on the `default` synthetic
dataset (2,000 training scenes, 150 identities), with the same data, image
sizes, batch and optimizer as the AlignPS main job (configs/synthetic.py),
so the two rows of the README's table differ by the method. The recipe is
SeqNet's torchvision OIM baseline (half of the drawn RoIs foreground, OIM
scale 30, max pooling of res5, detections embedded at their regressed
boxes) shrunk to the benchmark: anchors of 32 to 128 px for people 50 to 190
px tall, 8 x 8 RoIs (res5 then 4 x 4), 32 RoIs per image, 2,000 / 256
proposals in training, 1,000 / 100 at test time; and, as for AlignPS,
GroupNorm and AdamW for training from scratch. 1,600 steps: about 12
minutes on a 2-core CPU with the build and the evaluation (docs/oim.md has
the experiments behind these choices and the results).
"""

from configs import common


def get_config():
  c = common.base(system="oim")
  c.dataset = common.dataset("synthetic_person_search", config="default")
  c.data = common.data(train_scales=[(256, 256), (320, 320)],
                       test_scale=(320, 320), batch_size=8, max_boxes=8,
                       normalization="imagenet_rgb")
  c.model = common.oim_model(
      depth=18, width_multiplier=0.25, frozen_stages=-1,
      backbone_norm="group", anchor_sizes=(32.0, 64.0, 128.0),
      rpn_channels=64, roi_size=8, reid_dim=64)
  c.loss = common.oim_loss(
      rpn_pre_nms_top_k=2000, rpn_post_nms_top_k=256, rpn_min_size=8.0,
      roi_samples=32, roi_fg_fraction=0.5, oim_scale=30.0,
      oim_queue_size=512)
  c.optim = common.adamw(1e-3, weight_decay=0.05, warmup_steps=100,
                         decay_steps=(1400,))
  c.run = common.run(num_steps=1600, log_every=25, checkpoint_every=200)
  c.eval = common.oim_evaluation(det_thresh=0.5, rpn_pre_nms_top_k=1000,
                                 rpn_post_nms_top_k=100, embed_at="box")
  return c
