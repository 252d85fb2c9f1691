"""Tests for ps_jax/checks.py: the shared option-value checks."""

import numpy as np
import pytest

from ps_jax import checks


@pytest.mark.parametrize("value, integer, number", [
    (3, True, True), (np.int64(3), True, True), (True, False, False),
    (2.5, False, True), (np.float32(2.5), False, True),
    (float("nan"), False, False), (float("inf"), False, False),
    ("3", False, False), (None, False, False)])
def test_is_integer_and_is_number(value, integer, number):
  assert checks.is_integer(value) is integer
  assert checks.is_number(value) is number


def test_require_names_field_value_and_rule():
  checks.require(True, "optim.lr", -1.0, "anything")
  with pytest.raises(ValueError, match=r"^optim.lr=-1.0; expected >= 0$"):
    checks.require(False, "optim.lr", -1.0, ">= 0")

  class Custom(Exception):
    pass

  with pytest.raises(Custom, match=r"^run.seed='x'; expected an integer$"):
    checks.require(False, "run.seed", "x", "an integer", error=Custom)
