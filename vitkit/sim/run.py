"""Replay a request stream through the scheduler, driving ``embed_chunks`` step by step.

The schedule is planned once (``plan_steps``) and replayed for each configuration (embedding
mode, cache size, pinning), so every configuration sees exactly the same windows. Each step
yields one ``StepRow`` (a tidy table: one row per step) and one ``WindowRow`` per window; the
``RunSummary`` is computed from the rows, so the two always agree.

Two re-encoding counts are kept. ``re_encodings``: encodes of a content hash that had been
encoded before in the run (evicted, or never stored, in between). ``request_re_encodings``:
encodes of an image for a request that had already had that image encoded for it, i.e. an image
straddling a window boundary (or shown again later in the same prompt) lost between the
request's windows; pinning exists to make this zero.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.embed import EmbedResult, Encoder, embed_chunks
from vitkit.request import Request
from vitkit.sim.fake import FakeEncoder, bytes_per_token, fake_item
from vitkit.sim.scheduler import Step, plan_steps
from vitkit.sim.timing import EncoderTime, TimedEncoderLike, as_timed
from vitkit.sim.trace import Trace, load_trace
from vitkit.sim.workload import ItemFactory, build_requests


@dataclass(frozen=True)
class StepRow:
    """What one scheduler step did and cost (tokens, items, bytes, ms)."""

    step: int
    time_ms: float  # scheduler clock at the step
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
    """One request's window in a step: the items it touched and which of them hit the cache."""

    step: int
    rid: Hashable
    start: int
    stop: int
    items: tuple[int, ...]  # indices into the request's items, prompt order
    hit: tuple[bool, ...]  # per touched item


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


class _LoggedCache(EmbeddingCache):
    """An ``EmbeddingCache`` that logs whether each lookup hit, so the runner can tell which
    window missed which item (``find_chunk_items`` looks items up in batch, then prompt order)."""

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self.lookups: list[bool] = []

    def get(self, key: str) -> torch.Tensor | None:
        embedding = super().get(key)
        self.lookups.append(embedding is not None)
        return embedding


@dataclass
class _Ledger:
    """Encode counts across steps: per content hash, and per (rid, content hash)."""

    by_hash: Counter = field(default_factory=Counter)
    by_item: Counter = field(default_factory=Counter)

    def count_hashes(self, hashes: Iterable[str]) -> int:
        again = 0
        for key in hashes:
            again += self.by_hash[key] > 0
            self.by_hash[key] += 1
        return again

    def count_items(self, window_rows: Iterable[WindowRow], requests: Mapping[Hashable, Request]) -> int:
        again = 0
        for w in window_rows:  # every missed lookup is encoded in its step, in both modes
            items = requests[w.rid].items
            missed = {items[index].hash for index, hit in zip(w.items, w.hit) if not hit}
            for key in missed:  # a window encodes an image once however often it shows it
                again += self.by_item[(w.rid, key)] > 0
                self.by_item[(w.rid, key)] += 1
        return again


def _window_rows(step: Step, requests: Mapping[Hashable, Request], lookups: Sequence[bool]) -> list[WindowRow]:
    out, pos = [], 0
    for w in step.windows:
        request = requests[w.rid]
        touched = [k for k, span in enumerate(request.spans) if span.overlaps(w.span)]
        out.append(WindowRow(step.index, w.rid, w.start, w.stop, tuple(touched), tuple(lookups[pos : pos + len(touched)])))
        pos += len(touched)
    if pos != len(lookups):  # would mean embed_chunks looked items up in another order
        raise RuntimeError(f"step {step.index}: {len(lookups)} cache lookups for {pos} touched items")
    return out


@dataclass(frozen=True)
class _Measured:
    """One step as run: what ``embed_chunks`` returned, its wall and encoder time, cache before/after."""

    result: EmbedResult
    wall_ms: float
    spent: EncoderTime
    before: CacheStats
    after: CacheStats


def _run_step(step: Step, requests: Mapping[Hashable, Request], encoder: TimedEncoderLike,
              cache: _LoggedCache, embed_kwargs: dict[str, Any]) -> _Measured:
    for rid in step.aborted:  # an aborted request's next window will never come
        cache.release(rid)
    before = cache.stats()
    cache.lookups.clear()
    batch = [(requests[w.rid], w.span) for w in step.windows]
    start = time.perf_counter()
    result = embed_chunks(batch, encoder, cache, **embed_kwargs)
    wall_ms = (time.perf_counter() - start) * 1e3
    for rid in step.finished:  # embed_chunks released them at their last window; make sure
        cache.release(rid)
    return _Measured(result, wall_ms, encoder.take_time(), before, cache.stats())


