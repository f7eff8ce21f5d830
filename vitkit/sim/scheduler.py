"""Chunked-prefill scheduler policies: which window of which prompt runs in each step.

The scheduler only decides (nano-vllm's split): asked for a step at the current clock
(``schedule(now_ms, view)``), it hands out token windows and never encodes; ``vitkit.sim.engine``
runs them and moves the clock. ``Scheduler`` gives each step a token budget,
``chunked_prefill_size``. Running requests take it first, in arrival order; then waiting requests
that have arrived join, in arrival order, while budget is left (and, optionally, while fewer than
``max_running`` run). A request granted ``g`` tokens runs the window ``[done, done + g)`` and
leaves when its prompt is done. This is SGLang's ``PrefillAdder`` (the chunked request continues
first, then new requests; only the last one admitted can be cut, so at most one request is
part-way through its prompt between steps) and vLLM v1's order (running before waiting,
``max_num_batched_tokens``, ``max_num_seqs``), for the prefill phase only: decode tokens are not
modelled.

Optionally each request gets at most ``long_prefill_token_threshold`` tokens a step (vLLM v1's
knob of that name). Then several requests can be part-way through their prompts at once, and an
image straddling one request's window boundary can be evicted by another request's encodes
before its next window runs; that is the case the cache's pins are for. Without the cap only the
last request of a step is cut, and it runs first in the next step, before anything is stored.
With the cap and no step budget (``Scheduler.fixed_chunk``) every unfinished request advances the
same number of tokens each step: notebook 01's simplest chunked prefill.

With an ``admission`` policy set (``vitkit.sim.admission.CacheAwareAdmission``, vLLM's), a window
is also cut just before the first image the cache or the step's encoder budget cannot take; a
request whose window comes out empty waits (a waiting one, and those behind it, stay waiting, as
in vLLM's first-come-first-served admission). If no window at all can be granted, the head
request's is granted regardless (counted as forced), so the loop never spins.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from vitkit.cache import EmbeddingCache
from vitkit.checks import positive_int
from vitkit.request import Request
from vitkit.span import Span


@dataclass(frozen=True)
class Window:
    """Request ``rid`` runs prompt tokens ``[start, stop)`` in a step."""

    rid: Hashable
    start: int
    stop: int

    @property
    def span(self) -> Span:
        return Span(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Step:
    """One scheduler decision at ``time_ms``: the windows it runs and who joined or left."""

    index: int
    time_ms: float
    windows: tuple[Window, ...]
    admitted: tuple[Hashable, ...]  # joined the running set this step
    finished: tuple[Hashable, ...]  # prompt done by the end of this step
    aborted: tuple[Hashable, ...]  # aborted before this step ran (their pins must be released)

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


@dataclass(frozen=True)
class Arrival:
    """A request as the scheduler sees it: id, prompt length (tokens), arrival and abort times (ms)."""

    rid: Hashable
    prompt_len: int
    arrival_ms: float = 0.0
    abort_ms: float | None = None


@dataclass(frozen=True)
class SchedulerView:
    """What a policy may look at when it decides a step: every request's items (by rid) and the
    embedding cache as it is now (live: read it, do not change it; cache-aware admission is the
    one exception: it pins what it grants for the step, as vLLM's scheduler allocates encoder
    cache space when it schedules an input)."""

    requests: Mapping[Hashable, Request]
    cache: EmbeddingCache


class Policy(Protocol):
    """A scheduler the step loop can drive; it only decides, the loop runs and keeps the clock."""

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing runs: the loop stops."""

    def next_arrival_ms(self) -> float | None:
        """When the next waiting request arrives (ms), or None."""

    def schedule(self, now_ms: float, view: SchedulerView | None = None) -> Step | None:
        """The step to run at ``now_ms``, or None when nothing runs or happens then."""


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Admission(Protocol):
    """Cuts windows by what the cache and the encoder can take (``vitkit.sim.admission``)."""

    def check(self, rid: Hashable) -> None: ...

    def begin_step(self, aborted: tuple[Hashable, ...] = ()) -> None: ...

    def grant(self, rid: Hashable, start: int, stop: int, *, force: bool = False) -> int: ...


