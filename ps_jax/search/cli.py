"""`ps-search` / `python -m ps_jax.search`: index your images, find a person.

  ps-search index --workdir RUN --images photos/ --out gallery_index
  ps-search query --index gallery_index --image q.jpg --box 10,20,60,180 \
      --top-k 5 --picture result.png
  ps-search info --index gallery_index

With a crop re-ID model (IDE, MLFN, GLAD: a --workdir trained with
configs/{ide,mlfn,glad}_*.py) every image of --images is one person's crop:
`index` embeds each whole image, and `query --crop person.png` ranks them.

An index records the model that made it (workdir, step, fingerprint of the
weights and system); `query` and `index --append` refuse another model, and
`index --reembed` moves a whole index to the current one. `--exported DIR`
in place of --workdir takes a model exported by `python -m ps_jax.export`
(docs/export.md): no checkpoint, flax or model code needed. For indexes of
10^5 detections and more, `index --ann` adds an approximate FAISS index that
`query` then uses (docs/search.md, "Large indexes"); `index` runs with
several processes under jax.distributed (docs/scaling.md).

Results are JSON on stdout (or in the --json file). User errors (missing
files, bad boxes, an index made by another model...) print one line
"ps-search: error: ..." on stderr and exit with status 2, no traceback.
The model is loaded lazily, so `--help` and `info` start fast.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ps_jax import launch
from ps_jax.search import ann as ann_lib
from ps_jax.search import identity
from ps_jax.search import images as images_lib
from ps_jax.search import index as index_lib
from ps_jax.search import query as query_lib

PROG = "ps-search"
SearchError = index_lib.SearchError
PredictorFactory = Callable[[str, int | None], index_lib.Predictor]


def load_predictor(workdir: str, step: int | None) -> index_lib.Predictor:
  """The trained model of `workdir` (latest checkpoint unless `step`).

  The predictor knows its checkpoint step and fingerprint, which the index
  records and checks.
  """
  if not os.path.isdir(workdir):
    raise SearchError(f"--workdir {workdir}: no such directory (the training "
                      "run's --workdir, holding ckpt/)")
  # pylint: disable=g-import-not-at-top
  from ps_jax import checkpoint
  from ps_jax import experiment
  from ps_jax.data import crops
  from ps_jax.eval import crop_reid
  from ps_jax.eval import predict
  # pylint: enable=g-import-not-at-top
  try:
    exp, variables, step = experiment.restore(workdir, step)
  except checkpoint.CheckpointError as e:
    # A damaged checkpoint is the user's to fix, not a crash: one line.
    raise SearchError(" ".join(str(e).split())) from e
  if isinstance(exp.data, crops.CropPipelineConfig):
    # A crop re-ID model: every indexed image is one person's crop.
    return crop_reid.CropPredictor(exp.system, variables, exp.data,
                                   step=step)
  return predict.Predictor(exp.system, variables, exp.data, step=step)


def load_exported(directory: str) -> index_lib.Predictor:
  """The model exported to `directory` by `python -m ps_jax.export`
  (`ps_jax.exported`: no checkpoint, flax or model code needed). It knows
  its step and fingerprint, the same as its workdir's at the same bucket."""
  from ps_jax import exported  # pylint: disable=g-import-not-at-top
  try:
    return exported.load_exported(directory)
  except exported.ExportedModelError as e:
    raise SearchError(str(e)) from e


def _box(text: str) -> tuple[float, ...]:
  parts = text.replace(" ", "").split(",")
  try:
    box = tuple(float(p) for p in parts)
  except ValueError:
    box = ()
  if len(box) != 4:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not x1,y1,x2,y2 (four comma-separated pixel numbers)")
  return box


