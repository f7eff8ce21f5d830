"""Notebook 03's widgets: a request stream through the chunked-prefill simulator, and TTFT against load. Cache
sizes and memory are in embedding rows (tokens): the fake encoder's small rows' MiB would not be a real model's."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from vitkit.bench.stream import fit_stream_bucket_cost
from vitkit.costs import results
from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import EncoderCost, load_encoder_cost, stream_bookkeeping_ms
from vitkit.costs.prefill import load_prefill_cost
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder, fake_video_items
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.plot import measured_points, plot_cache_memory, plot_over_steps, plot_ttft_vs_load
from vitkit.sim.replay import LoadPoint, Run, compare, load_sweep, prepare, replay_stream
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import ImageSpec, Trace, example_traces, load_trace, mean_rate_per_s
from vitkit.sim.workload import DEFAULT_RATES, TTFT_WORKLOADS, VALIDATION_SIZES, WorkloadParams, generate_workload
from vitkit.viz.render import control, control_grid, figure_png, html_table, png_widget, slider

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
TTFT_CACHE_CHOICES = (2048, 4096, 8192, 16384, 65536)
# the longest video (rows, whole) the cache explorer replays: one the largest cache it shows first holds
EXPLORER_VIDEO_ROWS = 16384
PINS = {"on and off": (True, False), "on": (True,), "off": (False,)}
PANELS = {  # figure name -> per-step metrics it plots (two a figure keeps each panel readable)
    "hits and calls": ("hit_rate", "encoder_calls"),
    "re-encodings and time": ("re_encodings", "encoder_ms"),
}
MEMORY = "cache memory"


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
    # "<encoder>/<impl>" of a stored cost model, or "fake" (a fake encoder's CPU time); None: ``default_encoder``
    encoder: str | None = None


def cost_models(folder: str | Path | None = None, problems: list[str] | None = None) -> dict[str, EncoderCost]:
    """``"<encoder>/<impl>" -> EncoderCost`` from ``folder``: the measured encoder-costs model, else a fit to the
    encoder's newest GPU stream file. A file that cannot be fitted raises ValueError, or is noted in ``problems``."""
    folder = results.models_folder(folder).folder
    models: dict[str, EncoderCost] = {}
    for path in results.plain_streams(folder):
        data = results.read("stream", path)
        gpu = data.get("kind", "gpu") == "gpu"
        encoders = {r["encoder"] for r in data["steps"] if r["impl"] == "vitkit"} if gpu else set()
        for encoder in sorted(encoders - {k.split("/")[0] for k in models}):
            try:
                cost, _ = fit_stream_bucket_cost(path, encoder)
            except ValueError as err:
                problem = f"cannot fit an encoder cost model to {path}: {err}"
                if problems is None:
                    raise ValueError(problem) from None
                problems.append(problem)
                continue
            book, _ = stream_bookkeeping_ms(folder, encoder)
            models[f"{encoder}/vitkit"] = EncoderCost(cost, book, f"stream fit {path.name} ({encoder}/vitkit)")
    try:
        measured = load_encoder_cost(folder)
    except ValueError:
        return models
    models[f"{measured.call.encoder}/{measured.call.impl}"] = measured
    return models


def default_encoder(models: Mapping[str, Any]) -> str:
    """The encoder time shown first: ``DEFAULT_MODEL``'s, else any stored model's, else "fake"."""
    return DEFAULT_MODEL if DEFAULT_MODEL in models else min(models, default="fake")


def encoder_label(encoder: str, models: Mapping[str, Any]) -> str:
    """What the figures say about their encoder time."""
    if encoder == "fake":
        return "encoder time: fake encoder on this CPU (not meaningful as a time)"
    return f"encoder time: modelled from stored results, {encoder}, {models[encoder].source}"


