"""Simulator figures: the right panels and one line per run."""

import pytest
from matplotlib.figure import Figure

from vitkit.sim.fake import FakeEncoder
from vitkit.sim.plot import plot_cache_memory, plot_over_steps, plot_schedule, plot_summary, series
from vitkit.sim.run import compare, prepare


@pytest.fixture(scope="module")
def runs_and_stream():
    stream = prepare("chat-multiturn", chunked_prefill_size=4096, long_prefill_token_threshold=1024)
    encoder = FakeEncoder(hidden=8)
    runs = compare(stream, [4096 * encoder.bytes_per_token, 8192 * encoder.bytes_per_token], encoder=encoder, progress=False)
    return runs, stream


def test_over_steps_has_one_line_per_run(runs_and_stream):
    runs, _ = runs_and_stream
    fig = plot_over_steps(runs)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["cache hit rate (cumulative)", "encoder calls (cumulative)", "encoder time, ms (cumulative)"]
    assert all(len(ax.get_lines()) == len(runs) == 8 for ax in axes)
    calls = axes[1].get_lines()[0].get_ydata()
    assert calls[-1] == runs[0].summary.encoder_calls  # the cumulative line ends at the run total
    assert series(runs[0], "hit_rate")[-1] == pytest.approx(runs[0].summary.hit_rate)
    with pytest.raises(ValueError, match="unknown metric"):
        plot_over_steps(runs, metrics=["nope"])


def test_other_figures(runs_and_stream):
    runs, stream = runs_and_stream
    memory = plot_cache_memory(runs)
    assert len(memory.get_axes()) == 2 and len(memory.get_axes()[1].get_lines()) == len(runs)
    summary = plot_summary(runs, "re_encodings")
    assert len(summary.get_axes()[0].get_lines()) == 4  # modes x pin on/off, over cache sizes
    schedule = plot_schedule(stream)
    bars = schedule.get_axes()[0].patches
    assert len(bars) == sum(len(s.windows) for s in stream.steps)
