"""Figures of a sweep results file (``vitkit.bench.rows.load_results``): latency, throughput, speedup,
MFU, peak memory and bookkeeping per sweep, and the memory model. Built without pyplot (no global
state): notebooks display them, ``save_figures`` writes PNGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vitkit.bench.rows import BenchRow

# The axes a sweep may vary, in the order one taking several values is looked for.
X_AXES = ("requests", "images_per_request", "resolution", "hit_fraction", "max_tokens_per_call")
X_LABELS = {"requests": "requests in the step", "images_per_request": "images per request",
            "resolution": "image side (px)", "hit_fraction": "cache hit fraction",
            "max_tokens_per_call": "max_tokens_per_call (rows)"}
MODE_STYLE = {"batched": dict(marker="o", linestyle="-"), "per_request": dict(marker="s", linestyle="--")}
PANELS = (("step_ms_median", "step latency (ms, median; bars p10-p90)"), ("images_per_s", "throughput (images/s)"),
          ("speedup", "speedup: per-request / batched step time"),
          ("mfu", "MFU (%: model FLOPs / step time / matmul peak)"), ("peak_mem_bytes", "peak memory (GiB)"),
          ("bookkeeping_share", "bookkeeping share of the step (%)"))
SCALE = {"mfu": 100.0, "bookkeeping_share": 100.0, "peak_mem_bytes": 1 / 2**30}


def sweep_names(results: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(row.sweep for row in results["rows"]))


def sweep_rows(results: Mapping[str, Any], sweep: str) -> list[BenchRow]:
    return [row for row in results["rows"] if row.sweep == sweep]


def x_axis(rows: Sequence[BenchRow]) -> str:
    """The first of ``X_AXES`` that takes more than one value in ``rows`` (else "requests")."""
    for axis in X_AXES:
        if len({repr(getattr(row, axis)) for row in rows}) > 1:
            return axis
    return "requests"


def _positions(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numeric x positions, or category indices plus labels when any value is not a number."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = [("none" if v is None else str(v)) for v in dict.fromkeys(values)]
    index = {label: k for k, label in enumerate(labels)}
    return [float(index["none" if v is None else str(v)]) for v in values], labels


def plot_sweep(results: Mapping[str, Any], sweep: str) -> Figure:
    """Six panels over the sweep's varying axis; one line per (encoder, impl, mode)."""
    rows = sweep_rows(results, sweep)
    if not rows:
        raise ValueError(f"no rows for sweep {sweep!r}; sweeps in this file: {sweep_names(results)}")
    axis = x_axis(rows)
    xs, labels = _positions([getattr(r, axis) for r in rows])
    at = {id(r): x for r, x in zip(rows, xs)}
    series: dict[tuple[str, str, str], list[BenchRow]] = {}
    for row in rows:
        series.setdefault((row.encoder, row.impl, row.mode), []).append(row)
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    for ax, (metric, ylabel) in zip(fig.subplots(2, 3).ravel(), PANELS):
        for (encoder, impl, mode), members in series.items():
            if metric != "speedup" or mode == "batched":
                _plot_metric(ax, metric, rows, encoder, impl, mode, members, axis, at)
        ax.set(xlabel=X_LABELS.get(axis, axis), ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels)
        elif axis in ("requests", "images_per_request", "max_tokens_per_call") and max(xs) / max(min(xs), 1e-9) >= 4:
            ax.set_xscale("log", base=2)
        if metric == "peak_mem_bytes" and all(r.peak_mem_bytes is None for r in rows):
            ax.text(0.5, 0.5, "not measured on CPU", transform=ax.transAxes, ha="center", va="center")
        elif ax.lines:
            ax.legend(fontsize=7)
    peak = results.get("matmul_peak") or {}
    rate = f", matmul peak {peak['tflops']:.3g} TFLOP/s ({peak.get('label', '')})" if peak.get("tflops") else ""
    smoke = " [CPU SMOKE: not a GPU measurement]" if results.get("kind", "") == "cpu-smoke" else ""
    fig.suptitle(f"{sweep}: {results.get('machine', {}).get('device_name', '?')}{rate}{smoke}")
    return fig


def _plot_metric(ax, metric, rows, encoder, impl, mode, members, axis, at) -> None:
    xs = [at[id(r)] for r in members]
    if metric == "speedup":
        other = {repr(getattr(r, axis)): r for r in rows if (r.encoder, r.impl) == (encoder, impl)
                 and r.mode == "per_request"}
        pairs = [(x, other[repr(getattr(r, axis))].step_ms_median / r.step_ms_median)
                 for x, r in zip(xs, members) if repr(getattr(r, axis)) in other]
        if pairs:
            ax.plot(*zip(*pairs), marker="o", label=f"{encoder} {impl}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
        return
    scale = SCALE.get(metric, 1.0)
    ys = [getattr(r, metric) * scale if getattr(r, metric) is not None else float("nan") for r in members]
    ax.plot(xs, ys, label=f"{encoder} {impl} {mode}", **MODE_STYLE.get(mode, {}))
    if metric == "step_ms_median":
        low = [r.step_ms_median - r.step_ms_p10 for r in members]
        high = [r.step_ms_p90 - r.step_ms_median for r in members]
        ax.errorbar(xs, ys, yerr=[low, high], fmt="none", capsize=3, color=ax.lines[-1].get_color())


def plot_memory_model(results: Mapping[str, Any]) -> Figure | None:
    """Predicted vs measured peak memory over ``max_tokens_per_call`` (None without such rows)."""
    report = results.get("memory_model") or []
    if not report:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_abs, ax_err = fig.subplots(1, 2)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for entry in report:
        groups.setdefault((entry["encoder"], entry["impl"], entry["mode"]), []).append(entry)
    for (encoder, impl, mode), entries in groups.items():
        xs = [e["max_call_tokens"] for e in entries]
        line = ax_abs.plot(xs, [e["measured_peak_bytes"] / 2**30 for e in entries], marker="o",
                           label=f"{encoder} {impl} {mode} measured")
        ax_abs.plot(xs, [e["predicted_peak_bytes"] / 2**30 for e in entries], linestyle=":", marker="x",
                    color=line[0].get_color(), label="predicted")
        ax_err.plot(xs, [100 * e["error"] for e in entries], marker="o", label=f"{encoder} {impl} {mode} (peak)")
        ax_err.plot(xs, [100 * (e["step_error"] or 0.0) for e in entries], marker="x", linestyle=":",
                    label="(step part)")
    ax_err.axhspan(-10, 10, color="green", alpha=0.1, label="target +-10%")
    for ax, ylabel in ((ax_abs, "peak memory (GiB)"), (ax_err, "error vs prediction (%)")):
        ax.set(xlabel="largest encoder call (embedding rows)", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("memory model: calibrated at the largest call, predicted elsewhere")
    return fig


def figures(results: Mapping[str, Any]) -> dict[str, Figure]:
    """One figure per sweep in the file, plus the memory model when it has data."""
    figs = {sweep: plot_sweep(results, sweep) for sweep in sweep_names(results)}
    memory = plot_memory_model(results)
    if memory is not None:
        figs["memory-model"] = memory
    return figs


def save_figures(results: Mapping[str, Any], folder: str | Path, prefix: str = "") -> list[Path]:
    """Write ``figures(results)`` as PNGs named ``<prefix><name>.png`` into ``folder``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(results).items():
        paths.append(Path(folder) / f"{prefix}{name}.png")
        fig.savefig(paths[-1], dpi=110)
    return paths
