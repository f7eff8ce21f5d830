"""Notebook 03's engine-policy view: on a stored trace, per cache size, what the SGLang, vLLM and vitkit
policies for long items (``vitkit.sim.policies``) encode, encode again, refuse and preempt, and their TTFT p99;
per policy, the smallest cache shown without re-encodes.

The view replays its whole grid (workloads x step budgets x cache sizes x policies) once, when built, so a
control only selects rows and redraws. Cache sizes are in embedding rows (tokens).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
from IPython.display import display
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from vitkit.costs import results
from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import load_encoder_cost
from vitkit.costs.prefill import load_prefill_cost
from vitkit.sim.policies import ENGINE_POLICIES, PolicyRow, compare_policies, smallest_cache_without_re_encodes
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import Trace, example_traces, load_trace
from vitkit.viz.render import control, figure_png, html_table, png_widget

# the long-item traces first: video QA and mixed chat are what the policies differ on
POLICY_WORKLOADS = ("video-qa", "mixed-chat", "doc-qa", "product-catalog", "chat-multiturn")
POLICY_CHUNK_SIZES = (2048, 4096, 8192)  # tokens a step
FIRST_CHUNK_SIZE = 4096  # shown first: the stored traces' replay setting (data/traces/README.md)
# rows; the largest holds video-qa's longest video whole (its README: up to 180,000 rows), so vLLM can admit it
POLICY_CACHE_SIZES = (2048, 4096, 16384, 65536, 262144)
PER_REQUEST_TOKENS = 1024  # long_prefill_token_threshold: several requests mid-prompt a step (data/traces/README.md)
FIXED_STEP_MS = 50.0  # the fallback clock: TTFT then counts steps, it is no card's time
POLICY_COLORS = {"sglang": "tab:orange", "vllm": "tab:green", "vitkit": "tab:blue"}
# marker and size per policy, largest first: where two policies' lines coincide, both stay visible
POLICY_MARKERS = {"sglang": ("o", 9), "vllm": ("s", 7), "vitkit": ("^", 5)}


@dataclass(frozen=True)
class PolicyGrid:
    """What the view replays when built: every workload x step budget (tokens) x cache size (rows) x policy."""

    workloads: tuple[str, ...] = POLICY_WORKLOADS
    chunk_sizes: tuple[int, ...] = POLICY_CHUNK_SIZES
    cache_tokens: tuple[int, ...] = POLICY_CACHE_SIZES
    long_prefill_token_threshold: int | None = PER_REQUEST_TOKENS

    def __post_init__(self) -> None:
        known = example_traces()
        unknown = [w for w in self.workloads if w not in known]
        if not self.workloads or unknown:
            raise ValueError(f"PolicyGrid: workloads {list(self.workloads)} must be stored traces; "
                             f"{unknown or 'none given'} not among {known}")
        for name in ("chunk_sizes", "cache_tokens"):
            values = getattr(self, name)
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
            if not values or bad:
                raise ValueError(f"PolicyGrid: {name} must be positive integers, got {list(values)}")
        cap = self.long_prefill_token_threshold
        if cap is not None and (not isinstance(cap, int) or cap <= 0):
            raise ValueError(f"PolicyGrid: long_prefill_token_threshold must be a positive int or None, got {cap!r}")

    def scheduler(self, chunked_prefill_size: int) -> SchedulerConfig:
        return SchedulerConfig(chunked_prefill_size, self.long_prefill_token_threshold)


@dataclass(frozen=True)
class PolicyResult:
    """One workload at one step budget: every policy's row per cache size, and how TTFT was timed."""

    workload: str
    requests: int  # in the trace
    videos: bool  # whether the trace has any
    chunked_prefill_size: int
    rows: tuple[PolicyRow, ...]
    modelled: bool  # TTFT from the card's cost models (else fixed steps)
    timing: str  # the status line's: which clock, whose models, and why
    clock: str  # the figure's few words on it


def has_videos(trace: Trace) -> bool:
    return any(spec.frames is not None for spec in trace.images.values())


