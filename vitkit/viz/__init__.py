"""Widgets and figures behind the notebooks; the notebooks only call these.

Notebook 01: chunk windows over image tokens, and a video's span as each engine's items; 02: batched vs
per-request ViT (measured or stored), CUDA graphs against batching by resolution, and the encoder across N GPUs
(``vitkit.bench.dp``'s figure and table); 03: a request stream through the simulator, time to first token under
load, and the engines' policies for long items.
"""

from vitkit.viz.bench_widget import BenchView, bench_view, dp_panel, gpu_available, run_benchmark
from vitkit.viz.chunk_widget import ChunkExplorer, chunk_explorer, draw_token_lines
from vitkit.viz.crossover_view import CrossoverView, crossover_panel
from vitkit.viz.plan import ChunkPlan, PlanSettings, chunk_plan
from vitkit.viz.policy_widget import PolicyView, policy_view
from vitkit.viz.render import figure_png, html_table, show, show_table
from vitkit.viz.sim_widget import (SimExplorer, SimSettings, admission_rows, run_sim, sim_explorer, summary_rows,
                                   ttft_explorer)
from vitkit.viz.video_plan import VideoPlan, VideoSettings, video_plan
from vitkit.viz.video_widget import VideoExplorer, draw_video_windows, video_explorer

__all__ = [
    "ChunkExplorer", "ChunkPlan", "PlanSettings", "chunk_explorer", "chunk_plan", "draw_token_lines",  # notebook 01
    "VideoExplorer", "VideoPlan", "VideoSettings", "draw_video_windows", "video_explorer", "video_plan",
    "BenchView", "bench_view", "gpu_available", "run_benchmark", "CrossoverView", "crossover_panel",  # notebook 02
    "dp_panel",
    "SimExplorer", "SimSettings", "admission_rows", "run_sim", "sim_explorer", "summary_rows", "ttft_explorer",  # 03
    "PolicyView", "policy_view",
    "figure_png", "html_table", "show", "show_table",
]
