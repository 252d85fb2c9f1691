"""Tests of ps_jax.data.augment against numpy references written here."""

import io

import numpy as np
import pytest
from PIL import Image

from ps_jax.data import augment


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def _record(image, boxes_yxyx, pids, image_id=b"scene_7.jpg"):
  return {"image": image, "image_id": image_id, "camera": np.int32(0),
          "persons": {"bbox": [np.asarray(b, np.float32) for b in boxes_yxyx],
                      "pid": [np.int64(p) for p in pids]}}


def _mmdet_keep_ratio_size(h, w, bucket_hw):
  """mmcv.rescale_size with scale=(W, H): fit (long, short) edges."""
  long_max, short_max = max(bucket_hw), min(bucket_hw)
  s = min(long_max / max(h, w), short_max / min(h, w))
  return s, (int(h * s + 0.5), int(w * s + 0.5))


def _example(h, w, boxes_xyxy, pids=None, image=None):
  boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
  if pids is None:
    pids = np.arange(len(boxes_xyxy), dtype=np.int32)
  if image is None:
    image = np.zeros((h, w, 3), np.uint8)
  return {"image": image, "boxes_xyxy": boxes_xyxy,
          "pids": np.asarray(pids, np.int32),
          "image_hw": np.array([h, w], np.int32),
          "orig_hw": np.array([h, w], np.int32), "scale": np.float32(1.0),
          "image_id": "ex.jpg", "index": 3}


def test_decode_bytes_and_array_agree_and_convert_boxes():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  boxes = [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]
  from_bytes = augment.decode(_record(_png(image), boxes, [4, -1]), 11)
  from_array = augment.decode(_record(image, boxes, [4, -1], "scene_7.jpg"),
                              11)
  for ex in (from_bytes, from_array):
    np.testing.assert_array_equal(ex["image"], image)
    # Hand-computed: x = xmin * 50, y = ymin * 30.
    np.testing.assert_allclose(ex["boxes_xyxy"],
                               [[10, 3, 30, 15], [0, 0, 50, 30]], atol=1e-5)
    np.testing.assert_array_equal(ex["pids"], [4, -1])
    assert ex["pids"].dtype == np.int32
    np.testing.assert_array_equal(ex["orig_hw"], [30, 50])
    np.testing.assert_array_equal(ex["image_hw"], [30, 50])
    assert ex["image_id"] == "scene_7.jpg"
    assert ex["index"] == 11 and ex["scale"] == 1.0


def test_decode_no_people_and_grayscale():
  ex = augment.decode(_record(np.full((8, 6, 1), 9, np.uint8), [], []), 0)
  assert ex["image"].shape == (8, 6, 3)
  assert ex["boxes_xyxy"].shape == (0, 4) and ex["pids"].shape == (0,)


