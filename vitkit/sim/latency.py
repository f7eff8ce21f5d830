"""What a user waits for: queueing delay and time to first token, per request and per run.

A timed replay yields one ``StepTime`` per scheduler step: when it started on the replay clock,
what it cost (encoder + language-model prefill + bookkeeping, ms) and which windows it ran. From
those and the arrival times follow, per request:

- **queueing delay**: arrival to the start of the first step that runs a window of it;
- **time to first token (TTFT)**: arrival to the end of the step that runs its prompt's last
  window. The first output token comes out of that step's forward pass; decoding is out of
  scope, so steps hold prefill tokens only and nothing here includes decode time;
- **prompt throughput**: prompt tokens / (TTFT - queueing delay), tokens per second while it ran.

Per run: TTFT percentiles (p50/p90/p99), requests and prompt tokens finished per second (over
the replay's span, first arrival to last step end), and the encoder's share of step time.
``summarize_latency`` computes every field from the rows, so table and rows always agree.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

DECODE_NOTE = "prefill only: decode is not modelled (TTFT = arrival to the end of the step that finishes the prompt)"


@dataclass(frozen=True)
class StepTime:
    """One step on the replay clock (ms) and what it ran; ``duration_ms`` is the sum of parts."""

    step: int
    start_ms: float
    encoder_ms: float
    prefill_ms: float
    bookkeeping_ms: float
    windows: tuple[tuple[Hashable, int, int], ...]  # (rid, start, stop), step order
    finished: tuple[Hashable, ...]  # prompts done by the end of this step

    @property
    def duration_ms(self) -> float:
        return self.encoder_ms + self.prefill_ms + self.bookkeeping_ms

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms

    @property
    def tokens(self) -> int:
        return sum(stop - start for _, start, stop in self.windows)


@dataclass(frozen=True)
class RequestLatency:
    """One finished request: when it arrived, waited, started and got its first token (ms)."""

    rid: Hashable
    prompt_tokens: int
    arrival_ms: float
    first_step: int  # first step that ran a window of it
    last_step: int  # the step that finished its prompt
    queue_ms: float  # arrival -> start of first_step
    ttft_ms: float  # arrival -> end of last_step
    steps: int  # steps that ran a window of it

    @property
    def prefill_ms(self) -> float:
        """Start of its first step to the end of its last (ms)."""
        return self.ttft_ms - self.queue_ms

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prompt_tokens / (self.prefill_ms / 1e3) if self.prefill_ms > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear between order statistics (numpy's
    default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def request_latencies(steps: Sequence[StepTime], arrival_ms: Mapping[Hashable, float]) -> list[RequestLatency]:
    """One ``RequestLatency`` per request that finished in ``steps``, in finishing order.

    Aborted and unfinished requests have no TTFT and are left out (counted by the summary).
    """
    first: dict[Hashable, StepTime] = {}
    done: dict[Hashable, int] = {}
    count: dict[Hashable, int] = {}
    out = []
    for st in steps:
        for rid, start, stop in st.windows:
            first.setdefault(rid, st)
            done[rid] = done.get(rid, 0) + (stop - start)
            count[rid] = count.get(rid, 0) + 1
        for rid in st.finished:
            if rid not in arrival_ms:
                raise ValueError(f"step {st.step}: request {rid!r} finished but has no arrival time")
            at = arrival_ms[rid]
            out.append(RequestLatency(
                rid=rid, prompt_tokens=done[rid], arrival_ms=at, first_step=first[rid].step, last_step=st.step,
                queue_ms=first[rid].start_ms - at, ttft_ms=st.end_ms - at, steps=count[rid],
            ))
    return out


@dataclass(frozen=True)
class LatencySummary:
    """Per-run latency and throughput; every field follows from the rows (``summarize_latency``)."""

    requests: int  # in the stream
    finished: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    ttft_mean_ms: float
    queue_p50_ms: float
    queue_p99_ms: float
    span_ms: float  # first arrival to the end of the last step
    requests_per_s: float  # finished requests / span
    prompt_tokens_per_s: float  # prompt tokens of finished requests / span
    steps: int
    step_ms_mean: float
    encoder_share: float  # encoder ms / step ms, over all steps
    prefill_share: float
    note: str = DECODE_NOTE


def summarize_latency(
    rows: Sequence[RequestLatency], steps: Sequence[StepTime], arrival_ms: Mapping[Hashable, float]
) -> LatencySummary:
    """Percentiles and rates of ``rows`` over the replay of ``steps``."""
    ttft = [r.ttft_ms for r in rows]
    queue = [r.queue_ms for r in rows]
    begin = min(arrival_ms.values(), default=0.0)
    end = max((st.end_ms for st in steps), default=begin)
    span = end - begin
    total = sum(st.duration_ms for st in steps)
    return LatencySummary(
        requests=len(arrival_ms),
        finished=len(rows),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p90_ms=percentile(ttft, 90),
        ttft_p99_ms=percentile(ttft, 99),
        ttft_mean_ms=sum(ttft) / len(ttft) if ttft else math.nan,
        queue_p50_ms=percentile(queue, 50),
        queue_p99_ms=percentile(queue, 99),
        span_ms=span,
        requests_per_s=len(rows) / (span / 1e3) if span > 0 else math.nan,
        prompt_tokens_per_s=sum(r.prompt_tokens for r in rows) / (span / 1e3) if span > 0 else math.nan,
        steps=len(steps),
        step_ms_mean=total / len(steps) if steps else math.nan,
        encoder_share=sum(st.encoder_ms for st in steps) / total if total > 0 else 0.0,
        prefill_share=sum(st.prefill_ms for st in steps) / total if total > 0 else 0.0,
    )
