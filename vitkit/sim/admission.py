"""Admission policies: may a window be granted, given the embedding cache and the encoder budget?

``"legacy"`` (SGLang's): the token budget alone decides, so a crowded cache refuses puts and re-encodes
images that straddle windows. ``"cache-aware"`` (vLLM v1's): each uncached image a window touches must
fit in the cache and the step's encoder budget, else the window is cut before it; in per-request mode the
cached images a granted window touches are held for the step, so "fits" is a promise. A request with an
image that could never fit is refused when added, and when running requests' pins deadlock the cache the
head one's window is forced (vLLM would preempt): either way the loop never spins.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from vitkit.cache import EmbeddingCache
from vitkit.checks import positive_int
from vitkit.request import Request

POLICIES = ("legacy", "cache-aware")
HOLD_OWNER = ("vitkit.sim.admission", "hold")  # pin owner for the step's held hits


@dataclass
class _StepState:
    free_bytes: int = 0  # capacity - pinned - reserved this step
    budget_tokens: int | None = None  # encoder tokens left this step
    planned: set[str] = field(default_factory=set)  # hashes this step will encode or holds


class CacheAwareAdmission:
    """vLLM-style admission over ``requests`` (by rid) for ``cache``. ``encoder_budget_tokens``: embedding
    rows the encoder may produce a step (None: only the cache limits). ``hold_hits``: hold every cached
    item a granted window touches (per-request mode, where puts come between lookups)."""

    def __init__(self, requests: Mapping[Hashable, Request], cache: EmbeddingCache, bytes_per_token: int,
                 encoder_budget_tokens: int | None = None, *, hold_hits: bool = True) -> None:
        positive_int("bytes_per_token", bytes_per_token)
        if encoder_budget_tokens is not None:
            positive_int("encoder_budget_tokens", encoder_budget_tokens)
        self.requests = requests
        self.cache = cache
        self.bytes_per_token = bytes_per_token
        self.encoder_budget_tokens = encoder_budget_tokens
        self.hold_hits = hold_hits
        self.forced = 0  # deadlock-breaking grants so far
        self._state = _StepState()

    def check(self, rid: Hashable) -> None:
        """Refuse (ValueError) a request with an image that can never be granted."""
        for k, item in enumerate(self.requests[rid].items):
            nbytes = item.num_tokens * self.bytes_per_token
            if nbytes > self.cache.capacity_bytes:
                raise ValueError(f"request {rid!r} item {k}: its {item.num_tokens} embedding rows need {nbytes} bytes, "
                                 f"more than the whole cache ({self.cache.capacity_bytes} bytes); cache-aware "
                                 "admission could never grant it")
            if self.encoder_budget_tokens is not None and item.num_tokens > self.encoder_budget_tokens:
                raise ValueError(f"request {rid!r} item {k}: {item.num_tokens} embedding rows exceed the encoder "
                                 f"budget of {self.encoder_budget_tokens} tokens a step; cache-aware admission could "
                                 "never grant it")

    def begin_step(self, aborted: tuple[Hashable, ...] = ()) -> None:
        """Drop last step's holds and the pins of requests aborted now (the loop would release
        them only after this decision), and take stock of the space the cache can give."""
        self.cache.release(HOLD_OWNER)
        for rid in aborted:
            self.cache.release(rid)
        self._state = _StepState(self.cache.capacity_bytes - self.cache.pinned_bytes, self.encoder_budget_tokens)

    def grant(self, rid: Hashable, start: int, stop: int, *, force: bool = False) -> int:
        """The end of the window ``[start, stop)`` that may run (``start``: none of it): before the first image
        that does not fit (uncached: its bytes and encoder tokens; cached, unpinned: its bytes).
        ``force``: grant it anyway, as the legacy policy would."""
        request, state = self.requests[rid], self._state
        for k, (item, span) in enumerate(zip(request.items, request.spans)):
            if span.stop <= start or span.start >= stop:
                continue
            key = item.hash
            if key in state.planned:
                continue
            cached = key in self.cache
            nbytes = self._hit_bytes(request, k, stop) if cached else item.num_tokens * self.bytes_per_token
            tokens = 0 if cached else item.num_tokens
            fits = nbytes <= state.free_bytes and (state.budget_tokens is None or tokens <= state.budget_tokens)
            if not fits and not force:
                return max(start, span.start)
            state.free_bytes -= nbytes
            if state.budget_tokens is not None:
                state.budget_tokens -= tokens
            state.planned.add(key)
            if cached and self.hold_hits:
                self.cache.pin(key, HOLD_OWNER)
        self.forced += force
        return stop

    def _hit_bytes(self, request: Request, k: int, stop: int) -> int:
        """Space a cached item of a granted window takes this step: none when pinned already; its bytes when
        held, or when ``embed_chunks`` will pin it for a later window (it runs past ``stop`` or recurs
        later in the prompt, even inside the window: that only over-reserves)."""
        item, span = request.items[k], request.spans[k]
        if self.cache.is_pinned(item.hash):
            return 0
        later = span.stop > stop or any(other.hash == item.hash for other in request.items[k + 1 :])
        return item.num_tokens * self.bytes_per_token if self.hold_hits or later else 0
