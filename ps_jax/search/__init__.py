"""Search people in your own images with a trained ps_jax model.

  from ps_jax import experiment
  from ps_jax import search
  from ps_jax.eval.predict import Predictor

  exp, variables, step = experiment.restore("runs/synthetic")
  predictor = Predictor(exp.system, variables, exp.data, step=step)
  index = search.GalleryIndex.build(
      predictor, search.find_images(["photos/"]),
      model_info={"workdir": "runs/synthetic"})
  index.save("gallery_index")          # reload with GalleryIndex.load
  q = search.embed_query(predictor, search.read_image("q.jpg"),
                         (120, 40, 180, 210))
  hits = search.search(index, q, top_k=5)
  search.render_results(search.read_image("q.jpg"), (120, 40, 180, 210),
                        hits).save("hits.png")

The index records the predictor's step and fingerprint and refuses
another model (`GalleryIndex.check_model`; `GalleryIndex.reembed` moves an
index to a new one).

Modules: images (reading image files and TFDS records), identity (which
model made an index), index (GalleryIndex, on-disk format), query (ranking,
Hit), ann (approximate search of large indexes with FAISS, an optional
dependency: `pip install 'ps_jax[faiss]'`), visualize (result pictures),
cli (the `ps-search` command).
"""

from ps_jax.search.images import find_images
from ps_jax.search.images import read_image
from ps_jax.search.images import SearchError
from ps_jax.search.index import GalleryIndex
from ps_jax.search.index import IndexingReport
from ps_jax.search.index import Predictor
from ps_jax.search.query import embed_crop
from ps_jax.search.query import embed_query
from ps_jax.search.query import Hit
from ps_jax.search.query import search
from ps_jax.search.visualize import render_results

__all__ = [
    "find_images", "GalleryIndex", "IndexingReport", "Predictor",
    "read_image", "SearchError", "embed_crop", "embed_query", "Hit", "search",
    "render_results",
]
