"""embed_chunks: batched vs per-request encoding, budgets, pinning across windows, errors."""

import pytest
import torch

from conftest import cache_state as _state
from conftest import item as _item
from conftest import reference
from vitkit import EmbeddingCache, MultimodalItem, Request, embed_chunks, plan_calls
from vitkit.embed import FATES

HIDDEN = 4  # conftest.reference's default width
ROW_BYTES = HIDDEN * 4  # float32


class SpyEncoder:
    """Records every call; returns row slices of one buffer like a real batched encoder."""

    def __init__(self, cache=None, device="cpu"):
        self.calls = []
        self.cache = cache
        self.device = device
        self.cache_bytes_seen = []

    def __call__(self, items):
        self.calls.append([it.hash for it in items])
        if self.cache is not None:
            self.cache_bytes_seen.append(self.cache.bytes)
        buffer = torch.cat([reference(it) for it in items]).to(self.device)
        return list(buffer.split([it.num_tokens for it in items]))

    @property
    def encoded(self):
        return [h for call in self.calls for h in call]


def _full(request):
    return torch.cat([reference(it) for it in request.items])


def _windows(request, size):
    return [(s, min(s + size, request.prompt_len)) for s in range(0, request.prompt_len, size)]


# ---------------------------------------------------------------- plan_calls


def _sizes(calls):
    return [[it.num_tokens for it in call] for call in calls]


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        ([3, 3, 3], None, [[3, 3, 3]]),
        ([], None, []),
        ([], 4, []),
        ([2, 2], 4, [[2, 2]]),  # exactly at the budget: one call
        ([3, 3, 3], 6, [[3, 3], [3]]),
        ([5, 2, 2], 4, [[5], [2, 2]]),  # larger than the budget: alone
        ([2, 5, 2], 4, [[2], [5], [2]]),
        ([1, 9, 9, 1], 4, [[1], [9], [9], [1]]),
        ([3, 1, 3, 1], 4, [[3, 1], [3, 1]]),
        ([3, 2, 1], 4, [[3], [2, 1]]),  # greedy in order, no re-packing
    ],
)
def test_plan_calls_greedy_rule(sizes, budget, expected):
    items = [_item(n, k) for k, n in enumerate(sizes)]
    calls = plan_calls(items, budget)
    assert _sizes(calls) == expected
    assert [it for call in calls for it in call] == items  # order kept, nothing dropped


# ---------------------------------------------------------------- modes


def _scenario():
    """Three requests sharing image S; windows of 6 tokens make items straddle boundaries."""
    s, a, b, c = _item(4, 1), _item(5, 2), _item(3, 3), _item(7, 4)
    r1 = Request.from_segments("r1", [1, s, 2, a, 1])
    r2 = Request.from_segments("r2", [3, b, s, 4])
    r3 = Request.from_segments("r3", [c, 1, s])
    return [r1, r2, r3]


def _run_steps(requests, size, encoder, cache, **kw):
    """Advance every request one window per step until all are done; returns chunks per rid."""
    windows = {r.rid: _windows(r, size) for r in requests}
    chunks = {r.rid: [] for r in requests}
    results = []
    step = 0
    while any(step < len(w) for w in windows.values()):
        batch = [(r, windows[r.rid][step]) for r in requests if step < len(windows[r.rid])]
        res = embed_chunks(batch, encoder, cache, **kw)
        results.append(res)
        for (r, _), emb in zip(batch, res.embeddings):
            if emb is not None:
                chunks[r.rid].append(emb)
        step += 1
    return chunks, results


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@pytest.mark.parametrize("size", [1, 3, 6, 64])
def test_chunks_concatenate_to_the_full_sequence(mode, size):
    requests = _scenario()
    cache = EmbeddingCache(1 << 20)
    chunks, _ = _run_steps(requests, size, SpyEncoder(), cache, mode=mode)
    for r in requests:
        assert torch.equal(torch.cat(chunks[r.rid]), _full(r)), r.rid


@pytest.mark.parametrize("budget", [None, 4, 9])
def test_both_modes_bit_identical(budget):
    out = {}
    for mode in ("batched", "per_request"):
        chunks, _ = _run_steps(_scenario(), 5, SpyEncoder(), EmbeddingCache(1 << 20), mode=mode, max_tokens_per_call=budget)
        out[mode] = chunks
    for rid in out["batched"]:
        assert len(out["batched"][rid]) == len(out["per_request"][rid])
        for x, y in zip(out["batched"][rid], out["per_request"][rid]):
            assert torch.equal(x, y)


