"""The two-step pipeline on the `tiny` synthetic dataset: a smoke run.

  python train.py --config=configs/two_step_synthetic_tiny.py --workdir=/tmp/two_step_tiny

Trains the tiny AlignPS detector (configs/synthetic_tiny.py) and the tiny
IDE (configs/ide_synthetic_tiny.py) into <workdir>/detector and
<workdir>/reid for a few steps each, then evaluates the pair with and
without CWS: seconds of training, numbers that mean nothing beyond "the
whole path runs".
"""

from configs import common
from configs import ide_synthetic_tiny
from configs import synthetic_tiny


def get_config():
  return common.two_step(synthetic_tiny.get_config(),
                         ide_synthetic_tiny.get_config(), max_crops=8)
