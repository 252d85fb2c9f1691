"""Market-1501 re-ID crops TFDS builder (see README.md)."""

from data_builders.market1501.market1501_dataset_builder import Builder

__all__ = ["Builder"]