def test_batched_dedupes_same_image_across_requests():
    requests = _scenario()
    cache = EmbeddingCache(1 << 20)
    enc = SpyEncoder()
    res = embed_chunks([(r, (0, r.prompt_len)) for r in requests], enc, cache)
    assert res.encoder_calls == 1 and len(enc.calls) == 1
    distinct = {it.hash for r in requests for it in r.items}
    assert res.encoded_items == len(distinct) == 4  # S is shared by all three
    assert sorted(enc.calls[0]) == sorted(distinct)
    assert res.encoded_tokens == 4 + 5 + 3 + 7 and res.call_tokens == (19,)
    assert res.cache_misses == 6 and res.cache_hits == 0
    assert set(res.encoded_hashes) == distinct
    for r, emb in zip(requests, res.embeddings):
        assert torch.equal(emb, _full(r))


def test_per_request_calls_once_per_request_with_misses():
    requests = _scenario()
    cache = EmbeddingCache(1 << 20)
    enc = SpyEncoder()
    res = embed_chunks([(r, (0, r.prompt_len)) for r in requests], enc, cache, mode="per_request")
    assert res.encoder_calls == 3 == len(enc.calls)
    assert res.encoded_items == 4  # r2 and r3 find S cached by r1
    assert res.cache_hits == 2 and res.cache_misses == 4
    # a request whose items are all cached makes no call
    enc2 = SpyEncoder()
    res2 = embed_chunks([(r, (0, r.prompt_len)) for r in requests], enc2, cache, mode="per_request")
    assert res2.encoder_calls == 0 and enc2.calls == [] and res2.cache_hits == 6


def test_all_hits_make_no_call_and_same_result():
    requests = _scenario()
    cache = EmbeddingCache(1 << 20)
    batch = [(r, (0, r.prompt_len)) for r in requests]
    first = embed_chunks(batch, SpyEncoder(), cache)
    enc = SpyEncoder()
    second = embed_chunks(batch, enc, cache)
    assert enc.calls == [] and second.encoder_calls == 0 and second.encoded_items == 0
    assert all(torch.equal(x, y) for x, y in zip(first.embeddings, second.embeddings))


def test_text_only_windows_give_none_in_batch_order():
    a = _item(2, 1)
    r1 = Request.from_segments("t", [5, a])
    r2 = Request.from_segments("u", [a, 4])
    res = embed_chunks([(r1, (0, 5)), (r2, (0, 2))], SpyEncoder(), EmbeddingCache(1 << 20))
    assert res.embeddings[0] is None and torch.equal(res.embeddings[1], reference(a))
    res = embed_chunks([(r2, (2, 6))], SpyEncoder(), EmbeddingCache(1 << 20))
    assert res.embeddings == [None] and res.encoder_calls == 0


def test_budget_splits_batched_calls_greedily():
    items = [_item(n, k) for k, n in enumerate([3, 3, 5, 1, 1, 9])]
    req = Request.from_segments("b", items)
    enc = SpyEncoder()
    res = embed_chunks([(req, (0, req.prompt_len))], enc, EmbeddingCache(1 << 20), max_tokens_per_call=6)
    assert res.call_tokens == (6, 6, 1, 9)  # [3, 3] [5, 1] [1] [9]
    assert [len(c) for c in enc.calls] == [2, 2, 1, 1]
    assert res.encoder_calls == 4 and res.encoded_items == 6
    assert torch.equal(res.embeddings[0], _full(req))


def test_budget_applies_within_each_request_in_per_request_mode():
    r1 = Request.from_segments("p", [_item(3, 1), _item(3, 2), _item(3, 3)])
    r2 = Request.from_segments("q", [_item(2, 4)])
    enc = SpyEncoder()
    res = embed_chunks([(r1, (0, 9)), (r2, (0, 2))], enc, EmbeddingCache(1 << 20), mode="per_request", max_tokens_per_call=6)
    assert res.call_tokens == (6, 3, 2)


# ---------------------------------------------------------------- per-window outcomes


def _fates(result):
    return [[(o.index, o.fate, o.call) for o in window] for window in result.outcomes]


def test_outcomes_batched_first_miss_encodes_later_ones_share():
    requests = _scenario()  # S is r1's item 0, r2's item 1, r3's item 1
    res = embed_chunks([(r, (0, r.prompt_len)) for r in requests], SpyEncoder(), EmbeddingCache(1 << 20))
    assert _fates(res) == [
        [(0, "encoded", 0), (1, "encoded", 0)],
        [(0, "encoded", 0), (1, "shared", 0)],
        [(0, "encoded", 0), (1, "shared", 0)],
    ]
    assert [o.hash for o in res.outcomes[1]] == [it.hash for it in requests[1].items]


def test_outcomes_per_request_later_request_hits_earlier_put():
    requests = _scenario()
    res = embed_chunks([(r, (0, r.prompt_len)) for r in requests], SpyEncoder(), EmbeddingCache(1 << 20),
                       mode="per_request")
    assert _fates(res) == [
        [(0, "encoded", 0), (1, "encoded", 0)],
        [(0, "encoded", 1), (1, "hit", None)],
        [(0, "encoded", 2), (1, "hit", None)],
    ]