def _step_row(step: Step, m: _Measured, config: tuple[str, bool, int], again: tuple[int, int]) -> StepRow:
    mode, pin, capacity_bytes = config
    r = m.result
    return StepRow(
        step=step.index, time_ms=step.time_ms, mode=mode, pin=pin, capacity_bytes=capacity_bytes,
        windows=tuple((w.rid, w.start, w.stop) for w in step.windows), tokens=step.tokens,
        items_touched=r.cache_hits + r.cache_misses, hits=r.cache_hits, misses=r.cache_misses,
        encoder_calls=r.encoder_calls, encoded_items=r.encoded_items, encoded_tokens=r.encoded_tokens,
        call_tokens=r.call_tokens, re_encodings=again[0], request_re_encodings=again[1],
        evictions=m.after.evictions - m.before.evictions, rejected=m.after.rejected - m.before.rejected,
        cache_bytes=m.after.bytes, pinned_bytes=m.after.pinned_bytes,
        encoder_ms=m.spent.reported_ms, bookkeeping_ms=max(0.0, m.wall_ms - m.spent.measured_ms),
        admitted=step.admitted, finished=step.finished, aborted=step.aborted,
    )


def replay(
    requests: Mapping[Hashable, Request],
    steps: Sequence[Step],
    encoder: Encoder,
    capacity_bytes: int,
    *,
    mode: str = "batched",
    pin: bool = True,
    max_tokens_per_call: int | None = None,
    keep_embeddings: bool = False,
    progress: bool = False,
) -> SimRun:
    """Run planned ``steps`` over ``requests`` with a fresh cache of ``capacity_bytes``.

    ``encoder_ms`` is the encoder's own report (``ModelledEncoder``) or its measured wall time
    (any other encoder, wrapped in ``TimedEncoder``); ``bookkeeping_ms`` is the rest of the
    step's wall time in ``embed_chunks``.
    """
    cache = _LoggedCache(capacity_bytes)
    timed = as_timed(encoder)
    ledger = _Ledger()
    embed_kwargs = {"mode": mode, "pin": pin, "max_tokens_per_call": max_tokens_per_call}
    rows, window_rows, embeddings = [], [], {}
    for step in tqdm(steps, desc=f"{mode} pin={pin}", disable=not progress, leave=False):
        measured = _run_step(step, requests, timed, cache, embed_kwargs)
        windows = _window_rows(step, requests, cache.lookups)
        again = (ledger.count_hashes(measured.result.encoded_hashes), ledger.count_items(windows, requests))
        rows.append(_step_row(step, measured, (mode, pin, capacity_bytes), again))
        window_rows += windows
        if keep_embeddings:
            embeddings.update({(step.index, w.rid): e for w, e in zip(step.windows, measured.result.embeddings)})
    summary = summarize(rows, mode, pin, capacity_bytes, bytes_per_token(encoder))
    return SimRun(tuple(rows), tuple(window_rows), summary, cache.stats(), embeddings, cache)


@dataclass(frozen=True)
class Stream:
    """A trace made ready to replay: its requests (items built, hashed) and its planned steps."""

    trace: Trace
    requests: Mapping[Hashable, Request]
    steps: tuple[Step, ...]


def prepare(
    trace: Trace | str | Path,
    *,
    chunked_prefill_size: int = 2048,
    max_running: int | None = None,
    long_prefill_token_threshold: int | None = None,
    step_ms: float = 50.0,
    make_item: ItemFactory = fake_item,
) -> Stream:
    """Load (a path or an example name), build the requests and plan the schedule, once."""
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    requests = build_requests(trace, make_item)
    arrivals = trace.arrivals({rid: r.prompt_len for rid, r in requests.items()})
    steps = plan_steps(
        arrivals,
        chunked_prefill_size,
        max_running=max_running,
        long_prefill_token_threshold=long_prefill_token_threshold,
        step_ms=step_ms,
    )
    return Stream(trace, requests, tuple(steps))


def simulate(
    stream: Stream,
    capacity_bytes: int,
    *,
    encoder: Encoder | None = None,
    mode: str = "batched",
    pin: bool = True,
    max_tokens_per_call: int | None = None,
    keep_embeddings: bool = False,
    progress: bool = False,
) -> SimRun:
    """Replay a prepared stream once (default encoder: ``FakeEncoder()``)."""
    return replay(
        stream.requests,
        stream.steps,
        FakeEncoder() if encoder is None else encoder,
        capacity_bytes,
        mode=mode,
        pin=pin,
        max_tokens_per_call=max_tokens_per_call,
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
    progress: bool = True,
) -> list[SimRun]:
    """Replay the same stream for every mode x capacity x pin setting (a fresh cache each)."""
    configs = [(m, c, p) for m in modes for c in capacities_bytes for p in pins]
    runs = []
    for mode, capacity, pin in tqdm(configs, desc="sim configs", disable=not progress):
        runs.append(simulate(stream, capacity, encoder=encoder, mode=mode, pin=pin, max_tokens_per_call=max_tokens_per_call))
    return runs


def summary_records(runs: Iterable[SimRun]) -> list[dict[str, Any]]:
    """One dict per run: its summary fields."""
    return to_records(run.summary for run in runs)


STEP_FIELDS = tuple(f.name for f in fields(StepRow))
