"""EmbeddingCache: LRU under a byte budget, pins with reference counts, transactions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cache_state
from vitkit import CacheStats, EmbeddingCache

ROW = 4 * 4  # bytes of one (1, 4) float32 row


def _emb(rows, fill=0.0):
    return torch.full((rows, 4), float(fill))


def _state(cache):
    """Everything a transaction must restore, as plain values (the tests' owners are a, b, c)."""
    return cache_state(cache, ("a", "b", "c"))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "64"])
def test_capacity_must_be_positive_int(bad):
    with pytest.raises(ValueError, match=f"capacity_bytes must be a positive int, got {bad!r}"):
        EmbeddingCache(bad)


def test_get_put_and_counters():
    cache = EmbeddingCache(10 * ROW)
    assert cache.get("x") is None
    e = _emb(2, 1)
    assert cache.put("x", e) is True
    assert cache.get("x") is e  # compact tensors are stored without a copy
    assert "x" in cache and len(cache) == 1
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions, s.rejected, s.entries, s.bytes) == (1, 1, 0, 0, 1, 2 * ROW)
    assert s.capacity_bytes == 10 * ROW and s.hit_rate == 0.5
    assert isinstance(s, CacheStats)


def test_hit_rate_without_lookups_is_zero():
    assert EmbeddingCache(8).stats().hit_rate == 0.0


def test_peek_changes_nothing():
    cache = EmbeddingCache(10 * ROW)
    cache.put("a", _emb(1))
    cache.put("b", _emb(1))
    before = cache.stats()
    assert cache.peek("a") is not None and cache.peek("zz") is None
    assert cache.keys() == ["a", "b"] and cache.stats() == before


def test_lru_order_and_eviction():
    cache = EmbeddingCache(3 * ROW)
    for k in "abc":
        cache.put(k, _emb(1))
    cache.get("a")  # a becomes most recent: b is now the oldest
    assert cache.keys() == ["b", "c", "a"]
    cache.put("d", _emb(1))
    assert cache.keys() == ["c", "a", "d"]
    assert cache.stats().evictions == 1
    cache.put("e", _emb(2))  # needs two rows: evicts c and a
    assert cache.keys() == ["d", "e"]
    assert cache.stats().evictions == 3
    assert cache.bytes == 3 * ROW


def test_put_existing_key_refreshes_recency_without_new_bytes():
    cache = EmbeddingCache(3 * ROW)
    cache.put("a", _emb(1))
    cache.put("b", _emb(1))
    assert cache.put("a", _emb(1, 9)) is True
    assert cache.keys() == ["b", "a"] and cache.bytes == 2 * ROW
    assert cache.get("a")[0, 0] == 0.0  # the first embedding stays


def test_budget_never_exceeded_over_many_puts():
    cache = EmbeddingCache(7 * ROW)
    for i in range(50):
        cache.put(f"k{i}", _emb(1 + i % 4))
        assert cache.bytes <= cache.capacity_bytes
        assert cache.bytes == sum(cache.peek(k).numel() * 4 for k in cache.keys())


def test_embedding_larger_than_budget_is_rejected_not_stored():
    cache = EmbeddingCache(3 * ROW)
    cache.put("a", _emb(1))
    assert cache.put("big", _emb(4)) is False
    assert "big" not in cache and cache.keys() == ["a"]  # nothing evicted for a lost cause
    s = cache.stats()
    assert s.rejected == 1 and s.evictions == 0 and s.bytes == ROW


def test_view_into_larger_buffer_is_stored_compact():
    buffer = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    view = buffer[2:4]
    cache = EmbeddingCache(10 * ROW)
    cache.put("v", view)
    stored = cache.peek("v")
    assert torch.equal(stored, view)
    assert stored.untyped_storage().nbytes() == 2 * ROW  # not the whole 10-row buffer
    assert stored.data_ptr() != view.data_ptr()
    buffer.zero_()  # later writes into the encoder's buffer do not reach the cache
    assert stored[0, 0] == 8.0
    assert cache.bytes == 2 * ROW