def test_outcomes_name_the_call_of_a_split_step():
    items = [_item(n, k) for k, n in enumerate([3, 3, 5, 1, 1, 9])]
    req = Request.from_segments("b", items)
    res = embed_chunks([(req, (0, req.prompt_len))], SpyEncoder(), EmbeddingCache(1 << 20), max_tokens_per_call=6)
    assert [o.call for o in res.outcomes[0]] == [0, 0, 1, 1, 2, 3]  # calls [3, 3] [5, 1] [1] [9]


def test_outcomes_same_image_twice_in_one_window_is_encoded_then_shared():
    x = _item(2, 1)
    req = Request.from_segments("twice", [x, 1, MultimodalItem(x.feature.clone(), 2)])
    for mode in ("batched", "per_request"):
        res = embed_chunks([(req, (0, 5))], SpyEncoder(), EmbeddingCache(1 << 20), mode=mode)
        assert _fates(res) == [[(0, "encoded", 0), (1, "shared", 0)]]
        assert res.encoded_items == 1


def test_outcomes_straddling_image_lost_between_windows_is_re_encoded():
    big = _item(6, 1)
    req = Request.from_segments("s", [2, big, 2])  # big spans [2, 8)
    cache = EmbeddingCache(6 * ROW_BYTES)
    first = embed_chunks([(req, (0, 4))], SpyEncoder(), cache, pin=False)
    embed_chunks([(Request.from_segments("o", [_item(6, 9)]), (0, 6))], SpyEncoder(), cache, pin=False)
    again = embed_chunks([(req, (4, 8))], SpyEncoder(), cache, pin=False)
    assert _fates(first) == [[(0, "encoded", 0)]] and _fates(again) == [[(0, "re-encoded", 0)]]
    assert again.encoded_items == 1
    # with pinning the same traffic leaves it cached: a hit
    cache = EmbeddingCache(12 * ROW_BYTES)
    embed_chunks([(req, (0, 4))], SpyEncoder(), cache)
    embed_chunks([(Request.from_segments("o", [_item(6, 9)]), (0, 6))], SpyEncoder(), cache)
    assert _fates(embed_chunks([(req, (4, 8))], SpyEncoder(), cache)) == [[(0, "hit", None)]]


def test_outcomes_image_shown_again_later_and_lost_is_re_encoded():
    x = _item(2, 1)
    req = Request.from_segments("rep", [x, 4, MultimodalItem(x.feature.clone(), 2)])  # [0,2) [6,8)
    cache = EmbeddingCache(1)  # holds nothing
    embed_chunks([(req, (0, 4))], SpyEncoder(), cache)
    res = embed_chunks([(req, (4, 8))], SpyEncoder(), cache)
    assert _fates(res) == [[(1, "re-encoded", 0)]]


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@pytest.mark.parametrize("size, capacity_rows, budget", [(1, 4, None), (3, 8, 4), (5, 1 << 10, None), (6, 0, 9)])
def test_outcomes_agree_with_the_step_totals(mode, size, capacity_rows, budget):
    requests = _scenario()
    cache = EmbeddingCache(max(1, capacity_rows * ROW_BYTES))
    _, results = _run_steps(requests, size, SpyEncoder(), cache, mode=mode, max_tokens_per_call=budget, pin=False)
    for res in results:
        fates = [o.fate for window in res.outcomes for o in window]
        assert set(fates) <= set(FATES)
        assert fates.count("hit") == res.cache_hits
        assert len(fates) - fates.count("hit") == res.cache_misses
        assert fates.count("encoded") + fates.count("re-encoded") == res.encoded_items
        encodes = [o for window in res.outcomes for o in window if o.fate in ("encoded", "re-encoded")]
        # one encoding lookup per encode; by call (stable: first misses in batch order) they are the encode order
        assert [o.hash for o in sorted(encodes, key=lambda o: o.call)] == list(res.encoded_hashes)
        assert {o.call for window in res.outcomes for o in window if o.call is not None} == set(range(res.encoder_calls))


# ---------------------------------------------------------------- pinning across windows


def test_straddling_item_encoded_once_and_reused_by_next_window():
    big = _item(6, 1)
    req = Request.from_segments("s", [2, big, 2])  # big spans [2, 8); windows of 4
    other = [_item(6, k) for k in range(10, 14)]
    cache = EmbeddingCache(12 * ROW_BYTES)  # room for big + one other
    enc = SpyEncoder(cache)
    r1 = embed_chunks([(req, (0, 4))], enc, cache)
    assert r1.encoded_hashes == (big.hash,)
    assert cache.pinned_by("s") == {big.hash}
    # other traffic would evict big if it were not pinned
    for k, it in enumerate(other):
        embed_chunks([(Request.from_segments(f"o{k}", [it]), (0, 6))], enc, cache)
        assert big.hash in cache
    r2 = embed_chunks([(req, (4, 8))], enc, cache)
    assert r2.encoder_calls == 0 and r2.cache_hits == 1
    assert enc.encoded.count(big.hash) == 1
    assert cache.pinned_by("s") == frozenset()  # big ends with this window: unpinned
    r3 = embed_chunks([(req, (8, 10))], enc, cache)  # last window: text only
    assert r3.embeddings == [None]
    assert cache.pinned_by("s") == frozenset() and cache.pinned_bytes == 0
    assert torch.equal(torch.cat([r1.embeddings[0], r2.embeddings[0]]), reference(big))


