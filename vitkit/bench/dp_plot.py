"""Notebook 02's scaling panel: the data-parallel encoder across N GPUs, from stored results.

Reads the merged results of ``python -m vitkit.bench.dp`` (``dp.json``): one row per N, tower,
mode, policy and gather, with ``speedup`` and ``efficiency`` against one GPU. Built without
pyplot (no global state), like ``vitkit.bench.plot``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[2]
STORED_DP = REPO / "results" / "h100" / "dp" / "dp.json"  # where the H100 runs are merged
DEFAULT_GATHER = "all_gather_into_tensor"
POLICY_COLORS = {"token-balanced": "tab:blue", "round-robin": "tab:orange", "contiguous": "tab:green"}
MODE_STYLE = {"batched": dict(marker="o", linestyle="-"), "per_request": dict(marker="s", linestyle="--")}
PANELS = (("speedup", "speedup vs 1 GPU (x)"), ("efficiency", "scaling efficiency (speedup / N)"),
          ("images_per_s", "images/s"), ("batched_over_per_request", "batched / per-request (x)"),
          ("load_balance", "load balance (max rank rows / mean)"))


def load_dp_results(path: str | Path) -> dict[str, Any]:
    """A merged ``dp.json`` (``python -m vitkit.bench.dp --merge DIR`` writes it)."""
    results = json.loads(Path(path).read_text())
    if "rows" not in results:
        raise ValueError(f"{path}: not a vitkit.bench.dp results file (no 'rows')")
    return results


def stored_dp_results(path: str | Path = STORED_DP) -> dict[str, Any] | None:
    """The stored merged results, or None when none are stored yet (the notebook says so)."""
    return load_dp_results(path) if Path(path).is_file() else None


def scaling_series(rows: Sequence[Mapping[str, Any]], encoder: str, gather: str = DEFAULT_GATHER
                   ) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """(policy, mode) -> rows of ``encoder`` sorted by N. The N=1 row (policies and gathers are
    all the wrapped encoder there) starts every policy's line; other N use ``gather``."""
    ones = [r for r in rows if r["encoder"] == encoder and r["world_size"] == 1]
    many = [r for r in rows if r["encoder"] == encoder and r["world_size"] > 1 and r["gather"] == gather]
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in many:
        series.setdefault((r["policy"], r["mode"]), []).append(r)
    for (policy, mode), group in series.items():
        group.extend(r for r in ones if r["mode"] == mode)
        group.sort(key=lambda r: r["world_size"])
    return series


def dp_scaling_figure(results: Mapping[str, Any], gather: str = DEFAULT_GATHER) -> Figure:
    """One row of panels per tower: speedup (with the ideal line), efficiency, images/s,
    batched-over-per-request speedup and load balance against the number of GPUs, a line per
    policy (colour) and mode (style). A CPU run says so in the title."""
    rows = results["rows"]
    if not rows:
        raise ValueError("dp_scaling_figure: the results have no rows")
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    fig = Figure(figsize=(4.2 * len(PANELS), 3.4 * len(encoders)), layout="constrained")
    axes = fig.subplots(len(encoders), len(PANELS), squeeze=False)
    ns = sorted({r["world_size"] for r in rows})
    for ax_row, encoder in zip(axes, encoders):
        for (policy, mode), group in scaling_series(rows, encoder, gather).items():
            xs = [r["world_size"] for r in group]
            for ax, (key, _) in zip(ax_row, PANELS):
                ys = [r.get(key) for r in group]
                if any(y is None for y in ys):
                    continue  # no N=1 run: no speedup to draw
                ax.plot(xs, ys, color=POLICY_COLORS.get(policy, "gray"), label=f"{policy}, {mode}", **MODE_STYLE.get(mode, {}))
        ax_row[0].plot(ns, ns, color="black", linewidth=0.8, linestyle=":", label="ideal")
        for ax, (key, label) in zip(ax_row, PANELS):
            ax.set_title(f"{encoder}", fontsize=9)
            ax.set_xlabel("GPUs (N)")
            ax.set_ylabel(label)
            ax.set_xticks(ns)
            ax.grid(True, alpha=0.3)
        ax_row[0].legend(fontsize=7)
    cards = sorted({r["device_name"] for r in rows})
    smoke = " [CPU SMOKE: not a GPU measurement]" if "cpu" in cards else ""
    fig.suptitle(f"data-parallel encoder, {rows[0]['images']} images a step, gather {gather}: "
                 f"{', '.join(cards)}{smoke}")
    return fig


def dp_table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``vitkit.viz.show_table``: N, card, tower, mode, policy, gather and the figures."""
    keys = ("world_size", "device_name", "encoder", "mode", "policy", "gather", "step_ms_median", "images_per_s",
            "speedup", "efficiency", "load_balance", "gather_share", "batched_over_per_request")
    return [{k: r.get(k) for k in keys} for r in results["rows"]]
