"""Figures of a sweep results file (``vitkit.bench.rows.load_results``): latency, throughput, speedup,
MFU, peak memory and bookkeeping per sweep, and the memory model. Built without pyplot (no global
state): notebooks display them, ``save_figures`` writes PNGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitkit.bench.rows import BenchRow

# The axes a sweep may vary, in the order one taking several values is looked for.
X_AXES = ("requests", "images_per_request", "resolution", "hit_fraction", "max_tokens_per_call")
X_LABELS = {"requests": "requests in the step", "images_per_request": "images per request",
            "resolution": "image side (px)", "hit_fraction": "cache hit fraction",
            "max_tokens_per_call": "max_tokens_per_call (rows)"}
MODE_COLORS = {"batched": "tab:blue", "per_request": "tab:orange"}
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
    if all(_is_number(v) for v in values):
        return [float(v) for v in values], None
    labels = [("none" if v is None else str(v)) for v in dict.fromkeys(values)]
    index = {label: k for k, label in enumerate(labels)}
    return [float(index["none" if v is None else str(v)]) for v in values], labels


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def speedup_spread(batched: BenchRow, per_request: BenchRow) -> tuple[float, float, float]:
    """(low, median, high) of per-request over batched step time: the median ratio and the ratios of the
    p10/p90 ends that bound it (slowest batched against fastest per-request, and the reverse)."""
    return (per_request.step_ms_p10 / batched.step_ms_p90, per_request.step_ms_median / batched.step_ms_median,
            per_request.step_ms_p90 / batched.step_ms_p10)


def readable_speedup(low: float, median: float, high: float) -> bool:
    """A speedup is worth stating when its p10-p90 spread is narrower than its distance from 1 (no change)."""
    return high - low < abs(median - 1.0)


def plot_sweep(results: Mapping[str, Any], sweep: str) -> Figure:
    """Six panels over the sweep's varying axis; a colour per (encoder, impl), a line style per mode, one legend."""
    rows = sweep_rows(results, sweep)
    if not rows:
        raise ValueError(f"no rows for sweep {sweep!r}; sweeps in this file: {sweep_names(results)}")
    axis = x_axis(rows)
    xs, labels = _positions([getattr(r, axis) for r in rows])
    at = {id(r): x for r, x in zip(rows, xs)}
    series: dict[tuple[str, str, str], list[BenchRow]] = {}
    for row in rows:
        series.setdefault((row.encoder, row.impl, row.mode), []).append(row)
    colors = {key: f"C{k}" for k, key in enumerate(dict.fromkeys((e, i) for e, i, _ in series))}
    one = len(colors) == 1  # one tower and impl: colour tells the mode, as in the other figures
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    for ax, (metric, ylabel) in zip(fig.subplots(2, 3).ravel(), PANELS):
        if metric == "peak_mem_bytes" and all(r.peak_mem_bytes is None for r in rows):
            ax.text(0.5, 0.5, "peak memory is not measured on CPU", transform=ax.transAxes, ha="center",
                    va="center")
            ax.set(xticks=[], yticks=[], title=ylabel)
            continue
        for (encoder, impl, mode), members in series.items():
            color = MODE_COLORS[mode] if one else colors[(encoder, impl)]
            if metric == "speedup":
                if mode == "batched":
                    _plot_speedup(ax, rows, encoder, impl, members, axis, at, color)
            else:
                _plot_metric(ax, metric, mode, members, axis, at, color)
        ax.set(xlabel=X_LABELS.get(axis, axis), ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        _x_ticks(ax, axis, xs, labels, rows)
    _sweep_legend(fig, colors, {mode for _, _, mode in series}, one)
    peak = results.get("matmul_peak") or {}
    rate = f", matmul peak {peak['tflops']:.3g} TFLOP/s ({peak.get('label', '')})" if peak.get("tflops") else ""
    smoke = " [CPU SMOKE: not a GPU measurement]" if results.get("kind", "") == "cpu-smoke" else ""
    fig.suptitle(f"{sweep}: {results.get('machine', {}).get('device_name', '?')}{rate}{smoke}")
    return fig


def _x_ticks(ax, axis: str, xs: Sequence[float], labels: list[str] | None, rows: Sequence[BenchRow]) -> None:
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels)
        numeric = [k for k, v in enumerate(dict.fromkeys(getattr(r, axis) for r in rows)) if _is_number(v)]
        if numeric and len(numeric) < len(labels):  # a category such as "mixed" stands apart from the sizes
            ax.axvline(max(numeric) + 0.5, color="grey", linewidth=0.8, linestyle=":")
    elif axis in ("requests", "images_per_request", "max_tokens_per_call") and max(xs) / max(min(xs), 1e-9) >= 4:
        ax.set_xscale("log", base=2)


