"""Chunk windows: which items a window touches, and slicing their embeddings into the chunk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vitkit.cache import EmbeddingCache
from vitkit.item import MultimodalItem
from vitkit.request import Request
from vitkit.span import Span


@dataclass(frozen=True)
class ChunkEntry:
    """An item overlapping a window: its full span and its embedding (None on a cache miss)."""

    item: MultimodalItem
    span: Span
    embedding: torch.Tensor | None


def check_window(request: Request, window: Span | tuple[int, int]) -> Span:
    """Validate a chunked-prefill window ``[start, stop)`` of ``request`` (unbounded without ``prompt_len``)."""
    try:
        window = Span.coerce(window)
    except (TypeError, ValueError) as err:
        raise type(err)(f"request {request.rid!r}: bad window {window!r}: {err}") from None
    if len(window) == 0:
        raise ValueError(f"request {request.rid!r}: window {window} is empty")
    if request.prompt_len is not None and window.stop > request.prompt_len:
        raise ValueError(
            f"request {request.rid!r}: window {window} runs past the prompt (prompt_len={request.prompt_len})"
        )
    return window


def overlapping(request: Request, window: Span) -> list[tuple[MultimodalItem, Span]]:
    """``(item, span)`` pairs whose spans overlap ``window``, in prompt order."""
    return [(item, span) for item, span in zip(request.items, request.spans) if span.overlaps(window)]


def find_chunk_items(
    request: Request, window: Span | tuple[int, int], cache: EmbeddingCache | None = None
) -> list[ChunkEntry]:
    """Items of ``request`` overlapping ``window``, each with its cached embedding or None.

    SGLang's ``find_chunk_items_and_check_cache``, on half-open spans. Looks each item up with
    ``cache.get``, so it counts hits and misses and refreshes recency.
    """
    window = check_window(request, window)
    return [
        ChunkEntry(item, span, cache.get(item.hash) if cache is not None else None)
        for item, span in overlapping(request, window)
    ]


def assemble_chunk(entries: Sequence[ChunkEntry], window: Span | tuple[int, int]) -> torch.Tensor | None:
    """Concatenate, in prompt order, the rows of each entry's embedding inside ``window``.

    Row ``r`` of an item's embedding is the token at ``span.start + r``. Returns None when no
    entry overlaps. Entries must carry embeddings of exactly ``len(span)`` rows, sorted by span.
    """
    window = Span.coerce(window)
    if len(window) == 0:
        raise ValueError(f"window {window} is empty")
    pieces = []
    for k, entry in enumerate(entries):
        _check_entry(k, entry, window, entries[k - 1].span if k else None)
        part = entry.span.intersect(window)
        pieces.append(entry.embedding[part.start - entry.span.start : part.stop - entry.span.start])
    if not pieces:
        return None
    _check_compatible(entries)
    return torch.cat(pieces, dim=0)


def _check_compatible(entries: Sequence[ChunkEntry]) -> None:
    # torch.cat would promote mixed dtypes silently (and fail on mixed widths with a bare
    # RuntimeError): a cache shared by two encoders is a caller bug worth naming.
    first = entries[0].embedding
    for k, entry in enumerate(entries[1:], start=1):
        emb = entry.embedding
        if emb.shape[1] != first.shape[1] or emb.dtype != first.dtype or emb.device != first.device:
            raise ValueError(
                f"chunk entry {k} (item {entry.item.hash[:12]}) embedding is {emb.dtype} width {emb.shape[1]} "
                f"on {emb.device}, but entry 0's is {first.dtype} width {first.shape[1]} on {first.device}"
            )


def _check_entry(k: int, entry: ChunkEntry, window: Span, previous: Span | None) -> None:
    name = f"chunk entry {k} (item {entry.item.hash[:12]}, span {entry.span})"
    if entry.embedding is None:
        raise ValueError(f"{name} has no embedding: encode cache misses before assembling")
    if entry.embedding.ndim != 2 or entry.embedding.shape[0] != len(entry.span):
        raise ValueError(
            f"{name}: embedding has shape {tuple(entry.embedding.shape)}, expected ({len(entry.span)}, hidden)"
        )
    if not entry.span.overlaps(window):
        raise ValueError(f"{name} does not overlap window {window}")
    if previous is not None and entry.span.start < previous.stop:
        raise ValueError(f"{name} is out of prompt order or overlaps the previous entry's span {previous}")
