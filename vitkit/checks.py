"""Argument checks shared by every module: one message format that names the argument."""

from __future__ import annotations

import math


def _int(name: str, value: object, what: str) -> int:
    # bool is an int subclass; True as a count or size is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    """``value`` when it is an int > 0 (not a bool); else ValueError naming ``name`` and ``value``."""
    if _int(name, value, "a positive int") <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value: object) -> int:
    """``value`` when it is an int >= 0 (not a bool); else ValueError naming ``name`` and ``value``."""
    if _int(name, value, "a non-negative int") < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def positive_number(name: str, value: object) -> float:
    """``value`` as a float when it is a finite int or float > 0 (not a bool); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative_number(name: str, value: object) -> float:
    """``value`` as a float when it is a finite int or float >= 0 (not a bool); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
