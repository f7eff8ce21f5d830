"""The one replay: rows vs summary, identical embeddings across modes and admission policies, pins,
re-encodings; a fixed step (the planned schedule) and the cost models' clock (hand-checked
TTFT, batching's saving on the clock, load sweeps)."""

import math
import os
from collections import Counter
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitkit.costs.clock as clock_module
from cost_doubles import line_call, line_costs, plan_steps
from vitkit.cache import EmbeddingCache
from vitkit.costs.clock import EncoderTime, StepClock, StepCosts
from vitkit.costs.encoder import EncoderCost
from vitkit.embed import MODES
from vitkit.request import Request
from vitkit.sim.engine import ReplayConfig, run_steps
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.latency import percentile
from vitkit.sim.replay import (compare, load_sweep, prepare, replay, replay_at_rate, replay_stream, summarize,
                               sustainable_rate, workload_trace)
from vitkit.sim.scheduler import Arrival, Scheduler, SchedulerConfig
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest, load_trace
from vitkit.sim.workload import WorkloadParams, build_requests, generate_workload

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCHED = SchedulerConfig(chunked_prefill_size=4096, long_prefill_token_threshold=1024)  # the stored traces' settings
ENCODER = FakeEncoder(hidden=8)
TOKEN_BYTES = ENCODER.bytes_per_token
# 2 ms a call + 0.01 ms a row, 1 ms bookkeeping a step, 0.1 ms a prefill token
COSTS = line_costs(per_call_ms=2.0, ms_per_row=0.01, bookkeeping_ms=1.0, prefill_ms_per_token=0.1)
IMAGES = {"p": ImageSpec(448, 448), "q": ImageSpec(448, 448)}  # 256 rows each


class CountingEncoder(FakeEncoder):
    """Fake encoder that counts how often each content hash is encoded."""

    def __init__(self):
        super().__init__(hidden=8)
        self.encoded = Counter()

    def __call__(self, items):
        self.encoded.update(item.hash for item in items)
        return super().__call__(items)


def config(cache_tokens: int, mode: str = "batched", pin: bool = True, scheduler: SchedulerConfig = SCHED) -> ReplayConfig:
    return ReplayConfig(scheduler, mode=mode, pin=pin, cache_tokens=cache_tokens)


def grid(cache_tokens, pins=(True, False)) -> list[ReplayConfig]:
    """Both modes x ``cache_tokens`` x ``pins``, as ``python -m vitkit.sim`` compares them."""
    return [config(t, m, p) for m in MODES for t in cache_tokens for p in pins]


@pytest.fixture(scope="module")
def catalog():
    return prepare("product-catalog")


@pytest.fixture(scope="module")
def planned(catalog):
    """The schedule every fixed-step replay of the catalog runs."""
    return plan_steps(catalog.arrivals, SCHED)


def test_summary_agrees_with_rows_and_cache(catalog, planned):
    run = replay_stream(catalog, config(6144, "per_request", pin=False), encoder=ENCODER)
    s, rows = run.summary, run.rows
    assert s.steps == len(rows) == len(planned)
    assert s.hits == sum(r.hits for r in rows) == run.cache_stats.hits
    assert s.misses == sum(r.misses for r in rows) == run.cache_stats.misses
    assert s.evictions == sum(r.evictions for r in rows) == run.cache_stats.evictions
    assert s.refused_puts == sum(r.refused_puts for r in rows) == run.cache_stats.rejected
    assert s.items_touched == s.hits + s.misses == sum(len(w.items) for w in run.window_rows)
    assert s.hits == sum(sum(w.hit) for w in run.window_rows)
    assert s.hit_rate == pytest.approx(s.hits / s.items_touched)
    assert s.encoder_calls == sum(len(r.call_tokens) for r in rows)
    assert s.encoded_tokens == sum(sum(r.call_tokens) for r in rows)
    assert s.tokens == sum(stop - start for r in rows for _, start, stop in r.windows)
    assert s.tokens == sum(req.prompt_len for req in catalog.requests.values())  # no aborts in this trace
    assert s.peak_cache_bytes == max(r.cache_bytes for r in rows) <= 6144 * TOKEN_BYTES
    assert s.encoder_ms == pytest.approx(sum(r.encoder_ms for r in rows))
    assert s.forced_grants == 0  # legacy admission never forces
    # every encode is either the first of its hash or a re-encoding
    assert s.re_encodings == s.encoded_items - len(_encoded_hashes(catalog, run))
    assert s.re_encodings > 0 and s.request_re_encodings > 0  # a cache this small loses images
    # the cache is sized in embedding rows of the encoder's width
    assert run.config.cache_tokens == 6144 and run.capacity_bytes == 6144 * TOKEN_BYTES
    assert summarize(rows, s.forced_grants) == s
    # one table row: the settings, the latency summary and the totals
    record = run.record()
    assert (record["mode"], record["pin"], record["cache_tokens"], record["refused_puts"]) == ("per_request", False, 6144, s.refused_puts)
    assert record["ttft_p99_ms"] == run.latency.ttft_p99_ms and record["arrivals"] == "trace times"


