"""Notebook 03's widget: a request stream through the chunked-prefill simulator, both modes,
several cache sizes, pinning on and off; hit rate, calls, re-encodings, encoder time and memory.

Cache sizes are set in embedding rows (tokens). The simulator's fake encoder keeps small rows
(``FAKE_HIDDEN`` floats) so a run takes a fraction of a second; memory is therefore shown in
tokens too, since its MiB would be those of the small rows, not of a real model's.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from vitkit.bench.results import find_results
from vitkit.sim import (
    FakeEncoder,
    ModelledEncoder,
    WorkloadParams,
    cache_bytes_for_tokens,
    compare,
    example_traces,
    fit_cost_models,
    generate_workload,
    load_trace,
    prepare,
)
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.load import DEFAULT_RATES, TTFT_WORKLOADS, VALIDATION_SIZES
from vitkit.sim.plot import plot_cache_memory, plot_over_steps
from vitkit.sim.bucketcost import BucketCost
from vitkit.sim.plot_ttft import measured_points, plot_ttft_vs_load
from vitkit.sim.run import SimRun
from vitkit.sim.stepcost import StepCosts, default_prefill, load_encoder_cost
from vitkit.sim.ttft import LoadPoint, ReplayConfig, load_sweep, timed_replay
from vitkit.viz.bench_widget import STORED
from vitkit.viz.render import figure_png, html_table

FAKE_HIDDEN = 32
FAKE_BYTES_PER_TOKEN = 4 * FAKE_HIDDEN  # float32 rows
GENERATED = "generated (sliders)"
DEFAULT_MODEL = "qwen2.5-vl-7b/vitkit"
IMAGE_MIXES: dict[str, tuple[tuple[int, int], ...]] = {  # (height, width) px
    "448 x 448": ((448, 448),),
    "448 to 896, mixed": ((448, 448), (672, 448), (896, 672)),
    "896 to 1344, large": ((896, 896), (1344, 1008)),
}
CACHE_CHOICES = (256, 1024, 4096, 16384, 65536)  # embedding tokens
PINS = {"on and off": (True, False), "on": (True,), "off": (False,)}
PANELS = {  # figure name -> per-step metrics it plots (two a figure keeps each panel readable)
    "hits and calls": ("hit_rate", "encoder_calls"),
    "re-encodings and time": ("re_encodings", "encoder_ms"),
}


@dataclass(frozen=True)
class SimSettings:
    """A workload (generated or an example trace), the scheduler, and what to compare."""

    trace: str = GENERATED  # or the name of a trace in data/traces
    workload: WorkloadParams = field(default_factory=lambda: WorkloadParams(
        num_requests=16, arrival_rate_per_s=40.0, images_per_request=(1, 3),
        image_sizes=IMAGE_MIXES["448 to 896, mixed"], repeat_share=0.3,
    ))
    chunked_prefill_size: int = 2048  # tokens per step, shared by the running requests
    long_prefill_token_threshold: int | None = 512  # tokens per request per step (None: no cap)
    cache_tokens: tuple[int, ...] = (1024, 4096, 16384)  # embedding rows each cache holds
    pins: tuple[bool, ...] = (True, False)
    # "<encoder>/<impl>" of a cost model fitted to stored results, or "fake" (CPU wall time of a
    # fake encoder: not meaningful as a time); None: the stored Qwen2.5-VL model when there is one
    encoder: str | None = None


def cost_models(folder: str | Path = STORED, problems: list[str] | None = None) -> dict[str, Any]:
    """``"<encoder>/<impl>" -> CallCost`` fitted to the GPU results files in ``folder`` (newer
    files win); {} when there are none. Lets a laptop report H100-like encoder time.

    A file whose rows cannot be fitted raises ValueError naming it, or, when ``problems`` is
    given, is left out with that message appended there (the explorer shows it).
    """
    models: dict[str, Any] = {}
    for path in find_results(folder, kind="gpu") if Path(folder).is_dir() else []:
        try:
            fitted = fit_cost_models(path)
        except ValueError as err:
            message = f"cannot fit an encoder cost model to {path}: {err}"
            if problems is None:
                raise ValueError(message) from None
            problems.append(message)
            continue
        models.update({f"{encoder}/{impl}": cost for (encoder, impl), cost in fitted.items()})
    try:  # the stream's per-bucket model describes the bucketed encoder best (the TTFT view uses it too)
        stream = load_encoder_cost(folder)
    except ValueError:
        return models
    if isinstance(stream.call, BucketCost):
        models[f"{stream.call.encoder}/{stream.call.impl}"] = replace(stream.call, source=stream.source)
    return models


def default_encoder(models: Mapping[str, Any]) -> str:
    """The encoder-time choice shown first: the stored cost model of ``DEFAULT_MODEL`` (else of
    any encoder) when stored results exist, "fake" only when there are none."""
    if DEFAULT_MODEL in models:
        return DEFAULT_MODEL
    return sorted(models)[0] if models else "fake"


def encoder_label(encoder: str, models: Mapping[str, Any]) -> str:
    """What the figures say about their encoder time."""
    if encoder == "fake":
        return "encoder time: fake encoder on this CPU (not meaningful as a time)"
    source = models[encoder].source
    where = Path(source).name if source.startswith("/") else source  # a sweep file's path, or the stream fit's label
    return f"encoder time: modelled from stored results, {encoder}, fitted to {where}"


def run_sim(settings: SimSettings, models: Mapping[str, Any] | None = None, progress: bool = False) -> list[SimRun]:
    """Every mode x cache size x pin setting of ``settings``, on one planned schedule.

    ``models`` defaults to the cost models fitted to the stored results (``cost_models()``)."""
    models = cost_models(STORED, []) if models is None else models
    trace = generate_workload(settings.workload) if settings.trace == GENERATED else load_trace(settings.trace)
    stream = prepare(trace, chunked_prefill_size=settings.chunked_prefill_size,
                     long_prefill_token_threshold=settings.long_prefill_token_threshold)
    settings = replace(settings, encoder=settings.encoder or default_encoder(models))
    if settings.encoder == "fake":
        encoder = FakeEncoder(FAKE_HIDDEN)
    elif models and settings.encoder in models:
        encoder = ModelledEncoder(models[settings.encoder], FAKE_HIDDEN)
    else:
        raise ValueError(f"encoder {settings.encoder!r} has no cost model; known: {['fake', *sorted(models or {})]}")
    capacities = [cache_bytes_for_tokens(t, encoder.bytes_per_token) for t in settings.cache_tokens]
    return compare(stream, capacities, pins=settings.pins, encoder=encoder, progress=progress)


def summary_rows(runs: Sequence[SimRun]) -> list[dict[str, object]]:
    """One row per run: the totals a reader compares across modes, cache sizes and pinning."""
    rows = []
    for run in runs:
        s = run.summary
        rows.append({
            "mode": s.mode, "pin": "on" if s.pin else "off", "cache (tokens)": s.capacity_tokens,
            "steps": s.steps, "hit rate": round(s.hit_rate, 3), "encoder calls": s.encoder_calls,
            "encoded items": s.encoded_items, "re-encodings": s.re_encodings,
            "re-encodings in a request": s.request_re_encodings, "evictions": s.evictions,
            "encoder ms": round(s.encoder_ms, 2),
            "peak cache (tokens)": s.peak_cache_bytes // FAKE_BYTES_PER_TOKEN,
        })
    return rows


def sim_figures(runs: Sequence[SimRun], label: str = "") -> dict[str, Figure]:
    """Per-step curves (hit rate, calls, re-encodings, encoder time) and cache memory; ``label``
    (where the encoder time comes from) titles each figure."""
    figs = {name: plot_over_steps(runs, metrics) for name, metrics in PANELS.items()}
    figs["memory"] = plot_memory_tokens(runs)
    if label:
        for fig in figs.values():
            fig.suptitle(label, fontsize="small")
    return figs


def plot_memory_tokens(runs: Sequence[SimRun]) -> Figure:
    """Cache and pinned embedding rows after each step, one line per run (``vitkit.sim.plot``'s
    figure, its MiB turned into tokens: the fake rows' bytes would not be a real model's)."""
    fig = plot_cache_memory(runs)
    for ax, title in zip(fig.axes, ("cache (embedding tokens)", "pinned (embedding tokens)")):
        for line in ax.get_lines():
            line.set_ydata([y * 2**20 / FAKE_BYTES_PER_TOKEN for y in line.get_ydata()])
        ax.relim()
        ax.autoscale_view()
        ax.set_title(title)
    return fig


class SimExplorer(widgets.VBox):
    """Sliders over ``SimSettings``; a change re-runs the simulation and redraws.

    ``controls`` maps names to widgets (set ``value`` from code as a user would); ``runs`` is
    the last comparison, ``rows`` its summary table, ``redraw_ms`` the last update's time.
    """

    def __init__(
        self, settings: SimSettings | None = None, models: Mapping[str, Any] | None = None, notes: Sequence[str] = ()
    ) -> None:
        self.models = dict(models or {})
        self.settings = settings or SimSettings()
        self.settings = replace(self.settings, encoder=self.settings.encoder or default_encoder(self.models))
        self.notes = list(notes)  # e.g. results files no cost model could be fitted to
        self.controls = _controls(self.settings, self.models)
        self.figures = {name: widgets.Image(format="png", layout=widgets.Layout(max_width="100%")) for name in (*PANELS, "memory")}
        self.table = widgets.HTML(layout=widgets.Layout(max_height="20em", overflow="auto"))
        self.status = widgets.HTML()
        self.runs: list[SimRun] = []
        self.rows: list[dict[str, object]] = []
        self.redraw_ms = 0.0
        boxes = list(self.controls.values())
        grid = widgets.GridBox(boxes, layout=widgets.Layout(grid_template_columns="repeat(3, 27em)"))
        super().__init__([grid, self.status, *self.figures.values(), self.table])
        self.add_class("vitkit-sim-explorer")
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.redraw()

    def current_settings(self) -> SimSettings:
        c = self.controls
        workload = replace(
            self.settings.workload,
            num_requests=c["requests"].value,
            arrival_rate_per_s=float(c["arrival_rate"].value) or None,
            images_per_request=tuple(c["images_per_request"].value),
            image_sizes=IMAGE_MIXES[c["image_sizes"].value],
            repeat_share=c["repeat_share"].value,
            turns=c["turns"].value,
        )
        return replace(
            self.settings, trace=c["trace"].value, workload=workload,
            chunked_prefill_size=c["chunked_prefill_size"].value,
            long_prefill_token_threshold=c["per_request_cap"].value or None,
            cache_tokens=tuple(sorted(c["cache_tokens"].value)) or self.settings.cache_tokens,
            pins=PINS[c["pins"].value], encoder=c["encoder"].value,
        )

    def redraw(self) -> None:
        start = time.perf_counter()
        settings = self.current_settings()
        generated = settings.trace == GENERATED
        for name in ("requests", "arrival_rate", "images_per_request", "image_sizes", "repeat_share", "turns"):
            self.controls[name].disabled = not generated  # an example trace fixes the workload
        self.runs = run_sim(settings, self.models)
        for name, fig in sim_figures(self.runs, encoder_label(settings.encoder, self.models)).items():
            self.figures[name].value = figure_png(fig)
        self.rows = summary_rows(self.runs)
        self.table.value = html_table(self.rows)
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        steps = self.runs[0].summary.steps if self.runs else 0
        self.status.value = (
            f"{len(self.runs)} runs over the same {steps} scheduler steps "
            f"&middot; {html.escape(encoder_label(settings.encoder, self.models))}"
            f" <span style='color:#888'>(updated in {self.redraw_ms:.0f} ms)</span>"
            + "".join(f"<br><i>{html.escape(note)}</i>" for note in self.notes)
        )


def _controls(s: SimSettings, models: Mapping[str, Any]) -> dict[str, widgets.ValueWidget]:
    w = s.workload
    style, layout = {"description_width": "11em"}, widgets.Layout(width="26em")

    def slider(cls, value, lo, hi, step, label):
        return cls(value=value, min=lo, max=hi, step=step, description=label, continuous_update=False, style=style, layout=layout)

    sizes = next((k for k, v in IMAGE_MIXES.items() if v == tuple(w.image_sizes)), next(iter(IMAGE_MIXES)))
    return {
        "trace": widgets.Dropdown(options=[GENERATED, *example_traces()], value=s.trace, description="workload", style=style, layout=layout),
        "requests": slider(widgets.IntSlider, w.num_requests, 2, 64, 1, "requests"),
        "arrival_rate": slider(widgets.IntSlider, int(w.arrival_rate_per_s or 0), 0, 200, 5, "arrivals / s (0: batch)"),
        "images_per_request": widgets.IntRangeSlider(value=w.images_per_request, min=0, max=6, description="images / request",
                                                     continuous_update=False, style=style, layout=layout),
        "image_sizes": widgets.Dropdown(options=list(IMAGE_MIXES), value=sizes, description="image sizes", style=style, layout=layout),
        "repeat_share": slider(widgets.FloatSlider, w.repeat_share, 0.0, 1.0, 0.05, "repeated images"),
        "turns": slider(widgets.IntSlider, w.turns, 1, 4, 1, "turns / conversation"),
        "chunked_prefill_size": slider(widgets.IntSlider, s.chunked_prefill_size, 256, 8192, 256, "tokens / step"),
        "per_request_cap": slider(widgets.IntSlider, s.long_prefill_token_threshold or 0, 0, 4096, 128, "tokens / request (0: no cap)"),
        "cache_tokens": widgets.SelectMultiple(options=sorted({*CACHE_CHOICES, *s.cache_tokens}), value=s.cache_tokens,
                                               description="cache sizes (tokens)", rows=5, style=style, layout=layout),
        "pins": widgets.ToggleButtons(options=list(PINS), value=next(k for k, v in PINS.items() if v == s.pins), description="pinning", style=style),
        "encoder": widgets.Dropdown(options=["fake", *sorted(models)], value=s.encoder, description="encoder time", style=style, layout=layout),
    }


def sim_explorer(settings: SimSettings | None = None, *, results_folder: str | Path = STORED) -> SimExplorer:
    """Notebook 03's explorer; offers H100-modelled encoder time when ``results_folder`` has results."""
    problems: list[str] = []
    models = cost_models(results_folder, problems)
    return SimExplorer(settings, models, problems)


