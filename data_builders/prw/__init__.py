"""PRW person-search TFDS builder (see README.md)."""

from data_builders.prw.prw_dataset_builder import Builder

__all__ = ["Builder"]
