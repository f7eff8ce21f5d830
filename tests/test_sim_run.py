"""Replaying streams: rows vs summary, identical embeddings across modes, pins, re-encodings."""

import os
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.request import Request
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.run import StepRow, compare, prepare, replay, simulate, summarize, summary_records
from vitkit.sim.scheduler import Arrival, Scheduler
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest
from vitkit.sim.workload import WorkloadParams, generate_workload

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRACE_SETTINGS = {"chunked_prefill_size": 4096, "long_prefill_token_threshold": 1024}
ENCODER = FakeEncoder(hidden=8)
TOKEN_BYTES = ENCODER.bytes_per_token


class CountingEncoder(FakeEncoder):
    """Fake encoder that counts how often each content hash is encoded."""

    def __init__(self):
        super().__init__(hidden=8)
        self.encoded = Counter()

    def __call__(self, items):
        self.encoded.update(item.hash for item in items)
        return super().__call__(items)


@pytest.fixture(scope="module")
def catalog():
    return prepare("product-catalog", **TRACE_SETTINGS)


def test_summary_agrees_with_rows_and_cache(catalog):
    run = simulate(catalog, 6144 * TOKEN_BYTES, encoder=ENCODER, mode="per_request", pin=False)
    s, rows = run.summary, run.rows
    assert s.steps == len(rows) == len(catalog.steps)
    assert s.hits == sum(r.hits for r in rows) == run.cache_stats.hits
    assert s.misses == sum(r.misses for r in rows) == run.cache_stats.misses
    assert s.evictions == sum(r.evictions for r in rows) == run.cache_stats.evictions
    assert s.rejected == run.cache_stats.rejected
    assert s.items_touched == s.hits + s.misses == sum(len(w.items) for w in run.window_rows)
    assert s.hits == sum(sum(w.hit) for w in run.window_rows)
    assert s.hit_rate == pytest.approx(s.hits / s.items_touched)
    assert s.encoder_calls == sum(len(r.call_tokens) for r in rows)
    assert s.encoded_tokens == sum(sum(r.call_tokens) for r in rows)
    assert s.tokens == sum(stop - start for r in rows for _, start, stop in r.windows)
    assert s.tokens == sum(req.prompt_len for req in catalog.requests.values())  # no aborts in this trace
    assert s.peak_cache_bytes == max(r.cache_bytes for r in rows) <= 6144 * TOKEN_BYTES
    assert s.encoder_ms == pytest.approx(sum(r.encoder_ms for r in rows))
    # every encode is either the first of its hash or a re-encoding
    assert s.re_encodings == s.encoded_items - len(_encoded_hashes(catalog, run))
    assert s.re_encodings > 0 and s.request_re_encodings > 0  # a cache this small loses images
    records = run.to_records()
    assert len(records) == len(rows) and records[3]["step"] == rows[3].step and set(records[0]) == set(StepRow.__dataclass_fields__)
    assert s.capacity_tokens == 6144
    assert summarize(rows, s.mode, s.pin, s.capacity_bytes, TOKEN_BYTES) == s


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


@pytest.mark.parametrize("capacity_tokens, pin", [(2048, True), (6144, False), (100_000, True)])
def test_modes_return_identical_embeddings_for_every_window(catalog, capacity_tokens, pin):
    runs = [
        simulate(catalog, capacity_tokens * TOKEN_BYTES, encoder=ENCODER, mode=m, pin=pin, keep_embeddings=True)
        for m in ("batched", "per_request")
    ]
    batched, per_request = (r.embeddings for r in runs)
    assert batched.keys() == per_request.keys()
    assert len(batched) == sum(len(s.windows) for s in catalog.steps)
    for step in catalog.steps:
        for w in step.windows:
            a, b = batched[(step.index, w.rid)], per_request[(step.index, w.rid)]
            want = expected_window(catalog.requests[w.rid], w.start, w.stop, ENCODER)
            if want is None:
                assert a is None and b is None
            else:
                assert torch.equal(a, b) and torch.equal(a, want)


def test_batched_makes_fewer_encoder_calls(catalog):
    runs = compare(catalog, [8192 * TOKEN_BYTES], encoder=ENCODER, pins=(True,), progress=False)
    by_mode = {r.summary.mode: r.summary for r in runs}
    assert by_mode["batched"].encoder_calls < by_mode["per_request"].encoder_calls
    assert len(summary_records(runs)) == 2