# ---------------------------------------------------------------- time to first token (issue 10)

TTFT_CACHE_CHOICES = (2048, 4096, 8192, 16384, 65536)  # embedding tokens


@dataclass(frozen=True)
class TTFTSettings:
    """One workload at several Poisson rates, both modes, one scheduler / cache / policy."""

    workload: str = "small-images"  # a stock TTFT workload (vitkit.sim.load.TTFT_WORKLOADS)
    rate_per_s: float = 40.0  # the rate the table reports (marked on the curves)
    rates: tuple[float, ...] | None = None  # the curve's rates (None: the workload's defaults)
    # None: the GPU validation's count for the workload (600 / 150), so its measured points,
    # drawn on the curves, compare like with like (a p99 over 200 requests is another statistic)
    num_requests: int | None = None
    chunked_prefill_size: int = 2048
    cache_tokens: int = 16384
    policy: str = "legacy"


def ttft_points(settings: TTFTSettings, costs: StepCosts) -> list[LoadPoint]:
    """Both modes of ``settings`` at every rate of its curve and at ``rate_per_s``."""
    rates = sorted({*(settings.rates or DEFAULT_RATES[settings.workload]), settings.rate_per_s})
    base = ReplayConfig(chunked_prefill_size=settings.chunked_prefill_size, cache_tokens=settings.cache_tokens,
                        policy=settings.policy)
    configs = [replace(base, mode=mode) for mode in ("batched", "per_request")]
    return load_sweep(settings.workload, rates, costs, configs, num_requests=ttft_requests(settings), progress=False)


