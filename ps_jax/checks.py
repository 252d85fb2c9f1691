"""Checks of option values, shared by every typed options class.

Each failed check is one line naming the field, the value and what is
allowed, e.g. `optim.lr=-0.1; expected a finite number >= 0`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def is_integer(value: Any) -> bool:
  """A Python or numpy integer (not a bool)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A finite Python or numpy real number (not a bool)."""
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool) and math.isfinite(value))


def require(ok: bool, field: str, value: Any, expected: str, *,
            error: type[Exception] = ValueError) -> None:
  """Raises `error("<field>=<value>; expected <expected>")` unless `ok`."""
  if not ok:
    raise error(f"{field}={value!r}; expected {expected}")
