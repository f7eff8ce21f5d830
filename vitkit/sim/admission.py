"""Admission policies: may a window be granted, given the embedding cache and the encoder budget?

``"legacy"`` (SGLang's): the token budget alone decides, so a crowded cache refuses puts and re-encodes
images that straddle windows. ``"cache-aware"`` follows vLLM v1's ``Scheduler._try_schedule_encoder_inputs``
(``vllm/v1/core/sched/scheduler.py``) over its ``EncoderCacheManager.can_allocate``
(``vllm/v1/core/encoder_cache_manager.py``): an item is encoded whole at the first window that overlaps it,
and a window is cut before the first uncached item that does not fit the step's encoder budget or the space
the cache can give (capacity minus pinned bytes). In per-request mode the cached items a granted window
touches are held for the step, so "fits" is a promise. A request with an item that could never fit is
refused when added (``check``; vLLM rejects such a request with "exceeds the pre-allocated encoder cache
size", #33110, where it used to hang, #26223).

What stays pinned between steps, and why no window is ever forced:

- a running request pins the item its position is inside (tokens on both sides of its last window), until
  a window passes the item's end: vLLM's reference, held until ``free_encoder_input``;
- vitkit also *holds* an image a running request showed and shows again later (``hold_recurring``; vLLM
  keeps none and finds the repeat only if nothing evicted it). A hold yields in two cases only: the
  request's next item does not fit beside its own pins even in an empty cache (waiting would never help),
  then that request lets its holds go, farthest next use first; or no running request can be granted
  anything, then the newest running request that holds any lets them all go (``unblock``; the order in
  which vLLM picks a preemption victim, ``self.running.pop()``). A released image is re-encoded later only
  if the cache evicts it meanwhile.

So when every item fits the cache and the encoder budget on its own, every step grants a window: a running
request inside an item can always run to that item's end (it needs nothing new), and when none is inside
one, only holds are pinned, and once they are let go the oldest running request's next item fits. No
window is forced and no put is refused; the scheduler's preemption (``Scheduler._preempt``, vLLM's) is
there for an admission that can deadlock, and this one never needs it.
"""

from __future__ import annotations

import math
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
    planned: set[str] = field(default_factory=set)  # hashes a granted window touches: never let go this step
    reserved: set[str] = field(default_factory=set)  # of those, the ones whose bytes are counted (or pinned)
    progress: dict[Hashable, int] = field(default_factory=dict)  # running rids, oldest first -> tokens done