def _encoded_hashes(stream, run):
    """Distinct hashes encoded in a run: items touched by a window that missed."""
    hashes = set()
    for w in run.window_rows:
        items = stream.requests[w.rid].items
        hashes |= {items[k].hash for k, hit in zip(w.items, w.hit) if not hit}
    return hashes


def expected_window(request, start, stop, encoder):
    """The window's rows computed directly from whole-item embeddings (no cache, no batching)."""
    pieces = []
    for item, span in zip(request.items, request.spans):
        lo, hi = max(span.start, start), min(span.stop, stop)
        if lo < hi:
            pieces.append(encoder.embed(item)[lo - span.start : hi - span.start])
    return torch.cat(pieces) if pieces else None


@pytest.mark.parametrize("cache_tokens, pin", [(2048, True), (6144, False), (100_000, True)])
def test_modes_return_identical_embeddings_for_every_window(catalog, planned, cache_tokens, pin):
    runs = [replay_stream(catalog, config(cache_tokens, m, pin), encoder=ENCODER, keep_embeddings=True) for m in MODES]
    batched, per_request = (r.embeddings for r in runs)
    assert batched.keys() == per_request.keys()
    assert len(batched) == sum(len(s.windows) for s in planned)
    for step in planned:
        for w in step.windows:
            a, b = batched[(step.index, w.rid)], per_request[(step.index, w.rid)]
            want = expected_window(catalog.requests[w.rid], w.start, w.stop, ENCODER)
            if want is None:
                assert a is None and b is None
            else:
                assert torch.equal(a, b) and torch.equal(a, want)


def test_batched_makes_fewer_encoder_calls(catalog):
    runs = compare(catalog, grid([8192], pins=(True,)), encoder=ENCODER, progress=False)
    by_mode = {r.config.mode: r.summary for r in runs}
    assert by_mode["batched"].encoder_calls < by_mode["per_request"].encoder_calls
    assert [r.record()["mode"] for r in runs] == ["batched", "per_request"]


def test_abort_mid_prompt_leaves_no_pins():
    # "big" (576 tokens) straddles the first window [0, 512): it is pinned for A's next window,
    # which never comes: A is aborted before step 1.
    images = {"big": ImageSpec(672, 672), "small": ImageSpec(224, 224)}
    trace = Trace("abort", (
        TraceRequest("A", 0.0, (100, "big", 100), abort_ms=10.0),
        TraceRequest("B", 20.0, (8, "small", 8)),
    ), images)
    stream = prepare(trace)
    for mode in MODES:
        run = replay_stream(stream, config(10_000, mode, scheduler=SchedulerConfig(512)), step_ms=20.0, encoder=ENCODER)
        assert run.rows[0].windows == (("A", 0, 512),)
        assert run.rows[0].pinned_bytes == 576 * TOKEN_BYTES  # the straddling image is pinned for A
        assert run.rows[1].aborted == ("A",)
        assert run.rows[1].pinned_bytes == 0
        assert run.cache.pinned_by("A") == frozenset() and run.cache_stats.pinned_bytes == 0
        assert "A" not in {rid for r in run.rows[1:] for rid, _, _ in r.windows}
        assert run.latency.requests == 2 and run.latency.finished == 1  # an aborted request has no TTFT