def run_sim(settings: SimSettings, models: Mapping[str, Any] | None = None, progress: bool = False) -> list[Run]:
    """Every mode x cache size x pin setting of ``settings`` on one schedule; ``models`` default: the stored ones."""
    folder = results.models_folder().folder
    models = cost_models(folder, []) if models is None else models
    trace = generate_workload(settings.workload) if settings.trace == GENERATED else load_trace(settings.trace)
    settings = replace(settings, encoder=settings.encoder or default_encoder(models))
    if settings.encoder == "fake":
        costs = None
    elif models and settings.encoder in models:
        costs = StepCosts(models[settings.encoder], load_prefill_cost(folder=folder))
    else:
        raise ValueError(f"encoder {settings.encoder!r} has no cost model; known: {['fake', *sorted(models or {})]}")
    scheduler = SchedulerConfig(settings.chunked_prefill_size, settings.long_prefill_token_threshold)
    configs = [ReplayConfig(scheduler, mode=m, pin=p, cache_tokens=t)
               for m in ("batched", "per_request") for t in settings.cache_tokens for p in settings.pins]
    # a fixed step: every run replays the very same schedule, only the cache and the encoder differ. With modelled
    # encoder time nothing reads the rows' content (figures and table are counts): the counts-only fake skips
    # making them; the "fake" encoder time is that encoder's own CPU time, so it makes them.
    encoder = FakeEncoder(FAKE_HIDDEN, counts_only=costs is not None)
    return compare(prepare(trace), configs, costs, step_ms=50.0, encoder=encoder, progress=progress)


def summary_rows(runs: Sequence[Run]) -> list[dict[str, object]]:
    """One row per run: the totals a reader compares across modes, cache sizes and pinning."""
    return [{
        "mode": r.config.mode, "pin": "on" if r.config.pin else "off", "cache (tokens)": r.config.cache_tokens,
        "steps": r.summary.steps, "hit rate": round(r.summary.hit_rate, 3), "encoder calls": r.summary.encoder_calls,
        "encoded items": r.summary.encoded_items, "re-encodings": r.summary.re_encodings,
        "re-encodings in a request": r.summary.request_re_encodings, "evictions": r.summary.evictions,
        "encoder ms": round(r.summary.encoder_ms, 2),
        "peak cache (tokens)": r.summary.peak_cache_bytes // FAKE_BYTES_PER_TOKEN,
    } for r in runs]


def sim_figure(runs: Sequence[Run], panel: str, label: str = "") -> Figure:
    """One of ``PANELS`` or ``MEMORY`` over the steps, a column per cache size, titled ``label``."""
    if panel == MEMORY:
        fig = plot_cache_memory(runs, FAKE_BYTES_PER_TOKEN)  # in tokens: the fake rows' MiB are no model's
    elif panel in PANELS:
        fig = plot_over_steps(runs, PANELS[panel])
    else:
        raise ValueError(f"unknown panel {panel!r}; choose from {[*PANELS, MEMORY]}")
    if label:
        fig.suptitle(label, fontsize="small")
    return fig


def short_encoder_label(encoder: str) -> str:
    """The figure title's few words on the encoder time (the status line above names its files)."""
    return "fake encoder time (CPU)" if encoder == "fake" else f"encoder time modelled: {encoder}, stored results"


class SimExplorer(widgets.VBox):
    """Controls over ``SimSettings``; a change re-runs the simulation (``runs``, ``rows``) and redraws."""

    def __init__(self, settings: SimSettings | None = None, models: Mapping[str, Any] | None = None,
                 notes: Sequence[str] = ()) -> None:
        self.models = dict(models or {})
        self.settings = settings or SimSettings()
        self.settings = replace(self.settings, encoder=self.settings.encoder or default_encoder(self.models))
        self.notes = list(notes)  # e.g. results files no cost model could be fitted to
        self.controls = _controls(self.settings, self.models)
        self.panel = control(widgets.ToggleButtons, "show", next(iter(PANELS)), "11em", options=[*PANELS, MEMORY])
        self.panel.observe(lambda _: self.draw_figure(), names="value")  # the same runs, another figure
        self.figure, self.table, self.status = png_widget(), widgets.HTML(), widgets.HTML()
        self.runs, self.rows, self.redraw_ms = [], [], 0.0  # the last run's, set by redraw
        grid = control_grid(self.controls.values(), "repeat(3, 27em)", self.redraw)
        super().__init__([grid, self.status, self.panel, self.figure, self.table])
        self.add_class("vitkit-sim-explorer")
        self.redraw()

    def current_settings(self) -> SimSettings:
        c = self.controls
        workload = replace(
            self.settings.workload, num_requests=c["requests"].value,
            arrival_rate_per_s=float(c["arrival_rate"].value) or None,
            images_per_request=tuple(c["images_per_request"].value), image_sizes=IMAGE_MIXES[c["image_sizes"].value],
            repeat_share=c["repeat_share"].value, turns=c["turns"].value,
        )
        return replace(
            self.settings, trace=c["trace"].value, workload=workload, pins=PINS[c["pins"].value],
            chunked_prefill_size=c["chunked_prefill_size"].value, encoder=c["encoder"].value,
            long_prefill_token_threshold=c["per_request_cap"].value or None,
            cache_tokens=tuple(sorted(c["cache_tokens"].value)) or self.settings.cache_tokens,
        )

    def redraw(self) -> None:
        start, settings = time.perf_counter(), self.current_settings()
        # the message reaches the browser before the replays finish: the figure below is the previous one till then
        self.status.value = f"<b>busy:</b> replaying {len(settings.cache_tokens) * len(settings.pins) * 2} runs ..."
        for name in ("requests", "arrival_rate", "images_per_request", "image_sizes", "repeat_share", "turns"):
            self.controls[name].disabled = settings.trace != GENERATED  # an example trace fixes the workload
        self.runs = run_sim(settings, self.models)
        self.draw_figure()
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


    def draw_figure(self) -> None:
        """The chosen panel of the last runs (no new simulation)."""
        if self.runs:
            label = short_encoder_label(self.current_settings().encoder)
            self.figure.value = figure_png(sim_figure(self.runs, self.panel.value, label))