class Scheduler:
    """Prefill scheduler state: waiting queue, running set (both in arrival order), progress,
    and the aborts still to come. ``chunked_prefill_size=None``: no step budget."""

    def __init__(
        self,
        chunked_prefill_size: int | None,
        max_running: int | None = None,
        long_prefill_token_threshold: int | None = None,
        *,
        admission: Admission | None = None,
    ) -> None:
        self.chunked_prefill_size = (
            None if chunked_prefill_size is None else positive_int("chunked_prefill_size", chunked_prefill_size)
        )
        self.max_running = None if max_running is None else positive_int("max_running", max_running)
        self.per_request_cap = (
            None
            if long_prefill_token_threshold is None
            else positive_int("long_prefill_token_threshold", long_prefill_token_threshold)
        )
        self.waiting: list[Arrival] = []  # sorted by arrival time, ties in add order
        self.running: list[Arrival] = []
        self.done_tokens: dict[Hashable, int] = {}
        self._pending_aborts: list[Arrival] = []  # add order
        self._seen: set[Hashable] = set()
        self._steps = 0
        # optional cache-aware admission (vitkit.sim.admission): cuts windows before an image the
        # cache or the step's encoder budget cannot take; None grants by tokens alone
        self.admission = admission

    @classmethod
    def fixed_chunk(cls, chunk_size: int) -> Scheduler:
        """Every unfinished request advances ``chunk_size`` tokens a step, all at once (no step
        budget, no limit on running requests): notebook 01's policy."""
        return cls(None, long_prefill_token_threshold=positive_int("chunk_size", chunk_size))

    def add(self, arrival: Arrival) -> None:
        """Queue a request; it may join from the first step at or after ``arrival_ms``, and is
        aborted before the first step at or after its ``abort_ms``."""
        if arrival.rid in self._seen:
            raise ValueError(f"request {arrival.rid!r} was already added")
        positive_int(f"request {arrival.rid!r}: prompt_len", arrival.prompt_len)
        for name in ("arrival_ms", "abort_ms"):
            value = getattr(arrival, name)
            # NaN compares false both ways: a NaN arrival never joins (the step loop would wait for
            # ever) and a NaN abort would be silently dropped
            if not (value is None and name == "abort_ms") and not _is_finite_number(value):
                raise ValueError(f"request {arrival.rid!r}: {name} must be a finite number (ms), got {value!r}")
        if self.admission is not None:
            self.admission.check(arrival.rid)  # an image that can never fit is refused now, not spun on
        self._seen.add(arrival.rid)
        if arrival.abort_ms is not None:
            self._pending_aborts.append(arrival)
        # insert after every request arriving at the same time or earlier: stable arrival order
        k = len(self.waiting)
        while k > 0 and self.waiting[k - 1].arrival_ms > arrival.arrival_ms:
            k -= 1
        self.waiting.insert(k, arrival)

    def abort(self, rid: Hashable) -> bool:
        """Drop a waiting or running request; False when it is not queued (unknown or finished)."""
        for queue in (self.waiting, self.running):
            for k, arrival in enumerate(queue):
                if arrival.rid == rid:
                    del queue[k]
                    self.done_tokens.pop(rid, None)
                    return True
        return False

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def next_arrival_ms(self) -> float | None:
        return self.waiting[0].arrival_ms if self.waiting else None

    def schedule(self, now_ms: float, view: SchedulerView | None = None) -> Step | None:
        """Decide one step at ``now_ms`` and advance every granted request by its window.

        Requests whose ``abort_ms`` has come are dropped first. When nothing can run (no running
        request, none arrived), the step has no windows and is returned only to record aborts;
        otherwise None. This policy does not look at ``view``.
        """
        aborted = self._apply_aborts(now_ms)
        if not self.running and not (self.waiting and self.waiting[0].arrival_ms <= now_ms):
            return self._record(now_ms, (), (), (), aborted) if aborted else None
        budget = math.inf if self.chunked_prefill_size is None else self.chunked_prefill_size
        windows: list[Window] = []
        if self.admission is not None:
            self.admission.begin_step(aborted)
        for arrival in self.running:
            if budget == 0:
                break
            budget -= self._grant(arrival, budget, windows)
        admitted = []
        while budget > 0 and self.waiting and self.waiting[0].arrival_ms <= now_ms:
            if self.max_running is not None and len(self.running) >= self.max_running:
                break
            granted = self._admit(budget, windows, admitted, force=False)
            if granted == 0:  # admission held its first window back: it waits, and so do those behind it
                break
            budget -= granted
        if not windows and self.running:  # every running request waits on space the others pin
            budget -= self._grant(self.running[0], budget, windows, force=True)
        elif not windows and self.waiting and self.waiting[0].arrival_ms <= now_ms:
            budget -= self._admit(budget, windows, admitted, force=True)
        finished = tuple(a.rid for a in self.running if self.done_tokens[a.rid] == a.prompt_len)
        self.running = [a for a in self.running if a.rid not in finished]
        for rid in finished:
            del self.done_tokens[rid]
        return self._record(now_ms, tuple(windows), tuple(admitted), finished, aborted)

    def _apply_aborts(self, now_ms: float) -> tuple[Hashable, ...]:
        due = [a for a in self._pending_aborts if a.abort_ms <= now_ms]
        self._pending_aborts = [a for a in self._pending_aborts if a.abort_ms > now_ms]
        return tuple(a.rid for a in due if self.abort(a.rid))  # finished ones are not aborted

    def _record(self, now_ms: float, windows: tuple[Window, ...], admitted: tuple[Hashable, ...],
                finished: tuple[Hashable, ...], aborted: tuple[Hashable, ...]) -> Step:
        step = Step(self._steps, now_ms, windows, admitted, finished, aborted)
        self._steps += 1
        return step

    def _admit(self, budget: float, windows: list[Window], admitted: list[Hashable], force: bool) -> int:
        """Grant the first waiting request its first window; it joins the running set unless
        that window is empty (admission held it back)."""
        arrival = self.waiting[0]
        self.done_tokens[arrival.rid] = 0
        granted = self._grant(arrival, budget, windows, force)
        if granted == 0:
            del self.done_tokens[arrival.rid]
            return 0
        self.running.append(self.waiting.pop(0))
        admitted.append(arrival.rid)
        return granted

    def _grant(self, arrival: Arrival, budget: float, windows: list[Window], force: bool = False) -> int:
        start = self.done_tokens[arrival.rid]
        granted = min(arrival.prompt_len - start, budget)
        if self.per_request_cap is not None:
            granted = min(granted, self.per_request_cap)
        if self.admission is not None:
            granted = self.admission.grant(arrival.rid, start, start + granted, force=force) - start
            if granted == 0:
                return 0
        windows.append(Window(arrival.rid, start, start + granted))
        self.done_tokens[arrival.rid] = start + granted
        return granted
