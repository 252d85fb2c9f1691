"""Systems: one method end to end behind one contract (`base.py`).

`build(name, ...)` maps a config's `system` name to the function that builds
that system from plain option mappings; it is an explicit dict, not a
registry. To add a system, write `ps_jax/systems/<name>.py` implementing the
contract and a `from_options(...)`, add one line to `_BUILDERS`, and one
config file (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import functools

from ps_jax.systems import alignps
from ps_jax.systems import oim
from ps_jax.systems import reid
from ps_jax.systems.base import CropReIDSystem
from ps_jax.systems.base import PersonSearchSystem
from ps_jax.systems.base import System
from ps_jax.systems.base import initialize

_BUILDERS = {
    "alignps": alignps.from_options,
    "oim": oim.from_options,
    "ide": functools.partial(reid.from_options, "ide"),
    "mlfn": functools.partial(reid.from_options, "mlfn"),
    "glad": functools.partial(reid.from_options, "glad"),
}
NAMES = tuple(sorted(_BUILDERS))
# Systems that embed person crops (`CropReIDSystem`): their data section is
# the crop pipeline's (`ps_jax.data.crops`), their evaluation Market-1501's.
CROP_REID = ("glad", "ide", "mlfn")


def build(name: str, *, num_ids: int, **sections: Mapping[str, Any]
          ) -> System:
  """The system called `name`, from its option sections.

  Args:
    name: a config's `system` entry ('alignps', 'oim', 'ide', 'mlfn',
      'glad').
    num_ids: labeled training identities of the dataset (its metadata).
    **sections: the option mappings the system takes (model, loss, predict).
  Raises:
    ValueError: unknown name, or an option the system does not have.
  """
  if name not in _BUILDERS:
    raise ValueError(f"system: expected one of {list(NAMES)}, got {name!r}")
  return _BUILDERS[name](num_ids=num_ids, **sections)


__all__ = ["CROP_REID", "CropReIDSystem", "NAMES", "PersonSearchSystem", "System", "build",
           "initialize"]
