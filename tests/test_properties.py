"""Property tests: any prompt layout, chunk size, split into steps and cache size.

A deterministic encoder (rows derived from the item's feature and row index) makes every
re-encoding detectable and every result comparable with a reference embedding. Over whole streams of
pictures and videos, cache-aware admission never forces a window nor refuses a put when every item
fits the cache, and a video's frame groups are each encoded once.
"""

from collections import Counter
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cache_state, reference
from vitkit import EmbeddingCache, MultimodalItem, Request, embed_chunks
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.policies import ENGINE_POLICIES
from vitkit.sim.replay import prepare, replay_stream
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest

HIDDEN = 2
ROW_BYTES = HIDDEN * 4  # float32
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Scenario:
    requests: list  # Request, in arrival order
    chunk: dict  # rid -> chunk size (tokens)
    budget: int | None
    capacity_rows: int


@st.composite
def scenarios(draw, distinct_within_request=False):
    pool = draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))  # image id -> num_tokens
    n_requests = draw(st.integers(1, 5))
    requests, chunk = [], {}
    for r in range(n_requests):
        ids = st.integers(0, len(pool) - 1)
        image_ids = draw(
            st.lists(ids, max_size=min(5, len(pool)), unique=True) if distinct_within_request else st.lists(ids, max_size=5)
        )
        segments = []
        for image_id in image_ids:
            segments.append(draw(st.integers(0, 5)))
            # a fresh object per request: equal content, equal hash, as two uploads of one photo
            item = MultimodalItem(torch.tensor([float(image_id), 0.5]), pool[image_id])
            segments.append(item)
        segments.append(draw(st.integers(0 if image_ids else 1, 5)))
        requests.append(Request.from_segments(f"r{r}", segments))
        chunk[f"r{r}"] = draw(st.integers(1, 20))
    budget = draw(st.none() | st.integers(1, 30))
    total_rows = sum(pool)
    capacity_rows = draw(st.integers(1, total_rows + 8))
    return Scenario(requests, chunk, budget, capacity_rows)


class RecordingCache(EmbeddingCache):
    """Remembers which keys a put refused since ``refused`` was last cleared."""

    def __init__(self, capacity_bytes):
        super().__init__(capacity_bytes)
        self.refused = set()

    def put(self, key, embedding, pin_owner=None):
        stored = super().put(key, embedding, pin_owner)
        if not stored:
            self.refused.add(key)
        return stored


class Spy:
    """Good encoder that checks the cache's invariants every time it is called."""

    def __init__(self, cache, must_stay):
        self.cache = cache
        self.must_stay = must_stay  # keys pinned when the step began: never evicted mid-step
        self.calls = []

    def __call__(self, items):
        assert self.cache.bytes <= self.cache.capacity_bytes
        for key in self.must_stay:
            assert key in self.cache, f"pinned entry {key[:12]} evicted"
        self.calls.append(list(items))
        return [reference(it, HIDDEN) for it in items]


class Failing(Spy):
    def __init__(self, cache, must_stay, fail_on_call, how):
        super().__init__(cache, must_stay)
        self.fail_on_call, self.how = fail_on_call, how

    def __call__(self, items):
        out = super().__call__(items)
        if len(self.calls) < self.fail_on_call:
            return out
        if self.how == "raise":
            raise RuntimeError("encoder failed")
        return [o[:-1] for o in out]  # one row short


def _windows(request, size):
    return [(s, min(s + size, request.prompt_len)) for s in range(0, request.prompt_len, size)]


def _check_calls(calls, budget, mode, result):
    assert result.encoder_calls == len(calls)
    assert result.encoded_items == sum(len(c) for c in calls)
    if mode == "batched" and budget is None:
        assert len(calls) <= 1
    if mode == "batched":  # de-duplicated: each hash at most once per step
        hashes = [it.hash for c in calls for it in c]
        assert len(hashes) == len(set(hashes))
    if budget is not None:
        for call in calls:
            tokens = sum(it.num_tokens for it in call)
            assert tokens <= budget or len(call) == 1, (tokens, budget, [it.num_tokens for it in call])


