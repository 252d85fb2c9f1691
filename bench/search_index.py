"""Archive-scale search: exact brute force against the FAISS index.

  python bench/search_index.py                             # 10^5, quick
  python bench/search_index.py --sizes=1e5,1e6 --nprobes=auto,16,32,64
  nice -n 10 python bench/search_index.py --sizes=1e7 --json=out.json

Synthetic 256-d embeddings shaped like re-ID features: identities whose
detection counts are geometric (mean 40, so hours of footage: some people
seen once, some hundreds of times), each identity a centre on the sphere
(a shared mean direction, a 16-d low-rank "appearance" part and an
isotropic part), each detection its centre plus isotropic noise and a
16-d "pose/lighting" nuisance, L2-normalized. Same-identity cosines are
about 0.74 on average, other identities 0.33 (99th percentile 0.51), like
the trained model's 0.83 and 0.54 (README). Rows come in blocks of 65,536
generated from (seed, block), so the data are the same whatever the size,
and 10^7 x 256 is written block by block into a memory-mapped .npy, never
held in memory. Queries are new detections of the identities of random rows.

Per size N:
  exact       numpy brute force, one query at a time, over the memory-mapped
              float32 array in chunks of 2^18 rows (bounded memory): the
              whole N x D x 4 bytes is read per query (from the page cache
              when it fits). `exact (ps-search)` is
              `query.rank_detections` as ps-search runs it (it also sorts
              all N scores).
  ann         `ps_jax.search.ann.AnnIndex` (IVF + SQ8, inner product) built
              from the memory map, saved, then loaded in a fresh process
              that answers the queries one at a time with
              `AnnIndex.rank_detections` (FAISS candidates re-ranked with the
              exact cosines of the memory-mapped embeddings), as ps-search
              does.
Reported: build seconds (k-means training + adding), the FAISS file's size,
the query process's anonymous memory after loading the index (its RssAnon
delta: the index in RAM; the memory-mapped arrays are file pages), its peak
RSS before the exact queries, query latency (median and 95th percentile),
and recall@10 against exact search (mean over the queries of |hits of both|
/ 10). The data stay in --workdir for the next run (10^7: 10 GB on disk).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from ps_jax.search import ann as ann_lib
from ps_jax.search import query as query_lib

_SIZES = flags.DEFINE_list(
    "sizes", ["1e5"], "Gallery sizes N (detections), e.g. 1e5,1e6,1e7.")
_QUERIES = flags.DEFINE_integer("queries", 100, "Queries per size.")
_EXACT_QUERIES = flags.DEFINE_integer(
    "exact_queries", 0, "Queries timed for exact search (0: all of "
    "--queries up to N = 10^6, 10 above: each reads N x 1 KB).")
_NPROBES = flags.DEFINE_list(
    "nprobes", ["auto"], "Lists scanned per query to measure ('auto': "
    "ps_jax.search.ann.auto_nprobe).")
_NLIST = flags.DEFINE_integer("nlist", 0, "Inverted lists (0: auto_nlist).")
_QUANTIZER = flags.DEFINE_enum("quantizer", "auto", ["auto", "flat", "hnsw"],
                               "Coarse quantizer of the IVF index.")
_ENCODING = flags.DEFINE_enum("encoding", "SQ8", ["SQ8", "Flat"],
                              "Vector encoding of the IVF index.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "FAISS (OpenMP) and BLAS threads for building and "
    "querying (0: the libraries' default, all cores).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic data.")
_WORKDIR = flags.DEFINE_string(
    "workdir", "/tmp/ps_jax_search_bench", "Where data and indexes go.")
_JSON = flags.DEFINE_string("json", None, "Also write the results there.")
_VARIANTS = flags.DEFINE_list(
    "variants", ["cws", "det0.5"], "Query options also measured at the "
    "first --nprobes value, each against its own exact top 10: cws "
    "(--cws), det<T> (--det-threshold T), cws+det<T>.")
_REUSE = flags.DEFINE_bool(
    "reuse_index", False, "Reuse the FAISS index a previous run saved for "
    "the same data and options (its build times are reported again).")
_MEASURE = flags.DEFINE_string(
    "measure", None, "Internal: run the query phase of this spec (JSON) in "
    "this process and print its result.")

D = 256
BLOCK = 1 << 16
RANK = 16
MEAN_IDENTITY_SIZE = 40
# Weights of the centre's parts and the detection noise (module doc).
MEAN_W, APPEARANCE_W, ISO_W, NOISE_W, NUISANCE_W = 0.7, 0.6, 0.5, 0.5, 0.3
TOP_K = 10
CHUNK = 1 << 18
_RESULT = "RESULT "


def _globals(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean direction f32[D], appearance and nuisance bases f32[D, RANK]."""
  rng = np.random.default_rng([seed, 0xFFFF_FFFF])
  mean = rng.standard_normal(D).astype(np.float32)
  mean /= np.linalg.norm(mean)
  scale = np.float32(1 / math.sqrt(D * RANK))
  appearance = rng.standard_normal((D, RANK)).astype(np.float32) * scale
  nuisance = rng.standard_normal((D, RANK)).astype(np.float32) * scale
  return mean, appearance, nuisance


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _detections(rng: np.random.Generator, centres: np.ndarray,
                nuisance: np.ndarray) -> np.ndarray:
  """f32[n, D] noisy L2-normalized detections of identity centres [n, D]."""
  n = centres.shape[0]
  noise = rng.standard_normal((n, D), dtype=np.float32)
  noise *= np.float32(NOISE_W / math.sqrt(D))
  pose = rng.standard_normal((n, RANK), dtype=np.float32) @ nuisance.T
  return _normalize(centres + noise + NUISANCE_W * pose).astype(np.float32)