def test_pin_dropped_once_item_is_fully_used():
    a, b = _item(4, 1), _item(4, 2)
    req = Request.from_segments("s", [a, 2, b, 2])  # a [0,4), b [6,10), prompt 12
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(req, (0, 3))], SpyEncoder(), cache)
    assert cache.pinned_by("s") == {a.hash}
    embed_chunks([(req, (3, 8))], SpyEncoder(), cache)  # a done, b straddles
    assert cache.pinned_by("s") == {b.hash}
    assert not cache.is_pinned(a.hash)
    embed_chunks([(req, (8, 12))], SpyEncoder(), cache)
    assert cache.pinned_by("s") == frozenset()


def test_item_spanning_three_windows_stays_pinned_throughout():
    big = _item(9, 1)
    req = Request.from_segments("s", [1, big])  # [1, 10)
    cache = EmbeddingCache(1 << 20)
    enc = SpyEncoder()
    for window in [(0, 3), (3, 6), (6, 9)]:
        embed_chunks([(req, window)], enc, cache)
        assert cache.is_pinned(big.hash, "s")
        assert cache.stats().pinned_bytes == 9 * ROW_BYTES
    embed_chunks([(req, (9, 10))], enc, cache)
    assert not cache.is_pinned(big.hash) and len(enc.calls) == 1


def test_two_requests_pin_the_same_shared_item():
    s = _item(4, 1)
    r1 = Request.from_segments("a", [s, 1])
    r2 = Request.from_segments("b", [1, s])
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(r1, (0, 2)), (r2, (0, 3))], SpyEncoder(), cache)
    assert cache.is_pinned(s.hash, "a") and cache.is_pinned(s.hash, "b")
    embed_chunks([(r1, (2, 5))], SpyEncoder(), cache)  # a finishes
    assert not cache.is_pinned(s.hash, "a") and cache.is_pinned(s.hash, "b")
    embed_chunks([(r2, (3, 5))], SpyEncoder(), cache)
    assert not cache.is_pinned(s.hash)


def test_cache_hit_straddling_item_is_pinned_before_this_steps_puts():
    s, w = _item(4, 1), _item(4, 5)
    cache = EmbeddingCache(8 * ROW_BYTES)
    embed_chunks([(Request.from_segments("w", [s, w]), (0, 8))], SpyEncoder(), cache)  # full, unpinned
    r = Request.from_segments("r", [s, 1])
    fresh = Request.from_segments("f", [_item(8, 2)])
    # r hits s and needs it later; f's 8-row put would have to evict s too: it must be refused
    res = embed_chunks([(r, (0, 2)), (fresh, (0, 8))], SpyEncoder(), cache)
    assert res.encoder_calls == 1 and torch.equal(res.embeddings[1], reference(fresh.items[0]))
    assert s.hash in cache and cache.is_pinned(s.hash, "r")
    assert cache.stats().rejected == 1
    res = embed_chunks([(r, (2, 5))], SpyEncoder(), cache)
    assert res.encoder_calls == 0


def test_image_repeated_later_in_the_prompt_is_kept_not_re_encoded():
    # regression: only straddling items used to be pinned, so an image that recurs later in
    # the same prompt could be evicted by other traffic and encoded a second time
    x = _item(4, 1)
    req = Request.from_segments("rep", [x, 6, MultimodalItem(x.feature.clone(), 4), 1])  # [0,4) [10,14)
    cache = EmbeddingCache(8 * ROW_BYTES)
    enc = SpyEncoder(cache)
    embed_chunks([(req, (0, 5))], enc, cache)
    assert cache.pinned_by("rep") == {x.hash}
    for k in range(3):  # other traffic fills the cache
        embed_chunks([(Request.from_segments(f"o{k}", [_item(4, 10 + k)]), (0, 4))], enc, cache)
    embed_chunks([(req, (5, 10))], enc, cache)  # text only: the pin stays
    assert cache.pinned_by("rep") == {x.hash}
    res = embed_chunks([(req, (10, 15))], enc, cache)
    assert res.encoder_calls == 0 and torch.equal(res.embeddings[0], reference(x))
    assert enc.encoded.count(x.hash) == 1
    assert cache.pinned_by("rep") == frozenset()