def test_every_run_ends_with_no_pins(catalog):
    for run in compare(catalog, grid([2048, 8192]), encoder=ENCODER, progress=False):
        assert run.cache_stats.pinned_bytes == 0
        assert run.rows[-1].pinned_bytes == 0


def test_a_cache_of_no_rows_holds_nothing(catalog):
    run = replay_stream(catalog, config(0, "per_request"), encoder=ENCODER)
    assert run.summary.peak_cache_bytes == 0 and run.summary.hits == 0
    assert run.summary.refused_puts == run.summary.encoded_items > 0  # every put refused
    with pytest.raises(ValueError, match="cache_tokens must be a non-negative int, got -1"):
        ReplayConfig(cache_tokens=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        ReplayConfig(mode="per-request")


def test_an_encoder_without_a_row_width_needs_row_bytes(catalog):
    class NoWidth:
        """An encoder that does not say how wide its rows are."""

        def __call__(self, items):
            return ENCODER(items)

    clock = StepClock(step_ms=50.0)
    with pytest.raises(ValueError, match="has no hidden_size/dtype: give row_bytes"):
        replay(catalog.requests, catalog.arrivals, config(8192), clock, NoWidth())
    run = replay(catalog.requests, catalog.arrivals, config(8192), StepClock(step_ms=50.0), NoWidth(), row_bytes=TOKEN_BYTES)
    assert run.capacity_bytes == 8192 * TOKEN_BYTES
    untimed = {"encoder_ms": 0.0, "bookkeeping_ms": 0.0}  # CPU wall times, not the same twice
    want = replay_stream(catalog, config(8192), encoder=ENCODER).summary
    assert replace(run.summary, **untimed) == replace(want, **untimed)


MAX_IMAGE_TOKENS = 24 * 24  # 672x672


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    max_running=st.integers(1, 4),
    cap=st.sampled_from([64, 128, 256, 512]),
    mode=st.sampled_from(["batched", "per_request"]),
)
def test_pinning_encodes_each_item_once_when_the_cache_holds_the_pinned_set(seed, max_running, cap, mode):
    # Distinct images only (no repeats, one turn): an item is encoded twice only if it was lost
    # between two windows of its request. Pinned set <= 2 images per running request (old and new
    # straddler within a step) plus room for one more put.
    params = WorkloadParams(num_requests=8, arrival_rate_per_s=100.0, images_per_request=(1, 3),
                            image_sizes=((448, 448), (672, 672)), text_tokens=(4, 40), seed=seed)
    scheduler = SchedulerConfig(1024, max_running=max_running, long_prefill_token_threshold=cap)
    encoder = CountingEncoder()
    run = replay_stream(prepare(generate_workload(params)),
                        config((2 * max_running + 1) * MAX_IMAGE_TOKENS, mode, pin=True, scheduler=scheduler), encoder=encoder)
    assert run.summary.refused_puts == 0
    assert run.summary.request_re_encodings == 0 and run.summary.re_encodings == 0
    assert max(encoder.encoded.values()) == 1


def test_pinning_matters_when_off():
    # the same kind of stream as above, pin off: other requests' encodes evict straddling images
    params = WorkloadParams(num_requests=16, arrival_rate_per_s=200.0, images_per_request=(2, 3),
                            image_sizes=((672, 672),), text_tokens=(4, 20), seed=1)
    stream = prepare(generate_workload(params))
    scheduler = SchedulerConfig(1024, max_running=8, long_prefill_token_threshold=128)
    on = replay_stream(stream, config(9 * MAX_IMAGE_TOKENS, "per_request", True, scheduler), encoder=ENCODER).summary
    off = replay_stream(stream, config(9 * MAX_IMAGE_TOKENS, "per_request", False, scheduler), encoder=ENCODER).summary
    assert on.refused_puts == 0
    assert on.request_re_encodings == on.re_encodings == 0 < off.request_re_encodings


