"""Widgets and figures behind the notebooks; the notebooks only call these.

- notebook 01: ``chunk_plan`` / ``draw_token_lines`` / ``chunk_explorer`` (chunk windows over image tokens)
- notebook 02: ``bench_view`` / ``run_benchmark`` (batched vs per-request ViT, measured or stored);
  ``dp_panel`` (the encoder across N GPUs, stored; its figure and table come from ``vitkit.bench.dp_plot``)
- notebook 03: ``sim_explorer`` / ``run_sim`` (a request stream through the step simulator);
  ``ttft_explorer`` / ``admission_rows`` (time to first token under load, both admission policies)

The views' building blocks (``vitkit.viz.plan``'s per-window results, ``bench_widget``'s stored-results
readers) stay module-level.
"""

from vitkit.viz.bench_widget import BenchView, bench_view, gpu_available, run_benchmark
from vitkit.viz.chunk_widget import ChunkExplorer, chunk_explorer
from vitkit.viz.dp_panel import dp_panel
from vitkit.viz.plan import ChunkPlan, PlanSettings, chunk_plan
from vitkit.viz.render import figure_png, html_table, show, show_table
from vitkit.viz.sim_widget import SimExplorer, SimSettings, admission_rows, run_sim, sim_explorer, summary_rows, ttft_explorer
from vitkit.viz.token_lines import draw_token_lines

__all__ = [
    # notebook 01
    "ChunkExplorer", "ChunkPlan", "PlanSettings", "chunk_explorer", "chunk_plan", "draw_token_lines",
    # notebook 02
    "BenchView", "bench_view", "gpu_available", "run_benchmark", "dp_panel",
    # notebook 03
    "SimExplorer", "SimSettings", "admission_rows", "run_sim", "sim_explorer", "summary_rows", "ttft_explorer",
    # rendering
    "figure_png", "html_table", "show", "show_table",
]
