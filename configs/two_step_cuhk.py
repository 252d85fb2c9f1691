"""The PRW paper's two-step baseline on CUHK-SYSU: a detector, then IDE.

  python -m data_builders build cuhk_sysu --manual_dir=/data/cuhk_sysu
  python -m data_builders build market1501 --manual_dir=/data/Market-1501-v15.09.15
  python train.py --config=configs/two_step_cuhk.py --workdir=workdir/two_step_cuhk \\
      --config.detector.init_from=/data/weights/resnet50_torchvision.pth \\
      --config.reid.init_from=/data/weights/resnet50_torchvision.pth
  python train.py --config=configs/two_step_cuhk.py:det ...   # IDE_det

As configs/two_step_prw.py, with the CUHK-SYSU detector
(configs/oim_cuhk.py:seqnet) and its protocol: gallery sizes 50 to 4000
and the full set, with and without CWS. CUHK-SYSU has no cameras, so the
PRW paper's cross-camera protocol does not apply. The same deviation: IDE
is trained on Market-1501's crops (docs/two_step.md).
"""

from configs import common
from configs import ide_market1501
from configs import oim_cuhk


def get_config(arg: str = ""):
  if arg not in ("", "det"):
    raise ValueError(f"configs/two_step_cuhk.py: expected no argument or "
                     f"':det', got {arg!r}")
  c = common.two_step(oim_cuhk.get_config("seqnet"),
                      ide_market1501.get_config(), max_crops=50)
  if arg == "det":
    c.reid.init_from = "workdir/two_step_cuhk/detector"
    c.detector_workdir = "workdir/two_step_cuhk/detector"
  return c
