"""Language-model prefill cost, fitted to a measured prefill grid so that any CPU can replay it.

A step of windows ``(context_i, new_i)`` (padded first as the measured runner pads it to its
CUDA-graph row bucket, ``vitkit.lm.graphs.pad_to_bucket``) is modelled as

    ms = dense(N) + ms_per_mega_pair * P / 1e6 + ms_per_window * W
         + ms_per_kilo_key * K / 1e3 + ms_per_kilo_longest * L / 1e3

with ``N = sum new_i`` rows (``dense``: GEMMs, norms, launches; piecewise linear through the grid's row
counts, as a small graphed step costs what reading the weights costs), query-key pairs
``P = sum new_i (context_i + new_i / 2)``, ``W`` windows, keys read from the KV cache
``K = sum (context_i + new_i)`` and the longest window ``L = max (context_i + new_i)`` (latency-bound).
Fitted by non-negative least squares on relative error; decode is not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.checks import positive_number
from vitkit.costs import results
from vitkit.costs.encoder import nnls
from vitkit.lm.decoder import check_windows
from vitkit.lm.graphs import pad_to_bucket

TERMS = ("ms_per_mega_pair", "ms_per_window", "ms_per_kilo_key", "ms_per_kilo_longest")


def step_features(windows: Sequence[tuple[int, int]],
                  graph_buckets: Sequence[int] = ()) -> tuple[int, float, float, float, float]:
    """``(N, P / 1e6, W, K / 1e3, L / 1e3)`` of a step (validated), padded to ``graph_buckets`` as the
    graphed runner pads it (``L`` over real windows only)."""
    windows = check_windows(windows)
    longest = max(ctx + new for ctx, new in windows)
    if graph_buckets:
        windows, _ = pad_to_bucket(windows, None, graph_buckets)
    tokens = sum(new for _, new in windows)
    pairs = sum(new * (ctx + new / 2) for ctx, new in windows)
    keys = sum(ctx + new for ctx, new in windows)
    return tokens, pairs / 1e6, float(len(windows)), keys / 1e3, longest / 1e3


def hat_weights(rows: float, knots: Sequence[int]) -> np.ndarray:
    """Weights of ``knots`` interpolating at ``rows``: linear between neighbours, flat below the first knot,
    the last segment extended above the last."""
    w = np.zeros(len(knots))
    if len(knots) == 1 or rows <= knots[0]:
        w[0] = 1.0
        return w
    j = min(int(np.searchsorted(knots, rows)) - 1, len(knots) - 2)  # segment [knots[j], knots[j + 1]]
    t = (rows - knots[j]) / (knots[j + 1] - knots[j])
    w[j], w[j + 1] = 1.0 - t, t
    return w


@dataclass(frozen=True)
class PrefillCost:
    """A fitted prefill step time (ms); ``step_ms(windows)`` for ``(context, new)`` windows."""

    knots: tuple[int, ...]  # step rows (after padding) at which dense(N) is fitted
    knot_ms: tuple[float, ...]  # dense(N) at each knot, non-decreasing
    ms_per_mega_pair: float  # per million (new token, key) pairs attention visits
    ms_per_window: float
    ms_per_kilo_key: float  # per thousand keys read from the KV cache
    ms_per_kilo_longest: float  # per thousand keys of the longest window
    points: int  # rows fitted (the grid's and any serving steps)
    median_rel_error: float  # |model - measured| / measured over the grid
    max_rel_error: float
    source: str = ""  # results file and device
    graph_buckets: tuple[int, ...] = ()  # the measured runner's row buckets (steps padded to them)
    serving_steps: int = 0  # calibration replay steps fitted next to the grid (``fit_prefill_cost``)
    serving_median_rel_error: float | None = None  # over those steps (the grid's errors are above)

    def __post_init__(self) -> None:
        if not self.knots or len(self.knots) != len(self.knot_ms) or list(self.knots) != sorted(set(self.knots)):
            raise ValueError(f"PrefillCost: knots must be increasing with one ms each, got {self.knots} and "
                             f"{self.knot_ms}")

    def dense_ms(self, rows: float) -> float:
        """dense(N): the step's row-count part (ms)."""
        return float(hat_weights(rows, self.knots) @ np.asarray(self.knot_ms))

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        """Modelled ms of one step of ``(context_tokens, new_tokens)`` windows; errors name the first bad one."""
        rows, *rest = step_features(windows, self.graph_buckets)
        coef = (self.ms_per_mega_pair, self.ms_per_window, self.ms_per_kilo_key, self.ms_per_kilo_longest)
        return self.dense_ms(rows) + float(sum(c * f for c, f in zip(coef, rest)))