def test_re_encodings_pin_on_vs_off_on_the_catalog_trace(catalog):
    # Reference numbers for the notes (fake items: Qwen-like token counts; cache of 6144 tokens).
    found = {}
    for mode in MODES:
        for pin in (True, False):
            s = replay_stream(catalog, config(6144, mode, pin), encoder=ENCODER).summary
            found[(mode, pin)] = (s.re_encodings, s.request_re_encodings, s.refused_puts)
    print("re-encodings (all, within a request, refused puts):", found)
    on, off = found[("per_request", True)], found[("per_request", False)]
    assert on[0] <= off[0] and on[1] <= off[1]
    assert on[1] < off[1]  # the legacy path loses straddling images without pins
    # with a cache that holds the pinned set, pinning leaves no re-encoding within a request
    for mode in MODES:
        s = replay_stream(catalog, config(12288, mode, pin=True), encoder=ENCODER).summary
        assert s.refused_puts == 0 and s.request_re_encodings == 0


def test_real_tiny_encoder_gives_the_same_windows_in_both_modes():
    # Bit-identical for the fake encoder (above); a real encoder run on differently sized batches
    # takes other GEMM blockings, so float32 rounding may differ (seen: <= 5e-8 on CPU).
    encoders = pytest.importorskip("vitkit.encoders")
    from vitkit.sim.workload import processing_items

    encoder = encoders.build_encoder("qwen2.5-vl-tiny")
    params = WorkloadParams(num_requests=5, image_sizes=((224, 224), (336, 224)), images_per_request=(1, 2),
                            repeat_share=0.4, text_tokens=(4, 16), seed=2)
    stream = prepare(generate_workload(params), make_item=processing_items("qwen2.5-vl-tiny"))
    scheduler = SchedulerConfig(96, long_prefill_token_threshold=40)
    runs = [replay_stream(stream, config(10**6, m, scheduler=scheduler), encoder=encoder, keep_embeddings=True) for m in MODES]
    assert runs[0].summary.encoder_calls < runs[1].summary.encoder_calls
    assert runs[0].embeddings.keys() == runs[1].embeddings.keys()
    for key, a in runs[0].embeddings.items():
        b = runs[1].embeddings[key]
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6), key
    # no cost models: the encoder's own measured time
    assert all(r.encoder_ms >= 0 for r in runs[0].rows) and runs[0].summary.encoder_ms > 0
    assert runs[0].sources == "fixed 50.0 ms steps, measured encoder"


# ---------------------------------------------------------------- the step loop and its clock


def test_default_duration_replays_the_planned_schedule_in_every_configuration(catalog, planned):
    want = [(s.index, s.time_ms, tuple((w.rid, w.start, w.stop) for w in s.windows)) for s in planned]
    for run in compare(catalog, grid([2048]), encoder=ENCODER, progress=False):
        assert [(r.step, r.time_ms, r.windows) for r in run.rows] == want
        assert all(r.duration_ms == 50.0 for r in run.rows if r.windows)


def test_window_rows_are_the_outcomes_and_add_up_to_the_step_rows(catalog):
    for mode in MODES:
        run = replay_stream(catalog, config(2048, mode, pin=False), encoder=ENCODER)
        by_step = {}
        for w in run.window_rows:
            by_step.setdefault(w.step, []).append(w)
            assert w.hit == tuple(f == "hit" for f in w.fates)
            assert all(a <= (f in ("encoded", "re-encoded")) for f, a in zip(w.fates, w.again))
            assert all(a for f, a in zip(w.fates, w.again) if f == "re-encoded")  # lost: encoded before in the run
        for row in run.rows:
            windows = by_step.get(row.step, [])
            fates = [f for w in windows for f in w.fates]
            assert [(w.rid, w.start, w.stop) for w in windows] == list(row.windows)
            assert fates.count("hit") == row.hits and len(fates) - row.hits == row.misses
            assert fates.count("encoded") + fates.count("re-encoded") == row.encoded_items
            # lost lookups per window; one encode can serve several windows that lost it, and counts once
            assert sum(w.lost for w in windows) >= row.request_re_encodings >= fates.count("re-encoded")
            assert sum(sum(w.again) for w in windows) == row.re_encodings
            assert row.request_re_encodings <= row.re_encodings <= row.encoded_items  # "of those" re-encodings
        assert run.summary.request_re_encodings > 0


