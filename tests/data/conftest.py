"""Fixtures of the data tests.

`tiny_synthetic_dir` (tests/conftest.py): a TFDS data_dir holding the `tiny`
config of the synthetic person-search benchmark, built once per test session
(about a second). Open it with

  builder = data_builders.build.load_builder(
      "synthetic_person_search", "tiny", data_dir=tiny_synthetic_dir)
  source = builder.as_data_source("train")   # also "test", "query"
"""