def test_without_pinning_a_straddling_item_can_be_re_encoded():
    big = _item(6, 1)
    req = Request.from_segments("s", [2, big, 2])
    cache = EmbeddingCache(6 * ROW_BYTES)
    enc = SpyEncoder(cache)
    embed_chunks([(req, (0, 4))], enc, cache, pin=False)
    embed_chunks([(Request.from_segments("o", [_item(6, 9)]), (0, 6))], enc, cache, pin=False)
    embed_chunks([(req, (4, 8))], enc, cache, pin=False)
    assert enc.encoded.count(big.hash) == 2
    assert cache.pinned_bytes == 0


def test_rejected_put_still_returns_the_embedding():
    big = _item(10, 1)
    req = Request.from_segments("s", [big])
    cache = EmbeddingCache(4 * ROW_BYTES)
    res = embed_chunks([(req, (0, 10))], SpyEncoder(), cache)
    assert torch.equal(res.embeddings[0], reference(big))
    assert len(cache) == 0 and cache.stats().rejected == 1


def test_cache_stores_compact_copies_of_encoder_buffer_slices():
    requests = _scenario()
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(r, (0, r.prompt_len)) for r in requests], SpyEncoder(), cache)
    for key in cache.keys():
        emb = cache.peek(key)
        assert emb.untyped_storage().nbytes() == emb.numel() * emb.element_size()
    assert cache.bytes == 19 * ROW_BYTES


# ---------------------------------------------------------------- device


def test_chunks_are_on_the_encoders_output_device():
    requests = _scenario()
    for mode in ("batched", "per_request"):
        cache = EmbeddingCache(1 << 20)
        res = embed_chunks([(r, (0, 6)) for r in requests], SpyEncoder(device="meta"), cache, mode=mode)
        assert all(e.device.type == "meta" for e in res.embeddings if e is not None)
        assert all(cache.peek(k).device.type == "meta" for k in cache.keys())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chunks_on_cuda_match_cpu():
    requests = _scenario()
    gpu = embed_chunks([(r, (0, r.prompt_len)) for r in requests], SpyEncoder(device="cuda"), EmbeddingCache(1 << 20))
    cpu = embed_chunks([(r, (0, r.prompt_len)) for r in requests], SpyEncoder(), EmbeddingCache(1 << 20))
    for g, c in zip(gpu.embeddings, cpu.embeddings):
        assert g.is_cuda and torch.equal(g.cpu(), c)


# ---------------------------------------------------------------- errors leave the cache as it was


def _warm_cache():
    """A cache with entries, recency, pins and counters, mid-way through a request."""
    requests = _scenario()
    cache = EmbeddingCache(12 * ROW_BYTES)
    embed_chunks([(r, (0, 6)) for r in requests], SpyEncoder(), cache)
    cache.get(cache.keys()[0])
    return requests, cache


class _Failing:
    def __init__(self, fail_on_call, how):
        self.n = 0
        self.fail_on_call = fail_on_call
        self.how = how

    def __call__(self, items):
        self.n += 1
        out = SpyEncoder()(items)
        if self.n < self.fail_on_call:
            return out
        if self.how == "raise":
            raise RuntimeError("CUDA out of memory (simulated)")
        if self.how == "rows":
            out[-1] = out[-1][:-1]
        elif self.how == "count":
            out = out[:-1]
        elif self.how == "type":
            out[0] = out[0].tolist()
        return out


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@pytest.mark.parametrize("how", ["raise", "rows", "count", "type"])
@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_failing_encoder_leaves_cache_exactly_as_before(mode, how, fail_on_call):
    requests, cache = _warm_cache()
    before = _state(cache, [r.rid for r in requests])
    entries = {k: cache.peek(k) for k in cache.keys()}
    batch = [(r, (6, r.prompt_len)) for r in requests]
    new = Request.from_segments("n", [_item(2, 20), _item(2, 21), _item(2, 22)])
    batch.append((new, (0, 6)))
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        embed_chunks(batch, _Failing(fail_on_call, how), cache, mode=mode, max_tokens_per_call=2)
    assert cache.keys() == before[0]
    assert cache.stats() == before[1]
    for rid, pinned in before[2].items():
        assert cache.pinned_by(rid) == pinned
    assert cache.pinned_by("n") == frozenset()
    assert all(cache.peek(k) is e for k, e in entries.items())
    # and the cache still works: the same step succeeds afterwards
    res = embed_chunks(batch, SpyEncoder(), cache, mode=mode, max_tokens_per_call=2)
    for (r, w), emb in zip(batch, res.embeddings):
        assert emb is None or emb.shape[1] == HIDDEN


def test_wrong_count_names_numbers():
    req = Request.from_segments("r", [_item(2, 1), _item(2, 2)])
    with pytest.raises(ValueError, match="encoder returned 1 tensors for 2 items of request\\(s\\) 'r'$"):
        embed_chunks([(req, (0, 4))], lambda items: [reference(items[0])], EmbeddingCache(1 << 20))