def _check_results(data: Any, where: str) -> None:
    results.check_schema("prefill", data, where)
    rows = data.get("rows")
    if not isinstance(rows, list) or len(rows) < len(TERMS) + 2:
        raise ValueError(f"{where}: field 'rows' must be a list of at least {len(TERMS) + 2} rows")
    for k, row in enumerate(rows):
        if not isinstance(row, Mapping) or "step_windows" not in row:
            raise ValueError(f"{where}: row {k} needs 'step_windows', got {row!r}")
        positive_number(f"{where}: row {k} 'ms_median'", row.get("ms_median"))


def fit_prefill_cost(grid: Mapping[str, Any] | str | Path, serving_steps: Sequence[Mapping[str, Any]] = (),
                     serving_source: str = "") -> PrefillCost:
    """``PrefillCost`` fitted to a prefill grid (a file or its dict) and, as rows of their own, a calibration
    replay's ``serving_steps`` (``{"windows": [[context, new], ...], "ms"}``) on the same card: the grid runs
    steps back to back, a replay at another speed, while the grid pins shapes the replay never reaches."""
    where = str(grid) if isinstance(grid, (str, Path)) else "results"
    data = results.read("prefill", grid) if isinstance(grid, (str, Path)) else grid
    _check_results(data, where)
    settings = data.get("settings", {})
    buckets = tuple(settings.get("graph_buckets", ())) if settings.get("cuda_graphs") else ()
    feats = [step_features([tuple(w) for w in row["step_windows"]], buckets) for row in data["rows"]]
    ms = np.array([float(row["ms_median"]) for row in data["rows"]])
    grid_rows = len(ms)
    for k, step in enumerate(serving_steps):
        if not step.get("ms", 0) > 0:
            raise ValueError(f"serving step {k}: ms must be > 0, got {step.get('ms')!r}")
        feats.append(step_features([tuple(w) for w in step["windows"]], buckets))
    ms = np.concatenate([ms, [float(step["ms"]) for step in serving_steps]])
    knots = sorted({f[0] for f in feats})
    # unknowns: the increments between consecutive knots (>= 0: dense(N) never falls as N grows),
    # then the terms; column i of the dense part is the sum of the hat weights of knots >= i
    hats = np.array([hat_weights(f[0], knots) for f in feats])
    design = np.hstack([np.cumsum(hats[:, ::-1], axis=1)[:, ::-1], np.array([f[1:] for f in feats])])
    coef = nnls(design / ms[:, None], np.ones(len(ms)))
    rel = np.abs(design @ coef - ms) / ms
    device = data.get("machine", {}).get("device_name", "?")
    served = len(serving_steps)
    calibrated = f" + {served} serving steps of {serving_source or 'a calibration replay'}" if served else ""
    return PrefillCost(tuple(int(k) for k in knots), tuple(float(v) for v in np.cumsum(coef[: len(knots)])),
                       *(float(c) for c in coef[len(knots):]), points=len(ms),
                       median_rel_error=float(np.median(rel[:grid_rows])), max_rel_error=float(rel[:grid_rows].max()),
                       source=f"{where} ({device}){calibrated}", graph_buckets=buckets, serving_steps=served,
                       serving_median_rel_error=float(np.median(rel[grid_rows:])) if served else None)


def load_prefill_cost(path: str | Path | None = None, calibration: str | Path | None = None,
                      folder: str | Path | None = None) -> PrefillCost:
    """``fit_prefill_cost`` of the grid ``path`` and the encoder-costs file ``calibration`` (without ``path``:
    the newest of each in ``folder``, the stored card's by default), measured on one card in one session."""
    if path is None:
        folder = results.results_folder() if folder is None else Path(folder)
        path = results.newest("prefill", folder)
        if calibration is None:
            calibration = default_prefill_calibration(folder)
    if calibration is None:
        return fit_prefill_cost(Path(path))
    steps = results.read("encoder-costs", calibration).get("serving_prefill_steps") or []
    if not steps:
        raise ValueError(f"{calibration}: no serving_prefill_steps to calibrate the prefill grid with")
    return fit_prefill_cost(Path(path), steps, Path(calibration).name)


def has_prefill_steps(path: str | Path) -> bool:
    """Whether the encoder-costs file at ``path`` is a GPU file with serving prefill steps."""
    data = results.read("encoder-costs", path)
    return data.get("kind") == "gpu" and bool(data.get("serving_prefill_steps"))


def default_prefill_calibration(folder: str | Path | None = None) -> Path | None:
    """The newest encoder-costs file in ``folder`` (default: the stored card's) with serving prefill steps."""
    folder = results.results_folder() if folder is None else folder
    return next((p for p in results.newest_first("encoder-costs", folder) if has_prefill_steps(p)), None)
