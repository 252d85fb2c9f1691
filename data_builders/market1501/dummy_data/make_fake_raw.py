"""Writes a tiny fake Market-1501 download in the exact official layout.

    python -m data_builders.market1501.dummy_data.make_fake_raw /tmp/manual

creates /tmp/manual/Market-1501-v15.09.15/{bounding_box_train,
bounding_box_test, query, gt_bbox}/ with real 64 x 128 JPEG crops named as
the official files are (docs/datasets.md, "Market-1501 raw layout"), plus
the traps of the official folders: a `Thumbs.db` in every folder,
distractors (`0000_...`) and junk (`-1_...`) in `bounding_box_test`, a
`gt_bbox/` folder the builder must not read, and train ids (2, 7, 1500) that
are not contiguous.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

from data_builders import testing

ROOT_NAME = "Market-1501-v15.09.15"
CROP_WIDTH, CROP_HEIGHT = 64, 128

FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
        "0007_c3s2_000100_02.jpg", "1500_c6s4_000010_01.jpg",
    ],
    "bounding_box_test": [
        "-1_c1s1_000401_03.jpg", "0000_c1s1_000001_01.jpg",
        "0003_c1s1_000020_02.jpg", "0003_c2s1_000010_01.jpg",
        "0010_c4s2_000123_04.jpg",
    ],
    "query": ["0003_c1s1_000020_00.jpg", "0010_c5s3_000050_00.jpg"],
    "gt_bbox": ["0003_c1s1_000020_00.jpg"],
}


def write_fake_raw(manual_dir: str | pathlib.Path, *,
                   extra_files: Mapping[str, Sequence[str]] | None = None,
                   skip_folders: Sequence[str] = ()) -> pathlib.Path:
  """Writes the fake download under `manual_dir/Market-1501-v15.09.15`.

  Args:
    manual_dir: where to write (created).
    extra_files: folder -> more crop names to write (e.g. a malformed name).
    skip_folders: folders not to create.

  Returns:
    the dataset root.
  """
  root = pathlib.Path(manual_dir) / ROOT_NAME
  files = {k: list(v) for k, v in FILES.items()}
  for folder, names in (extra_files or {}).items():
    files.setdefault(folder, []).extend(names)
  seed = 0
  for folder, names in files.items():
    if folder in skip_folders:
      continue
    for name in names:
      testing.write_fake_jpeg(root / folder / name, CROP_WIDTH, CROP_HEIGHT,
                              seed=seed)
      seed += 1
    # Windows thumbnail caches sit in some official folders.
    (root / folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0not an image")
  (root / "readme.txt").write_text("fake Market-1501\n")
  return root


if __name__ == "__main__":
  testing.fake_raw_main(write_fake_raw, __doc__)
