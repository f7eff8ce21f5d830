"""When requests arrive: Poisson at a rate (seeded), bursts, or a trace's own times.

The Poisson gaps are drawn once, as unit-rate exponentials, and divided by the rate: every rate of a load
sweep sees the same arrival pattern, so the latency-versus-load curve moves with the load, not the draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from vitkit.checks import non_negative_int, positive_int, positive_number
from vitkit.sim.trace import Trace

PROCESSES = ("poisson", "bursts", "trace")


def _check_rate(rate_per_s: object) -> float:
    return positive_number("rate_per_s (requests per second)", rate_per_s)


def poisson_times(n: int, rate_per_s: float, seed: int = 0) -> tuple[float, ...]:
    """``n`` arrival times (ms) of a Poisson process at ``rate_per_s``; the first at 0 ms."""
    non_negative_int("number of arrivals", n)
    rate = _check_rate(rate_per_s)
    rng = random.Random(seed)
    unit_gaps = [rng.expovariate(1.0) for _ in range(max(0, n - 1))]  # same pattern at every rate
    times, now = [0.0], 0.0
    for gap in unit_gaps:
        now += gap * 1000.0 / rate
        times.append(now)
    return tuple(times[:n])


def burst_times(n: int, rate_per_s: float, burst_size: int) -> tuple[float, ...]:
    """``n`` arrival times (ms): bursts of ``burst_size`` requests at once, a burst every
    ``burst_size / rate_per_s`` seconds (mean rate ``rate_per_s``)."""
    non_negative_int("number of arrivals", n)
    gap_ms = positive_int("burst_size", burst_size) * 1000.0 / _check_rate(rate_per_s)
    return tuple((k // burst_size) * gap_ms for k in range(n))


@dataclass(frozen=True)
class ArrivalProcess:
    """How a stream's requests arrive: ``"poisson"`` at ``rate_per_s``, ``"bursts"`` of
    ``burst_size`` at a mean ``rate_per_s``, or ``"trace"`` (its own times)."""

    kind: str = "poisson"
    rate_per_s: float | None = None
    burst_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PROCESSES:
            raise ValueError(f"arrival process kind must be one of {PROCESSES}, got {self.kind!r}")
        if self.kind != "trace":
            _check_rate(self.rate_per_s)

    def times(self, n: int) -> tuple[float, ...]:
        """``n`` arrival times (ms); not defined for ``"trace"``, whose times are its own."""
        if self.kind == "poisson":
            return poisson_times(n, self.rate_per_s, self.seed)
        if self.kind == "bursts":
            return burst_times(n, self.rate_per_s, self.burst_size)
        raise ValueError("an arrival process of kind 'trace' keeps the trace's times; it draws none")

    def apply(self, trace: Trace) -> Trace:
        """``trace``'s requests (in order) arriving at this process's times; an abort keeps its delay."""
        if self.kind == "trace":
            return trace
        times = self.times(len(trace.requests))
        requests = []
        for req, at in zip(trace.requests, times):
            abort = None if req.abort_ms is None else round(at + (req.abort_ms - req.arrival_ms), 6)
            requests.append(replace(req, arrival_ms=round(at, 6), abort_ms=abort))
        return Trace(trace.name, tuple(requests), trace.images, trace.description)

    def label(self) -> str:
        if self.kind == "trace":
            return "trace times"
        return f"{self.kind} {self.rate_per_s:g}/s" + (f", bursts of {self.burst_size}" if self.kind == "bursts" else "")
