"""Chunk windows: finding overlapping items, window validation, assembling chunk rows."""

import pytest
import torch

from conftest import item as _item
from vitkit import ChunkEntry, EmbeddingCache, Request, Span, assemble_chunk, find_chunk_items

HIDDEN = 3


def _emb(item, seed):
    # row r of item seed s holds s*100 + r: every row of every item is distinguishable
    return (seed * 100 + torch.arange(item.num_tokens, dtype=torch.float32)).unsqueeze(1).repeat(1, HIDDEN)


@pytest.fixture
def layout():
    # prompt: 2 text | A(4) | 3 text | B(5) | 1 text | C(2) | 2 text  -> 19 tokens
    a, b, c = _item(4, 1), _item(5, 2), _item(2, 3)
    req = Request.from_segments("r", [2, a, 3, b, 1, c, 2])
    return req, (a, b, c)


def test_find_chunk_items_in_prompt_order_with_spans(layout):
    req, (a, b, c) = layout
    entries = find_chunk_items(req, Span(4, 15))
    assert [e.item for e in entries] == [a, b]
    assert [e.span for e in entries] == [Span(2, 6), Span(9, 14)]
    assert all(e.embedding is None for e in entries)
    assert [e.item for e in find_chunk_items(req, (0, 19))] == [a, b, c]


def test_window_touching_span_edge_does_not_overlap(layout):
    req, (a, b, c) = layout
    assert find_chunk_items(req, (0, 2)) == []  # ends where A starts
    assert find_chunk_items(req, (6, 9)) == []  # text between A and B
    assert [e.item for e in find_chunk_items(req, (5, 10))] == [a, b]


def test_find_chunk_items_reads_the_cache_and_counts(layout):
    req, (a, b, c) = layout
    cache = EmbeddingCache(1 << 20)
    eb = _emb(b, 2)
    cache.put(b.hash, eb)
    entries = find_chunk_items(req, (0, 12), cache)
    assert entries[0].embedding is None and entries[1].embedding is eb
    s = cache.stats()
    assert (s.hits, s.misses) == (1, 1)


@pytest.mark.parametrize("window, error, message", [
    ((3, 3), ValueError, r"request 'r': window Span\(3, 3\) is empty"),
    ((-2, 4), ValueError, r"request 'r': bad window \(-2, 4\): .*start must be >= 0"),
    ((5, 4), ValueError, r"request 'r': bad window \(5, 4\)"),
    ((10, 20), ValueError, r"request 'r': window Span\(10, 20\) runs past the prompt \(prompt_len=19\)"),
    ([0, 4], TypeError, "request 'r': bad window"),
])
def test_bad_windows_name_the_request(layout, window, error, message):
    req, _ = layout
    with pytest.raises(error, match=message):
        find_chunk_items(req, window)


def test_window_up_to_the_prompt_end_is_fine(layout):
    req, _ = layout
    assert find_chunk_items(req, (10, 19))


def _filled(req, embs, window):
    return [
        ChunkEntry(e.item, e.span, embs[e.item]) for e in find_chunk_items(req, window)
    ]


def test_assemble_slices_rows_inside_window(layout):
    req, (a, b, c) = layout
    embs = {a: _emb(a, 1), b: _emb(b, 2), c: _emb(c, 3)}
    # window [4, 12): rows 2..3 of A (tokens 4, 5), rows 0..2 of B (tokens 9, 10, 11)
    chunk = assemble_chunk(_filled(req, embs, (4, 12)), (4, 12))
    assert chunk[:, 0].tolist() == [102, 103, 200, 201, 202]
    assert chunk.shape == (5, HIDDEN)


