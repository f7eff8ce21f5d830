"""Figures of a stream results file (``vitkit.stream/1``): throughput per impl and mode, and step
latency along the stream. Built without pyplot, like ``vitkit.bench.plot``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

MODE_COLOR = {"batched": "tab:blue", "per_request": "tab:orange"}


def stream_figure(results: Mapping[str, Any]) -> Figure:
    """Left: embedding rows encoded per second on the stream per impl, both modes, with the
    steady state (one step's shape repeated, all misses) marked; right: batched step latency along
    the stream per impl. Rows, not images: a repeated image is a cache hit, not encoder work."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.6))
    summaries = results["summaries"]
    impls = list(dict.fromkeys(s["impl"] for s in summaries))
    width = 0.38
    for m, mode in enumerate(("batched", "per_request")):
        values = [next((s["rows_per_s"] for s in summaries if s["impl"] == i and s["mode"] == mode), 0) for i in impls]
        bars = left.bar([k + (m - 0.5) * width for k in range(len(impls))], values, width, label=mode,
                        color=MODE_COLOR[mode])
        left.bar_label(bars, fmt="%.0f", fontsize=7)
    for k, impl in enumerate(impls):
        steady = next((s for s in results["steady"] if s["impl"] == impl), None)
        if steady:
            left.hlines(steady["rows_per_s"], k - width, k, colors="black", linestyles=":",
                        label="steady state (one shape repeated)" if k == 0 else None)
    left.set_xticks(range(len(impls)), impls)
    left.set_ylabel("embedding rows encoded / s on the stream")
    left.legend(fontsize=8, loc="upper right")
    for impl in impls:
        rows = [r for r in results["steps"] if r["impl"] == impl and r["mode"] == "batched"]
        right.plot([r["step"] for r in rows], [r["step_ms"] for r in rows], lw=0.9, label=impl)
    right.set_yscale("log")
    right.set_xlabel("step of the stream (batched mode)")
    right.set_ylabel("step latency (ms, log)")
    right.legend(fontsize=8, loc="upper right")
    spec = results["settings"]["stream"]
    fig.suptitle(f"{spec['encoder']} stream: {spec['steps']} steps of {spec['images_per_step'][0]}-"
                 f"{spec['images_per_step'][1]} images — {results['machine']['device_name']} ({results['kind']})")
    return fig


def save_stream_figure(results: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    stream_figure(results).savefig(path, dpi=110)
    return path
