"""The dataset side of evaluation: what a split holds and which protocol runs.

`read_gallery` / `read_queries` read the annotations of the `test` (gallery)
and `query` splits; `check_dataset` says which protocol a dataset has
(`protocol` in its metadata: "cuhk" or "prw"); `run_protocols` scores a
model's (or a baseline's) predictions of both splits with every protocol of
the dataset plus detection recall/AP. Host-side numpy only.

Protocol options (`EvalOptions`): `det_thresh` (gallery detections kept for
search), `gallery_sizes` (CUHK-style sizes to report, -1 the full set;
empty = every size the dataset stores, plus the full set) and `duplicates`
(how a gallery list that names an image twice is scored), and `cws`
(extra rows ranked by Confidence Weighted Similarity). The full set
extends the TestG50 lists, or the smallest stored size for datasets without
them (`full_set_base` in the results); by default it is left out, with a
warning and `full_set_note` in the results, where those lists miss gallery
images of the query's identity (`full_set_problem`). PRW-style datasets
report both gallery variants (all other frames, and other cameras only).
Detection recall/AP use every detection with score >= 0.01 (SeqNet/COAT).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from ps_jax.data import schema
from ps_jax.eval import cbgm
from ps_jax.eval import detection
from ps_jax.eval import person_search
from ps_jax.eval import predict
from ps_jax.eval import prw_paper
from ps_jax.ops import boxes as box_ops

PROTOCOLS = ("cuhk", "prw")
# SeqNet/COAT compute detection metrics over detections scoring >= 0.01.
DETECTION_THRESH = 0.01
DUPLICATES = ("seqnet", "repeat", "unique")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """Protocol options (the protocol keys of the `eval` config section).

  Attributes:
    det_thresh: gallery detections with score >= this take part in search.
    gallery_sizes: CUHK-style gallery sizes to report (-1 the full set);
      empty: every size the dataset stores, plus the full set where valid.
    duplicates: CUHK-style gallery lists that name an image twice (four
      TestG100 queries of CUHK-SYSU): "seqnet" (SeqNet's script: every entry
      counts in the recall denominator, the image is ranked once), "repeat"
      (AlignPS's script: the image is ranked once per entry) or "unique"
      (one entry); `person_search.eval_search_cuhk`.
    cws: also score every search protocol with Confidence Weighted
      Similarity (similarity x detection score), as extra rows named
      `search/<gallery>+cws`.
    prw_paper: also run the PRW paper's own cross-camera protocol
      (`prw_paper.run`: detections labelled by IoU, good = same person in
      another camera, mAP / rank-1 / rank-20 against the detections per
      image) on every cached detection, as `prw_paper/...` rows; its curve
      is drawn beside the results file.
    cbgm: also score every search protocol with context bipartite graph
      matching (`cbgm.py`, SeqNet), as extra rows `search/<gallery>+cbgm`
      (and `+cws+cbgm` with `cws`).
    cbgm_k1, cbgm_k2: its k1 and k2; 0 takes SeqNet's per protocol (10 and
      3 CUHK-SYSU, 30 and 4 PRW).
  """
  det_thresh: float = 0.5
  gallery_sizes: tuple[int, ...] = ()
  duplicates: str = "seqnet"
  cws: bool = False
  prw_paper: bool = False
  cbgm: bool = False
  cbgm_k1: int = 0
  cbgm_k2: int = 0

  def __post_init__(self):
    object.__setattr__(self, "det_thresh", float(self.det_thresh))
    object.__setattr__(self, "gallery_sizes",
                       tuple(int(n) for n in self.gallery_sizes or ()))
    for name in ("cbgm_k1", "cbgm_k2"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"eval.{name}={value!r}; expected an integer >= 0 "
                         "(0: SeqNet's value for the protocol)")
    if self.duplicates not in DUPLICATES:
      raise ValueError(f"eval.duplicates={self.duplicates!r}; expected one "
                       f"of {DUPLICATES}")


class EvalError(ValueError):
  """Evaluation cannot run as asked (bad dataset, option or workdir)."""


def _str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode() if isinstance(value, bytes) else str(value)


def _image_hw(record: Mapping[str, Any]) -> tuple[int, int]:
  """(height, width) of a record's image, from the JPEG header only."""
  image = record["image"]
  if isinstance(image, np.ndarray) and image.ndim == 3:
    return image.shape[0], image.shape[1]
  if isinstance(image, np.ndarray):
    image = image.item()
  with Image.open(io.BytesIO(bytes(image))) as im:
    return im.height, im.width


