"""Figures of replays (matplotlib ``Figure`` objects, no pyplot state).

Colour tells the mode; over steps a column per cache size and line style the pinning, against load the
percentile (marker: admission policy). One legend below the panels, so no legend covers a curve.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import Any

from matplotlib.figure import Figure

from vitkit.costs.results import cards_named
from vitkit.sim.replay import LoadPoint, Run

MODE_COLORS = {"batched": "tab:blue", "per_request": "tab:orange"}
METRICS = {
    "hit_rate": "cache hit rate (cumulative)",
    "encoder_calls": "encoder calls (cumulative)",
    "encoder_ms": "encoder time, ms (cumulative)",
    "re_encodings": "re-encodings (cumulative)",
    "request_re_encodings": "re-encodings within a request (cumulative)",
    "bookkeeping_ms": "bookkeeping time, ms (cumulative)",
}


def models_card(sources: str | None) -> str | None:
    """"models measured on H100" for a run's ``sources`` naming the card(s) its cost models came from; None
    for sources naming no card (a fixed step time, a test double)."""
    cards = cards_named(sources or "")
    return f"models measured on {' and '.join(c.upper() for c in cards)}" if cards else None


PIN_STYLES = {True: "-", False: "--"}


def _style(run: Run) -> dict:
    c = run.config
    return {"color": MODE_COLORS.get(c.mode, "tab:gray"), "linestyle": PIN_STYLES[c.pin],
            "label": f"{c.mode.replace('_', '-')}, pin {'on' if c.pin else 'off'}"}


def series(run: Run, metric: str) -> list[float]:
    """Cumulative per-step series of ``metric`` (hit rate = hits so far / lookups so far)."""
    if metric == "hit_rate":
        hits = list(accumulate(r.hits for r in run.rows))
        touched = list(accumulate(r.items_touched for r in run.rows))
        return [h / t if t else 0.0 for h, t in zip(hits, touched)]
    return list(accumulate(getattr(r, metric) for r in run.rows))


def plot_over_steps(runs: Sequence[Run],
                    metrics: Sequence[str] = ("hit_rate", "encoder_calls", "encoder_ms")) -> Figure:
    """One panel per metric, cumulative over scheduler steps, one line per run."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    return _over_steps(runs, [(METRICS[m], lambda run, m=m: series(run, m)) for m in metrics])


def plot_cache_memory(runs: Sequence[Run], row_bytes: int | None = None) -> Figure:
    """Cache and pinned MiB after each step, one line per run; with ``row_bytes``, in embedding rows (tokens)."""
    unit, name = (row_bytes, "embedding tokens") if row_bytes else (2**20, "MiB")
    return _over_steps(runs, [(f"cache ({name})", lambda run: [r.cache_bytes / unit for r in run.rows]),
                              (f"pinned ({name})", lambda run: [r.pinned_bytes / unit for r in run.rows])])


