"""Tests of ps_jax.data.crops on in-memory re-ID sources.

A source is a list of dicts in the Market-1501 re-ID schema, as a TFDS
ArrayRecord data source returns them: `image` encoded bytes (as
`pipeline.data_source` serves them) or a decoded uint8 array, `image_id`
bytes, `pid` and `camera` int32, and on some records `keypoints` f32[4, 2].
"""

import collections
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from ps_jax.data import augment
from ps_jax.data import crops
from ps_jax.data import order
from ps_jax.data import pipeline

HW = (32, 16)


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def make_source(pids, *, seed=0, encode=True, keypoints_every=2):
  """One crop per entry of `pids`: random sizes, cameras, some keypoints."""
  rng = np.random.default_rng(seed)
  records = []
  for i, pid in enumerate(pids):
    h, w = int(rng.integers(20, 48)), int(rng.integers(10, 28))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    record = {"image": _png(image) if encode else image,
              "image_id": f"{pid:04d}_c{i % 3}_{i:03d}.jpg".encode(),
              "pid": np.int32(pid), "camera": np.int32(i % 3)}
    if i % keypoints_every == 0:
      record["keypoints"] = rng.uniform(0.1, 0.9, (4, 2)).astype(np.float32)
      record["visible"] = np.ones((4,), bool)
    records.append(record)
  return records


# pid of every record: 8 identities with 1 to 6 crops each.
PIDS = [0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5, 6,
        6, 7, 7, 7]


def _cfg(**kw):
  c = dict(batch_size=4, image_hw=HW, num_threads=1, prefetch=1)
  c.update(kw)
  return crops.CropPipelineConfig(**c)