def load_costs(results_folder: str | Path | None = None) -> tuple[StepCosts | None, str]:
    """The card's encoder and prefill cost models (``results.models_folder``) and the line naming them; None
    and the reason when they do not load."""
    models = results.models_folder(results_folder)
    where = models.label() + (f". {models.hint}" if models.hint else "")
    try:
        return StepCosts(load_encoder_cost(models.folder), load_prefill_cost(folder=models.folder)), where
    except ValueError as err:
        return None, f"no cost models load from {models.folder}: {err}"


def replay_policies(workload: str, chunked_prefill_size: int, grid: PolicyGrid, costs: StepCosts | None,
                    models: str = "") -> PolicyResult:
    """``compare_policies`` of ``workload`` at every cache size of ``grid``, timed by ``costs`` (``models``
    names their card), else, or where they cannot price the trace's calls, by a fixed step."""
    trace, scheduler = load_trace(workload), grid.scheduler(chunked_prefill_size)
    if costs is None:
        return _fixed(trace, scheduler, grid, models or "no cost models given")
    try:
        rows = compare_policies(trace, grid.cache_tokens, scheduler, costs)
    except ValueError as err:  # e.g. an item the encoder's cost model cannot price: count steps instead
        return _fixed(trace, scheduler, grid, f"the cost models ({models}) cannot price this trace: {err}")
    videos = (" Video calls are priced as the bucketed encoder runs them: each video split into its temporal "
              "pieces over the measured buckets (vitkit.costs.encoder).") if has_videos(trace) else ""
    return _result(trace, scheduler, rows, f"TTFT modelled, {models}.{videos}", f"TTFT modelled, {models}")


def _fixed(trace: Trace, scheduler: SchedulerConfig, grid: PolicyGrid, why: str) -> PolicyResult:
    rows = compare_policies(trace, grid.cache_tokens, scheduler, step_ms=FIXED_STEP_MS)
    clock = f"TTFT in fixed {FIXED_STEP_MS:g} ms steps, not modelled"
    return _result(trace, scheduler, rows, f"{clock}, no card's time: {why}", clock, modelled=False)


def _result(trace: Trace, scheduler: SchedulerConfig, rows: Sequence[PolicyRow], timing: str, clock: str, *,
            modelled: bool = True) -> PolicyResult:
    return PolicyResult(trace.name, len(trace.requests), has_videos(trace), scheduler.chunked_prefill_size,
                        tuple(rows), modelled, timing, clock)


def replay_grid(grid: PolicyGrid, costs: StepCosts | None, models: str = "", *,
                progress: bool = True) -> dict[tuple[str, int], PolicyResult]:
    """``replay_policies`` for every workload and step budget of ``grid``, keyed ``(workload, tokens a step)``,
    with a progress bar (``progress``) that goes when done."""
    keys = [(w, c) for w in grid.workloads for c in grid.chunk_sizes]
    return {key: replay_policies(*key, grid, costs, models)
            for key in tqdm(keys, desc="policy replays", unit="setting", disable=not progress, leave=False)}


def policy_table(rows: Sequence[PolicyRow]) -> list[dict[str, object]]:
    """``rows`` as the table on screen: what the encoder did, what was refused or redone, and TTFT p99."""
    return [{
        "policy": r.policy, "cache (rows)": r.cache_tokens, "encoder calls": r.encoder_calls,
        "encodes": r.encoded_items, "re-encodes": r.re_encodings, "re-encodes in a request": r.request_re_encodings,
        "refused requests": r.refused_requests, "refused puts": r.refused_puts, "preemptions": r.preemptions,
        "finished": r.finished,
        "TTFT p99 ms": round(r.ttft_p99_ms, 1) if math.isfinite(r.ttft_p99_ms) else "none finished",
    } for r in rows]


