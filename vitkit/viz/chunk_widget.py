"""Notebook 01's widget: sliders for a ``PlanSettings``, the token-line figure and the window table."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import ipywidgets as widgets

from vitkit.embed import MODES
from vitkit.viz.plan import ChunkPlan, PlanSettings, chunk_plan
from vitkit.viz.render import figure_png, html_table
from vitkit.viz.token_lines import draw_token_lines

# slider name -> (label, min, max, step); values are PlanSettings fields
SLIDERS = {
    "chunk_size": ("chunk size (tokens)", 64, 4096, 64),
    "num_requests": ("requests", 1, 8, 1),
    "images_per_request": ("images / request", 1, 4, 1),
    "image_size": ("image size (px)", 112, 1008, 56),  # Qwen2.5-VL: up to 1296 tokens an image
    "cache_tokens": ("cache (tokens)", 0, 16384, 256),
    "distinct_images": ("distinct photos", 1, 12, 1),
}
TABLE_ROWS = 60  # a longer table only scrolls; the figure shows everything


class ChunkExplorer(widgets.VBox):
    """Sliders over ``PlanSettings``; any change recomputes the plan and redraws.

    ``controls`` maps each ``PlanSettings`` field (and ``"mode"``) to its widget; setting a
    control's ``value`` from code redraws exactly as moving it does. ``plan`` is the current
    ``ChunkPlan``; ``redraw_ms`` how long the last redraw took (plan + figure + PNG + table).
    """

    def __init__(self, settings: PlanSettings | None = None, mode: str = "batched") -> None:
        self.settings = settings or PlanSettings()
        self.controls: dict[str, widgets.ValueWidget] = {}
        for name, (label, lo, hi, step) in SLIDERS.items():
            self.controls[name] = widgets.IntSlider(
                value=getattr(self.settings, name), min=lo, max=hi, step=step, description=label,
                continuous_update=False,  # one redraw when the handle is let go, not one per pixel
                style={"description_width": "10em"}, layout=widgets.Layout(width="25em"),
            )
        self.controls["mode"] = widgets.ToggleButtons(options=list(MODES), value=mode, description="marks for")
        self.figure = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.table = widgets.HTML(layout=widgets.Layout(max_height="22em", overflow="auto"))
        self.summary = widgets.HTML()
        self.plan: ChunkPlan | None = None
        self.redraw_ms = 0.0
        grid = widgets.GridBox(
            [self.controls[n] for n in SLIDERS],
            layout=widgets.Layout(grid_template_columns="repeat(auto-fill, minmax(25em, 1fr))"),
        )
        super().__init__([grid, self.controls["mode"], self.summary, self.figure, self.table])
        self.add_class("vitkit-chunk-explorer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change: dict) -> None:
        self.redraw()

    def current_settings(self) -> PlanSettings:
        values = {name: self.controls[name].value for name in SLIDERS}
        return replace(self.settings, **values)

    def redraw(self) -> None:
        """Recompute the plan from the controls and refresh figure, summary and table."""
        start = time.perf_counter()
        mode = self.controls["mode"].value
        self.plan = chunk_plan(self.current_settings())
        fig = draw_token_lines(self.plan, mode)
        self.figure.value = figure_png(fig)
        self.table.value = html_table(self.plan.table(mode), max_rows=TABLE_ROWS)
        self.redraw_ms = (time.perf_counter() - start) * 1e3
        self.summary.value = _summary_html(self.plan, self.redraw_ms)


def _summary_html(plan: ChunkPlan, redraw_ms: float) -> str:
    parts = []
    for mode in MODES:
        parts.append(
            f"<b>{mode.replace('_', '-')}</b>: {plan.total(mode, 'encoder_calls')} encoder calls, "
            f"{plan.total(mode, 'encoded_items')} items encoded ({plan.total(mode, 'reencoded_items')} again), "
            f"{plan.total(mode, 'cache_hits')} cache hits"
        )
    windows = len(plan.windows_of("batched"))
    return (
        f"{windows} windows over {plan.num_steps} steps &middot; " + " &middot; ".join(parts)
        + f" <span style='color:#888'>(redrawn in {redraw_ms:.0f} ms)</span>"
    )


def chunk_explorer(**settings: object) -> ChunkExplorer:
    """Notebook 01's explorer, starting from ``PlanSettings(**settings)`` (defaults otherwise)."""
    mode = settings.pop("mode", "batched")
    known = set(asdict(PlanSettings()))
    unknown = set(settings) - known
    if unknown:
        raise TypeError(f"chunk_explorer got unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return ChunkExplorer(PlanSettings(**settings), mode=str(mode))
