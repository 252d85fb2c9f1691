"""Tests for the CUHK-SYSU and PRW search protocols.

Hand-built galleries have embeddings [s, sqrt(1 - s^2)] and query embedding
[1, 0], so a detection's similarity is exactly s. Random galleries compare the
vectorized protocols with a slow, loop-by-loop transcription of the reference
procedure (SeqNet `eval_func.py` / OIM `psdb.py`) written below.
"""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ps_jax.eval import person_search as ps
from ps_jax.eval.person_search import FULL_SET, TOP_K, Gallery, Queries


def _feats(sims):
  s = np.asarray(sims, np.float64).reshape(-1)
  return np.stack([s, np.sqrt(1.0 - s**2)], axis=1)


def _dets(boxes, sims, scores=None):
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.full(len(boxes), 0.9) if scores is None else scores
  return np.concatenate([boxes, np.reshape(scores, (-1, 1))], 1), _feats(sims)


Q_FEAT = [1.0, 0.0]
TARGET = [10, 10, 60, 110]      # w=50, h=100: IoU threshold 0.5
OTHER = [100, 10, 150, 110]
SMALL = [0, 0, 10, 20]          # w=10, h=20: threshold 200/600 = 1/3
SMALL_DET = [0, 0, 10, 8]       # IoU with SMALL = 80/200 = 0.4


def _hand_gallery():
  """g0..g4 plus the query image `qimg`; target pid 1."""
  images = {
      # Target found by d0 (0.9); d1 is another person (0.95); d2 overlaps
      # the target too (IoU 48/52) but is less similar: a negative.
      "g0": ([TARGET, OTHER], [1, -1],
             _dets([TARGET, OTHER, [12, 10, 62, 110]], [0.9, 0.95, 0.5])),
      # No target.
      "g1": ([OTHER], [3], _dets([OTHER, TARGET], [0.8, 0.3])),
      # Target, but its only detection is below det_thresh 0.5.
      "g2": ([TARGET], [1], _dets([TARGET], [0.99], scores=[0.4])),
      # Small target matched at IoU 0.4 thanks to the small-box rule.
      "g3": ([SMALL], [1], _dets([SMALL_DET], [0.6])),
      # No target, only in the full set.
      "g4": ([OTHER], [4], _dets([OTHER], [0.85])),
      # The query's own image: very similar, never part of its gallery.
      "qimg": ([TARGET], [1], _dets([TARGET], [0.99])),
  }
  names = list(images)
  return Gallery(
      image_ids=names,
      gt_boxes=[np.asarray(images[n][0], np.float64) for n in names],
      gt_pids=[np.asarray(images[n][1]) for n in names],
      dets=[images[n][2][0] for n in names],
      feats=[images[n][2][1] for n in names])


def _queries(lists, pids, image_ids=None, size=50):
  n = len(lists)
  return Queries(feats=np.tile(Q_FEAT, (n, 1)),
                 image_ids=image_ids or ["qimg"] * n,
                 pids=np.asarray(pids), galleries={size: lists})


