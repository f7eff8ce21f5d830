"""Language-model prefill cost, fitted to a measured prefill grid so that any CPU can replay it.

A step of windows ``(context_i, new_i)`` is modelled as

    ms = intercept_ms + ms_per_token * N + ms_per_mega_pair * P / 1e6 + ms_per_window * W

with ``N = sum new_i`` (the GEMMs' rows: linear work), ``P = sum new_i (context_i + new_i / 2)``
(query-key pairs causal attention visits: its work) and ``W`` windows (the LM head on each
finishing window's last token, per-window kernel work). The coefficients are fitted by least
squares on relative error (rows divided by their measured time, so a 5 ms step counts as much as
a 300 ms one) and kept non-negative (a term whose coefficient would be negative is dropped and the
rest refitted). The fit's median and largest relative error over the grid are stored with it.
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

PREFILL_SCHEMA = "vitkit.prefill/1"
DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "results" / "h100"
TERMS = ("intercept_ms", "ms_per_token", "ms_per_mega_pair", "ms_per_window")


def step_features(windows: Sequence[tuple[int, int]]) -> tuple[float, float, float, float]:
    """``(1, N, P / 1e6, W)`` of a step (see the module docstring); validates ``windows``."""
    windows = check_windows(windows)
    tokens = sum(new for _, new in windows)
    pairs = sum(new * (ctx + new / 2) for ctx, new in windows)
    return 1.0, float(tokens), pairs / 1e6, float(len(windows))


@dataclass(frozen=True)
class PrefillCost:
    """A fitted prefill step time (ms); ``step_ms(windows)`` for ``(context, new)`` windows."""

    intercept_ms: float
    ms_per_token: float
    ms_per_mega_pair: float  # per million (new token, key) pairs attention visits
    ms_per_window: float
    points: int  # grid rows fitted
    median_rel_error: float  # |model - measured| / measured over the fitted rows
    max_rel_error: float
    source: str = ""  # results file and device

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        """Modelled time (ms) of prefilling one step of ``(context_tokens, new_tokens)`` windows.
        ValueError/TypeError naming the first bad window."""
        coef = (self.intercept_ms, self.ms_per_token, self.ms_per_mega_pair, self.ms_per_window)
        return float(sum(c * f for c, f in zip(coef, step_features(windows))))


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
    feats = np.array([step_features([tuple(w) for w in row["step_windows"]]) for row in data["rows"]])
    ms = np.array([float(row["ms_median"]) for row in data["rows"]])
    coef = _nonnegative_fit(feats / ms[:, None], np.ones_like(ms))  # relative residuals
    rel = np.abs(feats @ coef - ms) / ms
    device = data.get("machine", {}).get("device_name", "?")
    return PrefillCost(*map(float, coef), points=len(ms), median_rel_error=float(np.median(rel)),
                       max_rel_error=float(rel.max()), source=f"{where} ({device})")


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
