"""CUHK-SYSU person-search TFDS builder (see README.md)."""

from data_builders.cuhk_sysu.cuhk_sysu_dataset_builder import Builder

__all__ = ["Builder"]
