"""AlignPS (and AlignPS+) on PRW: the paper's recipe.

  python -m data_builders build prw --manual_dir=/data/prw
  python train.py --config=configs/alignps_prw.py --workdir=workdir/prw \
      --config.init_from=/data/weights/resnet50_caffe.npz
  python train.py --config=configs/alignps_prw.py:plus ...   # AlignPS+

Differences from CUHK-SYSU (docs/alignps.md): no triplet loss;
OIM with the 483 labeled training ids (read from the dataset), queue 500,
LUT scale 15 and queue scale 10, LUT rows renormalised after each update;
weight decay 1e-3 (7e-4 for AlignPS+); 1,426 steps per epoch; evaluated with
detection threshold 0.15 on all cameras and, as an option, across cameras.
Paper: 45.9 mAP / 81.9 top-1 (AlignPS), 46.1 / 82.1 (AlignPS+).
"""

from configs import common

STEPS_PER_EPOCH = 1426  # 5,704 training frames / batch 4


def get_config(arg: str = ""):
  plus = arg == "plus"
  c = common.base()
  c.dataset = common.dataset("prw")
  c.data = common.data(train_scales=common.ALIGNPS_TRAIN_SCALES,
                       test_scale=common.ALIGNPS_TEST_SCALE, batch_size=4,
                       max_boxes=32, normalization="caffe_bgr",
                       # mmcv's imresize: OpenCV bilinear, no antialiasing.
                       resize_antialias=False,
                       # Images taller than wide get the transposed bucket
                       # and their own batches (mmdet's GroupSampler).
                       portrait_buckets=True)
  c.model = common.alignps_model(
      stage_with_dcn=(False, True, True, True) if plus else
      (False, False, False, False),
      # AlignPS's neck init_weights: Xavier on the deformable offset convs.
      neck_offset_init="xavier",
      # P3's "sub" mean over the image padded to a multiple of 32 (testing)
      # or the batch's largest padded image (training), as the reference.
      head_sub_mean_region="image_pad32")
  c.loss = common.alignps_loss(oim_queue_size=500, oim_lut_scale=15.0,
                               oim_queue_scale=10.0, oim_normalize_lut=True,
                               oim_queue_dims=64, triplet=False)
  c.optim = common.sgd(0.001, weight_decay=7e-4 if plus else 1e-3,
                       warmup_steps=500,
                       decay_steps=(16 * STEPS_PER_EPOCH,
                                    22 * STEPS_PER_EPOCH),
                       norm_weight_decay=True)  # mmcv: norm_decay_mult=1
  c.run = common.run(num_steps=24 * STEPS_PER_EPOCH, log_every=50,
                     checkpoint_every=STEPS_PER_EPOCH)
  c.eval = common.evaluation(det_thresh=0.15, query_mode="best_iou")
  return c