def test_closed_loop_a_costly_step_delays_the_next_one():
    # The clock moves by what each step cost: 1 ms per encoded token plus 5 ms. B arrives at 100 ms;
    # with 50 ms steps A's first two steps are done by then, with the encode-heavy clock only one is.
    images = {"big": ImageSpec(672, 672)}  # 576 tokens
    trace = Trace("closed", (TraceRequest("A", 0.0, (100, "big", 400)), TraceRequest("B", 100.0, (8, "big", 8))), images)
    stream = prepare(trace)
    settings_ = config(10_000, scheduler=SchedulerConfig(256, long_prefill_token_threshold=128))
    fixed = replay_stream(stream, settings_, step_ms=50.0, encoder=ENCODER)
    costly = replay_stream(stream, settings_, line_costs(per_call_ms=0.0, ms_per_row=1.0, bookkeeping_ms=5.0,
                                                         prefill_ms_per_token=0.0), encoder=ENCODER)
    assert [r.time_ms for r in fixed.rows[:3]] == [0.0, 50.0, 100.0]
    assert [r.duration_ms for r in costly.rows[:2]] == [5.0 + 576, 5.0]
    assert (costly.rows[0].encoder_ms, costly.rows[0].prefill_ms, costly.rows[0].bookkeeping_ms) == (576.0, 0.0, 5.0)
    assert [r.time_ms for r in costly.rows[:3]] == [0.0, 581.0, 586.0]
    for run in (fixed, costly):  # each step starts where the last one's duration ended
        assert all(b.time_ms == a.time_ms + a.duration_ms for a, b in zip(run.rows, run.rows[1:]))
    # B joins in the first step at or after its arrival: step 2 with 50 ms steps, step 1 here
    assert fixed.rows[2].admitted == ("B",) and costly.rows[1].admitted == ("B",)
    # B's image was encoded for A already: a hit, in both
    assert costly.rows[1].encoder_calls == 0


def _loop(catalog, policy, cache_tokens=8192):
    for arrival in catalog.arrivals:
        policy.add(arrival)
    cache = EmbeddingCache(cache_tokens * TOKEN_BYTES)
    return list(run_steps(catalog.requests, policy, ENCODER, cache, ReplayConfig(SCHED), StepClock(step_ms=50.0)))


def test_policy_sees_the_requests_and_the_live_cache(catalog):
    seen = []

    class Watching(Scheduler):
        def schedule(self, now_ms, view=None):
            seen.append((set(view.requests), view.cache.bytes))
            return super().schedule(now_ms, view)

    ran = _loop(catalog, Watching(4096, long_prefill_token_threshold=1024))
    assert all(rids == set(catalog.requests) for rids, _ in seen)
    assert [b for _, b in seen[1 : len(ran)]] == [r.after.bytes for r in ran[:-1]]


def test_bad_durations_and_stalling_policies_are_named(catalog):
    with pytest.raises(ValueError, match="step_ms must be a finite number > 0, got 0"):
        replay_stream(catalog, config(8192), step_ms=0)
    with pytest.raises(ValueError, match="step_ms must be a finite number > 0, got nan"):
        StepClock(step_ms=float("nan"))
    with pytest.raises(ValueError, match="without cost models needs a fixed step_ms"):
        StepClock()

    class Stalling(Scheduler):
        def schedule(self, now_ms, view=None):
            return None  # never admits anyone

    policy = Stalling(64)
    policy.add(Arrival("A", 3))
    loop = run_steps({"A": Request("A", (), (), prompt_len=3)}, policy, ENCODER, EmbeddingCache(1024), ReplayConfig(),
                     StepClock(step_ms=50.0))
    with pytest.raises(RuntimeError, match="policy Stalling ran nothing at 0.0 ms and has no later arrival"):
        list(loop)



class NotANumber:
    """A prefill model gone wrong: its step costs NaN ms."""

    source = "broken"

    def step_ms(self, windows):
        return float("nan")


def test_a_step_time_that_is_not_a_number_is_named(catalog):
    costs = StepCosts(EncoderCost(line_call(0.0, 0.0), 0.0, "test"), NotANumber())
    with pytest.raises(ValueError, match=r"step 0.*finite number >= 0, got nan"):
        replay_stream(catalog, config(8192), costs)


# ---------------------------------------------------------------- the cost models' clock


def _trace(*requests):
    return Trace("tiny", tuple(requests), IMAGES)


