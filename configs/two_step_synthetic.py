"""The two-step pipeline (PRW paper) on the built-in synthetic benchmark.

  python train.py --config=configs/two_step_synthetic.py --workdir=workdir/two_step_synthetic

Detector: the AlignPS of the main job (configs/synthetic.py), its re-ID
branch unused; re-ID: MLFN on the synthetic crops
(configs/mlfn_synthetic.py), the strongest of the three crop nets there
(docs/reid.md). Each stage is trained into the main job's and the MLFN
config's default workdirs (workdir/synthetic, workdir/mlfn_synthetic)
unless a finished run is already there, which is then reused; the pair is
evaluated on the detector's protocol (CUHK-SYSU-style galleries of 50 and
100, 523 queries) with and without CWS, and on the PRW paper's
cross-camera protocol with its curve (eval_results_prw_paper.png). The 20
highest-scoring detections of each image are embedded (scenes hold 1 to 8
people). About 30 minutes on a 2-core CPU when both stages have to be
trained (docs/two_step.md).

Another crop net: a config file of your own that passes, say,
ide_synthetic.get_config() to common.two_step with its own reid_workdir.
"""

from configs import common
from configs import mlfn_synthetic
from configs import synthetic


def get_config():
  return common.two_step(synthetic.get_config(), mlfn_synthetic.get_config(),
                         detector_workdir="workdir/synthetic",
                         reid_workdir="workdir/mlfn_synthetic",
                         max_crops=20, prw_paper=True)
