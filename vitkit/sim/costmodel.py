"""Encoder cost model fitted to a benchmark results file, so a laptop can simulate an H100.

Each bench row (schema ``vitkit.bench/1``) gives a step's median encoder time and how many calls
and embedding rows it took. Per (encoder, impl) the model is one straight line over calls,
``ms_per_call = intercept_ms + ms_per_token * tokens_per_call``, fitted by least squares to the
rows' averages ``encoder_ms_median / encoder_calls`` against ``tokens / encoder_calls``. The
intercept is the fixed cost of a call (launches, small kernels) that batching amortises; the
slope is the work per token. Attention that grows with tokens squared per image is folded into
the slope: fit to the resolutions you will simulate.

The bucketed encoder (impl ``vitkit``) is better modelled by ``vitkit.sim.bucketcost``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.results import load_results
from vitkit.bench.stream_run import load_stream_results
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
    median_rel_err: float | None = None  # |modelled - measured| / measured over the fitted points
    max_rel_err: float | None = None

    def call_ms(self, tokens: int) -> float:
        return self.intercept_ms + self.ms_per_token * tokens


def _relative_line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """``y = a + b x`` minimising the squared *relative* error, ``a >= 0``: small calls (a few
    ms) count as much as large ones, so the fixed cost per call that batching saves is not
    drowned by the large calls' absolute residuals (attention's quadratic term bends those)."""
    w = [1.0 / y for y in ys]
    s_ww = sum(v * v for v in w)
    s_wx = sum(v * v * x for v, x in zip(w, xs))
    s_xx = sum(v * v * x * x for v, x in zip(w, xs))
    s_y = sum(v * v * y for v, y in zip(w, ys))
    s_xy = sum(v * v * x * y for v, x, y in zip(w, xs, ys))
    det = s_ww * s_xx - s_wx * s_wx
    a = (s_y * s_xx - s_wx * s_xy) / det
    b = (s_ww * s_xy - s_wx * s_y) / det
    if a < 0:
        a, b = 0.0, s_xy / s_xx
    return a, b


def _rel_errors(a: float, b: float, xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    errs = sorted(abs(a + b * x - y) / y for x, y in zip(xs, ys) if y > 0)
    if not errs:
        return 0.0, 0.0
    mid = len(errs) // 2
    median = errs[mid] if len(errs) % 2 else (errs[mid - 1] + errs[mid]) / 2
    return median, errs[-1]


def fit_call_cost(
    points: Sequence[tuple[float, float]], encoder: str, impl: str, source: str, *, relative: bool = False
) -> CallCost:
    """A ``CallCost`` fitted to ``(rows per call, ms per call)`` points (least squares; with
    ``relative`` the squared relative error), with its r2 and relative errors."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(xs)) < 2:
        raise ValueError(f"cannot fit encoder {encoder!r} impl {impl!r}: {len(points)} point(s) with {len(set(xs))} distinct tokens per call; need 2")
    a, b, r2 = _line_fit(xs, ys)
    if relative:
        bad = [p for p in points if not p[1] > 0]
        if bad:  # relative errors divide by the measured ms
            raise ValueError(f"cannot fit encoder {encoder!r} impl {impl!r} by relative error: ms per call must be > 0, "
                             f"got point(s) (rows, ms) {bad[:3]}")
        a, b = _relative_line_fit(xs, ys)
        my = sum(ys) / len(ys)
        ss_tot = sum((y - my) ** 2 for y in ys)
        r2 = 1.0 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys)) / ss_tot if ss_tot > 0 else 1.0
    median, worst = _rel_errors(a, b, xs, ys)
    return CallCost(encoder, impl, a, b, len(points), r2, source, median, worst)


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


def fit_cost_models(
    results: Mapping[str, Any] | str | Path, *, modes: Sequence[str] | None = None, relative: bool = False
) -> dict[tuple[str, str], CallCost]:
    """One ``CallCost`` per (encoder, impl) in a results file (or its loaded dict).

    ``modes`` restricts the rows used (default: both modes; a call's cost does not depend on
    which path made it). ``relative``: fit the squared relative error (see ``fit_call_cost``).
    Raises ValueError when a group has fewer than two distinct call sizes.
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
        models[(encoder, impl)] = fit_call_cost(points, encoder, impl, source, relative=relative)
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

    def __init__(self, cost: CallCost | Any, hidden: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(hidden, dtype)
        self.cost = cost
        self.name = f"modelled:{cost.encoder}/{cost.impl}"  # a CallCost or a bucketcost.BucketCost
        self._modelled_ms = 0.0
        self._measured_ms = 0.0

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        start = time.perf_counter()
        out = super().__call__(items)
        self._measured_ms += (time.perf_counter() - start) * 1e3
        rows = [item.num_tokens for item in items]
        # a bucket model packs the items as the encoder does; a line reads the call's total rows
        self._modelled_ms += self.cost.call_ms(rows) if hasattr(self.cost, "call_units_ms") else self.cost.call_ms(sum(rows))
        return out

    def take_time(self) -> EncoderTime:
        out = EncoderTime(self._modelled_ms, self._measured_ms)
        self._modelled_ms = self._measured_ms = 0.0
        return out


def fit_stream_cost_models(results: Mapping[str, Any] | str | Path, *, relative: bool = True) -> dict[tuple[str, str], CallCost]:
    """One ``CallCost`` per (encoder, impl) of a stream file (``vitkit.stream/1``, read by
    ``vitkit.bench.stream_run.load_stream_results``): per step, ms per call (``encoder_ms /
    encoder_calls``) against embedding rows per call (``encoded_rows / encoder_calls``), both
    modes (a call costs what its rows cost, whichever path made it). The bucketed encoder's
    padding is inside the measured time, so the model maps the rows a step asks for to what its
    padded calls cost, on average."""
    data = load_stream_results(results) if isinstance(results, (str, Path)) else results
    machine = data.get("machine", {}).get("device_name") or "?"
    source = f"{results if isinstance(results, (str, Path)) else 'stream results'} ({machine})"
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in data["steps"]:
        calls = row["encoder_calls"]
        if calls > 0:
            groups.setdefault((row["encoder"], row["impl"]), []).append((row["encoded_rows"] / calls, row["encoder_ms"] / calls))
    if not groups:
        raise ValueError(f"{source}: no step with an encoder call")
    return {key: fit_call_cost(points, *key, source, relative=relative) for key, points in groups.items()}
