"""Approximate search over a gallery index with FAISS, for archive scale.

Exact search (`query.rank_detections`) multiplies the query with all M
embeddings: M x D x 4 bytes read per query, 10 GB at M = 10^7, D = 256.
An `AnnIndex` is a FAISS inverted-file index over the gallery index's
L2-normalized embeddings, for inner-product (cosine) search: k-means splits
the embeddings into `nlist` lists, each stored with 8-bit scalar
quantization (`IVF<nlist>,SQ8`: D bytes a detection, 2.56 GB at 10^7 x 256),
and a query scans only the `nprobe` lists nearest to it. FAISS is optional
(`pip install 'ps_jax[faiss]'`) and imported only here, when used.

What a query with an AnnIndex (`AnnIndex.rank_detections`, or
`query.search(..., ann=...)`) guarantees:
  * Every hit is a detection that passes the filters (det_threshold,
    excluded images; FAISS applies them while scanning, so they never starve
    the result), and its similarity and score are exact: FAISS's candidates
    are re-ranked with the float32 embeddings of the gallery index (only the
    candidates' rows are read, so a memory-mapped index,
    `GalleryIndex.load(dir, mmap=True)`, stays on disk), with the rules of
    `query.rank_detections` (cws, one_per_image, ties by row). Filters
    that leave a fraction f of the detections scan nprobe / sqrt(f) lists
    (up to all), as the nearest eligible detections lie farther away.
  * Candidates: the `overfetch` x top_k (at least 32) detections of the
    probed lists with the highest quantized similarity. With cws, CWS_POOL
    times more are fetched and the `overfetch` x top_k best of them by
    det_score x quantized similarity re-ranked: FAISS searches by
    similarity, not by the product, so cws recall is lower (more lists,
    `nprobe`, raise it). If the filters or one_per_image leave fewer than
    top_k hits, the fetch grows (x4, up to MAX_FETCH).
  * Not guaranteed: a detection of an unprobed list, or one that quantization
    ranks below the candidates, is missed. The order and scores of the hits
    are exact but the set is approximate; recall@10 against exact search is
    measured by `bench/search_index.py` (docs/benchmarks.md). top_k=None
    (every detection) falls back to exact search.

On disk the AnnIndex lives in the gallery index's directory: `ann.json`
(options, the FAISS version, and the gallery it was built from) and the
FAISS index `ann.<token>.faiss` it names. A save writes the FAISS file, then
replaces ann.json in one rename, so an interrupted save leaves the previous
pair. The gallery is fingerprinted (number of detections, dim, the saved
generation, a hash of 4,096 evenly spaced embedding rows); `load_for_index`
refuses an AnnIndex whose gallery changed since (`StaleAnnError`), and
`refresh` rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pathlib
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np
import tqdm

from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib

SearchError = index_lib.SearchError
META_FILE = "ann.json"
FORMAT_NAME = "ps_jax.search.AnnIndex"
FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'ps_jax[faiss]'"
QUANTIZERS = ("auto", "flat", "hnsw")
ENCODINGS = ("SQ8", "Flat")
SEARCH_MODES = ("auto", "exact", "ann")
HASH_ROWS = 4096  # embedding rows hashed into the gallery fingerprint
MAX_FETCH = 16384  # most candidates one query fetches from FAISS
CWS_POOL = 64  # with cws, candidates fetched per one re-ranked exactly
HNSW_MIN_NLIST = 16384  # auto quantizer: HNSW from this many lists up


class StaleAnnError(SearchError):
  """The AnnIndex was built from other embeddings than the gallery's."""


def import_faiss() -> Any:
  """The faiss module.

  Raises:
    SearchError saying how to install it, if it is not installed.
  """
  try:
    return importlib.import_module("faiss")
  except ImportError as e:
    raise SearchError(
        f"approximate search needs FAISS, which is not installed ({e}): "
        f"{INSTALL_HINT} (or pip install faiss-cpu)") from e