def _draw_batch(data, scenario, windows, progress):
    """A non-empty subset of the unfinished requests, each at its next window, in arrival order."""
    active = [r for r in scenario.requests if progress[r.rid] < len(windows[r.rid])]
    if not active:
        return []
    chosen = data.draw(st.lists(st.booleans(), min_size=len(active), max_size=len(active)))
    picked = [r for r, c in zip(active, chosen) if c] or active[:1]
    return [(r, windows[r.rid][progress[r.rid]]) for r in picked]


def _step(data, cache, batch, mode, budget, rids):
    """One step, first tried with a failing encoder when drawn; returns (encoder, result)."""
    # pins held when the step begins must survive every encoder call, except (per-request mode)
    # those of a request of this step that finished before a later request's call released them
    in_step = {r.rid for r, _ in batch}
    holders = rids if mode == "batched" else [rid for rid in rids if rid not in in_step]
    must_stay = set().union(*(cache.pinned_by(rid) for rid in holders))
    fail = data.draw(st.sampled_from([None, None, (1, "raise"), (1, "rows"), (2, "raise"), (2, "rows")]))
    if fail is not None:
        before = cache_state(cache, rids)
        cache.refused.clear()
        encoder = Failing(cache, must_stay, *fail)
        try:  # fails only if the step makes at least `fail[0]` calls
            return encoder, embed_chunks(batch, encoder, cache, mode=mode, max_tokens_per_call=budget)
        except (RuntimeError, ValueError):
            assert cache_state(cache, rids) == before  # a failed step changes nothing
    cache.refused.clear()
    encoder = Spy(cache, must_stay)
    return encoder, embed_chunks(batch, encoder, cache, mode=mode, max_tokens_per_call=budget)


def _check_pins(cache, request, window, done, rejected_keys):
    """After a request's window: all released when done, else what it needs later is pinned."""
    if done:
        assert cache.pinned_by(request.rid) == frozenset()
        return
    for item, span in zip(request.items, request.spans):
        if span.start < window[1] and window[0] < span.stop and _needed_later(request, window, item):
            if not cache.is_pinned(item.hash, request.rid):
                # only a put the cache refused may lose what a later window needs (in per-request
                # mode a later request of the step may then have stored it, unpinned)
                assert item.hash in cache.refused, (request.rid, item.hash[:12])
                rejected_keys[request.rid].add(item.hash)


def _run(scenario, mode, data):
    """Run the scenario step by step; returns chunks per rid, encodes per (rid, hash), the
    keys each request lost to a refused put, and the cache."""
    cache = RecordingCache(scenario.capacity_rows * ROW_BYTES)
    rids = [r.rid for r in scenario.requests]
    windows = {r.rid: _windows(r, scenario.chunk[r.rid]) for r in scenario.requests}
    progress = dict.fromkeys(rids, 0)
    chunks = {rid: [] for rid in rids}
    encodes = Counter()
    rejected_keys = {rid: set() for rid in rids}
    while batch := _draw_batch(data, scenario, windows, progress):
        pinned_before = {rid: cache.pinned_by(rid) for rid in rids}
        encoder, result = _step(data, cache, batch, mode, scenario.budget, rids)
        _check_calls(encoder.calls, scenario.budget, mode, result)
        assert cache.bytes <= cache.capacity_bytes
        assert cache.bytes == sum(cache.peek(k).numel() * 4 for k in cache.keys())
        in_step = {r.rid for r, _ in batch}
        for rid in set(rids) - in_step:  # requests outside the step keep their pins and entries
            assert cache.pinned_by(rid) == pinned_before[rid]
            assert all(k in cache for k in pinned_before[rid])
        _count_encodes(encoder.calls, batch, mode, encodes)
        for (request, window), emb in zip(batch, result.embeddings):
            _check_window(request, window, emb)
            if emb is not None:
                chunks[request.rid].append(emb)
            progress[request.rid] += 1
            done = progress[request.rid] == len(windows[request.rid])
            _check_pins(cache, request, window, done, rejected_keys)
    assert cache.pinned_bytes == 0
    return chunks, encodes, rejected_keys, cache


def _needed_later(request, window, item):
    return any(it.hash == item.hash and span.stop > window[1] for it, span in zip(request.items, request.spans))


def _check_window(request, window, emb):
    touched = [(it, sp) for it, sp in zip(request.items, request.spans) if sp.start < window[1] and window[0] < sp.stop]
    if not touched:
        assert emb is None
        return
    expected = torch.cat(
        [reference(it, HIDDEN)[max(window[0], sp.start) - sp.start : min(window[1], sp.stop) - sp.start] for it, sp in touched]
    )
    assert torch.equal(emb, expected)


