"""Tests for ps_jax.ops.rcnn_targets against per-candidate numpy loops
written from torchvision's Matcher / BalancedPositiveNegativeSampler and
py-faster-rcnn's anchor and proposal target layers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import box_coder
from ps_jax.ops import rcnn_targets as rt

FG, BG, IGN = rt.FOREGROUND, rt.BACKGROUND, rt.IGNORE


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union if union > 0 else 0.0


def _ref_match(iou, gt_valid, high, low, allow_low_quality):
  g, n = iou.shape
  gt_index = np.zeros(n, np.int32)
  label = np.full(n, BG, np.int32)
  valid_gts = [k for k in range(g) if gt_valid[k]]
  for i in range(n):
    if not valid_gts:
      continue
    best_k = max(valid_gts, key=lambda k: (iou[k, i], -k))
    gt_index[i] = best_k
    v = iou[best_k, i]
    label[i] = FG if v >= high else (BG if v < low else IGN)
  if allow_low_quality:
    for k in valid_gts:
      top = iou[k].max()
      if top <= 0:
        continue
      for i in range(n):
        if iou[k, i] == top:
          label[i] = FG
  return gt_index, label


def _boxes(rng, n, size=100.0, lo=4.0, hi=50.0):
  xy = rng.uniform(0, size - lo, (n, 2))
  wh = rng.uniform(lo, hi, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("allow_low_quality", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_equals_loop(seed, allow_low_quality):
  rng = np.random.default_rng(seed)
  gts = _boxes(rng, 5)
  # Candidates: jittered copies of the GTs (high IoU) and random boxes.
  cands = np.concatenate([gts + rng.normal(0, 3, gts.shape), _boxes(rng, 40)])
  cands = cands.astype(np.float32)
  gt_valid = np.array([True, True, False, True, True])
  iou = np.array([[_iou(g, c) for c in cands] for g in gts], np.float32)
  got = rt.match(jnp.asarray(iou), jnp.asarray(gt_valid), high=0.7, low=0.3,
                 allow_low_quality=allow_low_quality)
  want = _ref_match(iou, gt_valid, 0.7, 0.3, allow_low_quality)
  np.testing.assert_array_equal(got[1], want[1])
  matched = want[1] != BG
  np.testing.assert_array_equal(np.asarray(got[0])[matched], want[0][matched])


def test_match_low_quality_ties_and_no_overlap():
  # GT 0 is best-covered equally by candidates 0 and 1 (IoU 0.4); GT 1
  # overlaps nothing: it promotes no candidate.
  iou = np.array([[0.4, 0.4, 0.1, 0.0],
                  [0.0, 0.0, 0.0, 0.0]], np.float32)
  _, label = rt.match(jnp.asarray(iou), jnp.array([True, True]), high=0.7,
                      low=0.3, allow_low_quality=True)
  np.testing.assert_array_equal(label, [FG, FG, BG, BG])


def test_match_without_valid_gt_is_all_background():
  iou = np.ones((2, 3), np.float32)
  idx, label = rt.match(jnp.asarray(iou), jnp.array([False, False]), high=0.5,
                        low=0.5, allow_low_quality=True)
  np.testing.assert_array_equal(label, [BG] * 3)
  np.testing.assert_array_equal(idx, [0] * 3)


@pytest.mark.parametrize("num_pos,num_neg", [(3, 500), (200, 500), (200, 20),
                                             (0, 0)])
def test_sample_balanced_counts_and_subsets(num_pos, num_neg):
  n = 800
  label = np.full(n, IGN, np.int32)
  rng = np.random.default_rng(0)
  idx = rng.permutation(n)
  label[idx[:num_pos]] = FG
  label[idx[num_pos:num_pos + num_neg]] = BG
  pos, neg = rt.sample_balanced(jax.random.key(3), jnp.asarray(label),
                                budget=256, positive_fraction=0.5)
  pos, neg = np.asarray(pos), np.asarray(neg)
  want_pos = min(num_pos, 128)
  want_neg = min(num_neg, 256 - want_pos)
  assert pos.sum() == want_pos and neg.sum() == want_neg
  assert np.all(label[pos] == FG) and np.all(label[neg] == BG)


def test_sample_balanced_is_uniform_and_keyed():
  label = jnp.asarray(np.array([FG] * 10 + [BG] * 10, np.int32))
  draw = jax.jit(lambda k: rt.sample_balanced(k, label, budget=4,
                                              positive_fraction=0.5))
  keys = jax.random.split(jax.random.key(0), 2000)
  pos, neg = jax.vmap(draw)(keys)
  # Each positive is drawn with probability 2 / 10, each negative 2 / 10.
  freq = np.concatenate([np.asarray(pos)[:, :10].mean(0),
                         np.asarray(neg)[:, 10:].mean(0)])
  np.testing.assert_allclose(freq, 0.2, atol=0.04)
  a = draw(jax.random.key(5))
  b = draw(jax.random.key(5))
  np.testing.assert_array_equal(a[0], b[0])


def _ref_rpn_labels(anchors, gts, gt_valid, hw, fg, bg, border):
  iou = np.array([[_iou(g, a) for a in anchors] for g in gts], np.float32)
  gt_index, label = _ref_match(iou, gt_valid, fg, bg, True)
  if border is not None:
    for i, a in enumerate(anchors):
      if (a[0] < -border or a[1] < -border or a[2] > hw[1] + border
          or a[3] > hw[0] + border):
        label[i] = IGN
  return gt_index, label


@pytest.mark.parametrize("border", [None, 0.0])
def test_rpn_targets(border):
  rng = np.random.default_rng(4)
  anchors = np.concatenate([_boxes(rng, 300, size=120, hi=60),
                            _boxes(rng, 20, size=140, hi=30) - 10])
  anchors = anchors.astype(np.float32)
  gts = np.concatenate([_boxes(rng, 3), np.zeros((1, 4), np.float32)])
  gt_valid = np.array([True, True, True, False])
  hw = np.array([110, 120], np.int32)
  out = rt.rpn_targets(jax.random.key(1), jnp.asarray(anchors),
                       jnp.asarray(gts), jnp.asarray(gt_valid),
                       jnp.asarray(hw), budget=64, positive_fraction=0.5,
                       allowed_border=border)
  gt_index, label = _ref_rpn_labels(anchors, gts, gt_valid, hw, 0.7, 0.3,
                                    border)
  pos, neg = np.asarray(out["positive"]), np.asarray(out["negative"])
  assert pos.sum() == min((label == FG).sum(), 32)
  assert pos.sum() + neg.sum() == min(64, pos.sum() + (label == BG).sum())
  assert np.all(label[pos] == FG) and np.all(label[neg] == BG)
  want = box_coder.encode(anchors[pos], gts[gt_index[pos]],
                          box_coder.RPN_WEIGHTS)
  np.testing.assert_allclose(np.asarray(out["deltas"])[pos], want, atol=1e-5)
  assert np.all(np.asarray(out["deltas"])[~pos] == 0)


def test_rpn_targets_every_gt_gets_an_anchor():
  rng = np.random.default_rng(7)
  anchors = _boxes(rng, 400, size=120, hi=60)
  gts = _boxes(rng, 4, hi=20)  # small: most have no anchor with IoU >= 0.7
  out = rt.rpn_targets(jax.random.key(0), jnp.asarray(anchors),
                       jnp.asarray(gts), jnp.ones(4, bool),
                       jnp.array([120, 120]), budget=256)
  iou = np.array([[_iou(g, a) for a in anchors] for g in gts])
  best = iou.argmax(1)
  assert np.all(np.asarray(out["positive"])[best])


def _ref_roi_labels(cands, cand_valid, gts, gt_valid, fg, bg_hi, bg_lo):
  label = np.full(len(cands), IGN, np.int32)
  gt_index = np.zeros(len(cands), np.int32)
  for i, c in enumerate(cands):
    if not cand_valid[i]:
      continue
    ious = [(_iou(g, c), -k) if gt_valid[k] else (-1.0, -k)
            for k, g in enumerate(gts)]
    best, neg_k = max(ious)
    best = max(best, 0.0)
    gt_index[i] = -neg_k
    if best >= fg:
      label[i] = FG
    elif bg_lo <= best < bg_hi:
      label[i] = BG
  return gt_index, label


@pytest.mark.parametrize("bg_lo,fraction", [(0.0, 0.25), (0.1, 0.5)])
def test_sample_rois(bg_lo, fraction):
  rng = np.random.default_rng(11)
  gts = np.concatenate([_boxes(rng, 3, lo=20), np.zeros((2, 4), np.float32)])
  gt_valid = np.array([True, True, True, False, False])
  gt_pids = np.array([4, -1, 7, 0, 0], np.int32)
  props = np.concatenate([
      np.repeat(gts[:3], 6, 0) + rng.normal(0, 4, (18, 4)),
      _boxes(rng, 60)]).astype(np.float32)
  prop_valid = np.ones(len(props), bool)
  prop_valid[-5:] = False
  out = rt.sample_rois(jax.random.key(2), jnp.asarray(props),
                       jnp.asarray(prop_valid), jnp.asarray(gts),
                       jnp.asarray(gt_pids), jnp.asarray(gt_valid),
                       num_samples=32, fg_fraction=fraction, bg_iou_low=bg_lo)
  out = {k: np.asarray(v) for k, v in out.items()}
  cands = np.concatenate([props, gts])
  gt_index, label = _ref_roi_labels(
      cands, np.concatenate([prop_valid, gt_valid]), gts, gt_valid, 0.5, 0.5,
      bg_lo)
  num_fg = min((label == FG).sum(), int(32 * fraction))
  num_bg = min((label == BG).sum(), 32 - num_fg)
  fg, valid = out["foreground"], out["valid"]
  # Foreground slots first, then background, then empty slots.
  np.testing.assert_array_equal(fg, np.arange(32) < num_fg)
  np.testing.assert_array_equal(valid, np.arange(32) < num_fg + num_bg)
  # Every drawn RoI is a candidate of the right label, drawn once.
  rows = [int(np.flatnonzero(np.all(cands == r, 1))[0])
          for r in out["rois"][valid]]
  assert len(set(rows)) == len(rows)
  np.testing.assert_array_equal(label[rows], [FG] * num_fg + [BG] * num_bg)
  fg_rows = rows[:num_fg]
  assert fg_rows == sorted(fg_rows)
  np.testing.assert_array_equal(out["pids"][:num_fg],
                                gt_pids[gt_index[fg_rows]])
  assert np.all(out["pids"][num_fg:] == -2)
  np.testing.assert_allclose(out["gt_boxes"][:num_fg], gts[gt_index[fg_rows]])
  want = box_coder.encode(cands[fg_rows], gts[gt_index[fg_rows]],
                          box_coder.ROI_HEADS_WEIGHTS)
  np.testing.assert_allclose(out["deltas"][:num_fg], want, atol=1e-4)
  assert np.all(out["deltas"][num_fg:] == 0)


def test_sample_rois_gt_boxes_are_candidates():
  """With no proposal near a GT, the appended GT itself is a foreground RoI."""
  gts = jnp.array([[10.0, 10.0, 30.0, 60.0]])
  props = jnp.array([[70.0, 70.0, 90.0, 90.0]] * 3)
  out = rt.sample_rois(jax.random.key(0), props, jnp.ones(3, bool), gts,
                       jnp.array([3]), jnp.array([True]), num_samples=8)
  np.testing.assert_array_equal(out["foreground"], [1] + [0] * 7)
  np.testing.assert_array_equal(out["rois"][0], gts[0])
  assert int(out["pids"][0]) == 3
  np.testing.assert_array_equal(out["valid"], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(out["deltas"][0], 0.0, atol=1e-6)


def test_sample_rois_jits_and_vmaps():
  fn = jax.jit(jax.vmap(functools.partial(rt.sample_rois, num_samples=16)))
  b, r, g = 2, 20, 3
  rng = np.random.default_rng(0)
  out = fn(jax.random.split(jax.random.key(0), b),
           jnp.asarray(np.stack([_boxes(rng, r) for _ in range(b)])),
           jnp.ones((b, r), bool),
           jnp.asarray(np.stack([_boxes(rng, g) for _ in range(b)])),
           jnp.zeros((b, g), jnp.int32), jnp.ones((b, g), bool))
  assert out["rois"].shape == (b, 16, 4) and out["pids"].shape == (b, 16)
  assert np.all(np.isfinite(np.asarray(out["deltas"])))
