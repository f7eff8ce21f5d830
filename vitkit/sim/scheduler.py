"""Chunked-prefill scheduler policies: which window of which prompt runs in each step.

The scheduler only decides (nano-vllm's split); ``vitkit.sim.engine`` runs the windows and keeps the
clock. Each step has a token budget: running requests take it first, then arrived waiting ones join, all
in arrival order, as SGLang's ``PrefillAdder`` and vLLM v1 do (prefill only). With a per-request cap several
prompts can be part-way at once, the case the cache's pins are for. An ``admission`` policy
(``vitkit.sim.admission``) also cuts a window before an image the cache or encoder budget cannot take.

A running request whose window is cut to nothing is skipped for the step, as vLLM's scheduler does
(``continue``: not strictly first come, first served); a waiting one holds back those behind it. When no
window at all can be granted while requests run, the admission may first free what it can
(``Admission.unblock``: cache-aware admission lets images held for a repeat go); if it cannot, the
scheduler preempts, as vLLM's ``Scheduler.schedule`` does when it cannot allocate
(``vllm/v1/core/sched/scheduler.py``, ``_preempt_request``): the newest running request
(``self.running.pop()``) loses its pins and its progress and goes back to the head of the waiting queue,
to redo its prompt from the start; no new request is admitted in such a step, unless nothing is left
running. ``Step.preempted`` says what each preempted request had done (the tokens it redoes). A request
the admission can never grant raises when added, or, with ``refuse_oversized``, is refused
(``Scheduler.refused``: rid -> reason) while the rest of the stream runs, as vLLM answers such a request
with an error (#33110).
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from vitkit.cache import EmbeddingCache
from vitkit.checks import positive_int
from vitkit.request import Request
from vitkit.sim.admission import POLICIES, CacheAwareAdmission
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
    preempted: tuple[Window, ...] = ()  # preempted this step: the tokens each had done and runs again

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
    """What a policy may look at: every request (by rid) and the live cache (read only; cache-aware
    admission alone pins what it grants, as vLLM allocates encoder cache space when it schedules)."""

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

    def check(self, rid: Hashable) -> None:
        """Raise ValueError (the reason) for a request that could never be granted."""

    def begin_step(self, aborted: tuple[Hashable, ...] = (), progress: Mapping[Hashable, int] | None = None) -> None:
        """A step's decisions begin: ``progress`` is the running requests, oldest first, and their tokens done."""

    def grant(self, rid: Hashable, start: int, stop: int) -> int:
        """How far, up to ``stop``, the window from ``start`` may run (``start``: not at all)."""

    def unblock(self) -> bool:
        """No running request got a window: free what can be freed without a preemption; False if nothing."""

    def preempt(self, rid: Hashable) -> None:
        """``rid`` was preempted: it keeps nothing."""


