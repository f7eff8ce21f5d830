"""Widgets and figures behind the notebooks; the notebooks only call these.

- notebook 01: ``chunk_plan`` / ``draw_token_lines`` / ``chunk_explorer`` (chunk windows over image tokens)
- notebook 02: ``bench_view`` / ``run_benchmark`` (batched vs per-request ViT, measured or stored);
  ``dp_panel`` (the encoder across N GPUs, stored: ``dp_scaling_figure`` / ``stored_dp_results``)
- notebook 03: ``sim_explorer`` / ``run_sim`` (a request stream through the step simulator)
"""

from vitkit.viz.bench_widget import BenchView, bench_view, gpu_available, run_benchmark, speedup_rows, stored_results
from vitkit.viz.chunk_widget import ChunkExplorer, chunk_explorer
from vitkit.bench.dp_plot import dp_scaling_figure, dp_table_rows, load_dp_results, stored_dp_results
from vitkit.viz.dp_panel import dp_panel
from vitkit.viz.plan import ChunkPlan, ItemInWindow, PlanSettings, StepResult, WindowResult, chunk_plan
from vitkit.viz.render import figure_png, html_table, show, show_table
from vitkit.viz.sim_widget import SimExplorer, SimSettings, run_sim, sim_explorer, summary_rows
from vitkit.viz.token_lines import draw_token_lines

__all__ = [
    "BenchView",
    "ChunkExplorer",
    "ChunkPlan",
    "ItemInWindow",
    "PlanSettings",
    "SimExplorer",
    "SimSettings",
    "StepResult",
    "WindowResult",
    "bench_view",
    "chunk_explorer",
    "chunk_plan",
    "dp_panel",
    "dp_scaling_figure",
    "dp_table_rows",
    "draw_token_lines",
    "figure_png",
    "gpu_available",
    "html_table",
    "load_dp_results",
    "run_benchmark",
    "run_sim",
    "show",
    "show_table",
    "sim_explorer",
    "speedup_rows",
    "stored_dp_results",
    "stored_results",
    "summary_rows",
]
