"""Span: half-open token ranges, inclusive conversion, overlap and validation."""

import pytest

from vitkit import Span


def test_len_and_half_open():
    span = Span(3, 7)
    assert len(span) == 4
    assert len(Span(5, 5)) == 0


def test_from_inclusive_adds_one_to_end():
    assert Span.from_inclusive(3, 6) == Span(3, 7)
    assert len(Span.from_inclusive(0, 0)) == 1


def test_coerce_accepts_span_and_pair():
    span = Span(1, 2)
    assert Span.coerce(span) is span
    assert Span.coerce((1, 2)) == span


@pytest.mark.parametrize("make, error, message", [
    pytest.param(lambda: Span(-1, 4), ValueError, r"start must be >= 0, got \[-1, 4\)", id="negative start"),
    pytest.param(lambda: Span(5, 4), ValueError, r"stop must be >= start, got \[5, 4\)", id="stop before start"),
    pytest.param(lambda: Span(1.0, 3), TypeError, "start must be an int", id="float start"),
    pytest.param(lambda: Span(0, "3"), TypeError, "stop must be an int", id="str stop"),
    pytest.param(lambda: Span(True, 3), TypeError, "start must be an int", id="bool start"),
    pytest.param(lambda: Span(0, False), TypeError, "stop must be an int", id="bool stop"),
    pytest.param(lambda: Span.from_inclusive(0, 2.5), TypeError, "end must be an int", id="float inclusive end"),
    pytest.param(lambda: Span.coerce([1, 2]), TypeError, "Span or a", id="coerce list"),
    pytest.param(lambda: Span.coerce((1, 2, 3)), TypeError, "Span or a", id="coerce triple"),
    pytest.param(lambda: Span.coerce("ab"), TypeError, "Span or a", id="coerce str"),
    pytest.param(lambda: Span.coerce(None), TypeError, "Span or a", id="coerce None"),
])
def test_bad_spans_name_the_numbers(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 4), (4, 8), None),  # touching half-open ranges do not overlap
        ((0, 4), (3, 8), (3, 4)),
        ((2, 6), (0, 10), (2, 6)),
        ((0, 10), (2, 6), (2, 6)),
        ((5, 6), (0, 5), None),
        ((0, 0), (0, 5), None),  # an empty span overlaps nothing
        ((3, 3), (0, 5), None),  # not even inside another span
    ],
)
def test_overlaps_and_intersect(a, b, expected):
    a, b = Span(*a), Span(*b)
    assert a.overlaps(b) == (expected is not None)
    assert b.overlaps(a) == (expected is not None)
    assert a.intersect(b) == (Span(*expected) if expected else None)


def test_frozen_and_ordered():
    span = Span(0, 1)
    with pytest.raises(AttributeError):
        span.start = 3
    assert sorted([Span(4, 5), Span(0, 9), Span(0, 2)]) == [Span(0, 2), Span(0, 9), Span(4, 5)]
    assert repr(Span(1, 2)) == "Span(1, 2)"
