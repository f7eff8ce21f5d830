"""Cache-aware admission: windows are cut before an image that cannot fit, oversized images are
refused up front, and a granted step never has a put refused or a relied-on entry evicted."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.cache import EmbeddingCache
from vitkit.embed import embed_chunks
from vitkit.request import Request
from vitkit.sim.admission import HOLD_OWNER, CacheAwareAdmission
from vitkit.sim.fake import FakeEncoder, fake_item

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


class _Refuser:
    """An admission that grants nothing unless forced: every running request waits for ever."""

    def __init__(self):
        self.forced = 0

    def check(self, rid):
        pass

    def begin_step(self, aborted=()):
        pass

    def grant(self, rid, start, stop, *, force=False):
        self.forced += force
        return stop if force else start


def test_scheduler_breaks_a_deadlock_with_one_forced_grant_a_step():
    from vitkit.sim.scheduler import Arrival, Scheduler

    scheduler = Scheduler(100, admission=_Refuser())
    scheduler.add(Arrival("a", 150, 0.0))
    steps = [scheduler.schedule(float(t)) for t in range(2)]
    assert [(w.start, w.stop) for s in steps for w in s.windows] == [(0, 100), (100, 150)]
    assert scheduler.admission.forced == 2 and scheduler.idle


def test_a_waiting_request_is_forced_in_when_nothing_runs():
    from vitkit.sim.scheduler import Arrival, Scheduler

    scheduler = Scheduler(100, admission=_Refuser())
    scheduler.add(Arrival("a", 150, 0.0))
    scheduler.add(Arrival("b", 50, 0.0))
    step = scheduler.schedule(0.0)
    assert [(w.rid, w.start, w.stop) for w in step.windows] == [("a", 0, 100)] and step.admitted == ("a",)
    assert [a.rid for a in scheduler.waiting] == ["b"]  # b is held back (it was not forced)
