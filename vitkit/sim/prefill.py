"""Language-model prefill cost, fitted to a measured prefill grid so that any CPU can replay it.

A step of windows ``(context_i, new_i)`` is modelled as

    ms = max(floor_ms, intercept_ms + ms_per_token * N + ms_per_mega_pair * P / 1e6
                       + ms_per_window * W + ms_per_kilo_key * K / 1e3)

with ``N = sum new_i`` (the GEMMs' rows: linear work), ``P = sum new_i (context_i + new_i / 2)``
(query-key pairs causal attention visits: its arithmetic), ``W`` windows (the LM head on each
finishing window's last token, per-window kernel work) and ``K = sum (context_i + new_i)`` (keys
each window reads from the KV cache: attention over a long context with few new tokens is bound
by reading the cache, not by its pairs). ``floor_ms`` is the time below which no step runs: on
the H100 every step up to ~1024 tokens took ~24 ms, launch-bound (the decoder is compiled but not
CUDA-graphed), so a plain line fits those steps badly (10% median, 48% worst error without floor
and cache term; 4% and 25% with them). The floor is the median of the steps within 30% of the
fastest; the line is fitted to the others by least squares on relative error (rows divided by
their measured time, so a 25 ms step counts as much as a 300 ms one) with non-negative
coefficients (a term that would be negative is dropped and the rest refitted). The fit's median
and largest relative error over the grid are stored with it.
Measured by ``python -m vitkit.bench.prefill`` (schema ``vitkit.prefill/1``). Decode is not
modelled.
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

PREFILL_SCHEMA = "vitkit.prefill/1"
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "results" / "h100"
TERMS = ("intercept_ms", "ms_per_token", "ms_per_mega_pair", "ms_per_window", "ms_per_kilo_key")
FLOOR_WITHIN = 1.3  # steps within 30% of the fastest measured one set the floor


def step_features(windows: Sequence[tuple[int, int]], graph_buckets: Sequence[int] = ()) -> tuple[float, float, float, float, float]:
    """``(1, N, P / 1e6, W, K / 1e3)`` of a step (see the module docstring); validates ``windows``.
    With ``graph_buckets`` the step is first padded as the graphed runner pads it (``pad_to_bucket``):
    the padding's rows cost what real rows cost."""
    windows = check_windows(windows)
    if graph_buckets:
        windows, _ = pad_to_bucket(windows, None, graph_buckets)
    tokens = sum(new for _, new in windows)
    pairs = sum(new * (ctx + new / 2) for ctx, new in windows)
    keys = sum(ctx + new for ctx, new in windows)
    return 1.0, float(tokens), pairs / 1e6, float(len(windows)), keys / 1e3


@dataclass(frozen=True)
class PrefillCost:
    """A fitted prefill step time (ms); ``step_ms(windows)`` for ``(context, new)`` windows."""

    intercept_ms: float
    ms_per_token: float
    ms_per_mega_pair: float  # per million (new token, key) pairs attention visits
    ms_per_window: float
    points: int  # grid rows fitted
    median_rel_error: float  # |model - measured| / measured over the grid
    max_rel_error: float
    source: str = ""  # results file and device
    ms_per_kilo_key: float = 0.0  # per thousand keys read from the KV cache
    floor_ms: float = 0.0  # no step is modelled faster than this
    graph_buckets: tuple[int, ...] = ()  # the measured runner's row buckets (steps padded to them)

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        """Modelled time (ms) of prefilling one step of ``(context_tokens, new_tokens)`` windows.
        ValueError/TypeError naming the first bad window."""
        coef = (self.intercept_ms, self.ms_per_token, self.ms_per_mega_pair, self.ms_per_window, self.ms_per_kilo_key)
        return max(self.floor_ms, float(sum(c * f for c, f in zip(coef, step_features(windows, self.graph_buckets)))))


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
    if not isinstance(rows, list) or len(rows) < len(TERMS):
        raise ValueError(f"{where}: field 'rows' must be a list of at least {len(TERMS)} rows")
    for k, row in enumerate(rows):
        ms = row.get("ms_median") if isinstance(row, Mapping) else None
        if "step_windows" not in row or isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
            raise ValueError(f"{where}: row {k} needs 'step_windows' and a positive 'ms_median', got {row!r}")


def _nonnegative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: drop the most negative term, refit, repeat."""
    active = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        coef[active] = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        worst = min(active, key=lambda j: coef[j])
        if coef[worst] >= 0:
            return coef
        active.remove(worst)


def fit_prefill_cost(results: Mapping[str, Any] | str | Path) -> PrefillCost:
    """Fit ``PrefillCost`` to a prefill results file (or its loaded dict)."""
    where = str(results) if isinstance(results, (str, Path)) else "results"
    data = load_prefill_results(results) if isinstance(results, (str, Path)) else results
    _check_results(data, where)
    buckets = tuple(data.get("settings", {}).get("graph_buckets", ())) if data.get("settings", {}).get("cuda_graphs") else ()
    feats = np.array([step_features([tuple(w) for w in row["step_windows"]], buckets) for row in data["rows"]])
    ms = np.array([float(row["ms_median"]) for row in data["rows"]])
    floor, coef, rel = min((_fit(feats, ms, floor) for floor in (False, True)), key=lambda fit: fit[2].mean())
    device = data.get("machine", {}).get("device_name", "?")
    intercept, per_token, per_pair, per_window, per_key = map(float, coef)
    return PrefillCost(intercept, per_token, per_pair, per_window, points=len(ms),
                       median_rel_error=float(np.median(rel)), max_rel_error=float(rel.max()),
                       source=f"{where} ({device})", ms_per_kilo_key=per_key, floor_ms=floor, graph_buckets=buckets)


def _fit(feats: np.ndarray, ms: np.ndarray, with_floor: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """(floor, coefficients, relative errors) of the line, with or without a floor; the caller
    keeps whichever fits the grid better (a grid with no launch-bound steps needs no floor)."""
    at_floor = ms <= FLOOR_WITHIN * ms.min() if with_floor else np.zeros(len(ms), dtype=bool)
    if (~at_floor).sum() < len(TERMS):  # too few rows above the floor to fit the line
        at_floor[:] = False
    floor = float(np.median(ms[at_floor])) if at_floor.any() else 0.0
    line = ~at_floor
    coef = _nonnegative_fit(feats[line] / ms[line, None], np.ones(line.sum()))  # relative residuals
    return floor, coef, np.abs(np.maximum(floor, feats @ coef) - ms) / ms


def default_prefill_results(folder: str | Path = DEFAULT_FOLDER) -> Path:
    """The newest ``prefill-*.json`` in ``folder`` (names carry a UTC timestamp)."""
    found = sorted(Path(folder).glob("prefill-*.json"))
    if not found:
        raise FileNotFoundError(f"no prefill-*.json in {folder}: run `python -m vitkit.bench.prefill` on a GPU first")
    return found[-1]


def load_prefill_cost(path: str | Path | None = None) -> PrefillCost:
    """The cost model fitted to ``path``, by default the stored H100 measurements."""
    path = default_prefill_results() if path is None else Path(path)
    return fit_prefill_cost(path)