def measured_at(measured: Sequence[Mapping[str, object]], settings: TTFTSettings) -> list[Mapping[str, object]]:
    """The stored GPU replay's points that were run with these settings (step budget, cache,
    legacy admission, as many requests as the curve replays)."""
    return [m for m in measured if m["chunked_prefill_size"] == settings.chunked_prefill_size
            and m["cache_tokens"] == settings.cache_tokens and settings.policy == "legacy"
            and m.get("requests") == ttft_requests(settings)]


def ttft_requests(settings: TTFTSettings) -> int:
    """The requests each point of the curve replays (see ``TTFTSettings.num_requests``)."""
    return settings.num_requests or VALIDATION_SIZES[settings.workload][1]


def ttft_rows(points: Sequence[LoadPoint], rate_per_s: float) -> list[dict[str, object]]:
    """The table at one rate: each mode's TTFT, rates, encoder share and cache counts."""
    rows = []
    for p in points:
        if p.rate_per_s != rate_per_s:
            continue
        s, c = p.run.summary, p.run.cache
        rows.append({
            "mode": p.run.config.mode, "policy": p.run.config.policy, "rate (req/s)": p.rate_per_s,
            "TTFT p50 ms": round(s.ttft_p50_ms, 1), "TTFT p90 ms": round(s.ttft_p90_ms, 1), "TTFT p99 ms": round(s.ttft_p99_ms, 1),
            "queue p99 ms": round(s.queue_p99_ms, 1), "done req/s": round(s.requests_per_s, 1),
            "prompt tok/s": round(s.prompt_tokens_per_s), "encoder share": round(s.encoder_share, 3),
            "re-encodings in a request": c.request_re_encodings, "refused puts": c.refused_puts,
        })
    return rows


