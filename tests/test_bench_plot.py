"""Figures from a small hand-made results file: one per sweep, PNGs written, axes hold the data."""

from __future__ import annotations

import math
from dataclasses import replace

import matplotlib
import pytest

matplotlib.use("Agg")

from conftest import fake_bench_results
from vitkit.bench.plot import figures, plot_memory_model, plot_sweep, save_figures, sweep_names, x_axis
from vitkit.bench.rows import find_results, write_results


def test_one_figure_per_sweep_and_the_memory_model():
    figs = figures(fake_bench_results())
    assert list(figs) == ["clip-batch", "qwen-resolution", "memory-model"]
    assert sweep_names(fake_bench_results()) == ["clip-batch", "qwen-resolution"]


def test_batch_figure_axes_hold_the_rows():
    fig = plot_sweep(fake_bench_results(), "clip-batch")
    latency, throughput, speedup, mfu, memory, share = fig.axes[:6]
    assert latency.get_xscale() == "log"  # 1..64 requests on a log2 axis
    batched = latency.lines[0]
    assert list(batched.get_xdata()) == [1, 4, 16, 64] and list(batched.get_ydata()) == [6.0, 9.0, 21.0, 69.0]
    (ratio,) = [line for line in speedup.lines if line.get_label() == "clip-l-336 vitkit"]
    assert list(ratio.get_ydata()) == pytest.approx([5 / 6, 20 / 9, 80 / 21, 320 / 69])
    assert list(memory.lines[0].get_ydata()) == [1.0] * 4  # GiB
    assert list(mfu.lines[0].get_ydata()) == [50.0] * 4 and list(share.lines[0].get_ydata()) == [5.0] * 4  # %
    assert "H100" in fig._suptitle.get_text() and "780" in fig._suptitle.get_text()


def test_mixed_resolution_is_a_category():
    results = fake_bench_results()
    rows = [r for r in results["rows"] if r.sweep == "qwen-resolution"]
    assert x_axis(rows) == "resolution"
    fig = plot_sweep(results, "qwen-resolution")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["224", "448", "mixed"]


def test_cpu_smoke_is_labelled_and_memory_says_not_measured():
    results = fake_bench_results(kind="cpu-smoke")
    results["rows"] = [replace(row, peak_mem_bytes=None, base_mem_bytes=None) for row in results["rows"]]
    fig = plot_sweep(results, "clip-batch")
    assert "CPU SMOKE" in fig._suptitle.get_text()
    assert any("not measured" in t.get_text() for t in fig.axes[4].texts)
    assert not fig.axes[4].lines  # no empty axes with made-up ticks
    assert list(fig.axes[4].get_yticks()) == []


def test_memory_model_figure_plots_prediction_and_measurement():
    fig = plot_memory_model(fake_bench_results())
    measured, predicted = fig.axes[0].lines[:2]
    assert list(measured.get_xdata()) == [512, 1024, 4096]
    assert measured.get_ydata()[0] > predicted.get_ydata()[0]
    assert plot_memory_model(fake_bench_results() | {"memory_model": []}) is None


def test_save_figures_writes_pngs(tmp_path):
    paths = save_figures(fake_bench_results(), tmp_path / "figs", prefix="run-")
    assert sorted(p.name for p in paths) == ["run-clip-batch.png", "run-memory-model.png", "run-qwen-resolution.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_unknown_sweep_is_an_error():
    with pytest.raises(ValueError, match="no rows for sweep 'nope'"):
        plot_sweep(fake_bench_results(), "nope")


def test_find_results_orders_by_stamp_and_skips_other_files(tmp_path):
    older = write_results(fake_bench_results(), tmp_path / "full-vitkit-bf16-20260101T000000Z.json")
    newer = write_results(fake_bench_results(), tmp_path / "clip-batch-vitkit-bf16-20260102T000000Z.json")
    smoke = write_results(fake_bench_results(kind="cpu-smoke"),
                          tmp_path / "cpu-smoke-vitkit-fp32-20260103T000000Z.json")
    (tmp_path / "notes.json").write_text("{}")  # not a results file: skipped
    assert find_results(tmp_path) == [older, newer, smoke]
    assert find_results(tmp_path, kind="gpu") == [older, newer]