def _count_encodes(calls, batch, mode, encodes):
    for call in calls:
        for item in call:
            if mode == "per_request":  # the call was made for the request holding this very object
                (rid,) = [r.rid for r, _ in batch if any(it is item for it in r.items)]
                encodes[rid, item.hash] += 1
            else:  # one de-duplicated encode serves every request of the step that touches it
                for request, window in batch:
                    if any(it.hash == item.hash and sp.start < window[1] and window[0] < sp.stop
                           for it, sp in zip(request.items, request.spans)):
                        encodes[request.rid, item.hash] += 1


def _pinned_bound_rows(scenario):
    """Rows that pins can hold at once: per request, its repeated images plus two straddlers."""
    rows = 0
    for r in scenario.requests:
        counts = Counter(it.hash for it in r.items)
        sizes = {it.hash: it.num_tokens for it in r.items}
        rows += sum(sizes[h] for h, c in counts.items() if c > 1)
        rows += 2 * max(sizes.values(), default=0)
    return rows + max((it.num_tokens for r in scenario.requests for it in r.items), default=0)


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_chunks_rebuild_every_request_and_cache_invariants_hold(mode, scenario, data):
    chunks, encodes, rejected_keys, cache = _run(scenario, mode, data)
    for r in scenario.requests:
        if r.items:
            full = torch.cat([reference(it, HIDDEN) for it in r.items])
            assert torch.equal(torch.cat(chunks[r.rid]), full)
        else:
            assert chunks[r.rid] == []
    # an embedding a request needs again is encoded once for it, unless the cache refused it
    for (rid, key), n in encodes.items():
        assert n == 1 or key in rejected_keys[rid], (rid, key[:12], n)
    if scenario.capacity_rows >= _pinned_bound_rows(scenario):
        assert cache.stats().rejected == 0
        assert max(encodes.values(), default=1) == 1


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@SETTINGS
@given(scenario=scenarios(distinct_within_request=True), data=st.data())
def test_no_re_encoding_when_cache_holds_the_pinned_set(mode, scenario, data):
    scenario.capacity_rows = max(scenario.capacity_rows, _pinned_bound_rows(scenario))
    _, encodes, _, cache = _run(scenario, mode, data)
    assert cache.stats().rejected == 0
    assert all(n == 1 for n in encodes.values()), encodes


# ---------------------------------------------------------------- admission over a stream: nothing forced or refused

SIM_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def media_streams(draw, repeats_in_request=True):
    """A trace of 1-5 requests over 1-6 pictures and short videos (a video: 2-40 frames)."""
    media = {}
    for k in range(draw(st.integers(1, 6))):
        height, width = draw(st.sampled_from([224, 448, 672])), draw(st.sampled_from([224, 448, 896]))
        media[f"m{k}"] = ImageSpec(height, width, draw(st.none() | st.integers(2, 40)))
    ids = st.sampled_from(sorted(media))
    requests = []
    for r in range(draw(st.integers(1, 5))):
        shown = draw(st.lists(ids, min_size=1, max_size=4, unique=not repeats_in_request))
        segments = [part for m in shown for part in (draw(st.integers(0, 40)), m) if part != 0]
        requests.append(TraceRequest(f"r{r}", 10.0 * draw(st.integers(0, 5)), (*segments, draw(st.integers(1, 40)))))
    requests.sort(key=lambda req: req.arrival_ms)
    return Trace("drawn", tuple(requests), media)


class CountingFakeEncoder(FakeEncoder):
    """A fake encoder that counts the encodes of each content hash."""

    def __init__(self):
        super().__init__(hidden=2)
        self.encoded = Counter()

    def __call__(self, items):
        self.encoded.update(it.hash for it in items)
        return super().__call__(items)