class TTFTExplorer(widgets.VBox):
    """Time to first token against load, both modes, from the H100 cost models (named in the
    figure). ``controls``: workload, rate, chunk size, cache size, admission policy."""

    def __init__(self, settings: TTFTSettings | None = None, costs: StepCosts | None = None,
                 measured: Sequence[Mapping[str, object]] = ()) -> None:
        self.settings = settings or TTFTSettings()
        self.costs = costs or StepCosts(load_encoder_cost(), default_prefill())
        self.measured = list(measured)
        style, layout = {"description_width": "9em"}, widgets.Layout(width="26em")
        s = self.settings
        self.controls = {
            "workload": widgets.Dropdown(options=list(TTFT_WORKLOADS), value=s.workload, description="workload", style=style, layout=layout),
            "rate": widgets.FloatSlider(value=s.rate_per_s, min=1, max=100, step=1, description="request rate /s",
                                        continuous_update=False, style=style, layout=layout),
            "chunked_prefill_size": widgets.IntSlider(value=s.chunked_prefill_size, min=512, max=8192, step=512, description="tokens / step",
                                                      continuous_update=False, style=style, layout=layout),
            "cache_tokens": widgets.Dropdown(options=sorted({*TTFT_CACHE_CHOICES, s.cache_tokens}), value=s.cache_tokens,
                                             description="cache (tokens)", style=style, layout=layout),
            "policy": widgets.ToggleButtons(options=["legacy", "cache-aware"], value=s.policy, description="admission", style=style),
        }
        self.figure = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.table = widgets.HTML()
        self.status = widgets.HTML()
        self.points: list[LoadPoint] = []
        self.rows: list[dict[str, object]] = []
        grid = widgets.GridBox(list(self.controls.values()), layout=widgets.Layout(grid_template_columns="repeat(3, 27em)"))
        super().__init__([grid, self.status, self.figure, self.table])
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.redraw()

    def current_settings(self) -> TTFTSettings:
        c = self.controls
        return replace(self.settings, workload=c["workload"].value, rate_per_s=float(c["rate"].value),
                       chunked_prefill_size=c["chunked_prefill_size"].value, cache_tokens=c["cache_tokens"].value,
                       policy=c["policy"].value)

    def redraw(self) -> None:
        start = time.perf_counter()
        settings = self.current_settings()
        self.points = ttft_points(settings, self.costs)
        fig = plot_ttft_vs_load(self.points, measured=measured_at(self.measured, settings))
        for ax in fig.axes:
            ax.axvline(settings.rate_per_s, color="0.5", linewidth=0.8)
        self.figure.value = figure_png(fig)
        self.rows = ttft_rows(self.points, settings.rate_per_s)
        self.table.value = html_table(self.rows)
        ms = (time.perf_counter() - start) * 1e3
        self.status.value = (f"{ttft_requests(settings)} requests of <b>{html.escape(settings.workload)}</b>, Poisson arrivals; "
                             f"{html.escape(DECODE_NOTE)}.<br>Step costs: {html.escape(self.costs.label())} "
                             f"<span style='color:#888'>(updated in {ms:.0f} ms)</span>")


