"""Notebook 02's views: benchmark results (measured here on a GPU, stored from an H100, or a CPU smoke run that
runs only behind its button and is labelled wherever it appears), and the stored data-parallel scaling."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch

from vitkit.bench.dp import DEFAULT_GATHER, STORED_DP, dp_scaling_figure, dp_table_rows, stored_dp_results
from vitkit.bench.plot import (plot_memory_model, plot_sweep, readable_speedup, speedup_spread, sweep_names,
                               sweep_rows, x_axis)
from vitkit.bench.rows import BenchRow, find_results, load_results, load_stream_results, write_results
from vitkit.bench.stream import stream_figure
from vitkit.bench.sweep import RunSettings, get_sweeps, run_sweeps
from vitkit.costs import results as files
from vitkit.viz.render import control, figure_png, html_table, png_widget, scroll_html

REPO = files.RESULTS.parent
STORED = files.results_folder()
STREAM_SCHEMA = files.schema("stream")
SMOKE_SWEEPS = ("cpu-clip", "cpu-qwen")  # a fixed- and a variable-resolution tiny tower
MEMORY_MODEL = "memory-model"  # the extra figure a run with token budgets has
SMOKE_LABEL = "CPU SMOKE RUN: tiny random-weight towers on this CPU; these numbers say nothing about a GPU"
ALL_IMPLS = "all"
IMPL_NOTES = {
    "vitkit": "vitkit: the compiled, CUDA-graphed encoder on both paths (the headline A/B)",
    "vitkit-eager": "vitkit-eager: the fused layers without compile or CUDA graphs",
    "stock": "stock: transformers' eager forward on both paths",
}
CPU_IMPL_NOTES = {"vitkit": "vitkit: the fused layers, eager (no compile or CUDA graphs on a CPU)"}
EAGER_IMPLS = ("vitkit-eager", "stock")
EAGER = "Eager per-request calls are launch-bound, so their speedups overstate what batching buys."


STREAM_NOTE = ("A stream replays seeded steps whose batch changes every step (requests, images and cache hits "
               "drawn anew); speedup: per-request over batched total time on the stream.")


def impl_notes(impls: Sequence[str], kind: str = "gpu") -> str:
    """One grey HTML line saying what each implementation shown is ("" when none is known)."""
    cpu = kind == "cpu-smoke"
    notes = "; ".join((CPU_IMPL_NOTES if cpu else {}).get(i) or IMPL_NOTES[i] for i in impls if i in IMPL_NOTES)
    if notes and not cpu and any(i in EAGER_IMPLS for i in impls):
        notes += f". {EAGER}"
    return f"<p style='color:#666'>{html.escape(notes)}</p>" if notes else ""


def gpu_available() -> bool:
    return torch.cuda.is_available()


def stored_results(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The valid GPU results files in ``folder`` (default: the attached card's results, else the stored card's),
    oldest first, loaded and keyed by path."""
    folder = files.models_folder(folder).folder
    return {repo_relative(path): load_results(path) for path in find_results(folder, kind="gpu")}


def stored_sources(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """What notebook 02 offers from ``folder`` (default as ``stored_results``), keyed by path: GPU stream files,
    the plain ones first (the first is shown: a named stream's items are picked for another question), then GPU
    sweep files, newest first."""
    folder = files.models_folder(folder).folder
    plain = files.plain_streams(folder)
    streams = {}
    for path in plain + [p for p in files.newest_first("stream", folder) if p not in plain]:
        try:
            results = load_stream_results(path)
        except (OSError, ValueError):  # json's decode error is a ValueError too
            continue
        if results["kind"] == "gpu":
            streams[repo_relative(path)] = results
    return streams | dict(reversed(stored_results(folder).items()))


def repo_relative(path: Path) -> str:
    """``path`` from the checkout's root when it lies inside it."""
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def run_benchmark(sweep: str | None = None, *, sweeps: Sequence[str] | None = None, device: str | None = None,
                  save: bool | None = None, progress: bool = True) -> dict[str, Any]:
    """Run a ``vitkit.bench`` sweep preset (default "full" on a GPU, "cpu-smoke" on CPU), or only its ``sweeps``;
    ``save`` (default: on a GPU) writes ``results/<device>/notebook-<sweep>-<stamp>.json``."""
    settings = RunSettings.for_device(device, sweep=sweep)
    preset = settings.sweep
    chosen = get_sweeps(preset)
    if sweeps is not None:
        known = [s.name for s in chosen]
        if unknown := set(sweeps) - set(known):
            raise ValueError(f"sweeps {sorted(unknown)} are not in preset {preset!r}; it has {known}")
        chosen = tuple(s for s in chosen if s.name in sweeps)
    results = run_sweeps(chosen, settings, progress=progress)
    if save if save is not None else settings.kind == "gpu":
        path = files.results_folder(results["machine"]["slug"]) / f"notebook-{preset}-{files.stamp()}.json"
        results["saved_to"] = repo_relative(write_results(results, path))
    return results


def speedup_rows(results: Mapping[str, Any], sweep: str) -> list[dict[str, object]]:
    """One row per (encoder, impl, point) of ``sweep``: both modes' step times, speedup, images/s, MFU, memory."""
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
            "encoder": encoder, "impl": impl, axis: getattr(b, axis), "images": b.images,
            "batched ms": round(b.step_ms_median, 3), "per-request ms": round(p.step_ms_median, 3),
            "speedup": speedup_text(*speedup_spread(b, p)),
            "batched img/s": round(b.images_per_s, 1), "batched MFU %": round(100 * b.mfu, 1),
            "peak MiB": "-" if b.peak_mem_bytes is None else round(b.peak_mem_bytes / 2**20),
        })
    return out


