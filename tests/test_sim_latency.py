"""Arrival processes, TTFT metrics from step times, the sustainable-rate search, step costs."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.bench.results import write_results
from vitkit.sim.arrivals import ArrivalProcess, burst_times, poisson_times
from vitkit.sim.bucketcost import measured_bucket_cost
from vitkit.sim.costmodel import fit_call_cost, fit_stream_cost_models
from vitkit.sim.latency import StepTime, percentile, request_latencies, summarize_latency
from vitkit.sim.load import max_sustainable_rate, workload_params
from vitkit.sim.stepcost import STORED, FlopPrefillCost, load_encoder_cost
from vitkit.sim.trace import Trace, TraceRequest
from vitkit.sim.workload import generate_workload

# ---------------------------------------------------------------- arrivals


def test_poisson_times_scale_with_rate_and_are_seeded():
    slow, fast = poisson_times(50, 10.0, seed=3), poisson_times(50, 20.0, seed=3)
    assert slow[0] == 0.0 and len(slow) == 50
    assert all(b >= a for a, b in zip(slow, slow[1:]))
    assert fast == pytest.approx([t / 2 for t in slow])  # same pattern, compressed
    assert poisson_times(50, 10.0, seed=4) != slow
    mean_gap = slow[-1] / 49
    assert 50 < mean_gap < 200  # 100 ms expected at 10/s


def test_burst_times():
    assert burst_times(5, 10.0, 2) == (0.0, 0.0, 200.0, 200.0, 400.0)


@pytest.mark.parametrize("call, match", [
    (lambda: poisson_times(3, 0.0), "rate_per_s"),
    (lambda: poisson_times(3, math.nan), "rate_per_s"),
    (lambda: poisson_times(-1, 1.0), "number of arrivals"),
    (lambda: burst_times(3, 1.0, 0), "burst_size"),
    (lambda: ArrivalProcess("uniform", 1.0), "kind"),
    (lambda: ArrivalProcess("poisson"), "rate_per_s"),
])
def test_arrival_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_apply_retimes_in_order_and_keeps_abort_delay():
    trace = Trace("t", (TraceRequest("a", 5.0, (10,)), TraceRequest("b", 9.0, (10,), abort_ms=19.0)))
    out = ArrivalProcess("bursts", rate_per_s=1.0, burst_size=1).apply(trace)
    assert [r.arrival_ms for r in out.requests] == [0.0, 1000.0]
    assert out.requests[1].abort_ms == 1010.0
    assert ArrivalProcess("trace").apply(trace) is trace


# ---------------------------------------------------------------- latency


def _steps():
    # a arrives at 0, b at 5; step 0 [0,10): a's first window (4 tokens); step 1 [10,30): a's
    # last window and b's first; step 2 [30,33): b's last window
    return [
        StepTime(0, 0.0, 4.0, 5.0, 1.0, (("a", 0, 4),), ()),
        StepTime(1, 10.0, 8.0, 11.0, 1.0, (("a", 4, 6), ("b", 0, 3)), ("a",)),
        StepTime(2, 30.0, 0.0, 2.0, 1.0, (("b", 3, 5),), ("b",)),
    ]


def test_hand_checked_clock():
    rows = request_latencies(_steps(), {"a": 0.0, "b": 5.0})
    a, b = rows
    assert (a.rid, a.queue_ms, a.ttft_ms, a.first_step, a.last_step, a.steps, a.prompt_tokens) == ("a", 0.0, 30.0, 0, 1, 2, 6)
    assert (b.rid, b.queue_ms, b.ttft_ms, b.first_step, b.last_step, b.steps, b.prompt_tokens) == ("b", 5.0, 28.0, 1, 2, 2, 5)
    assert b.prefill_ms == 23.0 and b.prompt_tokens_per_s == pytest.approx(5 / 0.023)


def test_summary_agrees_with_rows():
    steps = _steps()
    arrivals = {"a": 0.0, "b": 5.0, "c": 6.0}  # c never ran (aborted)
    rows = request_latencies(steps, arrivals)
    s = summarize_latency(rows, steps, arrivals)
    assert (s.requests, s.finished, s.steps) == (3, 2, 3)
    assert s.ttft_p50_ms == pytest.approx(29.0) and s.ttft_p99_ms == pytest.approx(28.0 + 0.99 * 2.0)
    assert s.span_ms == 33.0
    assert s.requests_per_s == pytest.approx(2 / 0.033)
    assert s.prompt_tokens_per_s == pytest.approx(11 / 0.033)
    assert s.encoder_share == pytest.approx(12 / 33) and s.prefill_share == pytest.approx(18 / 33)
    assert "decode" in s.note


def test_finished_without_arrival_raises():
    with pytest.raises(ValueError, match="'a' finished but has no arrival"):
        request_latencies(_steps(), {"b": 0.0})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40), st.floats(0, 100))
def test_percentile_between_min_and_max(values, q):
    p = percentile(values, q)
    assert min(values) <= p <= max(values)
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)


# ---------------------------------------------------------------- sustainable rate


def test_max_sustainable_rate_bisects_between_grid_points():
    p99 = lambda rate: 10.0 * rate  # noqa: E731 - p99 grows with load; bound 250 -> 25/s
    best, points = max_sustainable_rate(p99, 250.0, [10, 20, 40, 80], refine=8)
    assert [p.rate_per_s for p in points[:3]] == [10, 20, 40]
    assert 24.9 < best <= 25.0
    assert max_sustainable_rate(p99, 50.0, [10, 20])[0] is None
    assert max_sustainable_rate(p99, 1e9, [10, 20])[0] == 20
    with pytest.raises(ValueError, match="bound_ms"):
        max_sustainable_rate(p99, 0, [10])


def test_workload_params():
    assert workload_params("small-images", 10).num_requests == 10
    with pytest.raises(ValueError, match="unknown TTFT workload 'x'"):
        workload_params("x")
    trace = generate_workload(workload_params("large-images", 20))
    assert len(trace.requests) == 20


# ---------------------------------------------------------------- step costs


def test_relative_fit_recovers_a_line_and_reports_errors():
    points = [(x, 2.0 + 0.01 * x) for x in (256, 1024, 4096, 8192)]
    cost = fit_call_cost(points, "e", "i", "src", relative=True)
    assert cost.intercept_ms == pytest.approx(2.0) and cost.ms_per_token == pytest.approx(0.01)
    assert cost.max_rel_err == pytest.approx(0.0, abs=1e-9)


def test_stream_file_fit_and_preferred_over_sweep(tmp_path, fake_bench_results):
    write_results(fake_bench_results(), tmp_path / "full-x-20260101T000000Z.json")
    assert load_encoder_cost(tmp_path, "qwen2.5-vl-7b").source.startswith("sweep fit full-x-")
    rows = [{"encoder": "qwen2.5-vl-7b", "impl": "vitkit", "mode": "batched", "encoder_calls": c,
             "encoded_items": c, "encoded_rows": r, "padded_rows": r, "encoder_ms": 1.5 * c + 0.02 * r,
             "step_ms": 1.5 * c + 0.02 * r + 0.3} for c, r in ((1, 256), (2, 2048), (1, 4096), (0, 0))]
    stream = {"schema": "vitkit.stream/1", "kind": "gpu", "machine": {"device_name": "H100"}, "versions": {},
              "settings": {}, "warmups": [], "summaries": [], "steady": [], "cold": [], "steps": rows}
    (tmp_path / "stream-y.json").write_text(json.dumps(stream))
    cost = load_encoder_cost(tmp_path, "qwen2.5-vl-7b")
    assert cost.source.startswith("stream fit stream-y.json")
    assert cost.call.intercept_ms == pytest.approx(1.5) and cost.call.ms_per_token == pytest.approx(0.02)
    assert cost.bookkeeping_ms == pytest.approx(0.3)
    assert cost.step_ms([256, 1024]) == pytest.approx(2 * 1.5 + 0.02 * 1280)
    with pytest.raises(ValueError, match="schema"):
        fit_stream_cost_models(tmp_path / "full-x-20260101T000000Z.json")
    with pytest.raises(ValueError, match="no stream-"):
        load_encoder_cost(tmp_path, "no-such-encoder")
    (tmp_path / "stream-y.json").write_text(json.dumps(stream | {"kind": "cpu-smoke"}))
    assert load_encoder_cost(tmp_path, "qwen2.5-vl-7b").source.startswith("sweep fit")  # a CPU stream times no GPU


def test_stored_h100_encoder_cost_is_named_and_close():
    cost = load_encoder_cost()  # measured: graph replays and a host share fitted to serving calls
    assert cost.source.startswith("measured buckets encoder-costs-") and "qwen2.5-vl-7b" in cost.source
    # single serving calls jitter (H100: median error 12%); their sum is what the replay's clock adds
    assert cost.call.median_rel_err < 0.15
    _, rows = measured_bucket_cost(STORED / cost.source.split()[2])
    served = [r for r in rows if r["kind"] == "serving"]
    assert sum(r["modelled_ms"] for r in served) == pytest.approx(sum(r["measured_ms"] for r in served), rel=0.05)
    assert cost.call.call_ms([256]) < cost.call.call_ms([256, 256]) < 2 * cost.call.call_ms([256])
    stream = load_encoder_cost(model="bucket")  # the stream file regenerates its calls
    assert "stream bucket fit" in stream.source and stream.call.median_rel_err < 0.1
    line = load_encoder_cost(model="line")
    assert line.source.startswith("stream fit") and line.call.median_rel_err < 0.1
    assert line.call.intercept_ms > 0  # the fixed cost per call that batching saves
    with pytest.raises(ValueError, match="model must be one of"):
        load_encoder_cost(model="cubic")


def test_flop_prefill_estimate_and_window_checks():
    model = FlopPrefillCost()
    assert model.step_ms([]) == 0.0
    one = model.step_ms([(0, 2048)])
    assert model.step_ms([(8192, 2048)]) > one > model.step_ms([(0, 1024)])
    assert "not measured" in model.source
    for bad in ([(0, 0)], [(-1, 4)], [(0.5, 4)], [(1, 2, 3)]):
        with pytest.raises((ValueError, TypeError), match="window 0"):
            model.step_ms(bad)