def test_wrong_rows_names_item_and_shapes():
    it = _item(3, 1)
    req = Request.from_segments("r", [it])
    expected = rf"encoder output 0 \(item {it.hash[:12]} of request\(s\) 'r'\) has shape \(2, 4\), expected \(3, hidden\)"
    with pytest.raises(ValueError, match=expected):
        embed_chunks([(req, (0, 3))], lambda items: [torch.zeros(2, HIDDEN)], EmbeddingCache(1 << 20))


def test_bad_output_names_every_request_that_wanted_the_item():
    shared = _item(3, 1)
    r1 = Request.from_segments("first", [shared])
    r2 = Request.from_segments("second", [1, MultimodalItem(shared.feature.clone(), 3)])
    cache = EmbeddingCache(1 << 20)
    with pytest.raises(ValueError, match=rf"item {shared.hash[:12]} of request\(s\) 'first', 'second'\) has shape \(1, 4\)"):
        embed_chunks([(r1, (0, 3)), (r2, (0, 4))], lambda items: [torch.zeros(1, HIDDEN)], cache)
    assert len(cache) == 0 and cache.stats().misses == 0


def test_one_dimensional_output_rejected():
    req = Request.from_segments("r", [_item(3, 1)])
    with pytest.raises(ValueError, match=r"has shape \(3,\)"):
        embed_chunks([(req, (0, 3))], lambda items: [torch.zeros(3)], EmbeddingCache(1 << 20))


def test_non_tensor_output_rejected():
    it = _item(3, 1)
    req = Request.from_segments("r", [it])
    expected = rf"encoder output 0 \(item {it.hash[:12]} of request\(s\) 'r'\) is a ndarray, not a tensor"
    with pytest.raises(TypeError, match=expected):
        embed_chunks([(req, (0, 3))], lambda items: [reference(items[0]).numpy()], EmbeddingCache(1 << 20))


def test_stacked_tensor_output_rejected():
    req = Request.from_segments("r", [_item(3, 1)])
    with pytest.raises(TypeError, match="encoder must return a list of tensors, got Tensor"):
        embed_chunks([(req, (0, 3))], lambda items: torch.zeros(1, 3, HIDDEN), EmbeddingCache(1 << 20))


def test_hidden_size_mismatch_rejected():
    req = Request.from_segments("r", [_item(2, 1), _item(2, 2)])
    with pytest.raises(ValueError, match="encoder output 1 .* has hidden size 5, earlier outputs had 4"):
        embed_chunks([(req, (0, 4))], lambda items: [torch.zeros(2, 4), torch.zeros(2, 5)], EmbeddingCache(1 << 20))


def test_duplicate_request_in_a_step_rejected():
    req = Request.from_segments("dup", [_item(2, 1), 2])
    cache = EmbeddingCache(1 << 20)
    with pytest.raises(ValueError, match=r"request 'dup' appears twice in one step \(batch entry 1\)"):
        embed_chunks([(req, (0, 2)), (req, (2, 4))], SpyEncoder(), cache)
    assert cache.stats().misses == 0  # rejected before any lookup


def test_bad_window_in_batch_names_request():
    req = Request.from_segments("w", [_item(2, 1)])
    for window, msg in [((0, 0), "is empty"), ((-1, 2), "start must be >= 0"), ((0, 3), "runs past the prompt")]:
        with pytest.raises(ValueError, match=f"request 'w'.*{msg}"):
            embed_chunks([(req, window)], SpyEncoder(), EmbeddingCache(1 << 20))


def test_bad_batch_entry_rejected():
    req = Request.from_segments("w", [_item(2, 1)])
    with pytest.raises(TypeError, match="batch entry 1 must be a \\(Request, window\\) pair"):
        embed_chunks([(req, (0, 2)), ("x", (0, 2))], SpyEncoder(), EmbeddingCache(1 << 20))


def test_bad_mode_and_budget_rejected():
    req = Request.from_segments("w", [_item(2, 1)])
    with pytest.raises(ValueError, match="mode must be one of .* got 'fast'"):
        embed_chunks([(req, (0, 2))], SpyEncoder(), EmbeddingCache(1 << 20), mode="fast")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=f"max_tokens_per_call must be a positive int, got {bad!r}"):
            embed_chunks([(req, (0, 2))], SpyEncoder(), EmbeddingCache(1 << 20), max_tokens_per_call=bad)


def test_same_hash_different_token_counts_rejected_and_cache_unchanged():
    a = MultimodalItem(torch.zeros(3), 2, hash="same")
    b = MultimodalItem(torch.ones(3), 3, hash="same")
    cache = EmbeddingCache(1 << 20)
    r1, r2 = Request.from_segments("a", [a]), Request.from_segments("b", [b])
    expected = r"items with hash same disagree on num_tokens: 2 vs 3 \(request 'a' item 0 vs request 'b' item 0\)"
    with pytest.raises(ValueError, match=expected):
        embed_chunks([(r1, (0, 2)), (r2, (0, 3))], SpyEncoder(), cache)
    assert cache.stats().misses == 0 and len(cache) == 0