def test_cuhk_hand_built():
  gallery = _hand_gallery()
  queries = _queries(
      lists=[["g0", "g1", "g2", "g3"],  # the main case
             ["g0", "g1"],              # pid 2 has no match anywhere
             ["g3", "g2"],              # top-1 hit
             []],                       # empty gallery
      pids=[1, 2, 1, 1])
  res = ps.eval_search_cuhk(gallery, queries, gallery_sizes=[50])[50]
  # Query 0: ranked 0.95 N, 0.9 P, 0.8 N, 0.6 P, 0.5 N, 0.3 N. count_gt = 3
  # (g0, g2, g3), count_tp = 2. AP = 1/2 * 1/2 + 1/2 * 2/4 = 1/2; x 2/3.
  # Query 2: 0.6 P alone; count_gt 2 -> AP 1 x 1/2, top-1 hit.
  np.testing.assert_allclose(res.ap, [1 / 3, 0.0, 0.5, 0.0])
  np.testing.assert_array_equal(res.count_gt, [3, 0, 2, 0])
  np.testing.assert_array_equal(res.count_tp, [2, 0, 1, 0])
  np.testing.assert_array_equal(
      res.hits, [[0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
  assert res.mAP == pytest.approx((1 / 3 + 0.5) / 4)
  assert res.top_k == {1: 0.25, 5: 0.5, 10: 0.5}
  assert res.as_dict()["top5"] == 0.5


def test_cws_weights_similarities_by_detection_scores():
  gallery = _hand_gallery()
  queries = _queries(lists=[["g0", "g1", "g2", "g3"]], pids=[1])
  # Every kept detection scores 0.9: the order, and so AP and top-k, stay.
  plain = ps.eval_search_cuhk(gallery, queries, gallery_sizes=[50])[50]
  same = ps.eval_search_cuhk(gallery, queries, gallery_sizes=[50],
                             cws=True)[50]
  np.testing.assert_allclose(same.ap, plain.ap)
  np.testing.assert_array_equal(same.hits, plain.hits)
  # g0's other person scores 0.5: 0.81 P, 0.72 N, 0.54 P, 0.475 N, 0.45 N,
  # 0.27 N: AP = (1 + 2/3) / 2 = 5/6, x the recall 2/3; top-1 hit.
  gallery.dets[0][:, 4] = [0.9, 0.5, 0.9]
  res = ps.eval_search_cuhk(gallery, queries, gallery_sizes=[50],
                            cws=True)[50]
  np.testing.assert_allclose(res.ap, [5 / 9])
  np.testing.assert_array_equal(res.hits, [[1, 1, 1]])
  assert ps.eval_search_cuhk(gallery, queries, gallery_sizes=[50]
                             )[50].ap[0] == pytest.approx(1 / 3)
  gallery.dets[0][:, 4] = [0.9, 1.5, 0.9]
  with pytest.raises(ValueError, match=r"g0.*cws needs detection scores"):
    ps.eval_search_prw(gallery, queries, cws=True)


def test_small_box_rule():
  # IoU 0.4 matches the 10x20 target (threshold 1/3) but not a 50x100 one.
  np.testing.assert_allclose(ps.small_box_iou_thresh(
      np.array([SMALL, TARGET], np.float64)), [1 / 3, 0.5])
  gallery = _hand_gallery()
  res = ps.eval_search_cuhk(gallery, _queries([["g3"]], [1]), [50])[50]
  assert res.count_tp[0] == 1 and res.ap[0] == 1.0
  # Same geometry scaled x5: threshold 0.5 * ... = 5000/(60*110) -> 0.5.
  big = Gallery(["a"], [np.asarray([SMALL]) * 5], [np.array([1])],
                [_dets(np.asarray([SMALL_DET]) * 5, [0.6])[0]],
                [_feats([0.6])])
  res = ps.eval_search_cuhk(big, _queries([["a"]], [1]), [50])[50]
  assert res.count_tp[0] == 0 and res.count_gt[0] == 1 and res.ap[0] == 0


@pytest.mark.parametrize("duplicates, want_ap, want_gt, want_tp", [
    # Ranked (g0 once): 0.95 N, 0.9 P, 0.8 N, 0.5 N, 0.3 N; AP 1/2.
    # SeqNet: g0 counted twice in count_gt but ranked once: x 1/2.
    ("seqnet", 0.25, 2, 1),
    # Repeat: g0's detections twice, two TPs tied at 0.9 under two tied
    # 0.95 negatives: precision 2/4, recall 2/2.
    ("repeat", 0.5, 2, 2),
    # Unique: one entry, AP 1/2, recall 1.
    ("unique", 0.5, 1, 1),
])
def test_duplicated_entries(duplicates, want_ap, want_gt, want_tp):
  queries = _queries([["g0", "g1", "g0"]], [1])
  res = ps.eval_search_cuhk(_hand_gallery(), queries, [50],
                            duplicates=duplicates)[50]
  assert res.ap[0] == pytest.approx(want_ap)
  assert res.count_gt[0] == want_gt and res.count_tp[0] == want_tp
  np.testing.assert_array_equal(res.hits[0], [0, 1, 1])


def test_full_set():
  queries = _queries([["g0", "g1", "g2", "g3"]], [1])
  gallery = _hand_gallery()
  # psdb: every image but qimg once: 0.95 N, 0.9 P, 0.85 N, 0.8 N, 0.6 P,
  # 0.5 N, 0.3 N. AP = 1/2 * 1/2 + 1/2 * 2/5 = 0.45; x 2/3 = 0.3.
  res = ps.eval_search_cuhk(gallery, queries, [FULL_SET],
                            full_set="psdb")[FULL_SET]
  assert res.ap[0] == pytest.approx(0.3)
  # SeqNet: g0, g1, g3 also once more as negatives. >= 0.9: 0.95 x2, 0.9 P,
  # 0.9 N -> 1/4; >= 0.6: 9 entries -> 2/9. AP = (1/4 + 2/9)/2; x 2/3.
  res = ps.eval_search_cuhk(gallery, queries, [FULL_SET])[FULL_SET]
  assert res.ap[0] == pytest.approx((1 / 4 + 2 / 9) / 2 * 2 / 3)
  np.testing.assert_array_equal(res.hits[0], [0, 1, 1])


def test_full_set_true_match_beats_its_own_copy():
  gallery = Gallery(
      ["a", "b", "q"],
      [np.asarray([TARGET]), np.asarray([OTHER]), np.asarray([TARGET])],
      [np.array([1]), np.array([2]), np.array([1])],
      [_dets([TARGET], [0.9])[0], _dets([OTHER], [0.4])[0],
       _dets([TARGET], [0.99])[0]],
      [_feats([0.9]), _feats([0.4]), _feats([0.99])])
  queries = _queries([["a"]], [1], image_ids=["q"])
  res = ps.eval_search_cuhk(gallery, queries, [FULL_SET])[FULL_SET]
  # SeqNet ranking: a 0.9 P, a 0.9 N (copy), b 0.4 N -> AP 1/2, top-1 hit.
  assert res.ap[0] == pytest.approx(0.5)
  np.testing.assert_array_equal(res.hits[0], [1, 1, 1])
  res = ps.eval_search_cuhk(gallery, queries, [FULL_SET],
                            full_set="psdb")[FULL_SET]
  assert res.ap[0] == 1.0 and res.hits[0, 0]


def test_full_set_base_names_the_lists_it_extends():
  gallery = _hand_gallery()
  lists = [["g0", "g1", "g2", "g3"], ["g3"]]
  # The same lists stored under size 10: the full set extends them exactly
  # as it extends TestG50 (the hand-computed SeqNet AP of `test_full_set`).
  got = ps.eval_search_cuhk(gallery, _queries(lists, [1, 1], size=10),
                            [10, FULL_SET], full_set_base=10)
  want = ps.eval_search_cuhk(gallery, _queries(lists, [1, 1]), [FULL_SET])
  assert got[FULL_SET].ap[0] == pytest.approx((1 / 4 + 2 / 9) / 2 * 2 / 3)
  np.testing.assert_array_equal(got[FULL_SET].ap, want[FULL_SET].ap)
  np.testing.assert_array_equal(got[FULL_SET].hits, want[FULL_SET].hits)
  with pytest.raises(ValueError, match=r"galleries\[50\]"):
    ps.eval_search_cuhk(gallery, _queries(lists, [1, 1], size=10),
                        [FULL_SET])


def test_tied_scores():
  # The true match and a negative share similarity 0.7: one threshold
  # (AP 1/2), and the tie ranks the negative first (no top-1).
  gallery = Gallery(
      ["a", "b"], [np.asarray([TARGET]), np.asarray([OTHER])],
      [np.array([1]), np.array([2])],
      [_dets([TARGET], [0.7])[0], _dets([OTHER], [0.7])[0]],
      [_feats([0.7]), _feats([0.7])])
  res = ps.eval_search_cuhk(gallery, _queries([["a", "b"]], [1]), [50])[50]
  assert res.ap[0] == pytest.approx(0.5)
  np.testing.assert_array_equal(res.hits[0], [0, 1, 1])


def test_prw_hand_built():
  #        frame, cam, GT boxes, pids, detections (boxes, similarities)
  frames = [("f0", 1, [TARGET], [5], _dets([TARGET], [0.99])),  # query's
            ("f1", 1, [TARGET], [5], _dets([TARGET], [0.8])),
            ("f2", 2, [TARGET, OTHER], [5, -1],
             _dets([TARGET, OTHER], [0.6, 0.9])),
            ("f3", 2, [OTHER], [7], _dets([OTHER], [0.7])),
            ("f4", 3, [TARGET], [5], _dets(np.zeros((0, 4)), [])),
            ("f5", 3, [], [], _dets(np.zeros((0, 4)), []))]
  gallery = Gallery([f[0] for f in frames],
                    [np.asarray(f[2], np.float64) for f in frames],
                    [np.asarray(f[3]) for f in frames],
                    [f[4][0] for f in frames], [f[4][1] for f in frames],
                    cameras=np.array([f[1] for f in frames]))
  queries = Queries(feats=np.array([Q_FEAT, Q_FEAT]),
                    image_ids=["f0", "f3"], pids=np.array([5, 6]),
                    cameras=np.array([1, 2]))
  # All frames but f0: count_gt 3 (f1, f2, f4); ranked 0.9 N, 0.8 P, 0.7 N,
  # 0.6 P: AP = 1/2 * 1/2 + 1/2 * 2/4 = 1/2; x 2/3.
  res = ps.eval_search_prw(gallery, queries)
  np.testing.assert_allclose(res.ap, [1 / 3, 0.0])
  np.testing.assert_array_equal(res.count_gt, [3, 0])
  np.testing.assert_array_equal(res.hits, [[0, 1, 1], [0, 0, 0]])
  # Other cameras only: f2, f3, f4; count_gt 2; 0.9 N, 0.7 N, 0.6 P:
  # AP 1/3; x 1/2.
  res = ps.eval_search_prw(gallery, queries, multi_view=True)
  np.testing.assert_allclose(res.ap, [1 / 6, 0.0])
  np.testing.assert_array_equal(res.count_gt, [2, 0])
  np.testing.assert_array_equal(res.count_tp, [1, 0])


# ----------------------------------------------------------------------------
# Slow transcription of the reference loops.


def _iou(a, b):
  x1, y1 = max(a[0], b[0]), max(a[1], b[1])
  x2, y2 = min(a[2], b[2]), min(a[3], b[3])
  inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def _kept(gallery, det_thresh):
  kept = {}
  for name, det, feat in zip(gallery.image_ids, gallery.dets, gallery.feats):
    det = np.asarray(det).reshape(-1, 5)
    inds = np.flatnonzero(det[:, 4] >= det_thresh)
    if len(inds):
      kept[name] = (det[inds], np.asarray(feat)[inds])
  return kept


def _target_boxes(gallery, pid, integer):
  out = {}
  for name, boxes, pids in zip(gallery.image_ids, gallery.gt_boxes,
                               gallery.gt_pids):
    for box, p in zip(np.reshape(boxes, (-1, 4)), np.reshape(pids, -1)):
      if p == pid:
        out[name] = np.trunc(box + 1e-3) if integer else np.asarray(box)
        break
  return out


def _label(det, sim, gt):
  """Labels of one image's detections: only the first match (by sim) is 1."""
  label = np.zeros(len(sim), np.int64)
  if gt is None:
    return label
  w, h = gt[2] - gt[0], gt[3] - gt[1]
  thresh = min(0.5, w * h / ((w + 10) * (h + 10)))
  for j in np.argsort(-sim, kind="stable"):
    if _iou(det[j, :4], gt) >= thresh:
      label[j] = 1
      break
  return label


def _finish(y_true, y_score, keys, count_tp, count_gt):
  """Reference AP x recall; top-k with the documented tie rule."""
  if count_tp == 0 or count_gt == 0:
    return 0.0, [False] * len(TOP_K)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ap = average_precision_score(y_true, y_score) * count_tp / count_gt
  tp_keys = {k for k, t in zip(keys, y_true) if t}
  tie = [1 if t else (2 if k in tp_keys else 0) for k, t in zip(keys, y_true)]
  order = sorted(range(len(y_true)), key=lambda i: (-y_score[i], tie[i]))
  return ap, [any(y_true[i] for i in order[:k]) for k in TOP_K]


def _slow_cuhk(gallery, queries, size, det_thresh, duplicates, full_set,
               integer=True):
  kept = _kept(gallery, det_thresh)
  names = list(gallery.image_ids)
  aps, hits = [], []
  for q in range(len(queries.pids)):
    feat_q = queries.feats[q]
    targets = _target_boxes(gallery, queries.pids[q], integer)
    entries = [names[i] for i in queries.galleries[50 if size < 0 else size][q]]
    if duplicates == "unique":
      entries = list(dict.fromkeys(entries))
    y_true, y_score, keys = [], [], []
    count_gt = count_tp = 0
    ranked = []
    for name in entries:
      count_gt += name in targets
      if name not in kept:
        continue
      if duplicates != "repeat" and name in ranked:
        continue
      ranked.append(name)
    if size == FULL_SET:
      skip = {queries.image_ids[q]}
      if full_set == "psdb":
        skip |= set(entries)
      for name in names:
        if name in skip or name not in kept:
          continue
        sim = kept[name][1] @ feat_q
        y_true += [0] * len(sim)
        y_score += list(sim)
        keys += [(name, j) for j in range(len(sim))]
    for name in ranked:
      det, feat = kept[name]
      sim = feat @ feat_q
      label = _label(det, sim, targets.get(name))
      count_tp += int(label.sum())
      y_true += list(label)
      y_score += list(sim)
      keys += [(name, j) for j in range(len(sim))]
    ap, hit = _finish(y_true, y_score, keys, count_tp, count_gt)
    aps.append(ap)
    hits.append(hit)
  return np.array(aps), np.array(hits)


def _slow_prw(gallery, queries, det_thresh, multi_view, integer=True):
  kept = _kept(gallery, det_thresh)
  cam_of = dict(zip(gallery.image_ids, gallery.cameras))
  aps, hits = [], []
  for q in range(len(queries.pids)):
    feat_q, qname = queries.feats[q], queries.image_ids[q]
    targets = _target_boxes(gallery, queries.pids[q], integer)
    targets.pop(qname, None)
    frames = [n for n in gallery.image_ids if n != qname and (
        not multi_view or cam_of[n] != queries.cameras[q])]
    y_true, y_score, keys = [], [], []
    count_gt = count_tp = 0
    for name in frames:
      count_gt += name in targets
      if name not in kept:
        continue
      det, feat = kept[name]
      sim = feat @ feat_q
      label = _label(det, sim, targets.get(name))
      count_tp += int(label.sum())
      y_true += list(label)
      y_score += list(sim)
      keys += [(name, j) for j in range(len(sim))]
    ap, hit = _finish(y_true, y_score, keys, count_tp, count_gt)
    aps.append(ap)
    hits.append(hit)
  return np.array(aps), np.array(hits)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_case(seed, num_img=40, num_pids=12, dim=8):
  """A random gallery and queries with CUHK lists of two sizes (5 and 50)."""
  rng = np.random.default_rng(seed)
  names = [f"s{seed}_{i:03d}.jpg" for i in range(num_img)]
  gt_boxes, gt_pids, dets, feats = [], [], [], []
  for _ in range(num_img):
    m = int(rng.integers(0, 5))
    xy = rng.uniform(0, 200, (m, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 80, (m, 2))], 1)
    # Fractional coordinates exercise the integer truncation.
    boxes = np.round(boxes, 1)
    pids = rng.integers(-1, num_pids, m)
    det = [b + rng.normal(0, rng.choice([0.5, 2, 10]), 4)
           for b in boxes for _ in range(int(rng.choice([0, 1, 1, 2])))]
    xy = rng.uniform(0, 200, (int(rng.integers(0, 4)), 2))
    det += list(np.concatenate([xy, xy + rng.uniform(3, 80, xy.shape)], 1))
    det = np.reshape(det, (-1, 4))
    scores = rng.uniform(0, 1, (len(det), 1))
    gt_boxes.append(boxes)
    gt_pids.append(pids)
    dets.append(np.concatenate([det, scores], 1))
    feats.append(_unit(rng.normal(size=(len(det), dim))))
  gallery = Gallery(names, gt_boxes, gt_pids, dets, feats,
                    cameras=rng.integers(0, 3, num_img))
  # Queries: labeled persons, plus one pid absent from the gallery and one
  # query image that is not a gallery image.
  occurrences = [(i, p) for i, ps_ in enumerate(gt_pids) for p in ps_
                 if p >= 0]
  picks = [occurrences[k] for k in
           rng.choice(len(occurrences), min(8, len(occurrences)), False)]
  picks += [(int(rng.integers(num_img)), 99), (-1, picks[0][1])]
  q_feats, q_ids, q_pids, q_cams = [], [], [], []
  lists = {5: [], 50: []}
  for img, pid in picks:
    q_ids.append(names[img] if img >= 0 else "elsewhere.jpg")
    q_pids.append(pid)
    q_cams.append(int(gallery.cameras[img]) if img >= 0 else 0)
    others = [i for i in range(num_img) if i != img]
    targets = [i for i in others if pid in gt_pids[i]]
    # Most queries resemble a detection in one of their target images, so
    # true matches reach the top ranks too.
    base = rng.normal(size=dim)
    pool = [feats[i] for i in targets if len(feats[i])]
    if pool and rng.random() < 0.7:
      pool = np.concatenate(pool)
      base = pool[rng.integers(len(pool))] * 6 + rng.normal(size=dim)
    q_feats.append(_unit(base))
    for size, extra in ((5, 3), (50, 20)):
      lst = targets + list(rng.choice(others, extra, replace=False))
      if targets and rng.random() < 0.3:
        lst.remove(targets[0])                 # a target missing from it
      lst += list(rng.choice(lst, int(rng.integers(0, 3))))  # duplicates
      lists[size].append(np.asarray(rng.permutation(lst), np.int64))
  queries = Queries(np.asarray(q_feats), q_ids, np.asarray(q_pids),
                    cameras=np.asarray(q_cams), galleries=lists)
  return gallery, queries


@pytest.fixture(params=["gather", "matmul"])
def path(request, monkeypatch):
  # Force each way of computing similarities; small chunks cross borders.
  monkeypatch.setattr(ps, "_GATHER_FRACTION",
                      2.0 if request.param == "gather" else 0.0)
  monkeypatch.setattr(ps, "_QUERY_CHUNK", 3)
  return request.param


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("duplicates", ["seqnet", "repeat", "unique"])
def test_cuhk_equals_slow_reference(seed, duplicates, path):
  del path
  gallery, queries = _random_case(seed)
  det_thresh = [0.5, 0.2][seed % 2]
  got = ps.eval_search_cuhk(gallery, queries, [5, 50], det_thresh=det_thresh,
                            duplicates=duplicates)
  for size in (5, 50):
    aps, hits = _slow_cuhk(gallery, queries, size, det_thresh, duplicates,
                           "seqnet")
    np.testing.assert_allclose(got[size].ap, aps, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got[size].hits, hits)
    assert got[size].mAP == pytest.approx(aps.mean())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("full_set", ["seqnet", "psdb"])
@pytest.mark.parametrize("duplicates", ["seqnet", "repeat"])
def test_cuhk_full_set_equals_slow_reference(seed, full_set, duplicates):
  gallery, queries = _random_case(seed + 10)
  got = ps.eval_search_cuhk(gallery, queries, [FULL_SET], full_set=full_set,
                            duplicates=duplicates)[FULL_SET]
  aps, hits = _slow_cuhk(gallery, queries, FULL_SET, 0.5, duplicates,
                         full_set)
  np.testing.assert_allclose(got.ap, aps, rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(got.hits, hits)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("multi_view", [False, True])
def test_prw_equals_slow_reference(seed, multi_view, monkeypatch):
  monkeypatch.setattr(ps, "_QUERY_CHUNK", 4)
  gallery, queries = _random_case(seed + 20)
  got = ps.eval_search_prw(gallery, queries, det_thresh=0.3,
                           multi_view=multi_view)
  aps, hits = _slow_prw(gallery, queries, 0.3, multi_view)
  np.testing.assert_allclose(got.ap, aps, rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(got.hits, hits)


def test_integer_gt_boxes_option():
  gallery, queries = _random_case(3)
  got = ps.eval_search_prw(gallery, queries, integer_gt_boxes=False)
  aps, _ = _slow_prw(gallery, queries, 0.5, False, integer=False)
  np.testing.assert_allclose(got.ap, aps, rtol=1e-9, atol=1e-12)


def test_float32_embeddings_match_float64():
  gallery, queries = _random_case(5)
  g32 = Gallery(gallery.image_ids, gallery.gt_boxes, gallery.gt_pids,
                gallery.dets, [f.astype(np.float32) for f in gallery.feats])
  q32 = Queries(queries.feats.astype(np.float32), queries.image_ids,
                queries.pids, galleries=queries.galleries)
  a = ps.eval_search_cuhk(gallery, queries, [50])[50]
  b = ps.eval_search_cuhk(g32, q32, [50])[50]
  np.testing.assert_allclose(a.ap, b.ap, atol=1e-6)


def test_string_ids_and_bytes():
  gallery = _hand_gallery()
  by_name = _queries([[b"g3", "g2"]], [1])
  by_index = _queries([np.array([3, 2])], [1])
  a = ps.eval_search_cuhk(gallery, by_name, [50])[50]
  b = ps.eval_search_cuhk(gallery, by_index, [50])[50]
  np.testing.assert_array_equal(a.ap, b.ap)
  assert a.ap[0] == 0.5


def test_empty_gallery_detections():
  gallery = Gallery(["a", "b"], [np.asarray([TARGET]), np.zeros((0, 4))],
                    [np.array([1]), np.zeros(0, int)],
                    [np.zeros((0, 5)), []], [np.zeros((0, 2)), []])
  res = ps.eval_search_cuhk(gallery, _queries([["a", "b"]], [1]),
                            [50, FULL_SET])
  for r in res.values():
    np.testing.assert_array_equal(r.count_gt, [1])
    assert r.mAP == 0.0 and not r.hits.any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(gallery_sizes=[100]), r"galleries\[100\]"),
    (dict(duplicates="twice"), "duplicates"),
    (dict(full_set="all"), "full_set"),
])
def test_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ps.eval_search_cuhk(_hand_gallery(), _queries([["g0"]], [1]), **kwargs)


def test_bad_inputs():
  g = _hand_gallery()
  with pytest.raises(ValueError, match="gt_pids has 1 entries"):
    Gallery(["a", "b"], [np.zeros((0, 4))] * 2, [np.zeros(0)], [[]] * 2)
  with pytest.raises(ValueError, match="unique"):
    Gallery(["a", "a"], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [[]] * 2)
  with pytest.raises(ValueError, match="not in the gallery"):
    ps.eval_search_cuhk(g, _queries([["nope"]], [1]), [50])
  with pytest.raises(ValueError, match="out of range"):
    ps.eval_search_cuhk(g, _queries([np.array([9])], [1]), [50])
  with pytest.raises(ValueError, match=r"\[n, 5\]"):
    bad = Gallery(["a"], [np.zeros((0, 4))], [np.zeros(0)],
                  [np.zeros((2, 4))], [np.zeros((2, 2))])
    ps.eval_search_prw(bad, _queries([[]], [1]))
  with pytest.raises(ValueError, match="D=3"):
    q = Queries(np.ones((1, 3)), ["x"], np.array([1]))
    ps.eval_search_prw(g, q)
  with pytest.raises(ValueError, match="cameras"):
    ps.eval_search_prw(g, _queries([[]], [1]), multi_view=True)
  with pytest.raises(ValueError, match=">= 0"):
    Queries(np.ones((1, 2)), ["x"], np.array([-1]))


def test_sizes_in_one_call_equal_separate_calls(path):
  del path
  gallery, queries = _random_case(7)
  together = ps.eval_search_cuhk(gallery, queries, [5, FULL_SET, 50])
  for size in (5, 50, FULL_SET):
    alone = ps.eval_search_cuhk(gallery, queries, [size])[size]
    np.testing.assert_allclose(together[size].ap, alone.ap, rtol=1e-12)
    np.testing.assert_array_equal(together[size].hits, alone.hits)
