"""Tests for ps_jax.losses.rcnn against per-sample loops written from
torchvision's rpn / fastrcnn_loss and Caffe's SmoothL1Loss (sigma)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.losses import rcnn


def _sl1(x, beta):
  ax = abs(x)
  if beta == 0:
    return ax
  return 0.5 * ax * ax / beta if ax < beta else ax - 0.5 * beta


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9.0, 1.0])
def test_smooth_l1_values(beta):
  xs = np.array([-2.0, -0.5, -0.05, 0.0, 0.05, 0.11, 0.5, 3.0], np.float32)
  np.testing.assert_allclose(rcnn.smooth_l1(jnp.asarray(xs), beta),
                             [_sl1(float(x), beta) for x in xs], rtol=1e-6)


def test_smooth_l1_is_caffe_sigma():
  # Caffe: 0.5 (sigma x)^2 if |x| < 1 / sigma^2 else |x| - 0.5 / sigma^2.
  sigma = 3.0
  for x in (0.05, 0.2, 1.0):
    caffe = (0.5 * (sigma * x) ** 2 if x < 1 / sigma**2
             else x - 0.5 / sigma**2)
    np.testing.assert_allclose(rcnn.smooth_l1(jnp.float32(x), 1 / sigma**2),
                               caffe, rtol=1e-6)


def test_rpn_losses_equal_loop():
  rng = np.random.default_rng(0)
  b, p = 2, 50
  logits = rng.normal(0, 2, (b, p)).astype(np.float32)
  deltas = rng.normal(0, 1, (b, p, 4)).astype(np.float32)
  target = rng.normal(0, 1, (b, p, 4)).astype(np.float32)
  draw = rng.uniform(size=(b, p))
  pos, neg = draw < 0.1, (draw >= 0.1) & (draw < 0.5)
  got = rcnn.rpn_losses(jnp.asarray(logits), jnp.asarray(deltas),
                        jnp.asarray(pos), jnp.asarray(neg),
                        jnp.asarray(target))
  drawn = [(i, j) for i in range(b) for j in range(p) if pos[i, j] or neg[i, j]]
  bce = 0.0
  for i, j in drawn:
    prob = 1 / (1 + math.exp(-float(logits[i, j])))
    bce -= math.log(prob) if pos[i, j] else math.log(1 - prob)
  box = sum(_sl1(float(deltas[i, j, c] - target[i, j, c]), 1 / 9)
            for i, j in drawn if pos[i, j] for c in range(4))
  np.testing.assert_allclose(got["loss_objectness"], bce / len(drawn),
                             rtol=1e-5)
  np.testing.assert_allclose(got["loss_rpn_box"], box / len(drawn), rtol=1e-5)


def test_box_head_losses_equal_loop():
  rng = np.random.default_rng(1)
  s, c = 12, 3
  logits = rng.normal(0, 1, (s, c)).astype(np.float32)
  deltas = rng.normal(0, 1, (s, c, 4)).astype(np.float32)
  target = rng.normal(0, 1, (s, 4)).astype(np.float32)
  labels = rng.integers(0, c, s).astype(np.int32)
  valid = np.arange(s) < 9
  got = rcnn.box_head_losses(jnp.asarray(logits), jnp.asarray(deltas),
                             jnp.asarray(labels), jnp.asarray(valid),
                             jnp.asarray(target))
  ce = box = 0.0
  for i in range(9):
    z = logits[i].astype(np.float64)
    ce -= z[labels[i]] - math.log(np.exp(z).sum())
    if labels[i] > 0:
      box += sum(_sl1(float(deltas[i, labels[i], k] - target[i, k]), 1.0)
                 for k in range(4))
  np.testing.assert_allclose(got["loss_cls"], ce / 9, rtol=1e-5)
  np.testing.assert_allclose(got["loss_box"], box / 9, rtol=1e-5)


def test_losses_with_nothing_drawn_are_zero_and_have_gradients():
  f = lambda o: rcnn.rpn_losses(o, jnp.zeros((4, 4)), jnp.zeros(4, bool),
                                jnp.zeros(4, bool), jnp.zeros((4, 4)))
  out = f(jnp.ones(4))
  assert float(out["loss_objectness"]) == 0 and float(out["loss_rpn_box"]) == 0
  g = jax.grad(lambda o: f(o)["loss_objectness"])(jnp.ones(4))
  np.testing.assert_array_equal(g, 0.0)
