"""Mixed precision: `model.dtype="bfloat16"` computes in bfloat16 while the
parameters, the optimizer state, the losses and the OIM memory stay float32
(docs/architecture.md, "Mixed precision"). One train step from the same float32 state and batch,
in float32 and in bfloat16, for AlignPS, OIM and a crop re-ID net (MLFN):
the bfloat16 step's loss and update stay close to the float32 step's, and
nothing it keeps is bfloat16."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mlfn_synthetic_tiny
from ps_jax import experiment
from ps_jax import mesh as mesh_lib
from ps_jax.data import crops
from ps_jax.data import pipeline
from ps_jax.train import step as step_lib
from tests.train.conftest import as_oim


def _config(name, make_tiny_config, tiny_synthetic_dir, dtype):
  if name == "mlfn":
    config = mlfn_synthetic_tiny.get_config()
    config.dataset.data_dir = tiny_synthetic_dir
    config.run.eval_at_end = False
    config.model["dtype"] = dtype  # crop nets: a key of their model dict
    return config
  config = make_tiny_config()
  config = as_oim(config) if name == "oim" else config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  return config


def _step(name, make_tiny_config, tiny_synthetic_dir, dtype):
  """(state before, metrics, state after) of one step on one device."""
  exp = experiment.from_config(_config(name, make_tiny_config,
                                       tiny_synthetic_dir, dtype))
  mesh = mesh_lib.make_mesh(1)
  state, tx, schedule = step_lib.init_state(exp.system, exp.optim,
                                            exp.run.seed, exp.init_hw, mesh)
  source = pipeline.data_source(exp.builder, "train")
  if isinstance(exp.data, crops.CropPipelineConfig):
    batch = next(crops.train_iterator(source, exp.data, seed=0))
  else:
    batch = next(pipeline.train_iterator(source, exp.data, seed=0))
  before = jax.tree.map(lambda x: np.array(x, copy=True), state)
  step = step_lib.make_train_step(exp.system, tx, schedule, mesh, seed=0)
  after, metrics = step(state, mesh_lib.host_to_global(batch, mesh))
  return before, jax.device_get(metrics), jax.device_get(after)


@pytest.mark.parametrize("name", ["alignps", "oim", "mlfn"])
def test_a_bfloat16_step_stays_close_to_the_float32_step(
    name, make_tiny_config, tiny_synthetic_dir):
  before, m32, s32 = _step(name, make_tiny_config, tiny_synthetic_dir,
                           "float32")
  before16, m16, s16 = _step(name, make_tiny_config, tiny_synthetic_dir,
                             "bfloat16")
  # Same initial state: the dtype is not a parameter's.
  jax.tree.map(np.testing.assert_array_equal, before.params, before16.params)
  # Everything the step keeps is float32 (bfloat16 is compute only).
  for part in (s16.params, s16.opt_state, s16.extra):
    for leaf in jax.tree.leaves(part):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
        assert np.all(np.isfinite(leaf))
  assert m16["loss"].dtype == np.float32
  # The loss agrees to bfloat16's precision (8 bits of mantissa, summed
  # over many terms): 2 %.
  assert abs(m16["loss"] - m32["loss"]) <= 0.02 * abs(m32["loss"]), (
      m16["loss"], m32["loss"])
  # The update points the same way: cosine over all parameters.
  u32 = np.concatenate([np.ravel(a - b) for a, b in zip(
      jax.tree.leaves(s32.params), jax.tree.leaves(before.params))])
  u16 = np.concatenate([np.ravel(a - b) for a, b in zip(
      jax.tree.leaves(s16.params), jax.tree.leaves(before.params))])
  cosine = u16 @ u32 / (np.linalg.norm(u16) * np.linalg.norm(u32))
  assert cosine > 0.9, cosine
  if name != "mlfn":  # the OIM memory moved, in float32
    for a, b in zip(jax.tree.leaves(s16.extra), jax.tree.leaves(
        before.extra)):
      assert a.dtype == b.dtype  # float32 tables, an int32 queue pointer
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(s16.extra), jax.tree.leaves(before.extra)))
