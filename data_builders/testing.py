"""Test-only helpers shared by the real-dataset builder tests and fake data.

Nothing here is used by the builders themselves. It serves two kinds of
callers:

* `<name>/dummy_data/make_fake_raw.py`, which write a tiny fake download in
  the official layout: `write_fake_jpeg` and the `fake_raw_main` command line.
* `<name>/<name>_dataset_builder_test.py`, which follow the conventions of
  tfds.testing.DatasetBuilderTestCase with plain pytest (that class needs
  TensorFlow and dill, which the project does not install): write the fake
  raw data, build with the ArrayRecord format (`build`; `built_fixture` for
  the module-scoped fixture most tests share; `build_error` for a download
  the builder must reject), check the split sizes (`split_sizes`), read every
  split back through `as_data_source` (`read_split`) and compare the decoded
  features with values stated by hand (`image_ids`, `yxyx`, `persons`).

pytest is imported only inside the functions that need it, so the
make_fake_raw command lines run without the test dependencies installed.

Conventions: fake images are uint8 RGB noise from `np.random.default_rng(seed)`
saved as JPEG, so a given seed always writes the same file. Boxes stated by
hand are absolute pixels [x1, y1, x2, y2]; the TFDS features store them as
normalized [ymin, xmin, ymax, xmax] (see ps_jax/data/schema.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

PathLike = str | os.PathLike[str]


def write_fake_jpeg(path: PathLike, width: int, height: int, *, seed: int,
                    gray: bool = False) -> None:
  """Writes a small real JPEG of deterministic noise, creating its folder.

  Args:
    path: the file to write.
    width: image width in pixels.
    height: image height in pixels.
    seed: seed of the uint8 pixel noise; equal seeds write equal files.
    gray: store a single-channel (mode "L") JPEG instead of RGB.
  """
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  if gray:
    image = image.convert("L")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format="JPEG", quality=90)


def fake_raw_main(write_fake_raw: Callable[[str], pathlib.Path],
                  doc: str | None, argv: Sequence[str] | None = None) -> None:
  """Command line of a make_fake_raw.py: `python -m ... MANUAL_DIR`.

  Args:
    write_fake_raw: writes the fake download under its argument and returns
      the dataset root it wrote.
    doc: the calling module's docstring; its first line describes the tool.
    argv: the arguments (default: sys.argv[1:]).
  """
  parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
  parser.add_argument("manual_dir")
  # A command-line tool's result, for the user to pass as --manual_dir.
  print(write_fake_raw(parser.parse_args(argv).manual_dir))


def build(builder_cls: type[tfds.core.DatasetBuilder], manual: PathLike,
          data: PathLike) -> tfds.core.DatasetBuilder:
  """Builds `builder_cls` from the download in `manual` into `data`.

  Uses the ArrayRecord format, the one the project reads (no TensorFlow).
  """
  builder = builder_cls(data_dir=data, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder


def built_fixture(builder_cls: type[tfds.core.DatasetBuilder],
                  write_fake_raw: Callable[[pathlib.Path], pathlib.Path],
                  name: str = "built") -> Any:
  """A module-scoped pytest fixture that builds the default fake download.

  Assign it to a module attribute of the same name in a test file:
  `built = testing.built_fixture(prw.Builder, make_fake_raw.write_fake_raw)`.
  The fixture writes the fake download under `<tmp>/manual`, builds it into
  `<tmp>/data` once per test module, and returns
  (the prepared builder, the dataset root `write_fake_raw` returned).
  """
  import pytest  # Only tests need pytest; see the module docstring.

  @pytest.fixture(scope="module", name=name)
  def fixture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp(builder_cls.name)
    root = write_fake_raw(tmp / "manual")
    return build(builder_cls, tmp / "manual", tmp / "data"), root

  return fixture


def build_error(builder_cls: type[tfds.core.DatasetBuilder],
                tmp: pathlib.Path, error: type[Exception]) -> str:
  """Builds the download in `tmp/m` into `tmp/d`, which must raise `error`.

  Fails the calling test if the build raises nothing or another exception.

  Returns:
    the message of the raised error, for the test to check what it names.
  """
  import pytest  # Only tests need pytest; see the module docstring.

  with pytest.raises(error) as info:
    build(builder_cls, tmp / "m", tmp / "d")
  return str(info.value)


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """Split name -> number of examples, over every split the builder made."""
  return {name: split.num_examples
          for name, split in builder.info.splits.items()}


def read_split(builder: tfds.core.DatasetBuilder, split: str
               ) -> list[dict[str, Any]]:
  """Every decoded example of `split`, in stored order."""
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def image_ids(examples: Sequence[dict[str, Any]]) -> list[str]:
  """The decoded `image_id` of each example, in order."""
  return [ex["image_id"].decode() for ex in examples]


def yxyx(x1: float, y1: float, x2: float, y2: float, w: float, h: float
         ) -> list[float]:
  """Pixel box [x1, y1, x2, y2] in a w x h image -> normalized [y1, x1, y2, x2].

  The TFDS bbox layout, for expected values stated by hand.
  """
  return [y1 / h, x1 / w, y2 / h, x2 / w]


def persons(example: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
  """The `persons` of a decoded scene example.

  Returns:
    (f32[N, 4] normalized [ymin, xmin, ymax, xmax] boxes, N person ids as
    Python ints; -1 is unlabeled).
  """
  boxes = np.asarray(example["persons"]["bbox"], np.float32).reshape(-1, 4)
  return boxes, [int(p) for p in example["persons"]["pid"]]
