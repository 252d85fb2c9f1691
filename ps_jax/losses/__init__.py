"""Losses as pure functions of arrays: FCOS detection, OIM, triplet.

Each loss returns a dict of scalars (or per-element values) and names every
normalizer it used; loss weights are applied by the train step.
"""

from ps_jax.losses import fcos
from ps_jax.losses import oim
from ps_jax.losses import triplet

__all__ = ["fcos", "oim", "triplet"]
