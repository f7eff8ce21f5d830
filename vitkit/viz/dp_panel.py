"""Notebook 02's scaling panel: the data-parallel encoder across N GPUs, from stored results."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets

from vitkit.bench.dp_plot import DEFAULT_GATHER, STORED_DP, dp_scaling_figure, dp_table_rows, stored_dp_results
from vitkit.viz.render import figure_png, html_table


def dp_panel(path: str | Path = STORED_DP) -> widgets.Widget:
    """The stored data-parallel results: the scaling figure, then a table of every N for the
    policy both engines use (token-balanced) and the default gather; a note when none is stored."""
    results = stored_dp_results(path)
    if results is None:
        return widgets.HTML(f"<p><i>No stored data-parallel results at {path}: run "
                            "<code>torchrun --nproc-per-node N -m vitkit.bench --sweep dp</code> on a GPU host.</i></p>")
    rows = [r for r in dp_table_rows(results)
            if r["policy"] == "token-balanced" and (r["world_size"] == 1 or r["gather"] == DEFAULT_GATHER)]
    return widgets.VBox([widgets.Image(value=figure_png(dp_scaling_figure(results)), format="png"),
                         widgets.HTML(html_table(rows))])