def test_decode_corrupt_bytes_names_the_image():
  good = _png(np.zeros((8, 8, 3), np.uint8))
  for bad in (b"not an image at all", good[: len(good) // 2]):
    with pytest.raises(ValueError, match=r"broken_42\.jpg.*record 5"):
      augment.decode(_record(bad, [], [], b"broken_42.jpg"), 5)


def test_decode_rejects_wrong_array():
  with pytest.raises(ValueError, match="uint8"):
    augment.decode(_record(np.zeros((4, 4, 3), np.float32), [], []), 0)
  with pytest.raises(ValueError, match="shape"):
    augment.decode(_record(np.zeros((4, 4, 4), np.uint8), [], []), 0)


@pytest.mark.parametrize("bucket", [(400, 667), (800, 1333), (900, 1500),
                                    (64, 96)])
def test_fit_scale_equals_mmdet_for_matching_orientation(bucket):
  rng = np.random.default_rng(1)
  for _ in range(200):
    w = int(rng.integers(20, 2500))
    h = int(rng.integers(10, w + 1))  # landscape or square, like the bucket
    s, size = augment.fit_scale((h, w), bucket)
    ref_s, ref_size = _mmdet_keep_ratio_size(h, w, bucket)
    assert s == pytest.approx(ref_s)
    assert size == ref_size
    assert size[0] <= bucket[0] and size[1] <= bucket[1]


def test_fit_scale_other_orientation_fits_inside_the_bucket():
  rng = np.random.default_rng(2)
  bucket = (400, 667)
  for _ in range(200):
    h = int(rng.integers(21, 2500))
    w = int(rng.integers(10, h))  # portrait
    s, (nh, nw) = augment.fit_scale((h, w), bucket)
    ref_s, _ = _mmdet_keep_ratio_size(h, w, bucket)
    assert s == pytest.approx(min(bucket[0] / h, bucket[1] / w))
    assert s <= ref_s + 1e-12
    assert nh <= bucket[0] and nw <= bucket[1]
    # It touches the bucket on one side (the largest fitting size).
    assert nh == bucket[0] or nw == bucket[1] or abs(nh - h * s) < 1
  # Hand-computed: 800x600 portrait into 400x667 -> s = 0.5 -> 400x300
  # (mmdet would give 533x400, which does not fit 400 rows).
  assert augment.fit_scale((800, 600), bucket) == (0.5, (400, 300))


def test_padded_size():
  assert augment.padded_size((400, 667), 32) == (416, 672)
  assert augment.padded_size((64, 96), 32) == (64, 96)
  assert augment.padded_size((65, 97), 1) == (65, 97)
  with pytest.raises(ValueError, match="size_divisor"):
    augment.padded_size((64, 64), 0)


def _boxes_ref_resize(boxes, hw, new_hw):
  sx, sy = new_hw[1] / hw[1], new_hw[0] / hw[0]
  clip_x = lambda v: min(max(v * sx, 0), new_hw[1])  # noqa: E731
  clip_y = lambda v: min(max(v * sy, 0), new_hw[0])  # noqa: E731
  out = []
  for x1, y1, x2, y2 in boxes:
    out.append([clip_x(x1), clip_y(y1), clip_x(x2), clip_y(y2)])
  return np.array(out, np.float32).reshape(-1, 4)


@pytest.mark.parametrize("hw,bucket", [((60, 80), (120, 200)),
                                       ((100, 160), (64, 96)),
                                       ((90, 40), (64, 96)),
                                       ((64, 96), (64, 96))])
def test_resize_to_bucket_boxes_match_reference_and_pixels(hw, bucket):
  rng = np.random.default_rng(3)
  h, w = hw
  n = 5
  x1 = rng.uniform(0, w * 0.6, n)
  y1 = rng.uniform(0, h * 0.6, n)
  boxes = np.stack([x1, y1, x1 + rng.uniform(4, w * 0.4, n),
                    y1 + rng.uniform(4, h * 0.4, n)], -1).astype(np.float32)
  boxes = np.minimum(boxes, [w, h, w, h]).astype(np.float32)
  # Paint one box white on black, to check the pixels moved with the box.
  image = np.zeros((h, w, 3), np.uint8)
  bx = np.round(boxes[0]).astype(int)
  image[bx[1]:bx[3], bx[0]:bx[2]] = 255
  ex = _example(h, w, boxes, image=image)
  out = augment.resize_to_bucket(ex, None, bucket_hw=bucket)
  s, new_hw = augment.fit_scale(hw, bucket)
  assert out["image"].shape == new_hw + (3,)
  np.testing.assert_array_equal(out["image_hw"], new_hw)
  np.testing.assert_array_equal(out["orig_hw"], hw)
  assert out["scale"] == pytest.approx(s)
  np.testing.assert_allclose(out["boxes_xyxy"],
                             _boxes_ref_resize(boxes, hw, new_hw), rtol=1e-5,
                             atol=1e-4)
  # The painted region of the resized image matches the resized box to
  # within the interpolation blur (about one source pixel scaled).
  rows = np.nonzero(out["image"][..., 0].max(1) > 127)[0]
  cols = np.nonzero(out["image"][..., 0].max(0) > 127)[0]
  painted = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
  expect = _boxes_ref_resize(bx[None].astype(np.float32), hw, new_hw)[0]
  np.testing.assert_allclose(painted, expect, atol=1.0 + 1.0 * max(s, 1.0))
  # The input example is not modified.
  np.testing.assert_array_equal(ex["boxes_xyxy"], boxes)


def test_drop_degenerate_boxes_keeps_pids_aligned():
  ex = _example(20, 30, [[1, 1, 10, 10], [5, 5, 5.5, 15], [40, 2, 50, 8],
                         [2, 3, 12, 19]], pids=[7, 8, 9, -1])
  out = augment.drop_degenerate_boxes(ex, None, min_size=1.0)
  # Box 1 is 0.5 px wide; box 2 lies right of the 30-px image (clipped to
  # zero width).
  np.testing.assert_array_equal(out["pids"], [7, -1])
  np.testing.assert_allclose(out["boxes_xyxy"], [[1, 1, 10, 10],
                                                 [2, 3, 12, 19]])
  # The input is left as it was, so callers count drops as the difference.
  assert ex["boxes_xyxy"].shape == (4, 4) and len(ex["pids"]) == 4
  assert len(ex["pids"]) - len(out["pids"]) == 2
  out = augment.drop_degenerate_boxes(_example(20, 30, []), None)
  assert out["boxes_xyxy"].shape == (0, 4) and out["pids"].shape == (0,)


def test_hflip_moves_pixels_and_boxes_together():
  rng = np.random.default_rng(4)
  h, w = 24, 40
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  boxes = np.array([[3, 2, 10, 20], [0, 0, 40, 24], [30.5, 1, 39, 5]],
                   np.float32)
  ex = _example(h, w, boxes, image=image)
  out = augment.hflip(ex, np.random.default_rng(0), prob=1.0)
  np.testing.assert_array_equal(out["image"], image[:, ::-1])
  ref = np.array([[w - b[2], b[1], w - b[0], b[3]] for b in boxes])
  np.testing.assert_allclose(out["boxes_xyxy"], ref)
  # A box's pixels are the mirrored pixels of the flipped box.
  b = boxes[0].astype(int)
  fb = out["boxes_xyxy"][0].astype(int)
  np.testing.assert_array_equal(out["image"][b[1]:b[3], fb[0]:fb[2]],
                                image[b[1]:b[3], b[0]:b[2]][:, ::-1])
  same = augment.hflip(ex, np.random.default_rng(0), prob=0.0)
  np.testing.assert_array_equal(same["image"], image)
  np.testing.assert_array_equal(same["boxes_xyxy"], boxes)


def test_hflip_probability_and_no_boxes():
  rng = np.random.default_rng(5)
  ex = _example(4, 6, [], image=np.arange(72, dtype=np.uint8).reshape(4, 6, 3))
  flips = sum(
      not np.array_equal(augment.hflip(ex, rng, prob=0.5)["image"],
                         ex["image"]) for _ in range(2000))
  assert 900 < flips < 1100
  assert augment.hflip(ex, rng, prob=1.0)["boxes_xyxy"].shape == (0, 4)


def test_normalize_modes():
  image = np.array([[[255, 0, 10]]], np.uint8)  # one pixel, R=255 G=0 B=10
  ex = _example(1, 1, [], image=image)
  rgb = augment.normalize(ex, None, mode="imagenet_rgb")["image"]
  np.testing.assert_allclose(
      rgb[0, 0], [(255 - 123.675) / 58.395, (0 - 116.28) / 57.12,
                  (10 - 103.53) / 57.375], rtol=1e-6)
  bgr = augment.normalize(ex, None, mode="caffe_bgr")["image"]
  np.testing.assert_allclose(bgr[0, 0], [10 - 103.530, 0 - 116.280,
                                         255 - 123.675], rtol=1e-6)
  assert rgb.dtype == bgr.dtype == np.float32
  with pytest.raises(ValueError, match="normalization"):
    augment.normalize(ex, None, mode="bgr")


def test_pad_to():
  image = np.ones((5, 7, 3), np.float32)
  ex = _example(5, 7, [[1, 1, 3, 4], [0, 0, 7, 5]], pids=[2, -1], image=image)
  out = augment.pad_to(ex, None, canvas_hw=(8, 8), max_boxes=4)
  assert out["image"].shape == (8, 8, 3)
  np.testing.assert_array_equal(out["image"][:5, :7], 1.0)
  assert out["image"][5:].sum() == 0 and out["image"][:, 7:].sum() == 0
  np.testing.assert_array_equal(out["boxes_valid"], [True, True, False, False])
  np.testing.assert_array_equal(out["pids"], [2, -1, -1, -1])
  np.testing.assert_array_equal(out["boxes_xyxy"][2:], 0)
  np.testing.assert_array_equal(out["boxes_xyxy"][:2], ex["boxes_xyxy"])
  empty = augment.pad_to(_example(5, 7, [], image=image), None,
                         canvas_hw=(5, 7), max_boxes=3)
  assert not empty["boxes_valid"].any()


def test_pad_to_too_many_people_names_image_and_setting():
  ex = _example(5, 7, [[0, 0, 1, 1]] * 3)
  with pytest.raises(ValueError, match=r"'ex\.jpg'.*3 people.*max_boxes=2"):
    augment.pad_to(ex, None, canvas_hw=(8, 8), max_boxes=2)
  with pytest.raises(ValueError, match="canvas"):
    augment.pad_to(ex, None, canvas_hw=(4, 8), max_boxes=4)


def _slow_inter_linear(image, new_h, new_w):
  """OpenCV's INTER_LINEAR (cv::resize, float weights), one pixel at a
  time: sx = (dx + 0.5) * w / new_w - 0.5, floored; sx < 0 reads column 0
  with weight 1 and sx >= w - 1 the last column with weight 1; same for
  rows."""
  h, w = image.shape[:2]

  def tap(d, n_in, n_out):
    f = (d + 0.5) * n_in / n_out - 0.5
    i = int(np.floor(f))
    f -= i
    if i < 0:
      i, f = 0, 0.0
    if i >= n_in - 1:
      i, f = n_in - 1, 0.0
    return i, min(i + 1, n_in - 1), f

  out = np.zeros((new_h, new_w, image.shape[2]))
  for dy in range(new_h):
    y0, y1, fy = tap(dy, h, new_h)
    for dx in range(new_w):
      x0, x1, fx = tap(dx, w, new_w)
      out[dy, dx] = ((1 - fy) * ((1 - fx) * image[y0, x0].astype(float)
                                 + fx * image[y0, x1])
                     + fy * ((1 - fx) * image[y1, x0].astype(float)
                             + fx * image[y1, x1]))
  return out


def test_resize_bilinear_hand_values():
  # Shrinking 6 -> 2 columns (scale 3) reads source columns 1.0 and 4.0
  # exactly: no averaging over the other source columns.
  row = np.array([0, 90, 0, 0, 240, 0], np.uint8)
  image = np.repeat(row[None, :, None], 3, axis=2)  # [1, 6, 3]
  out = augment.resize_bilinear(image, (1, 2))
  np.testing.assert_array_equal(out[0, :, 0], [90, 240])
  # Pillow's bilinear (the default) averages the covered pixels instead.
  ex = _example(1, 6, np.zeros((0, 4)), image=image)
  smooth = augment.resize_to_bucket(ex, None, bucket_hw=(1, 2))["image"]
  assert smooth[0, 0, 0] < 90 and smooth[0, 1, 0] < 240
  sharp = augment.resize_to_bucket(ex, None, bucket_hw=(1, 2),
                                   antialias=False)["image"]
  np.testing.assert_array_equal(sharp, out)
  # Enlarging 2 -> 4 (scale 1/2): sources -0.25 (clamped to 0), 0.25, 0.75,
  # 1.25 (clamped to 1).
  image = np.repeat(np.array([0, 100], np.uint8)[None, :, None], 3, axis=2)
  out = augment.resize_bilinear(image, (1, 4))
  np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])