def _yxyx_to_px(yxyx: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """f32[n, 4] normalized yxyx -> f32[n, 4] xyxy pixels of an h x w image."""
  yxyx = np.asarray(yxyx, np.float32).reshape(-1, 4)
  return box_ops.yxyx_norm_to_xyxy_px(yxyx, hw[0], hw[1])


@dataclasses.dataclass
class GalleryInfo:
  """Annotations of the `test` split, in record order (G images)."""
  image_ids: list[str]
  gt_boxes: list[np.ndarray]  # G x f32[m, 4] xyxy original pixels
  gt_pids: list[np.ndarray]   # G x i32[m]
  cameras: np.ndarray         # i32[G]


@dataclasses.dataclass
class QueryInfo:
  """The `query` split, in record order (Qn queries)."""
  image_ids: list[str]
  pids: np.ndarray            # i64[Qn]
  cameras: np.ndarray         # i32[Qn]
  boxes: np.ndarray           # f32[Qn, 4] xyxy original pixels
  galleries: dict[int, list[list[str]]]  # size -> Qn lists of image ids
  # Hard-case subset name -> i64[n] indices of its queries (datasets with
  # `query_subsets`; empty otherwise).
  subsets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def read_gallery(source: Sequence[Mapping[str, Any]]) -> GalleryInfo:
  """Image ids, GT boxes/pids and cameras of every gallery record."""
  ids, boxes, pids, cams = [], [], [], []
  for r in range(len(source)):
    rec = source[r]
    yxyx, p = schema.decode_persons(rec)
    ids.append(_str(rec["image_id"]))
    boxes.append(_yxyx_to_px(yxyx, _image_hw(rec)))
    pids.append(p)
    cams.append(int(rec["camera"]))
  return GalleryInfo(ids, boxes, pids, np.asarray(cams, np.int32))


def read_queries(source: Sequence[Mapping[str, Any]]) -> QueryInfo:
  """Image ids, pids, cameras, boxes, gallery lists and hard-case subsets
  of every query."""
  ids, pids, cams, boxes = [], [], [], []
  subsets: dict[str, list[int]] = {}
  galleries: dict[int, list[list[str]]] = {}
  for r in range(len(source)):
    rec = source[r]
    ids.append(_str(rec["image_id"]))
    pids.append(int(rec["query_pid"]))
    cams.append(int(rec["camera"]))
    boxes.append(_yxyx_to_px(rec["query_bbox"], _image_hw(rec))[0])
    for n in schema.gallery_sizes_of(rec):
      galleries.setdefault(n, []).append(
          [_str(x) for x in rec[f"gallery_{n}"]])
    for name in rec.get("query_subsets", ()):
      subsets.setdefault(_str(name), []).append(r)
  return QueryInfo(ids, np.asarray(pids, np.int64), np.asarray(cams, np.int32),
                   np.asarray(boxes, np.float32).reshape(-1, 4), galleries,
                   {k: np.asarray(v, np.int64) for k, v in subsets.items()})


def check_dataset(builder: Any) -> str:
  """The dataset's protocol; EvalError unless it can be evaluated here."""
  name = getattr(builder, "name", "?")
  splits = sorted(builder.info.splits.keys())
  missing = [s for s in ("test", "query") if s not in splits]
  if missing:
    raise EvalError(f"dataset {name!r} has splits {splits}; person-search "
                    f"evaluation needs a 'test' (gallery) and a 'query' "
                    f"split, missing {missing}")
  protocol = (builder.info.metadata or {}).get("protocol", "cuhk")
  if protocol not in PROTOCOLS:
    raise EvalError(f"dataset {name!r} has protocol {protocol!r}; "
                    f"ps_jax.eval evaluates person search ({PROTOCOLS}), not "
                    "cropped re-identification datasets")
  return protocol


def cuhk_sizes(requested: Sequence[int], stored: Sequence[int], *,
               full_set: bool = True) -> tuple[list[int], int]:
  """Gallery sizes to report and the size the full set extends.

  Args:
    requested: sizes asked for (-1 = FULL_SET); empty = every stored size,
      plus the full set if `full_set`.
    stored: the `gallery_<n>` sizes of the dataset's queries.
    full_set: include the full set in the default sizes.
  """
  stored = sorted(int(n) for n in stored)
  if not stored:
    raise EvalError("the dataset's protocol is 'cuhk' but its queries have "
                    "no gallery_<n> lists")
  base = 50 if 50 in stored else stored[0]
  sizes = [int(n) for n in requested] or stored + (
      [person_search.FULL_SET] if full_set else [])
  bad = [n for n in sizes if n != person_search.FULL_SET and n not in stored]
  if bad:
    raise EvalError(f"gallery sizes {bad} are not in the dataset; it has "
                    f"{stored} (and -1, the full set)")
  return list(dict.fromkeys(sizes)), base


def full_set_problem(gallery_info: GalleryInfo, query_info: QueryInfo,
                     base: int) -> str | None:
  """Why the full set would be wrong for this dataset, or None.

  The full set ranks every gallery image, but only the images of the
  query's `gallery_<base>` list count as containing the target; any other
  image showing the query's identity becomes a negative. CUHK-SYSU's TestG50
  lists hold every gallery image of the target, so this never happens there;
  datasets whose lists hold only some of them (the synthetic benchmark caps
  the targets per gallery) would be scored against their own true matches.
  """
  images_of: dict[int, set[str]] = {}
  for name, pids in zip(gallery_info.image_ids, gallery_info.gt_pids):
    for pid in set(np.asarray(pids).tolist()):
      if pid >= 0:
        images_of.setdefault(int(pid), set()).add(name)
  lists = query_info.galleries.get(base, [])
  bad = 0
  for q, pid in enumerate(query_info.pids):
    need = images_of.get(int(pid), set()) - {query_info.image_ids[q]}
    bad += bool(need - set(lists[q]))
  if not bad:
    return None
  return (f"{bad} of {len(query_info.pids)} queries have gallery images of "
          f"their identity outside their gallery_{base} list; the full set "
          "would count those true matches as negatives")


def _size_name(n: int) -> str:
  return "full_set" if n == person_search.FULL_SET else f"gallery_{n}"


def _select(queries: person_search.Queries, idx: np.ndarray
            ) -> person_search.Queries:
  """The queries at indices `idx` (a hard-case subset)."""
  take = lambda v: None if v is None else np.asarray(v)[idx]  # noqa: E731
  return person_search.Queries(
      feats=np.asarray(queries.feats)[idx],
      image_ids=[queries.image_ids[i] for i in idx],
      pids=take(queries.pids), cameras=take(queries.cameras),
      galleries={n: [lists[i] for i in idx]
                 for n, lists in queries.galleries.items()},
      boxes=take(queries.boxes))


def run_protocols(options: EvalOptions, protocol: str,
              gallery_info: GalleryInfo, query_info: QueryInfo,
              gal: predict.SplitPredictions, qry: predict.SplitPredictions,
              *, with_detection: bool = True) -> dict[str, Any]:
  """Every protocol of the dataset on predictions (host only, numpy).

  Args:
    options: the protocol options.
    protocol: "cuhk" or "prw".
    gallery_info, query_info: the splits' annotations.
    gal, qry: predictions of the `test` and `query` splits, record order.
    with_detection: also report detection recall/AP.
  Returns:
    Rows `search/<gallery>[+cws]` over every query, and for each hard-case
    subset of the queries (`QueryInfo.subsets`) `search/<gallery>@<subset>
    [+cws]` over its queries alone (with `num_queries@<subset>`); detection
    and PRW paper rows as the options ask.
  """
  num = len(gallery_info.image_ids)
  gallery = person_search.Gallery(
      image_ids=gallery_info.image_ids, gt_boxes=gallery_info.gt_boxes,
      gt_pids=gallery_info.gt_pids,
      dets=[gal.dets(r) for r in range(num)],
      feats=[gal.feats(r) for r in range(num)], cameras=gallery_info.cameras)
  queries = person_search.Queries(
      feats=qry.query_embeddings, image_ids=query_info.image_ids,
      pids=query_info.pids, cameras=query_info.cameras,
      galleries=query_info.galleries, boxes=query_info.boxes)
  det_thresh = options.det_thresh
  results: dict[str, Any] = {"protocol": protocol, "det_thresh": det_thresh,
                             "num_queries": len(query_info.pids),
                             "num_gallery_images": num}
  context = None
  if options.cbgm:
    k1, k2 = cbgm.DEFAULTS[protocol]
    context = cbgm.Context(
        feats=[cbgm.query_context(
            qry.query_embeddings[r], query_info.boxes[r], qry.dets(r)[:, :4],
            qry.dets(r)[:, 4], qry.feats(r), det_thresh=det_thresh)
               for r in range(len(query_info.pids))],
        k1=options.cbgm_k1 or k1, k2=options.cbgm_k2 or k2)
  # (CWS, CBGM context, row suffix) of every ranking asked for.
  weightings = [(cws, ctx, suffix + csuffix)
                for cws, suffix in ((False, ""), (True, "+cws"))
                if cws <= options.cws
                for ctx, csuffix in ((None, ""), (context, "+cbgm"))
                if csuffix == "" or context is not None]
  sizes = base = None
  if protocol == "cuhk":
    requested = options.gallery_sizes
    _, base = cuhk_sizes(requested, query_info.galleries)
    problem = full_set_problem(gallery_info, query_info, base)
    sizes, base = cuhk_sizes(requested, query_info.galleries,
                             full_set=problem is None)
    if problem:
      full = person_search.FULL_SET in sizes
      logging.warning("Full set %s: %s", "evaluated anyway" if full
                      else "skipped", problem)
      results["full_set_note"] = problem
    if person_search.FULL_SET in sizes:
      results["full_set_base"] = base
  subsets = [("", None)] + sorted(query_info.subsets.items())
  for subset, idx in subsets:
    if idx is not None and not len(idx):
      continue
    part = queries if idx is None else _select(queries, idx)
    at = f"@{subset}" if subset else ""
    if idx is not None:
      results[f"num_queries{at}"] = len(idx)
    for cws, ctx, suffix in weightings:
      if ctx is not None and idx is not None:
        ctx = cbgm.Context([ctx.feats[i] for i in idx], ctx.k1, ctx.k2)
      if protocol == "prw":
        for name, multi_view in (("all_cameras", False),
                                 ("cross_camera", True)):
          results[f"search/{name}{at}{suffix}"] = (
              person_search.eval_search_prw(
                  gallery, part, det_thresh=det_thresh,
                  multi_view=multi_view, cws=cws, cbgm=ctx).as_dict())
        continue
      by_size = person_search.eval_search_cuhk(
          gallery, part, sizes, det_thresh=det_thresh, full_set_base=base,
          duplicates=options.duplicates, cws=cws, cbgm=ctx)
      for n in sizes:
        results[f"search/{_size_name(n)}{at}{suffix}"] = by_size[n].as_dict()
  if options.prw_paper:
    frames = [{"boxes": gal.dets(r)[:, :4], "scores": gal.dets(r)[:, 4],
               "embeddings": gal.feats(r), "gt_boxes": gallery_info.gt_boxes[r],
               "gt_pids": gallery_info.gt_pids[r],
               "camera": gallery_info.cameras[r]} for r in range(num)]
    results.update(prw_paper.run(frames, qry.query_embeddings,
                                 query_info.pids, query_info.cameras,
                                 cws=options.cws))
  if with_detection:
    for name, labeled_only in (("all", False), ("labeled", True)):
      results[f"detection/{name}"] = detection.eval_detection(
          gallery.dets, gallery.gt_boxes, gallery.gt_pids,
          det_thresh=DETECTION_THRESH,
          labeled_only=labeled_only).as_dict()
    if len(qry):
      results["query_from_detection"] = float(
          np.mean(qry.query_from_detection))
  return results
