"""embed_chunks refuses NaN/inf encoder rows, names who is behind them, and leaves the cache as it was."""

import pytest
import torch

from vitkit import EmbeddingCache, MultimodalItem, Request, embed_chunks


def _item(n, seed):
    return MultimodalItem(torch.full((3,), float(seed)), n)


class PoisonEncoder:
    """Rows filled with the item's seed; items whose seed is in ``poison`` get ``value`` in one row."""

    def __init__(self, poison=(), value=float("nan")):
        self.poison, self.value, self.calls = set(poison), value, 0

    def __call__(self, items):
        self.calls += 1
        outs = []
        for it in items:
            seed = float(it.cpu_feature[0])
            out = torch.full((it.num_tokens, 4), seed)
            if seed in self.poison:
                out[it.num_tokens // 2, 1] = self.value
            outs.append(out)
        return outs


def _snapshot(cache, owners):
    return cache.keys(), cache.stats(), {o: cache.pinned_by(o) for o in owners}


@pytest.mark.parametrize("mode", ["batched", "per_request"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rows_are_refused_naming_requests_and_items(mode, value):
    good, bad, old = _item(4, 1), _item(6, 2), _item(3, 3)
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(Request.from_segments("w", [old]), (0, 3))], PoisonEncoder(), cache)
    a = Request.from_segments("a", [good, 2, bad])  # bad at [6, 12)
    b = Request.from_segments("b", [bad, old])  # bad at item 0, then a hit
    c = Request.from_segments("c", [good])
    before = _snapshot(cache, ["a", "b", "c"])
    pattern = (rf"non-finite values \(NaN or inf\) for 1 item\(s\): item {bad.hash[:12]} "
               r"\(request 'a' item 1, request 'b' item 0\); nothing of this step was cached")
    with pytest.raises(ValueError, match=pattern):
        embed_chunks([(a, (0, 8)), (b, (0, 9)), (c, (0, 4))], PoisonEncoder({2.0}, value), cache, mode=mode)
    assert _snapshot(cache, ["a", "b", "c"]) == before  # nothing cached, pinned or counted
    assert bad.hash not in cache and good.hash not in cache


def test_check_finite_false_lets_rows_through_for_benchmarks():
    bad = _item(2, 2)
    cache = EmbeddingCache(1 << 20)
    res = embed_chunks([(Request.from_segments("a", [bad]), (0, 2))], PoisonEncoder({2.0}), cache, check_finite=False)
    assert torch.isnan(res.embeddings[0]).any() and bad.hash in cache


def test_finite_outputs_pass_and_several_bad_items_are_all_named():
    x, y, z = _item(2, 1), _item(2, 2), _item(2, 3)
    cache = EmbeddingCache(1 << 20)
    ok = embed_chunks([(Request.from_segments("a", [x, y]), (0, 4))], PoisonEncoder(), cache)
    assert ok.encoded_items == 2 and all(torch.isfinite(e).all() for e in ok.embeddings)
    req = Request.from_segments("q", [y, z, 1, x])
    with pytest.raises(ValueError, match=rf"for 1 item\(s\): item {z.hash[:12]} \(request 'q' item 1\)"):
        embed_chunks([(req, (0, 7))], PoisonEncoder({3.0}), cache)  # x and y are hits, z is bad
    w = _item(2, 4)
    two = Request.from_segments("t", [z, w])
    with pytest.raises(ValueError, match=rf"for 2 item\(s\): item {z.hash[:12]} \(request 't' item 0\); "
                                         rf"item {w.hash[:12]} \(request 't' item 1\)"):
        embed_chunks([(two, (0, 4))], PoisonEncoder({3.0, 4.0}), cache, max_tokens_per_call=2)


def test_finiteness_is_one_check_and_one_read_back_per_step(monkeypatch):
    # per output a (min, max) reduction on its device; one isfinite over them all, read back once
    seen, read_back = [], []
    real_isfinite, real_bool = torch.isfinite, torch.Tensor.__bool__
    monkeypatch.setattr(torch, "isfinite", lambda t: seen.append(t.numel()) or real_isfinite(t))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: read_back.append(t.numel()) or real_bool(t))
    items = [_item(3, k) for k in range(5)]
    reqs = [Request.from_segments(f"r{k}", [it]) for k, it in enumerate(items)]
    res = embed_chunks([(r, (0, 3)) for r in reqs], PoisonEncoder(), EmbeddingCache(1 << 20), max_tokens_per_call=6)
    assert res.encoder_calls == 3  # three encoder calls, still one check
    assert seen == [2 * 5] and read_back == [1]


@pytest.mark.gpu
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_rows_on_cuda_are_refused(value, dtype):
    bad, good = _item(4, 2), _item(4, 1)

    def on_cuda(items):
        return [out.to("cuda", dtype) for out in PoisonEncoder({2.0}, value)(items)]

    cache = EmbeddingCache(1 << 20)
    req = Request.from_segments("g", [good, bad])
    with pytest.raises(ValueError, match=rf"item {bad.hash[:12]} \(request 'g' item 1\)"):
        embed_chunks([(req, (0, 8))], on_cuda, cache)
    assert len(cache) == 0
    ok = embed_chunks([(Request.from_segments("h", [good]), (0, 4))], on_cuda, cache)
    assert ok.embeddings[0].is_cuda and good.hash in cache
