"""Encoder cost model fitted to a benchmark results file, so a laptop can simulate an H100.

Each bench row (schema ``vitkit.bench/1``) gives a step's median encoder time and how many calls
and embedding rows it took. Per (encoder, impl) the model is one straight line over calls,
``ms_per_call = intercept_ms + ms_per_token * tokens_per_call``, fitted by least squares to the
rows' averages ``encoder_ms_median / encoder_calls`` against ``tokens / encoder_calls``. The
intercept is the fixed cost of a call (launches, small kernels) that batching amortises; the
slope is the work per token. Attention that grows with tokens squared per image is folded into
the slope: fit to the resolutions you will simulate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.results import load_results
from vitkit.item import MultimodalItem
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.timing import EncoderTime


@dataclass(frozen=True)
class CallCost:
    """Modelled time of one encoder call: ``intercept_ms + ms_per_token * tokens`` (ms)."""

    encoder: str
    impl: str
    intercept_ms: float
    ms_per_token: float
    points: int  # bench rows fitted
    r2: float  # coefficient of determination of the fit
    source: str = ""  # results file, machine

    def call_ms(self, tokens: int) -> float:
        return self.intercept_ms + self.ms_per_token * tokens


def _line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x`` with ``a >= 0``; returns (a, b, r2).

    A negative intercept (seen for Qwen2.5-VL on the H100, where attention's quadratic term bends
    the line up at large images) would model small calls as taking negative time; the fit is then
    redone through the origin."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    a = my - b * mx
    if a < 0:
        a, b = 0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def fit_cost_models(results: Mapping[str, Any] | str | Path, *, modes: Sequence[str] | None = None) -> dict[tuple[str, str], CallCost]:
    """One ``CallCost`` per (encoder, impl) in a results file (or its loaded dict).

    ``modes`` restricts the rows used (default: both modes; a call's cost does not depend on
    which path made it). Raises ValueError when a group has fewer than two distinct call sizes.
    """
    data = load_results(results) if isinstance(results, (str, Path)) else results
    machine = data.get("machine", {}).get("device_name") or data.get("kind", "?")
    source = f"{results if isinstance(results, (str, Path)) else 'results'} ({machine})"
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in data["rows"]:
        if (modes is not None and row.mode not in modes) or row.encoder_calls <= 0:
            continue
        calls = row.encoder_calls
        groups.setdefault((row.encoder, row.impl), []).append((row.tokens / calls, row.encoder_ms_median / calls))
    models = {}
    for (encoder, impl), points in groups.items():
        xs = [p[0] for p in points]
        if len(set(xs)) < 2:
            raise ValueError(f"cannot fit encoder {encoder!r} impl {impl!r}: {len(points)} row(s) with {len(set(xs))} distinct tokens per call; need 2")
        a, b, r2 = _line_fit(xs, [p[1] for p in points])
        models[(encoder, impl)] = CallCost(encoder, impl, a, b, len(points), r2, source)
    if not models:
        raise ValueError(f"no usable rows (modes={modes})")
    return models


def fit_cost_model(results: Mapping[str, Any] | str | Path, encoder: str, impl: str = "vitkit", **kwargs: Any) -> CallCost:
    """The ``CallCost`` of one encoder/impl; ValueError listing what the file has otherwise."""
    models = fit_cost_models(results, **kwargs)
    if (encoder, impl) not in models:
        raise ValueError(f"no rows for encoder {encoder!r} impl {impl!r}; the file has {sorted(models)}")
    return models[(encoder, impl)]


class ModelledEncoder(FakeEncoder):
    """A fake encoder (deterministic embeddings) that reports each call's modelled time."""

    def __init__(self, cost: CallCost, hidden: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(hidden, dtype)
        self.cost = cost
        self.name = f"modelled:{cost.encoder}/{cost.impl}"
        self._modelled_ms = 0.0
        self._measured_ms = 0.0

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        start = time.perf_counter()
        out = super().__call__(items)
        self._measured_ms += (time.perf_counter() - start) * 1e3
        self._modelled_ms += self.cost.call_ms(sum(item.num_tokens for item in items))
        return out

    def take_time(self) -> EncoderTime:
        out = EncoderTime(self._modelled_ms, self._measured_ms)
        self._modelled_ms = self._measured_ms = 0.0
        return out