def _over_steps(runs: Sequence[Run], panels: Sequence[tuple[str, Callable[[Run], list[float]]]]) -> Figure:
    """Small multiples: a row per ``(title, a run's per-step values)``, a column per cache size, in each panel a
    line per mode (colour) and pinning (style); one legend below (a dozen runs in one panel hide each other)."""
    capacities = sorted({run.config.cache_tokens for run in runs})
    fig = Figure(figsize=(max(7.0, 3.6 * len(capacities)), 0.6 + 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(capacities), squeeze=False, sharex=True, sharey="row")
    for row, (title, values) in zip(axes, panels):
        for ax, capacity in zip(row, capacities):
            for run in (r for r in runs if r.config.cache_tokens == capacity):
                ax.plot([r.step for r in run.rows], values(run), **_style(run))
            ax.set_title(f"cache {capacity} tokens", fontsize=9)
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel(title, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("scheduler step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small", frameon=False)
    cards = list(dict.fromkeys(c for c in (models_card(run.sources) for run in runs) if c))
    if cards:  # modelled times: say whose
        fig.suptitle("; ".join(cards), fontsize="small")
    return fig


PERCENTILES = {"ttft_p99_ms": ("p99", "-"), "ttft_p50_ms": ("p50", "--")}
POLICY_MARKERS = {"legacy": "o", "cache-aware": "s"}


def _curves(points: Sequence[LoadPoint]) -> dict[tuple[str, str, str], list[LoadPoint]]:
    curves: dict[tuple[str, str, str], list[LoadPoint]] = {}
    for p in points:
        c = p.run.config
        curves.setdefault((p.workload, c.mode, c.scheduler.policy), []).append(p)
    for curve in curves.values():
        curve.sort(key=lambda p: p.rate_per_s)
    return curves


def measured_points(validation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The GPU-measured TTFT of a stored validation: per workload and mode, its Poisson rate, request
    count, p50 and p99 (ms), the card and the validation's settings."""
    settings = validation.get("settings", {})
    card = validation.get("machine", {}).get("device_name", "a GPU")
    out = []
    for row in validation["rows"]:
        match = re.fullmatch(r"poisson ([0-9.]+)/s", str(row.get("arrivals", "")))
        if match is None:
            continue
        out.append({"workload": row["workload"], "mode": row["mode"], "rate_per_s": float(match.group(1)),
                    "requests": row["measured"]["requests"],
                    "ttft_p50_ms": row["measured_p50_ms"], "ttft_p99_ms": row["measured_p99_ms"], "card": card,
                    "chunked_prefill_size": settings.get("chunked_prefill_size"),
                    "cache_tokens": settings.get("cache_tokens")})
    return out


def plot_ttft_vs_load(points: Sequence[LoadPoint], bound_ms: float | None = None, title: str | None = None,
                      measured: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """TTFT p50 and p99 (ms, log scale) against the arrival rate, one panel per workload; ``measured``
    (``measured_points``) adds a GPU replay's as hollow markers, next to the model's curve."""
    if not points:
        raise ValueError("plot_ttft_vs_load needs at least one LoadPoint")
    workloads = list(dict.fromkeys(p.workload for p in points))
    curves = _curves(points)
    policies = {key[2] for key in curves}
    fig = Figure(figsize=(max(8.0, 5.2 * len(workloads)), 4.8), layout="constrained")
    axes = fig.subplots(1, len(workloads), squeeze=False)[0]
    for ax, workload in zip(axes, workloads):
        for (w, mode, policy), curve in curves.items():
            if w != workload:
                continue
            for metric, (name, style) in PERCENTILES.items():
                label = f"{mode} {name}, modelled" + (f", {policy}" if len(policies) > 1 else "")
                ax.plot([p.rate_per_s for p in curve], [getattr(p.run.latency, metric) for p in curve],
                        linestyle=style, marker=POLICY_MARKERS.get(policy, "^"), markersize=4,
                        color=MODE_COLORS.get(mode, "tab:gray"), label=label)
        for m in measured:
            if m["workload"] == workload:
                for metric, (name, _) in PERCENTILES.items():
                    ax.plot([m["rate_per_s"]], [m[metric]], linestyle="none", marker="D" if name == "p99" else "o",
                            markersize=9, markerfacecolor="none", markeredgewidth=1.6,
                            color=MODE_COLORS.get(m["mode"], "tab:gray"),
                            label=f"{m['mode']} {name}, measured on {m.get('card', 'a GPU')}")
        if bound_ms is not None:
            ax.axhline(bound_ms, color="tab:red", linewidth=0.8, linestyle=":", label=f"p99 bound {bound_ms:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate, requests/s (Poisson)")
        ax.set_ylabel("time to first token, ms")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    sources = "\n".join(textwrap.wrap(f"models: {points[0].run.sources}", 110))  # a footnote: the legend's title
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", title=sources, title_fontsize="x-small",
               ncols=min(2 + 2 * (len(workloads) > 1), len(unique)), fontsize="small")
    card = models_card(points[0].run.sources)
    fig.suptitle(title or f"TTFT vs load{', ' + card if card else ''} (prefill only; decode not modelled)")
    return fig


def plot_admission(rows: Sequence[dict],
                   metrics: Sequence[str] = ("request_re_encodings", "refused_puts", "ttft_p99_ms"),
                   sources: str | None = None) -> Figure:
    """Bars per metric of ``Run.record()`` rows with "trace": a group a (trace, cache size), a bar a mode x policy;
    ``sources`` (``Run.sources``) names the card the TTFT's models came from."""
    if not rows:
        raise ValueError("plot_admission needs at least one row")
    groups = list(dict.fromkeys((r["trace"], r["cache_tokens"]) for r in rows))
    configs = list(dict.fromkeys((r["mode"], r["policy"]) for r in rows))
    width = 0.8 / len(configs)
    fig = Figure(figsize=(4.6 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    by_key = {(r["trace"], r["cache_tokens"], r["mode"], r["policy"]): r for r in rows}
    for ax, metric in zip(axes, metrics):
        for k, (mode, policy) in enumerate(configs):
            values = [by_key.get((t, c, mode, policy), {}).get(metric, float("nan")) for t, c in groups]
            ax.bar([g + (k - (len(configs) - 1) / 2) * width for g in range(len(groups))], values, width,
                   color=MODE_COLORS.get(mode, "tab:gray"), hatch="//" if policy == "cache-aware" else None,
                   edgecolor="white", label=f"{mode}, {policy}")
        ax.set_xticks(range(len(groups)), [f"{t}\ncache {c}" for t, c in groups], fontsize="x-small", rotation=30,
                      ha="right")
        ax.set_title(metric.replace("_", " "))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(configs), fontsize="small")
    card = models_card(sources)
    fig.suptitle(f"admission policies (hatched: cache-aware); prefill only, decode not modelled"
                 f"{'; TTFT ' + card if card else ''}", fontsize="small")
    return fig
