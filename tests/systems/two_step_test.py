"""Tests of the two-step system (ps_jax/systems/two_step.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.systems import base
from ps_jax.systems import reid
from ps_jax.systems import two_step


def test_top_detections_keeps_the_best_valid_ones_in_order():
  out = {"boxes": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4),
         "scores": np.array([[0.1, 0.9, 0.95, 0.7], [0.3, 0.2, 0.1, 0.0]],
                            np.float32),
         "valid": np.array([[True, True, False, True],
                            [False, True, False, False]])}
  top = two_step.top_detections(out, 2)
  np.testing.assert_array_equal(top["valid"], [[True, True], [True, False]])
  np.testing.assert_allclose(top["scores"], [[0.9, 0.7], [0.2, 0.0]])
  np.testing.assert_array_equal(top["boxes"][0], out["boxes"][0, [1, 3]])
  np.testing.assert_array_equal(top["boxes"][1, 0], out["boxes"][1, 1])
  assert two_step.top_detections(out, 9)["scores"].shape == (2, 4)


@dataclasses.dataclass(frozen=True)
class _FixedDetector:
  """Detections given in advance (original pixels), whatever the image."""
  boxes: tuple
  scores: tuple
  valid: tuple
  embedding_dim: int = 2
  init = is_frozen = loss = update_extra = init_from = (
      lambda *a, **k: None)

  def predict(self, variables, batch, query_boxes):
    del variables
    b = batch["image"].shape[0]
    m = len(self.scores)
    return {"boxes": jnp.broadcast_to(jnp.asarray(self.boxes), (b, m, 4)),
            "scores": jnp.broadcast_to(jnp.asarray(self.scores), (b, m)),
            "embeddings": jnp.zeros((b, m, 2)),
            "valid": jnp.broadcast_to(jnp.asarray(self.valid), (b, m)),
            "query_embedding": jnp.zeros((b, 2)),
            "query_from_detection": jnp.ones((b,), bool)}


@dataclasses.dataclass(frozen=True)
class _PixelReID:
  """A 're-ID net' whose embedding is the crop's pixels, normalized: what
  the two-step system cut is then read back exactly."""
  embedding_dim: int = 32 * 16 * 3

  def embed(self, variables, batch):
    del variables
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_ide():
  return reid.from_options(
      "ide", model=dict(depth=50, width_multiplier=0.0625, norm="group"),
      loss={}, predict={}, num_ids=5)


def test_predict_embeds_the_detections_and_the_query_box():
  """Crops are cut from the network image at the original boxes x the
  network scale (each box here maps to a 32 x 16 region, so its crop is an
  exact slice), the query's at its ground-truth box; detections are sorted
  by score, invalid ones get zero embeddings."""
  # Original images are twice the network image: boxes halve.
  det = _FixedDetector(boxes=((8., 4., 40., 68.), (0., 0., 32., 64.),
                              (20., 10., 52., 74.)),
                       scores=(0.9, 0.8, 0.6), valid=(True, False, True))
  system = two_step.TwoStepSystem(det, _PixelReID(), two_step.TwoStepOptions(
      crop_hw=(32, 16), max_crops=3))
  rng = np.random.default_rng(1)
  image = rng.normal(size=(2, 48, 40, 3)).astype(np.float32)
  batch = {"image": image, "image_hw": np.array([[48, 40]] * 2, np.int32),
           "orig_hw": np.array([[96, 80]] * 2, np.int32)}
  query = np.array([[2., 6., 34., 70.], [40., 20., 72., 84.]], np.float32)
  out = jax.jit(system.predict)({"detector": {}, "reid": {}}, batch, query)

  def embed(crop):
    return crop.reshape(-1) / np.linalg.norm(crop)

  for b in range(2):
    np.testing.assert_allclose(out["embeddings"][b, 0],
                               embed(image[b, 2:34, 4:20]), atol=1e-6)
    np.testing.assert_allclose(out["embeddings"][b, 1],
                               embed(image[b, 5:37, 10:26]), atol=1e-6)
  np.testing.assert_array_equal(out["embeddings"][:, 2], 0.0)
  np.testing.assert_allclose(out["query_embedding"][0],
                             embed(image[0, 3:35, 1:17]), atol=1e-6)
  np.testing.assert_allclose(out["query_embedding"][1],
                             embed(image[1, 10:42, 20:36]), atol=1e-6)
  np.testing.assert_allclose(out["scores"][0], [0.9, 0.6, 0.0])
  np.testing.assert_allclose(out["boxes"][0, 1], det.boxes[2])
  np.testing.assert_array_equal(out["valid"][0], [True, True, False])
  assert not out["query_from_detection"].any()
  assert system.embedding_dim == 32 * 16 * 3


def test_it_is_predicted_with_not_trained(tiny_ide):
  ide = tiny_ide
  system = two_step.TwoStepSystem(_FixedDetector((), (), ()), ide)
  with pytest.raises(ValueError, match="not trained as one model"):
    system.loss({}, {}, None, {}, None)
  with pytest.raises(ValueError, match="set init_from in its detector"):
    system.init_from({}, "w.npz", normalization="imagenet_rgb")
  assert isinstance(system, base.PersonSearchSystem)


def test_options_and_stage_kinds_are_checked(tiny_ide):
  ide = tiny_ide
  with pytest.raises(ValueError, match="model.max_crops"):
    two_step.TwoStepOptions(max_crops=0)
  with pytest.raises(ValueError, match="model.crop_hw"):
    two_step.TwoStepOptions(crop_hw=(4, 4))
  with pytest.raises(ValueError, match="expected a crop re-ID system"):
    two_step.from_parts(_FixedDetector((), (), ()), _FixedDetector(
        (), (), ()), {})
  with pytest.raises(ValueError, match="expected a person-search system"):
    two_step.from_parts(ide, ide, {})
  with pytest.raises(ValueError, match="unknown key"):
    two_step.from_parts(_FixedDetector((), (), ()), ide, {"crops": 3})
