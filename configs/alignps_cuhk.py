"""AlignPS (and AlignPS+) on CUHK-SYSU: the paper's recipe.

  python -m data_builders build cuhk_sysu --manual_dir=/data/cuhk_sysu
  python train.py --config=configs/alignps_cuhk.py --workdir=workdir/cuhk \
      --config.init_from=/data/weights/resnet50_caffe.npz
  python train.py --config=configs/alignps_cuhk.py:plus ...   # AlignPS+

The reference (docs/alignps.md): caffe ResNet-50 from ImageNet weights,
frozen BN, stem + res2 frozen; AFA neck with deformable lateral and output
convs fused by concatenation; FCOS head with 4-conv GN towers, deformable last
tower conv, only the stride-8 level positive; focal OIM (LUT of the 5,532
training ids read from the dataset, queue 5000 writing 64 dims, scale 10, LUT
not renormalised) plus triplet; SGD lr 0.001, batch 4, 24 epochs with decays
at epochs 16 and 22 (2,802 steps per epoch), multi-scale training, test at
1500x900. Paper: 93.1 mAP / 93.4 top-1 (AlignPS), 94.0 / 94.5 (AlignPS+), on
gallery 100 with detection threshold 0.2.
"""

from configs import common

STEPS_PER_EPOCH = 2802  # 11,206 training images / batch 4


def get_config(arg: str = ""):
  plus = arg == "plus"
  c = common.base()
  c.dataset = common.dataset("cuhk_sysu")
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
  c.loss = common.alignps_loss(oim_queue_size=5000, oim_lut_scale=10.0,
                               oim_queue_scale=10.0, oim_normalize_lut=False,
                               oim_queue_dims=64, triplet=True)
  c.optim = common.sgd(0.001, weight_decay=1e-4, warmup_steps=500,
                       decay_steps=(16 * STEPS_PER_EPOCH,
                                    22 * STEPS_PER_EPOCH),
                       norm_weight_decay=True)  # mmcv: norm_decay_mult=1
  c.run = common.run(num_steps=24 * STEPS_PER_EPOCH, log_every=50,
                     checkpoint_every=STEPS_PER_EPOCH)
  # AlignPS's script ranks an image that a gallery list names twice once
  # per entry.
  c.eval = common.evaluation(det_thresh=0.2, query_mode="best_iou",
                             duplicates="repeat")
  return c