def auto_nlist(num_vectors: int) -> int:
  """Default number of lists: the power of 2 nearest sqrt(M).

  Capped so that every list gets >= 39 training points (FAISS's minimum):
  256 at 10^5, 1,024 at 10^6, 4,096 at 10^7.
  """
  m = int(num_vectors)
  if m < 78:
    return 1
  nlist = 2 ** round(math.log2(math.sqrt(m)))
  return int(min(nlist, 2 ** int(math.log2(m // 39))))


def auto_nprobe(nlist: int) -> int:
  """Default lists scanned per query: nlist / 32, at least min(nlist, 16).

  16 at 10^5 detections, 32 at 10^6, 128 at 10^7: recall@10 >= 0.99 on the
  benchmark's synthetic re-ID embeddings (docs/benchmarks.md).
  """
  return int(min(nlist, max(16, nlist // 32)))


def auto_train_size(nlist: int) -> int:
  """Default k-means sample: 64 points a list, 65,536 to 2^20."""
  return int(min(1 << 20, max(1 << 16, 64 * nlist)))


def gallery_fingerprint(embeddings: np.ndarray,
                        generation: int | None = None) -> dict[str, Any]:
  """What identifies the embeddings an AnnIndex was built from.

  Args:
    embeddings: f32[M, D] (a memory map is read at HASH_ROWS rows only).
    generation: the gallery index's saved generation, if known.
  Returns:
    {"num_detections", "embedding_dim", "generation", "sample_hash"}.
  """
  m, d = embeddings.shape
  rows = np.unique(np.linspace(0, max(m - 1, 0), min(m, HASH_ROWS)).round()
                   ).astype(np.int64)
  h = hashlib.blake2b(digest_size=16)
  h.update(np.asarray([m, d], np.int64).tobytes())
  h.update(np.ascontiguousarray(embeddings[rows], np.float32).tobytes())
  return {"num_detections": int(m), "embedding_dim": int(d),
          "generation": None if generation is None else int(generation),
          "sample_hash": h.hexdigest()}


def _stale_reasons(built: Mapping[str, Any],
                   now: Mapping[str, Any]) -> list[str]:
  reasons = [f"{k} {built.get(k)} -> {now[k]}"
             for k in ("num_detections", "embedding_dim")
             if built.get(k) != now[k]]
  if None not in (built.get("generation"), now["generation"]) and (
      built["generation"] != now["generation"]):
    reasons.append(f"saved generation {built['generation']} -> "
                   f"{now['generation']}")
  if not reasons and built.get("sample_hash") != now["sample_hash"]:
    reasons.append("the embeddings differ")
  return reasons


def check_fresh(meta: Mapping[str, Any], embeddings: np.ndarray,
                generation: int | None = None, where: str = "") -> None:
  """Raises StaleAnnError if `meta` (ann.json) is of other embeddings.

  Args:
    meta: the AnnIndex's metadata, with its "gallery" fingerprint.
    embeddings: f32[M, D] the gallery index's embeddings.
    generation: its saved generation, if known.
    where: the ann.json path or directory, for the message.
  """
  reasons = _stale_reasons(meta["gallery"],
                           gallery_fingerprint(embeddings, generation))
  if reasons:
    raise StaleAnnError(
        f"{where or 'approximate index'}: stale, the gallery index changed "
        f"since it was built ({'; '.join(reasons)}); rebuild it: ps-search "
        "index --workdir RUN --out INDEX_DIR --ann (or "
        "ps_jax.search.ann.refresh), or search exactly (query --search "
        "exact)")


class AnnIndex:
  """A FAISS IVF index over the embeddings of one gallery index.

  Attributes:
    index: the faiss.IndexIVF; its ids are the gallery's detection rows.
    meta: options, timings and the gallery fingerprint (ann.json's content).
    nprobe: lists scanned per query (settable).
    overfetch: candidates fetched per hit wanted (settable).
  """

  def __init__(self, index: Any, meta: Mapping[str, Any]):
    self.index = index
    self.meta = dict(meta)
    self.nprobe = int(meta["nprobe"])
    self.overfetch = int(meta.get("overfetch", 4))
    self._eligible_cache: tuple[Any, ...] | None = None

  @property
  def num_vectors(self) -> int:
    return int(self.index.ntotal)

  @property
  def nlist(self) -> int:
    return int(self.meta["nlist"])

  def __repr__(self) -> str:
    return (f"AnnIndex({self.meta['factory']}, {self.num_vectors} vectors, "
            f"nprobe={self.nprobe})")

  def describe(self) -> dict[str, Any]:
    """JSON-able summary: method, factory, nlist, nprobe, sizes, version."""
    return {"method": "approximate", "factory": self.meta["factory"],
            "nlist": self.nlist, "nprobe": self.nprobe,
            "overfetch": self.overfetch, "vectors": self.num_vectors,
            "faiss_version": self.meta.get("faiss_version")}

  # Building.

  @classmethod
  def build(cls, embeddings: np.ndarray, *, nlist: int | None = None,
            nprobe: int | None = None, quantizer: str = "auto",
            encoding: str = "SQ8", train_size: int | None = None,
            seed: int = 0, overfetch: int = 4,
            generation: int | None = None, chunk_rows: int = 1 << 17,
            progress: bool | None = None) -> AnnIndex:
    """Trains and fills a FAISS index over `embeddings`.

    Args:
      embeddings: f32[M, D] L2-normalized; a memory map is read `chunk_rows`
        rows at a time, so it need not fit in memory.
      nlist: inverted lists (None: `auto_nlist(M)`); M >= nlist.
      nprobe: default lists scanned per query (None: `auto_nprobe`).
      quantizer: how a vector finds its list: "flat" (exact, nlist inner
        products), "hnsw" (an HNSW graph over the list centres, faster to
        fill for many lists) or "auto" (hnsw from HNSW_MIN_NLIST lists).
      encoding: "SQ8" (8-bit scalar quantization, D bytes a vector) or
        "Flat" (float32; with nprobe = nlist the search is exact).
      train_size: k-means sample (None: `auto_train_size(nlist)`), drawn
        with `seed`.
      seed: seed of the sample and of k-means.
      overfetch: candidates fetched from FAISS per hit wanted.
      generation: the gallery index's saved generation (fingerprint).
      chunk_rows: rows added per call.
      progress: progress bar on stderr; None: only if it is a terminal.
    Returns:
      The AnnIndex; `meta` records the options and train/add seconds.
    Raises:
      SearchError for bad options, an empty gallery, or missing FAISS.
    """
    faiss = import_faiss()
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise SearchError(f"embeddings have shape {embeddings.shape}: an "
                        "approximate index needs at least one detection")
    m, d = embeddings.shape
    options = {"nlist": nlist, "nprobe": nprobe, "quantizer": quantizer,
               "encoding": encoding, "train_size": train_size, "seed": seed,
               "overfetch": overfetch}
    nlist = auto_nlist(m) if nlist is None else int(nlist)
    if not 1 <= nlist <= m:
      raise SearchError(f"nlist must be in [1, {m}] (the number of "
                        f"detections), got {nlist}")
    nprobe = auto_nprobe(nlist) if nprobe is None else int(nprobe)
    if nprobe < 1 or overfetch < 1:
      raise SearchError(f"nprobe and overfetch must be >= 1, got {nprobe} "
                        f"and {overfetch}")
    if quantizer not in QUANTIZERS or encoding not in ENCODINGS:
      raise SearchError(f"quantizer must be one of {QUANTIZERS} and encoding "
                        f"one of {ENCODINGS}, got {quantizer!r} and "
                        f"{encoding!r}")
    if quantizer == "auto":
      quantizer = "hnsw" if nlist >= HNSW_MIN_NLIST else "flat"
    factory = (f"IVF{nlist}{'_HNSW32' if quantizer == 'hnsw' else ''},"
               f"{encoding}")
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    n_train = min(m, auto_train_size(nlist) if train_size is None
                  else int(train_size))
    if n_train < nlist:
      raise SearchError(f"train_size {n_train} is below nlist {nlist}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(m, n_train, replace=False))
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(embeddings[rows], np.float32))
    t1 = time.perf_counter()
    with _progress(m, progress) as bar:
      for start in range(0, m, chunk_rows):
        chunk = np.ascontiguousarray(embeddings[start:start + chunk_rows],
                                     np.float32)
        index.add(chunk)
        bar.update(len(chunk))
    t2 = time.perf_counter()
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "factory": factory, "metric": "inner_product", "nlist": nlist,
            "nprobe": nprobe, "overfetch": int(overfetch),
            "quantizer": quantizer, "encoding": encoding,
            "train_size": int(n_train), "seed": int(seed),
            "options": options, "num_vectors": int(m),
            "embedding_dim": int(d), "faiss_version": faiss.__version__,
            "train_seconds": round(t1 - t0, 3),
            "add_seconds": round(t2 - t1, 3),
            "gallery": gallery_fingerprint(embeddings, generation)}
    return cls(index, meta)

  # Querying.

  def check_fresh(self, embeddings: np.ndarray,
                  generation: int | None = None, where: str = "") -> None:
    """Raises StaleAnnError if built from other embeddings.

    Args:
      embeddings: f32[M, D] the gallery index's embeddings.
      generation: its saved generation, if known.
      where: the ann.json path or directory, for the message.
    """
    check_fresh(self.meta, embeddings, generation, where)

  def search_rows(self, query: np.ndarray, k: int, selector: Any = None,
                  nprobe: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's k best rows for one normalized query.

    Args:
      query: f32[D] L2-normalized.
      k: rows wanted.
      selector: a faiss.IDSelector of the eligible rows, or None for all.
      nprobe: lists to scan (default: self.nprobe).
    Returns:
      rows: i64[n] gallery rows by decreasing approximate similarity, n <= k
        (fewer when the probed lists hold fewer eligible rows).
      similarity: f32[n] their approximate (quantized) cosines.
    """
    faiss = import_faiss()
    nprobe = min(self.nlist, int(nprobe or self.nprobe))
    kwargs: dict[str, Any] = {"nprobe": nprobe}
    if selector is not None:
      kwargs["sel"] = selector
    qparams = None
    if self.meta.get("quantizer") == "hnsw":
      qparams = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
      kwargs["quantizer_params"] = qparams
    params = faiss.SearchParametersIVF(**kwargs)
    sims, rows = self.index.search(
        np.ascontiguousarray(query, np.float32)[None], int(k), params=params)
    keep = rows[0] >= 0
    return rows[0][keep], sims[0][keep].astype(np.float32)

  def _eligible(self, det_scores: np.ndarray, image_of_det: np.ndarray,
                det_threshold: float, excluded_images: Sequence[int]
                ) -> tuple[int, Any]:
    """(number of eligible rows, faiss.IDSelectorBitmap or None if all)."""
    key = (float(det_threshold), tuple(sorted(int(i) for i in
                                              excluded_images)))
    cache = self._eligible_cache
    if cache is not None and cache[0] is det_scores and cache[1] == key:
      return cache[2], cache[3]
    # The selector points into the bitmap: the cache keeps both alive.
    eligible = np.asarray(det_scores) >= det_threshold
    if key[1]:
      eligible &= ~np.isin(image_of_det, np.asarray(key[1]))
    count = int(eligible.sum())
    selector = bitmap = None
    if count < len(eligible):
      bitmap = np.packbits(eligible, bitorder="little")
      selector = import_faiss().IDSelectorBitmap(bitmap)
    self._eligible_cache = (det_scores, key, count, selector, bitmap)
    return count, selector

  def rank_detections(self, embeddings: np.ndarray, det_scores: np.ndarray,
                      image_of_det: np.ndarray, query_embedding: np.ndarray,
                      *, top_k: int | None = 10, det_threshold: float = 0.0,
                      cws: bool = False, one_per_image: bool = False,
                      excluded_images: Sequence[int] = (),
                      rerank: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`query.rank_detections` over FAISS's candidates (module doc).

    Args:
      embeddings: f32[M, D] the gallery's embeddings (a memory map is read
        at the candidates' rows only).
      det_scores, image_of_det, query_embedding, top_k, det_threshold, cws,
        one_per_image, excluded_images: as for `query.rank_detections`.
      rerank: rank by exact cosines from `embeddings` (default); False uses
        FAISS's quantized ones and never reads `embeddings`.
    Returns:
      order: i32[k] detection rows, best first (k <= top_k).
      similarity: f32[k] their cosines (exact if rerank).
      score: f32[k] their ranking scores.
    Raises:
      StaleAnnError if M is not the AnnIndex's number of vectors.
    """
    if top_k is None:
      return query_lib.rank_detections(
          embeddings, det_scores, image_of_det, query_embedding, top_k=None,
          det_threshold=det_threshold, cws=cws, one_per_image=one_per_image,
          excluded_images=excluded_images)
    q = query_lib.normalized_query(query_embedding, embeddings.shape[1],
                                   top_k)
    if embeddings.shape[0] != self.num_vectors:
      raise StaleAnnError(
          f"approximate index holds {self.num_vectors} vectors, the gallery "
          f"{embeddings.shape[0]} detections: it is stale; rebuild it")
    count, selector = self._eligible(det_scores, image_of_det, det_threshold,
                                     excluded_images)
    # Filters leaving a fraction f of the rows: the nearest eligible rows
    # lie farther away, so scan nprobe / sqrt(f) lists.
    nprobe = math.ceil(self.nprobe * math.sqrt(embeddings.shape[0]
                                               / max(count, 1)))
    # A shortlist of `overfetch` x top_k candidates is re-ranked exactly;
    # with cws it is the best of a CWS_POOL times larger pool by det_score x
    # quantized similarity.
    shortlist = max(32, self.overfetch * top_k)
    fetch = min(count, shortlist * (CWS_POOL if cws else 1))
    cap = min(count, max(MAX_FETCH, fetch))
    opts = dict(det_threshold=det_threshold, cws=cws,
                one_per_image=one_per_image, excluded_images=excluded_images)
    det_scores, image_of_det = (np.asarray(det_scores),
                                np.asarray(image_of_det))
    while True:
      if fetch:
        rows, approx = self.search_rows(q, fetch, selector, nprobe)
      else:
        rows, approx = np.zeros((0,), np.int64), np.zeros((0,), np.float32)
      by_row = np.argsort(rows, kind="stable")
      cand = rows[by_row]  # row order, so ties keep index order
      pos, s, score = query_lib.rank_similarities(
          approx[by_row], det_scores[cand], image_of_det[cand],
          top_k=shortlist if rerank else top_k, **opts)
      if rerank:
        cand = np.sort(cand[pos])
        sim = np.asarray(embeddings[cand], np.float32) @ q
        pos, s, score = query_lib.rank_similarities(
            sim, det_scores[cand], image_of_det[cand], top_k=top_k, **opts)
      if len(pos) == top_k or len(rows) < fetch or fetch >= cap:
        return cand[pos].astype(np.int32), s, score
      fetch = min(cap, 4 * fetch)

  # Saving and loading.

  def save(self, directory: str | os.PathLike[str]) -> pathlib.Path:
    """Writes ann.json and the FAISS file into `directory` atomically.

    Returns:
      The path of ann.json.
    """
    faiss = import_faiss()
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    name = f"ann.{secrets.token_hex(6)}.faiss"
    suffix = f".tmp{os.getpid()}"
    meta = {**self.meta, "nprobe": self.nprobe, "overfetch": self.overfetch,
            "file": name}
    written = []
    try:
      tmp = d / (name + suffix)
      written.append(tmp)
      faiss.write_index(self.index, str(tmp))
      _fsync(tmp)
      os.replace(tmp, d / name)
      written.append(d / name)
      tmp = d / (META_FILE + suffix)
      written.append(tmp)
      tmp.write_text(json.dumps(meta, indent=1))
      _fsync(tmp)
      os.replace(tmp, d / META_FILE)  # the commit point
    except BaseException:
      for p in written:
        p.unlink(missing_ok=True)
      raise
    for p in d.glob("ann.*.faiss"):
      if p.name != name:
        p.unlink(missing_ok=True)
    self.meta = meta
    return d / META_FILE

  @classmethod
  def load(cls, directory: str | os.PathLike[str]) -> AnnIndex:
    """Reads the AnnIndex saved in `directory` (unchecked; see
    `load_for_index`).

    Raises:
      SearchError naming the file if it is missing or inconsistent, or
      FAISS is not installed.
    """
    meta, meta_path = read_meta(directory)
    faiss = import_faiss()
    path = meta_path.parent / str(meta.get("file"))
    try:
      index = faiss.read_index(str(path))
    except RuntimeError as e:
      raise SearchError(f"{path}: cannot read the FAISS index named by "
                        f"{meta_path} ({' '.join(str(e).split())[:300]})"
                        ) from e
    if index.ntotal != meta.get("num_vectors") or index.d != meta.get(
        "embedding_dim"):
      raise SearchError(
          f"{path}: holds {index.ntotal} vectors of dim {index.d}, "
          f"{meta_path} says {meta.get('num_vectors')} of dim "
          f"{meta.get('embedding_dim')}")
    return cls(index, meta)


def _fsync(path: pathlib.Path) -> None:
  with open(path, "rb+") as f:
    os.fsync(f.fileno())


def _progress(total: int, enabled: bool | None) -> tqdm.tqdm:
  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm.tqdm(total=total, unit="det", desc="ann index", file=sys.stderr,
                   disable=not enabled, dynamic_ncols=True)


def exists(directory: str | os.PathLike[str]) -> bool:
  """Whether `directory` holds an AnnIndex (its ann.json)."""
  return (pathlib.Path(directory) / META_FILE).is_file()


def read_meta(directory: str | os.PathLike[str]
              ) -> tuple[dict[str, Any], pathlib.Path]:
  """(content of ann.json, its path); needs no FAISS.

  Raises:
    SearchError naming the file if it is missing or not an AnnIndex.
  """
  path = pathlib.Path(directory) / META_FILE
  if not path.is_file():
    raise SearchError(f"{directory}: no approximate index ({META_FILE}); "
                      "build one: ps-search index --workdir RUN --out "
                      f"{directory} --ann")
  try:
    meta = json.loads(path.read_text())
  except ValueError as e:
    raise SearchError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
    raise SearchError(f"{path}: not a {FORMAT_NAME} file")
  if meta.get("format_version") != FORMAT_VERSION:
    raise SearchError(f"{path}: format version {meta.get('format_version')}"
                      f", this ps_jax reads {FORMAT_VERSION}; rebuild it "
                      "with ps-search index --ann")
  missing = {"file", "factory", "nlist", "nprobe", "num_vectors",
             "embedding_dim", "gallery"} - set(meta)
  if missing:
    raise SearchError(f"{path}: misses {sorted(missing)}")
  return meta, path


def info(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
  """Summary of the AnnIndex in `directory` (no FAISS needed), or None."""
  if not exists(directory):
    return None
  meta, path = read_meta(directory)
  f = path.parent / meta["file"]
  return {"method": "approximate", "factory": meta["factory"],
          "nlist": meta["nlist"], "nprobe": meta["nprobe"],
          "overfetch": meta.get("overfetch"), "vectors": meta["num_vectors"],
          "bytes": f.stat().st_size if f.is_file() else None,
          "faiss_version": meta.get("faiss_version"),
          "gallery": meta["gallery"]}


def build_for_index(index: index_lib.GalleryIndex,
                    save_to: str | os.PathLike[str] | None = None,
                    **options: Any) -> AnnIndex:
  """An AnnIndex over a gallery index's embeddings (see `AnnIndex.build`).

  Args:
    index: the gallery (loaded with mmap=True, its embeddings stay on disk).
    save_to: if set, the gallery index's directory to save it in.
    **options: `AnnIndex.build`'s keyword arguments.
  """
  ann = AnnIndex.build(index.embeddings, generation=index.generation,
                       **options)
  if save_to is not None:
    ann.save(save_to)
  return ann


def load_for_index(directory: str | os.PathLike[str],
                   index: index_lib.GalleryIndex) -> AnnIndex:
  """The AnnIndex saved in `directory`, checked fresh for `index`.

  Raises:
    SearchError if there is none or FAISS is missing; StaleAnnError if the
    gallery changed since it was built.
  """
  ann = AnnIndex.load(directory)
  ann.check_fresh(index.embeddings, index.generation,
                  str(pathlib.Path(directory) / META_FILE))
  return ann


def refresh(directory: str | os.PathLike[str],
            index: index_lib.GalleryIndex, *, build: bool = False,
            **options: Any) -> dict[str, Any] | None:
  """Keeps the AnnIndex of a gallery index directory in step with it.

  Builds one if `build` (again, if there is one), or rebuilds an existing
  one that is stale, with its recorded options unless overridden.

  Args:
    directory: the gallery index's directory.
    index: the gallery index saved there.
    build: build even if there is none or it is fresh.
    **options: `AnnIndex.build`'s keyword arguments; None values are left
      to the recorded options (or the defaults).
  Returns:
    `info(directory)` plus "built": bool (and "build_seconds"), or None if
    there is none and not `build`.
  """
  old = path = None
  if exists(directory):
    old, path = read_meta(directory)
  if old is None and not build:
    return None
  if old is not None and not build:
    try:
      check_fresh(old, index.embeddings, index.generation, str(path))
      return {**info(directory), "built": False}
    except StaleAnnError:
      pass
  recorded = dict((old or {}).get("options") or {})
  merged = {**recorded, **{k: v for k, v in options.items()
                           if v is not None}}
  try:
    ann = build_for_index(index, save_to=directory, **merged)
  except SearchError as e:
    if old is None:
      raise
    raise SearchError(f"{directory}: the gallery index changed but its "
                      f"approximate index could not be rebuilt: {e}") from e
  return {**info(directory), "built": True,
          "build_seconds": round(ann.meta["train_seconds"]
                                 + ann.meta["add_seconds"], 1)}


def for_query(directory: str | os.PathLike[str],
              index: index_lib.GalleryIndex, mode: str = "auto",
              nprobe: int | None = None,
              warn: Callable[[str], None] | None = None) -> AnnIndex | None:
  """The AnnIndex a query of `directory` should use, or None for exact.

  Args:
    directory: the gallery index's directory.
    index: the gallery index loaded from it.
    mode: "exact"; "ann" (an error if there is no usable AnnIndex); "auto"
      (the AnnIndex if the directory has one and it is usable, else exact
      search, with a warning if one exists but is stale or FAISS missing).
    nprobe: lists to scan instead of the recorded default.
    warn: called with the warning of "auto"; default: absl logging.
  Raises:
    SearchError (mode "ann") if there is none, it is stale or FAISS is
    missing; for a bad mode or nprobe.
  """
  if mode not in SEARCH_MODES:
    raise SearchError(f"search mode must be one of {SEARCH_MODES}, got "
                      f"{mode!r}")
  if nprobe is not None and nprobe < 1:
    raise SearchError(f"nprobe must be >= 1, got {nprobe}")
  if mode == "exact" or (mode == "auto" and not exists(directory)):
    return None
  try:
    ann = load_for_index(directory, index)
  except SearchError as e:
    if mode == "ann":
      raise
    message = f"{e}; searching exactly"
    if warn is None:
      logging.warning("%s", message)
    else:
      warn(message)
    return None
  if nprobe is not None:
    ann.nprobe = int(nprobe)
  return ann
