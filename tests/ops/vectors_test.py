"""Tests for ps_jax.ops.vectors against numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.ops import vectors


def np_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def test_l2_normalize_hand_values_and_zero_vector():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(vectors.l2_normalize(x), [[0.6, 0.8], [0, 0]],
                             rtol=1e-6)
  g = jax.grad(lambda x: vectors.l2_normalize(x).sum())(x)
  assert np.all(np.isfinite(g))
  # Below the eps floor the vector is divided by eps, not blown up to norm 1.
  tiny = jnp.array([3e-13, 4e-13])
  np.testing.assert_allclose(vectors.l2_normalize(tiny), [0.3, 0.4],
                             rtol=1e-5)


@pytest.mark.parametrize("shape,axis", [((5, 8), -1), ((2, 3, 6), 1),
                                        ((7,), 0)])
def test_l2_normalize_matches_reference(shape, axis):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = vectors.l2_normalize(x, axis=axis)
  assert got.dtype == jnp.float32 and got.shape == shape
  np.testing.assert_allclose(got, np_normalize(x, axis), rtol=1e-6,
                             atol=1e-7)
  jitted = jax.jit(vectors.l2_normalize, static_argnames="axis")
  np.testing.assert_allclose(jitted(x, axis=axis), got, rtol=1e-6)
  np.testing.assert_allclose(
      np.linalg.norm(np.asarray(got, np.float64), axis=axis), 1.0, rtol=1e-6)


def test_l2_normalize_vmap_and_bfloat16_input():
  x = np.random.default_rng(1).normal(size=(4, 3, 16)).astype(np.float32)
  np.testing.assert_allclose(jax.vmap(vectors.l2_normalize)(x),
                             vectors.l2_normalize(x), rtol=1e-6)
  got = vectors.l2_normalize(jnp.asarray(x, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_normalize(x), atol=1e-2)
