"""The timed replay: hand-checked clocks, summaries that agree with rows, both admission policies
(same embeddings, no within-request re-encodings when the cache holds a step's pinned set)."""

from dataclasses import dataclass, replace

import pytest
import torch

import vitkit.sim.stepcost as stepcost
from vitkit.bench.decoder import check_windows
from vitkit.sim.costmodel import CallCost
from vitkit.sim.latency import percentile
from vitkit.sim.stepcost import EncoderCost, StepCosts
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest, load_trace
from vitkit.sim.ttft import ReplayConfig, load_sweep, replay_at_rate, sustainable_rate, timed_replay, workload_trace
from vitkit.sim.workload import build_requests


@dataclass(frozen=True)
class LinearPrefill:
    """Test double of the prefill model: ``ms_per_token`` per new token, nothing else."""

    ms_per_token: float = 0.1
    source: str = "test double"

    def step_ms(self, windows):
        return self.ms_per_token * sum(new for _, new in check_windows(windows))


COSTS = StepCosts(EncoderCost(CallCost("enc", "test", 2.0, 0.01, 2, 1.0), bookkeeping_ms=1.0, source="test"), LinearPrefill())
IMAGES = {"p": ImageSpec(448, 448), "q": ImageSpec(448, 448)}  # 256 rows each


def _trace(*requests):
    return Trace("tiny", tuple(requests), IMAGES)


def test_hand_checked_clock_queueing_and_the_step_that_finishes_a_prompt():
    trace = _trace(TraceRequest("a", 0.0, (10, "p", 10)), TraceRequest("b", 5.0, (20,)))
    run = timed_replay(trace, COSTS, ReplayConfig(chunked_prefill_size=200))
    s0, s1 = run.steps
    # step 0 at 0 ms: a's [0, 200) -> one call of 256 rows (2 + 2.56) + 200 tokens (20) + 1
    assert (s0.start_ms, s0.encoder_ms, s0.prefill_ms, s0.bookkeeping_ms) == (0.0, pytest.approx(4.56), pytest.approx(20.0), 1.0)
    # step 1 at 25.56 ms: a's [200, 276) (its image is a hit) and b's [0, 20): 96 tokens
    assert s1.start_ms == pytest.approx(25.56) and s1.encoder_ms == 0.0 and s1.prefill_ms == pytest.approx(9.6)
    a, b = sorted(run.requests, key=lambda r: r.rid)
    assert (a.queue_ms, a.ttft_ms, a.last_step) == (0.0, pytest.approx(36.16), 1)
    assert (b.queue_ms, b.ttft_ms, b.first_step) == (pytest.approx(20.56), pytest.approx(31.16), 1)
    assert "decode" in run.summary.note


def test_batching_saves_the_per_call_cost_on_the_clock():
    trace = _trace(TraceRequest("a", 0.0, (10, "p")), TraceRequest("b", 0.0, (10, "q")))
    ttft = {}
    for mode in ("batched", "per_request"):
        run = timed_replay(trace, COSTS, ReplayConfig(mode=mode, chunked_prefill_size=1000))
        ttft[mode] = run.summary.ttft_p50_ms
        assert run.steps[0].encoder_ms == pytest.approx((1 if mode == "batched" else 2) * 2.0 + 5.12)
    assert ttft["per_request"] - ttft["batched"] == pytest.approx(2.0)


def test_an_image_encoded_twice_in_one_step_is_a_re_encoding():
    # per-request mode, a cache too small for the image: b's window encodes p again in step 0
    trace = _trace(TraceRequest("a", 0.0, (10, "p")), TraceRequest("b", 0.0, (10, "p")))
    run = timed_replay(trace, COSTS, ReplayConfig(mode="per_request", chunked_prefill_size=1000, cache_tokens=100))
    assert len(run.steps) == 1
    assert (run.cache.encoded_items, run.cache.re_encodings, run.cache.request_re_encodings) == (2, 1, 0)


def test_shadow_costs_read_each_steps_calls_once(monkeypatch):
    reads = []
    real = stepcost.call_item_rows
    monkeypatch.setattr(stepcost, "call_item_rows", lambda *args: reads.append(1) or real(*args))
    trace = _trace(TraceRequest("a", 0.0, (10, "p", 10)), TraceRequest("b", 5.0, (20,)))
    run = timed_replay(trace, COSTS, ReplayConfig(chunked_prefill_size=200), shadow=COSTS)
    assert len(reads) == len(run.steps) == 2
    assert [ms for ms, _, _ in run.shadow] == [st.encoder_ms for st in run.steps]