def test_abort_mid_prompt_leaves_no_pins():
    # "big" (576 tokens) straddles the first window [0, 512): it is pinned for A's next window,
    # which never comes: A is aborted before step 1.
    images = {"big": ImageSpec(672, 672), "small": ImageSpec(224, 224)}
    trace = Trace("abort", (
        TraceRequest("A", 0.0, (100, "big", 100), abort_ms=10.0),
        TraceRequest("B", 20.0, (8, "small", 8)),
    ), images)
    stream = prepare(trace, chunked_prefill_size=512, step_ms=20.0)
    for mode in ("batched", "per_request"):
        run = simulate(stream, 10_000 * TOKEN_BYTES, encoder=ENCODER, mode=mode)
        assert run.rows[0].windows == (("A", 0, 512),)
        assert run.rows[0].pinned_bytes == 576 * TOKEN_BYTES  # the straddling image is pinned for A
        assert run.rows[1].aborted == ("A",)
        assert run.rows[1].pinned_bytes == 0
        assert run.cache.pinned_by("A") == frozenset() and run.cache_stats.pinned_bytes == 0
        assert "A" not in {rid for r in run.rows[1:] for rid, _, _ in r.windows}


def test_every_run_ends_with_no_pins(catalog):
    for run in compare(catalog, [2048 * TOKEN_BYTES, 8192 * TOKEN_BYTES], encoder=ENCODER, progress=False):
        assert run.cache_stats.pinned_bytes == 0
        assert run.rows[-1].pinned_bytes == 0


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
    stream = prepare(generate_workload(params), chunked_prefill_size=1024, max_running=max_running,
                     long_prefill_token_threshold=cap)
    capacity = (2 * max_running + 1) * MAX_IMAGE_TOKENS * TOKEN_BYTES
    encoder = CountingEncoder()
    run = simulate(stream, capacity, encoder=encoder, mode=mode, pin=True)
    assert run.summary.rejected == 0
    assert run.summary.request_re_encodings == 0 and run.summary.re_encodings == 0
    assert max(encoder.encoded.values()) == 1


def test_pinning_matters_when_off():
    # the same kind of stream as above, pin off: other requests' encodes evict straddling images
    params = WorkloadParams(num_requests=16, arrival_rate_per_s=200.0, images_per_request=(2, 3),
                            image_sizes=((672, 672),), text_tokens=(4, 20), seed=1)
    stream = prepare(generate_workload(params), chunked_prefill_size=1024, max_running=8, long_prefill_token_threshold=128)
    capacity = 9 * MAX_IMAGE_TOKENS * TOKEN_BYTES
    on = simulate(stream, capacity, encoder=ENCODER, mode="per_request", pin=True).summary
    off = simulate(stream, capacity, encoder=ENCODER, mode="per_request", pin=False).summary
    assert on.rejected == 0
    assert on.request_re_encodings == on.re_encodings == 0 < off.request_re_encodings


def test_re_encodings_pin_on_vs_off_on_the_catalog_trace(catalog):
    # Reference numbers for the notes (fake items: Qwen-like token counts; cache of 6144 tokens).
    capacity = 6144 * TOKEN_BYTES
    found = {}
    for mode in ("batched", "per_request"):
        for pin in (True, False):
            s = simulate(catalog, capacity, encoder=ENCODER, mode=mode, pin=pin).summary
            found[(mode, pin)] = (s.re_encodings, s.request_re_encodings, s.rejected)
    print("re-encodings (all, within a request, rejected puts):", found)
    on, off = found[("per_request", True)], found[("per_request", False)]
    assert on[0] <= off[0] and on[1] <= off[1]
    assert on[1] < off[1]  # the legacy path loses straddling images without pins
    # with a cache that holds the pinned set, pinning leaves no re-encoding within a request
    for mode in ("batched", "per_request"):
        s = simulate(catalog, 12288 * TOKEN_BYTES, encoder=ENCODER, mode=mode, pin=True).summary
        assert s.rejected == 0 and s.request_re_encodings == 0


def test_real_tiny_encoder_gives_the_same_windows_in_both_modes():
    # Bit-identical for the fake encoder (above); a real encoder run on differently sized batches
    # takes other GEMM blockings, so float32 rounding may differ (seen: <= 5e-8 on CPU).
    encoders = pytest.importorskip("vitkit.encoders")
    from vitkit.sim.workload import processing_items

    encoder = encoders.build_encoder("qwen2.5-vl-tiny")
    params = WorkloadParams(num_requests=5, image_sizes=((224, 224), (336, 224)), images_per_request=(1, 2),
                            repeat_share=0.4, text_tokens=(4, 16), seed=2)
    stream = prepare(generate_workload(params), chunked_prefill_size=96, long_prefill_token_threshold=40,
                     make_item=processing_items("qwen2.5-vl-tiny"))
    runs = [simulate(stream, 10**8, encoder=encoder, mode=m, keep_embeddings=True) for m in ("batched", "per_request")]
    assert runs[0].summary.encoder_calls < runs[1].summary.encoder_calls
    assert runs[0].embeddings.keys() == runs[1].embeddings.keys()
    for key, a in runs[0].embeddings.items():
        b = runs[1].embeddings[key]
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6), key
    assert all(r.encoder_ms >= 0 for r in runs[0].rows) and runs[0].summary.encoder_ms > 0


