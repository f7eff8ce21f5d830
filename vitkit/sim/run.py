"""Replay a request stream through the step loop and keep what happened, as tables.

``vitkit.sim.engine.run_steps`` is the loop (policy decides, ``embed_chunks`` runs, the clock
moves on); this module reads each step's ``EmbedResult`` into one ``StepRow`` (a tidy table: one
row per step) and one ``WindowRow`` per window, straight from the result's per-window outcomes.
The ``RunSummary`` is computed from the rows, so the two always agree.

Two re-encoding counts are kept. ``re_encodings``: encodes of a content hash that an earlier
encoder call of the run had encoded (evicted, or never stored, in between).
``request_re_encodings``: the ``lost`` outcomes, i.e. misses of an image that its request had
already needed in an earlier window (straddling a window boundary, or shown again later in the
same prompt) and that was lost in between and encoded again, whichever window of the step caused
that encode; pinning exists to make this zero.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.embed import ENCODING_FATES, Encoder
from vitkit.request import Request
from vitkit.sim.engine import DEFAULT_STEP_MS, StepDuration, StepRun, fixed_step, plan_steps, run_steps
from vitkit.sim.fake import FakeEncoder, bytes_per_token, fake_item
from vitkit.sim.scheduler import Arrival, Policy, Scheduler, Step
from vitkit.sim.trace import Trace, load_trace
from vitkit.sim.workload import ItemFactory, build_requests


@dataclass(frozen=True)
class StepRow:
    """What one scheduler step did and cost (tokens, items, bytes, ms)."""

    step: int
    time_ms: float  # scheduler clock at the step
    duration_ms: float  # how far the clock moved after it (step_duration; 0 when no window ran)
    mode: str
    pin: bool
    capacity_bytes: int
    windows: tuple[tuple[Hashable, int, int], ...]  # (rid, start, stop) in step order
    tokens: int  # prompt tokens scheduled
    items_touched: int  # item lookups (one per item overlapping a window)
    hits: int
    misses: int
    encoder_calls: int
    encoded_items: int
    encoded_tokens: int
    call_tokens: tuple[int, ...]  # embedding rows per encoder call
    re_encodings: int
    request_re_encodings: int
    evictions: int
    rejected: int  # cache puts that did not fit
    cache_bytes: int  # after the step
    pinned_bytes: int  # after the step
    encoder_ms: float  # measured, or modelled by a cost model
    bookkeeping_ms: float  # wall time of the step minus wall time inside the encoder
    admitted: tuple[Hashable, ...]
    finished: tuple[Hashable, ...]
    aborted: tuple[Hashable, ...]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.items_touched if self.items_touched else 0.0


@dataclass(frozen=True)
class WindowRow:
    """One request's window in a step: the items it touched and what became of each (per
    touched item, prompt order; ``fates`` as ``vitkit.embed.ItemOutcome.fate``)."""

    step: int
    rid: Hashable
    start: int
    stop: int
    items: tuple[int, ...]  # indices into the request's items
    hit: tuple[bool, ...]
    fates: tuple[str, ...]  # "hit" | "encoded" | "shared" | "re-encoded"
    again: tuple[bool, ...]  # encoded by this window although an earlier encoder call of the run had encoded it
    lost: int = 0  # distinct images missed although the request had needed them in an earlier window


@dataclass(frozen=True)
class RunSummary:
    """Totals of one run; every field follows from the ``StepRow`` list (see ``summarize``)."""

    mode: str
    pin: bool
    capacity_bytes: int
    capacity_tokens: int | None  # embedding rows the capacity holds, when the encoder says its width
    steps: int
    windows: int
    tokens: int
    items_touched: int
    hits: int
    misses: int
    hit_rate: float
    encoder_calls: int
    encoded_items: int
    encoded_tokens: int
    re_encodings: int
    request_re_encodings: int
    evictions: int
    rejected: int
    peak_cache_bytes: int
    peak_pinned_bytes: int
    encoder_ms: float
    bookkeeping_ms: float


@dataclass(frozen=True)
class SimRun:
    """One replay: per-step rows, per-window rows, summary, the cache's own final counters,
    (with ``keep_embeddings``) each window's embedding keyed by ``(step, rid)``, and the cache."""

    rows: tuple[StepRow, ...]
    window_rows: tuple[WindowRow, ...]
    summary: RunSummary
    cache_stats: CacheStats
    embeddings: Mapping[tuple[int, Hashable], torch.Tensor | None] = field(default_factory=dict)
    cache: EmbeddingCache | None = field(default=None, repr=False, compare=False)  # as left at the end

    def to_records(self) -> list[dict[str, Any]]:
        """The step rows as plain dicts (one per step), e.g. for ``pandas.DataFrame``."""
        return to_records(self.rows)


