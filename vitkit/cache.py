"""Content-hash keyed embedding cache: LRU under a byte budget, with per-request pins."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vitkit.checks import positive_int


def embedding_row_bytes(hidden_size: int, dtype: torch.dtype) -> int:
    """Bytes one embedding row takes in the cache: ``hidden_size`` elements of ``dtype``."""
    return positive_int("hidden_size", hidden_size) * dtype.itemsize


@dataclass(frozen=True)
class CacheStats:
    """Counters since construction; bytes are the embeddings' own sizes."""

    hits: int
    misses: int
    evictions: int
    rejected: int  # puts that could not be stored (too large, or the pinned set left no room)
    entries: int
    bytes: int
    pinned_bytes: int
    capacity_bytes: int

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


@dataclass
class _Entry:
    embedding: torch.Tensor
    nbytes: int
    pins: Counter = field(default_factory=Counter)  # owner -> pin count


class EmbeddingCache:
    """Least-recently-used embedding cache that never holds more than ``capacity_bytes``.

    Like SGLang's ``MultiModalStaticCache`` it is keyed by the item's content hash. Unlike it,
    entries can be pinned by an owner (a request id): a pinned entry is never evicted, which
    keeps an image whose tokens straddle a chunk boundary until the request's next window has
    used it (vLLM's encoder cache manager keeps such entries by reference count). Pinned bytes
    count toward the budget. ``protect`` adds soft pins: what a scheduler knows its running
    requests will read goes last, farthest read first, but never makes a put fail.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = positive_int("EmbeddingCache capacity_bytes", capacity_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._owned: dict[Hashable, set[str]] = {}
        # key -> tokens until a running request reads it: evicted after every other unpinned entry, farthest first
        self.protected: Mapping[str, int] = {}
        self.bytes = 0
        self.pinned_bytes = 0
        self.hits = self.misses = self.evictions = self.rejected = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> torch.Tensor | None:
        """The embedding for ``key`` (marking it most recently used), or None; counts hit/miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry.embedding

    def peek(self, key: str) -> torch.Tensor | None:
        """Like ``get`` but changes nothing: no counters, no recency."""
        entry = self._entries.get(key)
        return None if entry is None else entry.embedding

    def put(self, key: str, embedding: torch.Tensor, pin_owner: Hashable | None = None) -> bool:
        """Store ``embedding`` under ``key``, evicting unpinned LRU entries as needed; False, storing
        nothing, when it cannot fit even then.

        A view into a larger buffer (one item of a batched encoder output) is copied first, so the
        stored bytes are the bytes counted. ``pin_owner`` pins the entry at once, so no later put
        of the step can evict it.
        """
        if not isinstance(embedding, torch.Tensor):
            raise TypeError(f"cache put {key!r}: embedding must be a torch.Tensor, got {type(embedding).__name__}")
        if key in self._entries:
            self._entries.move_to_end(key)
        else:
            nbytes = embedding.numel() * embedding.element_size()
            if not self._make_room(nbytes):
                self.rejected += 1
                return False
            if embedding.untyped_storage().nbytes() > nbytes:
                embedding = embedding.clone()
            self._entries[key] = _Entry(embedding, nbytes)
            self.bytes += nbytes
        if pin_owner is not None:
            self.pin(key, pin_owner)
        return True

    def protect(self, reads_in: Mapping[str, int]) -> None:
        """Soft pins for what a scheduler knows its running requests will read: ``reads_in`` maps a key to the
        tokens until it is read (replacing the last map). Such an entry is evicted only when no other unpinned
        one is left, and then the one read farthest ahead first (Belady's choice over the known reads). Unlike
        a pin it never makes a put fail."""
        self.protected = dict(reads_in)

    def _make_room(self, nbytes: int) -> bool:
        if nbytes > self.capacity_bytes - self.pinned_bytes:
            return False  # even evicting every unpinned entry would not do
        # one oldest unpinned entry at a time (unprotected ones first), so a put skips only what it must
        while self.bytes + nbytes > self.capacity_bytes:
            oldest = next((k for k, e in self._entries.items() if not e.pins and k not in self.protected), None)
            if oldest is None:  # max keeps the first of equals: the least recently used
                oldest = max((k for k, e in self._entries.items() if not e.pins), key=self.protected.__getitem__)
            self.bytes -= self._entries.pop(oldest).nbytes
            self.evictions += 1
        return True

    def pin(self, key: str, owner: Hashable) -> None:
        """Add one pin on ``key`` for ``owner`` (reference counted)."""
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"cannot pin {key!r} for owner {owner!r}: not in the cache")
        if not entry.pins:
            self.pinned_bytes += entry.nbytes
        entry.pins[owner] += 1
        self._owned.setdefault(owner, set()).add(key)

    def unpin(self, key: str, owner: Hashable) -> bool:
        """Drop one of ``owner``'s pins on ``key``; False when it held none."""
        entry = self._entries.get(key)
        if entry is None or entry.pins[owner] <= 0:
            return False
        entry.pins[owner] -= 1
        if entry.pins[owner] == 0:
            self._drop_owner(entry, key, owner)
        return True

    def release(self, owner: Hashable) -> int:
        """Drop every pin ``owner`` holds (a finished or aborted request); returns keys released."""
        keys = self._owned.get(owner, set()).copy()
        for key in keys:
            self._drop_owner(self._entries[key], key, owner)
        return len(keys)

    def _drop_owner(self, entry: _Entry, key: str, owner: Hashable) -> None:
        del entry.pins[owner]
        owned = self._owned[owner]
        owned.discard(key)
        if not owned:
            del self._owned[owner]
        if not entry.pins:
            self.pinned_bytes -= entry.nbytes

    def is_pinned(self, key: str, owner: Hashable | None = None) -> bool:
        entry = self._entries.get(key)
        return entry is not None and (bool(entry.pins) if owner is None else entry.pins[owner] > 0)

    def pinned_by(self, owner: Hashable) -> frozenset[str]:
        return frozenset(self._owned.get(owner, ()))

    def owners(self, key: str) -> frozenset[Hashable]:
        """Who pins ``key`` (empty when unpinned or absent): an admission asks before it lets a pin go."""
        entry = self._entries.get(key)
        return frozenset(entry.pins) if entry is not None else frozenset()

    def nbytes(self, key: str) -> int:
        """Bytes the entry for ``key`` takes (0 when absent)."""
        entry = self._entries.get(key)
        return entry.nbytes if entry is not None else 0

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)

    @contextmanager
    def transaction(self) -> Iterator[EmbeddingCache]:
        """Undo every change made inside the block (entries, recency, pins, counters) if it raises.

        ``embed_chunks`` runs a step inside one, so a failing encoder leaves the cache exactly
        as it was. The snapshot is shallow: O(entries) references, no tensor copies.
        """
        entries = OrderedDict(self._entries)
        pins = {key: Counter(e.pins) for key, e in entries.items() if e.pins}
        owned = {owner: set(keys) for owner, keys in self._owned.items()}
        counters = (self.bytes, self.pinned_bytes, self.hits, self.misses, self.evictions, self.rejected)
        try:
            yield self
        except BaseException:
            for key, entry in entries.items():
                entry.pins = Counter(pins.get(key, {}))
            self._entries, self._owned = entries, owned
            self.bytes, self.pinned_bytes, self.hits, self.misses, self.evictions, self.rejected = counters
            raise

    def stats(self) -> CacheStats:
        return CacheStats(hits=self.hits, misses=self.misses, evictions=self.evictions, rejected=self.rejected,
                          entries=len(self._entries), bytes=self.bytes, pinned_bytes=self.pinned_bytes,
                          capacity_bytes=self.capacity_bytes)
