"""Vector helpers shared by the losses and the models.

Pure `jax.numpy`, jit/vmap/grad friendly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# torch.nn.functional.normalize's default eps.
L2_NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1,
                 eps: float = L2_NORMALIZE_EPS) -> jax.Array:
  """x / max(||x||, eps) along `axis` (torch F.normalize); finite gradient at 0.

  Args:
    x: f32[..., D] vectors (cast to float32).
    axis: axis to normalize.
    eps: norm floor.

  Returns:
    f32[..., D] unit vectors (zero vectors stay zero).
  """
  x = jnp.asarray(x, jnp.float32)
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  # rsqrt(max(sq, eps^2)) == 1 / max(||x||, eps), without the sqrt's infinite
  # derivative at 0.
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
