"""Request: span/item validation and prompt layout from segments."""

import re

import pytest
import torch

from conftest import item as _item
from vitkit import MultimodalItem, Request, Span


def test_spans_are_coerced_and_prompt_len_defaults_to_last_stop():
    req = Request("r", [_item(3), _item(2, 1)], [(1, 4), Span(6, 8)])
    assert req.spans == (Span(1, 4), Span(6, 8))
    assert isinstance(req.items, tuple)
    assert req.prompt_len == 8
    assert req.image_tokens == 5


def test_empty_request():
    req = Request("t", [], [])
    assert req.prompt_len == 0 and req.image_tokens == 0


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
    assert req.prompt_len == 6


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
