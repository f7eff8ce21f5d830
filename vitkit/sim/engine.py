"""The step loop: the scheduler decides, ``embed_chunks`` runs, the clock moves on.

nano-vllm's ``LLMEngine.step`` in three lines: ``policy.schedule(now, view)`` picks the windows
(it may look at the cache and at the requests' items), ``embed_chunks`` runs them and returns the
step's ``EmbedResult`` (what every window touched, and each item's fate), and the clock advances
by ``step_duration(step, result)`` ms before the policy is asked again: a closed loop, so a step
that costs more delays the next one. The default duration is a fixed ``step_ms`` whatever the
step did; then every embedding mode and cache size replays the very same windows.

This is the only loop in ``vitkit``: ``vitkit.sim.run`` turns its steps into tables, notebook 01
runs it under ``Scheduler.fixed_chunk``, and ``plan_steps`` runs it over prompts without images
to get the schedule alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.embed import EmbedResult, Encoder, embed_chunks
from vitkit.item import MultimodalItem
from vitkit.request import Request
from vitkit.sim.scheduler import Arrival, Policy, Scheduler, SchedulerView, Step
from vitkit.sim.timing import EncoderTime, TimedEncoderLike, as_timed

StepDuration = Callable[[Step, EmbedResult], float]
"""How long a step takes (ms), given what it ran and what ``embed_chunks`` returned."""

DEFAULT_STEP_MS = 50.0


def fixed_step(step_ms: float = DEFAULT_STEP_MS) -> StepDuration:
    """Every step lasts ``step_ms`` whatever it did (the open-loop schedule)."""
    if isinstance(step_ms, bool) or not isinstance(step_ms, (int, float)) or not step_ms > 0 or not math.isfinite(step_ms):
        raise ValueError(f"step_ms must be > 0, got {step_ms!r}")

    def duration(step: Step, result: EmbedResult) -> float:
        return step_ms

    return duration


@dataclass(frozen=True)
class StepRun:
    """One step as run: the policy's decision, ``embed_chunks``' result, its wall time and the
    encoder's share of it (ms), the cache counters before and after, and how far the clock then
    moved (``duration_ms``; 0 for a step that only recorded aborts: the clock jumps instead)."""

    step: Step
    result: EmbedResult
    wall_ms: float
    encoder_time: EncoderTime
    before: CacheStats
    after: CacheStats
    duration_ms: float


def run_steps(
    requests: Mapping[Hashable, Request],
    policy: Policy,
    encoder: Encoder,
    cache: EmbeddingCache,
    *,
    mode: str = "batched",
    pin: bool = True,
    max_tokens_per_call: int | None = None,
    step_duration: StepDuration | None = None,
) -> Iterator[StepRun]:
    """Drive ``policy`` over ``requests`` until it is idle, yielding each step as run.

    The clock starts at the first arrival. A step with windows moves it by
    ``step_duration(step, result)`` ms (default ``fixed_step()``); when nothing can run, it jumps
    to the next arrival. Aborted requests' pins are released before their step, finished ones'
    after it (``embed_chunks`` already released them at their last window).
    """
    duration = fixed_step() if step_duration is None else step_duration
    timed = as_timed(encoder)
    view = SchedulerView(requests, cache)
    first = policy.next_arrival_ms()
    now = 0.0 if first is None else first
    while not policy.idle:
        step = policy.schedule(now, view)
        if step is not None:
            ran = _execute(step, requests, timed, cache, (mode, pin, max_tokens_per_call), duration)
            yield ran
            if step.windows:
                now += ran.duration_ms
                continue
        now = _wait(policy, now)


def _wait(policy: Policy, now: float) -> float:
    """Nothing ran at ``now``: the clock jumps to the next arrival (or stays, if all is done)."""
    later = policy.next_arrival_ms()
    if policy.idle:
        return now
    if later is None or later <= now:  # asking again at the same time would loop for ever
        raise RuntimeError(f"policy {type(policy).__name__} ran nothing at {now} ms and has no later arrival")
    return later


def _execute(step: Step, requests: Mapping[Hashable, Request], encoder: TimedEncoderLike, cache: EmbeddingCache,
             config: tuple[str, bool, int | None], duration: StepDuration) -> StepRun:
    mode, pin, max_tokens_per_call = config
    for rid in step.aborted:  # an aborted request's next window will never come
        cache.release(rid)
    before = cache.stats()
    batch = [(requests[w.rid], w.span) for w in step.windows]
    start = time.perf_counter()
    result = embed_chunks(batch, encoder, cache, mode=mode, pin=pin, max_tokens_per_call=max_tokens_per_call)
    wall_ms = (time.perf_counter() - start) * 1e3
    for rid in step.finished:
        cache.release(rid)
    spent = encoder.take_time()
    took = _check_duration(duration(step, result), step) if step.windows else 0.0
    return StepRun(step, result, wall_ms, spent, before, cache.stats(), took)


def _check_duration(ms: object, step: Step) -> float:
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
        raise ValueError(f"step_duration must return a finite number of ms >= 0, got {ms!r} for step {step.index}")
    return float(ms)


def _no_images(items: list[MultimodalItem]) -> list[torch.Tensor]:
    return []  # plan_steps' prompts hold no images: embed_chunks never has anything to encode


def plan_steps(
    arrivals: Iterable[Arrival],
    chunked_prefill_size: int,
    *,
    max_running: int | None = None,
    long_prefill_token_threshold: int | None = None,
    step_ms: float = DEFAULT_STEP_MS,
) -> list[Step]:
    """The schedule alone: ``Scheduler`` steps every ``step_ms`` until every request is done.

    The step loop run over prompts without images (nothing to encode), so this is exactly the
    schedule that ``run_steps`` replays with the default fixed step duration. When nothing runs,
    the clock jumps to the next arrival; a request is aborted before the first step at or after
    its ``abort_ms``.
    """
    duration = fixed_step(step_ms)
    scheduler = Scheduler(chunked_prefill_size, max_running, long_prefill_token_threshold)
    requests = {}
    for arrival in arrivals:
        scheduler.add(arrival)
        requests[arrival.rid] = Request(arrival.rid, (), (), prompt_len=arrival.prompt_len)
    cache = EmbeddingCache(1)
    return [ran.step for ran in run_steps(requests, scheduler, _no_images, cache, step_duration=duration)]
