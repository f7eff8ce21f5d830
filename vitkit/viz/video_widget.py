"""Notebook 01's video view: a video's span as whole or frame-group items under each engine's windows
(``vitkit.viz.video_plan``), with a strip of the clip's frames, and controls over ``VideoSettings``."""

from __future__ import annotations

import html
import time
from dataclasses import asdict, replace
from functools import lru_cache
from itertools import accumulate

import ipywidgets as widgets
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from PIL import Image

from vitkit.processing import VIDEO_RESOLUTIONS
from vitkit.viz.chunk_widget import AGAIN, MARKS, TABLE_ROWS, TEXT_COLOR, label_color
from vitkit.viz.render import control, control_grid, figure_png, html_table, png_widget, scroll_html, slider
from vitkit.viz.video_plan import ITEM_POLICIES, EngineRun, VideoPlan, VideoSettings, clip_frames, video_plan

ENGINE_COLORS = {"sglang": "#e6550d", "vllm": "#756bb1", "vitkit": "#2b8cbe"}
GROUP_COLORS = ("#9ecae1", "#4292c6")  # frame groups alternate, so their boundaries show; a whole video: the first
REFUSED_COLOR = "#b2182b"
THUMB_PX = 140  # a thumbnail's width: six of them across an 11-inch figure at 100 dpi
FATE_COLORS = {"E": MARKS["encoded"][1], "H": MARKS["hit"][1], "S": MARKS["shared"][1], "R": AGAIN[1]}


def draw_video_windows(plan: VideoPlan, *, dpi: int = 100, thumbnails: int = 6) -> Figure:
    """``plan``'s video: a strip of its frames (each pointing at its temporal patch), then one lane per engine
    (text grey, the video as that engine's items, groups labelled; windows boxed with their step; under them,
    per item part, its letter: E encoded, H hit, R encoded again, S shared; a refused request hatched), then
    the rows each engine encoded so far against prompt position."""
    n = len(plan.runs)
    # inches, top to bottom: legend and title, frames, lanes, gap, encoded rows, x label
    top, strip_h, lanes_h, gap, rows_h, bottom = 0.8, 1.35, 0.8 * n, 0.6, 1.5, 0.5  # gap: the panel's legend
    total = top + strip_h + lanes_h + gap + rows_h + bottom
    # fixed axes instead of a layout engine, which lays every text out several times (slow for a slider)
    fig = Figure(figsize=(11, total), dpi=dpi)

    def axes(top_in: float, height_in: float):
        return fig.add_axes((0.1, 1 - (top_in + height_in) / total, 0.89, height_in / total))

    strip = axes(top, strip_h)
    lanes = axes(top + strip_h, lanes_h)
    rows = axes(top + strip_h + lanes_h + gap, rows_h)
    limits = (-0.01 * plan.prompt_len, 1.01 * plan.prompt_len)
    _draw_thumbnails(strip, plan, thumbnails)
    for k, run in enumerate(plan.runs):
        _draw_lane(lanes, plan, run, n - 1 - k)
    _style_lanes(lanes, plan)
    _draw_encoded_rows(rows, plan)
    for ax in (strip, lanes, rows):
        ax.set_xlim(limits)  # one token axis; not sharex, which would share (and recompute) the tick locators
    handles = [Patch(facecolor=TEXT_COLOR, label="text"), Patch(facecolor=GROUP_COLORS[1], label="video item"),
               Patch(fill=False, edgecolor="#252525", label="window (step s)"),
               *(Patch(facecolor=c, label=f"{k}: {label}") for k, c, label in _fate_legend(plan)),
               Patch(fill=False, hatch="////", edgecolor=REFUSED_COLOR, label="refused at admission")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.01, 1), ncol=8, fontsize=8, frameon=False)
    s = plan.settings
    fig.text(0.1, 1 - 0.3 / total, f"{plan.describe()}\n{plan.grid_text()}; windows of {s.chunk_size:,} tokens, "
             f"a cache of {s.cache_tokens:,} rows", fontsize=9.5, va="top", linespacing=1.4)
    return fig