def _sweep_legend(fig: Figure, colors: Mapping[tuple[str, str], str], modes: set[str], by_mode: bool) -> None:
    """One legend under the panels (a legend inside a panel covers points): towers, then modes."""
    handles = [Line2D([], [], color="none" if by_mode else c, linewidth=3, label=f"{encoder} {impl}")
               for (encoder, impl), c in colors.items()]
    handles += [Line2D([], [], color=MODE_COLORS[mode] if by_mode else "black", label=mode.replace("_", "-"),
                       **MODE_STYLE[mode]) for mode in MODE_STYLE if mode in modes]
    handles.append(Line2D([], [], color="black", marker="o", fillstyle="none", linestyle="none",
                          label="speedup whose p10-p90 spread exceeds the effect"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=9, frameon=False)


def _segments(members: Sequence[BenchRow], axis: str) -> list[list[BenchRow]]:
    """``members`` split where the x axis leaves the numbers for a category (no line joins 1344 to "mixed")."""
    numeric = [r for r in members if _is_number(getattr(r, axis))]
    return [part for part in (numeric, [r for r in members if r not in numeric]) if part]


def _plot_metric(ax, metric: str, mode: str, members: Sequence[BenchRow], axis: str, at: Mapping[int, float],
                 color: str) -> None:
    scale = SCALE.get(metric, 1.0)
    for part in _segments(members, axis):
        xs = [at[id(r)] for r in part]
        ys = [getattr(r, metric) * scale if getattr(r, metric) is not None else float("nan") for r in part]
        ax.plot(xs, ys, color=color, label=mode, **MODE_STYLE.get(mode, {}))
        if metric == "step_ms_median":
            low = [r.step_ms_median - r.step_ms_p10 for r in part]
            high = [r.step_ms_p90 - r.step_ms_median for r in part]
            ax.errorbar(xs, ys, yerr=[low, high], fmt="none", capsize=3, color=color)


def _plot_speedup(ax, rows, encoder, impl, members, axis, at, color) -> None:
    """Median speedup with its p10-p90 spread; a point whose spread exceeds its effect is drawn hollow."""
    other = {repr(getattr(r, axis)): r for r in rows
             if (r.encoder, r.impl) == (encoder, impl) and r.mode == "per_request"}
    for part in _segments(members, axis):
        pairs = [(at[id(r)], speedup_spread(r, other[repr(getattr(r, axis))]))
                 for r in part if repr(getattr(r, axis)) in other]
        if not pairs:
            continue
        xs = [x for x, _ in pairs]
        low, mid, high = ([s[k] for _, s in pairs] for k in range(3))
        ax.plot(xs, mid, color=color, linestyle="-", label=f"{encoder} {impl}")
        ax.errorbar(xs, mid, yerr=[[m - lo for m, lo in zip(mid, low)], [h - m for m, h in zip(mid, high)]],
                    fmt="none", capsize=3, color=color)
        for x, (lo, m, hi) in pairs:
            ax.plot([x], [m], marker="o", color=color, fillstyle="full" if readable_speedup(lo, m, hi) else "none")
    ax.axhline(1.0, color="grey", linewidth=0.8)


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
