"""Tests of the AlignPS optimizer groups and schedule against hand values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ps_jax.train import optim


def _params():
  return {
      "backbone": {"stem_conv": {"kernel": jnp.ones((3, 3, 3, 4))},
                   "stage1": {"conv": {"kernel": jnp.ones((1, 1, 4, 4))}}},
      "head": {"conv": {"kernel": jnp.ones((3, 3, 4, 4)),
                        "bias": jnp.ones((4,))},
               "GroupNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))}},
  }


def _frozen(names):
  return names[0] == "backbone" and names[1] in ("stem_conv", "stage1")


def test_param_labels():
  labels = optim.param_labels(_params(), _frozen)
  assert labels["backbone"]["stem_conv"]["kernel"] == optim.FROZEN
  assert labels["backbone"]["stage1"]["conv"]["kernel"] == optim.FROZEN
  assert labels["head"]["conv"]["kernel"] == optim.WEIGHT
  assert labels["head"]["conv"]["bias"] == optim.BIAS
  assert labels["head"]["GroupNorm_0"]["scale"] == optim.NORM
  assert labels["head"]["GroupNorm_0"]["bias"] == optim.NORM


@pytest.mark.parametrize("t,expected", [
    (0, 1 / 3), (250, 1 - 0.5 * (2 / 3)), (499, 1 - (1 / 500) * (2 / 3)),
    (500, 1.0), (999, 1.0), (1000, 0.1), (1499, 0.1), (1500, 0.01),
    (10_000, 0.01)])
def test_step_schedule_matches_mmdet_linear_warmup(t, expected):
  sched = optim.step_schedule(0.01, warmup_steps=500, warmup_ratio=1 / 3,
                              decay_steps=(1000, 1500), decay_factor=0.1)
  np.testing.assert_allclose(float(sched(t)), 0.01 * expected, rtol=1e-6)


def test_sgd_groups_one_step_by_hand():
  params = _params()
  lr, wd = 0.1, 0.01
  tx, _ = optim.make_optimizer(params, lr=lr, momentum=0.9, weight_decay=wd,
                               bias_lr_mult=2.0, warmup_steps=0,
                               clip_norm=None, is_frozen=_frozen)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Frozen: nothing at all, not even weight decay.
  assert float(jnp.abs(updates["backbone"]["stem_conv"]["kernel"]).max()) == 0
  # Weights: -lr * (g + wd * p) on the first momentum step.
  np.testing.assert_allclose(updates["head"]["conv"]["kernel"],
                             -lr * (0.5 + wd * 1.0), rtol=1e-6)
  # Conv bias: 2x lr, no decay.
  np.testing.assert_allclose(updates["head"]["conv"]["bias"], -2 * lr * 0.5,
                             rtol=1e-6)
  # Norm parameters: lr, no decay.
  np.testing.assert_allclose(updates["head"]["GroupNorm_0"]["scale"],
                             -lr * 0.5, rtol=1e-6)


def test_clipping_ignores_frozen_gradients():
  params = _params()
  tx, _ = optim.make_optimizer(params, lr=1.0, momentum=0.0, weight_decay=0.0,
                               bias_lr_mult=1.0, warmup_steps=0, clip_norm=1.0,
                               is_frozen=_frozen)
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["backbone"]["stem_conv"]["kernel"] += 100.0  # frozen: must not count
  grads["head"]["conv"]["bias"] = jnp.array([0.3, 0.0, 0.0, 0.4])  # norm 0.5
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["conv"]["bias"],
                             [-0.3, 0, 0, -0.4], rtol=1e-6)


@pytest.mark.parametrize("norm_weight_decay", [False, True])
def test_norm_weight_decay_decays_only_the_norm_group(norm_weight_decay):
  params = _params()
  lr, wd = 0.1, 0.01
  tx, _ = optim.make_optimizer(params, lr=lr, momentum=0.9, weight_decay=wd,
                               bias_lr_mult=2.0, warmup_steps=0,
                               clip_norm=None, is_frozen=_frozen,
                               norm_weight_decay=norm_weight_decay)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # mmcv's norm_decay_mult=1: -lr * (g + wd * p) on scale and offset alike,
  # at lr x 1 (the offset is not a conv bias); without it, -lr * g.
  norm_want = -lr * (0.5 + (wd * 1.0 if norm_weight_decay else 0.0))
  for name in ("scale", "bias"):
    np.testing.assert_allclose(updates["head"]["GroupNorm_0"][name],
                               norm_want, rtol=1e-6)
  # The other groups do not depend on the option.
  np.testing.assert_allclose(updates["head"]["conv"]["kernel"],
                             -lr * (0.5 + wd * 1.0), rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["conv"]["bias"], -2 * lr * 0.5,
                             rtol=1e-6)
  assert float(jnp.abs(updates["backbone"]["stem_conv"]["kernel"]).max()) == 0


def test_norm_weight_decay_is_a_bool():
  assert not optim.OptimOptions(lr=0.1).norm_weight_decay
  with pytest.raises(ValueError, match="optim.norm_weight_decay=1"):
    optim.OptimOptions(lr=0.1, norm_weight_decay=1)


def test_adamw_groups_one_step_by_hand():
  # Adam's first step, bias-corrected, is lr * g / (|g| + eps) = lr * sign(g)
  # for any gradient size; decoupled decay adds lr * wd * p on top.
  params = _params()
  lr, wd = 0.1, 0.01
  tx, _ = optim.make_optimizer(params, optimizer="adamw", lr=lr,
                               momentum=0.9, b2=0.999, eps=1e-8,
                               weight_decay=wd, bias_lr_mult=2.0,
                               warmup_steps=0, clip_norm=None,
                               is_frozen=_frozen)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  grads["head"]["conv"]["kernel"] = -3.0 * jnp.ones((3, 3, 4, 4))
  updates, state = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["backbone"]["stem_conv"]["kernel"]).max()) == 0
  np.testing.assert_allclose(updates["head"]["conv"]["kernel"],
                             -lr * (-1.0 + wd * 1.0), rtol=1e-5)
  np.testing.assert_allclose(updates["head"]["conv"]["bias"], -2 * lr * 1.0,
                             rtol=1e-5)
  np.testing.assert_allclose(updates["head"]["GroupNorm_0"]["scale"],
                             -lr * 1.0, rtol=1e-5)
  # A second step with the gradient halved, against Adam's bias-corrected
  # moments written out here (float32 inside, hence the tolerance).
  g1, g2 = 0.5, 0.25
  m = 0.9 * (0.1 * g1) + 0.1 * g2
  v = 0.999 * (0.001 * g1**2) + 0.001 * g2**2
  m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
  grads2 = jax.tree.map(lambda p: g2 * jnp.ones_like(p), params)
  updates2, _ = tx.update(grads2, state, params)
  np.testing.assert_allclose(updates2["head"]["GroupNorm_0"]["scale"],
                             -lr * m_hat / (np.sqrt(v_hat) + 1e-8),
                             rtol=1e-4)


def test_optimizer_name_is_checked():
  assert optim.OptimOptions(lr=0.1).optimizer == "sgd"
  with pytest.raises(ValueError, match="optim.optimizer='adagrad'"):
    optim.OptimOptions(lr=0.1, optimizer="adagrad")
  with pytest.raises(ValueError, match="optim.b2=1.0"):
    optim.OptimOptions(lr=0.1, optimizer="adamw", b2=1.0)


def test_linear_lr_scaling_rule():
  # AlignPS's 0.001 at batch 4, on 64 devices x 1 image: 0.016.
  opts = optim.OptimOptions(lr=0.001, lr_reference_batch=4)
  scaled = opts.for_global_batch(64)
  assert scaled.lr == pytest.approx(0.016) and scaled.lr_reference_batch == 0
  assert scaled.for_global_batch(64) == scaled  # scaled once only
  assert optim.OptimOptions(lr=0.001).for_global_batch(64).lr == 0.001
  # The schedule (warm-up and decays) follows the scaled rate.
  _, sched = optim.make_optimizer(_params(), **optim.OptimOptions(
      lr=0.001, lr_reference_batch=4, warmup_steps=10,
      decay_steps=(20,)).for_global_batch(8).as_kwargs())
  np.testing.assert_allclose([float(sched(0)), float(sched(10)),
                              float(sched(20))],
                             [0.002 / 3, 0.002, 0.0002], rtol=1e-6)
  with pytest.raises(ValueError, match="optim.lr_reference_batch"):
    optim.OptimOptions(lr=0.001, lr_reference_batch=-1)


def test_experiment_scales_lr_to_the_config_batch(tiny_eval_config):
  from ps_jax import experiment  # pylint: disable=g-import-not-at-top
  config = tiny_eval_config.copy_and_resolve_references()
  config.optim.lr_reference_batch = 4  # the tiny config's batch is 8
  exp = experiment.from_config(config, for_training=False)
  assert exp.optim.lr == pytest.approx(2 * tiny_eval_config.optim.lr)
