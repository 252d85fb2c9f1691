"""Fixtures shared by the data tests.

`tiny_synthetic_dir`: a TFDS data_dir holding the `tiny` config of the
synthetic person-search benchmark, built once per test session (about a
second). Open it with

  builder = data_builders.build.load_builder(
      "synthetic_person_search", "tiny", data_dir=tiny_synthetic_dir)
  source = builder.as_data_source("train")   # also "test", "query"
"""

import pytest

from data_builders import build


@pytest.fixture(scope="session")
def tiny_synthetic_dir(tmp_path_factory) -> str:
  data_dir = tmp_path_factory.mktemp("tfds_tiny_synthetic")
  build.build_dataset("synthetic_person_search", "tiny", data_dir=data_dir)
  return str(data_dir)