def test_cached_entry_of_another_token_count_names_the_request_and_rolls_back():
    a = MultimodalItem(torch.zeros(3), 2, hash="same")
    b = MultimodalItem(torch.ones(3), 3, hash="same")  # same explicit hash, another token count
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(Request.from_segments("a", [a]), (0, 2))], SpyEncoder(), cache)
    before = _state(cache)
    expected = r"request 'b' window Span\(0, 4\): chunk entry 0 \(item same, span Span\(1, 4\)\): embedding has shape \(2, 4\)"
    with pytest.raises(ValueError, match=expected + r", expected \(3, hidden\)"):
        embed_chunks([(Request.from_segments("b", [1, b]), (0, 4))], SpyEncoder(), cache)
    assert _state(cache) == before


def test_cache_entry_from_another_encoder_width_is_an_error_and_rolls_back():
    a, b = _item(2, 1), _item(2, 2)
    cache = EmbeddingCache(1 << 20)
    cache.put(a.hash, torch.zeros(2, HIDDEN * 2))  # left by an encoder of another width
    before = _state(cache)
    req = Request.from_segments("mix", [a, b])
    expected = rf"chunk entry 1 \(item {b.hash[:12]}\) embedding is torch.float32 width 4 on cpu, but entry 0's is "
    with pytest.raises(ValueError, match=expected + "torch.float32 width 8"):
        embed_chunks([(req, (0, 4))], SpyEncoder(), cache)
    assert _state(cache) == before and b.hash not in cache


def test_cache_must_be_an_embedding_cache():
    with pytest.raises(TypeError, match="cache must be an EmbeddingCache, got dict"):
        embed_chunks([], lambda items: [], {})


def test_an_image_lost_between_windows_is_lost_even_when_another_request_encodes_it_first():
    # A request whose image was lost between its windows, while another request of the step missed
    # it first: its fate is "shared", yet it lost the image, which is what pinning prevents.
    from vitkit.embed import ItemOutcome

    o = ItemOutcome(0, "h", "shared", 0, needed_before=True)
    assert o.lost and not ItemOutcome(0, "h", "hit", None, needed_before=True).lost
    assert not ItemOutcome(0, "h", "encoded", 0, needed_before=False).lost


# ---------------------------------------------------------------- engines' calls: grouping, per-request modalities


def _video(num_tokens, seed):
    """A tiny video item (content fixed by ``seed``)."""
    return MultimodalItem(torch.full((3,), float(seed)), num_tokens, modality="video",
                          meta={"video_grid_thw": (1, 2, num_tokens * 2)})


@pytest.mark.parametrize("grouping, expected", [
    ("tower", [["image", "video", "image"]]),  # Qwen: images and videos share one tower, one call
    ("modality", [["image", "image"], ["video"]]),  # SGLang: one call per modality, images first
    ("consecutive", [["image"], ["video"], ["image"]]),  # vLLM: a call per run of one modality (#15605)
])
def test_plan_calls_groups_as_each_engine_does(grouping, expected):
    items = [_item(2, 1), _video(3, 2), _item(2, 3)]
    calls = plan_calls(items, None, grouping)
    assert [[it.modality for it in call] for call in calls] == expected
    assert sorted(it.hash for call in calls for it in call) == sorted(it.hash for it in items)


def test_plan_calls_splits_each_group_by_the_budget_and_rejects_an_unknown_grouping():
    items = [_item(3, 1), _video(3, 2), _item(3, 3), _video(3, 4)]
    assert [[it.num_tokens for it in c] for c in plan_calls(items, 4, "modality")] == [[3], [3], [3], [3]]
    assert [[it.modality for it in c] for c in plan_calls(items, 6, "modality")] == [["image"] * 2, ["video"] * 2]
    with pytest.raises(ValueError, match="grouping must be one of"):
        plan_calls(items, None, "by-size")


@pytest.mark.parametrize("grouping, calls", [("tower", 1), ("modality", 2), ("consecutive", 3)])
def test_result_says_which_call_encoded_each_item_and_what_each_call_held(grouping, calls):
    one = Request.from_segments("one", [1, _item(2, 1), _video(3, 2)])
    two = Request.from_segments("two", [_item(2, 3), 1])
    cache = EmbeddingCache(100 * ROW_BYTES)
    res = embed_chunks([(one, (0, 6)), (two, (0, 3))], SpyEncoder(), cache, grouping=grouping)
    assert res.encoder_calls == calls == len(res.call_modalities)
    for request, marks in zip((one, two), res.outcomes):
        for o in marks:
            assert request.items[o.index].modality in res.call_modalities[o.call]
    assert torch.equal(res.embeddings[0], _full(one)) and torch.equal(res.embeddings[1], _full(two))