def _fate_legend(plan: VideoPlan) -> list[tuple[str, str, str]]:
    """(letter, colour, meaning) of E, H, R, and of S where some window shows one (one request: rarely)."""
    shown = {m.letter for run in plan.runs for w in run.windows for m in w.marks}
    return [(letter, FATE_COLORS[letter], label) for letter, _, label in (*MARKS.values(), AGAIN)
            if letter != "S" or "S" in shown]


def _draw_thumbnails(ax, plan: VideoPlan, count: int) -> None:
    """Frames in evenly spaced slots over the video's span, a line from each to its temporal patch."""
    shown = plan.thumbnails(count)
    video = plan.video_span
    slot = len(video) / len(shown)
    for k, thumb in enumerate(shown):
        centre = video.start + (k + 0.5) * slot
        ax.imshow(_thumbnail(thumb.clip_frame), extent=(centre - 0.42 * slot, centre + 0.42 * slot, 0.3, 1.0),
                  aspect="auto")
        ax.plot([centre, thumb.x], [0.3, 0.0], color="#636363", linewidth=0.8)
        ax.text(centre, 0.27, f"frame {thumb.frame}", ha="center", va="top", fontsize=7, color="#636363")
    ax.set_ylim(0, 1.0)
    ax.set_axis_off()


@lru_cache(maxsize=64)
def _thumbnail(clip_frame: int, width: int = THUMB_PX) -> np.ndarray:
    """Clip frame ``clip_frame`` shrunk to ``width`` px (aspect kept): about the size it is drawn at, so the
    figure does not resample full frames on every redraw."""
    frame = clip_frames()[clip_frame]
    height = max(1, round(frame.height * width / frame.width))
    return np.asarray(frame.resize((width, height), Image.Resampling.LANCZOS))


def _draw_lane(ax, plan: VideoPlan, run: EngineRun, y: float) -> None:
    request, longest = run.request, plan.prompt_len
    ax.broken_barh([(0, request.prompt_len)], (y - 0.07, 0.14), facecolors=TEXT_COLOR)
    colors = [GROUP_COLORS[k % 2] for k in range(len(request.spans))]
    thin = len(request.spans) > 64  # many groups: thinner boundaries, or they would hide the groups
    ax.broken_barh([(s.start, len(s)) for s in request.spans], (y - 0.18, 0.36), facecolors=colors,
                   edgecolors="white", linewidth=0.2 if thin else 0.6)
    for k, (span, color) in enumerate(zip(request.spans, colors)):
        if len(span) > 0.03 * longest:  # label only groups wide enough to read
            name = f"whole video, {len(span):,} rows" if len(request.spans) == 1 else run.label(k)
            ax.text((span.start + span.stop) / 2, y, name, ha="center", va="center", fontsize=7,
                    color=label_color(to_rgba(color)))
    if run.refused is not None:
        _draw_refused(ax, plan, run, y)
        return
    dense = len(run.windows) > 80  # hairlines, or the boxes' edges would paint the lane black
    ax.broken_barh([(w.window.start, len(w.window)) for w in run.windows], (y - 0.26, 0.52), facecolors="none",
                   edgecolors="#636363" if dense else "#252525", linewidth=0.25 if dense else 0.7)
    for w in run.windows:
        if len(w.window) >= 0.035 * longest:
            ax.text(w.window.start + 0.004 * longest, y + 0.27, f"s{w.step}", fontsize=7, va="bottom")
    _draw_fates(ax, run, y, longest)


def _draw_fates(ax, run: EngineRun, y: float, longest: int) -> None:
    """Under the lane, each item part a window touched, coloured by its letter; the letter where it fits."""
    parts: dict[str, list[tuple[int, int]]] = {}
    for w in run.windows:
        for mark in w.marks:
            parts.setdefault(mark.letter, []).append((mark.part.start, len(mark.part)))
            if len(mark.part) >= 0.012 * longest:
                ax.text((mark.part.start + mark.part.stop) / 2, y - 0.38, mark.letter, ha="center", va="center",
                        fontsize=7, color="white", fontweight="bold")
    for letter, bars in parts.items():
        ax.broken_barh(bars, (y - 0.45, 0.14), facecolors=FATE_COLORS[letter], edgecolors="white", linewidth=0.4)