def explorer_traces() -> list[str]:
    """The stored traces the cache explorer offers: those without videos longer than ``EXPLORER_VIDEO_ROWS``.
    It replays a dozen runs at every control's change; video-qa's long videos make each run far longer than a
    widget's second. The engine-policy view (``vitkit.viz.policy_widget``) shows every trace, videos included,
    replayed once when its cell runs."""
    return [name for name in example_traces()
            if all(spec.frames is None or video_rows(spec) <= EXPLORER_VIDEO_ROWS
                   for spec in load_trace(name).images.values())]


def video_rows(spec: ImageSpec) -> int:
    """Embedding rows of a trace's video, whole, as the replays build it."""
    return sum(item.num_tokens for item in fake_video_items("rows", spec.frames, spec.height, spec.width))


def _controls(s: SimSettings, models: Mapping[str, Any]) -> dict[str, widgets.ValueWidget]:
    w, box = s.workload, ("11em", "26em")  # label width, control width
    sizes = next((k for k, v in IMAGE_MIXES.items() if v == tuple(w.image_sizes)), next(iter(IMAGE_MIXES)))
    pins, caches = next(k for k, v in PINS.items() if v == s.pins), sorted({*CACHE_CHOICES, *s.cache_tokens})
    rate, cap, chunk = int(w.arrival_rate_per_s or 0), s.long_prefill_token_threshold or 0, s.chunked_prefill_size
    return {
        "trace": control(widgets.Dropdown, "workload", s.trace, *box, options=[GENERATED, *explorer_traces()]),
        "requests": slider(widgets.IntSlider, "requests", w.num_requests, 2, 64, 1, *box),
        "arrival_rate": slider(widgets.IntSlider, "arrivals / s (0: batch)", rate, 0, 200, 5, *box),
        "images_per_request": slider(widgets.IntRangeSlider, "images / request", w.images_per_request, 0, 6, 1, *box),
        "image_sizes": control(widgets.Dropdown, "image sizes", sizes, *box, options=list(IMAGE_MIXES)),
        "repeat_share": slider(widgets.FloatSlider, "repeated images", w.repeat_share, 0.0, 1.0, 0.05, *box),
        "turns": slider(widgets.IntSlider, "turns / conversation", w.turns, 1, 4, 1, *box),
        "chunked_prefill_size": slider(widgets.IntSlider, "tokens / step", chunk, 256, 8192, 256, *box),
        "per_request_cap": slider(widgets.IntSlider, "tokens / request (0: no cap)", cap, 0, 4096, 128, *box),
        "cache_tokens": control(widgets.SelectMultiple, "cache sizes (tokens)", s.cache_tokens, *box, options=caches,
                                rows=5),
        "pins": control(widgets.ToggleButtons, "pinning", pins, box[0], options=list(PINS)),
        "encoder": control(widgets.Dropdown, "encoder time", s.encoder, *box, options=["fake", *sorted(models)]),
    }


def sim_explorer(settings: SimSettings | None = None, *, results_folder: str | Path | None = None) -> SimExplorer:
    """Notebook 03's explorer; offers modelled encoder time when the models' folder (``results_folder``, default:
    the attached card's when it has results, else the stored card's) has results."""
    models = results.models_folder(results_folder)
    problems = [models.hint] if models.hint else []  # cost_models adds what it cannot fit
    return SimExplorer(settings, cost_models(models.folder, problems), problems)


