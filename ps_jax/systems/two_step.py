"""Two-step person search (Zheng et al., PRW): a detector, then a crop re-ID net.

  TwoStepSystem(detector=<a PersonSearchSystem>, reid=<a CropReIDSystem>,
                options=TwoStepOptions(crop_hw=(96, 48), max_crops=20))

Prediction, one jitted function per batch of scenes (`predict`):
  1. the detector predicts its boxes and scores (its own embeddings are
     dropped; AlignPS's or OIM's re-ID branch is simply unused);
  2. the `max_crops` highest-scoring valid detections of each image are
     kept (a static top-k: shapes stay fixed);
  3. each box is cut from the detector's input image and resized to the
     re-ID net's crop size by `roi_align.crop_and_resize` (an exact
     box-filtered bilinear resize, batched over images and boxes);
  4. the re-ID net embeds the B x max_crops crops in one call;
  5. the query's embedding comes from its ground-truth box, cut and
     embedded the same way (`query_from_detection` is False).

Crops come from the detector's input image, the original resized to the
pipeline's test scale (both axes independently), not from the original
pixels: a crop resized to (h, w) ignores aspect ratio either way, so only
the resampling differs (one more bilinear resize). The two nets must share
the input normalization (checked where the system is built,
`ps_jax.experiment`), since the crops are cut from an already normalized
image. GLAD gets no keypoints here: it uses its fixed-ratio parts, as for
any crop without them.

The two stages are trained separately, each by its own config, into its
own workdir (`ps_jax.train.stages`); this system is only predicted with.
`loss` and `init_from` raise ValueError saying so. `init` initialises both
nets (for `python -m ps_jax.eval --untrained`).

Variables: {"detector": <the detector's variables>, "reid": <the re-ID
net's variables>}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ps_jax import checks
from ps_jax.ops import roi_align
from ps_jax.systems import base


@dataclasses.dataclass(frozen=True)
class TwoStepOptions:
  """The `model` section of a two-step config.

  Attributes:
    crop_hw: (h, w) the crops are resized to: the re-ID net's input size
      (its `data.image_hw`; filled in from the re-ID config when absent).
    max_crops: detections per image that are cut and embedded, the
      highest-scoring first; the others are dropped. Bounds the re-ID work
      per image (the detector keeps up to its `max_dets`).
    crop_sampling: at most this many bilinear samples per output pixel and
      axis when shrinking (`crop_and_resize`'s `max_sampling_grid`): 4 is
      exact for boxes up to 4x the crop size on each axis.
  """
  crop_hw: tuple[int, int] = (256, 128)
  max_crops: int = 20
  crop_sampling: int = 4

  def __post_init__(self):
    checks.require(isinstance(self.crop_hw, tuple) and len(self.crop_hw) == 2
                   and all(checks.is_integer(v) and v >= 8
                           for v in self.crop_hw), "model.crop_hw",
                   self.crop_hw, "(h, w), both integers >= 8")
    for name in ("max_crops", "crop_sampling"):
      value = getattr(self, name)
      checks.require(checks.is_integer(value) and value >= 1,
                     f"model.{name}", value, "an integer >= 1")


def top_detections(out: Mapping[str, jax.Array], k: int
                   ) -> dict[str, jax.Array]:
  """The `k` highest-scoring valid detections of each image.

  Args:
    out: boxes f32[B, M, 4], scores f32[B, M], valid bool[B, M].
    k: detections kept; if k >= M all M are kept, in score order.
  Returns:
    boxes f32[B, k', 4], scores f32[B, k'] (0 where not valid), valid
    bool[B, k'], k' = min(k, M); ties keep the lower index first.
  """
  k = min(int(k), out["scores"].shape[1])
  ranked = jnp.where(out["valid"], out["scores"], -jnp.inf)
  _, idx = jax.lax.top_k(ranked, k)
  take = lambda a: jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (
      a.ndim - 2)), axis=1)
  valid = take(out["valid"])
  return {"boxes": take(out["boxes"]),
          "scores": jnp.where(valid, take(out["scores"]), 0.0),
          "valid": valid}


@dataclasses.dataclass(frozen=True)
class TwoStepSystem:
  """A detector and a crop re-ID net behind the person-search contract."""
  detector: Any  # base.PersonSearchSystem
  reid: Any      # base.CropReIDSystem
  options: TwoStepOptions = TwoStepOptions()

  @property
  def embedding_dim(self) -> int:
    return int(self.reid.embedding_dim)

  def init(self, rng: jax.Array, images: jax.Array) -> tuple[Any, None]:
    det_key, reid_key = jax.random.split(rng)
    detector, _ = self.detector.init(det_key, images)
    crops = jnp.zeros((1, *self.options.crop_hw, 3), jnp.float32)
    reid, _ = self.reid.init(reid_key, crops)
    return {"detector": detector, "reid": reid}, None

  def is_frozen(self, path: Sequence[str]) -> bool:
    del path
    return False

  def loss(self, params, model_state, extra, batch, rng):
    raise ValueError("the two-step system is not trained as one model: "
                     "train its detector and its re-ID net with their own "
                     "configs (python train.py --config=configs/"
                     "two_step_synthetic.py does both)")

  def update_extra(self, extra: Any, aux: Any) -> Any:
    del aux
    return extra

  def init_from(self, variables: Any, path: str, *,
                normalization: str) -> Any:
    raise ValueError(f"init_from={path!r}: a two-step system takes no "
                     "weights of its own; set init_from in its detector or "
                     "re-ID config")

  def embed_boxes(self, variables: Any, images: jax.Array,
                  boxes: jax.Array) -> jax.Array:
    """f32[B, R, D] L2-normalized re-ID embeddings of boxes f32[B, R, 4]
    (xyxy, pixels of `images` f32[B, H, W, 3])."""
    b, r = boxes.shape[:2]
    crops = roi_align.crop_and_resize(
        images, boxes, self.options.crop_hw,
        max_sampling_grid=self.options.crop_sampling)
    crops = crops.reshape(b * r, *crops.shape[2:])
    emb = self.reid.embed(variables, {
        "image": crops,
        "keypoints": jnp.zeros((b * r, 4, 2), jnp.float32),
        "has_keypoints": jnp.zeros((b * r,), bool)})
    return emb.reshape(b, r, -1)

  def predict(self, variables: Any, batch: Mapping[str, jax.Array],
              query_boxes: jax.Array) -> dict[str, jax.Array]:
    det = self.detector.predict(variables["detector"], batch, query_boxes)
    top = top_detections(det, self.options.max_crops)
    sy, sx = jnp.moveaxis(base.network_scale(batch), -1, 0)  # [B] each
    to_net = jnp.stack([sx, sy, sx, sy], axis=-1)[:, None, :]  # [B, 1, 4]
    boxes = jnp.concatenate(
        [top["boxes"], jnp.asarray(query_boxes, jnp.float32)[:, None]],
        axis=1) * to_net
    emb = self.embed_boxes(variables["reid"], batch["image"], boxes)
    return {"boxes": top["boxes"], "scores": top["scores"],
            "embeddings": jnp.where(top["valid"][..., None], emb[:, :-1],
                                    0.0),
            "valid": top["valid"], "query_embedding": emb[:, -1],
            "query_from_detection": jnp.zeros(emb.shape[:1], bool)}


def from_parts(detector: Any, reid: Any, model: Mapping[str, Any]
               ) -> TwoStepSystem:
  """A TwoStepSystem from built stage systems and the `model` section.

  Raises:
    ValueError: a stage of the wrong kind, or an unknown or out-of-range
      option (named).
  """
  if not isinstance(detector, base.PersonSearchSystem):
    raise ValueError(f"detector: expected a person-search system, got "
                     f"{type(detector).__name__}")
  if not isinstance(reid, base.CropReIDSystem):
    raise ValueError(f"reid: expected a crop re-ID system (ide, mlfn, "
                     f"glad), got {type(reid).__name__}")
  return TwoStepSystem(detector=detector, reid=reid,
                       options=base.typed("model", TwoStepOptions, model))


__all__ = ["TwoStepOptions", "TwoStepSystem", "from_parts", "top_detections"]
