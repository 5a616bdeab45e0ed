"""Checks of settings values (ints, floats, booleans), one home for every module's settings.

Each raises a :class:`flex.errors.SettingsError` (a ValueError) that carries the parameter's name
as data and says what is allowed. Booleans are
not accepted as ints (``True`` is not a frame count), non-finite floats never pass a range
check, and strings never pass as booleans (``dynamic="no"`` would be truthy).
"""
from __future__ import annotations

import math
import numbers

from .errors import SettingsError

INT64_MAX = 2**63 - 1


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) in [low, high]; returns it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(name, f"must be an int, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        where = f">= {low}" if high is None else f"in {_interval(low, high, True, True)}"
        raise SettingsError(name, f"must be an int {where}, got {value!r}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the interval; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingsError(name, f"must be a number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise SettingsError(name, f"must be in {_interval(low, high, not low_open, not high_open)} and finite, "
                                  f"got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """A real bool (numpy / torch booleans too); returns it."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool_", "bool") and hasattr(value, "item"):
        return bool(value.item())
    raise SettingsError(name, f"must be True or False, got {value!r}")


def check_choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise SettingsError(name, f"must be one of {tuple(allowed)}, got {value!r}")
    return value


def _interval(low, high, low_closed, high_closed) -> str:
    def bound(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    left = "(-inf" if low is None else ("[" if low_closed else "(") + bound(low)
    right = "inf)" if high is None else bound(high) + ("]" if high_closed else ")")
    return f"{left}, {right}"


__all__ = ["INT64_MAX", "check_bool", "check_choice", "check_float", "check_int"]
