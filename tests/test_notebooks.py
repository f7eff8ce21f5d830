"""Every notebook runs top to bottom, headless, on CPU, and is committed without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

_EXTRA = "notebook tests need the notebooks extra: pip install -e '.[notebooks]'"
nbformat = pytest.importorskip("nbformat", reason=_EXTRA)
NotebookClient = pytest.importorskip("nbclient", reason=_EXTRA).NotebookClient

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
    print(f"{path.name}: {elapsed:.1f} s")