def test_hand_checked_clock_queueing_and_the_step_that_finishes_a_prompt():
    trace = _trace(TraceRequest("a", 0.0, (10, "p", 10)), TraceRequest("b", 5.0, (20,)))
    run = replay_stream(trace, ReplayConfig(SchedulerConfig(200)), COSTS)
    s0, s1 = run.rows
    # step 0 at 0 ms: a's [0, 200) -> one call of 256 rows (2 + 2.56) + 200 tokens (20) + 1
    assert (s0.time_ms, s0.encoder_ms, s0.prefill_ms, s0.bookkeeping_ms) == (0.0, pytest.approx(4.56), pytest.approx(20.0), 1.0)
    assert s0.duration_ms == pytest.approx(25.56)
    # step 1 at 25.56 ms: a's [200, 276) (its image is a hit) and b's [0, 20): 96 tokens
    assert s1.time_ms == pytest.approx(25.56) and s1.encoder_ms == 0.0 and s1.prefill_ms == pytest.approx(9.6)
    a, b = sorted(run.requests, key=lambda r: r.rid)
    assert (a.queue_ms, a.ttft_ms, a.last_step) == (0.0, pytest.approx(36.16), 1)
    assert (b.queue_ms, b.ttft_ms, b.first_step) == (pytest.approx(20.56), pytest.approx(31.16), 1)
    assert "decode" in run.latency.note
    assert run.sources == COSTS.label() == "encoder: test; prefill: test double"


def test_a_fixed_step_with_cost_models_keeps_the_schedule_and_models_the_parts():
    trace = _trace(TraceRequest("a", 0.0, (10, "p", 10)), TraceRequest("b", 5.0, (20,)))
    run = replay_stream(trace, ReplayConfig(SchedulerConfig(200)), COSTS, step_ms=50.0)
    assert [(r.time_ms, r.duration_ms) for r in run.rows] == [(0.0, 50.0), (50.0, 50.0)]
    assert (run.rows[0].encoder_ms, run.rows[0].prefill_ms) == (pytest.approx(4.56), pytest.approx(20.0))


def test_the_encoders_own_time_instead_of_the_model():
    class Reporting(FakeEncoder):
        """An encoder that says each call took 7 ms (as a GPU encoder's timer would)."""

        calls = 0

        def __call__(self, items):
            self.calls += 1
            return super().__call__(items)

        def take_time(self):
            ms, self.calls = 7.0 * self.calls, 0
            return EncoderTime(ms, ms)

    trace = _trace(TraceRequest("a", 0.0, (10, "p")), TraceRequest("b", 0.0, (10, "q")))
    stream = prepare(trace)
    clock = StepClock(COSTS, encoder_measured=True)
    run = replay(stream.requests, stream.arrivals, ReplayConfig(SchedulerConfig(1000), mode="per_request"), clock, Reporting(8))
    (row,) = run.rows
    # the encoder's 7 ms a call, the modelled prefill and bookkeeping
    assert (row.encoder_calls, row.encoder_ms, row.prefill_ms, row.bookkeeping_ms) == (2, 14.0, pytest.approx(53.2), 1.0)
    assert row.duration_ms == pytest.approx(14.0 + 53.2 + 1.0)


def test_batching_saves_the_per_call_cost_on_the_clock():
    trace = _trace(TraceRequest("a", 0.0, (10, "p")), TraceRequest("b", 0.0, (10, "q")))
    ttft = {}
    for mode in MODES:
        run = replay_stream(trace, ReplayConfig(SchedulerConfig(1000), mode=mode), COSTS)
        ttft[mode] = run.latency.ttft_p50_ms
        assert run.rows[0].encoder_ms == pytest.approx((1 if mode == "batched" else 2) * 2.0 + 5.12)
    assert ttft["per_request"] - ttft["batched"] == pytest.approx(2.0)