def to_records(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Frozen dataclass rows (``StepRow``, ``WindowRow``, ``RunSummary``) as plain dicts."""
    return [asdict(row) for row in rows]


def summarize(
    rows: Sequence[StepRow], mode: str, pin: bool, capacity_bytes: int, token_bytes: int | None = None
) -> RunSummary:
    """Totals over ``rows`` (peaks for the byte columns); ``token_bytes``: bytes per embedding row."""

    def total(name: str) -> Any:
        return sum(getattr(r, name) for r in rows)

    touched = total("items_touched")
    return RunSummary(
        mode=mode,
        pin=pin,
        capacity_bytes=capacity_bytes,
        capacity_tokens=capacity_bytes // token_bytes if token_bytes else None,
        steps=len(rows),
        windows=sum(len(r.windows) for r in rows),
        tokens=total("tokens"),
        items_touched=touched,
        hits=total("hits"),
        misses=total("misses"),
        hit_rate=total("hits") / touched if touched else 0.0,
        encoder_calls=total("encoder_calls"),
        encoded_items=total("encoded_items"),
        encoded_tokens=total("encoded_tokens"),
        re_encodings=total("re_encodings"),
        request_re_encodings=total("request_re_encodings"),
        evictions=total("evictions"),
        rejected=total("rejected"),
        peak_cache_bytes=max((r.cache_bytes for r in rows), default=0),
        peak_pinned_bytes=max((r.pinned_bytes for r in rows), default=0),
        encoder_ms=total("encoder_ms"),
        bookkeeping_ms=total("bookkeeping_ms"),
    )


def _window_rows(ran: StepRun, encoded_before: set[str]) -> list[WindowRow]:
    """The step's windows as rows, read off ``embed_chunks``' per-window outcomes.

    ``again`` marks an encode of content that an earlier call of the run had encoded
    (``encoded_before``, updated here): earlier steps, or in per-request mode an earlier request
    of this step whose put did not stay in the cache.
    """
    first_call: dict[str, int] = {}  # hash -> first call of this step that encoded it
    for outcomes in ran.result.outcomes:
        for o in outcomes:
            if o.fate in ENCODING_FATES:
                first_call[o.hash] = min(o.call, first_call.get(o.hash, o.call))
    rows = []
    for w, outcomes in zip(ran.step.windows, ran.result.outcomes):
        again = tuple(
            o.fate in ENCODING_FATES and (o.hash in encoded_before or first_call[o.hash] < o.call) for o in outcomes
        )
        rows.append(WindowRow(
            ran.step.index, w.rid, w.start, w.stop, items=tuple(o.index for o in outcomes),
            hit=tuple(o.fate == "hit" for o in outcomes), fates=tuple(o.fate for o in outcomes), again=again,
            lost=len({o.hash for o in outcomes if o.lost}),  # a window encodes an image once however often it shows it
        ))
    encoded_before.update(first_call)
    return rows


def _step_row(ran: StepRun, config: tuple[str, bool, int], windows: Sequence[WindowRow]) -> StepRow:
    mode, pin, capacity_bytes = config
    step, r = ran.step, ran.result
    return StepRow(
        step=step.index, time_ms=step.time_ms, duration_ms=ran.duration_ms, mode=mode, pin=pin,
        capacity_bytes=capacity_bytes, windows=tuple((w.rid, w.start, w.stop) for w in step.windows),
        tokens=step.tokens, items_touched=r.cache_hits + r.cache_misses, hits=r.cache_hits, misses=r.cache_misses,
        encoder_calls=r.encoder_calls, encoded_items=r.encoded_items, encoded_tokens=r.encoded_tokens,
        call_tokens=r.call_tokens, re_encodings=sum(sum(w.again) for w in windows),
        request_re_encodings=sum(w.lost for w in windows),
        evictions=ran.after.evictions - ran.before.evictions, rejected=ran.after.rejected - ran.before.rejected,
        cache_bytes=ran.after.bytes, pinned_bytes=ran.after.pinned_bytes,
        encoder_ms=ran.encoder_time.reported_ms,
        bookkeeping_ms=max(0.0, ran.wall_ms - ran.encoder_time.measured_ms),
        admitted=step.admitted, finished=step.finished, aborted=step.aborted,
    )


def replay(
    requests: Mapping[Hashable, Request],
    policy: Policy,
    encoder: Encoder,
    capacity_bytes: int,
    *,
    mode: str = "batched",
    pin: bool = True,
    max_tokens_per_call: int | None = None,
    step_duration: StepDuration | None = None,
    keep_embeddings: bool = False,
    progress: bool = False,
) -> SimRun:
    """Run ``policy`` over ``requests`` with a fresh cache of ``capacity_bytes``, in tables.

    ``policy`` is used up (it keeps the schedule's state). ``step_duration`` moves the clock
    after each step (default: a fixed ``step_ms``, see ``vitkit.sim.engine``). ``encoder_ms`` is
    the encoder's own report (``ModelledEncoder``) or its measured wall time (any other encoder,
    wrapped in ``TimedEncoder``); ``bookkeeping_ms`` is the rest of the step's wall time in
    ``embed_chunks``.
    """
    cache = EmbeddingCache(capacity_bytes)
    encoded_before: set[str] = set()
    rows, window_rows, embeddings = [], [], {}
    loop = run_steps(requests, policy, encoder, cache, mode=mode, pin=pin,
                     max_tokens_per_call=max_tokens_per_call, step_duration=step_duration)
    for ran in tqdm(loop, desc=f"{mode} pin={pin}", disable=not progress, leave=False):
        windows = _window_rows(ran, encoded_before)
        rows.append(_step_row(ran, (mode, pin, capacity_bytes), windows))
        window_rows += windows
        if keep_embeddings:
            embeddings.update({(ran.step.index, w.rid): e for w, e in zip(ran.step.windows, ran.result.embeddings)})
    summary = summarize(rows, mode, pin, capacity_bytes, bytes_per_token(encoder))
    return SimRun(tuple(rows), tuple(window_rows), summary, cache.stats(), embeddings, cache)


@dataclass(frozen=True)
class Stream:
    """A trace made ready to replay: its requests (items built, hashed), their arrivals, and the
    token-budget scheduler's settings (tokens; ``step_ms``: the default fixed step duration)."""

    trace: Trace
    requests: Mapping[Hashable, Request]
    arrivals: tuple[Arrival, ...]
    chunked_prefill_size: int = 2048
    max_running: int | None = None
    long_prefill_token_threshold: int | None = None
    step_ms: float = DEFAULT_STEP_MS

    def scheduler(self) -> Scheduler:
        """A fresh scheduler with every arrival queued (a policy serves one run)."""
        scheduler = Scheduler(self.chunked_prefill_size, self.max_running, self.long_prefill_token_threshold)
        for arrival in self.arrivals:
            scheduler.add(arrival)
        return scheduler

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        """The schedule every run replays with the default fixed ``step_ms`` (see ``plan_steps``)."""
        return tuple(plan_steps(self.arrivals, self.chunked_prefill_size, max_running=self.max_running,
                                long_prefill_token_threshold=self.long_prefill_token_threshold, step_ms=self.step_ms))


def prepare(
    trace: Trace | str | Path,
    *,
    chunked_prefill_size: int = 2048,
    max_running: int | None = None,
    long_prefill_token_threshold: int | None = None,
    step_ms: float = DEFAULT_STEP_MS,
    make_item: ItemFactory = fake_item,
) -> Stream:
    """Load (a path or an example name) and build the requests, once; check the scheduler settings."""
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    requests = build_requests(trace, make_item)
    arrivals = tuple(trace.arrivals({rid: r.prompt_len for rid, r in requests.items()}))
    fixed_step(step_ms)  # a bad step_ms fails here, not at the first run
    stream = Stream(trace, requests, arrivals, chunked_prefill_size, max_running, long_prefill_token_threshold, step_ms)
    stream.scheduler()  # likewise bad scheduler settings or arrivals
    return stream


def simulate(
    stream: Stream,
    capacity_bytes: int,
    *,
    encoder: Encoder | None = None,
    mode: str = "batched",
    pin: bool = True,
    max_tokens_per_call: int | None = None,
    step_duration: StepDuration | None = None,
    keep_embeddings: bool = False,
    progress: bool = False,
) -> SimRun:
    """Replay a prepared stream once under its scheduler (default encoder: ``FakeEncoder()``;
    default step duration: the stream's fixed ``step_ms``)."""
    return replay(
        stream.requests,
        stream.scheduler(),
        FakeEncoder() if encoder is None else encoder,
        capacity_bytes,
        mode=mode,
        pin=pin,
        max_tokens_per_call=max_tokens_per_call,
        step_duration=fixed_step(stream.step_ms) if step_duration is None else step_duration,
        keep_embeddings=keep_embeddings,
        progress=progress,
    )


def compare(
    stream: Stream,
    capacities_bytes: Sequence[int],
    *,
    modes: Sequence[str] = ("batched", "per_request"),
    pins: Sequence[bool] = (True, False),
    encoder: Encoder | None = None,
    max_tokens_per_call: int | None = None,
    step_duration: StepDuration | None = None,
    progress: bool = True,
) -> list[SimRun]:
    """Replay the same stream for every mode x capacity x pin setting (a fresh cache and
    scheduler each)."""
    configs = [(m, c, p) for m in modes for c in capacities_bytes for p in pins]
    runs = []
    for mode, capacity, pin in tqdm(configs, desc="sim configs", disable=not progress):
        runs.append(simulate(stream, capacity, encoder=encoder, mode=mode, pin=pin,
                             max_tokens_per_call=max_tokens_per_call, step_duration=step_duration))
    return runs


def summary_records(runs: Iterable[SimRun]) -> list[dict[str, Any]]:
    """One dict per run: its summary fields."""
    return to_records(run.summary for run in runs)


STEP_FIELDS = tuple(f.name for f in fields(StepRow))