# ---------------------------------------------------------------- the step loop


def test_default_duration_replays_the_planned_schedule_in_every_configuration(catalog):
    planned = [(s.index, s.time_ms, tuple((w.rid, w.start, w.stop) for w in s.windows)) for s in catalog.steps]
    for run in compare(catalog, [2048 * TOKEN_BYTES], encoder=ENCODER, progress=False):
        assert [(r.step, r.time_ms, r.windows) for r in run.rows] == planned
        assert all(r.duration_ms == 50.0 for r in run.rows if r.windows)


def test_window_rows_are_the_outcomes_and_add_up_to_the_step_rows(catalog):
    for mode in ("batched", "per_request"):
        run = simulate(catalog, 2048 * TOKEN_BYTES, encoder=ENCODER, mode=mode, pin=False)
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
            assert sum(w.lost for w in windows) == row.request_re_encodings  # distinct lost images per window
            assert fates.count("re-encoded") <= row.request_re_encodings  # a "shared" can be lost too
            assert sum(sum(w.again) for w in windows) == row.re_encodings
        assert run.summary.request_re_encodings > 0


def test_closed_loop_a_costly_step_delays_the_next_one():
    # The clock moves by what each step cost: 1 ms per encoded token plus 5 ms. B arrives at 100 ms;
    # with 50 ms steps A's first two steps are done by then, with the encode-heavy clock only one is.
    images = {"big": ImageSpec(672, 672)}  # 576 tokens
    trace = Trace("closed", (TraceRequest("A", 0.0, (100, "big", 400)), TraceRequest("B", 100.0, (8, "big", 8))), images)
    stream = prepare(trace, chunked_prefill_size=256, long_prefill_token_threshold=128, step_ms=50.0)
    fixed = simulate(stream, 10_000 * TOKEN_BYTES, encoder=ENCODER)
    costly = simulate(stream, 10_000 * TOKEN_BYTES, encoder=ENCODER,
                      step_duration=lambda step, result: 5.0 + result.encoded_tokens)
    assert [r.time_ms for r in fixed.rows[:3]] == [0.0, 50.0, 100.0]
    assert [r.duration_ms for r in costly.rows[:2]] == [5.0 + 576, 5.0]
    assert [r.time_ms for r in costly.rows[:3]] == [0.0, 581.0, 586.0]
    for run in (fixed, costly):  # each step starts where the last one's duration ended
        assert all(b.time_ms == a.time_ms + a.duration_ms for a, b in zip(run.rows, run.rows[1:]))
    # B joins in the first step at or after its arrival: step 2 with 50 ms steps, step 1 here
    assert fixed.rows[2].admitted == ("B",) and costly.rows[1].admitted == ("B",)
    # B's image was encoded for A already: a hit, in both
    assert costly.rows[1].encoder_calls == 0


def test_policy_sees_the_requests_and_the_live_cache(catalog):
    seen = []

    class Watching(Scheduler):
        def schedule(self, now_ms, view=None):
            seen.append((set(view.requests), view.cache.bytes))
            return super().schedule(now_ms, view)

    policy = Watching(4096, long_prefill_token_threshold=1024)
    for arrival in catalog.arrivals:
        policy.add(arrival)
    run = replay(catalog.requests, policy, ENCODER, 8192 * TOKEN_BYTES)
    assert all(rids == set(catalog.requests) for rids, _ in seen)
    assert [b for _, b in seen[1 : len(run.rows)]] == [r.cache_bytes for r in run.rows[:-1]]


def test_bad_durations_and_stalling_policies_are_named(catalog):
    with pytest.raises(ValueError, match="step_ms must be > 0, got 0"):
        prepare("product-catalog", step_ms=0)
    with pytest.raises(ValueError, match="step_duration must return a finite number of ms >= 0, got nan for step 0"):
        simulate(catalog, 8192 * TOKEN_BYTES, encoder=ENCODER, step_duration=lambda s, r: float("nan"))

    class Stalling(Scheduler):
        def schedule(self, now_ms, view=None):
            return None  # never admits anyone

    policy = Stalling(64)
    policy.add(Arrival("A", 3))
    with pytest.raises(RuntimeError, match="policy Stalling ran nothing at 0.0 ms and has no later arrival"):
        replay({"A": Request("A", (), (), prompt_len=3)}, policy, ENCODER, 1024)
