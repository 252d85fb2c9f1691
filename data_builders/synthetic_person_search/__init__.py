"""Synthetic person-search TFDS builder (see README.md)."""

from data_builders.synthetic_person_search import (
    synthetic_person_search_dataset_builder as _builder)

SyntheticPersonSearch = _builder.SyntheticPersonSearch

__all__ = ["SyntheticPersonSearch"]