def smallest_caches(rows: Sequence[PolicyRow]) -> dict[str, int | None]:
    """Per policy of ``rows``: ``smallest_cache_without_re_encodes`` over the cache sizes in ``rows``."""
    return {p: smallest_cache_without_re_encodes(rows, p) for p in dict.fromkeys(r.policy for r in rows)}


def smallest_cache_line(rows: Sequence[PolicyRow]) -> str:
    """One sentence: each policy's smallest cache of those shown that serves every request, encoding nothing twice."""
    parts = [f"{p}: {f'{c} rows' if c is not None else 'none of the sizes shown'}"
             for p, c in smallest_caches(rows).items()]
    return f"Smallest cache without re-encodes or refused requests: {'; '.join(parts)}."


def cache_label(rows: int) -> str:
    """A cache size on an axis: 2048 -> "2k" (k = 1024 rows)."""
    return f"{rows // 1024}k" if rows % 1024 == 0 else str(rows)


def policy_figure(rows: Sequence[PolicyRow], title: str) -> Figure:
    """Three small panels over the cache sizes of ``rows`` (evenly spaced), a line per policy: re-encodes
    (dashed: within a request), refused requests, TTFT p99 (ms, log scale); ``title`` names the workload and
    the clock."""
    if not rows:
        raise ValueError("policy_figure needs at least one row")
    sizes = sorted({r.cache_tokens for r in rows})
    fig = Figure(figsize=(10.0, 3.0))
    fig.subplots_adjust(left=0.06, right=0.99, top=0.8, bottom=0.3, wspace=0.25)  # a fixed layout: faster to draw
    axes = fig.subplots(1, 3)
    for policy in dict.fromkeys(r.policy for r in rows):
        mine = sorted((r for r in rows if r.policy == policy), key=lambda r: r.cache_tokens)
        x = [sizes.index(r.cache_tokens) for r in mine]
        marker, size = POLICY_MARKERS.get(policy, ("o", 6))
        style = {"color": POLICY_COLORS.get(policy, "tab:gray"), "marker": marker, "markersize": size}
        axes[0].plot(x, [r.re_encodings for r in mine], "-", label=policy, **style)
        axes[0].plot(x, [r.request_re_encodings for r in mine], "--", markerfacecolor="none", **style)
        axes[1].plot(x, [r.refused_requests for r in mine], "-", **style)
        axes[2].plot(x, [r.ttft_p99_ms for r in mine], "-", **style)  # NaN (none finished): no point
    titles = ("re-encodes (dashed: in a request)", "refused requests", "TTFT p99 of the finished, ms")
    for ax, name in zip(axes, titles):
        ax.set_xticks(range(len(sizes)), [cache_label(s) for s in sizes])
        ax.set_xlim(-0.3, len(sizes) - 0.7)
        ax.set_xlabel("cache, embedding rows (k = 1024)", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[:2]:  # counts: whole numbers from zero
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.05 * max(1, ax.get_ylim()[1]), max(1, ax.get_ylim()[1]) * 1.05)
    if any(math.isfinite(r.ttft_p99_ms) and r.ttft_p99_ms > 0 for r in rows):
        axes[2].set_yscale("log")  # one policy's TTFT can be orders of magnitude above another's
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize="small", frameon=False)
    fig.suptitle(title, fontsize="small")
    return fig