# ---------------------------------------------------------------- time to first token


@dataclass(frozen=True)
class TTFTSettings:
    """One workload at several Poisson rates, both modes, one scheduler / cache / policy."""

    workload: str = "small-images"  # a stock TTFT workload (vitkit.sim.workload.TTFT_WORKLOADS) or ``trace``'s name
    rate_per_s: float = 40.0  # the rate the table reports (marked on the curves)
    rates: tuple[float, ...] | None = None  # the curve's rates (None: the workload's defaults)
    # None: the GPU validation's count for the workload, so that its measured points compare like with like
    num_requests: int | None = None
    chunked_prefill_size: int = 2048
    cache_tokens: int = 16384
    policy: str = "legacy"
    trace: Trace | None = None  # a user's trace, replayed (Poisson) around its own rate when ``workload`` names it


TRACE_RATE_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # a trace's curve: rates around its own


def _chosen_trace(settings: TTFTSettings) -> Trace | None:
    return settings.trace if settings.trace is not None and settings.workload == settings.trace.name else None


def curve_rates(settings: TTFTSettings) -> tuple[float, ...]:
    """The curve's rates: as given, a stock workload's defaults, or a trace's own rate times ``TRACE_RATE_FACTORS``."""
    if settings.rates:
        return tuple(settings.rates)
    trace = _chosen_trace(settings)
    if trace is None:
        return tuple(DEFAULT_RATES[settings.workload])
    return tuple(round(trace_rate(trace) * f, 2) for f in TRACE_RATE_FACTORS)


def trace_rate(trace: Trace) -> float:
    """A trace's own mean arrival rate (requests/s); 10/s for one whose requests all arrive at once."""
    return round(mean_rate_per_s(trace) or 10.0, 2)


def ttft_points(settings: TTFTSettings, costs: StepCosts) -> list[LoadPoint]:
    """Both modes of ``settings`` at every rate of its curve and at ``rate_per_s``."""
    rates = sorted({*curve_rates(settings), settings.rate_per_s})
    scheduler = SchedulerConfig(settings.chunked_prefill_size, policy=settings.policy)
    configs = [ReplayConfig(scheduler, mode=m, cache_tokens=settings.cache_tokens) for m in ("batched", "per_request")]
    workload = _chosen_trace(settings) or settings.workload
    return load_sweep(workload, rates, costs, configs, num_requests=ttft_requests(settings), progress=False)


def measured_at(measured: Sequence[Mapping[str, object]], settings: TTFTSettings) -> list[Mapping[str, object]]:
    """The stored GPU replay's points run with these settings (and as many requests as the curve)."""
    return [m for m in measured if m["chunked_prefill_size"] == settings.chunked_prefill_size
            and m["cache_tokens"] == settings.cache_tokens and settings.policy == "legacy"
            and m.get("requests") == ttft_requests(settings)]


