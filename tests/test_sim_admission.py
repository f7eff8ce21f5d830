"""Cache-aware admission: windows are cut before an image that cannot fit, oversized images are
refused up front, a granted step never has a put refused or a relied-on entry evicted, holds of
repeated images yield instead of forcing a window, and the scheduler preempts (vLLM's victim) when
an admission leaves nothing to run."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import OnlyAlone
from vitkit.cache import EmbeddingCache
from vitkit.costs.clock import StepClock
from vitkit.embed import embed_chunks
from vitkit.request import Request
from vitkit.sim.admission import HOLD_OWNER, CacheAwareAdmission
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder, fake_item
from vitkit.sim.replay import prepare, replay, replay_stream
from vitkit.sim.scheduler import Arrival, Scheduler, SchedulerConfig, Window
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest

ENCODER = FakeEncoder(hidden=8)
ROW = ENCODER.bytes_per_token  # 32 bytes per embedding row
IMG = fake_item("a", 448, 448).num_tokens  # 256 rows


def _request(rid, image_ids, text=10):
    segments = []
    for image_id in image_ids:
        segments += [text, fake_item(image_id, 448, 448)]
    return Request.from_segments(rid, segments + [text])


def test_window_cut_before_the_image_that_does_not_fit():
    req = _request("r", ["a", "b", "c"])  # spans [10,266) [276,532) [542,798)
    cache = EmbeddingCache(2 * IMG * ROW)
    adm = CacheAwareAdmission({"r": req}, cache, ROW)
    adm.begin_step()
    assert adm.grant("r", 0, req.prompt_len) == 542  # a and b fit, c does not: cut before c
    adm.begin_step()
    assert adm.grant("r", 542, 700) == 700  # an empty cache holds c next step


def test_request_waits_when_its_first_token_is_an_image_that_does_not_fit():
    req = _request("r", ["a"], text=0)
    cache = EmbeddingCache(IMG * ROW)
    cache.put("x", ENCODER(_request("x", ["x"]).items)[0], pin_owner="other")  # pinned: cannot be evicted
    adm = CacheAwareAdmission({"r": req}, cache, ROW)
    adm.begin_step()
    assert adm.grant("r", 0, 100) == 0
    cache.release("other")
    adm.begin_step()
    assert adm.grant("r", 0, 100) == 100


def test_encoder_budget_cuts_and_shared_images_cost_once():
    one, two = _request("one", ["a", "b"]), _request("two", ["a", "c"])
    cache = EmbeddingCache(100 * IMG * ROW)
    adm = CacheAwareAdmission({"one": one, "two": two}, cache, ROW, encoder_budget_tokens=2 * IMG)
    adm.begin_step()
    assert adm.grant("one", 0, one.prompt_len) == one.prompt_len  # a, b: budget used up
    assert adm.grant("two", 0, two.prompt_len) == two.spans[1].start  # a is planned; c cut


@pytest.mark.parametrize("capacity_rows, budget, match", [
    (IMG - 1, None, "more than the whole cache"),
    (10 * IMG, IMG - 1, "exceed the encoder budget"),
])
def test_oversized_image_refused_up_front(capacity_rows, budget, match):
    adm = CacheAwareAdmission({"r": _request("r", ["a"])}, EmbeddingCache(capacity_rows * ROW), ROW, budget)
    with pytest.raises(ValueError, match=f"request 'r' item 0: .*{match}"):
        adm.check("r")


def test_bad_arguments():
    with pytest.raises(ValueError, match="bytes_per_token"):
        CacheAwareAdmission({}, EmbeddingCache(10), 0)
    with pytest.raises(ValueError, match="encoder_budget_tokens"):
        CacheAwareAdmission({}, EmbeddingCache(10), 4, encoder_budget_tokens=0)


@settings(max_examples=60, deadline=None)
@given(
    layouts=st.lists(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=3), min_size=1, max_size=4),
    capacity_images=st.integers(1, 6),
    cached=st.lists(st.sampled_from("abcdefgh"), max_size=4),
    pinned=st.lists(st.sampled_from("abcdefgh"), max_size=2),
    cuts=st.lists(st.integers(0, 900), min_size=4, max_size=4),
    mode=st.sampled_from(["batched", "per_request"]),
)
def test_granted_step_never_refuses_a_put(layouts, capacity_images, cached, pinned, cuts, mode):
    requests = {f"r{k}": _request(f"r{k}", ids) for k, ids in enumerate(layouts)}
    cache = EmbeddingCache(capacity_images * IMG * ROW)
    for image_id in cached:  # earlier steps' leftovers, some pinned by requests not in this step
        emb = ENCODER([fake_item(image_id, 448, 448)])[0]
        cache.put(fake_item(image_id, 448, 448).hash, emb, pin_owner="old" if image_id in pinned else None)
    adm = CacheAwareAdmission(requests, cache, ROW, hold_hits=mode == "per_request")
    adm.begin_step()
    batch = []
    for (rid, req), cut in zip(requests.items(), cuts):
        start = min(cut, req.prompt_len - 1)
        stop = adm.grant(rid, start, req.prompt_len)
        assert start <= stop <= req.prompt_len
        if stop > start:
            batch.append((req, (start, stop)))
    rejected = cache.rejected
    result = embed_chunks(batch, ENCODER, cache, mode=mode)
    assert cache.rejected == rejected  # every image the granted windows encoded was stored
    assert sum(o is not None for o in result.embeddings) <= len(batch)
    for req, (start, stop) in batch:  # what a later window needs is kept (per request: all it touched)
        for item, span in zip(req.items, req.spans):
            if span.start < stop and span.stop > start and (mode == "per_request" or span.stop > stop):
                assert item.hash in cache
    adm.begin_step()
    assert not cache.pinned_by(HOLD_OWNER)  # holds last one step


def _trace(*requests, sizes=None):
    """A trace of ``requests`` ((rid, segments)), all at t=0, images of 448x448 (256 rows) unless ``sizes``."""
    ids = {seg for _, segments in requests for seg in segments if isinstance(seg, str)}
    images = {i: ImageSpec(*(sizes or {}).get(i, (448, 448))) for i in sorted(ids)}
    return Trace("t", tuple(TraceRequest(rid, 0.0, tuple(segments)) for rid, segments in requests), images)


def _aware(trace, cache_rows, mode="batched", step=256, cap=None):
    scheduler = SchedulerConfig(step, cap, policy="cache-aware", encoder_budget_tokens=4096)
    return replay_stream(trace, ReplayConfig(scheduler, mode=mode, cache_tokens=cache_rows), encoder=ENCODER)


@pytest.mark.parametrize("mode", ["batched", "per_request"])
def test_a_request_lets_its_hold_go_only_when_its_next_image_could_never_fit_beside_it(mode):
    # x (576 rows) is shown, then y (576), then x again: a cache of 900 rows never holds both
    trace = _trace(("r", [8, "x", 8, "y", 8, "x", 8]), sizes={"x": (672, 672), "y": (672, 672)})
    tight = _aware(trace, 900, mode).summary
    assert (tight.refused_puts, tight.forced_grants, tight.preemptions) == (0, 0, 0)
    assert tight.released_holds == 1 and tight.request_re_encodings == 1  # x is encoded again, once
    roomy = _aware(trace, 2 * 576, mode).summary
    assert (roomy.released_holds, roomy.request_re_encodings, roomy.refused_puts) == (0, 0, 0)


def test_a_request_waits_rather_than_take_another_requests_hold():
    # r holds a (it comes back) and runs into b; s holds c and runs into d. Each could go on beside its own
    # hold, but not beside both: nothing runs until unblock lets the newest request's (s's) hold go.
    trace = _trace(("r", [8, "a", 8, "b", 8, "a", 8]), ("s", [8, "c", 8, "d", 8, "c", 8]))
    config = ReplayConfig(SchedulerConfig(2 * 264, 264, policy="cache-aware"), cache_tokens=640)
    built = []

    def make_policy(requests, cache, row_bytes):
        built.append(config.scheduler.build(requests, cache, row_bytes))
        return built[-1]

    stream = prepare(trace)
    run = replay(stream.requests, stream.arrivals, config, StepClock(step_ms=50.0), ENCODER, make_policy=make_policy)
    s = run.summary
    assert (s.refused_puts, s.preemptions, s.forced_grants) == (0, 0, 0) and run.latency.finished == 2
    assert built[0].admission.released == s.released_holds == 1
    assert s.request_re_encodings <= s.released_holds  # only a hold let go can cost an encode within a request
    first_stuck = next(r for r in run.rows if [w[0] for w in r.windows] == ["r"])  # s waits, r goes on
    assert first_stuck.step > 0


def test_scheduler_preempts_the_newest_running_request_when_no_window_can_run():
    scheduler = Scheduler(200, long_prefill_token_threshold=100, admission=OnlyAlone())
    for rid in ("a", "b", "c"):
        scheduler.add(Arrival(rid, 150, 0.0))
    steps = []
    while not scheduler.idle:
        steps.append(scheduler.schedule(float(len(steps))))
    windows = [[(w.rid, w.start, w.stop) for w in s.windows] for s in steps]
    assert windows[0] == [("a", 0, 100), ("b", 0, 100)]  # nothing ran: both let in
    # both wait on each other: vLLM's victim, the newest running request, goes back to the queue's head
    assert steps[1].preempted == (Window("b", 0, 100),) and windows[1] == [("a", 100, 150)]
    assert steps[1].admitted == () and scheduler.admission.preempted[0] == "b"  # none let in while preempting
    assert windows[2][0] == ("b", 0, 100)  # b redoes from 0, first in the queue
    done = {rid: sum(stop - start for s in steps for r, start, stop in [(w.rid, w.start, w.stop) for w in s.windows]
                     if r == rid) for rid in "abc"}
    redone = {rid: sum(len(w) for s in steps for w in s.preempted if w.rid == rid) for rid in "abc"}
    assert scheduler.idle and all(done[rid] - redone[rid] == 150 for rid in "abc")


def test_an_admission_that_lets_nothing_in_is_an_error_not_a_hang():
    class Closed(OnlyAlone):
        def grant(self, rid, start, stop):
            return start

    scheduler = Scheduler(100, admission=Closed())
    scheduler.add(Arrival("a", 50, 0.0))
    with pytest.raises(RuntimeError, match="request 'a': nothing runs and admission grants its first window nothing"):
        scheduler.schedule(0.0)


def test_by_default_a_request_admission_could_never_grant_raises_naming_it_its_rows_and_the_cache():
    # a clear error when the request is added, before any step: never a replay that spins or hangs
    trace = Trace("t", (TraceRequest("small", 0.0, (10,)), TraceRequest("big", 5.0, (4, "p", 2))),
                  {"p": ImageSpec(448, 448)})
    config = ReplayConfig(SchedulerConfig(1000, policy="cache-aware"), cache_tokens=IMG - 1)
    with pytest.raises(ValueError) as err:
        replay_stream(trace, config, encoder=ENCODER)
    assert str(err.value) == (
        f"request 'big' item 0: its {IMG} embedding rows (image) need {IMG * ROW} bytes, more than the whole "
        f"cache ({(IMG - 1) * ROW} bytes, {IMG - 1} rows); cache-aware admission could never grant it; "
        "SchedulerConfig(refuse_oversized=True) refuses such a request and runs the rest")
    refused = replay_stream(trace, ReplayConfig(SchedulerConfig(1000, policy="cache-aware", refuse_oversized=True),
                                                cache_tokens=IMG - 1), encoder=ENCODER)
    assert list(refused.refused) == ["big"] and refused.latency.finished == 1


def test_a_request_admission_could_never_grant_is_refused_with_its_reason_and_the_rest_runs():
    big = _request("big", ["a"])
    cache = EmbeddingCache((IMG - 1) * ROW)
    adm = CacheAwareAdmission({"big": big, "small": Request.from_segments("small", [10])}, cache, ROW)
    scheduler = Scheduler(1000, admission=adm, refuse_oversized=True)
    scheduler.add(Arrival("big", big.prompt_len))
    scheduler.add(Arrival("small", 10))
    assert list(scheduler.refused) == ["big"] and "more than the whole cache" in scheduler.refused["big"]
    assert [w.rid for w in scheduler.schedule(0.0).windows] == ["small"] and scheduler.idle
    with pytest.raises(ValueError, match="was already added"):
        scheduler.add(Arrival("big", big.prompt_len))
