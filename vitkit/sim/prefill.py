"""Language-model prefill cost, fitted to a measured prefill grid so that any CPU can replay it.

A step of windows ``(context_i, new_i)`` (padded first as the measured runner pads it to its
CUDA-graph row bucket, ``vitkit.bench.decoder_graphs.pad_to_bucket``) is modelled as

    ms = dense(N) + ms_per_mega_pair * P / 1e6 + ms_per_window * W
         + ms_per_kilo_key * K / 1e3 + ms_per_kilo_longest * L / 1e3

- ``dense(N)``, ``N = sum new_i`` the step's rows: the GEMMs, norms and launches, a function of
  the row count alone. It is piecewise linear through the grid's row counts (the knots, each
  fitted, non-decreasing), flat below the first and extended along the last segment above the
  last. A line cannot be this on the H100: a graphed step of up to ~256 rows costs the same
  ~7-9 ms (reading 15 GB of weights), and the knee above it is where the GEMMs turn compute-bound.
- ``P = sum new_i (context_i + new_i / 2)``: query-key pairs causal attention visits (arithmetic).
- ``W``: windows (the LM head on each finishing window's last token, per-window kernel work).
- ``K = sum (context_i + new_i)``: keys read from the KV cache (a long context with few new
  tokens is bound by reading the cache, not by its pairs).
- ``L = max (context_i + new_i)``: the longest real window's keys. Flash attention gives a window
  one program per head and query block, so one long window is latency-bound: one 16k-key window
  cost +13 ms over the bare step on the H100 and sixteen of them +43 ms, not sixteen times more.

Fitted by non-negative least squares on relative error (rows divided by their measured time, so
a 7 ms step counts as much as a 300 ms one). The fit's median and largest relative error over
the grid are stored with it. Measured by ``python -m vitkit.bench.prefill`` (schema
``vitkit.prefill/1``). Decode is not modelled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.bench.decoder import check_windows
from vitkit.bench.decoder_graphs import pad_to_bucket
from vitkit.sim.bucketcost import nnls

PREFILL_SCHEMA = "vitkit.prefill/1"
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "results" / "h100"
TERMS = ("ms_per_mega_pair", "ms_per_window", "ms_per_kilo_key", "ms_per_kilo_longest")


def step_features(windows: Sequence[tuple[int, int]], graph_buckets: Sequence[int] = ()) -> tuple[int, float, float, float, float]:
    """``(N, P / 1e6, W, K / 1e3, L / 1e3)`` of a step (see the module docstring); validates
    ``windows``. With ``graph_buckets`` the step is first padded as the graphed runner pads it:
    the padding window's rows, pairs and keys cost what real ones cost (``L`` is over real windows)."""
    windows = check_windows(windows)
    longest = max(ctx + new for ctx, new in windows)
    if graph_buckets:
        windows, _ = pad_to_bucket(windows, None, graph_buckets)
    tokens = sum(new for _, new in windows)
    pairs = sum(new * (ctx + new / 2) for ctx, new in windows)
    keys = sum(ctx + new for ctx, new in windows)
    return tokens, pairs / 1e6, float(len(windows)), keys / 1e3, longest / 1e3


def hat_weights(rows: float, knots: Sequence[int]) -> np.ndarray:
    """Weights of ``knots`` whose dot with the knots' values interpolates at ``rows``: linear between
    neighbours, the first knot's value below it, the last segment extended above the last."""
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
            raise ValueError(f"PrefillCost: knots must be increasing with one ms each, got {self.knots} and {self.knot_ms}")

    def dense_ms(self, rows: float) -> float:
        """dense(N): the step's row-count part (ms)."""
        return float(hat_weights(rows, self.knots) @ np.asarray(self.knot_ms))

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        """Modelled time (ms) of prefilling one step of ``(context_tokens, new_tokens)`` windows.
        ValueError/TypeError naming the first bad window."""
        rows, *rest = step_features(windows, self.graph_buckets)
        coef = (self.ms_per_mega_pair, self.ms_per_window, self.ms_per_kilo_key, self.ms_per_kilo_longest)
        return self.dense_ms(rows) + float(sum(c * f for c, f in zip(coef, rest)))


def load_prefill_results(path: str | Path) -> dict[str, Any]:
    """Read a prefill results file and check its schema."""
    data = json.loads(Path(path).read_text())
    _check_results(data, str(path))
    return data