def _draw_refused(ax, plan: VideoPlan, run: EngineRun, y: float) -> None:
    video = plan.video_span
    ax.broken_barh([(video.start, len(video))], (y - 0.26, 0.52), facecolors="none", hatch="////",
                   edgecolors=REFUSED_COLOR, linewidth=0.8)
    largest, cache = max(item.num_tokens for item in run.request.items), plan.settings.cache_tokens
    why = f": an item of {largest:,} rows, larger than the whole cache ({cache:,} rows)" if largest > cache else ""
    ax.text((video.start + video.stop) / 2, y - 0.38, f"refused at admission{why}",
            ha="center", va="center", fontsize=8, color=REFUSED_COLOR,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def _style_lanes(ax, plan: VideoPlan) -> None:
    n = len(plan.runs)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(range(n), [f"{r.engine}\n{r.video_items}" for r in reversed(plan.runs)], fontsize=8)
    ax.xaxis.set_major_locator(NullLocator())  # the panel below carries the token axis
    ax.tick_params(axis="y", length=0)
    ax.spines[["top", "right", "left", "bottom"]].set_visible(False)


def _draw_encoded_rows(ax, plan: VideoPlan) -> None:
    """Rows each engine encoded up to each window, against the video's own rows; a log scale once some engine
    encoded more than ten times those (only then do a re-encoding engine and a once-only one both show)."""
    most = 0
    for run in plan.runs:
        color = ENGINE_COLORS.get(run.engine)
        if run.refused is not None or not run.windows:
            ax.plot([], [], color=color, label=f"{run.engine}: refused, nothing encoded")
            continue
        so_far = list(accumulate(w.encoded_rows for w in run.windows))
        xs = [w.window.start for w in run.windows] + [run.windows[-1].window.stop]
        ax.step(xs, so_far + so_far[-1:], where="post", color=color, linewidth=1.4,
                label=f"{run.engine}: {so_far[-1]:,} rows encoded ({run.total('re_encoded_rows'):,} again)")
        most = max(most, so_far[-1])
    ax.axhline(plan.video_rows, color="#252525", linestyle="--", linewidth=0.8,
               label=f"the video's own rows: {plan.video_rows:,}")
    if most > 10 * plan.video_rows:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=5))
        ax.yaxis.set_minor_locator(NullLocator())  # a tick costs a redraw time; minor ones add little here
    else:
        ax.set_ylim(0, 1.1 * max(most, plan.video_rows))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _rows_text(value)))
    ax.set_ylabel("rows encoded so far")
    ax.set_xlabel("prompt position (tokens)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, borderaxespad=0.2)


def _rows_text(value: float) -> str:
    """A row count for a log axis: 1,000, 10k, 1M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e4 else f"{value:,.0f}"


# windows from 1,024 tokens: shorter ones at 512 frames make many steps, each scanning every item (slow redraws)
VIDEO_CHUNKS = tuple(2**k for k in range(10, 15))  # tokens
VIDEO_CACHES = (0, *(2**k for k in range(8, 19)))  # rows; the largest holds a 512-frame 720p video whole
CLIP_SIZE = "clip"  # the frame-size choice for the clip's own size (a Dropdown shows a None value as no choice)


class VideoExplorer(widgets.VBox):
    """Controls over ``VideoSettings`` (``controls``, with ``"table"``: whose windows the table lists); any change
    recomputes ``plan`` (every engine) and redraws."""

    def __init__(self, settings: VideoSettings | None = None, table: str | None = None) -> None:
        self.settings = settings or VideoSettings()
        s = self.settings
        self.controls: dict[str, widgets.ValueWidget] = {
            "frames": slider(widgets.IntSlider, "frames", s.frames, 4, 512, 2, "10em", "25em"),
            "size": control(widgets.Dropdown, "frame size", CLIP_SIZE if s.height is None else (s.height, s.width),
                            "10em", "25em", options=_size_options(s)),
            "chunk_size": control(widgets.SelectionSlider, "chunk size (tokens)", s.chunk_size, "10em", "25em",
                                  options=sorted({*VIDEO_CHUNKS, s.chunk_size}), continuous_update=False),
            "cache_tokens": control(widgets.SelectionSlider, "cache (rows)", s.cache_tokens, "10em", "25em",
                                    options=sorted({*VIDEO_CACHES, s.cache_tokens}), continuous_update=False),
            "items": control(widgets.ToggleButtons, "video as", s.items, "10em", options=list(ITEM_POLICIES)),
            "group_size": slider(widgets.IntSlider, "frame group (patches)", s.group_size, 1, 16, 1, "10em", "25em"),
        }
        grid = control_grid(self.controls.values(), "repeat(auto-fill, minmax(25em, 1fr))", self.redraw)
        self.controls["table"] = widgets.ToggleButtons(options=list(s.engines), value=table or s.engines[0],
                                                       description="table for")
        self.controls["table"].observe(lambda _: self.show_table(), names="value")
        self.figure, self.table, self.summary = png_widget(), scroll_html("22em"), widgets.HTML()
        self.plan: VideoPlan | None = None
        self.redraw_ms = 0.0
        super().__init__([grid, self.summary, self.figure, self.controls["table"], self.table])
        self.add_class("vitkit-video-explorer")
        self.redraw()

    def current_settings(self) -> VideoSettings:
        size = self.controls["size"].value
        clip = size == CLIP_SIZE
        return replace(self.settings, height=None if clip else size[0], width=None if clip else size[1],
                       **{name: self.controls[name].value for name in ("frames", "chunk_size", "cache_tokens", "items",
                                                                       "group_size")})

    def redraw(self) -> None:
        """Recompute the plan from the controls and refresh figure, summary and table."""
        start = time.perf_counter()
        self.plan = video_plan(self.current_settings())
        self.figure.value = figure_png(draw_video_windows(self.plan))
        self.show_table()
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        self.summary.value = (f"{html.escape(self.plan.describe())} &middot; "
                              + " &middot; ".join(_engine_summary(run) for run in self.plan.runs)
                              + f" <span style='color:#888'>(redrawn in {self.redraw_ms:.0f} ms)</span>")

    def show_table(self) -> None:
        """The chosen engine's windows, under the reasons of every engine that refused the request."""
        if self.plan is not None:
            refused = "".join(f"<p><b>{run.engine}</b> refused the request: {html.escape(run.refused)}</p>"
                              for run in self.plan.runs if run.refused is not None)
            table = html_table(self.plan.run(self.controls["table"].value).table(), max_rows=TABLE_ROWS)
            self.table.value = refused + table


def _size_options(settings: VideoSettings) -> list[tuple[str, tuple[int, int] | str]]:
    width, height = clip_frames()[0].size
    options = [(f"the clip's ({width}x{height})", CLIP_SIZE)] + [(f"{name} ({w}x{h})", (h, w))
                                                             for name, (h, w) in VIDEO_RESOLUTIONS.items()]
    if settings.height is not None and (settings.height, settings.width) not in VIDEO_RESOLUTIONS.values():
        options.append((f"{settings.width}x{settings.height}", (settings.height, settings.width)))
    return options


def _engine_summary(run: EngineRun) -> str:
    if run.refused is not None:
        return f"<b>{run.engine}</b> ({run.video_items}): refused at admission"
    return (f"<b>{run.engine}</b> ({run.video_items}): {run.total('encoded_rows'):,} rows encoded "
            f"({run.total('re_encoded_rows'):,} again) over {len(run.windows)} windows")


def video_explorer(**settings: object) -> VideoExplorer:
    """Notebook 01's video explorer, starting from ``VideoSettings(**settings)`` (defaults otherwise); ``table``
    names the engine whose windows the table lists first."""
    table = settings.pop("table", None)
    known = set(asdict(VideoSettings()))
    if unknown := set(settings) - known:
        raise TypeError(f"video_explorer got unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return VideoExplorer(VideoSettings(**settings), table=None if table is None else str(table))
