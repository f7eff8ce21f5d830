"""Simulator figures: the right panels and one line per run; TTFT against load and the admission bars."""

import pytest
from matplotlib.figure import Figure

from cost_doubles import line_costs
from vitkit.embed import MODES
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.plot import plot_admission, plot_cache_memory, plot_over_steps, plot_ttft_vs_load, series
from vitkit.sim.replay import compare, load_sweep, prepare, replay_stream, workload_trace
from vitkit.sim.scheduler import SchedulerConfig


@pytest.fixture(scope="module")
def runs():
    scheduler = SchedulerConfig(chunked_prefill_size=4096, long_prefill_token_threshold=1024)
    configs = [ReplayConfig(scheduler, mode=m, pin=p, cache_tokens=t) for m in MODES for t in (4096, 8192) for p in (True, False)]
    return compare(prepare("chat-multiturn"), configs, encoder=FakeEncoder(hidden=8), progress=False)


def test_over_steps_is_a_panel_per_metric_and_cache_with_a_line_per_mode_and_pinning(runs):
    fig = plot_over_steps(runs)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 3 * 2  # three metrics (rows) x two cache sizes (columns)
    assert [ax.get_ylabel() for ax in axes[::2]] == ["cache hit rate (cumulative)", "encoder calls (cumulative)",
                                                   "encoder time, ms (cumulative)"]
    assert [ax.get_title() for ax in axes[:2]] == ["cache 4096 tokens", "cache 8192 tokens"]
    assert all(len(ax.get_lines()) == 4 for ax in axes)  # 2 modes x pin on/off: each panel stays readable
    first = [r for r in runs if r.config.cache_tokens == 4096][0]
    calls = axes[2].get_lines()[0].get_ydata()
    assert calls[-1] == first.summary.encoder_calls  # the cumulative line ends at the run total
    assert series(runs[0], "hit_rate")[-1] == pytest.approx(runs[0].summary.hit_rate)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 4
    with pytest.raises(ValueError, match="unknown metric"):
        plot_over_steps(runs, metrics=["nope"])


def test_other_figures(runs):
    memory = plot_cache_memory(runs)
    assert len(memory.get_axes()) == 2 * 2 and len(memory.get_axes()[3].get_lines()) == 4
    assert len(memory.legends) == 1 and not [ax for ax in memory.axes if ax.get_legend()]  # the legend below the panels

def test_ttft_against_load_names_its_sources_and_draws_measured_points():
    costs = line_costs()
    points = load_sweep(workload_trace("small-images", 20), [10.0, 20.0], costs,
                        [ReplayConfig(SchedulerConfig(2048), mode=m) for m in MODES], progress=False)
    measured = [{"workload": "small-images", "mode": "batched", "rate_per_s": 10.0, "ttft_p50_ms": 30.0, "ttft_p99_ms": 60.0},
                {"workload": "other", "mode": "batched", "rate_per_s": 10.0, "ttft_p50_ms": 30.0, "ttft_p99_ms": 60.0}]
    fig = plot_ttft_vs_load(points, bound_ms=100.0, measured=measured)
    (ax,) = fig.axes
    assert not [a for a in fig.axes if a.get_legend()] and len(fig.legends) == 1
    assert "decode not modelled" in fig._suptitle.get_text()  # the models' sources: a footnote, the legend's title
    assert "encoder: test; prefill: test double" in fig.legends[0].get_title().get_text().replace("\n", " ")
    assert {"batched p99, modelled", "batched p99, measured on a GPU"} <= {t.get_text() for t in fig.legends[0].get_texts()}
    # p50 and p99 per mode (4 curves), the bound, and one marker per percentile of the panel's measured point
    assert len(ax.get_lines()) == 4 + 1 + 2
    with pytest.raises(ValueError, match="at least one LoadPoint"):
        plot_ttft_vs_load([])


def test_admission_bars():
    costs = line_costs()
    rows = []
    for mode in MODES:
        for policy in ("legacy", "cache-aware"):
            config = ReplayConfig(SchedulerConfig(4096, 1024, policy=policy), mode=mode, cache_tokens=4096)
            rows.append({"trace": "product-catalog", **replay_stream(prepare("product-catalog"), config, costs).record()})
    fig = plot_admission(rows)
    assert [ax.get_title() for ax in fig.axes] == ["request re encodings", "refused puts", "ttft p99 ms"]
    assert all(len(ax.patches) == 4 for ax in fig.axes)  # one bar per mode x policy
    with pytest.raises(ValueError, match="at least one row"):
        plot_admission([])
