"""Builds and loads the person-search datasets of ps_jax (TFDS, ArrayRecord).

No TensorFlow and no `tfds` command line (it needs apache-beam): datasets are
built with `download_and_prepare` through this module, from Python
(`build_dataset`, `load_builder`) or the command line:

  python -m data_builders build synthetic_person_search --config tiny \\
      --data_dir /tmp/tfds
  python -m data_builders build cuhk_sysu --manual_dir /data/cuhk_sysu
  python -m data_builders build synthetic_person_search --config tiny \\
      --data_dir /tmp/tfds --overwrite     # delete it and build it again
  python -m data_builders list

Data directory: `data_dir` if given, else the environment variable
PS_JAX_DATA_DIR, else the TFDS default (TFDS_DATA_DIR or
~/tensorflow_datasets). A dataset lands in <data_dir>/<name>/<config>/<version>.

A built dataset that cannot be read (unreadable dataset_info.json or
metadata.json; a missing, truncated or corrupt record file, found by
`ps_jax.data.pipeline.data_source`) raises `DataError` naming the file and
the command that rebuilds it (`--overwrite`).

Adding a builder: put it in data_builders/<name>/<name>_dataset_builder.py
(TFDS folder layout) and add one line to BUILDERS. The value is the builder
class name inside that module, or "package.module:ClassName" for a builder
that lives elsewhere. Modules are imported only when their builder is used,
so a broken or slow builder module does not affect the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence

from absl import logging
import tensorflow_datasets as tfds

from data_builders import raw_io
from ps_jax.data.pipeline import DataError
from ps_jax.data.pipeline import rebuild_command

DATA_DIR_ENV = "PS_JAX_DATA_DIR"
FILE_FORMAT = "array_record"

# name -> builder class (see the module docstring). One line per builder.
BUILDERS: dict[str, str] = {
    "synthetic_person_search": "SyntheticPersonSearch",
    "cuhk_sysu": "Builder",
    "prw": "Builder",
    "market1501": "Builder",
    "synthetic_reid": "SyntheticReid",
}


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class registered under `name` (imports its module)."""
  if name not in BUILDERS:
    raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}")
  target = BUILDERS[name]
  if ":" in target:
    module_name, class_name = target.split(":", 1)
  else:
    module_name = f"data_builders.{name}.{name}_dataset_builder"
    class_name = target
  return getattr(importlib.import_module(module_name), class_name)


def default_data_dir() -> str | None:
  """$PS_JAX_DATA_DIR, or None for the TFDS default (~/tensorflow_datasets)."""
  return os.environ.get(DATA_DIR_ENV) or None


def _config_name(cls: type[tfds.core.DatasetBuilder],
                 config: str | tfds.core.BuilderConfig | None) -> str | None:
  if config is not None:
    return getattr(config, "name", config)
  configs = cls.BUILDER_CONFIGS or []
  default = getattr(cls, "DEFAULT_BUILDER_CONFIG_NAME", None)
  return default or (configs[0].name if configs else None)


def variant_dir(name: str,
                config: str | tfds.core.BuilderConfig | None = None,
                data_dir: str | os.PathLike[str] | None = None
                ) -> pathlib.Path:
  """<data_dir>/<name>[/<config>]/<version>, where the dataset is (or will
  be) built; found without reading any of its files."""
  cls = builder_class(name)
  root = default_data_dir() if data_dir is None else os.fspath(data_dir)
  path = pathlib.Path(os.path.expanduser(root or tfds.core.constants.DATA_DIR))
  path /= cls.name
  config_name = _config_name(cls, config)
  if config_name:
    path /= config_name
  return path / str(cls.VERSION)


def _unreadable(path: pathlib.Path, error: Exception) -> str:
  """Which of a built dataset's metadata files is damaged, and how."""
  for file in ("dataset_info.json", "metadata.json", "features.json"):
    try:
      if not isinstance(json.loads((path / file).read_text()), dict):
        return f"{path / file} is not a JSON object"
    except FileNotFoundError:
      continue
    except (OSError, ValueError) as e:
      return f"{path / file} cannot be read ({e})"
  return (f"{path / 'dataset_info.json'} does not describe this dataset "
          f"({type(error).__name__}: {error})")


def _builder(name: str, config: str | tfds.core.BuilderConfig | None,
             data_dir: str | os.PathLike[str] | None
             ) -> tfds.core.DatasetBuilder:
  data_dir = default_data_dir() if data_dir is None else os.fspath(data_dir)
  cls = builder_class(name)
  try:
    builder = cls(config=config, data_dir=data_dir, file_format=FILE_FORMAT)
    if builder.is_prepared():
      builder.info.metadata  # pylint: disable=pointless-statement
    return builder
  except Exception as e:  # pylint: disable=broad-except
    # TFDS reads a built dataset's metadata files here (metadata.json on
    # first use): an error is a damaged dataset, not a bug.
    path = variant_dir(name, config, data_dir)
    if not (path / "dataset_info.json").exists():
      raise
    config_name = _config_name(cls, config)
    command = rebuild_command(
        name, config_name, path.parents[2 if config_name else 1],
        manual=bool(getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)))
    raise DataError(f"{_unreadable(path, e)}; rebuild the dataset: "
                    f"{command}") from e


