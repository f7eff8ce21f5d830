"""Latency against load: the same stream at several arrival rates, and the highest rate a mode
sustains (TTFT p99 under a bound the user sets).

Two stock workloads (``TTFT_WORKLOADS``) bracket the question: many small images (one 448x448
photo, 256 embedding rows, per short request: several requests share a step, so a step has many
misses for batching to merge) and large images (1-2 photos of up to 1344x1008 pixels, up to 1728
rows each: a step holds one or two requests, little to merge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from vitkit.sim.workload import WorkloadParams

TTFT_WORKLOADS: dict[str, tuple[WorkloadParams, str]] = {
    "small-images": (
        WorkloadParams(num_requests=400, text_tokens=(16, 64), images_per_request=(1, 1),
                       image_sizes=((448, 448),), repeat_share=0.2, image_prefix="thumb", seed=11),
        "one 448x448 photo (256 rows) and 16-128 text tokens per request; a fifth of the photos repeat",
    ),
    "large-images": (
        WorkloadParams(num_requests=200, text_tokens=(32, 128), images_per_request=(1, 2),
                       image_sizes=((896, 896), (1344, 1008), (1008, 1344)), repeat_share=0.1,
                       image_prefix="photo", seed=12),
        "1-2 photos of 896x896 to 1344x1008 (1024-1728 rows each) and 32-384 text tokens per request",
    ),
}

# Poisson rates (requests/s) of each workload's latency-versus-load curve: from light load to
# past saturation on the H100 cost models
DEFAULT_RATES = {
    "small-images": (10, 20, 30, 40, 50, 60, 65, 70, 75, 80, 85, 90),
    "large-images": (1, 2, 4, 6, 8, 9, 10, 11, 12),
}
ADMISSION_RATES = {"small-images": 60.0, "large-images": 6.0}  # the admission comparison's rate, near the knee
# The GPU validation's Poisson rate (/s) and request count per workload (``vitkit.sim.validate``):
# enough requests that p99 is over several of them (at 200 and 60, two runs of the same trace on
# the H100 gave p99s 25% apart: the 2nd-slowest request of 200 is a noisy statistic)
VALIDATION_SIZES = {"small-images": (40.0, 600), "large-images": (4.0, 150)}


def workload_params(name: str, num_requests: int | None = None) -> WorkloadParams:
    """The stock workload ``name`` (arrivals are set by the load sweep), optionally resized."""
    if name not in TTFT_WORKLOADS:
        raise ValueError(f"unknown TTFT workload {name!r}; known: {sorted(TTFT_WORKLOADS)}")
    params = TTFT_WORKLOADS[name][0]
    return params if num_requests is None else replace(params, num_requests=num_requests)


@dataclass(frozen=True)
class RatePoint:
    """One rate of a search: requests per second and the TTFT p99 it gave (ms)."""

    rate_per_s: float
    ttft_p99_ms: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.ttft_p99_ms)


def max_sustainable_rate(
    p99_at: Callable[[float], float],
    bound_ms: float,
    rates: Sequence[float],
    *,
    refine: int = 5,
) -> tuple[float | None, list[RatePoint]]:
    """The highest rate whose TTFT p99 (``p99_at(rate)``, ms) stays at or under ``bound_ms``.

    Tries ``rates`` in increasing order until one fails, then bisects ``refine`` times between
    the last rate that held and the first that failed (p99 rises with the load). Returns that
    rate (None when even the lowest fails; the highest tried when none fails) and every point
    evaluated, in evaluation order.
    """
    if not (isinstance(bound_ms, (int, float)) and not isinstance(bound_ms, bool) and bound_ms > 0):
        raise ValueError(f"bound_ms must be a number > 0 (ms), got {bound_ms!r}")
    ordered = sorted(rates)
    if not ordered or ordered[0] <= 0:
        raise ValueError(f"rates must be a non-empty list of rates > 0, got {list(rates)!r}")
    points: list[RatePoint] = []
    good, bad = None, None
    for rate in ordered:
        points.append(RatePoint(rate, p99_at(rate)))
        if points[-1].ttft_p99_ms <= bound_ms:
            good = rate
        else:
            bad = rate
            break
    if good is None or bad is None:
        return good, points
    for _ in range(refine):
        mid = (good + bad) / 2
        points.append(RatePoint(mid, p99_at(mid)))
        if points[-1].ttft_p99_ms <= bound_ms:
            good = mid
        else:
            bad = mid
    return good, points
