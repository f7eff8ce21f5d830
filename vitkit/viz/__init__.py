"""Widgets and figures behind the notebooks; the notebooks only call these."""

from vitkit.viz.chunk_explorer import ChunkExplorer, chunk_explorer
from vitkit.viz.plan import ChunkPlan, ItemInWindow, PlanSettings, StepResult, WindowResult, chunk_plan
from vitkit.viz.render import figure_png, html_table
from vitkit.viz.token_lines import draw_token_lines

__all__ = [
    "ChunkExplorer",
    "ChunkPlan",
    "ItemInWindow",
    "PlanSettings",
    "StepResult",
    "WindowResult",
    "chunk_explorer",
    "chunk_plan",
    "draw_token_lines",
    "figure_png",
    "html_table",
]
