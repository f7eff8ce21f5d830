"""argparse value types shared by the bench CLIs (``vitkit.bench.cli``, ``vitkit.bench.stream_cli``).

Each raises ``argparse.ArgumentTypeError`` naming the text that was wrong, so the parser prints
the option, the value and why.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from vitkit.checks import positive_int


def positive_int_arg(part: str) -> int:
    """One positive int; ValueError naming ``part`` otherwise."""
    try:
        value = int(part)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {part!r}") from None
    return positive_int("each value", value)


def list_of(parse: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type: comma-separated values, each through ``parse``; errors name the text."""
    def parse_list(text: str) -> list:
        try:
            return [parse(part) for part in text.split(",")]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} (in {text!r})") from None
    return parse_list


def single(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: one value through ``parse`` ("2,3" is an error, not 2)."""
    def parse_one(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse_one


def int_range(text: str) -> tuple[int, int]:
    """An argparse type: ``LOW-HIGH`` with 0 < LOW <= HIGH (ints)."""
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH integers, got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return lo, hi