def _replay_aware(trace, data, mode, video_items, *, pin_recurring=True):
    """``trace`` replayed under cache-aware admission with a cache every item fits (drawn), both drawn step
    sizes and per-request caps; returns the stream, the run and the counting encoder."""

    stream = prepare(trace, video_items=video_items)
    largest = max(it.num_tokens for r in stream.requests.values() for it in r.items)
    cache_rows = data.draw(st.integers(largest, 3 * largest), label="cache rows")
    step = data.draw(st.sampled_from([256, 1024, 4096]), label="step")
    cap = data.draw(st.sampled_from([None, 64, 512]), label="per-request cap")
    scheduler = SchedulerConfig(step, cap, policy="cache-aware", encoder_budget_tokens=max(step, cache_rows))
    config = ReplayConfig(scheduler, mode=mode, cache_tokens=cache_rows, pin_recurring=pin_recurring)
    encoder = CountingFakeEncoder()
    return stream, replay_stream(stream, config, encoder=encoder), encoder


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@SIM_SETTINGS
@given(trace=media_streams(), data=st.data())
def test_admission_never_forces_a_window_nor_refuses_a_put_when_every_item_fits(mode, trace, data):
    video_items = data.draw(st.sampled_from(["whole", "frame-groups:1", "frame-groups:3"]), label="video items")
    recurring = data.draw(st.booleans(), label="pin_recurring")
    stream, run, _ = _replay_aware(trace, data, mode, video_items, pin_recurring=recurring)
    s = run.summary
    assert (s.forced_grants, s.refused_puts, s.preemptions, s.refused_requests) == (0, 0, 0, 0)
    assert run.latency.finished == len(trace.requests)  # no request waits for ever
    assert run.cache_stats.pinned_bytes == 0
    if recurring:  # within a request only a hold let go for an image that could never fit beside it costs one
        assert s.request_re_encodings <= s.released_holds


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@SIM_SETTINGS
@given(trace=media_streams(repeats_in_request=False), data=st.data())
def test_no_re_encoding_within_a_request_without_preemption(mode, trace, data):
    video_items = data.draw(st.sampled_from(["whole", "frame-groups:2"]), label="video items")
    _, run, _ = _replay_aware(trace, data, mode, video_items)
    s = run.summary
    assert (s.refused_puts, s.preemptions, s.released_holds, s.request_re_encodings) == (0, 0, 0, 0)


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@SIM_SETTINGS
@given(trace=media_streams(repeats_in_request=False), data=st.data())
def test_frame_groups_of_distinct_videos_are_each_encoded_once(mode, trace, data):
    # every request shows different content: any second encode would be a frame group lost between windows
    shown: set[str] = set()
    requests = []
    for req in trace.requests:
        fresh = tuple(s for s in req.segments if not isinstance(s, str) or s not in shown)
        shown.update(s for s in req.segments if isinstance(s, str))
        requests.append(replace(req, segments=fresh if any(isinstance(s, str) or s for s in fresh) else (1,)))
    trace = replace(trace, requests=tuple(requests))
    group = data.draw(st.integers(1, 4), label="temporal patches a group")
    stream, run, encoder = _replay_aware(trace, data, mode, f"frame-groups:{group}")
    items = {it.hash for r in stream.requests.values() for it in r.items}
    assert set(encoder.encoded) == items and set(encoder.encoded.values()) <= {1}
    assert run.summary.re_encodings == 0


@pytest.mark.parametrize("policy", sorted(ENGINE_POLICIES))
@SIM_SETTINGS
@given(trace=media_streams(), data=st.data())
def test_request_re_encodings_are_a_part_of_re_encodings_which_are_a_part_of_encodes(policy, trace, data):
    # PolicyRow: re-encodings are encodes of content the run had encoded before, request re-encodings "of
    # those" the ones a request had lost between its windows; any cache size, some smaller than an item
    engine = ENGINE_POLICIES[policy]
    stream = prepare(trace, video_items=engine.video_items)
    largest = max(it.num_tokens for r in stream.requests.values() for it in r.items)
    cache_rows = data.draw(st.integers(1, 2 * largest), label="cache rows")
    scheduler = SchedulerConfig(data.draw(st.sampled_from([256, 1024])), data.draw(st.sampled_from([None, 64, 512])))
    encoder = CountingFakeEncoder()
    run = replay_stream(stream, engine.replay_config(scheduler, cache_rows), encoder=encoder)
    s = run.summary
    assert s.request_re_encodings <= s.re_encodings <= s.encoded_items == sum(encoder.encoded.values())
    assert s.encoded_items - s.re_encodings == len(encoder.encoded)  # every other encode is a first one
    for row in run.rows:
        assert row.request_re_encodings <= row.re_encodings <= row.encoded_items