def test_column_view_is_stored_compact():
    buffer = torch.arange(64, dtype=torch.float32).reshape(4, 16)
    cache = EmbeddingCache(10 * ROW)
    cache.put("c", buffer[:, :4])
    assert cache.peek("c").untyped_storage().nbytes() == 4 * ROW


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c: c.put("k", [1.0]), TypeError, "cache put 'k': embedding must be a torch.Tensor, got list",
                 id="put non-tensor"),
    pytest.param(lambda c: c.pin("zz", "r9"), KeyError, "cannot pin 'zz' for owner 'r9'", id="pin missing key"),
])
def test_bad_calls_name_the_key(call, error, message):
    cache = EmbeddingCache(100)
    with pytest.raises(error, match=message):
        call(cache)
    assert _state(cache) == _state(EmbeddingCache(100))  # and change nothing


def test_pin_refcounts():
    cache = EmbeddingCache(4 * ROW)
    cache.put("a", _emb(1))
    cache.pin("a", "r1")
    cache.pin("a", "r1")
    cache.pin("a", "r2")
    assert cache.pinned_bytes == ROW  # bytes count once however many pins
    assert cache.unpin("a", "r1") and cache.is_pinned("a", "r1")
    assert cache.unpin("a", "r1") and not cache.is_pinned("a", "r1")
    assert cache.is_pinned("a") and cache.pinned_by("r2") == {"a"}
    assert cache.unpin("a", "r1") is False  # r1 holds no more pins
    assert cache.unpin("a", "r2") is True
    assert not cache.is_pinned("a") and cache.pinned_bytes == 0
    assert cache.pinned_by("r2") == frozenset()
    assert cache.unpin("missing", "r2") is False
    assert cache.is_pinned("missing") is False


def test_put_with_pin_owner_pins_atomically():
    cache = EmbeddingCache(2 * ROW)
    assert cache.put("a", _emb(1), pin_owner="r")
    assert cache.is_pinned("a", "r") and cache.pinned_bytes == ROW
    cache.put("b", _emb(1))
    cache.put("c", _emb(1))  # must evict b, not the pinned a
    assert cache.keys() == ["a", "c"]


def test_pinned_entries_never_evicted_and_count_toward_budget():
    cache = EmbeddingCache(4 * ROW)
    cache.put("p", _emb(2))
    cache.pin("p", "r")
    cache.put("x", _emb(2))
    assert cache.put("y", _emb(2)) is True  # evicts x, the only unpinned entry
    assert cache.keys() == ["p", "y"]
    assert cache.put("z", _emb(3)) is False  # 3 rows > 4 - 2 pinned: rejected, nothing evicted
    assert cache.keys() == ["p", "y"] and cache.stats().rejected == 1
    cache.pin("y", "r")
    assert cache.put("w", _emb(1)) is False  # everything is pinned
    assert cache.stats().rejected == 2 and cache.bytes == 4 * ROW


def test_rejection_when_pinned_leaves_no_room_evicts_nothing():
    cache = EmbeddingCache(4 * ROW)
    cache.put("p", _emb(3), pin_owner="r")
    cache.put("u", _emb(1))
    assert cache.put("big", _emb(2)) is False
    assert cache.keys() == ["p", "u"] and cache.stats().evictions == 0


def test_release_drops_all_of_an_owners_pins():
    cache = EmbeddingCache(10 * ROW)
    for k in "abc":
        cache.put(k, _emb(1))
    cache.pin("a", "r1")
    cache.pin("a", "r1")
    cache.pin("b", "r1")
    cache.pin("b", "r2")
    assert cache.release("r1") == 2
    assert cache.pinned_by("r1") == frozenset()
    assert not cache.is_pinned("a") and cache.is_pinned("b", "r2")
    assert cache.pinned_bytes == ROW
    assert cache.release("r1") == 0
    assert cache.release("never") == 0


def test_transaction_commits_on_success():
    cache = EmbeddingCache(3 * ROW)
    with cache.transaction() as c:
        assert c is cache
        cache.put("a", _emb(1))
    assert cache.keys() == ["a"]


def test_transaction_rollback_restores_exactly():
    cache = EmbeddingCache(4 * ROW)
    for k in "abc":
        cache.put(k, _emb(1))
    cache.pin("a", "a")
    cache.pin("a", "a")
    cache.pin("b", "b")
    cache.get("a")
    cache.get("nope")
    before = _state(cache)
    embeddings = {k: cache.peek(k) for k in cache.keys()}
    with pytest.raises(RuntimeError, match="boom"):
        with cache.transaction():
            cache.get("c")  # recency + hit counter
            cache.get("zz")  # miss counter
            cache.put("d", _emb(2), pin_owner="c")  # evicts c (the only unpinned one)
            cache.unpin("a", "a")
            cache.release("b")
            cache.pin("d", "a")
            cache.put("huge", _emb(9))  # rejected counter
            raise RuntimeError("boom")
    assert _state(cache) == before
    assert all(cache.peek(k) is e for k, e in embeddings.items())
    # pin counts too, not just who pins: a needs two unpins
    assert cache.unpin("a", "a") and cache.is_pinned("a", "a")
    assert cache.unpin("a", "a") and not cache.is_pinned("a", "a")
    assert cache.pinned_by("c") == frozenset()