def _check_results(data: Any, where: str) -> None:
    if not isinstance(data, Mapping) or data.get("schema") != PREFILL_SCHEMA:
        got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{where}: field 'schema' must be {PREFILL_SCHEMA!r}, got {got!r}")
    rows = data.get("rows")
    if not isinstance(rows, list) or len(rows) < len(TERMS) + 2:
        raise ValueError(f"{where}: field 'rows' must be a list of at least {len(TERMS) + 2} rows")
    for k, row in enumerate(rows):
        ms = row.get("ms_median") if isinstance(row, Mapping) else None
        if "step_windows" not in row or isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
            raise ValueError(f"{where}: row {k} needs 'step_windows' and a positive 'ms_median', got {row!r}")


def _graph_buckets(data: Mapping[str, Any]) -> tuple[int, ...]:
    settings = data.get("settings", {})
    return tuple(settings.get("graph_buckets", ())) if settings.get("cuda_graphs") else ()


def fit_prefill_cost(results: Mapping[str, Any] | str | Path, serving_steps: Sequence[Mapping[str, Any]] = (),
                     serving_source: str = "") -> PrefillCost:
    """Fit ``PrefillCost`` to a prefill results file (or its loaded dict) and, when given, the
    ``serving_steps`` of a calibration serving replay on the same card (each ``{"windows":
    [[context, new], ...], "ms": ...}``, ``encoder-costs-*.json``'s ``serving_prefill_steps``),
    fitted as rows of their own next to the grid's.

    Why: the grid times each step as repeats of itself, back to back; inside a serving replay the
    same padded shapes ran 5-10% faster (768-2048 rows on four H100s: a two-window 768-row step
    17.6-18.2 ms against the grid's 19.5), and short steps a little slower, while the validation's
    queue about doubles a step-cost error at p99. The grid still pins the shapes the replay never
    reaches (long contexts, many windows, 4096+ rows)."""
    where = str(results) if isinstance(results, (str, Path)) else "results"
    data = load_prefill_results(results) if isinstance(results, (str, Path)) else results
    _check_results(data, where)
    buckets = _graph_buckets(data)
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
    calibrated = f" + {len(serving_steps)} serving steps of {serving_source or 'a calibration replay'}" if len(serving_steps) else ""
    return PrefillCost(tuple(int(k) for k in knots), tuple(float(v) for v in np.cumsum(coef[: len(knots)])),
                       *(float(c) for c in coef[len(knots):]), points=len(ms), median_rel_error=float(np.median(rel[:grid_rows])),
                       max_rel_error=float(rel[:grid_rows].max()), source=f"{where} ({device}){calibrated}", graph_buckets=buckets,
                       serving_steps=len(serving_steps),
                       serving_median_rel_error=float(np.median(rel[grid_rows:])) if len(serving_steps) else None)


def default_prefill_results(folder: str | Path = DEFAULT_FOLDER) -> Path:
    """The newest ``prefill-*.json`` in ``folder`` (names carry a UTC timestamp)."""
    found = sorted(Path(folder).glob("prefill-*.json"))
    if not found:
        raise FileNotFoundError(f"no prefill-*.json in {folder}: run `python -m vitkit.bench.prefill` on a GPU first")
    return found[-1]


def load_prefill_cost(path: str | Path | None = None, calibration: str | Path | None = None) -> PrefillCost:
    """The cost model fitted to the grid ``path`` (by default the newest stored H100 grid) and
    the serving prefill steps of the ``calibration`` file (an ``encoder-costs-*.json``; by
    default, when ``path`` is not given either, the newest stored one that has them). Measure
    both on one card in one session: the calibration corrects that card's grid."""
    if path is None:
        path = default_prefill_results()
        if calibration is None:
            calibration = default_prefill_calibration(Path(path).parent)
    if calibration is None:
        return fit_prefill_cost(Path(path))
    steps = json.loads(Path(calibration).read_text()).get("serving_prefill_steps") or []
    if not steps:
        raise ValueError(f"{calibration}: no serving_prefill_steps to calibrate the prefill grid with")
    return fit_prefill_cost(Path(path), steps, Path(calibration).name)


def has_prefill_steps(path: str | Path) -> bool:
    """Whether the ``encoder-costs-*.json`` at ``path`` is a GPU file with serving prefill steps
    (files written before the calibration replay kept them have none)."""
    data = json.loads(Path(path).read_text())
    return data.get("kind") == "gpu" and bool(data.get("serving_prefill_steps"))


def default_prefill_calibration(folder: str | Path = DEFAULT_FOLDER) -> Path | None:
    """The newest ``encoder-costs-*.json`` in ``folder`` with serving prefill steps, or None."""
    return next((p for p in sorted(Path(folder).glob("encoder-costs-*.json"), reverse=True) if has_prefill_steps(p)), None)