def block(seed: int, b: int, glob=None) -> tuple[np.ndarray, ...]:
  """Block b: embeddings f32[BLOCK, D], identity centres, identity per row."""
  mean, appearance, nuisance = glob or _globals(seed)
  rng = np.random.default_rng([seed, b])
  sizes = rng.geometric(1 / MEAN_IDENTITY_SIZE,
                        size=3 * BLOCK // MEAN_IDENTITY_SIZE)
  n_ids = int(np.searchsorted(np.cumsum(sizes), BLOCK)) + 1
  ident = np.repeat(np.arange(n_ids), sizes[:n_ids])[:BLOCK]
  rng.shuffle(ident)  # a frame shows several people
  z = rng.standard_normal((n_ids, RANK), dtype=np.float32)
  iso = rng.standard_normal((n_ids, D), dtype=np.float32) / np.sqrt(D)
  centres = _normalize(MEAN_W * mean + APPEARANCE_W * z @ appearance.T
                       + ISO_W * iso).astype(np.float32)
  return _detections(rng, centres[ident], nuisance), centres, ident


def ensure_data(n: int, seed: int, queries: int) -> dict[str, Any]:
  """Writes (or reuses) the synthetic gallery of size n; returns paths."""
  d = pathlib.Path(_WORKDIR.value) / f"synthetic_n{n}_seed{seed}"
  spec = {"n": n, "dim": D, "seed": seed, "queries": queries,
          "weights": [MEAN_W, APPEARANCE_W, ISO_W, NOISE_W, NUISANCE_W],
          "mean_identity_size": MEAN_IDENTITY_SIZE, "block": BLOCK}
  done = d / "data.json"
  paths = {k: str(d / f"{k}.npy") for k in
           ("embeddings", "scores", "image_of_det", "queries")}
  if done.is_file() and json.loads(done.read_text()) == spec:
    return {**paths, "generate_seconds": None, "dir": str(d)}
  d.mkdir(parents=True, exist_ok=True)
  done.unlink(missing_ok=True)
  for old in d.glob("gt_*.npy"):  # exact top-10 of other data
    old.unlink()
  t0 = time.perf_counter()
  glob = _globals(seed)
  qrng = np.random.default_rng([seed, 1])
  qrows = np.sort(qrng.choice(n, queries, replace=False))
  qs = np.zeros((queries, D), np.float32)
  emb = np.lib.format.open_memmap(paths["embeddings"], "w+", np.float32,
                                  (n, D))
  for b in range(math.ceil(n / BLOCK)):
    x, centres, ident = block(seed, b, glob)
    lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
    emb[lo:hi] = x[:hi - lo]
    mine = (qrows >= lo) & (qrows < hi)
    if mine.any():
      qs[mine] = _detections(qrng, centres[ident[qrows[mine] - lo]],
                             glob[2])
  emb.flush()
  del emb
  srng = np.random.default_rng([seed, 2])
  # Detector scores of kept detections (the README's 0.2-0.5 mostly).
  np.save(paths["scores"], srng.beta(2, 3, n).astype(np.float32))
  np.save(paths["image_of_det"],
          (np.arange(n) // 8).astype(np.int32))  # 8 people a frame
  np.save(paths["queries"], qs)
  done.write_text(json.dumps(spec))
  return {**paths, "generate_seconds": round(time.perf_counter() - t0, 1),
          "dir": str(d)}


def exact_topk(emb: np.ndarray, queries: np.ndarray, k: int = TOP_K,
               scores: np.ndarray | None = None,
               variants: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, np.ndarray]:
  """Exact top-k rows of every query, CHUNK rows at a time, one pass.

  Args:
    emb: f32[N, D] embeddings (a memory map is read once, in chunks).
    queries: f32[Q, D] L2-normalized.
    k: hits per query.
    scores: f32[N] detection scores, for the variants.
    variants: name -> {"cws": bool, "det_threshold": float}: rank by
      scores x similarity if cws, leave out rows scoring below
      det_threshold. Default: {"plain": {}}, by similarity.
  Returns:
    name -> i64[Q, k] rows, best first.
  """
  variants = variants or {"plain": {}}
  best = {n: (np.full((len(queries), k), -np.inf, np.float32),
              np.zeros((len(queries), k), np.int64)) for n in variants}
  for lo in range(0, emb.shape[0], CHUNK):
    sim = np.asarray(emb[lo:lo + CHUNK]) @ queries.T  # [chunk, Q]
    kk = min(k, sim.shape[0])
    for name, kw in variants.items():
      s = sim
      if kw:
        det = np.asarray(scores[lo:lo + CHUNK])[:, None]
        s = sim * det if kw.get("cws") else sim.copy()
        s[det[:, 0] < kw.get("det_threshold", 0.0)] = -np.inf
      part = np.argpartition(-s, kk - 1, axis=0)[:kk].T  # [Q, kk]
      best_s, best_i = best[name]
      cand_s = np.concatenate([best_s, np.take_along_axis(s.T, part, 1)], 1)
      cand_i = np.concatenate([best_i, part + lo], 1)
      top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
      best[name] = (np.take_along_axis(cand_s, top, 1),
                    np.take_along_axis(cand_i, top, 1))
  return {n: b[1] for n, b in best.items()}


def _status() -> dict[str, int]:
  """VmHWM, VmRSS and RssAnon of this process, in bytes."""
  out = {}
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    k, _, v = line.partition(":")
    if k in ("VmHWM", "VmRSS", "RssAnon"):
      out[k] = int(v.split()[0]) * 1024
  return out


def _latency(fn, queries: np.ndarray) -> tuple[list[float], list[Any]]:
  times, outs = [], []
  fn(queries[0])  # warm-up
  for q in queries:
    t = time.perf_counter()
    outs.append(fn(q))
    times.append(time.perf_counter() - t)
  return times, outs


def _row(name: str, times: list[float], **extra: Any) -> dict[str, Any]:
  ms = np.asarray(times) * 1e3
  return {"method": name, "queries": len(times),
          "median_ms": round(float(np.median(ms)), 3),
          "p95_ms": round(float(np.percentile(ms, 95)), 3), **extra}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
  """The query phase, in a fresh process: load the index, time queries."""
  if spec["threads"]:
    ann_lib.import_faiss().omp_set_num_threads(spec["threads"])
  emb = np.load(spec["embeddings"], mmap_mode="r")
  scores = np.load(spec["scores"], mmap_mode="r")
  image_of_det = np.load(spec["image_of_det"], mmap_mode="r")
  queries = np.load(spec["queries"])
  gt = np.load(spec["gt"])
  before = _status()
  t = time.perf_counter()
  ann = ann_lib.AnnIndex.load(spec["ann_dir"])
  ann.check_fresh(emb)
  load_s = time.perf_counter() - t
  after = _status()
  rows = []
  nprobes = [ann_lib.auto_nprobe(ann.nlist) if p == "auto" else int(p)
             for p in spec["nprobes"]]
  for nprobe in dict.fromkeys(nprobes):
    ann.nprobe = nprobe
    for rerank in (True, False):
      times, outs = _latency(
          lambda q, r=rerank: ann.rank_detections(
              emb, scores, image_of_det, q, top_k=TOP_K, rerank=r)[0],
          queries)
      recall = np.mean([len(set(o.tolist()) & set(g.tolist())) / TOP_K
                        for o, g in zip(outs, gt)])
      rows.append(_row(
          f"ann nprobe={ann.nprobe}" + ("" if rerank else " no re-rank"),
          times, recall_at_10=round(float(recall), 4)))
  ann.nprobe = nprobes[0]
  for name, kw in spec.get("variants", {}).items():
    ann._eligible_cache = None  # pylint: disable=protected-access
    t = time.perf_counter()
    ann._eligible(scores, image_of_det,  # pylint: disable=protected-access
                  kw.get("det_threshold", 0.0), ())
    mask_ms = (time.perf_counter() - t) * 1e3
    vgt = np.load(spec["variant_gt"][name])
    times, outs = _latency(
        lambda q, kw=kw: ann.rank_detections(
            emb, scores, image_of_det, q, top_k=TOP_K, **kw)[0], queries)
    recall = np.mean([len(set(o.tolist()) & set(g.tolist())) / TOP_K
                      for o, g in zip(outs, vgt)])
    rows.append(_row(f"ann nprobe={ann.nprobe} {name}", times,
                     recall_at_10=round(float(recall), 4),
                     filter_mask_ms=round(mask_ms, 1)))
  ann_peak = _status()["VmHWM"]
  nq = spec["exact_queries"]

  def chunked(q):
    return exact_topk(emb, q[None], TOP_K)["plain"][0]

  times, outs = _latency(chunked, queries[:nq])
  rows.append(_row("exact (chunked numpy)", times, recall_at_10=round(float(
      np.mean([len(set(o.tolist()) & set(g.tolist())) / TOP_K
               for o, g in zip(outs, gt)])), 4)))
  times, _ = _latency(lambda q: query_lib.rank_detections(
      emb, scores, image_of_det, q, top_k=TOP_K)[0], queries[:nq])
  rows.append(_row("exact (ps-search)", times))
  return {"ann_load_seconds": round(load_s, 2),
          "ann_rss_anon_bytes": after["RssAnon"] - before["RssAnon"],
          "ann_process_peak_rss_bytes": ann_peak,
          "exact_process_peak_rss_bytes": _status()["VmHWM"],
          "rows": rows}


def run_size(n: int) -> dict[str, Any]:
  """Data, ground truth, index build, then the query phase in a subprocess."""
  faiss = ann_lib.import_faiss()
  if _THREADS.value:
    faiss.omp_set_num_threads(_THREADS.value)
  load_start = os.getloadavg()
  data = ensure_data(n, _SEED.value, _QUERIES.value)
  emb = np.load(data["embeddings"], mmap_mode="r")
  queries = np.load(data["queries"])
  variants = {"plain": {}}
  for name in _VARIANTS.value:
    kw = {}
    for part in name.split("+"):
      if part == "cws":
        kw["cws"] = True
      elif part.startswith("det"):
        kw["det_threshold"] = float(part[3:])
      else:
        raise ValueError(f"--variants: {name!r}: unknown part {part!r}")
    variants[name] = kw
  variant_gt = {name: os.path.join(data["dir"], f"gt_{name}.npy")
                for name in variants}
  todo = {n: kw for n, kw in variants.items()
          if not os.path.exists(variant_gt[n])}
  t = time.perf_counter()
  if todo:  # one pass over the data for all of them
    gts = exact_topk(emb, queries, scores=np.load(data["scores"]),
                     variants=todo)
    for name, gt in gts.items():
      np.save(variant_gt[name], gt)
  gt_s = time.perf_counter() - t
  gt_path = variant_gt.pop("plain")
  del variants["plain"]
  ann_dir = os.path.join(data["dir"], "ann")
  options = dict(nlist=_NLIST.value or None, quantizer=_QUANTIZER.value,
                 encoding=_ENCODING.value)
  meta = None
  if _REUSE.value and ann_lib.exists(ann_dir):
    meta, _ = ann_lib.read_meta(ann_dir)
    try:
      ann_lib.check_fresh(meta, emb)
    except ann_lib.StaleAnnError:
      meta = None
    if meta is not None and {k: meta["options"][k] for k in options} != (
        options):
      meta = None
  if meta is None:
    ann = ann_lib.AnnIndex.build(emb, progress=False, **options)
    ann.save(ann_dir)
    meta = ann.meta
    del ann
  file_bytes = (pathlib.Path(ann_dir) / meta["file"]).stat().st_size
  del emb
  spec = {"embeddings": data["embeddings"], "scores": data["scores"],
          "image_of_det": data["image_of_det"], "queries": data["queries"],
          "gt": gt_path, "ann_dir": ann_dir, "nprobes": _NPROBES.value,
          "variants": variants, "variant_gt": variant_gt,
          "threads": _THREADS.value,
          "exact_queries": _EXACT_QUERIES.value or (
              _QUERIES.value if n <= 10**6 else 10)}
  env = dict(os.environ)
  if _THREADS.value:
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
      env[k] = str(_THREADS.value)
  proc = subprocess.run(
      [sys.executable, __file__, "--measure=" + json.dumps(spec)],
      capture_output=True, text=True, env=env, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT)]
  if proc.returncode or not lines:
    raise RuntimeError(f"query phase failed (status {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  result = json.loads(lines[-1][len(_RESULT):])
  return {"n": n, "dim": D, "generate_seconds": data["generate_seconds"],
          "exact_topk_all_queries_seconds": round(gt_s, 1),
          "factory": meta["factory"], "train_size": meta["train_size"],
          "train_seconds": meta["train_seconds"],
          "add_seconds": meta["add_seconds"], "ann_file_bytes": file_bytes,
          "float32_bytes": n * D * 4,
          "load_average": [round(v, 2) for v in load_start],
          "load_average_end": [round(v, 2) for v in os.getloadavg()],
          **result}


def _gb(b: int) -> str:
  return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.0f} MB"


def print_table(results: list[dict[str, Any]]) -> None:
  print("| N | method | build s | index in RAM | median ms | p95 ms | "
        "recall@10 |")
  print("|---|---|---:|---:|---:|---:|---:|")
  for r in results:
    build = f"{r['train_seconds'] + r['add_seconds']:.0f}"
    for row in r["rows"]:
      ann = row["method"].startswith("ann")
      mem = (f"{_gb(r['ann_rss_anon_bytes'])} (file "
             f"{_gb(r['ann_file_bytes'])})" if ann else
             f"{_gb(r['float32_bytes'])} read per query")
      recall = row.get("recall_at_10")
      print(f"| {r['n']:.0e} | {row['method']} | {build if ann else '-'} | "
            f"{mem} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | "
            f"{'-' if recall is None else f'{recall:.3f}'} |")
  for r in results:
    print(f"# N={r['n']}: {r['factory']}, trained on {r['train_size']} in "
          f"{r['train_seconds']:.0f} s, added in {r['add_seconds']:.0f} s; "
          f"index load {r['ann_load_seconds']} s; ann query process peak "
          f"RSS {_gb(r['ann_process_peak_rss_bytes'])}, after the exact "
          f"queries {_gb(r['exact_process_peak_rss_bytes'])}; data generated "
          f"in {r['generate_seconds']} s; exact top-10 of all queries and "
          f"variants (one batched pass) "
          f"{r['exact_topk_all_queries_seconds']} s; load average "
          f"{r['load_average']} -> {r['load_average_end']}")


def main(argv):
  del argv
  if _MEASURE.value:
    print(_RESULT + json.dumps(measure(json.loads(_MEASURE.value))))
    return
  faiss = ann_lib.import_faiss()
  cpu = next((l.split(":", 1)[1].strip() for l in
              pathlib.Path("/proc/cpuinfo").read_text().splitlines()
              if l.startswith("model name")), platform.processor())
  header = (f"# {cpu}, {os.cpu_count()} CPUs; faiss {faiss.__version__}, "
            f"numpy {np.__version__}; threads "
            f"{_THREADS.value or 'default'}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
            f"average {os.getloadavg()[0]:.2f}")
  print(header, flush=True)
  results = []
  for size in _SIZES.value:
    n = int(float(size))
    results.append(run_size(n))
    print(json.dumps(results[-1]), flush=True)
  print(header)
  print_table(results)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(
        {"header": header, "results": results}, indent=1))


if __name__ == "__main__":
  app.run(main)