def _positive(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    v = 0
  if v < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return v


class _Parser(argparse.ArgumentParser):
  """argparse that reports errors as SearchError (exit 2 via main)."""

  def error(self, message: str):  # pytype: disable=signature-mismatch
    raise SearchError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of all subcommands."""
  fmt = argparse.RawDescriptionHelpFormatter
  p = _Parser(prog=PROG, formatter_class=fmt, description=(
      "Find a person in your own images with a trained ps_jax model.\n\n"
      "1. index: detect every person in a folder of images once and save\n"
      "   their boxes and re-id embeddings to an index directory.\n"
      "2. query: give one person (an image and a box, or a crop) and get the\n"
      "   most similar people of the index as JSON and as a picture.\n"
      "3. info: show what an index holds.\n\n"
      "With a crop re-ID model (IDE, MLFN, GLAD) every image is one\n"
      "person's crop: index a folder of crops, query with --crop."))
  sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                         parser_class=_Parser)

  def model_args(sp: argparse.ArgumentParser, required: bool) -> None:
    model = sp.add_mutually_exclusive_group(required=required)
    model.add_argument(
        "--workdir",
        help="the training run's directory (train.py --workdir); its latest "
        "checkpoint is used" + ("" if required else
                                "; default: the one that made the index"))
    model.add_argument(
        "--exported", metavar="DIR",
        help="instead of --workdir, a model exported by python -m "
        "ps_jax.export (docs/export.md): runs without the checkpoint or "
        "the model code" + ("" if required else "; default for an index "
                            "made with --exported: its model"))
    sp.add_argument(
        "--step", type=int, default=None,
        help="checkpoint step to load instead of the latest; default" + (
            " with --append: the step that made the index" if required else
            ": the step that made the index, if --workdir is its"))

  ix = sub.add_parser(
      "index", formatter_class=fmt, help="detect and embed the people of "
      "images into an index directory", description=(
          "Detect and embed every person in the given images and save the\n"
          "index (index.json + .npy arrays) to --out. Progress goes to\n"
          "stderr when it is a terminal; a JSON summary to stdout.\n\n"
          "example:\n  ps-search index --workdir runs/synthetic "
          "--images photos/ 'cam2/*.jpg' --out gallery_index"))
  model_args(ix, required=True)
  src = ix.add_mutually_exclusive_group()
  src.add_argument(
      "--images", nargs="+", metavar="DIR_OR_GLOB",
      help="image files, folders (their .jpg/.jpeg/.png/.bmp/.webp/.tif "
      "files) or quoted glob patterns ('**' for subfolders)")
  src.add_argument(
      "--tfds", metavar="BUILDER_DIR",
      help="index a prepared TFDS dataset instead: its versioned directory "
      "(the one holding dataset_info.json); pick the split with --split")
  ix.add_argument("--split", default="test",
                  help="TFDS split for --tfds (default: %(default)s)")
  ix.add_argument("--out", required=True, metavar="INDEX_DIR",
                  help="index directory to create (or extend with --append)")
  ix.add_argument(
      "--append", action="store_true",
      help="add to an existing index: images already in it and unchanged "
      "(same path, size and modification time) are skipped, changed ones "
      "re-indexed; without it an existing --out is an error. The model "
      "must be the index's (default --step: the index's)")
  ix.add_argument(
      "--reembed", action="store_true",
      help="index every image of the existing --out index again with this "
      "model (latest checkpoint unless --step), replacing all its "
      "embeddings in one atomic save: for an index made by another model "
      "or an older checkpoint. --images/--tfds are optional and added "
      "after")
  ix.add_argument("--batch-size", type=_positive, default=8,
                  help="images per model call (default: %(default)s)")
  ix.add_argument("--recursive", action="store_true",
                  help="also take images from subfolders of folders given "
                  "to --images")
  ix.add_argument(
      "--strict", action="store_true",
      help="stop at the first unreadable or corrupt image; by default such "
      "files are skipped with a warning and listed in the summary")
  ix.add_argument(
      "--save-every", type=int, default=500, metavar="N",
      help="save the index every N images so an interrupted run can go on "
      "with --append (0: only at the end; default: %(default)s)")
  ix.add_argument(
      "--ann", action="store_true",
      help="also build an approximate (FAISS) index in --out, for fast "
      "queries of large indexes (10^5 detections and up; needs pip install "
      "'ps_jax[faiss]'); alone with an existing --out, just (re)build it. "
      "Once built, it is rebuilt whenever the index changes")
  ix.add_argument("--ann-nlist", type=_positive, default=None, metavar="N",
                  help="inverted lists of the FAISS index (default: the "
                  "power of 2 nearest sqrt(detections))")
  # Several processes (docs/scaling.md): each runs the model on its share
  # of every batch (ps_jax.search.distributed); process 0 writes the index.
  launch.add_distributed_args(ix)

  q = sub.add_parser(
      "query", formatter_class=fmt, help="rank the people of an index "
      "against one query person", description=(
          "Embed the query person and rank every detection of the index by\n"
          "cosine similarity (or det score x similarity with --cws).\n\n"
          "examples:\n  ps-search query --index gallery_index --image q.jpg "
          "--box 120,40,180,210\n  ps-search query --index gallery_index "
          "--crop person.png --top-k 10 --picture hits.png"))
  model_args(q, required=False)
  q.add_argument("--index", required=True, metavar="INDEX_DIR",
                 help="directory written by `ps-search index`")
  qsrc = q.add_mutually_exclusive_group(required=True)
  qsrc.add_argument("--image", metavar="IMAGE",
                    help="image holding the query person (give --box)")
  qsrc.add_argument("--crop", metavar="CROP",
                    help="image showing only the query person (no --box)")
  q.add_argument("--box", type=_box, metavar="x1,y1,x2,y2",
                 help="the query person in --image, in pixels (write "
                 "--box=-3,10,50,90 when x1 is negative)")
  q.add_argument("--top-k", type=_positive, default=5,
                 help="number of hits (default: %(default)s)")
  q.add_argument(
      "--cws", action="store_true",
      help="rank by confidence-weighted similarity (PRW paper): detection "
      "score x similarity, so unsure detections sink")
  q.add_argument("--det-threshold", type=float, default=0.0, metavar="T",
                 help="ignore detections scoring below T (default: "
                 "%(default)s)")
  q.add_argument("--one-per-image", action="store_true",
                 help="at most one hit (the best) per gallery image")
  q.add_argument("--exclude-query-image", action="store_true",
                 help="leave the query image out if it is in the index")
  q.add_argument("--json", metavar="OUT.json",
                 help="write the JSON result there instead of stdout")
  q.add_argument("--picture", metavar="OUT.png",
                 help="save a picture: the query crop beside the top-k hits")
  q.add_argument("--tile-height", type=_positive, default=256,
                 help="pixel height of each image in the picture (default: "
                 "%(default)s)")
  q.add_argument(
      "--search", choices=ann_lib.SEARCH_MODES, default="auto",
      help="exact: compare with every detection; ann: use the index's FAISS "
      "index (made by index --ann), an error if it has none or it is stale; "
      "auto (default): ann if the index has a usable one, else exact")
  q.add_argument("--nprobe", type=_positive, default=None, metavar="N",
                 help="FAISS lists scanned per query (default: the one "
                 "recorded with the FAISS index; more: slower, better "
                 "recall)")

  info = sub.add_parser("info", help="summarize an index (no model needed)",
                        description="Print a JSON summary of an index.")
  info.add_argument("--index", required=True, metavar="INDEX_DIR",
                    help="directory written by `ps-search index`")
  return p


def _model_info(workdir: str, step: int | None,
                predictor: index_lib.Predictor) -> dict[str, Any]:
  # The loaded step, if the predictor knows it, pins the exact weights even
  # when training later writes newer checkpoints into the same workdir.
  return {"workdir": os.path.abspath(workdir),
          "step": None if step is None else int(step),
          **identity.model_identity(predictor)}


def _default_step(args: argparse.Namespace, workdir: str,
                  index: index_lib.GalleryIndex) -> int | None:
  """--step, else the index's step if the model is the index's workdir."""
  if args.step is not None or index.model_info.get("workdir") != (
      os.path.abspath(workdir)):
    return args.step
  return index.model_info.get("step")


def _load_model(factory: PredictorFactory, workdir: str, step: int | None,
                index_step: bool) -> index_lib.Predictor:
  try:
    return factory(workdir, step)
  except FileNotFoundError as e:
    if not index_step:
      raise
    raise SearchError(
        f"{e} (step {step} made the index: give --step, or re-embed the "
        "index with the latest checkpoint: ps-search index --reembed)") from e


def _exported_model(args: argparse.Namespace, directory: str
                    ) -> tuple[index_lib.Predictor, dict[str, Any]]:
  """The exported model in `directory` and its description for the index."""
  if args.step is not None:
    raise SearchError("--step goes with --workdir: an exported model holds "
                      "the weights of one step")
  predictor = load_exported(directory)
  return predictor, {"exported": os.path.abspath(directory),
                     **identity.model_identity(predictor)}


def _warn(message: str) -> None:
  print(f"{PROG}: warning: {message}", file=sys.stderr)


def _cmd_index(args: argparse.Namespace, factory: PredictorFactory
               ) -> dict | None:
  exists = index_lib.GalleryIndex.exists(args.out)
  if args.ann and exists and not (args.images or args.tfds or args.reembed):
    # Only (re)build the FAISS index of an existing index: no model needed.
    index = index_lib.GalleryIndex.load(args.out, mmap=True)
    return {"index": os.path.abspath(args.out), **index.summary(),
            "ann": ann_lib.refresh(args.out, index, build=True,
                                   nlist=args.ann_nlist)}
  if args.reembed and not exists:
    raise SearchError(f"--reembed: --out {args.out} holds no index to "
                      "re-embed")
  if exists and not (args.append or args.reembed):
    raise SearchError(f"--out {args.out} already holds an index: pass "
                      "--append to add images, --reembed to re-embed it with "
                      "this model, or choose a new directory")
  if args.images is None and args.tfds is None and not args.reembed:
    raise SearchError("index needs --images or --tfds (or --reembed to "
                      "re-embed the index in --out)")
  if args.images is not None:
    paths = images_lib.find_images(args.images, recursive=args.recursive)
  elif args.tfds is not None and not os.path.isdir(args.tfds):
    raise SearchError(f"--tfds {args.tfds}: no such directory")
  index = index_lib.GalleryIndex.load(args.out) if exists else None
  writer = _start_processes(args)
  step = args.step
  if args.exported is not None:
    predictor, info = _exported_model(args, args.exported)
  else:
    if index is not None and not args.reembed:
      # Keep extending with the weights that made the index, even if
      # training has written newer checkpoints since.
      step = _default_step(args, args.workdir, index)
    predictor = _load_model(factory, args.workdir, step,
                            index_step=step is not None and args.step is None)
    info = _model_info(args.workdir, step, predictor)
  if not writer.single:
    predictor = writer.shared(predictor)
  save_to = args.out if writer.writes else None
  opts = dict(batch_size=args.batch_size,
              on_error="raise" if args.strict else "skip")
  reembedded = index_lib.IndexingReport()
  if args.reembed:
    reembedded = index.reembed(predictor, model_info=info, save_to=save_to,
                               **opts)
  if index is None:
    index = index_lib.GalleryIndex(predictor.embedding_dim, info)
  report = index_lib.IndexingReport()
  opts.update(model_info=info, save_to=save_to,
              save_every=args.save_every)
  if args.images is not None:
    report = index.add(predictor, paths, **opts)
  elif args.tfds is not None:
    report = index.add_tfds(predictor, args.tfds, args.split, **opts)
  if len(index) == 0:
    raise SearchError("no image could be indexed: " + "; ".join(
        f"{n}: {why}" for n, why in report.failed[:5]))
  failed = reembedded.failed + report.failed
  result = {"index": os.path.abspath(args.out), **index.summary(),
            "added": report.added, "reindexed": report.reindexed,
            "unchanged": report.unchanged,
            "reembedded": reembedded.reindexed,
            "new_detections": report.detections + reembedded.detections,
            "failed": [{"image": n, "error": why} for n, why in failed]}
  if not writer.writes:
    return None  # process 0 reports
  ann = ann_lib.refresh(args.out, index, build=args.ann, nlist=args.ann_nlist)
  if ann is not None:
    result["ann"] = ann
  return result


class _Processes:
  """The processes of an `index` run: one, or several under
  jax.distributed (jax imported only then)."""

  def __init__(self, index: int = 0, count: int = 1):
    self.single = count == 1
    self.writes = index == 0  # process 0 writes the index and prints

  @staticmethod
  def shared(predictor: index_lib.Predictor) -> index_lib.Predictor:
    # pylint: disable-next=g-import-not-at-top
    from ps_jax.search import distributed
    return distributed.SharedPredictor(predictor)


def _start_processes(args: argparse.Namespace) -> _Processes:
  """jax.distributed when the flags or the environment ask for it."""
  # pylint: disable=g-import-not-at-top
  import jax
  from ps_jax import mesh
  # pylint: enable=g-import-not-at-top
  try:
    mesh.initialize_from_args(args)
  except ValueError as e:
    raise SearchError(str(e)) from e
  return _Processes(jax.process_index(), jax.process_count())


def _cmd_query(args: argparse.Namespace, factory: PredictorFactory) -> dict:
  if args.image is not None and args.box is None:
    raise SearchError("--image needs --box x1,y1,x2,y2 (or give --crop)")
  if args.crop is not None and args.box is not None:
    raise SearchError("--box goes with --image, not with --crop")
  for out in (args.json, args.picture):  # fail before loading the model
    if out is not None:
      _check_parent(out)
  # Memory-mapped: a FAISS search reads only its candidates' embeddings.
  index = index_lib.GalleryIndex.load(args.index, mmap=True)
  ann = ann_lib.for_query(args.index, index, args.search, args.nprobe,
                          warn=_warn)
  workdir, exported = args.workdir, args.exported
  if workdir is None and exported is None:
    # The index's model: its workdir, else the exported model that made it.
    workdir = index.model_info.get("workdir")
    exported = None if workdir else index.model_info.get("exported")
  if workdir is None and exported is None:
    raise SearchError(f"{args.index} does not record its model: pass "
                      "--workdir or --exported")
  # The weights that made the index embed the query, even if training has
  # written newer checkpoints since.
  step = None if exported is not None else _default_step(args, workdir,
                                                          index)
  image_path = args.image or args.crop
  image = images_lib.read_image(image_path)
  if args.crop is not None:
    box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
  else:
    box = query_lib.check_box(args.box, image.shape[1], image.shape[0],
                              f"--box for {image_path}", warn=_warn)
  if exported is not None:
    predictor, info = _exported_model(args, exported)
  else:
    predictor = _load_model(factory, workdir, step,
                            index_step=step is not None and args.step is None)
    info = _model_info(workdir, step, predictor)
  if not index.check_model(info, allow_unknown=True):
    why = ("the index records no fingerprint of its model (format version "
           "1 indexes do not); re-embed it to record one: ps-search index "
           "--reembed" if info.get("fingerprint") else
           "the model has no fingerprint")
    _warn(f"cannot check that {args.index} holds embeddings of "
          f"{identity.model_label(info)}, so similarities may be "
          f"meaningless: {why}")
  index.check_predictor(predictor)
  emb = query_lib.embed_query(predictor, image, box)
  exclude = [os.path.abspath(image_path)] if args.exclude_query_image else []
  hits = query_lib.search(index, emb, top_k=args.top_k,
                          det_threshold=args.det_threshold, cws=args.cws,
                          one_per_image=args.one_per_image,
                          exclude_images=exclude, ann=ann)
  result = {
      "query": {"image": os.path.abspath(image_path),
                "box": [round(v, 3) for v in box],
                "kind": "crop" if args.crop is not None else "image+box"},
      "index": os.path.abspath(args.index),
      "model": info,
      "ranking": "cws" if args.cws else "similarity",
      "search": {"method": "exact"} if ann is None else ann.describe(),
      "hits": [h.to_dict() for h in hits],
  }
  if args.box is not None and tuple(args.box) != tuple(box):
    result["query"]["box_given"] = list(args.box)  # before clipping
  if args.picture is not None:
    from ps_jax.search import visualize  # pylint: disable=g-import-not-at-top
    picture = visualize.render_results(
        image, box, hits, load_image=lambda h: index.load_image(h.image_index),
        tile_height=args.tile_height)
    _save(lambda p: picture.save(p, format="PNG"), args.picture)
    result["picture"] = os.path.abspath(args.picture)
  return result


def _write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def _check_parent(path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise SearchError(f"{path}: folder {parent} does not exist")


def _save(write: Callable[[str], None], path: str) -> None:
  _check_parent(path)
  try:
    write(path)
  except OSError as e:
    raise SearchError(f"{path}: cannot write ({e})") from e


def main(argv: Sequence[str] | None = None,
         predictor_factory: PredictorFactory | None = None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 2 user error).

  Args:
    argv: arguments without the program name (default: sys.argv[1:]).
    predictor_factory: (workdir, step) -> Predictor; default loads the
      checkpoint with `load_predictor`. Tests
      inject fakes here.
  """
  factory = predictor_factory or load_predictor
  try:
    args = build_parser().parse_args(argv)
    if args.command == "info":
      result = {"index": os.path.abspath(args.index),
                **index_lib.GalleryIndex.load(args.index).summary(),
                "ann": ann_lib.info(args.index)}
    elif args.command == "index":
      result = _cmd_index(args, factory)
    else:
      result = _cmd_query(args, factory)
    if result is None:
      return 0
    text = json.dumps(result, indent=1)
    if getattr(args, "json", None):
      _save(functools.partial(_write_text, text=text + "\n"), args.json)
    else:
      print(text)
  except (SearchError, FileNotFoundError, NotADirectoryError,
          PermissionError) as e:
    msg = str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
      msg = f"{e.filename}: {msg}"
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2
  return 0
