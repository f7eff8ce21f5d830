"""Arrival processes, TTFT metrics from step rows, the sustainable-rate search."""

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.sim.arrivals import ArrivalProcess, burst_times, poisson_times
from vitkit.sim.latency import percentile, request_latencies, summarize_latency
from vitkit.sim.replay import StepRow
from vitkit.sim.trace import Trace, TraceRequest
from vitkit.sim.workload import generate_workload, max_sustainable_rate, workload_params

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
    bursts = ArrivalProcess("bursts", rate_per_s=1.0, burst_size=1)
    assert bursts.label() == "bursts 1/s, bursts of 1"
    trace = Trace("t", (TraceRequest("a", 5.0, (10,)), TraceRequest("b", 9.0, (10,), abort_ms=19.0)))
    assert [r.arrival_ms for r in bursts.apply(trace).requests] == [0.0, 1000.0]


@pytest.mark.parametrize("call, match", [
    (lambda: burst_times(3, 1.0, 0), "burst_size"),
    (lambda: poisson_times(3, 0.0), "rate_per_s"),
    (lambda: poisson_times(3, math.nan), "rate_per_s"),
    (lambda: poisson_times(-1, 1.0), "number of arrivals"),
    (lambda: ArrivalProcess("uniform", 1.0), "kind"),
    (lambda: ArrivalProcess("poisson"), "rate_per_s"),
])
def test_arrival_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_apply_retimes_in_order_and_keeps_abort_delay():
    trace = Trace("t", (TraceRequest("a", 5.0, (10,)), TraceRequest("b", 9.0, (10,), abort_ms=19.0)))
    first, second = poisson_times(2, 1.0, seed=5)
    out = ArrivalProcess("poisson", rate_per_s=1.0, seed=5).apply(trace)
    assert [r.arrival_ms for r in out.requests] == [first, round(second, 6)]
    assert out.requests[1].abort_ms == round(second + 10.0, 6)
    assert ArrivalProcess("trace").apply(trace) is trace


# ---------------------------------------------------------------- latency


def _row(step, time_ms, encoder_ms, prefill_ms, bookkeeping_ms, windows, finished):
    """A replay's step row with only what latency reads: the clock, the parts and the windows."""
    return StepRow(step=step, time_ms=time_ms, duration_ms=encoder_ms + prefill_ms + bookkeeping_ms, windows=windows,
                   tokens=sum(stop - start for _, start, stop in windows), items_touched=0, hits=0, misses=0,
                   encoder_calls=0, encoded_items=0, encoded_tokens=0, call_tokens=(), re_encodings=0,
                   request_re_encodings=0, evictions=0, refused_puts=0, cache_bytes=0, pinned_bytes=0,
                   encoder_ms=encoder_ms, prefill_ms=prefill_ms, bookkeeping_ms=bookkeeping_ms, admitted=(),
                   finished=finished, aborted=())


def _steps():
    # a arrives at 0, b at 5; step 0 [0,10): a's first window (4 tokens); step 1 [10,30): a's
    # last window and b's first; step 2 [30,33): b's last window
    return [
        _row(0, 0.0, 4.0, 5.0, 1.0, (("a", 0, 4),), ()),
        _row(1, 10.0, 8.0, 11.0, 1.0, (("a", 4, 6), ("b", 0, 3)), ("a",)),
        _row(2, 30.0, 0.0, 2.0, 1.0, (("b", 3, 5),), ("b",)),
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
    assert s.step_ms_mean == pytest.approx(11.0)
    assert "decode" in s.note


def test_a_fixed_step_moves_the_clock_and_the_shares_stay_of_the_parts():
    # the clock moves by duration_ms (a fixed 20 ms step here), the shares are of the modelled parts
    steps = [replace(_row(0, 0.0, 1.0, 3.0, 0.0, (("a", 0, 4),), ("a",)), duration_ms=20.0)]
    (a,) = request_latencies(steps, {"a": 0.0})
    assert a.ttft_ms == 20.0
    s = summarize_latency([a], steps, {"a": 0.0})
    assert s.span_ms == 20.0 and s.step_ms_mean == 20.0 and s.encoder_share == pytest.approx(0.25)


def test_a_preempted_requests_prompt_is_its_prompt_and_its_redone_tokens_are_apart():
    # a runs [0,4), is preempted in step 1 (it had done 4 tokens) while b runs, then redoes [0,6) in step 2
    steps = [
        _row(0, 0.0, 0.0, 10.0, 0.0, (("a", 0, 4),), ()),
        replace(_row(1, 10.0, 0.0, 10.0, 0.0, (("b", 0, 5),), ("b",)), preempted=(("a", 0, 4),)),
        _row(2, 20.0, 0.0, 10.0, 0.0, (("a", 0, 6),), ("a",)),
    ]
    a, b = sorted(request_latencies(steps, {"a": 0.0, "b": 0.0}), key=lambda r: r.rid)
    assert (a.prompt_tokens, a.redone_tokens, a.steps, a.ttft_ms, a.queue_ms) == (6, 4, 2, 30.0, 0.0)
    assert (b.prompt_tokens, b.redone_tokens) == (5, 0)
    assert a.prompt_tokens_per_s == pytest.approx(6 / 0.030)  # the prompt over its whole prefill, redone time in
    s = summarize_latency([a, b], steps, {"a": 0.0, "b": 0.0})
    assert s.prompt_tokens_per_s == pytest.approx(11 / 0.030)


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
