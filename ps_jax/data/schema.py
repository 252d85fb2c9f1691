"""The one example schema shared by every person-search dataset builder.

Every builder (synthetic, CUHK-SYSU, PRW) declares its features with
`scene_features()` / `query_features()` and turns its raw annotations into
examples with `scene_example()` / `query_example()`, so the input pipeline and
the evaluation code never contain per-dataset code.

Scene splits (`train`, `test`): one example per scene image.
  image     JPEG bytes (or a path to a JPEG file, read by TFDS at build time).
  image_id  str, the file name, unique within the dataset.
  camera    int, camera index (-1 when unknown).
  persons   sequence of {bbox: TFDS BBox (normalized [ymin, xmin, ymax, xmax]),
                         pid: int (>= 0 labeled identity, -1 unlabeled)}.

Query split (`query`): one example per query person. It holds the query image
and its annotations with the same fields as a scene, plus
  query_bbox  the query person's box (normalized yxyx).
  query_pid   the query person's identity (>= 0).
  gallery_<n> for every gallery size n of a CUHK-SYSU-style protocol: the
              `image_id`s of that query's gallery images (from the `test`
              split). Datasets with a PRW-style protocol (the gallery is every
              test image but the query's own) have no gallery features.
  query_subsets  (builders that declare `with_subsets`) the names of the
              hard-case subsets the query belongs to, e.g. "occlusion" and
              "low_resolution" (CUHK-SYSU's `subset/` lists, the synthetic
              benchmark's marks); the evaluation reports each subset apart.

TFDS stores one feature set per builder, so a builder with a `query` split
declares `query_features(gallery_sizes)` for every split; its scene examples
go through `not_a_query`, which fills `query_pid` -1, an all-zero
`query_bbox` and empty `gallery_<n>` lists. Readers of scene splits ignore
those keys. `scene_features()` is for builders without a query split.

Identity ids in `train` are contiguous 0..K-1 where K = `num_train_ids` in the
builder's metadata (`builder.info.metadata["num_train_ids"]`), so a pid indexes
a row of the OIM lookup table directly. Test ids are whatever the dataset uses
(disjoint from train ids in every protocol ps_jax ships).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ps_jax.ops import boxes as box_ops

UNLABELED_PID = -1
UNKNOWN_CAMERA = -1


class SchemaError(ValueError):
  """An example does not follow the person-search schema."""


def _scene_dict() -> dict[str, Any]:
  return {
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="jpeg"),
      "image_id": tfds.features.Text(),
      "camera": tfds.features.Scalar(dtype=np.int32),
      "persons": tfds.features.Sequence({
          "bbox": tfds.features.BBoxFeature(),
          "pid": tfds.features.Scalar(dtype=np.int32),
      }),
  }


def scene_features() -> tfds.features.FeaturesDict:
  """Features of the scene splits (`train`, `test`)."""
  return tfds.features.FeaturesDict(_scene_dict())


def query_features(gallery_sizes: Sequence[int] = (), *,
                   with_subsets: bool = False) -> tfds.features.FeaturesDict:
  """Features of the `query` split.

  Args:
    gallery_sizes: the CUHK-SYSU-style gallery sizes stored per query (one
      `gallery_<n>` sequence of image ids each); empty for PRW-style datasets.
    with_subsets: also a `query_subsets` sequence of subset names.
  """
  d = _scene_dict()
  d["query_bbox"] = tfds.features.BBoxFeature()
  d["query_pid"] = tfds.features.Scalar(dtype=np.int32)
  for n in gallery_sizes:
    d[f"gallery_{int(n)}"] = tfds.features.Sequence(tfds.features.Text())
  if with_subsets:
    d["query_subsets"] = tfds.features.Sequence(tfds.features.Text())
  return tfds.features.FeaturesDict(d)


def xyxy_px_to_bbox(box: Sequence[float], width: int, height: int,
                    where: str) -> tfds.features.BBox:
  """One absolute-pixel [x1, y1, x2, y2] box to a TFDS BBox.

  The box is clipped to the image. Raises SchemaError naming `where` if the
  box is degenerate (zero or negative width or height after clipping); the
  caller decides whether to drop and count it.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  if not all(np.isfinite([x1, y1, x2, y2])):
    raise SchemaError(f"{where}: box {list(box)} has a non-finite coordinate")
  xyxy = box_ops.clip_boxes(np.array([x1, y1, x2, y2]), height, width)
  if xyxy[2] <= xyxy[0] or xyxy[3] <= xyxy[1]:
    raise SchemaError(
        f"{where}: box {list(box)} is empty after clipping to the "
        f"{width}x{height} image")
  ymin, xmin, ymax, xmax = box_ops.xyxy_px_to_yxyx_norm(
      xyxy, height, width).tolist()
  return tfds.features.BBox(ymin=ymin, xmin=xmin, ymax=ymax, xmax=xmax)


