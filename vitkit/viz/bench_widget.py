"""Notebook 02's widget: benchmark results (measured here, stored from an H100, or a CPU smoke run).

With a GPU, ``bench_view()`` runs ``vitkit.bench`` on it (a progress bar per measurement),
saves the JSON under ``results/<device>/`` and plots it. Without one it shows the stored H100
results in ``results/h100/`` (a stream benchmark file first when there is one, else the newest
sweep file) and offers a small CPU smoke run behind a button, labelled as such everywhere it
appears: tiny random-weight towers on a CPU say nothing about a GPU, so it is never run or
selected unless asked for.

What is shown by default is what the measurements support: the optimised A/B (``impl``
"vitkit", the same compiled encoder on both paths). The eager "stock" A/B is one click away,
with a note that its per-request path is launch-bound and so overstates what batching buys.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch

from vitkit.bench.plot import plot_memory_model, plot_sweep, sweep_names, sweep_rows, x_axis
from vitkit.bench.results import find_results, load_results, write_results
from vitkit.bench.rows import BenchRow
from vitkit.bench.run import RunSettings, run_sweeps
from vitkit.bench.stream_plot import stream_figure
from vitkit.bench.stream_run import SCHEMA as STREAM_SCHEMA  # results/<device>/stream-*.json
from vitkit.bench.stream_run import load_stream_results
from vitkit.bench.sweeps import get_sweeps
from vitkit.viz.render import figure_png, html_table

REPO = Path(__file__).resolve().parents[2]
STORED = REPO / "results" / "h100"
SMOKE_SWEEPS = ("cpu-clip", "cpu-qwen")  # a fixed- and a variable-resolution tiny tower, ~5 s on 2 cores
MEMORY_MODEL = "memory-model"  # the extra figure a run with token budgets has
SMOKE_LABEL = "CPU SMOKE RUN: tiny random-weight towers on this CPU; these numbers say nothing about a GPU"
ALL_IMPLS = "all"
IMPL_NOTES = {
    "vitkit": "vitkit: the compiled, CUDA-graphed encoder on both paths (the headline A/B)",
    "vitkit-eager": ("vitkit-eager: the fused layers without compile or CUDA graphs; its per-request calls are "
                     "launch-bound, so its speedups overstate what batching buys"),
    "stock": ("stock: transformers' eager forward on both paths; its per-request calls are launch-bound, "
              "so its speedups overstate what batching buys"),
}


def impl_notes(impls: Sequence[str]) -> str:
    """One grey HTML line saying what each implementation shown is ("" when none is known)."""
    notes = [IMPL_NOTES[i] for i in impls if i in IMPL_NOTES]
    return f"<p style='color:#666'>{html.escape('; '.join(notes))}</p>" if notes else ""


def gpu_available() -> bool:
    return torch.cuda.is_available()


def stored_results(folder: str | Path = STORED) -> dict[str, dict[str, Any]]:
    """The GPU results files in ``folder`` (oldest first), loaded and validated, keyed by path;
    {} when there are none. Files that are not valid results are left out (``find_results``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {_relative(path): load_results(path) for path in find_results(folder, kind="gpu")}


def stored_sources(folder: str | Path = STORED) -> dict[str, dict[str, Any]]:
    """What notebook 02 offers from ``folder``, keyed by path, in the order shown: stream
    benchmark files (``stream-*.json``, schema ``vitkit.stream/1``) newest first, then the GPU
    sweep files newest first. A stream, when there is one, is what a step sees in serving."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    streams = {}
    # newest first by the timestamp that ends the name (stream-<encoder>-<stamp>.json)
    for path in sorted(folder.glob("stream-*.json"), key=lambda p: (p.stem.rsplit("-", 1)[-1], p.name), reverse=True):
        try:
            results = load_stream_results(path)
        except (OSError, ValueError):  # json's decode error is a ValueError too
            continue
        if results["kind"] == "gpu":
            streams[_relative(path)] = results
    return streams | dict(reversed(stored_results(folder).items()))


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_benchmark(
    sweep: str | None = None,
    *,
    sweeps: Sequence[str] | None = None,
    device: str | None = None,
    save: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a named ``vitkit.bench`` sweep preset (default ``"full"`` on a GPU, ``"cpu-smoke"``
    on CPU), or only the sweeps named in ``sweeps`` out of it, and return the results object.

    A GPU run is saved to ``results/<device>/notebook-<sweep>-<time>.json`` (``save`` defaults to
    True on a GPU, False on CPU: a smoke run is for looking at, not for keeping).
    """
    settings = RunSettings.for_device(device, sweep=sweep)
    preset = settings.sweep
    chosen = get_sweeps(preset)
    if sweeps is not None:
        unknown = set(sweeps) - {s.name for s in chosen}
        if unknown:
            raise ValueError(f"sweeps {sorted(unknown)} are not in preset {preset!r}; it has {[s.name for s in chosen]}")
        chosen = tuple(s for s in chosen if s.name in sweeps)
    results = run_sweeps(chosen, settings, progress=progress)
    if save if save is not None else settings.kind == "gpu":
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = REPO / "results" / results["machine"]["slug"] / f"notebook-{preset}-{stamp}.json"
        results["saved_to"] = _relative(write_results(results, path))
    return results


def speedup_rows(results: Mapping[str, Any], sweep: str) -> list[dict[str, object]]:
    """One row per (encoder, impl, point) of ``sweep``: both modes' step times, the speedup
    (per-request / batched step time), batched images/s, MFU and peak memory (MiB)."""
    rows = sweep_rows(results, sweep)
    axis = x_axis(rows)
    pairs: dict[tuple, dict[str, BenchRow]] = {}
    for r in rows:
        pairs.setdefault((r.encoder, r.impl, repr(getattr(r, axis))), {})[r.mode] = r
    out = []
    for (encoder, impl, _), modes in pairs.items():
        b, p = modes.get("batched"), modes.get("per_request")
        if b is None or p is None:
            continue
        out.append({
            "encoder": encoder, "impl": impl, axis: getattr(b, axis),
            "images": b.images,
            "batched ms": round(b.step_ms_median, 3),
            "per-request ms": round(p.step_ms_median, 3),
            "speedup": round(p.step_ms_median / b.step_ms_median, 2),
            "batched img/s": round(b.images_per_s, 1),
            "batched MFU %": round(100 * b.mfu, 1),
            "peak MiB": "-" if b.peak_mem_bytes is None else round(b.peak_mem_bytes / 2**20),
        })
    return out


def describe(results: Mapping[str, Any], label: str) -> str:
    """One HTML line saying where the numbers come from (device, date, versions, file)."""
    machine, versions = results.get("machine", {}), results.get("versions", {})
    peak = results.get("matmul_peak") or {}
    what = (
        f"<b style='color:#b35806'>{SMOKE_LABEL}</b>" if results.get("kind") == "cpu-smoke"
        else f"<b>GPU measurement</b> on {html.escape(str(machine.get('device_name', '?')))}"
    )
    rate = f", matmul peak {peak['tflops']:.3g} TFLOP/s ({html.escape(str(peak.get('label', '')))})" if peak.get("tflops") else ""
    return (
        f"{what}{rate}<br><span style='color:#666'>{html.escape(label)} &middot; created "
        f"{html.escape(str(results.get('created', '?')))} &middot; torch {html.escape(str(versions.get('torch', '?')))}, "
        f"transformers {html.escape(str(versions.get('transformers', '?')))}</span>"
    )


def impls_of(results: Mapping[str, Any]) -> list[str]:
    """The implementations in ``results``' rows, "vitkit" first, then "all" when there are several."""
    impls = sorted({row.impl for row in results["rows"]}, key=lambda i: (i != "vitkit", i))
    return impls + [ALL_IMPLS] if len(impls) > 1 else impls


def rows_of_impl(results: Mapping[str, Any], impl: str) -> dict[str, Any]:
    """``results`` with only ``impl``'s rows (all rows for "all")."""
    if impl == ALL_IMPLS:
        return dict(results)
    return {**results, "rows": [row for row in results["rows"] if row.impl == impl]}


def stream_rows(results: Mapping[str, Any]) -> list[dict[str, object]]:
    """One row per (encoder, impl, mode) of a stream file: throughput, step latency, speedup."""
    return [{
        "encoder": s["encoder"], "impl": s["impl"], "mode": s["mode"], "steps": s["steps"],
        "img/s": round(s["images_per_s"], 1), "rows/s": round(s["rows_per_s"]),
        "p50 ms": round(s["step_ms_p50"], 2), "p99 ms": round(s["step_ms_p99"], 2),
        "speedup": "-" if s.get("batched_speedup") is None else round(s["batched_speedup"], 2),
    } for s in results["summaries"]]


class BenchView(widgets.VBox):
    """Pick a results object, an implementation and a sweep; see its six-panel figure and its
    speedup table.

    ``sources`` maps a label (a file path, or "measured here ...") to a results object; the first
    is shown. ``run_cpu_smoke()`` (also the button) adds a labelled smoke run and selects it.
    """

    def __init__(self, sources: Mapping[str, Mapping[str, Any]] | None = None, *, note: str = "") -> None:
        self.sources: dict[str, Mapping[str, Any]] = {}
        self._switching = False
        self.source = widgets.Dropdown(description="results", layout=widgets.Layout(width="60em"))
        self.sweep = widgets.Dropdown(description="sweep", layout=widgets.Layout(width="30em"))
        self.impl = widgets.Dropdown(description="impl", layout=widgets.Layout(width="20em"))
        self.header = widgets.HTML()
        self.note = widgets.HTML(note)
        self.figure = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.table = widgets.HTML(layout=widgets.Layout(max_height="20em", overflow="auto"))
        self.smoke_button = widgets.Button(description="Run CPU smoke benchmark", icon="play",
                                           layout=widgets.Layout(width="20em"), tooltip=SMOKE_LABEL)
        self.progress = widgets.Output()
        super().__init__([self.note, widgets.HBox([self.source, self.smoke_button]),
                          widgets.HBox([self.sweep, self.impl]), self.header, self.progress, self.figure, self.table])
        self.add_class("vitkit-bench-view")
        self.source.observe(self._on_source, names="value")
        self.sweep.observe(self._on_sweep, names="value")
        self.impl.observe(self._on_impl, names="value")
        self.smoke_button.on_click(lambda _: self.run_cpu_smoke())
        for label, results in (sources or {}).items():
            self.add_results(label, results, select=False)  # the first source stays selected

    def add_results(self, label: str, results: Mapping[str, Any], *, select: bool = True) -> None:
        self.sources[label] = results
        self.note.value = ""  # "nothing to show yet" no longer holds
        self.source.options = list(self.sources)
        if select or self.source.value is None:
            self.source.value = label
            self._on_source({"new": label})  # Dropdown does not fire when the value is unchanged

    def run_cpu_smoke(self, sweeps: Sequence[str] = SMOKE_SWEEPS) -> dict[str, Any]:
        """Run the CPU smoke sweeps (progress bar in the widget), add and show the result."""
        self.smoke_button.disabled = True
        try:
            with self.progress:
                results = run_benchmark("cpu-smoke", sweeps=sweeps, device="cpu", save=False)
            stamp = dt.datetime.now().strftime("%H:%M:%S")
            self.add_results(f"CPU smoke run at {stamp} (not a GPU measurement)", results)
        finally:
            self.smoke_button.disabled = False
        return results

    @property
    def results(self) -> Mapping[str, Any] | None:
        return self.sources.get(self.source.value)

    def _on_source(self, change: dict) -> None:
        results = self.sources.get(change["new"])
        if results is None:
            return
        self.header.value = describe(results, change["new"])
        if results.get("schema") == STREAM_SCHEMA:
            self._show_stream()
            return
        impls = impls_of(results)
        self._switching = True  # new options fire the observers; draw once, below
        try:
            self.impl.options = impls
            self.impl.value = self.impl.value if self.impl.value in impls else impls[0]
            self._set_sweeps()
        finally:
            self._switching = False
        self.draw()

    def _set_sweeps(self) -> None:
        results = self.results
        names = sweep_names(rows_of_impl(results, self.impl.value)) + ([MEMORY_MODEL] if results.get("memory_model") else [])
        keep = self.sweep.value if self.sweep.value in names else names[0]
        self.sweep.options = names
        self.sweep.value = keep

    def _show_stream(self) -> None:
        """A stream file has no sweeps: its own figure (``stream_figure``) and one row per
        impl and mode."""
        self._switching = True
        try:
            self.sweep.options, self.impl.options = [], []
        finally:
            self._switching = False
        self.figure.value = figure_png(stream_figure(self.results))
        rows = stream_rows(self.results)
        self.table.value = impl_notes(list(dict.fromkeys(r["impl"] for r in rows))) + html_table(rows)

    def _on_sweep(self, change: dict) -> None:
        if not self._switching:
            self.draw()

    def _on_impl(self, change: dict) -> None:
        if self._switching or self.results is None:
            return
        self._switching = True
        try:
            self._set_sweeps()
        finally:
            self._switching = False
        self.draw()

    def draw(self) -> None:
        """Plot the selected sweep of the selected results, and its table."""
        if self.results is None or self.sweep.value is None:
            return
        if self.sweep.value == MEMORY_MODEL:  # predicted vs measured peak memory per token budget
            self.figure.value = figure_png(plot_memory_model(self.results))
            self.table.value = html_table(self.results["memory_model"])
            return
        shown = rows_of_impl(self.results, self.impl.value)
        self.figure.value = figure_png(plot_sweep(shown, self.sweep.value))
        self.table.value = impl_notes(impls_of(shown)) + html_table(speedup_rows(shown, self.sweep.value))


def bench_view(sweep: str | None = None, *, run: bool | None = None, folder: str | Path = STORED) -> BenchView:
    """Notebook 02's view. ``run`` defaults to whether a GPU is present: then ``sweep`` (default
    ``"full"``) is measured here first. The stored results in ``folder`` are always offered
    (``stored_sources``: a stream file first, else the newest sweep file); the CPU smoke run
    only behind its button."""
    sources: dict[str, Mapping[str, Any]] = {}
    run = gpu_available() if run is None else run
    if run:
        results = run_benchmark(sweep)
        sources[f"measured here: {results['machine']['device_name']} ({results.get('saved_to', 'not saved')})"] = results
    sources.update(stored_sources(folder))
    note = "" if sources else (
        f"<i>No stored results in {html.escape(_relative(Path(folder)))} and no GPU run: "
        "press the button for a CPU smoke run.</i>"
    )
    return BenchView(sources, note=note)
