"""The step loop, the only one in ``vitkit``: the scheduler decides, ``embed_chunks`` runs, the clock moves on.

As nano-vllm's ``LLMEngine.step``, a closed loop: the ``StepClock`` times each step before the policy is
asked again, so a step that costs more delays the next one.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.checks import non_negative_int, non_negative_number
from vitkit.costs.clock import StepClock, StepTimes, TimedEncoderLike, as_timed
from vitkit.embed import GROUPINGS, MODES, EmbedResult, Encoder, embed_chunks
from vitkit.item import MODALITIES
from vitkit.request import Request
from vitkit.sim.admission import HOLD_OWNER
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.scheduler import Policy, SchedulerConfig, SchedulerView, Step

DEFAULT_STEP_MS = 50.0


@dataclass(frozen=True)
class ReplayConfig:
    """One replay's settings: the scheduler's (nested), the embedding path (mode, pinning, rows per encoder
    call, how misses are grouped into calls, modalities taken per request: ``embed_chunks``' keywords) and
    the cache's size in embedding rows (0: holds none)."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mode: str = "batched"
    pin: bool = True
    cache_tokens: int = 16384
    max_tokens_per_call: int | None = None
    pin_recurring: bool = True
    grouping: str = "tower"
    per_request_modalities: tuple[str, ...] = ()
    # evict what no running request will read again before what one will (``EmbeddingCache.protect``)
    protect_ahead: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        non_negative_int("cache_tokens", self.cache_tokens)
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if isinstance(self.per_request_modalities, str) or not set(self.per_request_modalities) <= set(MODALITIES):
            raise ValueError(f"per_request_modalities must be a tuple of {MODALITIES}, "
                             f"got {self.per_request_modalities!r}")

    def flat(self) -> dict[str, object]:
        """The settings as one flat dict (a table row's columns)."""
        s = self.scheduler
        return {"mode": self.mode, "policy": s.policy, "chunked_prefill_size": s.chunked_prefill_size,
                "long_prefill_token_threshold": s.long_prefill_token_threshold, "max_running": s.max_running,
                "cache_tokens": self.cache_tokens, "pin": self.pin, "encoder_budget_tokens": s.encoder_budget_tokens,
                "max_tokens_per_call": self.max_tokens_per_call, "pin_recurring": self.pin_recurring,
                "grouping": self.grouping, "per_request_modalities": list(self.per_request_modalities),
                "refuse_oversized": s.refuse_oversized, "protect_ahead": self.protect_ahead}


@dataclass(frozen=True)
class StepRun:
    """One step as run: the policy's decision, ``embed_chunks``' result, its times, the cache's counters."""

    step: Step
    result: EmbedResult
    times: StepTimes
    before: CacheStats
    after: CacheStats


def run_steps(requests: Mapping[Hashable, Request], policy: Policy, encoder: Encoder, cache: EmbeddingCache,
              config: ReplayConfig, clock: StepClock) -> Iterator[StepRun]:
    """Drive ``policy`` over ``requests`` until it is idle, yielding each step as run. The clock starts at
    the first arrival, moves by what ``clock`` says, and jumps to the next arrival when nothing runs.
    Aborted and preempted requests' pins are released before their step, finished ones' after it."""
    timed = as_timed(encoder)
    view = SchedulerView(requests, cache)
    reading = Reading(requests)
    first = policy.next_arrival_ms()
    now = 0.0 if first is None else first
    while not policy.idle:
        step = policy.schedule(now, view)
        if step is not None:
            if config.protect_ahead:
                cache.protect(reading.ahead(step))
            ran = _execute(step, requests, timed, cache, config, clock)
            reading.ran(step)
            yield ran
            if step.windows:
                now += ran.times.duration_ms
                continue
        now = _wait(policy, now)


class Reading:
    """Where each running request has read its prompt to, from the steps' windows: what it will read later
    (its items past that point) is what a cache that knows the schedule keeps longest."""

    def __init__(self, requests: Mapping[Hashable, Request]) -> None:
        self.requests = requests
        self.done: dict[Hashable, int] = {}  # running rid -> tokens read

    def ahead(self, step: Step) -> dict[str, int]:
        """Hash -> tokens until it is read, of the items that the requests running into ``step`` (its windows
        included) read from its windows on (0: in a window, or begun), the nearest read of any request."""
        reading = self.done | {w.rid: w.start for w in step.windows}
        for rid in (*step.aborted, *(w.rid for w in step.preempted)):
            reading.pop(rid, None)
        reads_in: dict[str, int] = {}
        for rid, done in reading.items():
            request = self.requests[rid]
            for item, span in zip(request.items, request.spans):
                if span.stop > done:
                    distance = max(0, span.start - done)
                    reads_in[item.hash] = min(distance, reads_in.get(item.hash, distance))
        return reads_in

    def ran(self, step: Step) -> None:
        """``step`` ran: its windows moved their requests on; the finished, aborted and preempted stop reading."""
        self.done.update({w.rid: w.stop for w in step.windows})
        for rid in (*step.finished, *step.aborted, *(w.rid for w in step.preempted)):
            self.done.pop(rid, None)


def _wait(policy: Policy, now: float) -> float:
    """Nothing ran at ``now``: the clock jumps to the next arrival (or stays, if all is done)."""
    later = policy.next_arrival_ms()
    if policy.idle:
        return now
    if later is None or later <= now:  # asking again at the same time would loop for ever
        raise RuntimeError(f"policy {type(policy).__name__} ran nothing at {now} ms and has no later arrival")
    return later


def _execute(step: Step, requests: Mapping[Hashable, Request], encoder: TimedEncoderLike, cache: EmbeddingCache,
             config: ReplayConfig, clock: StepClock) -> StepRun:
    for rid in (*step.aborted, *(w.rid for w in step.preempted)):  # their next windows will not come (soon)
        cache.release(rid)
    before = cache.stats()
    batch = [(requests[w.rid], w.span) for w in step.windows]
    start = time.perf_counter()
    # a fake encoder's rows are finite by construction: its check would cost as much as encoding a long video
    result = embed_chunks(batch, encoder, cache, mode=config.mode, pin=config.pin,
                          max_tokens_per_call=config.max_tokens_per_call, pin_recurring=config.pin_recurring,
                          grouping=config.grouping, per_request_modalities=config.per_request_modalities,
                          check_finite=not isinstance(getattr(encoder, "encoder", encoder), FakeEncoder))
    wall_ms = (time.perf_counter() - start) * 1e3
    for rid in (*step.finished, HOLD_OWNER):  # the admission's holds were for this step only
        cache.release(rid)
    spent = encoder.take_time()
    times = clock(step, result, requests, spent, wall_ms) if step.windows else StepTimes(0.0, 0.0, 0.0, 0.0)
    non_negative_number(f"step {step.index}: duration_ms", times.duration_ms)  # a NaN would corrupt the clock
    return StepRun(step, result, times, before, cache.stats())
