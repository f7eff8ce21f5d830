"""Notebook 03's explorer: workload sliders drive vitkit.sim; figures and table follow."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("ipywidgets", reason="widget tests need the notebooks extra: pip install -e '.[notebooks]'")

import json
import shutil

from vitkit.costs import results
from vitkit.sim import WorkloadParams
from vitkit.viz import SimSettings, admission_rows, run_sim, sim_explorer, summary_rows
from vitkit.viz.sim_widget import MEMORY, PANELS, cost_models, sim_figure

STORED = results.results_folder()


SMALL = SimSettings(
    workload=WorkloadParams(num_requests=8, arrival_rate_per_s=None, images_per_request=(1, 2), repeat_share=0.5, seed=1),
    cache_tokens=(512, 16384),
)


@pytest.fixture(scope="module")
def runs():
    return run_sim(SMALL)


def test_runs_cover_modes_caches_and_pinning(runs):
    keys = {(r.config.mode, r.config.pin, r.config.cache_tokens) for r in runs}
    assert len(runs) == len(keys) == 2 * 2 * 2
    assert len({r.summary.steps for r in runs}) == 1  # every configuration replays the same schedule


def test_summary_rows_say_cache_in_tokens(runs):
    rows = summary_rows(runs)
    assert sorted({r["cache (tokens)"] for r in rows}) == [512, 16384]
    big = [r for r in rows if r["cache (tokens)"] == 16384]
    assert all(r["peak cache (tokens)"] <= 16384 for r in rows)
    # a cache that holds everything never re-encodes, in either mode
    assert all(r["re-encodings"] == 0 for r in big)
    batched = {r["cache (tokens)"]: r for r in rows if r["mode"] == "batched" and r["pin"] == "on"}
    per_request = {r["cache (tokens)"]: r for r in rows if r["mode"] == "per_request" and r["pin"] == "on"}
    assert batched[16384]["encoder calls"] < per_request[16384]["encoder calls"]


def test_figures_are_small_multiples_in_tokens(runs):
    figs = {panel: sim_figure(runs, panel) for panel in (*PANELS, MEMORY)}
    for fig in figs.values():
        assert not [ax for ax in fig.axes if ax.get_legend()]  # no legend over a panel's curves
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        assert sorted(labels) == ["batched, pin off", "batched, pin on", "per-request, pin off", "per-request, pin on"]
        assert [ax.get_title() for ax in fig.axes[:2]] == ["cache 512 tokens", "cache 16384 tokens"]
    cache_ax = figs[MEMORY].axes[0]
    assert cache_ax.get_ylabel() == "cache (embedding tokens)"
    assert max(max(line.get_ydata()) for line in figs[MEMORY].axes[1].get_lines()) <= 16384
    with pytest.raises(ValueError, match="unknown panel"):
        sim_figure(runs, "nope")


def test_sliders_rerun_the_simulation():
    explorer = sim_explorer(SMALL)
    assert len(explorer.rows) == 8 and "8 runs" in explorer.status.value
    png, table = bytes(explorer.figure.value), explorer.table.value
    explorer.controls["pins"].value = "on"
    assert len(explorer.rows) == 4 and all(r["pin"] == "on" for r in explorer.rows)
    low = max(r["hit rate"] for r in explorer.rows)
    explorer.controls["repeat_share"].value = 0.95  # almost every image is a repeat
    assert max(r["hit rate"] for r in explorer.rows) > low
    assert bytes(explorer.figure.value) != png and explorer.table.value != table
    rows = explorer.rows
    explorer.panel.value = MEMORY  # another figure of the same runs: no new simulation
    assert explorer.rows is rows and bytes(explorer.figure.value) != png


def test_example_trace_fixes_the_workload():
    explorer = sim_explorer(replace(SMALL, pins=(True,), cache_tokens=(4096,)))
    explorer.controls["trace"].value = "chat-multiturn"
    assert explorer.controls["requests"].disabled and not explorer.controls["chunked_prefill_size"].disabled
    assert explorer.current_settings().trace == "chat-multiturn"
    assert explorer.runs[0].summary.windows > 24  # 24 requests, several windows each


def test_cost_model_from_stored_results_sets_encoder_time(tmp_path):
    # a stream file only (no encoder-costs file): the bucket model fitted to the encoder's stream
    (stream,) = sorted(STORED.glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    shutil.copy(stream, tmp_path)
    models = cost_models(tmp_path)
    assert set(models) == {"qwen2.5-vl-7b/vitkit"}
    assert models["qwen2.5-vl-7b/vitkit"].source.startswith(f"stream fit {stream.name}")
    explorer = sim_explorer(replace(SMALL, pins=(True,), cache_tokens=(4096,)), results_folder=tmp_path)
    assert "qwen2.5-vl-7b/vitkit" in explorer.controls["encoder"].options
    explorer.controls["encoder"].value = "qwen2.5-vl-7b/vitkit"
    cost = models["qwen2.5-vl-7b/vitkit"]
    one_item_calls = 0
    for run in explorer.runs:
        assert run.summary.encoder_ms == pytest.approx(sum(r.encoder_ms for r in run.rows)) and run.summary.encoder_ms > 0
        for row in run.rows:
            if row.encoded_items == row.encoder_calls:  # every call one item: its rows are the call's
                assert row.encoder_ms == pytest.approx(sum(cost.call.call_ms([t]) for t in row.call_tokens))
                one_item_calls += row.encoder_calls
    assert one_item_calls > 0
    assert "modelled from stored results" in explorer.status.value
    # with an encoder-costs file in the folder, that encoder's measured model replaces the stream fit
    assert cost_models(STORED, [])["qwen2.5-vl-7b/vitkit"].source.startswith("measured buckets encoder-costs-")


def test_the_stored_results_fit_without_problems():
    problems = []
    cost_models(STORED, problems)
    assert problems == []


def test_unknown_encoder_is_an_error():
    with pytest.raises(ValueError, match="has no cost model"):
        run_sim(replace(SMALL, encoder="no-such-encoder/vitkit"))


def test_default_encoder_time_is_the_stored_cost_model_named_in_the_figures(runs):
    explorer = sim_explorer(replace(SMALL, pins=(True,), cache_tokens=(4096,)))
    assert explorer.controls["encoder"].value == "qwen2.5-vl-7b/vitkit"
    # the measured bucket model when an encoder-costs file is stored (the TTFT view's model too), its
    # bookkeeping from the stored stream file: both named
    assert "measured buckets encoder-costs-" in explorer.status.value
    assert "bookkeeping stream-qwen2.5-vl-7b-" in explorer.status.value
    assert "fake" not in explorer.status.value
    assert sim_figure(explorer.runs, MEMORY, "encoder time modelled: x")._suptitle.get_text() == "encoder time modelled: x"
    assert explorer.runs[0].summary.encoder_ms > 0


def test_results_without_a_fittable_model_are_reported_not_fatal(tmp_path):
    # a Qwen stream file none of whose steps' calls can be recomputed: nothing to fit
    (path,) = sorted(STORED.glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    data = json.loads(path.read_text())
    for row in data["steps"]:
        row["encoder_calls"] += 1
    (tmp_path / "stream-qwen-only-20260101T000000Z.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="cannot fit an encoder cost model to .*qwen-only"):
        cost_models(tmp_path)
    explorer = sim_explorer(replace(SMALL, pins=(True,), cache_tokens=(4096,)), results_folder=tmp_path)
    assert explorer.controls["encoder"].options == ("fake",)
    assert "cannot fit an encoder cost model" in explorer.status.value


# ---------------------------------------------------------------- time to first token


def test_ttft_explorer_shows_both_modes_from_the_named_cost_models():
    from vitkit.viz.sim_widget import TTFTSettings, ttft_explorer

    explorer = ttft_explorer(TTFTSettings(num_requests=40, rates=(10.0, 80.0), rate_per_s=80.0))
    assert [r["mode"] for r in explorer.rows] == ["batched", "per_request"]
    assert all(r["rate (req/s)"] == 80.0 and r["TTFT p99 ms"] >= r["TTFT p50 ms"] > 0 for r in explorer.rows)
    assert "measured buckets encoder-costs-" in explorer.status.value and "decode is not modelled" in explorer.status.value
    assert {p.rate_per_s for p in explorer.points} == {10.0, 80.0}
    png = bytes(explorer.figure.value)
    explorer.controls["policy"].value = "cache-aware"
    assert all(r["policy"] == "cache-aware" for r in explorer.rows) and bytes(explorer.figure.value) != png
    explorer.controls["workload"].value = "large-images"
    assert "large-images" in explorer.status.value


def test_ttft_figure_names_its_sources_and_keeps_legends_off_the_curves():
    from vitkit.costs import StepCosts, load_encoder_cost, load_prefill_cost
    from vitkit.sim.plot import plot_ttft_vs_load
    from vitkit.viz.sim_widget import TTFTSettings, ttft_points

    points = ttft_points(TTFTSettings(num_requests=20, rates=(10.0,), rate_per_s=10.0),
                         StepCosts(load_encoder_cost(), load_prefill_cost()))
    fig = plot_ttft_vs_load(points, bound_ms=100.0)
    assert not [ax for ax in fig.axes if ax.get_legend()] and len(fig.legends) == 1
    assert "decode not modelled" in fig._suptitle.get_text() and "qwen2.5-vl-7b" not in fig._suptitle.get_text()
    assert "qwen2.5-vl-7b" in fig.legends[0].get_title().get_text()  # the sources: a footnote, not the title


def test_admission_rows_compare_both_policies():
    from vitkit.viz.sim_widget import admission_rows

    rows = admission_rows("product-catalog", cache_tokens=4096)
    assert [(r["mode"], r["admission"]) for r in rows] == [
        ("batched", "legacy"), ("batched", "cache-aware"), ("per_request", "legacy"), ("per_request", "cache-aware")]
    aware = [r for r in rows if r["admission"] == "cache-aware"]
    assert all(r["re-encodings in a request"] == 0 and r["refused puts"] == 0 for r in aware)
    assert any(r["refused puts"] > 0 for r in rows if r["admission"] == "legacy")


def test_ttft_figure_shows_the_stored_gpu_replay_next_to_the_model():
    from vitkit.sim.plot import measured_points
    from vitkit.viz.sim_widget import TTFTSettings, measured_at, stored_measured_points, ttft_requests

    validation = {"settings": {"chunked_prefill_size": 2048, "cache_tokens": 16384},
                  "rows": [{"workload": "small-images", "mode": "batched", "arrivals": "poisson 40/s",
                            "measured": {"requests": 600}, "measured_p50_ms": 60.0, "measured_p99_ms": 120.0}]}
    (point,) = measured_points(validation)
    assert point["rate_per_s"] == 40.0 and point["ttft_p99_ms"] == 120.0 and point["cache_tokens"] == 16384
    assert point["requests"] == 600
    # drawn only next to a curve of as many requests: a p99 over 200 requests is another statistic
    assert ttft_requests(TTFTSettings()) == 600 and ttft_requests(TTFTSettings(workload="large-images")) == 150
    assert measured_at([point], TTFTSettings()) == [point]
    assert measured_at([point], TTFTSettings(num_requests=200)) == []
    if sorted(STORED.glob("ttft-validate-*.json")):
        stored = stored_measured_points()
        assert {(p["workload"], p["mode"]) for p in stored} >= {("small-images", "batched"), ("small-images", "per_request")}
        assert TTFTSettings().chunked_prefill_size == stored[0]["chunked_prefill_size"]  # the default view shows them
        assert {p["requests"] for p in stored} == {ttft_requests(TTFTSettings(workload=p["workload"])) for p in stored}


def test_notebook_03_claims_hold_for_the_tables_under_them():
    """Notebook 03's markdown states these relations (no numbers) of the tables its cells show."""
    rows = {(r["mode"], r["admission"]): r for r in admission_rows("product-catalog", cache_tokens=4096)}
    for mode in ("batched", "per_request"):
        aware, legacy = rows[(mode, "cache-aware")], rows[(mode, "legacy")]
        assert aware["refused puts"] == 0 and aware["re-encodings in a request"] == 0 < legacy["re-encodings in a request"]
        assert aware["TTFT p50 ms"] < legacy["TTFT p50 ms"] and aware["TTFT p99 ms"] < legacy["TTFT p99 ms"]
    runs = run_sim(SimSettings(trace="chat-multiturn", chunked_prefill_size=4096, long_prefill_token_threshold=1024,
                               cache_tokens=(2048, 8192)))
    table = {(r["mode"], r["pin"], r["cache (tokens)"]): r for r in summary_rows(runs)}
    lost = "re-encodings in a request"
    assert table[("per_request", "on", 2048)][lost] < table[("per_request", "off", 2048)][lost]
    assert table[("batched", "on", 2048)][lost] > table[("batched", "off", 2048)][lost]
    assert table[("batched", "on", 2048)]["hit rate"] < table[("batched", "off", 2048)]["hit rate"]
    for mode in ("batched", "per_request"):
        assert table[(mode, "on", 8192)] | {"pin": ""} == table[(mode, "off", 8192)] | {"pin": ""}