def speedup_text(low: float, median: float, high: float) -> float | str:
    """The median speedup, or, when its p10-p90 spread is wider than its distance from 1, that spread instead."""
    if readable_speedup(low, median, high):
        return round(median, 2)
    return f"unclear: {low:.2f} to {high:.2f}"


def describe(results: Mapping[str, Any], label: str) -> str:
    """One HTML line saying where the numbers come from (device, date, versions, file)."""
    machine, versions, peak = results.get("machine", {}), results.get("versions", {}), results.get("matmul_peak") or {}
    what = (f"<b style='color:#b35806'>{SMOKE_LABEL}</b>" if results.get("kind") == "cpu-smoke"
            else f"<b>GPU measurement</b> on {html.escape(str(machine.get('device_name', '?')))}")
    if peak.get("tflops"):
        what += f", matmul peak {peak['tflops']:.3g} TFLOP/s ({html.escape(str(peak.get('label', '')))})"
    created, torch_version = html.escape(str(results.get("created", "?"))), html.escape(str(versions.get("torch", "?")))
    return (f"{what}<br><span style='color:#666'>{html.escape(label)} &middot; created {created} &middot; "
            f"torch {torch_version}, transformers {html.escape(str(versions.get('transformers', '?')))}</span>")


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
    """Pick one of ``sources`` (label -> results; the first is shown), an impl and a sweep; see its figure and table."""

    def __init__(self, sources: Mapping[str, Mapping[str, Any]] | None = None, *, note: str = "",
                 hint: str = "") -> None:
        self.sources: dict[str, Mapping[str, Any]] = {}
        self._switching = False
        self.shown: str | None = None  # the source on screen
        self.source = widgets.Dropdown(description="results", layout=widgets.Layout(width="60em"))
        self.sweep = widgets.Dropdown(description="sweep", layout=widgets.Layout(width="30em"))
        self.impl = widgets.Dropdown(description="impl", layout=widgets.Layout(width="20em"))
        self.header = widgets.HTML()
        self.note = widgets.HTML(note)
        self.figure, self.table = png_widget(), scroll_html("20em")
        self.smoke_button = widgets.Button(description="Run CPU smoke benchmark", icon="play",
                                           layout=widgets.Layout(width="20em"), tooltip=SMOKE_LABEL)
        self.progress = widgets.Output()
        self.picks = widgets.HBox([self.sweep, self.impl])  # hidden for a stream file: it has no sweeps
        self.hint = widgets.HTML(hint)  # e.g. the attached card has no results of its own yet
        super().__init__([self.hint, self.note, widgets.HBox([self.source, self.smoke_button]),
                          self.picks, self.header, self.progress, self.figure, self.table])
        self.add_class("vitkit-bench-view")
        self.source.observe(self._on_source, names="value")
        self.sweep.observe(self._on_pick, names="value")
        self.impl.observe(self._on_pick, names="value")
        self.smoke_button.on_click(lambda _: self.run_cpu_smoke())
        for label, results in (sources or {}).items():
            self.add_results(label, results, select=False)  # the first source stays selected

    def add_results(self, label: str, results: Mapping[str, Any], *, select: bool = True) -> None:
        self.sources[label] = results
        self.note.value = ""  # "nothing to show yet" no longer holds
        keep = self.source.value
        target = label if select or keep is None else keep
        self._switching = True  # new options move the value to the first: draw once, what was asked for
        try:
            self.source.options = list(self.sources)
            self.source.value = target
        finally:
            self._switching = False
        if self.shown != target:
            self._on_source({"new": target})

    def run_cpu_smoke(self, sweeps: Sequence[str] = SMOKE_SWEEPS) -> dict[str, Any]:
        """Run the CPU smoke sweeps (progress in the widget); add and show the result."""
        self.smoke_button.disabled = True
        try:
            with self.progress:
                results = run_benchmark("cpu-smoke", sweeps=sweeps, device="cpu", save=False)
            self.progress.clear_output()  # finished bars would stay on screen, one more set each run
            self.add_results(f"CPU smoke run at {dt.datetime.now():%H:%M:%S} (not a GPU measurement)", results)
        finally:
            self.smoke_button.disabled = False
        return results

    @property
    def results(self) -> Mapping[str, Any] | None:
        return self.sources.get(self.source.value)

    def _on_source(self, change: dict) -> None:
        results = self.sources.get(change["new"])
        if results is None or self._switching:
            return
        self.shown = change["new"]
        self.header.value = describe(results, change["new"])
        stream = results.get("schema") == STREAM_SCHEMA
        self.picks.layout.display = "none" if stream else None
        if stream:
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
        names = sweep_names(rows_of_impl(self.results, self.impl.value))
        names += [MEMORY_MODEL] if self.results.get("memory_model") else []
        keep = self.sweep.value if self.sweep.value in names else names[0]
        self.sweep.options = names
        self.sweep.value = keep

    def _show_stream(self) -> None:
        """A stream file has no sweeps: its own figure and one row per impl and mode."""
        self._switching = True
        try:
            self.sweep.options, self.impl.options = [], []
        finally:
            self._switching = False
        self.figure.value = figure_png(stream_figure(self.results))
        rows = stream_rows(self.results)
        self.table.value = (impl_notes(list(dict.fromkeys(r["impl"] for r in rows))) + html_table(rows)
                            + f"<p style='color:#666'>{html.escape(STREAM_NOTE)}</p>")

    def _on_pick(self, change: dict) -> None:
        """Another sweep or impl: redraw (another impl first offers its own sweeps)."""
        if self._switching or self.results is None:
            return
        if change["owner"] is self.impl:
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
        self.table.value = (impl_notes(impls_of(shown), self.results.get("kind", "gpu"))
                            + html_table(speedup_rows(shown, self.sweep.value)))