def test_assemble_concatenation_over_windows_is_the_full_sequence(layout):
    req, (a, b, c) = layout
    embs = {a: _emb(a, 1), b: _emb(b, 2), c: _emb(c, 3)}
    for size in range(1, 20):
        pieces = []
        for start in range(0, req.prompt_len, size):
            window = (start, min(start + size, req.prompt_len))
            chunk = assemble_chunk(_filled(req, embs, window), window)
            if chunk is not None:
                pieces.append(chunk)
        assert torch.equal(torch.cat(pieces), torch.cat([embs[a], embs[b], embs[c]])), size


def test_assemble_returns_none_without_entries():
    assert assemble_chunk([], (0, 4)) is None


def test_assemble_rejects_empty_window(layout):
    req, (a, b, c) = layout
    entry = ChunkEntry(a, req.spans[0], _emb(a, 1))
    for entries in ([entry], []):  # not a zero-row chunk, nor None: an empty window is a caller bug
        with pytest.raises(ValueError, match=r"window Span\(4, 4\) is empty"):
            assemble_chunk(entries, (4, 4))


@pytest.mark.parametrize("entries, window, message", [
    pytest.param(lambda req, a, b, c: find_chunk_items(req, (0, 8)), (0, 8),
                 lambda a, b: rf"chunk entry 0 \(item {a.hash[:12]}, span Span\(2, 6\)\) has no embedding", id="miss"),
    pytest.param(lambda req, a, b, c: [ChunkEntry(a, Span(2, 6), torch.zeros(3, HIDDEN))], (0, 8),
                 lambda a, b: r"embedding has shape \(3, 3\), expected \(4, hidden\)", id="row count"),
    pytest.param(lambda req, a, b, c: [ChunkEntry(a, Span(2, 6), torch.zeros(4))], (0, 8),
                 lambda a, b: r"shape \(4,\), expected \(4, hidden\)", id="1-d"),
    pytest.param(lambda req, a, b, c: [ChunkEntry(c, Span(15, 17), _emb(c, 3))], (0, 8),
                 lambda a, b: r"does not overlap window Span\(0, 8\)", id="outside window"),
    pytest.param(lambda req, a, b, c: [ChunkEntry(b, Span(9, 14), _emb(b, 2)), ChunkEntry(a, Span(2, 6), _emb(a, 1))],
                 (0, 19), lambda a, b: r"chunk entry 1 .* out of prompt order .* Span\(9, 14\)", id="out of order"),
])
def test_assemble_rejects_bad_entries_by_name(layout, entries, window, message):
    req, (a, b, c) = layout
    with pytest.raises(ValueError, match=message(a, b)):
        assemble_chunk(entries(req, a, b, c), window)


def test_assembled_chunk_keeps_device_and_dtype(layout):
    req, (a, b, c) = layout
    embs = {a: _emb(a, 1).to(torch.float16), b: _emb(b, 2).to(torch.float16), c: _emb(c, 3).to(torch.float16)}
    chunk = assemble_chunk(_filled(req, embs, (0, 19)), (0, 19))
    assert chunk.dtype == torch.float16 and chunk.device == embs[a].device
    meta = {k: v.to("meta") for k, v in embs.items()}
    assert assemble_chunk(_filled(req, meta, (3, 12)), (3, 12)).device.type == "meta"


@pytest.mark.parametrize(
    "other, what",
    [(torch.zeros(5, HIDDEN + 1), "width 4"), (torch.zeros(5, HIDDEN, dtype=torch.float64), "torch.float64")],
)
def test_assemble_rejects_mixed_width_or_dtype(layout, other, what):
    # regression: mixed dtypes were promoted silently by torch.cat, mixed widths failed with
    # a bare RuntimeError
    req, (a, b, c) = layout
    entries = [ChunkEntry(a, Span(2, 6), _emb(a, 1)), ChunkEntry(b, Span(9, 14), other)]
    expected = rf"chunk entry 1 \(item {b.hash[:12]}\) embedding is .*{what}.* but entry 0's is torch.float32 width 3"
    with pytest.raises(ValueError, match=expected):
        assemble_chunk(entries, (0, 19))
