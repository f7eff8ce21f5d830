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


@pytest.mark.parametrize("bad", [[1, 2], (1, 2, 3), "ab", None])
def test_coerce_rejects_other_values(bad):
    with pytest.raises(TypeError, match="Span or a"):
        Span.coerce(bad)


def test_negative_start_names_numbers():
    with pytest.raises(ValueError, match=r"start must be >= 0, got \[-1, 4\)"):
        Span(-1, 4)


def test_stop_before_start_names_numbers():
    with pytest.raises(ValueError, match=r"stop must be >= start, got \[5, 4\)"):
        Span(5, 4)


@pytest.mark.parametrize("start, stop", [(1.0, 3), (0, "3"), (True, 3), (0, False)])
def test_non_int_offsets_raise_type_error(start, stop):
    with pytest.raises(TypeError, match="must be an int"):
        Span(start, stop)


def test_from_inclusive_rejects_non_int_end():
    with pytest.raises(TypeError, match="end must be an int"):
        Span.from_inclusive(0, 2.5)


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
