"""Time every control of every notebook view: build the view, move each control once (the next option, one
step of a slider), and record the Python-side redraw in ms. ``python scripts/widget_timing.py [OUT.json]``.

The browser test records the same for one control per view as the browser sees it (comm round trip and
PNG decode included) in ``test-artifacts/widget-timing.json``."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import ipywidgets as widgets
import torch

from vitkit.costs import results
from vitkit.viz import bench_view, chunk_explorer, dp_panel, policy_view, sim_explorer, ttft_explorer, video_explorer


def moved_value(control: widgets.ValueWidget) -> object:
    """A value one step away from the control's, as a user would pick it."""
    if isinstance(control, (widgets.Dropdown, widgets.ToggleButtons, widgets.SelectionSlider)):
        options = [o[1] if isinstance(o, tuple) else o for o in control.options]
        return options[(options.index(control.value) + 1) % len(options)]
    if isinstance(control, widgets.SelectMultiple):
        options = list(control.options)
        return tuple(options[:1]) if tuple(control.value) != tuple(options[:1]) else tuple(options[:2])
    if isinstance(control, (widgets.IntRangeSlider, widgets.FloatRangeSlider)):
        low, high = control.value
        return (low, min(high + control.step, control.max))
    if isinstance(control, (widgets.IntSlider, widgets.FloatSlider)):
        up = control.value + control.step
        return up if up <= control.max else control.value - control.step
    raise TypeError(f"no move for {type(control).__name__}")


def time_controls(view: str, controls: dict[str, widgets.ValueWidget]) -> list[dict[str, object]]:
    rows = []
    for name, control in controls.items():
        if control.disabled:
            continue
        start = time.perf_counter()
        control.value = moved_value(control)
        rows.append({"view": view, "control": name, "ms": round((time.perf_counter() - start) * 1e3)})
        print(f"{view:>14} {name:>24} {rows[-1]['ms']:>6} ms", flush=True)
    return rows


def built_and_moved(view: str, build) -> list[dict[str, object]]:
    """The view's build time (its replays included), then each control moved once."""
    start = time.perf_counter()
    built = build()
    rows = [{"view": view, "control": "(build)", "ms": round((time.perf_counter() - start) * 1e3)}]
    return rows + time_controls(view, built.controls)


def main(out: str | None = None) -> int:
    rows = built_and_moved("chunk", chunk_explorer)
    rows += built_and_moved("video", video_explorer)
    bench = bench_view()
    sweep_file = next(label for label in bench.source.options if "full-" in label)
    rows += time_controls("bench", {"source": bench.source})
    bench.source.value = sweep_file
    rows += time_controls("bench", {"sweep": bench.sweep, "impl": bench.impl})
    dp = dp_panel()
    rows += time_controls("dp", {"tower": dp.children[0]})
    rows += built_and_moved("ttft", ttft_explorer)
    rows += built_and_moved("policies", policy_view)
    start = time.perf_counter()
    sim = sim_explorer()
    rows.append({"view": "cache", "control": "(build)", "ms": round((time.perf_counter() - start) * 1e3)})
    rows += time_controls("cache", {**sim.controls, "panel": sim.panel})
    data = {"created": results.stamp(), "machine": {"cpu_count": torch.get_num_threads(),
                                                    "processor": platform.processor() or platform.machine()},
            "rows": rows}
    if out:
        Path(out).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
