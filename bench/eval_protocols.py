"""Times the host-side evaluation protocols at full dataset size.

Synthetic galleries with the sizes of the real test sets and random values:

  CUHK-SYSU: 6,978 gallery images, ~20 detections each, 2,900 queries (one
    per test identity, each in 1-5 gallery images), D=256 embeddings,
    gallery sizes 100, 4,000 and the full set, then all seven sizes at once.
  PRW: 6,112 frames from 6 cameras, ~20 detections each, 450 identities,
    2,057 queries, both gallery variants.
  CBGM (SeqNet's defaults) on CUHK-SYSU gallery 100 and PRW, each query
    with two (three on PRW) random context people.
  Detection recall/AP over the CUHK-SYSU gallery; Market-1501 CMC/mAP at its
    size (3,368 queries x 15,913 gallery crops, D=256).

Every detection scores >= 0.5, so all ~20 per image take part in the search.
Random embeddings put the true matches at random ranks: the worst case for
the counting used by the protocols (a trained model ranks them near the top).

First, the three search cases of the speed goal (CUHK-SYSU gallery 100 and
4,000, PRW) against the reference-style per-query loop
(`bench/eval_reference.py`, SeqNet's `eval_search_*`): the loop runs on
`--ref-queries` random queries (seed 1) and its per-query time is
extrapolated linearly to all queries (plus its one-off preparation); the
table gives both times, their ratio, and the largest AP difference and the
top-k disagreements between the two on those queries.

BLAS runs on one thread (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and
MKL_NUM_THREADS are set to 1 before NumPy loads), so the ratios compare one
core against one core.

  python bench/eval_protocols.py            # full size
  python bench/eval_protocols.py --scale 0.1
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ[_var] = "1"

# pylint: disable=wrong-import-position
import argparse
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_reference  # noqa: E402

from ps_jax.eval import cbgm
from ps_jax.eval import detection
from ps_jax.eval import person_search as ps
from ps_jax.eval import reid


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _gallery(rng, num_img, num_ids, dets_per_img, dim, unlabeled_per_img,
             occurrences, num_cams=1):
  """Random scenes: identity boxes, unlabeled boxes, ~dets_per_img dets."""
  where = [[] for _ in range(num_img)]  # image -> pids
  for pid in range(num_ids):
    for img in rng.choice(num_img, occurrences(rng), replace=False):
      where[img].append(pid)
  gt_boxes, gt_pids, dets, feats = [], [], [], []
  for img in range(num_img):
    pids = where[img] + [-1] * int(rng.poisson(unlabeled_per_img))
    m = len(pids)
    xy = rng.uniform(0, 1500, (m, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(15, 300, (m, 2))],
                                    1))
    n = max(int(rng.poisson(dets_per_img)), m)
    det = np.empty((n, 5), np.float32)
    det[:m, :4] = boxes + rng.normal(0, 4, (m, 4))  # one det per person
    xy = rng.uniform(0, 1500, (n - m, 2))
    det[m:, :4] = np.concatenate([xy, xy + rng.uniform(15, 300, (n - m, 2))],
                                 1)
    det[:, 4] = rng.uniform(0.5, 1, n)  # all pass det_thresh 0.5
    gt_boxes.append(boxes)
    gt_pids.append(np.asarray(pids, np.int64))
    dets.append(det)
    feats.append(_unit(rng.normal(size=(n, dim))))
  names = [f"img{i:05d}.jpg" for i in range(num_img)]
  cams = rng.integers(0, num_cams, num_img)
  return ps.Gallery(names, gt_boxes, gt_pids, dets, feats, cameras=cams), where


def _cuhk(rng, scale, dim):
  num_img, num_q = int(6978 * scale), int(2900 * scale)
  gallery, where = _gallery(rng, num_img, num_q, 20, dim, 3.0,
                            lambda r: int(r.integers(2, 6)))
  images_of = [[] for _ in range(num_q)]
  for img, pids in enumerate(where):
    for p in pids:
      images_of[p].append(img)
  sizes = [s for s in (50, 100, 500, 1000, 2000, 4000) if s < num_img]
  lists = {s: [] for s in sizes}
  q_img = []
  for pid in range(num_q):
    query, targets = images_of[pid][0], images_of[pid][1:]
    q_img.append(query)
    others = rng.permutation(num_img)
    others = others[~np.isin(others, images_of[pid])]
    for s in sizes:
      lists[s].append(np.concatenate([targets, others[:s - len(targets)]]))
  queries = ps.Queries(_unit(rng.normal(size=(num_q, dim))),
                       [gallery.image_ids[i] for i in q_img],
                       np.arange(num_q), galleries=lists)
  return gallery, queries, sizes


def _prw(rng, scale, dim):
  num_img, num_ids, num_q = int(6112 * scale), int(450 * scale), int(
      2057 * scale)
  gallery, where = _gallery(rng, num_img, num_ids, 20, dim, 2.0,
                            lambda r: int(r.integers(20, 60)), num_cams=6)
  occurrences = [(img, p) for img, pids in enumerate(where) for p in pids]
  picks = [occurrences[i] for i in rng.choice(len(occurrences), num_q, False)]
  queries = ps.Queries(_unit(rng.normal(size=(num_q, dim))),
                       [gallery.image_ids[i] for i, _ in picks],
                       np.array([p for _, p in picks]),
                       cameras=gallery.cameras[[i for i, _ in picks]])
  return gallery, queries


def _timed(fn):
  """fn() and its (wall, CPU) seconds; CPU counts all BLAS threads."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, (time.perf_counter() - wall, time.process_time() - cpu)


