"""Notebook 01's view: a ``ChunkPlan``'s token lines, windows and calls a step, and sliders over ``PlanSettings``."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import ipywidgets as widgets
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from vitkit.embed import MODES
from vitkit.viz.plan import ChunkPlan, PlanSettings, WindowResult, chunk_plan
from vitkit.viz.render import control_grid, figure_png, html_table, png_widget, scroll_html, slider

# slider name -> (label, min, max, step); values are PlanSettings fields
SLIDERS = {
    "chunk_size": ("chunk size (tokens)", 64, 4096, 64),
    "num_requests": ("requests", 1, 8, 1),
    "images_per_request": ("images / request", 1, 4, 1),
    "image_size": ("image size (px)", 112, 1008, 56),
    "cache_tokens": ("cache (tokens)", 0, 16384, 256),
    "distinct_images": ("distinct photos", 1, 12, 1),
}
TABLE_ROWS = 60  # a longer table only scrolls; the figure shows everything

TEXT_COLOR = "#d9d9d9"
MARKS = {  # status -> (letter, colour, legend)
    "hit": ("H", "#1a9850", "cache hit"),
    "encoded": ("E", "#d73027", "encoded here"),
    "shared": ("S", "#fc8d59", "shared in step"),
}
AGAIN = ("R", "#7b3294", "encoded again")  # the cache had lost it
MODE_COLORS = {"batched": "#2b8cbe", "per_request": "#bdbdbd"}


def photo_color(plan: ChunkPlan, photo: str) -> tuple[float, float, float, float]:
    """One colour per photo of ``data/``, the same in every plan."""
    return colormaps["tab20"](plan.photo_names.index(photo) % 20)


def label_color(background: tuple[float, float, float, float]) -> str:
    """Black on a light colour, white on a dark one (relative luminance, sRGB weights)."""
    red, green, blue = background[:3]
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def draw_token_lines(plan: ChunkPlan, mode: str = "batched", *, dpi: int = 100) -> Figure:
    """``plan``'s token lines, one per request (images coloured by photo, windows boxed and labelled with their
    step, letters under them per item: H hit, E encoded, S shared, R encoded again), over both modes' calls a step."""
    n = len(plan.requests)  # an unknown mode raises in ``plan.windows_of``
    fig = Figure(figsize=(11, 1.9 + 0.62 * n + 1.4), dpi=dpi, layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[0.4 + 0.62 * n, 1.4])
    handles = _draw_lines(top, plan, mode)
    _draw_calls(bottom, plan)
    fig.legend(handles=handles, loc="outside upper left", ncol=6, fontsize=8, frameon=False)
    # above the bars, not over them: with many requests a step's bars reach the top of the axes
    bottom.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncols=2, borderaxespad=0.2)
    return fig


def _row_y(plan: ChunkPlan, rid: int) -> float:
    return len(plan.requests) - 1 - rid  # request 0 at the top


def _draw_lines(ax, plan: ChunkPlan, mode: str) -> list:
    longest = max(r.prompt_len for r in plan.requests)
    for r, request in enumerate(plan.requests):
        y = _row_y(plan, r)
        ax.broken_barh([(0, request.prompt_len)], (y - 0.09, 0.18), facecolors=TEXT_COLOR)
        bars = [(s.start, len(s)) for s in request.spans]
        colors = [photo_color(plan, p) for p in plan.photos[r]]
        ax.broken_barh(bars, (y - 0.2, 0.4), facecolors=colors, edgecolors="white", linewidth=0.5)
        for span, photo, color in zip(request.spans, plan.photos[r], colors):
            if len(span) > 0.07 * longest:
                ax.text((span.start + span.stop) / 2, y, photo, ha="center", va="center", fontsize=8,
                        color=label_color(color))
    _draw_windows(ax, plan, plan.windows_of(mode), longest)
    ax.set_xlim(-0.01 * longest, 1.01 * longest)
    ax.set_ylim(-0.75, len(plan.requests) - 0.35)
    ax.set_yticks(range(len(plan.requests)), [f"request {r}" for r in reversed(range(len(plan.requests)))])
    ax.set_xlabel("prompt position (tokens)")
    ax.spines[["top", "right", "left"]].set_visible(False)
    ax.tick_params(axis="y", length=0)
    s = plan.settings
    ax.set_title(f"{mode.replace('_', '-')}: {len(plan.requests)} requests x {s.images_per_request} images "
                 f"({s.image_size} px), chunk {s.chunk_size} tokens, cache {s.cache_tokens} tokens",
                 fontsize=10, loc="left")
    handles = [Patch(facecolor=TEXT_COLOR, label="text"),
               Patch(fill=False, edgecolor="#252525", label="window (step s)")]
    return handles + [Line2D([], [], ls="", marker=f"${k}$", color=c, label=label)
                      for k, c, label in (*MARKS.values(), AGAIN)]