def test_ttft_explorer_keeps_curves_brings_workload_rates_and_names_settings_it_cannot_replay():
    from vitkit.viz.sim_widget import TTFTSettings, ttft_explorer

    view = ttft_explorer(TTFTSettings(num_requests=30))
    curve = list(view._curves.values())[0]
    view.controls["rate"].value = 43.0  # a rate off the curve: the curve is kept, only the table's rate is replayed
    assert len(view._curves) == 1 and view.points[: len(curve)] == curve and [r["rate (req/s)"] for r in view.rows] == [43.0] * 2
    view.controls["workload"].value = "large-images"
    assert view.controls["rate"].value == 4.0 and view.controls["rate"].max == 12  # its validation rate, its curve's span
    assert {p.workload for p in view.points} == {"large-images"} and all(r["rate (req/s)"] == 4.0 for r in view.rows)
    view.controls["policy"].value = "cache-aware"
    view.controls["chunked_prefill_size"].value = 1024  # a 1728-row image never fits a 1024-token encoder budget
    assert "cannot replay these settings" in view.status.value and "1728 embedding rows" in view.status.value


def test_model_errors_compare_the_curve_with_the_measured_points_at_their_rate():
    from vitkit.viz.sim_widget import model_error_line, model_errors

    class Latency:
        ttft_p50_ms, ttft_p99_ms = 110.0, 90.0

    class Point:
        workload, rate_per_s, latency = "small-images", 40.0, Latency()
        run = type("R", (), {"config": type("C", (), {"mode": "batched"})(), "latency": Latency()})()

    measured = [{"workload": "small-images", "mode": "batched", "rate_per_s": 40.0, "card": "H100",
                 "ttft_p50_ms": 100.0, "ttft_p99_ms": 100.0},
                {"workload": "small-images", "mode": "batched", "rate_per_s": 50.0, "card": "H100",
                 "ttft_p50_ms": 1.0, "ttft_p99_ms": 1.0}]  # no modelled point at 50/s: not compared
    (error,) = model_errors([Point()], measured)
    assert error["p50 %"] == pytest.approx(10.0) and error["p99 %"] == pytest.approx(-10.0)
    assert model_error_line([error]) == ("Model against the GPU replay (hollow markers, measured on H100): "
                                         "batched at 40/s: p50 +10.0%, p99 -10.0%.")
    assert "No GPU replay" in model_error_line([])