def test_modelled_encoder_time_follows_the_model_on_a_trace(catalog):
    # the same windows in both modes (a fixed step); batching encodes about the same rows in fewer calls
    costs = line_costs(per_call_ms=1.5, ms_per_row=0.004)
    runs = {m: replay_stream(catalog, config(8192, m), costs, step_ms=50.0) for m in MODES}
    for run in runs.values():
        for r in run.rows:
            assert r.encoder_ms == pytest.approx(sum(costs.encoder.call.call_ms([t]) for t in r.call_tokens))
        assert run.summary.encoder_ms == pytest.approx(math.fsum(r.encoder_ms for r in run.rows))
    assert [r.windows for r in runs["batched"].rows] == [r.windows for r in runs["per_request"].rows]
    batched, per_request = runs["batched"].summary, runs["per_request"].summary
    assert batched.encoder_calls < per_request.encoder_calls
    assert batched.encoder_ms < per_request.encoder_ms
    calls, rows = per_request.encoder_calls - batched.encoder_calls, per_request.encoded_tokens - batched.encoded_tokens
    assert per_request.encoder_ms - batched.encoder_ms == pytest.approx(1.5 * calls + 0.004 * rows)


def test_an_image_encoded_twice_in_one_step_is_a_re_encoding():
    # per-request mode, a cache too small for the image: b's window encodes p again in step 0
    trace = _trace(TraceRequest("a", 0.0, (10, "p")), TraceRequest("b", 0.0, (10, "p")))
    run = replay_stream(trace, ReplayConfig(SchedulerConfig(1000), mode="per_request", cache_tokens=100), COSTS)
    assert len(run.rows) == 1
    assert (run.summary.encoded_items, run.summary.re_encodings, run.summary.request_re_encodings) == (2, 1, 0)


def test_shadow_costs_read_each_steps_calls_once(monkeypatch):
    reads = []
    real = clock_module.call_item_rows
    monkeypatch.setattr(clock_module, "call_item_rows", lambda *args: reads.append(1) or real(*args))
    stream = prepare(_trace(TraceRequest("a", 0.0, (10, "p", 10)), TraceRequest("b", 5.0, (20,))))
    run = replay(stream.requests, stream.arrivals, ReplayConfig(SchedulerConfig(200)), StepClock(COSTS, shadow=COSTS))
    assert len(reads) == len(run.rows) == 2
    assert [ms for ms, _, _ in run.shadow] == [st.encoder_ms for st in run.rows]
    assert [pre for _, pre, _ in run.shadow] == [st.prefill_ms for st in run.rows]
    assert [calls for _, _, calls in run.shadow] == [[[256]], []]


@pytest.fixture(scope="module")
def catalog_runs():
    trace = load_trace("product-catalog")
    base = config(4096)
    return {(m, p): replay_stream(trace, replace(base, mode=m, scheduler=replace(SCHED, policy=p)), COSTS, keep_embeddings=True)
            for m in MODES for p in ("legacy", "cache-aware")}


def test_summary_agrees_with_rows(catalog_runs):
    for run in catalog_runs.values():
        s, rows = run.latency, run.requests
        ttft = [r.ttft_ms for r in rows]
        assert s.finished == len(rows) == 48 and s.steps == len(run.rows) == run.summary.steps
        assert s.ttft_p99_ms == pytest.approx(percentile(ttft, 99)) and s.ttft_p50_ms == pytest.approx(percentile(ttft, 50))
        assert s.encoder_share == pytest.approx(sum(t.encoder_ms for t in run.rows) / sum(t.duration_ms for t in run.rows))
        assert s.prefill_share == pytest.approx(sum(t.prefill_ms for t in run.rows) / sum(t.duration_ms for t in run.rows))
        assert all(r.ttft_ms >= r.queue_ms >= 0 for r in rows)
        ends = {t.step: t.end_ms for t in run.rows}
        assert all(r.ttft_ms == pytest.approx(ends[r.last_step] - r.arrival_ms) for r in rows)
        assert sum(r.prompt_tokens for r in rows) == sum(t.tokens for t in run.rows)


def _prompt_embeddings(run):
    """Each request's image rows, its windows' chunks concatenated in step order."""
    chunks = {}
    for (step, rid), emb in sorted(run.embeddings.items(), key=lambda kv: kv[0][0]):
        if emb is not None:
            chunks.setdefault(rid, []).append(emb)
    return {rid: torch.cat(parts) for rid, parts in chunks.items()}


def test_both_policies_and_modes_give_identical_embeddings(catalog_runs):
    trace = load_trace("product-catalog")
    reference = _prompt_embeddings(catalog_runs[("batched", "legacy")])
    requests = build_requests(trace)
    assert set(reference) == set(requests)
    for rid, emb in reference.items():
        assert emb.shape[0] == requests[rid].image_tokens
    for key, run in catalog_runs.items():
        got = _prompt_embeddings(run)
        assert set(got) == set(reference), key
        for rid in reference:
            assert torch.equal(got[rid], reference[rid]), (key, rid)


