"""Argument checks shared by the optimisers: each error names the argument and the bad value."""

from __future__ import annotations

import math
import numbers

__all__ = ["check", "integer", "real"]


def real(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a real, non-NaN number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}: {value!r} (expected a real number)")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"invalid {name}: {value!r} (NaN)")
    return value


def check(name: str, value: object, ok: bool, expected: str) -> None:
    """Raise ``ValueError`` naming ``name``, ``value`` and what was ``expected`` unless ``ok``."""
    if not ok:
        raise ValueError(f"invalid {name}: {value!r} (expected {expected})")


def integer(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"invalid {name}: {value!r} (expected an int >= {minimum})")
    return int(value)