@pytest.mark.parametrize("hw,new_hw", [((7, 11), (3, 4)), ((5, 6), (9, 13)),
                                       ((8, 5), (8, 2)), ((1, 1), (2, 3))])
def test_resize_bilinear_equals_the_slow_opencv_rule(hw, new_hw):
  image = np.random.default_rng(5).integers(0, 256, hw + (3,), np.uint8)
  want = _slow_inter_linear(image, *new_hw)
  out = augment.resize_bilinear(image, new_hw)
  assert out.dtype == np.uint8 and out.shape == tuple(new_hw) + (3,)
  # float32 arithmetic may round a value within 1e-3 of .5 the other way.
  np.testing.assert_allclose(out, want, atol=0.5 + 1e-3)
  floats = augment.resize_bilinear(image.astype(np.float32), new_hw)
  np.testing.assert_allclose(floats, want, atol=1e-3)


def test_oriented_bucket_matches_mmdet_keep_ratio_sizes():
  # mmdet's Resize(img_scale=(1500, 900), keep_ratio=True): the long side
  # fits 1500 and the short side 900, whatever the orientation.
  def mmdet_size(h, w, long_max=1500, short_max=900):
    s = min(long_max / max(h, w), short_max / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)

  for h, w in [(1000, 600), (600, 1000), (450, 800), (800, 450), (700, 700),
               (1200, 500)]:
    bucket = augment.oriented_bucket((h, w), (900, 1500))
    assert augment.fit_scale((h, w), bucket)[1] == mmdet_size(h, w)
  assert augment.oriented_bucket((10, 20), (64, 64)) == (64, 64)
  assert augment.oriented_bucket((20, 10), (48, 64)) == (64, 48)
  with pytest.raises(ValueError, match="taller than wide"):
    augment.oriented_bucket((20, 10), (64, 48))
