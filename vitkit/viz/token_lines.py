"""Draw a ``ChunkPlan``: one token line per request, the windows over it, and each step's calls."""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from vitkit.embed import MODES
from vitkit.viz.plan import ChunkPlan, WindowResult

TEXT_COLOR = "#d9d9d9"
MARKS = {  # status -> (letter, colour)
    "hit": ("H", "#1a9850"),
    "encoded": ("E", "#d73027"),
    "shared": ("S", "#fc8d59"),
}
AGAIN = ("R", "#7b3294")  # encoded again: the cache had lost it
MODE_COLORS = {"batched": "#2b8cbe", "per_request": "#bdbdbd"}


def photo_color(plan: ChunkPlan, photo: str) -> tuple[float, float, float, float]:
    """One colour per photo of the pool, stable across plans with the same pool."""
    names = plan.photo_names or tuple(sorted({p for ps in plan.photos for p in ps}))
    return colormaps["tab20"](names.index(photo) % 20)


def draw_token_lines(plan: ChunkPlan, mode: str = "batched", *, dpi: int = 100) -> Figure:
    """Token lines (top) and encoder calls per step for both modes (bottom) of ``plan``.

    Each request is a grey line of text tokens with its image spans coloured by photo (the
    same photo, the same colour, in every request). Boxes are the windows, labelled with their
    step; under each window, one letter per item it touches: H hit, E encoded by this window,
    S shared (missed, but encoded once in the step for another window), R encoded again.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = len(plan.requests)
    fig = Figure(figsize=(11, 1.9 + 0.62 * n + 1.4), dpi=dpi, layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[0.4 + 0.62 * n, 1.4])
    handles = _draw_lines(top, plan, mode)
    _draw_calls(bottom, plan)
    fig.legend(handles=handles, loc="outside upper left", ncol=6, fontsize=8, frameon=False)
    bottom.legend(fontsize=8, frameon=False, loc="upper right")
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
        for span, photo in zip(request.spans, plan.photos[r]):
            if len(span) > 0.07 * longest:
                ax.text((span.start + span.stop) / 2, y, photo, ha="center", va="center", fontsize=7)
    _draw_windows(ax, plan, plan.windows_of(mode), longest)
    ax.set_xlim(-0.01 * longest, 1.01 * longest)
    ax.set_ylim(-0.75, len(plan.requests) - 0.35)
    ax.set_yticks(range(len(plan.requests)), [f"request {r}" for r in reversed(range(len(plan.requests)))])
    ax.set_xlabel("prompt position (tokens)")
    ax.spines[["top", "right", "left"]].set_visible(False)
    ax.tick_params(axis="y", length=0)
    s = plan.settings
    ax.set_title(
        f"{mode.replace('_', '-')}: {len(plan.requests)} requests x {s.images_per_request} images "
        f"({s.image_size} px), chunk {s.chunk_size} tokens, cache {s.cache_tokens} tokens",
        fontsize=10,
        loc="left",
    )
    handles = [Patch(facecolor=TEXT_COLOR, label="text"), Patch(fill=False, edgecolor="#252525", label="window (step s)")]
    handles += [Line2D([], [], ls="", marker=f"${k}$", color=c, label=lbl) for k, c, lbl in _mark_legend()]
    return handles


def _mark_legend() -> list[tuple[str, str, str]]:
    labels = {"hit": "cache hit", "encoded": "encoded here", "shared": "shared in step"}
    return [(k, c, labels[s]) for s, (k, c) in MARKS.items()] + [(AGAIN[0], AGAIN[1], "encoded again")]


def _draw_windows(ax, plan: ChunkPlan, windows: list[WindowResult], longest: int) -> None:
    """Window boxes as one collection per request and the item letters as one scatter per kind:
    hundreds of windows (small chunks, big images) still draw in well under a second."""
    for r in range(len(plan.requests)):
        boxes = [(w.window.start, len(w.window)) for w in windows if w.request == r]
        y = _row_y(plan, r)
        ax.broken_barh(boxes, (y - 0.3, 0.6), facecolors="none", edgecolors="#252525", linewidth=0.8)
    for w in windows:
        if len(w.window) >= 0.035 * longest:  # label only windows wide enough to read
            y = _row_y(plan, w.request)
            ax.text(w.window.start + 0.004 * longest, y + 0.22, f"s{w.step}", fontsize=7, va="bottom")
    points: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for w in windows:
        for mark in w.items:
            xs, ys = points.setdefault(AGAIN if mark.again else MARKS[mark.status], ([], []))
            xs.append((mark.part.start + mark.part.stop) / 2)
            ys.append(_row_y(plan, w.request) - 0.42)
    for (letter, color), (xs, ys) in points.items():
        ax.scatter(xs, ys, marker=f"${letter}$", color=color, s=45, linewidths=0)


def _draw_calls(ax, plan: ChunkPlan) -> None:
    width = 0.4
    for k, mode in enumerate(MODES):
        steps = plan.steps_of(mode)
        xs = [s.step + (k - 0.5) * width for s in steps]
        total = plan.total(mode, "encoder_calls")
        tokens = plan.total(mode, "encoded_tokens")
        label = f"{mode.replace('_', '-')}: {total} calls, {tokens} tokens encoded"
        ax.bar(xs, [s.encoder_calls for s in steps], width=width, color=MODE_COLORS[mode], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("encoder calls")
    ax.set_xlim(-0.6, plan.num_steps - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