@pytest.fixture(scope="module")
def catalog_runs():
    trace = load_trace("product-catalog")
    base = ReplayConfig(chunked_prefill_size=4096, long_prefill_token_threshold=1024, cache_tokens=4096)
    return {(m, p): timed_replay(trace, COSTS, replace(base, mode=m, policy=p), keep_embeddings=True)
            for m in ("batched", "per_request") for p in ("legacy", "cache-aware")}


def test_summary_agrees_with_rows(catalog_runs):
    for run in catalog_runs.values():
        s, rows = run.summary, run.requests
        ttft = [r.ttft_ms for r in rows]
        assert s.finished == len(rows) == 48 and s.steps == len(run.steps)
        assert s.ttft_p99_ms == pytest.approx(percentile(ttft, 99)) and s.ttft_p50_ms == pytest.approx(percentile(ttft, 50))
        assert s.encoder_share == pytest.approx(sum(t.encoder_ms for t in run.steps) / sum(t.duration_ms for t in run.steps))
        assert all(r.ttft_ms >= r.queue_ms >= 0 for r in rows)
        ends = {t.step: t.end_ms for t in run.steps}
        assert all(r.ttft_ms == pytest.approx(ends[r.last_step] - r.arrival_ms) for r in rows)
        assert sum(r.prompt_tokens for r in rows) == sum(t.tokens for t in run.steps)


def _prompt_embeddings(run, trace):
    """Each request's image rows, its windows' chunks concatenated in step order."""
    chunks = {}
    for (step, rid), emb in sorted(run.embeddings.items(), key=lambda kv: kv[0][0]):
        if emb is not None:
            chunks.setdefault(rid, []).append(emb)
    return {rid: torch.cat(parts) for rid, parts in chunks.items()}


def test_both_policies_and_modes_give_identical_embeddings(catalog_runs):
    trace = load_trace("product-catalog")
    reference = _prompt_embeddings(catalog_runs[("batched", "legacy")], trace)
    requests = build_requests(trace)
    assert set(reference) == set(requests)
    for rid, emb in reference.items():
        assert emb.shape[0] == requests[rid].image_tokens
    for key, run in catalog_runs.items():
        got = _prompt_embeddings(run, trace)
        assert set(got) == set(reference), key
        for rid in reference:
            assert torch.equal(got[rid], reference[rid]), (key, rid)


def test_cache_aware_cuts_windows_and_never_refuses_a_put(catalog_runs):
    for mode in ("batched", "per_request"):
        legacy, aware = catalog_runs[(mode, "legacy")], catalog_runs[(mode, "cache-aware")]
        assert aware.cache.refused_puts == 0 and aware.cache.request_re_encodings == 0
        assert legacy.cache.refused_puts > 0  # the tight cache hurts today's policy


@pytest.mark.parametrize("trace_name", ["product-catalog", "chat-multiturn"])
@pytest.mark.parametrize("mode", ["batched", "per_request"])
def test_zero_re_encodings_within_a_request_on_stored_traces(trace_name, mode):
    config = ReplayConfig(mode=mode, policy="cache-aware", chunked_prefill_size=4096,
                          long_prefill_token_threshold=1024, cache_tokens=8192)
    run = timed_replay(load_trace(trace_name), COSTS, config)
    assert run.cache.request_re_encodings == 0 and run.cache.refused_puts == 0
    assert run.summary.finished + sum(r.abort_ms is not None for r in load_trace(trace_name).requests) >= len(load_trace(trace_name).requests)


def test_oversized_image_refused_up_front():
    trace = _trace(TraceRequest("a", 0.0, (10, "p")))
    with pytest.raises(ValueError, match="request 'a' item 0: .*more than the whole cache"):
        timed_replay(trace, COSTS, ReplayConfig(policy="cache-aware", cache_tokens=255))
    timed_replay(trace, COSTS, ReplayConfig(policy="legacy", cache_tokens=255))  # today's policy just re-encodes


def test_load_sweep_latency_grows_with_rate_and_sustainable_rate():
    trace = workload_trace("small-images", 60)
    points = load_sweep(trace, [5, 500], COSTS, [ReplayConfig()], progress=False)
    low, high = sorted(points, key=lambda p: p.rate_per_s)
    assert high.run.summary.ttft_p99_ms > low.run.summary.ttft_p99_ms
    assert low.run.arrivals == "poisson 5/s"
    best, tried = sustainable_rate(trace, COSTS, ReplayConfig(), bound_ms=low.run.summary.ttft_p99_ms * 1.5,
                                   rates=[5, 500], refine=3)
    assert 5 <= best < 500 and len(tried) == 5


def test_replay_at_rate_is_seeded():
    trace = workload_trace("large-images", 20)
    one = replay_at_rate(trace, 3.0, COSTS, ReplayConfig(), seed=1)
    two = replay_at_rate(trace, 3.0, COSTS, ReplayConfig(), seed=1)
    assert one.summary == two.summary
