"""Every notebook runs top to bottom, headless, on CPU, and is committed without outputs."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

_EXTRA = "notebook tests need the notebooks extra: pip install -e '.[notebooks]'"
nbformat = pytest.importorskip("nbformat", reason=_EXTRA)
NotebookClient = pytest.importorskip("nbclient", reason=_EXTRA).NotebookClient

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
NUMBER_CELL = re.compile(r"<td[^>]*>\s*-?\d+(\.\d+)?\s*</td>")  # a table cell holding a number
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_chunk_windows.ipynb",
        "02_batched_vs_per_request.ipynb",
        "03_cache_and_scheduler.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"
            assert "def " not in cell.source and "class " not in cell.source, f"{path.name}: logic belongs in vitkit"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_on_cpu(path, monkeypatch, artifacts):
    # the kernel inherits this environment: no GPU (notebook 02 then takes its CPU path), no downloads
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel starts in notebooks/: make it import this checkout's vitkit, not whichever one the
    # interpreter has installed (a shared venv may point at another checkout)
    repo = str(path.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=240, startup_timeout=120, resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    elapsed = time.perf_counter() - start
    nbformat.write(nb, artifacts / f"{path.stem}.executed.ipynb")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(WIDGET_MIME in o.get("data", {}) for o in outputs), f"{path.name}: no widget displayed"
    shown = Shown(nb)
    assert shown.figures, f"{path.name}: no figure shown"
    assert any(NUMBER_CELL.search(h) for h in shown.html), f"{path.name}: no table with numbers shown"
    SHOWS.get(path.stem, lambda shown: None)(shown)
    print(f"{path.name}: {elapsed:.1f} s")


class Shown:
    """What an executed notebook puts on screen: its outputs and the state of its widgets (nbclient
    stores the widget models' state in the notebook's metadata)."""

    def __init__(self, nb) -> None:
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        self.models = [m for m in nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}).values()]
        html_models = [m["state"].get("value", "") for m in self.models if m["model_name"] == "HTMLModel"]
        self.html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})] + html_models
        self.figures = [o for o in outputs if "image/png" in o.get("data", {})] + [
            m for m in self.models if m["model_name"] == "ImageModel"]

    def dropdown(self, description: str) -> str | None:
        """The selected label of the drop-down with this description."""
        for m in self.models:
            state = m["state"]
            if m["model_name"] == "DropdownModel" and state.get("description") == description:
                index = state.get("index")
                return None if index is None else state["_options_labels"][index]
        raise AssertionError(f"no drop-down {description!r} shown")


def _shows_the_stored_h100_results(shown: Shown) -> None:
    # without a GPU: the stored H100 results on screen, the optimised A/B, no smoke run unless asked
    assert shown.dropdown("results").startswith("results/h100/")
    assert any("GPU measurement</b> on NVIDIA H100" in h for h in shown.html)
    assert not any("CPU SMOKE" in h or "CPU smoke" in h for h in shown.html)
    assert shown.dropdown("impl") in ("vitkit", None)  # None: a stream file, which has no impl picker
    assert shown.dropdown("results").startswith("results/h100/stream-")  # the stream leads (issue 9)
    assert any("token-balanced" in h and "all_gather_into_tensor" in h for h in shown.html)  # the scaling panel


SHOWS = {"02_batched_vs_per_request": _shows_the_stored_h100_results}
