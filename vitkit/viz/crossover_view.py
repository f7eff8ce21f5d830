"""Notebook 02's crossover view: CUDA graphs against cross-request batching, by resolution.

It shows the newest ``python -m vitkit.bench crossover`` file of the card whose results the notebook uses
(``costs.results.models_folder``): the figure of each tower (a drop-down picks it when there are several) and a
table of the gains by resolution and images a step, beside the measurement SGLang's reviewers published, kept
in its own labelled columns. Without such a file it shows one line naming the card and the command.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from vitkit.bench.crossover import GAIN_LINES, crossover_figure
from vitkit.costs import results as files
from vitkit.viz.bench_widget import repo_relative, describe
from vitkit.viz.render import control, figure_png, html_table, png_widget, scroll_html

CROSSOVER_COMMAND = "python -m vitkit.bench crossover"
STREAM = "all"  # gains' images_per_step over a resolution's whole stream


@dataclass(frozen=True)
class ReferenceRun:
    """A published measurement set beside ours, never mixed with it: a server's throughput per resolution
    without either optimisation, with the ViT CUDA graph, and with cross-request batching."""

    source: str
    setup: str
    throughput: Mapping[str, tuple[float, float, float]]  # resolution -> (baseline, + graph, + batching)

    def gains(self, resolution: str) -> tuple[float, float] | None:
        """(graph, batching) relative gains over the baseline at ``resolution`` (0.29: 29%); None where the
        reference has no such resolution."""
        if resolution not in self.throughput:
            return None
        base, graph, batched = self.throughput[resolution]
        return graph / base - 1, batched / base - 1


# SGLang's review of cross-request ViT batching compared it with the ViT CUDA graph on one server: main (per-request
# encoder calls, no graph), main with SGLANG_VIT_ENABLE_CUDA_GRAPH, and the PR's batching (no graph). Their
# "graph" is so our graphs over eager per-request, their "batching" our batched over per-request, eager.
SGLANG_H200_REFERENCE = ReferenceRun(
    source="SGLang PR discussion, sgl-project/sglang#24013 (review comment quoted there on 2026-05-07)",
    setup="Qwen3-VL-8B served by SGLang on an H200, bench_serving throughput of the whole server",
    throughput={"360p": (20.05, 25.91, 21.85), "720p": (13.55, 13.50, 14.18), "1080p": (6.58, 6.42, 7.38)},
)

# gains' key -> table column: the first word is what is gained, "over" what it is compared with
GAIN_COLUMNS = {
    "graphs_per_request": "graphs over eager, per-request %",
    "graphs_batched": "graphs over eager, batched %",
    "batching_eager": "batched over per-request, eager %",
    "batching_graphs": "batched over per-request, graphs %",
}
REFERENCE_COLUMNS = ("SGLang H200 reference: graph %", "SGLang H200 reference: batching %")

# what the view reads of a file: the fields of its JSON objects, and of each row of its lists
OBJECT_FIELDS = {"machine": ("device_name",), "settings": ("dtype", "images")}
ROW_FIELDS = {
    "towers": ("preset", "resolutions", "cuda_graphs", "cold", "warmup"),
    "summary": ("preset", "impl", "mode", "resolution", "images_per_step", "images_per_s"),
    "gains": ("preset", "resolution", "images_per_step", *(key for key, *_ in GAIN_LINES)),
}


def check_crossover(data: Mapping[str, Any], where: str | Path) -> None:
    """ValueError naming ``where`` and the field when ``data`` lacks what the figure and table read."""
    for section, fields in OBJECT_FIELDS.items():
        if not isinstance(data.get(section), Mapping):
            raise ValueError(f"{where}: crossover field {section!r} must be a JSON object, got "
                             f"{type(data.get(section)).__name__}")
        check_fields(data[section], fields, section, where)
    for section, fields in ROW_FIELDS.items():
        rows = data.get(section)
        if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
            raise ValueError(f"{where}: crossover field {section!r} must be a non-empty list of JSON objects, got "
                             f"{type(rows).__name__}")
        for k, row in enumerate(rows):
            check_fields(row, fields, f"{section}[{k}]", where)
    streams = {(g["preset"], g["resolution"]) for g in data["gains"] if g["images_per_step"] == STREAM}
    for tower in data["towers"]:
        for size in tower["resolutions"]:
            if (tower["preset"], size.get("label")) not in streams:
                raise ValueError(f"{where}: crossover gains have no whole-stream row ({STREAM!r}) for tower "
                                 f"{tower['preset']!r} at resolution {size.get('label')!r}")


def check_fields(row: Mapping[str, Any], fields: tuple[str, ...], name: str, where: str | Path) -> None:
    """ValueError naming ``where``, ``name`` and the missing fields when ``row`` lacks any of ``fields``."""
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"{where}: crossover {name} lacks {missing}")


def read_crossover(path: str | Path) -> dict[str, Any]:
    """A crossover results file, its schema and the fields the view reads checked (ValueError naming the file)."""
    data = files.read("crossover", path)
    check_crossover(data, path)
    return data


def newest_crossover(folder: str | Path) -> Path | None:
    """The newest GPU crossover file in ``folder`` (a CPU smoke run is no card's measurement); None without one."""
    for path in files.newest_first("crossover", folder):
        if read_crossover(path)["kind"] == "gpu":
            return path
    return None


def missing_line(card: str, folder: str | Path) -> str:
    """The one HTML line shown without a crossover file: which card has none, where, and the command to run."""
    where = html.escape(f"{card} ({repo_relative(Path(folder))}/)")
    return (f"<p><i>No crossover results stored for {where}: run <code>{CROSSOVER_COMMAND}</code> on a machine "
            "with that GPU to measure them.</i></p>")


def gain_rows(results: Mapping[str, Any], preset: str,
              reference: ReferenceRun = SGLANG_H200_REFERENCE) -> list[dict[str, object]]:
    """One row per resolution and images a step of ``preset`` (the whole stream last): the four gains in %,
    then the reference's graph and batching gains, on the whole-stream row of a resolution it has."""
    towers = [t["preset"] for t in results["towers"]]
    if preset not in towers:
        raise ValueError(f"no tower {preset!r} in these crossover results; towers: {towers}")
    rows = []
    for size in results["towers"][towers.index(preset)]["resolutions"]:
        found = [g for g in results["gains"] if (g["preset"], g["resolution"]) == (preset, size["label"])]
        counts = sorted((g for g in found if g["images_per_step"] != STREAM), key=lambda g: g["images_per_step"])
        rows += [gain_row(g, None) for g in counts]
        rows += [gain_row(g, reference.gains(size["label"])) for g in found if g["images_per_step"] == STREAM]
    return rows


def gain_row(gains: Mapping[str, Any], reference: tuple[float, float] | None) -> dict[str, object]:
    """One row of ``gain_rows``: a gains entry in %, and the reference's (graph, batching) gains or blanks."""
    stream = gains["images_per_step"] == STREAM
    return {"resolution": gains["resolution"],
            "images a step": "all (whole stream)" if stream else gains["images_per_step"],
            **{column: round(100 * gains[key], 1) for key, column in GAIN_COLUMNS.items()},
            **dict(zip(REFERENCE_COLUMNS, ("", "") if reference is None else (round(100 * v, 1) for v in reference)))}


def reference_note(reference: ReferenceRun = SGLANG_H200_REFERENCE) -> str:
    """A grey HTML line saying the reference columns are not our measurement, and whose they are."""
    text = (f"Reference columns, not measured here: {reference.setup} ({reference.source}); shown on each "
            "resolution's whole-stream row. Ours time the encoder step alone.")
    return f"<p style='color:#666'>{html.escape(text)}</p>"


class CrossoverView(widgets.VBox):
    """One crossover file: a header saying where it comes from, a tower drop-down (hidden for one tower), the
    tower's figure and its table of gains."""

    def __init__(self, results: Mapping[str, Any], label: str) -> None:
        self.results = results
        towers = [t["preset"] for t in results["towers"]]
        self.header = widgets.HTML(describe(results, label))
        self.tower = control(widgets.Dropdown, "tower", towers[0], "5em", "22em", options=towers)
        self.tower.layout.display = None if len(towers) > 1 else "none"
        self.figure, self.table = png_widget(), scroll_html("24em")
        super().__init__([self.header, self.tower, self.figure, self.table])
        self.add_class("vitkit-crossover-view")
        self.tower.observe(lambda _: self.draw(), names="value")
        self.draw()

    def draw(self) -> None:
        """The selected tower's figure and gains."""
        self.figure.value = figure_png(crossover_figure(self.results, self.tower.value))
        self.table.value = html_table(gain_rows(self.results, self.tower.value)) + reference_note()


def crossover_panel(folder: str | Path | None = None, *, path: str | Path | None = None) -> widgets.Widget:
    """Notebook 02's crossover: ``path``, else the newest GPU crossover file of ``folder`` (default: the card whose
    models the notebook uses); one line naming the card and the command when there is none."""
    if path is None:
        models = files.models_folder(folder)
        path = newest_crossover(models.folder)
        if path is None:
            return widgets.HTML(missing_line(models.card, models.folder))
    path = Path(path)
    return CrossoverView(read_crossover(path), repo_relative(path))
