"""The prediction cache: a split's predictions on disk, keyed by what they
depend on.

`evaluate` caches the gallery and query predictions under
`<workdir>/eval_cache/<label>-<key>/{gallery,query}.npz`, with `key.json`
describing the key. (For a read-only workdir the caller names another place
for new predictions; the workdir's cache is still read.) The key is a hash
of everything the predictions depend on: the parameters' bytes
(`variables_fingerprint`), the system (its type and every option, which
include the predict settings), the test-time input settings and the
dataset's name, config, version and split sizes. A retrained or resumed
model, another query mode or another dataset therefore never reads stale
predictions; protocol options (det_thresh, gallery sizes) re-use them. A
cache that cannot be written is skipped with a warning. Multi-process:
process 0 decides whether the cache is used and writes it; the workdir must
be on a filesystem every process sees (as orbax checkpoints already
require).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ps_jax import mesh as mesh_lib
from ps_jax.eval.predict import SplitPredictions

# Bumped when the cached arrays' meaning changes.
_CACHE_VERSION = 2


def save_predictions(pred: SplitPredictions, path: str | pathlib.Path) -> None:
  """Write `pred` to an .npz file atomically (temp file, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **dataclasses.asdict(pred))
  tmp.replace(path)


def load_predictions(path: str | pathlib.Path) -> SplitPredictions:
  """Read predictions written by `save_predictions`."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      pred = SplitPredictions(**{k: f[k] for k in f.files})
    pred.check(str(path))
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{path}: not a ps_jax prediction cache ({e}); delete "
                     "it to predict again") from e
  return pred


def variables_fingerprint(variables: Any) -> str:
  """Hex digest of every leaf's path, dtype, shape and bytes."""
  host = mesh_lib.global_to_host(variables)
  leaves = jax.tree_util.tree_flatten_with_path(host)[0]
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    arr = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|"
             .encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def dataset_id(label: str, builder: Any) -> dict[str, Any]:
  """What identifies the evaluated data: name/config, version, split sizes."""
  return {"dataset": label, "version": str(builder.info.version),
          "splits": {s: int(builder.info.splits[s].num_examples)
                     for s in ("test", "query")}}


def describe(obj: Any) -> Any:
  """A JSON-stable description of a system or options object: its type and
  every field, recursively (linen modules by their constructor fields)."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    fields = {f.name: describe(getattr(obj, f.name))
              for f in dataclasses.fields(obj)
              if f.name not in ("parent", "name")}
    return {"type": type(obj).__qualname__, **fields}
  if isinstance(obj, (list, tuple)):
    return [describe(v) for v in obj]
  if isinstance(obj, Mapping):
    return {str(k): describe(v) for k, v in obj.items()}
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return str(obj)


def cache_key(parts: Mapping[str, Any]) -> str:
  """16 hex digits of a hash of `parts` (JSON data) and the cache format."""
  text = json.dumps({"version": _CACHE_VERSION, **parts}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


Compute = Callable[[], tuple[SplitPredictions, SplitPredictions]]


def cached_predictions(cache: pathlib.Path, key_parts: Mapping[str, Any],
                       compute: Compute,
                       gallery_ids: Sequence[str], query_ids: Sequence[str],
                       *, use_cache: bool = True,
                       write_to: pathlib.Path | None = None
                       ) -> tuple[SplitPredictions, SplitPredictions]:
  """Gallery and query predictions from a valid cache, else `compute()`.

  A cache is valid if both files load and their image ids are the splits'
  (`gallery_ids`, `query_ids`). `cache` is read, then `write_to` (if given);
  the result of `compute()` is written to `write_to` (default `cache`) by
  process 0, with `key.json` describing what the predictions depend on. A
  cache that cannot be written (read-only storage, a full disk) is logged
  and skipped: the predictions are returned all the same.
  """
  places = [cache] + ([write_to] if write_to is not None else [])
  for place in places:
    found = _read_cache(place, gallery_ids, query_ids, use_cache)
    if found is not None:
      return found
  gal, qry = compute()
  target = write_to if write_to is not None else cache
  if jax.process_index() == 0:
    try:
      save_predictions(gal, target / "gallery.npz")
      save_predictions(qry, target / "query.npz")
      (target / "key.json").write_text(json.dumps(key_parts, indent=2,
                                                  sort_keys=True))
    except OSError as e:
      logging.warning("Predictions not cached (%s); the next evaluation "
                      "predicts again", e)
  return gal, qry


def _read_cache(cache: pathlib.Path, gallery_ids: Sequence[str],
                query_ids: Sequence[str], use_cache: bool
                ) -> tuple[SplitPredictions, SplitPredictions] | None:
  """The predictions in `cache` if it is valid for these splits, else None."""
  paths = cache / "gallery.npz", cache / "query.npz"
  hit = use_cache and all(p.exists() for p in paths)
  if jax.process_count() > 1:
    hit = bool(multihost_utils.broadcast_one_to_all(np.int32(hit)))
  if not hit:
    return None
  try:
    gal, qry = (load_predictions(p) for p in paths)
    if (list(gal.image_ids) == list(gallery_ids)
        and list(qry.image_ids) == list(query_ids)):
      logging.info("Read cached predictions from %s", cache)
      return gal, qry
    logging.warning("%s: cached image ids differ from the dataset's; "
                    "predicting again", cache)
  except ValueError as e:
    logging.warning("%s; predicting again", e)
  return None