def test_cache_aware_cuts_windows_and_never_refuses_a_put(catalog_runs):
    for mode in MODES:
        legacy, aware = catalog_runs[(mode, "legacy")], catalog_runs[(mode, "cache-aware")]
        assert aware.summary.refused_puts == 0 and aware.summary.request_re_encodings == 0
        assert legacy.summary.refused_puts > 0  # the tight cache hurts today's policy
        assert legacy.summary.forced_grants == 0


@pytest.mark.parametrize("trace_name", ["product-catalog", "chat-multiturn"])
@pytest.mark.parametrize("mode", ["batched", "per_request"])
def test_zero_re_encodings_within_a_request_on_stored_traces(trace_name, mode):
    run = replay_stream(load_trace(trace_name), config(8192, mode, scheduler=replace(SCHED, policy="cache-aware")), COSTS)
    assert run.summary.request_re_encodings == 0 and run.summary.refused_puts == 0
    requests = load_trace(trace_name).requests
    assert run.latency.finished + sum(r.abort_ms is not None for r in requests) >= len(requests)


def test_oversized_image_refused_up_front():
    trace = _trace(TraceRequest("a", 0.0, (10, "p")))
    with pytest.raises(ValueError, match="request 'a' item 0: .*more than the whole cache"):
        replay_stream(trace, ReplayConfig(SchedulerConfig(policy="cache-aware"), cache_tokens=255), COSTS)
    replay_stream(trace, ReplayConfig(SchedulerConfig(policy="legacy"), cache_tokens=255), COSTS)  # today's policy just re-encodes


def test_load_sweep_latency_grows_with_rate_and_sustainable_rate():
    trace = workload_trace("small-images", 60)
    points = load_sweep(trace, [5, 500], COSTS, [ReplayConfig()], progress=False)
    low, high = sorted(points, key=lambda p: p.rate_per_s)
    assert high.run.latency.ttft_p99_ms > low.run.latency.ttft_p99_ms
    assert low.run.arrivals == "poisson 5/s" and low.workload == "small-images"
    best, tried = sustainable_rate(trace, COSTS, ReplayConfig(), bound_ms=low.run.latency.ttft_p99_ms * 1.5,
                                   rates=[5, 500], refine=3)
    assert 5 <= best < 500 and len(tried) == 5


def test_replay_at_rate_is_seeded():
    trace = workload_trace("large-images", 20)
    one = replay_at_rate(trace, 3.0, COSTS, ReplayConfig(), seed=1)
    two = replay_at_rate(trace, 3.0, COSTS, ReplayConfig(), seed=1)
    assert one.summary == two.summary and one.latency == two.latency
    assert replay_at_rate(trace, 3.0, COSTS, ReplayConfig(), seed=2).latency != one.latency


def test_reading_says_what_running_requests_read_and_how_far_ahead():
    from vitkit.sim.engine import Reading
    from vitkit.sim.fake import fake_item
    from vitkit.sim.scheduler import Step, Window

    a, b, c = (fake_item(name, 56, 56) for name in "abc")  # 4 rows each
    requests = {"r": Request("r", (a, b), ((2, 6), (16, 20)), 20), "s": Request("s", (b, c), ((0, 4), (7, 11)), 11)}
    reading = Reading(requests)
    first = Step(0, 0.0, (Window("r", 0, 4),), ("r",), (), ())
    assert reading.ahead(first) == {a.hash: 2, b.hash: 16}  # r reads a at 2, b at 16 tokens from its start
    reading.ran(first)
    second = Step(1, 50.0, (Window("r", 4, 12), Window("s", 0, 4)), ("s",), (), ())
    assert reading.ahead(second) == {a.hash: 0, b.hash: 0, c.hash: 7}  # a begun; s reads b now
    reading.ran(second)
    third = Step(2, 100.0, (Window("s", 4, 11),), (), (), ("r",))  # r aborted: it reads nothing more
    assert reading.ahead(third) == {c.hash: 3}
    reading.ran(replace(third, finished=("s",)))
    assert reading.done == {}