class Scheduler:
    """Prefill scheduler state: waiting and running requests (in arrival order), progress, aborts to come."""

    def __init__(self, chunked_prefill_size: int | None, max_running: int | None = None,
                 long_prefill_token_threshold: int | None = None, *, admission: Admission | None = None,
                 refuse_oversized: bool = False) -> None:
        for name, value in (("chunked_prefill_size", chunked_prefill_size), ("max_running", max_running),
                            ("long_prefill_token_threshold", long_prefill_token_threshold)):
            if value is not None:
                positive_int(name, value)
        self.chunked_prefill_size, self.max_running = chunked_prefill_size, max_running
        self.per_request_cap = long_prefill_token_threshold
        self.waiting: list[Arrival] = []  # sorted by arrival time, ties in add order
        self.running: list[Arrival] = []
        self.done_tokens: dict[Hashable, int] = {}
        self._pending_aborts: list[Arrival] = []  # add order
        self._seen: set[Hashable] = set()
        self._steps = 0
        self.admission = admission  # None: grant by tokens alone
        self.refuse_oversized = refuse_oversized
        self.refused: dict[Hashable, str] = {}  # requests the admission could never grant -> why

    def add(self, arrival: Arrival) -> None:
        """Queue a request to join from the first step at or after ``arrival_ms`` (abort: ``abort_ms``)."""
        if arrival.rid in self._seen:
            raise ValueError(f"request {arrival.rid!r} was already added")
        positive_int(f"request {arrival.rid!r}: prompt_len", arrival.prompt_len)
        for name in ("arrival_ms", "abort_ms"):
            value = getattr(arrival, name)
            # a NaN arrival would never join (the loop would wait for ever), a NaN abort never apply
            if not (value is None and name == "abort_ms") and not _is_finite_number(value):
                raise ValueError(f"request {arrival.rid!r}: {name} must be a finite number (ms), got {value!r}")
        if self.admission is not None:
            try:
                self.admission.check(arrival.rid)  # an image that can never fit is refused now, not spun on
            except ValueError as err:
                # raising is the default: a replay whose requests cannot all run is a setting to fix (a larger
                # cache, frame groups), said at once; an engine's policy (vLLM) refuses such a request instead
                if not self.refuse_oversized:
                    raise ValueError(f"{err}; SchedulerConfig(refuse_oversized=True) refuses such a request "
                                     "and runs the rest") from None
                self._seen.add(arrival.rid)
                self.refused[arrival.rid] = str(err)
                return
        self._seen.add(arrival.rid)
        if arrival.abort_ms is not None:
            self._pending_aborts.append(arrival)
        # after every request arriving at the same time or earlier: stable arrival order
        insort(self.waiting, arrival, key=lambda a: a.arrival_ms)

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
        """Decide one step at ``now_ms`` and advance every granted request by its window, after dropping
        the requests whose ``abort_ms`` has come. When nothing runs: a step without windows to record
        aborts, else None. This policy does not look at ``view``."""
        aborted = self._apply_aborts(now_ms)
        if not self.running and not self._arrived(now_ms):
            return self._record(now_ms, (), (), (), aborted) if aborted else None
        windows: list[Window] = []
        admitted: list[Hashable] = []
        preempted: list[Window] = []
        self._begin_step(aborted)
        budget = self._run_running(windows)
        self._admit_waiting(now_ms, budget, windows, admitted)
        while not windows and self.running:  # every running request waits on space the others hold
            if self.admission is None or not self.admission.unblock():
                preempted.append(self._preempt())
            self._begin_step()
            budget = self._run_running(windows)
            if not self.running:  # nothing left to run: the waiting, the preempted first, may join
                self._admit_waiting(now_ms, budget, windows, admitted)
        if not windows and self._arrived(now_ms):  # an admission that lets nothing in: say so, never spin
            rid = self.waiting[0].rid
            raise RuntimeError(f"request {rid!r}: nothing runs and admission grants its first window nothing; "
                               "its admission's check() should have refused it")
        finished = tuple(a.rid for a in self.running if self.done_tokens[a.rid] == a.prompt_len)
        self.running = [a for a in self.running if a.rid not in finished]
        for rid in finished:
            del self.done_tokens[rid]
        return self._record(now_ms, tuple(windows), tuple(admitted), finished, aborted, tuple(preempted))

    def _arrived(self, now_ms: float) -> bool:
        return bool(self.waiting) and self.waiting[0].arrival_ms <= now_ms

    def _begin_step(self, aborted: tuple[Hashable, ...] = ()) -> None:
        if self.admission is not None:
            self.admission.begin_step(aborted, {a.rid: self.done_tokens[a.rid] for a in self.running})

    def _run_running(self, windows: list[Window]) -> float:
        """Running requests take the step budget first, in arrival order; returns what is left."""
        budget = math.inf if self.chunked_prefill_size is None else self.chunked_prefill_size
        for arrival in self.running:
            if budget == 0:
                break
            budget -= self._grant(arrival, budget, windows)
        return budget

    def _admit_waiting(self, now_ms: float, budget: float, windows: list[Window], admitted: list[Hashable]) -> None:
        while budget > 0 and self._arrived(now_ms):
            if self.max_running is not None and len(self.running) >= self.max_running:
                break
            granted = self._admit(budget, windows, admitted)
            if granted == 0:  # admission held its first window back: it waits, and so do those behind it
                break
            budget -= granted

    def _preempt(self) -> Window:
        """vLLM's FCFS victim, the newest running request: back to the head of the queue with nothing done
        and nothing pinned; returns the part of its prompt it had done."""
        arrival = self.running.pop()
        done = self.done_tokens.pop(arrival.rid)
        self.waiting.insert(0, arrival)
        if self.admission is not None:
            self.admission.preempt(arrival.rid)
        return Window(arrival.rid, 0, done)

    def _apply_aborts(self, now_ms: float) -> tuple[Hashable, ...]:
        due = [a for a in self._pending_aborts if a.abort_ms <= now_ms]
        self._pending_aborts = [a for a in self._pending_aborts if a.abort_ms > now_ms]
        return tuple(a.rid for a in due if self.abort(a.rid))  # finished ones are not aborted

    def _record(self, now_ms: float, windows: tuple[Window, ...], admitted: tuple[Hashable, ...],
                finished: tuple[Hashable, ...], aborted: tuple[Hashable, ...],
                preempted: tuple[Window, ...] = ()) -> Step:
        step = Step(self._steps, now_ms, windows, admitted, finished, aborted, preempted)
        self._steps += 1
        return step

    def _admit(self, budget: float, windows: list[Window], admitted: list[Hashable]) -> int:
        """Grant the first waiting request its first window; unless empty, it joins the running set."""
        arrival = self.waiting[0]
        self.done_tokens[arrival.rid] = 0
        granted = self._grant(arrival, budget, windows)
        if granted == 0:
            del self.done_tokens[arrival.rid]
            return 0
        self.running.append(self.waiting.pop(0))
        admitted.append(arrival.rid)
        return granted

    def _grant(self, arrival: Arrival, budget: float, windows: list[Window]) -> int:
        start = self.done_tokens[arrival.rid]
        granted = min(arrival.prompt_len - start, budget)
        if self.per_request_cap is not None:
            granted = min(granted, self.per_request_cap)
        if self.admission is not None:
            granted = self.admission.grant(arrival.rid, start, start + granted) - start
            if granted == 0:
                return 0
        windows.append(Window(arrival.rid, start, start + granted))
        self.done_tokens[arrival.rid] = start + granted
        return granted


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's settings (tokens): the step budget (SGLang ``--chunked-prefill-size``, vLLM
    ``max_num_batched_tokens``), the per-request cap, the running limit, and the admission policy, with
    ``encoder_budget_tokens`` rows a step may encode under "cache-aware" (None: the step budget);
    ``refuse_oversized``: refuse a request cache-aware admission could never grant, instead of raising."""

    chunked_prefill_size: int | None = 2048
    long_prefill_token_threshold: int | None = None
    max_running: int | None = None
    policy: str = "legacy"
    encoder_budget_tokens: int | None = None
    refuse_oversized: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("chunked_prefill_size", "long_prefill_token_threshold", "max_running", "encoder_budget_tokens"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.chunked_prefill_size is None and self.long_prefill_token_threshold is None:
            raise ValueError("a scheduler needs a step budget (chunked_prefill_size) or a per-request cap")

    def budget_for_cache(self, cache_tokens: int) -> SchedulerConfig:
        """These settings with an encoder budget of at least ``cache_tokens`` rows (and the step budget), so
        cache-aware admission never refuses an item the cache could hold for the budget: vLLM raises its
        budget to the largest item (``compute_mm_encoder_budget``). Legacy admission has no budget: unchanged."""
        if self.policy != "cache-aware":
            return self
        budget = self.encoder_budget_tokens or self.chunked_prefill_size or cache_tokens
        return replace(self, encoder_budget_tokens=max(budget, cache_tokens, 1))

    def build(self, requests: Mapping[Hashable, Request], cache: EmbeddingCache, row_bytes: int, *,
              hold_hits: bool = False, hold_recurring: bool = True) -> Scheduler:
        """A fresh scheduler (one a run); cache-aware admission also holds hits with ``hold_hits`` (per-request
        mode) and reserves room for images shown again with ``hold_recurring`` (``embed_chunks``' pin_recurring)."""
        admission = None
        if self.policy == "cache-aware":
            budget = self.encoder_budget_tokens or self.chunked_prefill_size
            admission = CacheAwareAdmission(requests, cache, row_bytes, budget, hold_hits=hold_hits,
                                            hold_recurring=hold_recurring)
        return Scheduler(self.chunked_prefill_size, self.max_running, self.long_prefill_token_threshold,
                         admission=admission, refuse_oversized=self.refuse_oversized)
