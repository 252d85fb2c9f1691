"""TFDS builders of the person-search datasets, one folder per dataset.

Build them with `python -m data_builders build <name>` or
`data_builders.build.build_dataset(name, ...)`; see data_builders/README.md.
Builder modules are imported lazily by `data_builders.build`, so importing
this package is cheap.
"""
