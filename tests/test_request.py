"""Request: span/item validation and prompt layout from segments."""

import re

import pytest
import torch

from conftest import item as _item
from vitkit import EmbeddingCache, MultimodalItem, Request, Span, embed_chunks, find_chunk_items


def test_spans_are_coerced_and_prompt_len_stays_unknown():
    req = Request("r", [_item(3), _item(2, 1)], [(1, 4), Span(6, 8)])
    assert req.spans == (Span(1, 4), Span(6, 8))
    assert isinstance(req.items, tuple)
    assert req.prompt_len is None  # not guessed from the spans: text may follow the last image
    assert req.items_stop == 8
    assert req.image_tokens == 5


def test_empty_request():
    req = Request("t", [], [])
    assert req.prompt_len is None and req.items_stop == 0 and req.image_tokens == 0


def test_span_length_must_match_num_tokens():
    item = _item(4)
    expected = rf"request 'r1' item 0 \(hash {item.hash[:12]}\): span Span\(0, 3\) holds 3 tokens"
    with pytest.raises(ValueError, match=expected + " but the item has num_tokens=4"):
        Request("r1", [item], [(0, 3)])


@pytest.mark.parametrize(
    "span, error, detail",
    [
        ((5, 3), ValueError, r"Span stop must be >= start, got \[5, 3\)"),
        ((-1, 3), ValueError, r"Span start must be >= 0, got \[-1, 3\)"),
        ((0, 4.0), TypeError, r"Span stop must be an int, got float 4.0"),
        ("ab", TypeError, r"expected a Span or a \(start, stop\) tuple"),
    ],
)
def test_bad_span_names_request_and_item(span, error, detail):
    with pytest.raises(error, match=re.escape(f"request 'r9' item 1: bad span {span!r}: ") + detail):
        Request("r9", [_item(4), _item(4, 1)], [(0, 4), span])


def test_adjacent_spans_are_fine():
    req = Request("r", [_item(4), _item(2, 1)], [(0, 4), (4, 6)])
    assert req.items_stop == 6


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_prompt_len_must_be_non_negative_int(bad):
    with pytest.raises(ValueError, match=f"request 'r7': prompt_len must be a non-negative int, got {bad!r}"):
        Request("r7", [], [], prompt_len=bad)


def test_from_segments_lays_out_text_and_items():
    a, b = _item(3), _item(5, 1)
    req = Request.from_segments("s", [2, a, 0, 4, b, 1])
    assert req.items == (a, b)
    assert req.spans == (Span(2, 5), Span(9, 14))
    assert req.prompt_len == 15


def test_request_is_frozen():
    req = Request("r", [], [])
    with pytest.raises(AttributeError):
        req.rid = "other"


@pytest.mark.parametrize("make, error, message", [
    pytest.param(lambda: Request("r2", [_item(4), _item(2, 1)], [(0, 4), (3, 5)]), ValueError,
                 r"request 'r2': span of item 1 Span\(3, 5\) overlaps span of item 0 Span\(0, 4\)", id="overlap"),
    pytest.param(lambda: Request(7, [_item(4), _item(2, 1)], [(5, 9), (0, 2)]), ValueError,
                 r"request 7: span of item 1 Span\(0, 2\) comes before span of item 0 Span\(5, 9\)", id="unsorted"),
    pytest.param(lambda: Request("r3", [_item(1), _item(1)], [(0, 1)]), ValueError,
                 "request 'r3': 2 items but 1 spans", id="count mismatch"),
    pytest.param(lambda: Request("r4", [torch.zeros(2)], [(0, 1)]), TypeError,
                 "request 'r4': items must be MultimodalItem, got Tensor", id="not an item"),
    pytest.param(lambda: Request("r5", [_item(2)], [[0, 2]]), TypeError, "request 'r5' item 0: bad span", id="list span"),
    pytest.param(lambda: Request("r6", [_item(4)], [(2, 6)], prompt_len=5), ValueError,
                 r"request 'r6': last span Span\(2, 6\) ends past prompt_len=5", id="prompt_len short"),
    pytest.param(lambda: Request.from_segments("s", [2, -1]), TypeError,
                 "request 's' segment 1: expected a text token count", id="negative text segment"),
    pytest.param(lambda: Request.from_segments("s", ["hello"]), TypeError, "segment 0", id="str segment"),
    pytest.param(lambda: Request(["a"], (), ()), TypeError, r"request id must be hashable, got list \['a'\]",
                 id="unhashable rid"),
])
def test_bad_requests_name_the_request(make, error, message):
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------- the SPEC form: no prompt_len, text after the last item


def _rows(items):
    """A fake encoder: item ``k`` of a call gets rows filled with its feature's first value."""
    return [torch.full((it.num_tokens, 2), float(it.cpu_feature[0])) for it in items]


def test_without_prompt_len_windows_past_the_last_item_are_valid():
    a = _item(4, 1)
    req = Request("u", [a], [(2, 6)])  # the scheduler knows only the item; the prompt goes on
    assert find_chunk_items(req, (6, 50)) == []
    res = embed_chunks([(req, (4, 40))], _rows, EmbeddingCache(1 << 20))
    assert res.embeddings[0].shape == (2, 2)  # a's last two rows, then text
    assert embed_chunks([(req, (40, 90))], _rows, EmbeddingCache(1 << 20)).embeddings == [None]


def test_without_prompt_len_pins_go_once_a_window_passes_the_last_item():
    a, b = _item(4, 1), _item(3, 2)
    req = Request("u", [a, b], [(2, 6), (8, 11)])
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(req, (0, 4))], _rows, cache)
    assert cache.pinned_by("u") == {a.hash}  # a runs on past the window
    embed_chunks([(req, (4, 9))], _rows, cache)
    assert cache.pinned_by("u") == {b.hash}
    embed_chunks([(req, (9, 30))], _rows, cache)  # passes b, the last item, into trailing text
    assert cache.pinned_by("u") == frozenset() and cache.stats().pinned_bytes == 0
    embed_chunks([(req, (30, 60))], _rows, cache)  # more text: valid, nothing to pin
    assert cache.pinned_by("u") == frozenset()


def test_with_prompt_len_pins_also_go_at_the_last_item_not_the_prompt_end():
    a = _item(4, 1)
    req = Request.from_segments("b", [1, a, 20])  # a [1, 5), prompt 25
    cache = EmbeddingCache(1 << 20)
    embed_chunks([(req, (0, 3))], _rows, cache)
    assert cache.pinned_by("b") == {a.hash}
    embed_chunks([(req, (3, 10))], _rows, cache)  # window past a, prompt not done: no pins kept
    assert cache.pinned_by("b") == frozenset()


def test_a_given_prompt_len_still_bounds_the_windows():
    req = Request("g", [_item(4)], [(2, 6)], prompt_len=10)
    with pytest.raises(ValueError, match=r"request 'g': window Span\(8, 11\) runs past the prompt \(prompt_len=10\)"):
        find_chunk_items(req, (8, 11))