def _iterator(source, cfg=None, seed=0, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return crops.train_iterator(source, cfg or _cfg(), seed, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _eval(source, cfg=None, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return list(crops.eval_batches(source, cfg or _cfg(), **kw))


def _decoded(record):
  image = record["image"]
  if isinstance(image, bytes):
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
  return image


def _reference(record, hw=HW):
  """The unaugmented network input of a record: resize, normalize."""
  image = np.asarray(Image.fromarray(_decoded(record)).resize(
      (hw[1], hw[0]), Image.Resampling.BILINEAR))
  return augment.normalize({"image": image}, None,
                           mode="imagenet_rgb")["image"]


def _unnormalize(image):
  return (image * np.array(augment.IMAGENET_RGB_STD, np.float32)
          + np.array(augment.IMAGENET_RGB_MEAN, np.float32))


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_train_batch_keys_dtypes_and_content(sampler):
  source = make_source(PIDS)
  cfg = _cfg(sampler=sampler, num_instances=2, flip_prob=0.0)
  expected = {"image": (np.float32, (4,) + HW + (3,)),
              "pid": (np.int32, (4,)), "camera": (np.int32, (4,)),
              "keypoints": (np.float32, (4, 4, 2)),
              "has_keypoints": (np.bool_, (4,)), "index": (np.int32, (4,))}
  for batch in _take(_iterator(source, cfg), 5):
    assert set(batch) == set(crops.TRAIN_KEYS)
    for k, (dtype, shape) in expected.items():
      assert batch[k].dtype == dtype and batch[k].shape == shape, k
    for i, r in enumerate(batch["index"]):
      rec = source[r]
      assert batch["pid"][i] == rec["pid"]
      assert batch["camera"][i] == rec["camera"]
      assert batch["has_keypoints"][i] == ("keypoints" in rec)
      if "keypoints" in rec:  # no flip, no crop: the record's keypoints
        np.testing.assert_array_equal(batch["keypoints"][i],
                                      rec["keypoints"])
      else:
        assert not batch["keypoints"][i].any()
      # Without augmentation a training image is the evaluation image.
      np.testing.assert_allclose(batch["image"][i], _reference(rec),
                                 atol=1e-5)


def test_eval_normalization_matches_augment_normalize():
  source = make_source(PIDS[:5])
  for normalization in augment.NORMALIZATIONS:
    batch = _eval(source, _cfg(normalization=normalization))[0]
    for i in range(4):
      image = np.asarray(Image.fromarray(_decoded(source[i])).resize(
          (HW[1], HW[0]), Image.Resampling.BILINEAR))
      ref = augment.normalize({"image": image}, None, mode=normalization)
      np.testing.assert_allclose(batch["image"][i], ref["image"], atol=1e-5)


def test_resize_without_antialias_uses_resize_bilinear():
  source = make_source(PIDS[:4])
  batch = _eval(source, _cfg(resize_antialias=False))[0]
  for i in range(4):
    image = augment.resize_bilinear(_decoded(source[i]), HW)
    ref = augment.normalize({"image": image}, None, mode="imagenet_rgb")
    np.testing.assert_allclose(batch["image"][i], ref["image"], atol=1e-5)


def test_decoded_and_encoded_sources_agree():
  cfg = _cfg(random_crop=True, random_erasing_prob=0.5)
  a = _take(_iterator(make_source(PIDS, encode=True), cfg, seed=1), 3)
  b = _take(_iterator(make_source(PIDS, encode=False), cfg, seed=1), 3)
  _assert_batches_equal(a, b)


def _asymmetric_record():
  image = np.zeros(HW + (3,), np.uint8)
  image[4:9, 2:5] = (255, 0, 0)  # a red patch on the left
  image[20:30, 10:16] = (0, 0, 255)  # a blue one on the right, lower
  image[..., 1] = np.arange(HW[1], dtype=np.uint8)[None] * 9  # x ramp
  keypoints = np.array([[0.5, 0.05], [0.45, 0.2], [0.3, 0.55], [0.7, 0.5]],
                       np.float32)
  return {"image": image, "image_id": b"asym.jpg", "pid": np.int32(3),
          "camera": np.int32(1), "keypoints": keypoints}


def test_flip_mirrors_the_image_and_keypoints_and_swaps_the_hips():
  rec = _asymmetric_record()
  plain = next(_iterator([rec], _cfg(batch_size=1, flip_prob=0.0)))
  flipped = next(_iterator([rec], _cfg(batch_size=1, flip_prob=1.0)))
  np.testing.assert_array_equal(flipped["image"][0],
                                np.flip(plain["image"][0], axis=1))
  assert not np.array_equal(flipped["image"], plain["image"])
  kp, kpf = plain["keypoints"][0], flipped["keypoints"][0]
  np.testing.assert_array_equal(kp, rec["keypoints"])
  # head top and neck mirror in place; the hips mirror and swap.
  np.testing.assert_allclose(kpf[:2], np.stack([1 - kp[:2, 0], kp[:2, 1]],
                                               -1))
  np.testing.assert_allclose(kpf[2], [1 - kp[3, 0], kp[3, 1]])
  np.testing.assert_allclose(kpf[3], [1 - kp[2, 0], kp[2, 1]])
  # The hip labels stay on the same image side: left hip at x = 1 - 0.7.
  assert kpf[2, 0] == pytest.approx(0.3) and kpf[3, 0] == pytest.approx(0.7)


def _dot_record(i, keypoint, rng):
  """A black crop with one white 3 x 3 dot at keypoint row `keypoint`."""
  h, w = int(rng.integers(40, 80)), int(rng.integers(20, 40))
  image = np.zeros((h, w, 3), np.uint8)
  cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(
      rng.integers(h // 4, 3 * h // 4))
  image[cy - 1:cy + 2, cx - 1:cx + 2] = 255
  keypoints = rng.uniform(0.2, 0.8, (4, 2)).astype(np.float32)
  # the 3 x 3 block's centre is at continuous (cx + 0.5, cy + 0.5).
  keypoints[keypoint] = [(cx + 0.5) / w, (cy + 0.5) / h]
  return {"image": _png(image), "image_id": f"dot_{i}.png".encode(),
          "pid": np.int32(i), "camera": np.int32(0), "keypoints": keypoints}


def _centroid_xy(image):
  """(x, y) continuous pixel coordinates of the brightness centroid."""
  weight = np.clip(_unnormalize(image).mean(-1), 0, None)
  weight = np.where(weight > 8, weight, 0)
  ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
  total = weight.sum()
  return (np.array([(xs * weight).sum(), (ys * weight).sum()]) / total
          + 0.5)


def _unflip(kp):
  kp = kp[[0, 1, 3, 2]]
  return np.stack([1 - kp[:, 0], kp[:, 1]], -1)


@pytest.mark.parametrize("keypoint", [0, 2])
def test_random_crop_keypoints_follow_the_pixels(keypoint):
  rng = np.random.default_rng(keypoint)
  source = [_dot_record(i, keypoint, rng) for i in range(8)]
  cfg = _cfg(batch_size=4, random_crop=True, flip_prob=0.5,
             image_hw=(64, 32))
  big_h, big_w = crops.translation_size((64, 32))
  assert (big_h, big_w) == (72, 36)
  cases = collections.Counter()
  for batch in _take(_iterator(source, cfg, seed=3), 10):
    for i, r in enumerate(batch["index"]):
      rec = source[r]
      kp = batch["keypoints"][i]
      # Which augmentation happened, from the keypoints: a flip (undone by
      # `_unflip`) and either a plain resize (keypoints unchanged) or a
      # translation by (x0, y0) of the 1.125x resized crop (the same shift
      # for every keypoint).
      for flipped in (False, True):
        kp_u = _unflip(kp) if flipped else kp
        image = batch["image"][i][:, ::-1] if flipped else batch["image"][i]
        if np.allclose(kp_u, rec["keypoints"], atol=1e-5):
          translated = False
          ref = _reference(rec, (64, 32))
          break
        shift = rec["keypoints"] * (big_w, big_h) - kp_u * (32, 64)
        x0, y0 = np.round(shift[0]).astype(int)
        if np.allclose(shift, [[x0, y0]] * 4, atol=1e-3):
          translated = True
          assert 0 <= x0 <= big_w - 32 and 0 <= y0 <= big_h - 64
          big = np.asarray(Image.fromarray(_decoded(rec)).resize(
              (big_w, big_h), Image.Resampling.BILINEAR))
          ref = augment.normalize({"image": big[y0:y0 + 64, x0:x0 + 32]},
                                  None, mode="imagenet_rgb")["image"]
          break
      else:
        raise AssertionError(f"keypoints {kp} fit no augmentation of "
                             f"{rec['keypoints']}")
      cases[flipped, translated] += 1
      # The pixels are exactly that augmentation of the crop ...
      np.testing.assert_allclose(image, ref, atol=1e-5)
      # ... and the dot is where its keypoint says, within a pixel (after a
      # flip, a hip's dot is labelled as the other hip).
      row = [0, 1, 3, 2][keypoint] if flipped else keypoint
      np.testing.assert_allclose(kp[row] * (32, 64),
                                 _centroid_xy(batch["image"][i]), atol=1.0)
  assert len(cases) == 4, cases  # every combination happened


def test_records_without_keypoints_keep_zeros_under_augmentation():
  source = make_source(PIDS, keypoints_every=1000)  # only record 0 has them
  cfg = _cfg(random_crop=True, flip_prob=0.5, random_erasing_prob=0.5)
  for batch in _take(_iterator(source, cfg), 8):
    for i, r in enumerate(batch["index"]):
      assert batch["has_keypoints"][i] == (r == 0)
      if r:
        assert not batch["keypoints"][i].any()


def test_random_erasing_fills_one_rectangle_with_the_mean():
  source = make_source(PIDS)
  cfg = _cfg(image_hw=(64, 32), random_crop=True)
  plain = _take(_iterator(source, cfg, seed=2), 4)
  erased = _take(_iterator(source, _cfg(image_hw=(64, 32), random_crop=True,
                                        random_erasing_prob=1.0), seed=2), 4)
  areas = []
  for a, b in zip(plain, erased):
    np.testing.assert_array_equal(a["index"], b["index"])
    for x, y in zip(a["image"], b["image"]):
      changed = np.any(x != y, axis=-1)
      assert changed.any()
      rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(
          changed.any(0))
      box = y[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
      assert not box.any()  # one rectangle of zeros: the mean colour
      # ... and nothing changed outside it
      mask = np.zeros(changed.shape, bool)
      mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
      assert not (changed & ~mask).any()
      areas.append(mask.sum() / mask.size)
  assert 0.01 < min(areas) and max(areas) < 0.45


def test_random_sampler_epochs_visit_every_record_and_reshuffle():
  source = make_source(PIDS[:12])
  idx = np.concatenate([b["index"] for b in _take(
      _iterator(source, _cfg(), seed=1), 6)])
  assert sorted(idx[:12]) == list(range(12))
  assert sorted(idx[12:]) == list(range(12))
  assert list(idx[:12]) != list(idx[12:])


def _groups(pids, k):
  """The batch's pids as rows of K; asserts each row is one identity."""
  rows = np.asarray(pids).reshape(-1, k)
  assert (rows == rows[:, :1]).all(), rows
  return rows[:, 0]


def test_identity_batches_have_p_identities_of_k_crops():
  source = make_source(PIDS)
  cfg = _cfg(batch_size=6, sampler="identity", num_instances=2)
  for batch in _take(_iterator(source, cfg, seed=4), 12):
    heads = _groups(batch["pid"], 2)
    assert len(set(heads)) == 3  # P = 6 / 2 distinct identities
    np.testing.assert_array_equal(
        batch["pid"], np.asarray(PIDS)[batch["index"]])


@pytest.mark.parametrize("seed", range(6))
def test_identity_epoch_follows_the_random_identity_sampler(seed):
  pids = np.array(PIDS)
  k, g = 4, 8  # P = 2
  p = g // k
  rows = crops.identity_epoch_batches(pids, k, g, seed, epoch=0)
  assert rows.ndim == 2 and rows.shape[1] == g and len(rows)
  chunks = collections.Counter()
  for row in rows:
    heads = _groups(pids[row], k)
    assert len(set(heads)) == p
    for chunk in row.reshape(-1, k):
      chunks[int(pids[chunk[0]])] += 1
      members = np.flatnonzero(pids == pids[chunk[0]])
      assert set(chunk) <= set(members)
      if len(members) < k:  # padded with repeats, keeping every crop
        assert set(chunk) == set(members)
      else:  # a chunk never repeats a crop
        assert len(set(chunk)) == k
  counts = collections.Counter(PIDS)
  available = {pid: max(n, k) // k for pid, n in counts.items()}
  for pid, used in chunks.items():
    assert used <= available[pid]
  # The epoch ends when fewer than P identities have chunks left.
  left = [pid for pid in available if chunks[pid] < available[pid]]
  assert len(left) < p
  # Within an identity, no crop is used twice in an epoch (beyond padding).
  flat = rows.reshape(-1)
  for pid, n in counts.items():
    if n >= k:
      used = flat[pids[flat] == pid]
      assert len(set(used)) == len(used)
  np.testing.assert_array_equal(
      rows, crops.identity_epoch_batches(pids, k, g, seed, epoch=0))
  assert not np.array_equal(
      rows.reshape(-1)[:g],
      crops.identity_epoch_batches(pids, k, g, seed, epoch=1).reshape(-1)[:g])


def test_identity_epoch_covers_every_identity():
  # torchreid's rule guarantees only that fewer than P identities miss the
  # end of an epoch (test above); at Market-1501's scale (751 identities of
  # 2 to 72 crops, P = 16, K = 4) every epoch covers every identity.
  rng = np.random.default_rng(0)
  counts = np.clip(rng.lognormal(2.6, 0.6, 751).astype(int), 2, 72)
  pids = rng.permutation(np.repeat(np.arange(751), counts))
  for epoch in range(3):
    rows = crops.identity_epoch_batches(pids, 4, 64, seed=1, epoch=epoch)
    assert set(pids[rows.reshape(-1)]) == set(range(751))
    assert len(rows) >= (counts // 4).sum() // 16 - 16
  # Identities with fewer than K crops are padded with their own repeats.
  pids = np.array([0, 1, 1, 1, 2, 2, 2, 2, 3, 3])
  rows = crops.identity_epoch_batches(pids, 4, 8, seed=0, epoch=0)
  for chunk in rows.reshape(-1, 4):
    if pids[chunk[0]] == 0:
      np.testing.assert_array_equal(chunk, [0, 0, 0, 0])
    elif pids[chunk[0]] == 1:
      assert set(chunk) == {1, 2, 3}
    elif pids[chunk[0]] == 3:
      assert sorted(collections.Counter(chunk).values()) in ([1, 3], [2, 2])


def test_identity_sampler_leaves_out_junk_and_needs_p_identities():
  pids = np.array([-1, -1, 0, 0, 1, 1, 2])
  for epoch in range(3):
    rows = crops.identity_epoch_batches(pids, 2, 4, seed=0, epoch=epoch)
    assert (pids[rows] >= 0).all()
  with pytest.raises(ValueError, match="at least P = 4 identities"):
    crops.identity_epoch_batches(pids, 2, 8, seed=0, epoch=0)
  source = make_source([0, 0, 1, 1, 2, 2])
  with pytest.raises(ValueError, match="identities"):
    _iterator(source, _cfg(batch_size=4, sampler="identity",
                           num_instances=1), process_count=1)


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_same_seed_same_batches_different_seed_differs(sampler):
  source = make_source(PIDS)
  cfg = _cfg(sampler=sampler, num_instances=2, random_crop=True,
             random_erasing_prob=0.5)
  a = _take(_iterator(source, cfg, seed=3), 4)
  _assert_batches_equal(a, _take(_iterator(source, cfg, seed=3), 4))
  c = _take(_iterator(source, cfg, seed=4), 4)
  assert any(not np.array_equal(x["index"], y["index"])
             for x, y in zip(a, c))
  # The shuffle_seed setting is the default seed.
  d = _take(crops.train_iterator(source, cfg, None, process_index=0,
                                 process_count=1, shuffle_seed=3), 4)
  _assert_batches_equal(a, d)


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_restore_from_state_continues_exactly(sampler):
  source = make_source(PIDS)
  cfg = _cfg(sampler=sampler, num_instances=2, random_crop=True,
             random_erasing_prob=0.5)
  it = _iterator(source, cfg, seed=4)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 3)  # past the end of the first epoch (identity)
  fresh = _iterator(source, cfg, seed=4)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), expected)
  if sampler == "identity":
    first = len(crops.identity_epoch_batches(np.array(PIDS), 2, 4, 4, 0))
    assert first < 8  # the batches above crossed an epoch boundary
    # Deep into a run: a fresh iterator restored after 3 epochs + 1 batch
    # recomputes the (varying) epoch lengths before it.
    lengths = [len(crops.identity_epoch_batches(np.array(PIDS), 2, 4, 4, e))
               for e in range(3)]
    assert len(set(lengths)) > 1  # [6, 5, 5]
    it = _iterator(source, cfg, seed=4)
    batches = _take(it, sum(lengths) + 1)
    rows = crops.identity_epoch_batches(np.array(PIDS), 2, 4, 4, 3)
    np.testing.assert_array_equal(batches[sum(lengths)]["index"], rows[0])
    state = it.get_state()
    expected = _take(it, 2)
    fresh = _iterator(source, cfg, seed=4)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 2), expected)


def test_restore_through_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  grain = pytest.importorskip("grain")
  source = make_source(PIDS)
  cfg = _cfg(sampler="identity", num_instances=2)
  it = _iterator(source, cfg, seed=0)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 3)
    fresh = _iterator(source, cfg, seed=0)
    mngr.restore(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 3), expected)


def test_identity_sampler_two_processes_share_global_batches():
  source = make_source(PIDS)
  cfg = _cfg(batch_size=4, sampler="identity", num_instances=2)
  per = [_take(_iterator(source, cfg, seed=5, process_index=p,
                         process_count=2), 6) for p in range(2)]
  pids = np.array(PIDS)
  rows = np.concatenate([crops.identity_epoch_batches(pids, 2, 8, 5, e)
                         for e in range(3)])
  for b, (a, c) in enumerate(zip(*per)):
    joined = np.concatenate([a["index"], c["index"]])
    np.testing.assert_array_equal(joined, rows[b])
    heads = _groups(np.concatenate([a["pid"], c["pid"]]), 2)
    assert len(set(heads)) == 4  # P = 8 / 2 over the global batch
    # each process holds whole identity groups
    _groups(a["pid"], 2)
    _groups(c["pid"], 2)


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_two_processes_split_the_one_process_batches(sampler):
  # The global stream (ps_jax.data.order): the same crops, the same
  # augmentation, whatever the number of processes.
  source = make_source(PIDS)
  kw = dict(sampler=sampler, num_instances=2, random_crop=True,
            random_erasing_prob=0.5)
  one = _take(_iterator(source, _cfg(batch_size=8, **kw), seed=5), 4)
  per = [_take(_iterator(source, _cfg(batch_size=4, **kw), seed=5,
                         process_index=p, process_count=2), 4)
         for p in range(2)]
  joined = [{k: np.concatenate([a[k], c[k]]) for k in a} for a, c in
            zip(*per)]
  _assert_batches_equal(joined, one)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_every_record_once_padding_marked(process_count):
  source = make_source(PIDS[:11])
  cfg = _cfg(eval_batch_size=3, flip_prob=1.0, random_crop=True,
             random_erasing_prob=1.0)
  per = [_eval(source, cfg, process_index=p, process_count=process_count)
         for p in range(process_count)]
  n_batches = crops.num_eval_batches(11, 3, process_count)
  assert n_batches == pipeline.num_eval_batches(11, 3, process_count)
  assert all(len(bs) == n_batches for bs in per)
  seen = []
  for p, batches in enumerate(per):
    for b in batches:
      assert set(b) == set(crops.EVAL_KEYS)
      assert b["image"].shape == (3,) + HW + (3,)
      assert b["image_id"].dtype.kind == "U"
      valid = b["example_valid"]
      seen += b["index"][valid].tolist()
      for i in np.flatnonzero(valid):
        rec = source[b["index"][i]]
        assert b["image_id"][i] == rec["image_id"].decode()
        assert b["pid"][i] == rec["pid"] and b["camera"][i] == rec["camera"]
        # no augmentation
        np.testing.assert_allclose(b["image"][i], _reference(rec),
                                   atol=1e-5)
        if "keypoints" in rec:
          np.testing.assert_array_equal(b["keypoints"][i], rec["keypoints"])
      for i in np.flatnonzero(~valid):
        assert b["pid"][i] == -2 and b["camera"][i] == -1
        assert b["index"][i] == -1 and b["image_id"][i] == ""
        assert not b["image"][i].any() and not b["keypoints"][i].any()
        assert not b["has_keypoints"][i]
    mine = [r for b in batches for r in b["index"][b["example_valid"]]]
    assert mine == list(range(p, 11, process_count))
  assert sorted(seen) == list(range(11))


def test_config_from_section_overrides_and_strings():
  cfg = crops.CropPipelineConfig.from_config(
      {"batch_size": 8, "image_hw": "256X128", "sampler": "identity"},
      batch_size=16)
  assert cfg.batch_size == 16 and cfg.image_hw == (256, 128)
  assert cfg.per_process_eval_batch_size == 16
  assert crops.CropPipelineConfig(batch_size=1).image_hw == (256, 128)
  again = crops.CropPipelineConfig.from_config(cfg, eval_batch_size=5)
  assert again.per_process_eval_batch_size == 5 and again.batch_size == 16
  with pytest.raises(ValueError, match=r"unknown .*\['flip_prb'\]"):
    crops.CropPipelineConfig.from_config(cfg, flip_prb=0.5)


@pytest.mark.parametrize("field, value, expected", [
    ("image_hw", "256", "an image size"),
    ("image_hw", (0, 128), "an image size"),
    ("image_hw", (256, 128.5), "an image size"),
    ("batch_size", 0, "an integer >= 1"),
    ("num_instances", 0, "an integer >= 1"),
    ("eval_batch_size", -1, "an integer >= 0"),
    ("flip_prob", 1.5, r"a number in \[0, 1\]"),
    ("random_erasing_prob", float("nan"), r"a number in \[0, 1\]"),
    ("random_crop", 1, "True or False"),
    ("resize_antialias", "yes", "True or False"),
    ("normalization", "rgb", "one of"),
    ("sampler", "pk", r"one of \('random', 'identity'\)"),
    ("shuffle_seed", "0", "an integer"),
    ("num_workers", -1, "an integer >= 0"),
])
def test_bad_settings_name_the_field(field, value, expected):
  with pytest.raises(ValueError, match=rf"data\.{field}=.*expected {expected}"):
    _cfg(**{field: value})


def test_identity_batch_size_must_be_a_multiple_of_num_instances():
  with pytest.raises(ValueError, match=r"data\.batch_size=6; expected a "
                                       r"multiple of data\.num_instances=4"):
    _cfg(batch_size=6, sampler="identity", num_instances=4)
  _cfg(batch_size=6, sampler="random", num_instances=4)  # not checked


def test_undecodable_or_empty_image_names_the_image():
  source = make_source(PIDS[:4])
  source[2] = dict(source[2], image=b"\xff\xd8\xff garbage")
  name = source[2]["image_id"].decode()
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    next(_iterator(source, _cfg(batch_size=4)))
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    _eval(source)
  source = make_source(PIDS[:4], encode=False)
  source[1] = dict(source[1], image=np.zeros((0, 5, 3), np.uint8))
  with pytest.raises(ValueError, match=r"0001_c1_001\.jpg"):
    next(_iterator(source, _cfg(batch_size=4)))
  source = make_source(PIDS[:4])
  del source[3]["image_id"]
  source[3]["image"] = b"not an image"
  with pytest.raises(ValueError, match=r"record 3"):
    _eval(source)
  source = make_source(PIDS[:4])
  source[0]["keypoints"] = np.zeros((17, 2), np.float32)
  with pytest.raises(ValueError, match=r"0000_c0_000\.jpg.*keypoints"):
    _eval(source)


class _DamagedSource(list):
  def __getitem__(self, i):
    if i == 3:
      raise pipeline.DataError("/data/x.array_record: record 3 is corrupt")
    return super().__getitem__(i)


@pytest.mark.parametrize("sampler", ["random", "identity"])
def test_data_error_passes_through(sampler):
  source = _DamagedSource(make_source(PIDS[:8]))
  with pytest.raises(pipeline.DataError, match=r"^/data/x\.array_record: "
                                               r"record 3 is corrupt"):
    _take(_iterator(source, _cfg(sampler=sampler, num_instances=1)), 2)
  with pytest.raises(pipeline.DataError, match="record 3 is corrupt"):
    _eval(source)


def test_identity_schedule_pickles_for_worker_processes():
  source = make_source(PIDS)
  cfg = _cfg(sampler="identity", num_instances=2)
  # pylint: disable=protected-access
  example = crops._TrainExample(source, cfg, 7)
  schedule = crops._IdentitySchedule(np.array(PIDS), 2, 4, 7)
  fn = order.ProcessStream(example, schedule, 4, 0, 1)
  # pylint: enable=protected-access
  expected = [fn(i, None) for i in range(30)]
  clone = pickle.loads(pickle.dumps(fn))
  for i in reversed(range(30)):  # any order, e.g. another worker's share
    got = clone(i, None)
    for k in got:
      np.testing.assert_array_equal(got[k], expected[i][k], err_msg=k)


def test_worker_processes_give_the_same_batches():
  source = make_source(PIDS)
  cfg = _cfg(sampler="identity", num_instances=2, random_crop=True)
  expected = _take(_iterator(source, cfg, seed=4), 6)
  it = _iterator(source, _cfg(sampler="identity", num_instances=2,
                              random_crop=True, num_workers=1), seed=4)
  try:
    _assert_batches_equal(_take(it, 6), expected)
  finally:
    del it
