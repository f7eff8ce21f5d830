"""What a user waits for: queueing delay and time to first token (TTFT), per request and per run.

The queueing delay runs from arrival to the start of the first step with a window of the request, TTFT to
the end of the step that finishes its prompt (decode is not modelled). Summaries are computed from the rows.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DECODE_NOTE = "prefill only: decode is not modelled (TTFT = arrival to the end of the step that finishes the prompt)"


@dataclass(frozen=True)
class RequestLatency:
    """One finished request: when it arrived, waited, started and got its first token (ms). ``prompt_tokens``
    is its prompt; ``redone_tokens`` what it ran again after preemptions (its steps and TTFT include them)."""

    rid: Hashable
    prompt_tokens: int
    arrival_ms: float
    first_step: int  # first step that ran a window of it
    last_step: int  # the step that finished its prompt
    queue_ms: float  # arrival -> start of first_step
    ttft_ms: float  # arrival -> end of last_step
    steps: int  # steps that ran a window of it (before a preemption too)
    redone_tokens: int = 0  # prompt tokens done before a preemption and run again

    @property
    def prefill_ms(self) -> float:
        """Start of its first step to the end of its last (ms)."""
        return self.ttft_ms - self.queue_ms

    @property
    def prompt_tokens_per_s(self) -> float:
        """Its prompt's tokens per second of its prefill (redone tokens are time, not progress)."""
        return self.prompt_tokens / (self.prefill_ms / 1e3) if self.prefill_ms > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear between order statistics as numpy; NaN for none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def request_latencies(steps: Sequence[Any], arrival_ms: Mapping[Hashable, float]) -> list[RequestLatency]:
    """One ``RequestLatency`` per request that finished in ``steps`` (``StepRow``s), in finishing order."""
    first: dict[Hashable, Any] = {}
    done: dict[Hashable, int] = {}  # tokens its windows ran, redone ones too
    redone: dict[Hashable, int] = {}
    count: dict[Hashable, int] = {}
    out = []
    for st in steps:
        for rid, start, stop in st.preempted:  # (rid, 0, tokens it had done): it runs them again
            redone[rid] = redone.get(rid, 0) + (stop - start)
        for rid, start, stop in st.windows:
            first.setdefault(rid, st)
            done[rid] = done.get(rid, 0) + (stop - start)
            count[rid] = count.get(rid, 0) + 1
        for rid in st.finished:
            if rid not in arrival_ms:
                raise ValueError(f"step {st.step}: request {rid!r} finished but has no arrival time")
            at = arrival_ms[rid]
            again = redone.get(rid, 0)
            out.append(RequestLatency(rid=rid, prompt_tokens=done[rid] - again, arrival_ms=at,
                                      first_step=first[rid].step, last_step=st.step, queue_ms=first[rid].time_ms - at,
                                      ttft_ms=st.end_ms - at, steps=count[rid], redone_tokens=again))
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
    prompt_tokens_per_s: float  # prompt tokens of finished requests / span (redone tokens not counted)
    steps: int
    step_ms_mean: float
    encoder_share: float  # encoder ms / step ms, over all steps
    prefill_share: float
    note: str = DECODE_NOTE


def summarize_latency(rows: Sequence[RequestLatency], steps: Sequence[Any],
                      arrival_ms: Mapping[Hashable, float]) -> LatencySummary:
    """Percentiles and rates of ``rows`` over the replay of ``steps``."""
    ttft, queue = [r.ttft_ms for r in rows], [r.queue_ms for r in rows]
    begin = min(arrival_ms.values(), default=0.0)
    span = max((st.end_ms for st in steps), default=begin) - begin
    total = sum(st.encoder_ms + st.prefill_ms + st.bookkeeping_ms for st in steps)
    return LatencySummary(
        requests=len(arrival_ms), finished=len(rows), ttft_p50_ms=percentile(ttft, 50),
        ttft_p90_ms=percentile(ttft, 90), ttft_p99_ms=percentile(ttft, 99),
        ttft_mean_ms=sum(ttft) / len(ttft) if ttft else math.nan, queue_p50_ms=percentile(queue, 50),
        queue_p99_ms=percentile(queue, 99), span_ms=span,
        requests_per_s=len(rows) / (span / 1e3) if span > 0 else math.nan,
        prompt_tokens_per_s=sum(r.prompt_tokens for r in rows) / (span / 1e3) if span > 0 else math.nan,
        steps=len(steps), step_ms_mean=sum(st.duration_ms for st in steps) / len(steps) if steps else math.nan,
        encoder_share=sum(st.encoder_ms for st in steps) / total if total > 0 else 0.0,
        prefill_share=sum(st.prefill_ms for st in steps) / total if total > 0 else 0.0)
