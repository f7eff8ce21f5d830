"""Widgets and figures behind the notebooks; the notebooks only call these.

Notebook 01: chunk windows over image tokens; 02: batched vs per-request ViT (measured or stored) and the
encoder across N GPUs (``vitkit.bench.dp``'s figure and table); 03: a request stream through the simulator
and time to first token under load.
"""

from vitkit.viz.bench_widget import BenchView, bench_view, dp_panel, gpu_available, run_benchmark
from vitkit.viz.chunk_widget import ChunkExplorer, chunk_explorer, draw_token_lines
from vitkit.viz.plan import ChunkPlan, PlanSettings, chunk_plan
from vitkit.viz.render import figure_png, html_table, show, show_table
from vitkit.viz.sim_widget import (SimExplorer, SimSettings, admission_rows, run_sim, sim_explorer, summary_rows,
                                   ttft_explorer)

__all__ = [
    "ChunkExplorer", "ChunkPlan", "PlanSettings", "chunk_explorer", "chunk_plan", "draw_token_lines",  # notebook 01
    "BenchView", "bench_view", "gpu_available", "run_benchmark", "dp_panel",  # notebook 02
    "SimExplorer", "SimSettings", "admission_rows", "run_sim", "sim_explorer", "summary_rows", "ttft_explorer",  # 03
    "figure_png", "html_table", "show", "show_table",
]
