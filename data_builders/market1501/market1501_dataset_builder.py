"""Market-1501 person re-identification crops, built from the official download.

Reads the official layout (docs/datasets.md, "Market-1501 raw layout"). This
is not a person-search dataset (no scenes), so it has its own small re-ID
schema, the same for every split:

  image     JPEG bytes of the crop (64 x 128 in the official release).
  image_id  str, the file name, e.g. `0002_c1s1_000451_03.jpg`.
  pid       int32. `train`: contiguous 0..K-1 in ascending order of the
            Market id (K = 751); the Market id of each pid is in the
            metadata. `query` / `gallery`: the Market id from the file name,
            unchanged, so 0 = distractor (`0000_...`, a false detection, kept
            as a gallery negative) and -1 = junk (`-1_...`, ignored by the
            evaluation, which must drop these gallery entries).
  camera    int32, the camera number of the file name (1..6, as Market
            writes it; torchreid uses camera - 1).

Splits: `train` (bounding_box_train), `query` (query), `gallery`
(bounding_box_test, junk and distractors included), each sorted by file
name. Only `*.jpg` files are read (the folders may hold a `Thumbs.db`);
`gt_bbox/` and `gt_query/` are not used: the standard evaluation derives
good / junk matches from pid and camera.

Metadata (`builder.info.metadata`): `num_train_ids` (K), `protocol`
("market1501"), `train_pid_ids` (the Market id of each train pid).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_builders import raw_io

JUNK_PID = -1
DISTRACTOR_PID = 0

# Sizes documented for the official release (docs/datasets.md); only used
# to warn about incomplete downloads.
DOC_COUNTS = {
    "train": (12936, 751),    # images, ids
    "query": (3368, 750),
    "gallery": (19732, 751),  # ids counted with 0000 (distractors), not -1
}
DOC_NUM_JUNK = 3819
DOC_NUM_DISTRACTORS = 2793

STEP_ARCHIVE = "step 2 (unpack Market-1501-v15.09.15.zip)"
FOLDERS = {"train": "bounding_box_train", "query": "query",
           "gallery": "bounding_box_test"}
# Market names are <pid>_c<camera>s<sequence>_<frame>_<detection>.jpg; only
# the pid and camera are needed (torchreid parses the same two fields).
_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")


def reid_features() -> tfds.features.FeaturesDict:
  """Features of every split of the Market-1501 re-ID schema."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="jpeg"),
      "image_id": tfds.features.Text(),
      "pid": tfds.features.Scalar(dtype=np.int32),
      "camera": tfds.features.Scalar(dtype=np.int32),
  })


def parse_name(name: str, folder: epath.Path) -> tuple[int, int]:
  """(Market id, camera) of a crop file name; raises naming the file."""
  m = _NAME_RE.match(name)
  if not m or int(m.group(1)) < JUNK_PID:
    raise raw_io.RawFormatError(
        f"{folder / name}: not a Market-1501 crop name "
        f"(<pid>_c<camera>s<seq>_<frame>_<det>.jpg, pid >= -1).")
  return int(m.group(1)), int(m.group(2))


class Builder(tfds.core.GeneratorBasedBuilder):
  """Market-1501 re-ID crops (Zheng et al., ICCV 2015)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Market-1501 is distributed by its authors; no program can download it.

  Step 1 (get the archive): download Market-1501-v15.09.15.zip from the
    Market-1501 project page,
    https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html
  Step 2 (unpack Market-1501-v15.09.15.zip): it gives one folder
    `Market-1501-v15.09.15/` holding
      bounding_box_train/   (12,936 jpg)
      bounding_box_test/    (19,732 jpg)
      query/                (3,368 jpg)
    (gt_bbox/ and gt_query/ are not needed.)
  Step 3: pass that folder (or the folder containing it) as the manual dir:
    python -m data_builders build market1501 \\
        --manual_dir /path/to/Market-1501-v15.09.15
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=reid_features(),
        homepage="https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html",
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # file-name order in every split
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = raw_io.find_root(
        dl_manager.manual_dir, markers=tuple(FOLDERS.values()),
        candidates=("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15",
                    "market1501"),
        step=STEP_ARCHIVE)
    items = {split: _list_folder(root / folder)
             for split, folder in FOLDERS.items()}

    train_ids = sorted({pid for _, pid, _ in items["train"]})
    special = [i for i in train_ids if i in (JUNK_PID, DISTRACTOR_PID)]
    if special:
      logging.warning("%s holds junk/distractor ids %s; they are left out of "
                      "the train split.", root / FOLDERS["train"], special)
      items["train"] = [it for it in items["train"] if it[1] not in special]
      train_ids = [i for i in train_ids if i not in special]
    odd_query = sorted({p for _, p, _ in items["query"]
                        if p in (JUNK_PID, DISTRACTOR_PID)})
    if odd_query:
      logging.warning("%s holds junk/distractor ids %s (kept).",
                      root / FOLDERS["query"], odd_query)
    gallery_ids = {p for _, p, _ in items["gallery"]}
    missing = sorted({p for _, p, _ in items["query"]} - gallery_ids)
    raw_io.log_dropped(f"{root / FOLDERS['query']}: query ids with no "
                       "gallery crop", [str(i) for i in missing])

    for split, (n_images, n_ids) in DOC_COUNTS.items():
      ids = {p for _, p, _ in items[split] if p != JUNK_PID}
      raw_io.warn_count(f"{root / FOLDERS[split]}: images", len(items[split]),
                        n_images)
      raw_io.warn_count(f"{root / FOLDERS[split]}: ids", len(ids), n_ids)
    pids = [p for _, p, _ in items["gallery"]]
    raw_io.warn_count(f"{root / FOLDERS['gallery']}: junk (-1) crops",
                      pids.count(JUNK_PID), DOC_NUM_JUNK)
    raw_io.warn_count(f"{root / FOLDERS['gallery']}: distractor (0000) crops",
                      pids.count(DISTRACTOR_PID), DOC_NUM_DISTRACTORS)

    self.info.metadata.update({
        "num_train_ids": len(train_ids),
        "protocol": "market1501",
        "train_pid_ids": list(train_ids),
    })
    remap = {market_id: pid for pid, market_id in enumerate(train_ids)}
    return {split: self._generate_examples(
        root / FOLDERS[split], items[split],
        remap if split == "train" else None) for split in FOLDERS}

  def _generate_examples(self, folder: epath.Path,
                         items: list[tuple[str, int, int]],
                         remap: dict[int, int] | None
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, market_id, camera in items:
      image, _, _ = raw_io.load_image(folder / name, source=str(folder))
      yield name, {
          "image": image,
          "image_id": name,
          "pid": market_id if remap is None else remap[market_id],
          "camera": camera,
      }


def _list_folder(folder: epath.Path) -> list[tuple[str, int, int]]:
  """(file name, Market id, camera) of every `*.jpg` in `folder`, sorted."""
  raw_io.require(folder, STEP_ARCHIVE, is_dir=True)
  out, other = [], []
  for path in sorted(folder.iterdir(), key=lambda p: p.name):
    if path.name.lower().endswith(".jpg") and path.is_file():
      out.append((path.name, *parse_name(path.name, folder)))
    else:
      other.append(path.name)
  if other:
    logging.info("%s: ignored %d non-jpg entries (e.g. %s).", folder,
                 len(other), other[0])
  return out
