"""What ``python -m vitkit.bench video`` shows of its results: a figure per tower (throughput and peak encoder
memory against frames, per frame size, lines by path and mode) and the table it prints last."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from vitkit.bench.machine import table
from vitkit.embed import MODES

GIB = 2**30


PATH_COLOR = {"whole-eager": "tab:orange", "whole-bucketed": "tab:purple", "frame-groups": "tab:blue"}
MODE_LINE = {"batched": dict(linestyle="-", marker="o"), "per_request": dict(linestyle="--", marker="s")}


def series(results: Mapping[str, Any], **where: Any) -> list[Mapping[str, Any]]:
    """Summary rows matching ``where``, by frames then videos."""
    rows = [s for s in results["summary"] if all(s[k] == v for k, v in where.items())]
    return sorted(rows, key=lambda s: (s["frames"], s["videos"]))


def video_figure(results: Mapping[str, Any], preset: str) -> Figure:
    """Per resolution (columns): frames/s against frames, peak call memory against frames (with the largest
    bucket's call and the graph pool as references), frames/s against videos a step in both modes."""
    tower = next((t for t in results["towers"] if t["preset"] == preset), None)
    if tower is None:
        raise ValueError(f"no tower {preset!r} in these results; towers: {[t['preset'] for t in results['towers']]}")
    settings, sizes = results["settings"], tower["frame_sizes"]
    fig = Figure(figsize=(4.8 * len(sizes), 11), layout="constrained")
    axes = fig.subplots(3, len(sizes), squeeze=False)
    for col, size in enumerate(sizes):
        speed, memory, batching = (axes[row][col] for row in range(3))
        label = size["label"]
        for path in settings["paths"]:
            grid = series(results, preset=preset, grid="frames", resolution=label, path=path)
            frames = [s["frames"] for s in grid]
            speed.plot(frames, [s["frames_per_s"] for s in grid], color=PATH_COLOR[path], marker="o", label=path)
            peaks = [(s["frames"], s["call_peak_bytes"] / GIB) for s in grid if s["call_peak_bytes"] is not None]
            if peaks:
                memory.plot(*zip(*peaks), color=PATH_COLOR[path], marker="o", label=path)
            for mode in MODES:
                b = series(results, preset=preset, grid="batching", resolution=label, path=path, mode=mode)
                batching.plot([s["videos"] for s in b], [s["frames_per_s"] for s in b], color=PATH_COLOR[path],
                              label=f"{path}, {mode.replace('_', '-')}", **MODE_LINE[mode])
        memory_references(memory, tower)
        h, w = size["frame_px"]
        speed.set(title=f"{label}: {w}x{h} px frames, {size['rows']} rows per 2 frames", ylabel="throughput (frames/s)")
        memory.set(title="peak memory a call allocates", ylabel="peak call memory (GiB)")
        batching.set(title=f"{settings['batch_frames']} frames a video, one video a request", xlabel="videos a step",
                     ylabel="throughput (frames/s)", xticks=settings["videos"])
        for ax in (speed, memory):
            ax.set_xscale("log", base=2)
            ax.set_xticks(settings["frames"], labels=[str(f) for f in settings["frames"]])
            ax.minorticks_off()
            ax.set_xlabel("frames a video")
        for ax in (speed, memory, batching):
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    smoke = " [CPU SMOKE: not a GPU measurement]" if results.get("kind") == "cpu-smoke" else ""
    fig.suptitle(f"{preset}: video encoding, whole against frame groups of {settings['frame_group']} temporal "
                 f"patches\n{results['machine']['device_name']} ({settings['dtype']}){smoke}")
    return fig


def memory_references(ax, tower: Mapping[str, Any]) -> None:
    """The largest bucket's call and the graph pool as horizontal lines; off CUDA a note that none was measured."""
    ref = tower["largest_bucket"]
    if ref["bucketed_call_peak_bytes"] is None:
        ax.text(0.5, 0.5, "peak memory: CUDA only\n(this run measured none)", ha="center", va="center",
                transform=ax.transAxes)
        return
    ax.axhline(ref["bucketed_call_peak_bytes"] / GIB, color="grey", linestyle=":",
               label=f"largest bucket's call ({ref['patches']} patches)")
    if tower["graph_pool_bytes"]:
        ax.axhline(tower["graph_pool_bytes"] / GIB, color="black", linestyle="-.",
                   label="graph pool (bucketed paths hold it from warm-up on)")
    ax.set_yscale("log")


def gib(value: int | None) -> float | None:
    return None if value is None else value / GIB


def format_table(results: Mapping[str, Any]) -> str:
    """Frames/s and peak call memory (GiB) per tower, resolution and frames by path; then batching's gains,
    cold passes, warm-ups, the rows check and compiles after warm-up."""
    paths = results["settings"]["paths"]
    rows = {}
    for s in results["summary"]:
        if s["grid"] == "frames":
            row = rows.setdefault((s["preset"], s["resolution"], s["frames"]), dict(
                preset=s["preset"], resolution=s["resolution"], frames=s["frames"]))
            row |= {f"{s['path']} fps": s["frames_per_s"], f"{s['path']} GiB": gib(s["call_peak_bytes"])}
    columns = [("tower", "<15.15", "preset"), ("res", "<8.8", "resolution"), ("frames", "6d", "frames")]
    columns += [(f"{p[:14]} f/s", "18.1f", f"{p} fps") for p in paths]
    columns += [(f"{p[:14]} GiB", "18.2f", f"{p} GiB") for p in paths]
    lines = ["frames/s (median step) and peak call memory (GiB) of one video a step"]
    lines += table(columns, rows.values(), rule=True)
    lines += batching_lines(results) + tower_lines(results)
    lines.append(f"device={results['machine']['device_name']} kind={results['kind']} "
                 f"elapsed={results['elapsed_s']:.0f} s")
    return "\n".join(lines)


def batching_lines(results: Mapping[str, Any]) -> list[str]:
    """Per tower, resolution and path, at the most videos a step: batched against per-request frames/s."""
    most = max(results["settings"]["videos"])
    rate = {(s["preset"], s["resolution"], s["path"], s["mode"]): s["frames_per_s"] for s in results["summary"]
            if s["grid"] == "batching" and s["videos"] == most}
    lines = []
    for (preset, resolution, path, mode), fps in rate.items():
        if mode == "batched" and (preset, resolution, path, "per_request") in rate:
            alone = rate[preset, resolution, path, "per_request"]
            lines.append(f"{preset} {resolution} {path}: {most} videos a step batched {fps:.0f} frames/s, "
                         f"per-request {alone:.0f} ({fps / alone - 1:+.0%})")
    return lines


def tower_lines(results: Mapping[str, Any]) -> list[str]:
    """Per tower: cold first steps, warm-up, the memory reference, compiles after warm-up and the rows check."""
    lines = []
    for tower in results["towers"]:
        preset, w, ref = tower["preset"], tower["warmup"], tower["largest_bucket"]
        cold = ", ".join(f"{c['path']} {c['step_ms']:.0f} ms ({c['compiles']} compiles, {c['captures']} captures)"
                         for c in tower["cold"])
        after = [s for s in results["summary"] if s["preset"] == preset]
        checks = [c for c in results["rows_check"] if c["preset"] == preset]
        equal = sum(c["equal"] is True for c in checks)
        worst = max((c.get("rel_err_vs_whole-bucketed") or 0.0 for c in checks), default=0.0)
        peak = "-" if ref["bucketed_call_peak_bytes"] is None else f"{ref['bucketed_call_peak_bytes'] / GIB:.2f} GiB"
        lines += [f"{preset}: cold first steps {cold}",
                  (f"{preset}: warm-up {w['seconds']:.1f} s ({w['captures']} captures, {w['compiles']} compiles); "
                   f"after it {sum(s['compiles'] for s in after)} compiles, {sum(s['captures'] for s in after)} "
                   f"captures; largest bucket's call {peak}"),
                  (f"{preset}: frame-group rows equal the whole video's at {equal} of {len(checks)} points "
                   f"(largest relative error against whole-bucketed {worst:.1e})")]
    return lines


# --- command line -----------------------------------------------------------------------------------

