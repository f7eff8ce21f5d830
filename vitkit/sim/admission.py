"""Admission policies: may a window be granted, given the embedding cache and the encoder budget?

``"legacy"`` (today's behaviour, SGLang's): the token budget alone decides; the step's misses
are encoded whether or not the cache can keep them, so when pinned entries crowd a small cache
puts are refused and an image straddling a window boundary is encoded again for its next window.

``"cache-aware"`` (vLLM v1's ``Scheduler._try_schedule_encoder_inputs``): before a window is
granted, each image it touches that is not cached (and not already planned in this step) must
fit in the cache, evicting only unreferenced entries, and in the step's encoder token budget;
otherwise the window is cut just before that image, or, when the image is the window's first
token, the request waits for a later step. A request holding an image that could never fit
(larger than the whole cache, or than the encoder budget) is refused when it is added, with a
ValueError: a scheduler waiting for it to fit would loop for ever (a known vLLM failure).

To make "fits" a promise and not a guess, in per-request mode the policy also *holds* (pins,
under its own owner) every cached image a granted window touches, until the next step is
scheduled: a later request's puts could otherwise evict an earlier request's hit before it is
read. (In batched mode every lookup comes before every put, so only the hits ``embed_chunks``
pins for a later window take space.) The space granted this step is then: pinned bytes + held
or newly pinned hits + new images' bytes <= capacity, so every put of the step fits and no entry
a window relies on is evicted in the step.

If, in some step, no window at all can be granted while requests are running (their pins hold
the space each needs: a deadlock vLLM would break by preempting), the head running request's
window is granted as the legacy policy would and the step counts one ``forced`` grant.
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
    """vLLM-style admission over ``requests`` (by rid) for ``cache``.

    ``bytes_per_token``: bytes one embedding row takes in the cache; ``encoder_budget_tokens``:
    embedding rows the encoder may produce in one step (vLLM's ``max_num_encoder_input_tokens``;
    None: no limit besides the cache). ``hold_hits``: hold every cached item a granted window
    touches (needed in per-request mode, where a later request's lookup follows earlier puts);
    in batched mode every lookup precedes every put, so only hits that ``embed_chunks`` will pin
    take space.
    """

    def __init__(
        self,
        requests: Mapping[Hashable, Request],
        cache: EmbeddingCache,
        bytes_per_token: int,
        encoder_budget_tokens: int | None = None,
        *,
        hold_hits: bool = True,
    ) -> None:
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
        request = self.requests[rid]
        for k, item in enumerate(request.items):
            nbytes = item.num_tokens * self.bytes_per_token
            if nbytes > self.cache.capacity_bytes:
                raise ValueError(
                    f"request {rid!r} item {k}: its {item.num_tokens} embedding rows need {nbytes} bytes, more than "
                    f"the whole cache ({self.cache.capacity_bytes} bytes); cache-aware admission could never grant it"
                )
            if self.encoder_budget_tokens is not None and item.num_tokens > self.encoder_budget_tokens:
                raise ValueError(
                    f"request {rid!r} item {k}: {item.num_tokens} embedding rows exceed the encoder budget of "
                    f"{self.encoder_budget_tokens} tokens a step; cache-aware admission could never grant it"
                )

    def begin_step(self, aborted: tuple[Hashable, ...] = ()) -> None:
        """Drop last step's holds and the pins of requests aborted now (the loop would release
        them only after this decision), and take stock of the space the cache can give."""
        self.cache.release(HOLD_OWNER)
        for rid in aborted:
            self.cache.release(rid)
        self._state = _StepState(self.cache.capacity_bytes - self.cache.pinned_bytes, self.encoder_budget_tokens)

    def grant(self, rid: Hashable, start: int, stop: int, *, force: bool = False) -> int:
        """The end of the window ``[start, stop)`` that may run (``start``: none of it).

        Walks the images the window touches in prompt order; stops before the first one that
        does not fit: an uncached image needs its bytes and encoder tokens, a cached one nobody
        pins needs its bytes (it is held for the step). ``force``: grant it anyway, as the
        legacy policy would."""
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
        """Space a cached item of a granted window takes this step: none when someone pins it;
        its bytes when it is held (per-request mode) or pinned by ``embed_chunks`` before the
        step's puts because a later window of the request needs it (it runs past ``stop``, or
        recurs later in the prompt: counted even if the recurrence falls inside the window,
        which only over-reserves)."""
        item, span = request.items[k], request.spans[k]
        if self.cache.is_pinned(item.hash):
            return 0
        later = span.stop > stop or any(other.hash == item.hash for other in request.items[k + 1 :])
        return item.num_tokens * self.bytes_per_token if self.hold_hits or later else 0