def ttft_explorer(settings: TTFTSettings | None = None, *, results_folder: str | Path = STORED) -> TTFTExplorer:
    """Notebook 03's lead view: TTFT against load from the encoder cost model fitted to the
    stored results in ``results_folder`` and the stored prefill model."""
    return TTFTExplorer(settings, StepCosts(load_encoder_cost(results_folder), default_prefill()),
                        measured=stored_measured_points(results_folder))


def stored_measured_points(results_folder: str | Path = STORED) -> list[dict[str, object]]:
    """The newest stored GPU validation's measured TTFT points (none when none is stored)."""
    files = sorted(Path(results_folder).glob("ttft-validate-*.json"))
    return measured_points(json.loads(files[-1].read_text())) if files else []


def admission_rows(
    trace: str = "product-catalog",
    cache_tokens: int = 4096,
    *,
    chunked_prefill_size: int = 4096,
    long_prefill_token_threshold: int | None = 1024,
    costs: StepCosts | None = None,
) -> list[dict[str, object]]:
    """Both admission policies x both modes on a stored trace (its own arrival times), with a
    tight cache: re-encodings, refused puts and TTFT, timed by the stored cost models."""
    costs = costs or StepCosts(load_encoder_cost(), default_prefill())
    base = ReplayConfig(chunked_prefill_size=chunked_prefill_size, long_prefill_token_threshold=long_prefill_token_threshold,
                        cache_tokens=cache_tokens)
    rows = []
    for mode in ("batched", "per_request"):
        for policy in ("legacy", "cache-aware"):
            run = timed_replay(load_trace(trace), costs, replace(base, mode=mode, policy=policy))
            s, c = run.summary, run.cache
            rows.append({"mode": mode, "admission": policy, "cache (tokens)": cache_tokens,
                         "re-encodings in a request": c.request_re_encodings, "re-encodings": c.re_encodings,
                         "refused puts": c.refused_puts, "forced grants": c.forced_grants,
                         "TTFT p50 ms": round(s.ttft_p50_ms, 1), "TTFT p99 ms": round(s.ttft_p99_ms, 1)})
    return rows