def model_errors(points: Sequence[LoadPoint], measured: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per measured point with a modelled one at the same workload, mode and rate: the model's TTFT p50 and p99
    error against the GPU replay, in percent of the measurement."""
    modelled = {(p.workload, p.run.config.mode, p.rate_per_s): p.run.latency for p in points}
    rows = []
    for m in measured:
        latency = modelled.get((m["workload"], m["mode"], m["rate_per_s"]))
        if latency is not None:
            rows.append({"mode": m["mode"], "rate": m["rate_per_s"], "card": m["card"],
                         "p50 %": 100 * (latency.ttft_p50_ms / m["ttft_p50_ms"] - 1),
                         "p99 %": 100 * (latency.ttft_p99_ms / m["ttft_p99_ms"] - 1)})
    return rows


def model_error_line(errors: Sequence[Mapping[str, object]]) -> str:
    """One sentence: how far the curves are from the GPU replay's points on screen (or that none is shown)."""
    if not errors:
        return "No GPU replay was stored for these settings: the curves are the models' alone."
    parts = [f"{e['mode'].replace('_', '-')} at {e['rate']:g}/s: p50 {e['p50 %']:+.1f}%, p99 {e['p99 %']:+.1f}%"
             for e in errors]
    return f"Model against the GPU replay (hollow markers, measured on {errors[0]['card']}): {'; '.join(parts)}."


def ttft_requests(settings: TTFTSettings) -> int:
    """The requests each point of the curve replays (see ``TTFTSettings.num_requests``)."""
    trace = _chosen_trace(settings)
    if trace is not None:
        return len(trace.requests)  # a trace is replayed whole
    return settings.num_requests or VALIDATION_SIZES[settings.workload][1]


def ttft_rows(points: Sequence[LoadPoint], rate_per_s: float) -> list[dict[str, object]]:
    """The table at one rate: each mode's TTFT, rates, encoder share and cache counts."""
    rows = []
    for p in points:
        if p.rate_per_s != rate_per_s:
            continue
        s, c = p.run.latency, p.run.summary
        rows.append({
            "mode": p.run.config.mode, "policy": p.run.config.scheduler.policy, "rate (req/s)": p.rate_per_s,
            "TTFT p50 ms": round(s.ttft_p50_ms, 1), "TTFT p90 ms": round(s.ttft_p90_ms, 1),
            "TTFT p99 ms": round(s.ttft_p99_ms, 1), "queue p99 ms": round(s.queue_p99_ms, 1),
            "done req/s": round(s.requests_per_s, 1),
            "prompt tok/s": round(s.prompt_tokens_per_s), "encoder share": round(s.encoder_share, 3),
            "re-encodings in a request": c.request_re_encodings, "refused puts": c.refused_puts,
        })
    return rows


class TTFTExplorer(widgets.VBox):
    """Time to first token against load, both modes, from the stored cost models; ``controls`` set ``TTFTSettings``."""

    def __init__(self, settings: TTFTSettings | None = None, costs: StepCosts | None = None,
                 measured: Sequence[Mapping[str, object]] = (), note: str = "") -> None:
        self.settings = settings or TTFTSettings()
        self.note = note  # which card's models, and a hint to calibrate when the attached card has none
        self.costs = costs or StepCosts(load_encoder_cost(), load_prefill_cost())  # the stored card's: a test default
        self.measured = list(measured)
        s, box = self.settings, ("9em", "26em")  # label width, control width
        self.controls = {
            "workload": control(widgets.Dropdown, "workload", s.workload, *box,
                                options=[*TTFT_WORKLOADS, *([s.trace.name] if s.trace else [])]),
            "rate": slider(widgets.FloatSlider, "request rate /s", s.rate_per_s, 0.5, max(100.0, *curve_rates(s)), 0.5,
                           *box),
            "chunked_prefill_size": slider(widgets.IntSlider, "tokens / step", s.chunked_prefill_size, 512, 8192, 512,
                                           *box),
            "cache_tokens": control(widgets.Dropdown, "cache (tokens)", s.cache_tokens, *box,
                                    options=sorted({*TTFT_CACHE_CHOICES, s.cache_tokens})),
            "policy": control(widgets.ToggleButtons, "admission", s.policy, box[0], options=["legacy", "cache-aware"]),
        }
        self.figure, self.table, self.status = png_widget(), widgets.HTML(), widgets.HTML()
        self.points, self.rows, self.errors = [], [], []  # the last redraw's
        self._curves: dict[tuple, list[LoadPoint]] = {}  # per curve setting: a rate change replays only its rate
        self.controls["workload"].observe(self._workload_rates, names="value")  # before the redraw's observer
        grid = control_grid(self.controls.values(), "repeat(3, 27em)", self.redraw)
        super().__init__([grid, self.status, self.figure, self.table])
        self.add_class("vitkit-ttft-explorer")
        self.redraw()

    def current_settings(self) -> TTFTSettings:
        c = self.controls
        return replace(self.settings, workload=c["workload"].value, rate_per_s=float(c["rate"].value),
                       chunked_prefill_size=c["chunked_prefill_size"].value, cache_tokens=c["cache_tokens"].value,
                       policy=c["policy"].value)

    def _workload_rates(self, change: dict) -> None:  # each workload brings its rates: its curve's, its validation's
        rate, chosen = self.controls["rate"], replace(self.settings, workload=change["new"], rates=None)
        trace = _chosen_trace(chosen)
        rate.max = max(max(curve_rates(chosen)), rate.min + rate.step)
        rate.value = trace_rate(trace) if trace else VALIDATION_SIZES[change["new"]][0]

    def _points(self, s: TTFTSettings) -> list[LoadPoint]:
        key = (s.workload, s.chunked_prefill_size, s.cache_tokens, s.policy)
        if key not in self._curves:
            self.status.value = f"<b>busy:</b> replaying {ttft_requests(s)} requests at each rate of the curve"
            self._curves[key] = ttft_points(replace(s, rate_per_s=curve_rates(s)[0]), self.costs)
        curve = self._curves[key]  # plus the table's rate, when the curve has not got it
        return curve + ([] if any(p.rate_per_s == s.rate_per_s for p in curve) else ttft_points(
            replace(s, rates=(s.rate_per_s,)), self.costs))

    def redraw(self) -> None:
        start, settings = time.perf_counter(), self.current_settings()
        try:
            self.points = self._points(settings)
        except ValueError as err:  # e.g. an image cache-aware admission could never grant at this step budget
            self.status.value = f"<b>cannot replay these settings:</b> {html.escape(str(err))}"
            return
        fig = plot_ttft_vs_load(self.points, measured=measured_at(self.measured, settings))
        for ax in fig.axes:
            ax.axvline(settings.rate_per_s, color="0.5", linewidth=0.8)
        self.figure.value = figure_png(fig)
        self.rows = ttft_rows(self.points, settings.rate_per_s)
        self.errors = model_errors(self.points, measured_at(self.measured, settings))
        self.table.value = html_table(self.rows)
        self.status.value = (
            f"{ttft_requests(settings)} requests of <b>{html.escape(settings.workload)}</b>, Poisson arrivals; "
            f"{html.escape(DECODE_NOTE)}.<br>Step costs ({html.escape(self.note or 'models given')}): "
            f"{html.escape(self.costs.label())}"
            f"<br>{html.escape(model_error_line(self.errors))} "
            f"<span style='color:#888'>(updated in {(time.perf_counter() - start) * 1e3:.0f} ms)</span>")


def ttft_explorer(settings: TTFTSettings | None = None, *, results_folder: str | Path | None = None,
                  trace: str | Path | None = None) -> TTFTExplorer:
    """Notebook 03's lead view: TTFT against load from the cost models in ``results_folder`` (default: the attached
    card's when it has results, else the stored card's), named with any hint to calibrate. ``trace`` (a
    ``vitkit.sim.trace/1`` file or a stored trace's name) is offered as a workload and shown first, at its own rate."""
    if trace is not None:
        loaded = load_trace(trace)
        settings = replace(settings or TTFTSettings(), trace=loaded, workload=loaded.name, rate_per_s=trace_rate(loaded))
    models = results.models_folder(results_folder)
    costs = StepCosts(load_encoder_cost(models.folder), load_prefill_cost(folder=models.folder))
    note = models.label() + (f". {models.hint}" if models.hint else "")
    return TTFTExplorer(settings, costs, measured=stored_measured_points(models.folder), note=note)


def stored_measured_points(results_folder: str | Path | None = None) -> list[dict[str, object]]:
    """The newest stored GPU validation's measured TTFT points (none when none is stored)."""
    files = results.newest_first("ttft-validate", results.models_folder(results_folder).folder)
    return measured_points(results.read("ttft-validate", files[0])) if files else []


def admission_rows(trace: str = "product-catalog", cache_tokens: int = 4096, *, chunked_prefill_size: int = 4096,
                   long_prefill_token_threshold: int | None = 1024, costs: StepCosts | None = None,
                   ) -> list[dict[str, object]]:
    """Both admission policies x both modes on a stored trace: re-encodings, refused puts and TTFT."""
    folder = results.models_folder().folder
    costs = costs or StepCosts(load_encoder_cost(folder), load_prefill_cost(folder=folder))
    rows = []
    for mode in ("batched", "per_request"):
        for policy in ("legacy", "cache-aware"):
            scheduler = SchedulerConfig(chunked_prefill_size, long_prefill_token_threshold, policy=policy)
            config = ReplayConfig(scheduler, mode=mode, cache_tokens=cache_tokens)
            run = replay_stream(load_trace(trace), config, costs)
            s, c = run.latency, run.summary
            rows.append({"mode": mode, "admission": policy, "cache (tokens)": cache_tokens,
                         "re-encodings in a request": c.request_re_encodings, "re-encodings": c.re_encodings,
                         "refused puts": c.refused_puts, "preemptions": c.preemptions,
                         "TTFT p50 ms": round(s.ttft_p50_ms, 1), "TTFT p99 ms": round(s.ttft_p99_ms, 1)})
    return rows