def _cpu() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=True).stdout
    model = [l.split(":", 1)[1].strip() for l in out.splitlines()
             if l.startswith("Model name")]
    cpus = [l.split(":", 1)[1].strip() for l in out.splitlines()
            if l.startswith("CPU(s)")]
    return f"{model[0] if model else platform.processor()}, {cpus[0]} CPUs"
  except (OSError, subprocess.CalledProcessError):
    return platform.processor()


def _versus_reference(name, num_q, ref_queries, reference, fast,
                      repeats=3):
  """One row of the comparison with the reference loop.

  Args:
    name: the case.
    num_q: queries of the case.
    ref_queries: how many random queries the reference loop runs on.
    reference: (prepare() -> state, loop(state, query_ids) -> (ap, hits)).
    fast: () -> SearchResult of all queries.
    repeats: calls of `fast`; the fastest counts.

  Returns:
    the row: name, queries, reference (prep + extrapolated loop) and ps_jax
    (wall, CPU) seconds, max |AP difference|, top-k disagreements, queries
    the reference ran on.
  """
  ids = np.sort(np.random.default_rng(1).choice(
      num_q, min(ref_queries, num_q), replace=False))
  state, t_prep = _timed(reference[0])
  (ref_ap, ref_hits), t_loop = _timed(lambda: reference[1](state, ids))
  t_ref = tuple(p + l * num_q / len(ids) for p, l in zip(t_prep, t_loop))
  # ps_jax: the fastest of `repeats` calls (the first pays one-off costs
  # such as BLAS start-up and first-touch page faults of its arrays).
  timed = [_timed(fast) for _ in range(repeats)]
  res, t_fast = timed[0][0], min((t for _, t in timed), key=lambda t: t[1])
  diff = float(np.abs(res.ap[ids] - ref_ap).max()) if len(ids) else 0.0
  return (name, num_q, t_ref, t_fast, diff,
          int((res.hits[ids] != ref_hits).sum()), len(ids))


