"""Checks of constructor options shared by several methods, each naming the option."""

from __future__ import annotations

import math

from camkit.errors import CamkitValueError


def positive_int(value: int, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a positive int")
    return value


def non_negative(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= 0 and math.isfinite(value))
    ):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number >= 0")
    return float(value)


def seed_or_none(seed: int | None) -> int | None:
    """``seed`` if it is an int or ``None``."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CamkitValueError(f"seed: got {seed!r}; allowed: an int, or None")
    return seed


def positive_number(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > 0 and math.isfinite(value))
    ):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number > 0")
    return float(value)


def finite_number(value: float, name: str) -> float:
    """``value`` as a float if it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CamkitValueError(f"{name}: got {value!r}; allowed: a finite number")
    return float(value)
