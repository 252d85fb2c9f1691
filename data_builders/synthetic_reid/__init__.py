"""Synthetic re-ID crops TFDS builder (see README.md)."""

from data_builders.synthetic_reid import (
    synthetic_reid_dataset_builder as _builder)

SyntheticReid = _builder.SyntheticReid

__all__ = ["SyntheticReid"]