def _print_versus(rows):
  print("\nps_jax against the reference-style loop (reference: one-off "
        "preparation + per-query loop timed on the listed number of random "
        "queries, extrapolated linearly to all; ps_jax: fastest of 3 calls, "
        "all queries; one BLAS thread):\n")
  print("| case | queries | reference s (CPU) | ps_jax s (CPU) | ps_jax s "
        "(wall) | ratio (CPU) | ratio (wall) | max AP diff | top-k "
        "differ | reference on |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, n, ref, fast, diff, differ, on in rows:
    print(f"| {name} | {n:,} | {ref[1]:.1f} | {fast[1]:.2f} | "
          f"{fast[0]:.2f} | {ref[1] / fast[1]:.0f}x | "
          f"{ref[0] / fast[0]:.0f}x | {diff:.1e} | {differ} | {on} |")


def _prw_versus(gallery, queries, ref_queries):
  return _versus_reference(
      "PRW, every frame but the query's", len(queries.pids), ref_queries,
      (lambda: eval_reference.prepare(gallery),
       lambda state, ids: eval_reference.eval_search_prw(state, queries,
                                                         ids)),
      lambda: ps.eval_search_prw(gallery, queries))


def _load() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "unknown"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", type=float, default=1.0,
                      help="fraction of the real set sizes")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ref-queries", type=int, default=200,
                      help="queries the reference loop runs on")
  parser.add_argument("--only-reference", action="store_true",
                      help="only the comparison with the reference loop")
  args = parser.parse_args()
  load_start = _load()
  rng = np.random.default_rng(args.seed)
  rows = []

  (gallery, queries, sizes), t = _timed(lambda: _cuhk(rng, args.scale,
                                                      args.dim))
  num_dets = sum(len(d) for d in gallery.dets)
  print(f"CUHK-SYSU synthetic: {len(gallery.image_ids)} images, {num_dets} "
        f"detections, {len(queries.pids)} queries (built in {t[0]:.1f} s)")
  versus = []
  for size in [s for s in sizes if s in (100, 4000)]:
    versus.append(_versus_reference(
        f"CUHK-SYSU gallery {size}", len(queries.pids), args.ref_queries,
        (lambda: eval_reference.prepare(gallery),
         lambda state, ids, s=size: eval_reference.eval_search_cuhk(
             state, queries, s, ids)),
        lambda s=size: ps.eval_search_cuhk(gallery, queries, [s])[s]))
  if args.only_reference:
    gallery, queries = _prw(rng, args.scale, args.dim)
    versus.append(_prw_versus(gallery, queries, args.ref_queries))
    print(f"\nCPU: {_cpu()}; numpy {np.__version__}; D={args.dim}; "
          f"scale {args.scale}; load average (1, 5, 15 min) at the start "
          f"{load_start}, at the end {_load()}")
    _print_versus(versus)
    return
  for size in [s for s in sizes if s in (100, 4000)] + [ps.FULL_SET]:
    res, t = _timed(lambda s=size: ps.eval_search_cuhk(
        gallery, queries, [s])[s])
    name = "full" if size == ps.FULL_SET else str(size)
    rows.append((f"CUHK-SYSU search, gallery {name}", len(queries.pids), t,
                 f"mAP {res.mAP:.4f} top-1 {res.top_k[1]:.4f}"))
  all_sizes = sizes + [ps.FULL_SET]
  res, t = _timed(lambda: ps.eval_search_cuhk(gallery, queries, all_sizes))
  rows.append(("CUHK-SYSU search, all 7 sizes in one call",
               len(queries.pids), t,
               f"mAP@100 {res[100].mAP:.4f}" if 100 in res else ""))
  context = cbgm.Context(
      [np.concatenate([queries.feats[i:i + 1],
                       _unit(rng.normal(size=(2, args.dim)))])
       for i in range(len(queries.pids))], *cbgm.DEFAULTS["cuhk"])
  res, t = _timed(lambda: ps.eval_search_cuhk(gallery, queries, [100],
                                              cbgm=context)[100])
  rows.append(("CUHK-SYSU search, gallery 100, CBGM (10, 3)",
               len(queries.pids), t,
               f"mAP {res.mAP:.4f} top-1 {res.top_k[1]:.4f}"))
  res, t = _timed(lambda: detection.eval_detection(
      gallery.dets, gallery.gt_boxes, gallery.gt_pids, det_thresh=0.01))
  rows.append(("CUHK-SYSU detection (det_thresh 0.01)",
               len(gallery.image_ids), t,
               f"recall {res.recall:.4f} AP {res.ap:.4f}"))

  (gallery, queries), t = _timed(lambda: _prw(rng, args.scale, args.dim))
  num_dets = sum(len(d) for d in gallery.dets)
  print(f"PRW synthetic: {len(gallery.image_ids)} frames, {num_dets} "
        f"detections, {len(queries.pids)} queries (built in {t[0]:.1f} s)")
  versus.append(_prw_versus(gallery, queries, args.ref_queries))
  for multi_view in (False, True):
    res, t = _timed(lambda m=multi_view: ps.eval_search_prw(
        gallery, queries, multi_view=m))
    rows.append((f"PRW search, {'multi-view' if multi_view else 'all'}",
                 len(queries.pids), t,
                 f"mAP {res.mAP:.4f} top-1 {res.top_k[1]:.4f} "
                 f"(mean count_gt {res.count_gt.mean():.1f})"))

  context = cbgm.Context(
      [np.concatenate([queries.feats[i:i + 1],
                       _unit(rng.normal(size=(3, args.dim)))])
       for i in range(len(queries.pids))], *cbgm.DEFAULTS["prw"])
  res, t = _timed(lambda: ps.eval_search_prw(gallery, queries, cbgm=context))
  rows.append(("PRW search, all, CBGM (30, 4)", len(queries.pids), t,
               f"mAP {res.mAP:.4f} top-1 {res.top_k[1]:.4f}"))

  num_q, num_g = int(3368 * args.scale), int(15913 * args.scale)
  q_pids = rng.integers(1, 751, num_q)
  g_pids = np.concatenate([rng.integers(-1, 751, num_g - num_q), q_pids])
  args_reid = (_unit(rng.normal(size=(num_q, args.dim))), q_pids,
               rng.integers(0, 6, num_q),
               _unit(rng.normal(size=(num_g, args.dim))), g_pids,
               rng.integers(0, 6, num_g))
  res, t = _timed(lambda: reid.eval_reid_market(*args_reid))
  rows.append(("Market-1501 re-ID", num_q, t,
               f"mAP {res.mAP:.4f} rank-1 {res.cmc[1]:.4f}"))

  print(f"\nCPU: {_cpu()}; numpy {np.__version__}; D={args.dim}; "
        f"scale {args.scale}; load average (1, 5, 15 min) at the start "
          f"{load_start}, at the end {_load()}")
  _print_versus(versus)
  print()
  print(f"| {'protocol':<42} | {'queries/images':>14} | wall s | CPU s | "
        "result (random values) |")
  print(f"|{'-' * 44}|{'-' * 16}|{'-' * 8}|{'-' * 7}|{'-' * 24}|")
  for name, n, (wall, cpu), note in rows:
    print(f"| {name:<42} | {n:>14,} | {wall:>6.2f} | {cpu:>5.2f} | {note} |")


if __name__ == "__main__":
  main()