def build_dataset(name: str,
                  config: str | tfds.core.BuilderConfig | None = None,
                  data_dir: str | os.PathLike[str] | None = None,
                  manual_dir: str | os.PathLike[str] | None = None, *,
                  overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds (or reuses, if already built) a dataset; returns its builder.

  Args:
    name: a key of BUILDERS.
    config: a config name (e.g. "tiny"), a BuilderConfig, or None for the
      builder's default config.
    data_dir: where datasets live; see the module docstring for the default.
    manual_dir: the folder holding a manually downloaded dataset (real
      datasets); unused by generated ones.
    overwrite: delete the built dataset first (a damaged one) and build it
      again.
  Raises:
    DataError: a damaged built dataset, a dataset that needs a manual
      download without one, or a manual download that is not the official
      release.
  """
  if overwrite:
    path = variant_dir(name, config, data_dir)
    if path.is_dir():
      logging.warning("Deleting %s to build it again", path)
      shutil.rmtree(path)
  builder = _builder(name, config, data_dir)
  if builder.is_prepared():
    return builder
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) and not (
      manual_dir and os.path.isdir(manual_dir)):
    given = f"{os.fspath(manual_dir)} is not a folder" if manual_dir else (
        "none given")
    raise DataError(
        f"dataset {name} is not built in {builder.data_dir}, and it is built "
        f"from its official download: pass the folder holding it as the "
        f"manual_dir ({given}): --config.dataset.manual_dir=DIR for "
        f"train.py, or python -m data_builders build {name} --manual_dir "
        f"DIR; data_builders/{name}/README.md says how to get it")
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir))
  logging.info("Building %s/%s into %s", name, builder.builder_config.name
               if builder.builder_config else "", builder.data_dir)
  try:
    builder.download_and_prepare(download_config=download_config)
  except (raw_io.RawFileMissingError, raw_io.RawFormatError) as e:
    raise DataError(f"building {name} from {manual_dir}: {e}") from e
  return builder


def load_builder(name: str,
                 config: str | tfds.core.BuilderConfig | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 manual_dir: str | os.PathLike[str] | None = None
                 ) -> tfds.core.DatasetBuilder:
  """A prepared builder of the dataset, built first if it is missing.

  Read it with `ps_jax.data.pipeline.data_source(builder, split)`; dataset
  facts are in `builder.info.metadata` (e.g. "num_train_ids").

  Raises:
    DataError: see `build_dataset`.
  """
  return build_dataset(name, config, data_dir, manual_dir)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m data_builders",
      description="Build ps_jax person-search datasets (TFDS ArrayRecord, "
                  "no TensorFlow needed).",
      epilog=f"Datasets go to --data_dir, else ${DATA_DIR_ENV}, else the "
             "TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR), under "
             "<name>/<config>/<version>/. Building an existing dataset "
             "reuses it.")
  sub = p.add_subparsers(dest="command", required=True)
  b = sub.add_parser(
      "build", help="build one dataset",
      description="Build one dataset. Generated datasets (synthetic_person_"
                  "search) need no input; real ones (cuhk_sysu, prw, ...) "
                  "need --manual_dir pointing at the official download.")
  b.add_argument("name", choices=sorted(BUILDERS), help="dataset name")
  b.add_argument("--config", default=None,
                 help="builder config, e.g. 'tiny' or 'default' for "
                      "synthetic_person_search (default: the builder's "
                      "default config)")
  b.add_argument("--data_dir", default=None,
                 help=f"output root (default: ${DATA_DIR_ENV} or the TFDS "
                      "default)")
  b.add_argument("--manual_dir", default=None,
                 help="folder with the manually downloaded raw dataset")
  b.add_argument("--overwrite", action="store_true",
                 help="delete the built dataset first and build it again "
                      "(for a damaged one: a missing, truncated or corrupt "
                      "file)")
  sub.add_parser("list", help="list the datasets and their configs")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  args = _parser().parse_args(argv)
  logging.set_verbosity(logging.INFO)
  if args.command == "list":
    for name in sorted(BUILDERS):
      try:
        cls = builder_class(name)
      except Exception as e:  # pylint: disable=broad-except
        print(f"{name}: cannot be imported ({type(e).__name__}: {e})")
        continue
      configs = [c.name for c in (cls.BUILDER_CONFIGS or [])]
      print(f"{name}: configs {configs or ['(none)']}")
    return 0
  try:
    builder = build_dataset(args.name, args.config, args.data_dir,
                            args.manual_dir, overwrite=args.overwrite)
  except DataError as e:
    print(f"python -m data_builders: error: {e}", file=sys.stderr)
    return 1
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"{args.name}: built in {builder.data_dir}\n  splits {splits}\n"
        f"  metadata keys {sorted(builder.info.metadata or {})}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
