"""Host-side (numpy) example ops that move the image and its boxes together.

Every op is `fn(example: dict, rng: np.random.Generator, **settings) -> dict`
and returns a new dict (the input is not modified). `ps_jax.data.pipeline`
binds the settings and composes the ops in an explicit list. Ops that draw no
random numbers ignore `rng` (it may then be None).

The working example (what `decode` returns and every op keeps) has:
  image       uint8[h, w, 3] RGB, the current image (f32 after `normalize`,
              padded to the bucket canvas after `pad_to`).
  boxes_xyxy  f32[n, 4] absolute pixels of the current image, x1<=x2, y1<=y2.
  pids        i32[n], >= 0 labeled, -1 unlabeled (schema.UNLABELED_PID).
  image_hw    i32[2] (height, width) of the current (resized) image content.
  orig_hw     i32[2] (height, width) of the decoded original image.
  scale       f32 scalar, resized px / original px (1.0 before resizing).
  image_id    str, for error messages and evaluation.
  index       int, the record index in the data source.
`pad_to` adds `boxes_valid` bool[max_boxes].

Scale buckets. A bucket is an (H, W) pair. `resize_to_bucket` scales the image
by s = min(H / h, W / w), the largest factor at which it fits inside H x W,
and rounds the size as mmcv does: (int(h*s + 0.5), int(w*s + 0.5)). For an
image whose orientation matches the bucket's (h <= w when H <= W, e.g. all of
CUHK-SYSU's and PRW's landscape frames and AlignPS's landscape buckets) this is
exactly mmdet's `Resize(img_scale=(W, H), keep_ratio=True)`, whose factor is
min(long_max / long_side, short_max / short_side). For an image of the other
orientation mmdet would give a larger image that no longer fits the bucket's
static canvas; here it is shrunk further so that it fits. Boxes are scaled per
axis by the realized size (new_w / w, new_h / h) like mmdet, so they stay
aligned with the resized pixels; `scale` records s.
Resize filter. `resize_to_bucket(antialias=True)` (default) resizes with
Pillow's bilinear filter, which widens its support when shrinking, i.e.
averages over every source pixel a destination pixel covers.
`antialias=False` is the reference's filter (mmcv `imresize`: OpenCV
INTER_LINEAR): each destination pixel interpolates the 2 x 2 source pixels
around src = (dst + 0.5) * in / out - 0.5 (clamped to the image), whatever
the scale, so a shrunk image keeps more aliasing (`resize_bilinear`).
Portrait buckets. With `oriented_bucket` (the pipeline's `portrait_buckets`
option), an image taller than wide goes into the transposed bucket (W, H), so
that it gets mmdet's size instead of being shrunk into the landscape canvas;
the pipeline then keeps portrait and landscape images in separate batches,
as mmdet's GroupSampler does, so that every batch still has one shape.
`padded_size` rounds the bucket up to a multiple of `size_divisor` (mmdet's
`Pad(size_divisor=32)`): that is the static (H, W) of every image in the batch.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from ps_jax.data import schema
from ps_jax.ops import boxes as box_ops

# ImageNet statistics in RGB order, 0-255 units (torchvision / mmdet pytorch
# style, `to_rgb=True`).
IMAGENET_RGB_MEAN = (123.675, 116.28, 103.53)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)
# Caffe-style ResNet (detectron2 `resnet50_caffe`, AlignPS's backbone): BGR
# channel order, mean subtracted, std 1 (mmdet `img_norm_cfg` of AlignPS).
CAFFE_BGR_MEAN = (103.530, 116.280, 123.675)
CAFFE_BGR_STD = (1.0, 1.0, 1.0)
NORMALIZATIONS = ("imagenet_rgb", "caffe_bgr")


def _as_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return _as_str(value.item())
  return str(value)


def _decode_image(image: Any, where: str) -> np.ndarray:
  """JPEG/PNG bytes or a decoded array -> uint8[h, w, 3] RGB."""
  if isinstance(image, np.ndarray) and image.dtype == object:
    image = image.item()
  if isinstance(image, (bytes, bytearray, memoryview)):
    try:
      with Image.open(io.BytesIO(bytes(image))) as im:
        arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise ValueError(
          f"{where}: cannot decode the image bytes "
          f"({type(e).__name__}: {e}); the record is corrupt") from e
    return arr
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise ValueError(f"{where}: image has dtype {arr.dtype}; expected uint8 "
                     "or encoded bytes")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
    raise ValueError(f"{where}: image has shape {arr.shape}; expected "
                     "[height, width, 3]")
  return arr


def decode(record: Mapping[str, Any], index: int) -> dict[str, Any]:
  """A data-source record (schema.py scene example) -> the working example.

  Args:
    record: what a TFDS ArrayRecord data source returns for one scene:
      `image` (uint8[h, w, 3] if TFDS decoded it, or the encoded bytes when the
      source skips image decoding), `image_id` (bytes or str) and `persons`
      {"bbox": normalized yxyx boxes, "pid": ints}.
    index: the record's index in the data source.

  Returns:
    The working example (module docstring), boxes in original pixels.

  Raises:
    ValueError naming the image_id if the image cannot be decoded.
  """
  image_id = _as_str(record.get("image_id", f"<record {index}>"))
  where = f"image {image_id!r} (record {index})"
  image = _decode_image(record["image"], where)
  h, w = image.shape[:2]
  bbox_yxyx, pids = schema.decode_persons(record)
  boxes = box_ops.yxyx_norm_to_xyxy_px(bbox_yxyx, float(h), float(w))
  return {
      "image": image,
      "boxes_xyxy": np.asarray(boxes, np.float32).reshape(-1, 4),
      "pids": pids,
      "image_hw": np.array([h, w], np.int32),
      "orig_hw": np.array([h, w], np.int32),
      "scale": np.float32(1.0),
      "image_id": image_id,
      "index": int(index),
  }


def fit_scale(hw: Sequence[int], bucket_hw: Sequence[int]
              ) -> tuple[float, tuple[int, int]]:
  """The resize factor and size that fit an image into a bucket.

  Args:
    hw: (height, width) of the image, pixels.
    bucket_hw: (H, W) of the bucket, pixels.

  Returns:
    (s, (new_h, new_w)) with s = min(H / h, W / w) and new sizes rounded as
    mmcv (`int(x * s + 0.5)`), clamped to [1, H] x [1, W].
  """
  h, w = int(hw[0]), int(hw[1])
  bh, bw = int(bucket_hw[0]), int(bucket_hw[1])
  s = min(bh / h, bw / w)
  new_h = min(max(int(h * s + 0.5), 1), bh)
  new_w = min(max(int(w * s + 0.5), 1), bw)
  return s, (new_h, new_w)


def oriented_bucket(hw: Sequence[int], bucket_hw: Sequence[int]
                    ) -> tuple[int, int]:
  """The bucket of an image when portrait buckets are on.

  An image taller than wide (h > w) gets the transposed bucket (W, H) of a
  landscape bucket (H < W), so that its long side meets the bucket's long
  side as in mmdet's keep-ratio resize; every other image keeps the bucket.

  Args:
    hw: (height, width) of the image, pixels.
    bucket_hw: (H, W) of the bucket, pixels; H <= W.

  Returns:
    (H', W'), the bucket the image is resized into.
  """
  h, w = (int(v) for v in hw)
  bh, bw = (int(v) for v in bucket_hw)
  if bh > bw:
    raise ValueError(f"oriented_bucket: bucket {bh}x{bw} is taller than "
                     "wide; portrait buckets need landscape or square ones")
  return (bw, bh) if h > w else (bh, bw)


def padded_size(bucket_hw: Sequence[int], size_divisor: int = 1
                ) -> tuple[int, int]:
  """The static canvas (H, W) of a bucket: each side rounded up to a multiple
  of `size_divisor` (pixels)."""
  d = int(size_divisor)
  if d < 1:
    raise ValueError(f"size_divisor={size_divisor}; expected >= 1")
  return tuple(-(-int(v) // d) * d for v in bucket_hw)  # type: ignore


def _linear_taps(n_out: int, n_in: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenCV INTER_LINEAR taps along one axis: i64[n_out] first and second
  source index, f32[n_out] weight of the second."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  first = np.floor(src).astype(np.int64)
  second = np.minimum(first + 1, n_in - 1)
  return first, second, (src - first).astype(np.float32)


def resize_bilinear(image: np.ndarray, new_hw: Sequence[int]) -> np.ndarray:
  """Bilinear resize without antialiasing, as OpenCV's INTER_LINEAR.

  Destination pixel d of an axis of n_in -> n_out pixels reads the source
  position (d + 0.5) * n_in / n_out - 0.5, clamped to [0, n_in - 1], and
  interpolates its two neighbours; the two axes are separable.

  Args:
    image: uint8[h, w, C] (or float) image.
    new_hw: (new_h, new_w).
  Returns:
    [new_h, new_w, C] of the input's dtype; uint8 rounds to the nearest
    level (OpenCV's fixed-point weights can differ from it by one level).
  """
  h, w = image.shape[:2]
  new_h, new_w = (int(v) for v in new_hw)
  y0, y1, fy = _linear_taps(new_h, h)
  x0, x1, fx = _linear_taps(new_w, w)
  src = image.astype(np.float32)
  fy = fy[:, None, None]
  rows = src[y0] * (1.0 - fy) + src[y1] * fy  # [new_h, w, C]
  fx = fx[None, :, None]
  out = rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx  # [new_h, new_w, C]
  if image.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out.astype(image.dtype)


def resize_to_bucket(example: dict[str, Any], rng: np.random.Generator | None,
                     *, bucket_hw: Sequence[int], antialias: bool = True
                     ) -> dict[str, Any]:
  """Resizes the image (bilinear) to fit `bucket_hw`, boxes along.

  The bucket is chosen by the caller (one per batch, so that a batch has one
  static shape); see the module docstring for the exact size rule. Boxes are
  scaled per axis by new_size / old_size and clipped to the resized image.
  `antialias=False` uses the reference's filter (`resize_bilinear`) instead
  of Pillow's antialiased bilinear.
  """
  del rng
  h, w = (int(v) for v in example["image_hw"])
  s, (new_h, new_w) = fit_scale((h, w), bucket_hw)
  out = dict(example)
  if (new_h, new_w) != (h, w) and antialias:
    out["image"] = np.asarray(Image.fromarray(example["image"]).resize(
        (new_w, new_h), Image.Resampling.BILINEAR))
  elif (new_h, new_w) != (h, w):
    out["image"] = resize_bilinear(example["image"], (new_h, new_w))
  factors = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
  boxes = example["boxes_xyxy"] * factors
  out["boxes_xyxy"] = np.asarray(
      box_ops.clip_boxes(boxes, float(new_h), float(new_w)),
      np.float32).reshape(-1, 4)
  out["image_hw"] = np.array([new_h, new_w], np.int32)
  out["scale"] = np.float32(example["scale"] * s)
  return out


def drop_degenerate_boxes(example: dict[str, Any],
                          rng: np.random.Generator | None, *,
                          min_size: float = 0.0) -> dict[str, Any]:
  """Drops boxes whose width or height is <= `min_size` pixels.

  Boxes are first clipped to the current image. Drops are logged
  (rate-limited) with the image id. Like every op this returns a new example
  and leaves the input as it was, so a caller that needs the number of drops
  compares the box counts of the two.
  """
  del rng
  h, w = (float(v) for v in example["image_hw"])
  boxes = np.asarray(box_ops.clip_boxes(example["boxes_xyxy"], h, w),
                     np.float32).reshape(-1, 4)
  keep = ((boxes[:, 2] - boxes[:, 0] > min_size)
          & (boxes[:, 3] - boxes[:, 1] > min_size))
  out = dict(example)
  out["boxes_xyxy"] = boxes[keep]
  out["pids"] = example["pids"][keep]
  n_drop = int((~keep).sum())
  if n_drop:
    logging.log_every_n_seconds(
        logging.WARNING,
        "Dropped %d degenerate box(es) (width or height <= %g px after "
        "resize/clip) in %r.", 10.0, n_drop, min_size, example["image_id"])
  return out


def hflip(example: dict[str, Any], rng: np.random.Generator, *,
          prob: float = 0.5) -> dict[str, Any]:
  """Mirrors the image left-right with probability `prob`, boxes along.

  The mirror axis is the current image's width: x -> width - x, so
  [x1, x2] -> [width - x2, width - x1] (mmdet >= 2.0 convention, no -1).
  """
  if prob <= 0.0 or rng.random() >= prob:
    return dict(example)
  w = np.float32(example["image_hw"][1])
  boxes = example["boxes_xyxy"]
  out = dict(example)
  out["image"] = np.ascontiguousarray(example["image"][:, ::-1])
  out["boxes_xyxy"] = np.stack(
      [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]],
      axis=-1).astype(np.float32).reshape(-1, 4)
  return out


def normalize(example: dict[str, Any], rng: np.random.Generator | None, *,
              mode: str = "caffe_bgr") -> dict[str, Any]:
  """uint8 RGB image -> f32 (image - mean) / std.

  `mode`: "imagenet_rgb" (RGB order, ImageNet mean/std in 0-255 units) or
  "caffe_bgr" (channels reordered to BGR, BGR mean subtracted, std 1).
  """
  del rng
  if mode == "imagenet_rgb":
    image, mean, std = example["image"], IMAGENET_RGB_MEAN, IMAGENET_RGB_STD
  elif mode == "caffe_bgr":
    image = example["image"][..., ::-1]  # RGB -> BGR
    mean, std = CAFFE_BGR_MEAN, CAFFE_BGR_STD
  else:
    raise ValueError(f"normalization={mode!r}; expected one of "
                     f"{NORMALIZATIONS}")
  out = dict(example)
  x = image.astype(np.float32)
  x -= np.asarray(mean, np.float32)
  if std != (1.0, 1.0, 1.0):
    x *= np.asarray([1.0 / v for v in std], np.float32)
  out["image"] = x
  return out


def pad_to(example: dict[str, Any], rng: np.random.Generator | None, *,
           canvas_hw: Sequence[int], max_boxes: int) -> dict[str, Any]:
  """Pads the image to `canvas_hw` and the boxes to `max_boxes`.

  The image content stays at the top-left; the rest of the canvas is 0 (after
  `normalize`, 0 is the mean colour, as mmdet pads normalized images). Padded
  box slots are zeros with pid -1 and `boxes_valid` False.

  Raises:
    ValueError naming the image and the `max_boxes` setting if the image has
      more people than `max_boxes`, or if the image does not fit the canvas.
  """
  del rng
  ch, cw = (int(v) for v in canvas_hw)
  image = example["image"]
  h, w = image.shape[:2]
  if h > ch or w > cw:
    raise ValueError(f"image {example['image_id']!r}: size {h}x{w} does not "
                     f"fit the {ch}x{cw} canvas")
  n = example["boxes_xyxy"].shape[0]
  if n > max_boxes:
    raise ValueError(
        f"image {example['image_id']!r} (record {example['index']}) has {n} "
        f"people but the pipeline setting max_boxes={max_boxes}; raise "
        "`max_boxes` in the data config to at least the largest number of "
        "people per image")
  canvas = np.zeros((ch, cw) + image.shape[2:], image.dtype)
  canvas[:h, :w] = image
  boxes = np.zeros((max_boxes, 4), np.float32)
  boxes[:n] = example["boxes_xyxy"]
  pids = np.full((max_boxes,), schema.UNLABELED_PID, np.int32)
  pids[:n] = example["pids"]
  valid = np.zeros((max_boxes,), bool)
  valid[:n] = True
  out = dict(example)
  out.update(image=canvas, boxes_xyxy=boxes, pids=pids, boxes_valid=valid)
  return out