def test_rollback_then_further_use_is_consistent():
    cache = EmbeddingCache(2 * ROW)
    cache.put("a", _emb(1), pin_owner="r")
    with pytest.raises(KeyError):
        with cache.transaction():
            cache.put("b", _emb(1), pin_owner="r")
            cache.pin("missing", "r")
    assert cache.pinned_by("r") == {"a"} and cache.pinned_bytes == ROW
    assert cache.release("r") == 1
    cache.put("b", _emb(1))
    cache.put("c", _emb(1))
    assert cache.keys() == ["b", "c"] and cache.bytes == 2 * ROW


def test_protected_entries_go_after_the_others_farthest_read_first():
    cache = EmbeddingCache(4 * ROW)
    for key in "abcd":
        cache.put(key, _emb(1))
    cache.protect({"a": 0, "b": 900, "c": 30})  # d: read by no running request
    cache.put("e", _emb(1))
    assert cache.keys() == ["a", "b", "c", "e"]  # d first, though a is older
    cache.put("f", _emb(1))
    assert cache.keys() == ["a", "b", "c", "f"]  # e, new but read by no one, before any protected entry
    cache.protect({"a": 0, "b": 900, "c": 30, "f": 10})
    cache.put("g", _emb(1))
    assert cache.keys() == ["a", "c", "f", "g"]  # all protected: b, read farthest ahead, goes
    cache.protect({"a": 0, "c": 0, "f": 0, "g": 0})
    cache.put("h", _emb(1))
    assert cache.keys() == ["c", "f", "g", "h"]  # all equally near: least recently used first


def test_protection_never_refuses_a_put_nor_overrides_a_pin():
    cache = EmbeddingCache(3 * ROW)
    cache.put("a", _emb(1), pin_owner="r")
    cache.put("b", _emb(1))
    cache.protect({"b": 5, "c": 1})
    assert cache.put("c", _emb(2))  # b goes though protected: a put never fails for a soft pin
    assert cache.keys() == ["a", "c"] and cache.is_pinned("a")
    assert not cache.put("d", _emb(3))  # only the pin refuses: 3 rows cannot fit beside a's pinned row
    assert cache.stats().rejected == 1


@given(ops=st.lists(st.tuples(st.sampled_from(["put", "pin", "release", "protect"]), st.integers(0, 7),
                              st.integers(1, 3), st.dictionaries(st.integers(0, 7), st.integers(0, 50))),
                    max_size=60))
@settings(max_examples=200, deadline=None)
def test_protection_changes_which_entry_goes_never_whether_a_put_fits(ops):
    """Soft pins only reorder eviction: a new key's put succeeds exactly when it does in a cache without them,
    the budget holds, pins hold, and an unprotected entry always goes before a protected one."""
    soft, plain = EmbeddingCache(6 * ROW), EmbeddingCache(6 * ROW)
    for op, k, rows, reads in ops:
        key = f"k{k}"
        if op == "put":
            before, fresh = set(soft.keys()), key not in soft and key not in plain
            stored = soft.put(key, _emb(rows)), plain.put(key, _emb(rows))
            assert stored[0] == stored[1] or not fresh  # a key only one of them kept needs no room there
            gone = before - set(soft.keys())
            kept_unprotected = {x for x in soft.keys() if x not in soft.protected and not soft.is_pinned(x)}
            assert not (gone & set(soft.protected) and kept_unprotected - {key})
        elif op == "pin" and key in soft and key in plain:
            soft.pin(key, "r")
            plain.pin(key, "r")
        elif op == "release":
            soft.release("r")
            plain.release("r")
        elif op == "protect":
            soft.protect({f"k{j}": d for j, d in reads.items()})
        assert soft.bytes <= soft.capacity_bytes and soft.pinned_bytes == plain.pinned_bytes
