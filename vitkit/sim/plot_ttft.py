"""Figures of timed replays: TTFT against load, and the admission policies side by side.

One panel per workload; colour tells the mode (as in ``vitkit.sim.plot``), line style the
percentile (p99 solid, p50 dashed), marker the admission policy. One legend for the whole
figure, below the panels, so no legend covers a curve. The title names the cost models and
says that decode is not modelled.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from vitkit.sim.plot import MODE_COLORS
from vitkit.sim.ttft import LoadPoint

PERCENTILES = {"ttft_p99_ms": ("p99", "-"), "ttft_p50_ms": ("p50", "--")}
POLICY_MARKERS = {"legacy": "o", "cache-aware": "s"}


def _curves(points: Sequence[LoadPoint]) -> dict[tuple[str, str, str], list[LoadPoint]]:
    curves: dict[tuple[str, str, str], list[LoadPoint]] = {}
    for p in points:
        c = p.run.config
        curves.setdefault((p.workload, c.mode, c.policy), []).append(p)
    for curve in curves.values():
        curve.sort(key=lambda p: p.rate_per_s)
    return curves


def measured_points(validation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The GPU-measured TTFT of a stored validation (``python -m vitkit.sim validate``): one dict
    per workload and mode with its Poisson rate, request count, p50 and p99 (ms), and the
    validation's settings."""
    settings = validation.get("settings", {})
    out = []
    for row in validation["rows"]:
        match = re.fullmatch(r"poisson ([0-9.]+)/s", str(row.get("arrivals", "")))
        if match is None:
            continue
        out.append({"workload": row["workload"], "mode": row["mode"], "rate_per_s": float(match.group(1)),
                    "requests": row["measured"]["requests"],
                    "ttft_p50_ms": row["measured_p50_ms"], "ttft_p99_ms": row["measured_p99_ms"],
                    "chunked_prefill_size": settings.get("chunked_prefill_size"),
                    "cache_tokens": settings.get("cache_tokens")})
    return out


def plot_ttft_vs_load(points: Sequence[LoadPoint], bound_ms: float | None = None, title: str | None = None,
                      measured: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """TTFT p50 and p99 (ms, log scale) against the arrival rate, one panel per workload.

    ``measured`` (from ``measured_points``) adds the real GPU replay's p50 and p99 as large hollow
    markers where a panel's workload matches, so a model's curve is read next to what the card did."""
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
                label = f"{mode} {name}" + (f", {policy}" if len(policies) > 1 else "")
                ax.plot([p.rate_per_s for p in curve], [getattr(p.run.summary, metric) for p in curve],
                        linestyle=style, marker=POLICY_MARKERS.get(policy, "^"), markersize=4,
                        color=MODE_COLORS.get(mode, "tab:gray"), label=label)
        for m in measured:
            if m["workload"] == workload:
                for metric, (name, _) in PERCENTILES.items():
                    ax.plot([m["rate_per_s"]], [m[metric]], linestyle="none", marker="D" if name == "p99" else "o",
                            markersize=9, markerfacecolor="none", markeredgewidth=1.6,
                            color=MODE_COLORS.get(m["mode"], "tab:gray"), label=f"{m['mode']} {name}, H100 replay (measured)")
        if bound_ms is not None:
            ax.axhline(bound_ms, color="tab:red", linewidth=0.8, linestyle=":", label=f"p99 bound {bound_ms:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("arrival rate, requests/s (Poisson)")
        ax.set_ylabel("time to first token, ms")
        ax.set_title(workload)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=min(2 + 2 * (len(workloads) > 1), len(unique)),
               fontsize="small")
    sources = "\n".join(textwrap.wrap(points[0].run.sources, 60 * len(workloads) + 40))
    fig.suptitle(title or f"TTFT vs load (prefill only; decode not modelled)\n{sources}", fontsize="small")
    return fig


def plot_admission(rows: Sequence[dict], metrics: Sequence[str] = ("request_re_encodings", "refused_puts", "ttft_p99_ms")) -> Figure:
    """Grouped bars per metric: one group per (trace, cache size), one bar per mode x policy
    (colour: mode; hatched: cache-aware). ``rows`` are ``TimedRun.record()`` dicts with "trace"."""
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
        ax.set_xticks(range(len(groups)), [f"{t}\ncache {c}" for t, c in groups], fontsize="x-small", rotation=30, ha="right")
        ax.set_title(metric.replace("_", " "))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(configs), fontsize="small")
    fig.suptitle("admission policies (hatched: cache-aware); prefill only, decode not modelled", fontsize="small")
    return fig
