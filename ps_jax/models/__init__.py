"""Linen modules: where parameters live.

The networks are built by the systems (`ps_jax.systems`) from typed options;
nothing here reads configs or files. `AlignPS` is the person-search network;
its parts are in `backbone.py`, `fpn.py`, `heads.py` and `deform_conv.py`.
`weights.py` maps in-memory ImageNet state dicts onto the ResNet's variables
(`ps_jax.pretrained` reads the files).
"""

from ps_jax.models.person_search import AlignPS

__all__ = ["AlignPS"]
