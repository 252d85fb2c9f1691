"""The PRW paper's two-step baseline on PRW: a detector, then IDE, with CWS.

  python -m data_builders build prw --manual_dir=/data/prw
  python -m data_builders build market1501 --manual_dir=/data/Market-1501-v15.09.15
  python train.py --config=configs/two_step_prw.py --workdir=workdir/two_step_prw \\
      --config.detector.init_from=/data/weights/resnet50_torchvision.pth \\
      --config.reid.init_from=/data/weights/resnet50_torchvision.pth
  python train.py --config=configs/two_step_prw.py:det ...   # IDE_det

Detector: the OIM Faster R-CNN (SeqNet's torchvision recipe,
configs/oim_prw.py:seqnet), its re-ID branch unused; the paper's DPM, ACF
and LDCF detectors are not in ps_jax. Re-ID: IDE, a ResNet-50 identity
classifier with the pool5 descriptor (configs/ide_market1501.py), from
ImageNet weights, or with `:det` from the trained detector's backbone
(IDE_det, the paper's best; the detector is trained first, so the
re-ID stage finds it). Each stage trains into <workdir>/detector and
<workdir>/reid unless a finished run is there. The pair is evaluated on
PRW's person-search protocol with and without CWS, and on the paper's own
cross-camera protocol with its curve. Paper: DPM-Alex + IDE_det + CWS,
about 20.5 mAP / 48.3 rank-1 on its protocol.

Deviation: IDE is trained on Market-1501's crops, not on crops of PRW's
training frames, as ps_jax has no crop builder for PRW yet
(docs/two_step.md).
"""

from configs import common
from configs import ide_market1501
from configs import oim_prw


def get_config(arg: str = ""):
  if arg not in ("", "det"):
    raise ValueError(f"configs/two_step_prw.py: expected no argument or "
                     f"':det', got {arg!r}")
  c = common.two_step(oim_prw.get_config("seqnet"),
                      ide_market1501.get_config(), max_crops=50,
                      prw_paper=True)
  if arg == "det":
    c.reid.init_from = "workdir/two_step_prw/detector"
    c.detector_workdir = "workdir/two_step_prw/detector"
  return c