def bench_view(sweep: str | None = None, *, run: bool | None = None, folder: str | Path | None = None) -> BenchView:
    """Notebook 02's view: ``sweep`` measured here first when ``run`` (default: with a GPU), then ``folder``'s."""
    sources: dict[str, Mapping[str, Any]] = {}
    run = gpu_available() if run is None else run
    if run:
        results = run_benchmark(sweep)
        label = f"measured here: {results['machine']['device_name']} ({results.get('saved_to', 'not saved')})"
        sources[label] = results
    models = files.models_folder(folder)
    sources.update(stored_sources(models.folder))
    note = "" if sources else (f"<i>No stored results in {html.escape(repo_relative(models.folder))} and no GPU run: "
                               "press the button for a CPU smoke run.</i>")
    hint = f"<p><i>{html.escape(models.hint)}</i></p>" if models.hint else ""
    return BenchView(sources, note=note, hint=hint)


def dp_panel(path: str | Path = STORED_DP) -> widgets.Widget:
    """The stored data-parallel scaling of one tower (a drop-down picks it) and a table of every N (token-balanced,
    default gather)."""
    results = stored_dp_results(path)
    if results is None:
        return widgets.HTML(f"<p><i>No stored data-parallel results at {path}: run <code>torchrun --nproc-per-node N "
                            "-m vitkit.bench dp</code> on a GPU host.</i></p>")
    towers = list(dict.fromkeys(r["encoder"] for r in results["rows"]))
    tower = control(widgets.Dropdown, "tower", towers[0], "5em", "22em", options=towers)
    figure, table = png_widget(), widgets.HTML()

    def draw(_: object = None) -> None:
        figure.value = figure_png(dp_scaling_figure(results, tower.value))
        table.value = html_table([r for r in dp_table_rows(results, tower.value) if r["policy"] == "token-balanced"
                                  and (r["N"] == 1 or r["gather"] == DEFAULT_GATHER)])

    tower.observe(draw, names="value")
    draw()
    panel = widgets.VBox([tower, figure, table])
    panel.add_class("vitkit-dp-panel")
    return panel