def persons_list(boxes_xyxy: np.ndarray, pids: Iterable[int], width: int,
                 height: int, where: str,
                 dropped: list[str] | None = None) -> list[dict[str, Any]]:
  """Absolute-pixel boxes and pids to the `persons` feature value.

  Degenerate boxes are dropped; if `dropped` is a list, a description of
  each dropped box is appended to it so the builder can count and log them.
  """
  boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
  pids = [int(p) for p in pids]
  if len(pids) != len(boxes_xyxy):
    raise SchemaError(f"{where}: {len(boxes_xyxy)} boxes but {len(pids)} pids")
  out = []
  for i, (box, pid) in enumerate(zip(boxes_xyxy, pids)):
    if pid < UNLABELED_PID:
      raise SchemaError(f"{where}: person {i} has pid {pid}; expected >= -1")
    try:
      bbox = xyxy_px_to_bbox(box, width, height, f"{where} person {i}")
    except SchemaError as e:
      if dropped is None:
        raise
      dropped.append(str(e))
      continue
    out.append({"bbox": bbox, "pid": pid})
  return out


def scene_example(image: Any, image_id: str, width: int, height: int,
                  boxes_xyxy: np.ndarray, pids: Iterable[int],
                  camera: int = UNKNOWN_CAMERA,
                  dropped: list[str] | None = None) -> dict[str, Any]:
  """A scene-split example.

  Args:
    image: JPEG bytes, a path to a JPEG file, or a uint8[H, W, 3] array.
    image_id: unique file name of the image.
    width, height: the image size in pixels (the frame of `boxes_xyxy`).
    boxes_xyxy: f[N, 4] absolute pixel boxes [x1, y1, x2, y2] of the persons.
    pids: N ints, >= 0 labeled, -1 unlabeled.
    camera: camera index, -1 when unknown.
    dropped: optional list collecting descriptions of dropped degenerate boxes.
  """
  if not image_id:
    raise SchemaError("scene example without an image_id")
  if width <= 0 or height <= 0:
    raise SchemaError(f"{image_id}: image size {width}x{height} is empty")
  return {
      "image": image,
      "image_id": image_id,
      "camera": int(camera),
      "persons": persons_list(boxes_xyxy, pids, width, height, image_id,
                              dropped),
  }


def query_example(scene: Mapping[str, Any], query_box_xyxy: Sequence[float],
                  query_pid: int, width: int, height: int,
                  galleries: Mapping[int, Sequence[str]] | None = None,
                  subsets: Sequence[str] | None = None) -> dict[str, Any]:
  """A query-split example: a scene example plus the query and its galleries.

  Args:
    scene: the result of `scene_example` for the query image.
    query_box_xyxy: the query person's absolute pixel box.
    query_pid: the query person's identity, >= 0.
    width, height: the query image size in pixels.
    galleries: gallery size -> the image ids of that gallery (CUHK-SYSU
      style); None or empty for PRW-style protocols.
    subsets: the hard-case subsets the query is in, for builders that
      declare `with_subsets` (None: no `query_subsets` key).
  """
  where = f"query in {scene['image_id']}"
  if query_pid < 0:
    raise SchemaError(f"{where}: query pid {query_pid} must be >= 0")
  ex = dict(scene)
  ex["query_bbox"] = xyxy_px_to_bbox(query_box_xyxy, width, height, where)
  ex["query_pid"] = int(query_pid)
  for n, ids in (galleries or {}).items():
    ids = [str(i) for i in ids]
    if scene["image_id"] in ids:
      raise SchemaError(f"{where}: gallery_{n} contains the query image")
    ex[f"gallery_{int(n)}"] = ids
  if subsets is not None:
    ex["query_subsets"] = [str(name) for name in subsets]
  return ex


def not_a_query(scene: Mapping[str, Any], gallery_sizes: Sequence[int] = (),
                *, with_subsets: bool = False) -> dict[str, Any]:
  """A scene example completed with the query features' "no query" values.

  For the scene splits of a builder whose features are `query_features`:
  `query_pid` -1, an all-zero `query_bbox` and an empty `gallery_<n>` list
  for every n in `gallery_sizes`, and no `query_subsets` (`with_subsets`).
  """
  ex = dict(scene)
  ex["query_bbox"] = tfds.features.BBox(0.0, 0.0, 0.0, 0.0)
  ex["query_pid"] = UNLABELED_PID
  for n in gallery_sizes:
    ex[f"gallery_{int(n)}"] = []
  if with_subsets:
    ex["query_subsets"] = []
  return ex


def decode_persons(example: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """Boxes and pids of a decoded example (as a TFDS data source returns it).

  Returns:
    bbox_yxyx: f32[N, 4] normalized [ymin, xmin, ymax, xmax].
    pids: i32[N].
  Works when N == 0 (TFDS then returns empty lists).
  """
  persons = example["persons"]
  boxes = np.asarray(persons["bbox"], np.float32).reshape(-1, 4)
  pids = np.asarray(persons["pid"], np.int32).reshape(-1)
  return boxes, pids


def gallery_sizes_of(example_or_features: Mapping[str, Any]) -> list[int]:
  """The CUHK-style gallery sizes present in a query example or feature dict."""
  return sorted(int(k.split("_", 1)[1]) for k in example_or_features
                if k.startswith("gallery_"))
