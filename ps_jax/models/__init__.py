"""Model construction from a config section.

`build_model(model_cfg)` maps the `model` section of an experiment config to a
linen module. The section's keys are exactly the module's constructor fields
(plus an optional `name`, default 'alignps', that picks the model), so a
misspelt key fails here with the valid keys listed. Selection is an explicit
dict, not a registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn

from ps_jax.models.person_search import AlignPS

_MODELS = {"alignps": AlignPS}


def model_fields(cls: type[nn.Module]) -> list[str]:
  """Constructor fields of a model class (without linen's parent/name)."""
  return [f.name for f in dataclasses.fields(cls)
          if f.init and f.name not in ("parent", "name")]


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
  """Builds the model described by a config section.

  Args:
    model_cfg: dict or ml_collections.ConfigDict; optional key `name`
      ('alignps'), every other key a constructor field of that model.
  Returns:
    The (unbound) linen module.
  Raises:
    ValueError: unknown model name or unknown keys (the valid ones are
      listed).
  """
  cfg = (model_cfg.to_dict() if hasattr(model_cfg, "to_dict")
         else dict(model_cfg))
  name = cfg.pop("name", "alignps")
  if name not in _MODELS:
    raise ValueError(f"model.name: expected one of {sorted(_MODELS)}, got "
                     f"{name!r}.")
  cls = _MODELS[name]
  valid = model_fields(cls)
  unknown = sorted(set(cfg) - set(valid))
  if unknown:
    raise ValueError(f"model config: unknown key(s) {unknown} for {name!r}; "
                     f"valid keys: {['name'] + valid}.")
  # Config lists become tuples: module fields should be hashable.
  cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
  return cls(**cfg)


def frozen_predicate(model_cfg: Mapping[str, Any]
                     ) -> Callable[[Sequence[str]], bool]:
  """`is_frozen(path)` of the model a config builds (for the optimizer).

  The predicate takes the key names from the params root to a leaf and is
  True for parameters that must never change (frozen stem / stages and frozen
  batch norm); see `AlignPS.is_frozen`.
  """
  return build_model(model_cfg).is_frozen


__all__ = ["AlignPS", "build_model", "frozen_predicate", "model_fields"]
