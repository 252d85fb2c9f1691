"""Evaluation: prediction, the person-search protocols and the entry point.

  predict.py        jitted predict step, whole-split prediction, Predictor
  person_search.py  CUHK-SYSU and PRW search protocols (numpy)
  detection.py      detection recall / AP (numpy)
  reid.py           Market-1501 CMC / mAP (numpy)
  ap.py             average precision equal to scikit-learn's
  baselines.py      colour-histogram re-id baseline
  run.py            evaluate(config, workdir): predictions, cache, protocols
  __main__.py       python -m ps_jax.eval --workdir ...

Submodules are imported explicitly (nothing is imported here), so the numpy
protocols load without jax.
"""