class CacheAwareAdmission:
    """vLLM-style admission over ``requests`` (by rid) for ``cache``. ``encoder_budget_tokens``: embedding
    rows the encoder may produce a step (None: only the cache limits). ``hold_hits``: hold every cached
    item a granted window touches (per-request mode, where puts come between lookups). ``hold_recurring``:
    ``embed_chunks`` keeps images a request shows again (its ``pin_recurring``), so their bytes are reserved."""

    def __init__(self, requests: Mapping[Hashable, Request], cache: EmbeddingCache, bytes_per_token: int,
                 encoder_budget_tokens: int | None = None, *, hold_hits: bool = True,
                 hold_recurring: bool = True) -> None:
        positive_int("bytes_per_token", bytes_per_token)
        if encoder_budget_tokens is not None:
            positive_int("encoder_budget_tokens", encoder_budget_tokens)
        self.requests = requests
        self.cache = cache
        self.bytes_per_token = bytes_per_token
        self.encoder_budget_tokens = encoder_budget_tokens
        self.hold_hits = hold_hits
        self.hold_recurring = hold_recurring
        self.released = 0  # holds let go so that a running request's next item fits
        self._state = _StepState()

    def check(self, rid: Hashable) -> None:
        """Refuse (ValueError) a request with an item that can never be granted."""
        for k, item in enumerate(self.requests[rid].items):
            nbytes = item.num_tokens * self.bytes_per_token
            if nbytes > self.cache.capacity_bytes:
                raise ValueError(f"request {rid!r} item {k}: its {item.num_tokens} embedding rows ({item.modality}) "
                                 f"need {nbytes} bytes, more than the whole cache ({self.cache.capacity_bytes} bytes, "
                                 f"{self.cache.capacity_bytes // self.bytes_per_token} rows); cache-aware admission "
                                 "could never grant it")
            if self.encoder_budget_tokens is not None and item.num_tokens > self.encoder_budget_tokens:
                raise ValueError(f"request {rid!r} item {k}: {item.num_tokens} embedding rows ({item.modality}) "
                                 f"exceed the encoder budget of {self.encoder_budget_tokens} tokens a step; "
                                 "cache-aware admission could never grant it")

    def begin_step(self, aborted: tuple[Hashable, ...] = (), progress: Mapping[Hashable, int] | None = None) -> None:
        """Drop last step's holds and the pins of requests aborted now (the loop would release them only
        after this decision), and take stock of the space the cache can give. ``progress``: the running
        requests, oldest first, and the prompt tokens each has done (who may release whose holds)."""
        self.cache.release(HOLD_OWNER)
        for rid in aborted:
            self.cache.release(rid)
        self._state = _StepState(self.cache.capacity_bytes - self.cache.pinned_bytes, self.encoder_budget_tokens,
                                 progress=dict(progress or {}))

    def preempt(self, rid: Hashable) -> None:
        """A preempted request keeps nothing (vLLM's ``encoder_cache_manager.free(request)``)."""
        self.cache.release(rid)

    def unblock(self) -> bool:
        """No running request could be granted anything: the newest one holding images lets them all go;
        False when none holds any (only a preemption could free space then)."""
        for owner in reversed(self._state.progress):
            holds = self._holds(owner)
            if holds:
                self._let_go([(owner, key) for key in holds])
                return True
        return False

    def grant(self, rid: Hashable, start: int, stop: int) -> int:
        """The end of the window ``[start, stop)`` that may run (``start``: none of it): before the first item
        that does not fit (uncached: its bytes and encoder tokens; cached, unpinned: its bytes)."""
        request, state = self.requests[rid], self._state
        for k, (item, span) in enumerate(zip(request.items, request.spans)):
            if span.stop <= start or span.start >= stop or item.hash in state.reserved:
                continue
            cached = item.hash in self.cache
            # a hit may cost nothing now and its bytes later in the window: an image shown again there
            # whose tokens run past the window is pinned, so each occurrence is weighed until one counts
            nbytes = self._hit_bytes(request, k, stop) if cached else item.num_tokens * self.bytes_per_token
            tokens = 0 if cached else item.num_tokens
            if state.budget_tokens is not None and tokens > state.budget_tokens:
                return max(start, span.start)
            if nbytes > state.free_bytes and not self._release_holds(rid, nbytes):
                return max(start, span.start)
            state.free_bytes -= nbytes
            if state.budget_tokens is not None:
                state.budget_tokens -= tokens
            state.planned.add(item.hash)
            if nbytes or not cached or self.cache.is_pinned(item.hash):
                state.reserved.add(item.hash)
            if cached and self.hold_hits and not self.cache.is_pinned(item.hash, HOLD_OWNER):
                self.cache.pin(item.hash, HOLD_OWNER)
        return stop

    def _hit_bytes(self, request: Request, k: int, stop: int) -> int:
        """Space a cached item of a granted window takes this step: none when pinned already; its bytes when
        held, or when ``embed_chunks`` will pin it for a later window (it runs past ``stop``, or recurs
        later in the prompt and recurrences are kept, even inside the window: that only over-reserves)."""
        item, span = request.items[k], request.spans[k]
        if self.cache.is_pinned(item.hash):
            return 0
        recurs = self.hold_recurring and any(other.hash == item.hash for other in request.items[k + 1 :])
        return item.num_tokens * self.bytes_per_token if self.hold_hits or span.stop > stop or recurs else 0

    def _release_holds(self, rid: Hashable, item_bytes: int) -> bool:
        """When a running request's next item (``item_bytes``, more than is free) could never fit beside its own
        pins, let go of its holds, farthest next use first, until it fits; none, returning False, when all of
        them would not do (or waiting for others' pins to go could)."""
        if rid not in self._state.progress:
            return False  # a waiting request waits for holds to end; it takes none
        if item_bytes + sum(self.cache.nbytes(k) for k in self.cache.pinned_by(rid)) <= self.cache.capacity_bytes:
            return False  # it fits beside its own pins once others' go: it waits for them
        need_bytes, chosen, freed = item_bytes - self._state.free_bytes, [], 0
        for key in self._holds(rid):
            chosen.append((rid, key))
            if self.cache.owners(key) <= {rid}:  # no other pin keeps it: its bytes come free
                freed += self.cache.nbytes(key)
            if freed >= need_bytes:
                self._let_go(chosen)
                return True
        return False

    def _holds(self, owner: Hashable) -> list[str]:
        """``owner``'s pins on images it is not inside (shown before, shown again later), farthest next use
        first; never one this step has planned."""
        request, done = self.requests[owner], self._state.progress[owner]
        next_use: dict[str, int] = {}
        for item, span in zip(request.items, request.spans):
            if span.start < done < span.stop:
                next_use[item.hash] = -1  # inside it: a straddling item, not a hold
            elif span.start >= done and next_use.get(item.hash, 0) >= 0:
                next_use[item.hash] = min(next_use.get(item.hash, span.start), span.start)
        keys = [k for k in self.cache.pinned_by(owner) if k not in self._state.planned and next_use.get(k) != -1]
        return sorted(keys, key=lambda k: (-next_use.get(k, math.inf), k))  # one never needed again goes first

    def _let_go(self, chosen: list[tuple[Hashable, str]]) -> None:
        for owner, key in chosen:
            was_pinned = self.cache.is_pinned(key)
            while self.cache.unpin(key, owner):
                pass
            if was_pinned and not self.cache.is_pinned(key):
                self._state.free_bytes += self.cache.nbytes(key)
            self.released += 1