class PolicyView(widgets.VBox):
    """Controls that select from ``results_by_setting`` (``replay_grid``'s, every setting of ``grid``): a
    workload, a step budget, the cache sizes shown; each change redraws the table, the smallest-cache line and
    the figure, with no replay; ``note`` goes under the status line."""

    def __init__(self, grid: PolicyGrid, results_by_setting: Mapping[tuple[str, int], PolicyResult],
                 note: str = "") -> None:
        missing = [(w, c) for w in grid.workloads for c in grid.chunk_sizes if (w, c) not in results_by_setting]
        if missing:
            raise ValueError(f"PolicyView: no replays for (workload, tokens a step) {missing}")
        self.grid, self.results, self.note = grid, dict(results_by_setting), note
        box = ("11em", "26em")  # label width, control width
        chunk = FIRST_CHUNK_SIZE if FIRST_CHUNK_SIZE in grid.chunk_sizes else grid.chunk_sizes[0]
        self.controls = {
            "workload": control(widgets.Dropdown, "workload", grid.workloads[0], *box, options=list(grid.workloads)),
            "chunked_prefill_size": control(widgets.ToggleButtons, "tokens / step", chunk, box[0],
                                            options=list(grid.chunk_sizes)),
            "cache_tokens": control(widgets.SelectMultiple, "cache sizes (rows)", tuple(grid.cache_tokens), *box,
                                    options=list(grid.cache_tokens), rows=len(grid.cache_tokens)),
        }
        for c in self.controls.values():
            c.observe(lambda _: self.redraw(), names="value")
        self.status, self.table, self.smallest = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.figure = png_widget()
        self.rows: list[PolicyRow] = []  # the rows on screen, set by redraw
        self.redraw_ms = 0.0
        self._pngs: dict[tuple, bytes] = {}  # per selection: drawing the figure is most of a redraw
        super().__init__([widgets.HBox([self.controls["workload"], self.controls["cache_tokens"]]),
                          self.controls["chunked_prefill_size"], self.status, self.table, self.smallest, self.figure])
        self.add_class("vitkit-policy-view")
        self.redraw()

    def shown(self) -> PolicyResult:
        """The replays of the chosen workload and step budget."""
        return self.results[(self.controls["workload"].value, self.controls["chunked_prefill_size"].value)]

    def redraw(self) -> None:
        start, result = time.perf_counter(), self.shown()
        caches = set(self.controls["cache_tokens"].value) or set(self.grid.cache_tokens)  # none chosen: all
        self.rows = [r for r in result.rows if r.cache_tokens in caches]
        self.table.value = html_table(policy_table(self.rows))
        self.smallest.value = f"<b>{html.escape(smallest_cache_line(self.rows))}</b>"
        key = (result.workload, result.chunked_prefill_size, tuple(sorted(caches)))
        if key not in self._pngs:
            title = f"{result.workload}, {result.chunked_prefill_size} tokens a step; {result.clock}"
            self._pngs[key] = figure_png(policy_figure(self.rows, title))
        self.figure.value = self._pngs[key]
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        cap = self.grid.long_prefill_token_threshold
        self.status.value = (
            f"<b>{html.escape(result.workload)}</b> ({result.requests} requests, "
            f"{'with' if result.videos else 'no'} videos), {result.chunked_prefill_size} tokens a step, "
            f"{cap or 'no cap on the'} tokens a request a step; policies {', '.join(ENGINE_POLICIES)}."
            f"<br>{html.escape(result.timing)}"
            + (f"<br><i>{html.escape(self.note)}</i>" if self.note else "")
            + f" <span style='color:#888'>(updated in {self.redraw_ms:.0f} ms)</span>")


def policy_view(grid: PolicyGrid | None = None, *, results_folder: str | Path | None = None,
                progress: bool = True) -> PolicyView:
    """Notebook 03's engine-policy view: replays ``grid`` (default: every long-item and image trace, three step
    budgets, five cache sizes) with the cost models of ``results_folder`` (default: the attached card's when it
    has results, else the stored card's), then lets the controls select."""
    grid = grid or PolicyGrid()
    costs, models = load_costs(results_folder)
    start = time.perf_counter()
    if progress:  # the bar shows while the cell runs, above where the view will be
        bar = widgets.Output()
        display(bar)
        with bar:
            replays = replay_grid(grid, costs, models)
        bar.clear_output()  # a finished bar would stay on screen (and in the saved notebook) otherwise
    else:
        replays = replay_grid(grid, costs, models, progress=False)
    runs = len(replays) * len(grid.cache_tokens) * len(ENGINE_POLICIES)
    return PolicyView(grid, replays, f"{runs} replays computed in {time.perf_counter() - start:.0f} s when the "
                                     "cell ran; the controls only select")