def test_views_name_the_card_their_models_come_from_and_hint_at_calibrate(monkeypatch):
    from vitkit.costs import results as files
    from vitkit.viz.sim_widget import TTFTSettings, ttft_explorer

    monkeypatch.setattr(files, "attached_card", lambda: "h200")  # a GPU the kit has no results for
    view = ttft_explorer(TTFTSettings(num_requests=30))
    assert "models measured on h100" in view.status.value and "make calibrate" in view.status.value
    explorer = sim_explorer(replace(SMALL, pins=(True,), cache_tokens=(4096,)))
    assert "make calibrate" in explorer.status.value


def test_ttft_explorer_takes_a_trace_and_replays_it_around_its_own_rate():
    from vitkit.sim.trace import load_trace, mean_rate_per_s
    from vitkit.viz.sim_widget import TTFTSettings, curve_rates, ttft_explorer

    trace = load_trace("chat-multiturn")
    own = round(mean_rate_per_s(trace), 2)
    view = ttft_explorer(trace="chat-multiturn")
    assert view.controls["workload"].value == "chat-multiturn" and "small-images" in view.controls["workload"].options
    assert view.controls["rate"].value == own and {p.workload for p in view.points} == {"chat-multiturn"}
    assert sorted({p.rate_per_s for p in view.points}) == sorted({*curve_rates(view.current_settings()), own})
    assert all(r["rate (req/s)"] == own for r in view.rows) and f"{len(trace.requests)} requests" in view.status.value
    view.controls["workload"].value = "large-images"  # the stock workloads stay on offer, with their own rates
    assert view.controls["rate"].value == 4.0 and {p.workload for p in view.points} == {"large-images"}
    assert curve_rates(TTFTSettings()) == curve_rates(TTFTSettings(trace=trace))  # a trace not chosen changes nothing


def test_the_cache_explorer_offers_the_traces_with_short_clips_and_counts_only_rows():
    from vitkit.sim.trace import load_trace
    from vitkit.viz.sim_widget import EXPLORER_VIDEO_ROWS, explorer_traces, video_rows

    offered = explorer_traces()
    assert {"mixed-chat", "doc-qa", "product-catalog", "chat-multiturn"} <= set(offered)
    assert "video-qa" not in offered  # its long videos: the engine-policy view shows it, replayed once
    clips = [s for s in load_trace("mixed-chat").images.values() if s.frames]
    assert clips and max(video_rows(s) for s in clips) <= EXPLORER_VIDEO_ROWS
    assert max(video_rows(s) for s in load_trace("video-qa").images.values()) > EXPLORER_VIDEO_ROWS
    # modelled encoder time: counts-only rows, the same counts as the fake encoder's own rows
    settings = replace(SMALL, trace="mixed-chat", pins=(True,), cache_tokens=(4096,))
    modelled, fake = run_sim(settings), run_sim(replace(settings, encoder="fake"))
    assert [r.summary.encoded_items for r in modelled] == [r.summary.encoded_items for r in fake]
    assert [r.summary.re_encodings for r in modelled] == [r.summary.re_encodings for r in fake]
