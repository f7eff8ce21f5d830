"""Token ranges in a prompt."""

from __future__ import annotations

from dataclasses import dataclass


def _check_index(name: str, value: object) -> int:
    # bool is an int subclass; a True/False offset is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Span {name} must be an int, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True, order=True)
class Span:
    """Half-open token range ``[start, stop)`` in a prompt (token indices)."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        _check_index("start", self.start)
        _check_index("stop", self.stop)
        if self.start < 0:
            raise ValueError(f"Span start must be >= 0, got [{self.start}, {self.stop})")
        if self.stop < self.start:
            raise ValueError(f"Span stop must be >= start, got [{self.start}, {self.stop})")

    @classmethod
    def from_inclusive(cls, start: int, end: int) -> Span:
        """Convert SGLang-style inclusive offsets ``(start, end)`` to ``[start, end + 1)``."""
        return cls(start, _check_index("end", end) + 1)

    @classmethod
    def coerce(cls, value: Span | tuple[int, int]) -> Span:
        """Accept a Span or a ``(start, stop)`` pair."""
        if isinstance(value, Span):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return cls(*value)
        raise TypeError(f"expected a Span or a (start, stop) tuple, got {value!r}")

    def __len__(self) -> int:
        return self.stop - self.start

    def overlaps(self, other: Span) -> bool:
        """True when the spans share a token (an empty span shares none)."""
        return self.start < other.stop and other.start < self.stop and len(self) > 0 and len(other) > 0

    def intersect(self, other: Span) -> Span | None:
        """The common part of two spans, or None when they do not overlap."""
        return Span(max(self.start, other.start), min(self.stop, other.stop)) if self.overlaps(other) else None

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.stop})"