def _draw_windows(ax, plan: ChunkPlan, windows: list[WindowResult], longest: int) -> None:
    """Window boxes as one collection per request and the item letters as one scatter per kind (many windows)."""
    for r in range(len(plan.requests)):
        boxes = [(w.window.start, len(w.window)) for w in windows if w.request == r]
        ax.broken_barh(boxes, (_row_y(plan, r) - 0.3, 0.6), facecolors="none", edgecolors="#252525", linewidth=0.8)
    for w in windows:
        if len(w.window) >= 0.035 * longest:  # label only windows wide enough to read
            ax.text(w.window.start + 0.004 * longest, _row_y(plan, w.request) + 0.22, f"s{w.step}", fontsize=7,
                    va="bottom")
    points: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
    for w in windows:
        for mark in w.items:
            xs, ys = points.setdefault(AGAIN if mark.again else MARKS[mark.status], ([], []))
            xs.append((mark.part.start + mark.part.stop) / 2)
            ys.append(_row_y(plan, w.request) - 0.42)
    for (letter, color, _), (xs, ys) in points.items():
        ax.scatter(xs, ys, marker=f"${letter}$", color=color, s=45, linewidths=0)


def _draw_calls(ax, plan: ChunkPlan) -> None:
    width = 0.4
    for k, mode in enumerate(MODES):
        steps = plan.steps_of(mode)
        xs = [s.step + (k - 0.5) * width for s in steps]
        label = (f"{mode.replace('_', '-')}: {plan.total(mode, 'encoder_calls')} calls, "
                 f"{plan.total(mode, 'encoded_tokens')} tokens encoded")
        ax.bar(xs, [s.encoder_calls for s in steps], width=width, color=MODE_COLORS[mode], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("encoder calls")
    ax.set_xlim(-0.6, plan.num_steps - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)


class ChunkExplorer(widgets.VBox):
    """Sliders over ``PlanSettings`` (``controls``, with ``"mode"``); any change recomputes ``plan`` and redraws."""

    def __init__(self, settings: PlanSettings | None = None, mode: str = "batched") -> None:
        self.settings = settings or PlanSettings()
        self.controls: dict[str, widgets.ValueWidget] = {
            name: slider(widgets.IntSlider, label, getattr(self.settings, name), lo, hi, step, "10em", "25em")
            for name, (label, lo, hi, step) in SLIDERS.items()
        }
        grid = control_grid(self.controls.values(), "repeat(auto-fill, minmax(25em, 1fr))", self.redraw)
        self.controls["mode"] = widgets.ToggleButtons(options=list(MODES), value=mode, description="marks for")
        self.controls["mode"].observe(lambda _: self.redraw(), names="value")
        self.figure, self.table, self.summary = png_widget(), scroll_html("22em"), widgets.HTML()
        self.plan: ChunkPlan | None = None
        self.redraw_ms = 0.0
        super().__init__([grid, self.controls["mode"], self.summary, self.figure, self.table])
        self.add_class("vitkit-chunk-explorer")
        self.redraw()

    def current_settings(self) -> PlanSettings:
        return replace(self.settings, **{name: self.controls[name].value for name in SLIDERS})

    def redraw(self) -> None:
        """Recompute the plan from the controls and refresh figure, summary and table."""
        start = time.perf_counter()
        mode = self.controls["mode"].value
        self.plan = chunk_plan(self.current_settings())
        self.figure.value = figure_png(draw_token_lines(self.plan, mode))
        self.table.value = html_table(self.plan.table(mode), max_rows=TABLE_ROWS)
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        modes = " &middot; ".join(
            f"<b>{m.replace('_', '-')}</b>: {self.plan.total(m, 'encoder_calls')} encoder calls, "
            f"{self.plan.total(m, 'encoded_items')} items encoded ({self.plan.total(m, 'reencoded_items')} again), "
            f"{self.plan.total(m, 'cache_hits')} cache hits" for m in MODES
        )
        self.summary.value = (f"{len(self.plan.windows_of('batched'))} windows over {self.plan.num_steps} steps "
                              f"&middot; {modes} <span style='color:#888'>(redrawn in {self.redraw_ms:.0f} ms)</span>")


def chunk_explorer(**settings: object) -> ChunkExplorer:
    """Notebook 01's explorer, starting from ``PlanSettings(**settings)`` (defaults otherwise)."""
    mode = settings.pop("mode", "batched")
    known = set(asdict(PlanSettings()))
    if unknown := set(settings) - known:
        raise TypeError(f"chunk_explorer got unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return ChunkExplorer(PlanSettings(**settings), mode=str(mode))