def test_per_request_modalities_encode_videos_in_their_own_requests_calls():
    # SGLang: images batched across the step's requests, a video (multi-span) in its request's own call
    shared = _video(3, 9)
    one = Request.from_segments("one", [_item(2, 1), _video(3, 2), 1])
    two = Request.from_segments("two", [_item(2, 3), _video(4, 4), shared, 1])
    three = Request.from_segments("three", [MultimodalItem(shared.feature.clone(), 3, modality="video",
                                                           meta=shared.meta), 1])
    cache = EmbeddingCache(100 * ROW_BYTES)
    enc = SpyEncoder()
    res = embed_chunks([(one, (0, 6)), (two, (0, 10)), (three, (0, 4))], enc, cache, grouping="modality",
                       per_request_modalities=("video",))
    assert res.call_modalities == (("image",), ("video",), ("video",))
    assert [len(call) for call in enc.calls] == [2, 1, 2]  # both images; one's video; two's videos (and the shared one)
    assert [o.fate for o in res.outcomes[2]] == ["shared"]  # a video two asked for first: encoded once, in two's call
    for request, emb in zip((one, two, three), res.embeddings):
        assert torch.equal(emb, _full(request))
    with pytest.raises(ValueError, match="per_request_modalities must be a collection of"):
        embed_chunks([(one, (0, 6))], enc, cache, per_request_modalities="video")


def test_per_request_modalities_encode_again_what_an_earlier_request_could_not_store():
    # SGLang's per-request path runs one request after another (get, encode, set): a video the cache refuses
    # (larger than it) is encoded again by each request of the step that asks for it, in its own call
    video = _video(6, 7)
    one = Request.from_segments("one", [video, 1])
    two = Request.from_segments("two", [MultimodalItem(video.feature.clone(), 6, modality="video", meta=video.meta), 1])
    small = EmbeddingCache(4 * ROW_BYTES)
    enc = SpyEncoder()
    res = embed_chunks([(one, (0, 7)), (two, (0, 7))], enc, small, grouping="modality",
                       per_request_modalities=("video",))
    assert enc.calls == [[video.hash], [video.hash]] and res.encoded_items == 2 and small.stats().rejected == 2
    assert [(o.fate, o.call) for marks in res.outcomes for o in marks] == [("encoded", 0), ("encoded", 1)]
    assert torch.equal(res.embeddings[0], _full(one)) and torch.equal(res.embeddings[1], _full(two))
    # a cache that takes it: the second request finds the first one's put, no second encode
    enc = SpyEncoder()
    res = embed_chunks([(one, (0, 7)), (two, (0, 7))], enc, EmbeddingCache(100 * ROW_BYTES), grouping="modality",
                       per_request_modalities=("video",))
    assert enc.calls == [[video.hash]]
    assert [(o.fate, o.call) for marks in res.outcomes for o in marks] == [("encoded", 0), ("shared", 0)]
    # the cross-request path encodes it once however small the cache: de-duplicated by hash
    enc = SpyEncoder()
    embed_chunks([(one, (0, 7)), (two, (0, 7))], enc, EmbeddingCache(4 * ROW_BYTES), grouping="modality")
    assert enc.calls == [[video.hash]]


def test_without_pin_recurring_an_image_shown_again_is_not_held():
    # vLLM: a request's hold on an item ends once its tokens pass it; the repeat hits only if nothing evicted it
    x = _item(4, 1)
    req = Request.from_segments("rep", [x, 6, MultimodalItem(x.feature.clone(), 4), 1])  # [0,4) [10,14)
    cache = EmbeddingCache(8 * ROW_BYTES)
    enc = SpyEncoder(cache)
    embed_chunks([(req, (0, 5))], enc, cache, pin_recurring=False)
    assert cache.pinned_by("rep") == frozenset()
    for k in range(2):  # other traffic fills the cache
        embed_chunks([(Request.from_segments(f"o{k}", [_item(4, 10 + k)]), (0, 4))], enc, cache, pin_recurring=False)
    res = embed_chunks([(req, (5, 15))], enc, cache, pin_recurring=False)
    assert [o.fate for o in res.outcomes[0]] == ["re-encoded"] and enc.encoded.count(x.hash) == 2
    assert torch.equal(res.embeddings[0], reference(x))


def test_without_pin_recurring_a_straddling_item_is_still_held():
    big = _item(6, 1)
    req = Request.from_segments("s", [2, big, 2])
    cache = EmbeddingCache(6 * ROW_BYTES)
    embed_chunks([(req, (0, 4))], SpyEncoder(), cache, pin_recurring=False)
    assert cache.pinned_by("s") == {big.hash}
