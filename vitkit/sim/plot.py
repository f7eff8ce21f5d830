"""Figures of simulator runs (matplotlib ``Figure`` objects, no pyplot state).

Runs are told apart by colour (mode), line style (cache size) and line width (pinning), so a
``compare`` grid of modes x cache sizes x pin on/off reads in one panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from matplotlib.figure import Figure

from vitkit.sim.run import SimRun, Stream

MODE_COLORS = {"batched": "tab:blue", "per_request": "tab:orange"}
STYLES = ("-", "--", ":", "-.")
METRICS = {
    "hit_rate": "cache hit rate (cumulative)",
    "encoder_calls": "encoder calls (cumulative)",
    "encoder_ms": "encoder time, ms (cumulative)",
    "re_encodings": "re-encodings (cumulative)",
    "request_re_encodings": "re-encodings within a request (cumulative)",
    "bookkeeping_ms": "bookkeeping time, ms (cumulative)",
}


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g} MiB"


def capacity_label(run: SimRun) -> str:
    s = run.summary
    return f"{s.capacity_tokens} tokens" if s.capacity_tokens is not None else _mib(s.capacity_bytes)


def run_label(run: SimRun) -> str:
    s = run.summary
    return f"{s.mode}, cache {capacity_label(run)}, pin {'on' if s.pin else 'off'}"


def _style(run: SimRun, capacities: list[int]) -> dict:
    s = run.summary
    return {
        "color": MODE_COLORS.get(s.mode, "tab:gray"),
        "linestyle": STYLES[capacities.index(s.capacity_bytes) % len(STYLES)],
        "linewidth": 2.0 if s.pin else 1.0,
        "label": run_label(run),
    }


def _figure_legend(fig: Figure, ax) -> None:
    """One legend for the figure, below its panels: with a dozen runs a legend inside a panel
    covers the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")


def series(run: SimRun, metric: str) -> list[float]:
    """Cumulative per-step series of ``metric`` (hit rate = hits so far / lookups so far)."""
    if metric == "hit_rate":
        hits = list(accumulate(r.hits for r in run.rows))
        touched = list(accumulate(r.items_touched for r in run.rows))
        return [h / t if t else 0.0 for h, t in zip(hits, touched)]
    return list(accumulate(getattr(r, metric) for r in run.rows))


def plot_over_steps(runs: Sequence[SimRun], metrics: Sequence[str] = ("hit_rate", "encoder_calls", "encoder_ms")) -> Figure:
    """One panel per metric, cumulative over scheduler steps, one line per run."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    capacities = sorted({run.summary.capacity_bytes for run in runs})
    fig = Figure(figsize=(5.0 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for run in runs:
            ax.plot([r.step for r in run.rows], series(run, metric), **_style(run, capacities))
        ax.set_xlabel("scheduler step")
        ax.set_title(METRICS[metric])
    _figure_legend(fig, axes[0])
    return fig


def plot_cache_memory(runs: Sequence[SimRun]) -> Figure:
    """Cache bytes and pinned bytes (MiB) after each step, one line per run."""
    capacities = sorted({run.summary.capacity_bytes for run in runs})
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    ax_bytes, ax_pinned = fig.subplots(1, 2)
    for run in runs:
        steps = [r.step for r in run.rows]
        style = _style(run, capacities)
        ax_bytes.plot(steps, [r.cache_bytes / 2**20 for r in run.rows], **style)
        ax_pinned.plot(steps, [r.pinned_bytes / 2**20 for r in run.rows], **style)
    for ax, title in ((ax_bytes, "cache MiB"), (ax_pinned, "pinned MiB")):
        ax.set_xlabel("scheduler step")
        ax.set_title(title)
    _figure_legend(fig, ax_bytes)
    return fig


def plot_summary(runs: Sequence[SimRun], metric: str = "encoder_ms") -> Figure:
    """A run total (any ``RunSummary`` field) against cache size, one line per mode x pin."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    in_tokens = all(run.summary.capacity_tokens is not None for run in runs)
    groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for run in runs:
        s = run.summary
        size = s.capacity_tokens if in_tokens else s.capacity_bytes / 2**20
        groups.setdefault((s.mode, s.pin), []).append((size, getattr(s, metric)))
    for (mode, pin), points in sorted(groups.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                color=MODE_COLORS.get(mode, "tab:gray"), linestyle="-" if pin else "--",
                label=f"{mode}, pin {'on' if pin else 'off'}")
    ax.set_xlabel("cache capacity, " + ("embedding rows (tokens)" if in_tokens else "MiB"))
    ax.set_title(metric)
    ax.legend(fontsize="small")
    return fig


def plot_schedule(stream: Stream) -> Figure:
    """The planned windows: one row per request, one bar per step it ran (tokens in the bar)."""
    rids = list(stream.requests)
    fig = Figure(figsize=(10.0, 0.25 * len(rids) + 1.5), layout="constrained")
    ax = fig.subplots()
    for step in stream.steps:
        for w in step.windows:
            y = rids.index(w.rid)
            ax.barh(y, 0.9, left=step.index, height=0.8, color="tab:blue", alpha=0.3 + 0.7 * len(w) / max(1, step.tokens))
        for rid in step.aborted:
            ax.plot(step.index, rids.index(rid), marker="x", color="tab:red")
    ax.set_yticks(range(len(rids)), [str(r) for r in rids], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("scheduler step (darker: larger share of the step's tokens; x: aborted)")
    return fig
