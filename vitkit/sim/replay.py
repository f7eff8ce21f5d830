"""Replay a request stream through the step loop and keep what happened, as tables.

``replay`` drives ``vitkit.sim.engine.run_steps`` with a ``StepClock``, fixed (every mode and cache size
replays the same windows) or the cost models' (TTFT under load). Each step becomes one ``StepRow`` and a
``WindowRow`` per window; totals are computed from the rows, so tables and totals agree.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.costs.clock import StepClock, StepCosts
from vitkit.embed import ENCODING_FATES, Encoder
from vitkit.request import Request
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.engine import DEFAULT_STEP_MS, ReplayConfig, StepRun, run_steps
from vitkit.sim.fake import FakeEncoder, bytes_per_token, fake_item
from vitkit.sim.latency import LatencySummary, RequestLatency, request_latencies, summarize_latency
from vitkit.sim.scheduler import Arrival, Policy
from vitkit.sim.trace import Trace, load_trace
from vitkit.sim.workload import ItemFactory, build_requests, generate_workload, max_sustainable_rate, workload_params

FAKE_HIDDEN = 8  # rows only need to exist (identical in both modes); their width costs time


@dataclass(frozen=True)
class StepRow:
    """What one scheduler step did and cost (tokens, items, bytes, ms)."""

    step: int
    time_ms: float  # replay clock at the step's start
    duration_ms: float  # how far the clock moved after it (0 when no window ran)
    windows: tuple[tuple[Hashable, int, int], ...]  # (rid, start, stop) in step order
    tokens: int  # prompt tokens scheduled
    items_touched: int  # item lookups (one per item overlapping a window)
    hits: int
    misses: int
    encoder_calls: int
    encoded_items: int
    encoded_tokens: int
    call_tokens: tuple[int, ...]  # embedding rows per encoder call
    re_encodings: int  # encodes of a hash an earlier encoder call of the run had encoded
    request_re_encodings: int  # of those encodes, the ones a request had lost between its windows (pinning: 0)
    evictions: int
    refused_puts: int  # cache puts that did not fit
    cache_bytes: int  # after the step
    pinned_bytes: int  # after the step
    encoder_ms: float  # modelled, or measured
    prefill_ms: float  # modelled, or measured (0 without a prefill model)
    bookkeeping_ms: float  # host time around the encoder
    admitted: tuple[Hashable, ...]
    finished: tuple[Hashable, ...]
    aborted: tuple[Hashable, ...]
    preempted: tuple[tuple[Hashable, int, int], ...] = ()  # (rid, 0, tokens it had done and redoes)
    preemption_re_encodings: int = 0  # encodes of images a preempted request had had before it was preempted

    @property
    def end_ms(self) -> float:
        return self.time_ms + self.duration_ms


@dataclass(frozen=True)
class WindowRow:
    """One request's window in a step: per item it touched (prompt order), what became of it."""

    step: int
    rid: Hashable
    start: int
    stop: int
    items: tuple[int, ...]  # indices into the request's items
    hit: tuple[bool, ...]
    fates: tuple[str, ...]  # "hit" | "encoded" | "shared" | "re-encoded"
    again: tuple[bool, ...]  # encoded by this window although an earlier encoder call of the run had encoded it
    lost: int = 0  # distinct images missed although the request had needed them in an earlier window (lookups:
    # several windows of a step may have lost what one encode serves; StepRow counts encodes)


@dataclass(frozen=True)
class RunSummary:
    """Totals of one run; every field follows from the ``StepRow`` list (see ``summarize``)."""

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
    refused_puts: int
    forced_grants: int  # windows granted past admission: none since the scheduler preempts instead (a column kept)
    peak_cache_bytes: int
    peak_pinned_bytes: int
    encoder_ms: float
    bookkeeping_ms: float
    preemptions: int = 0  # requests preempted (one may be preempted twice)
    redone_tokens: int = 0  # prompt tokens preempted requests had done and ran again
    preemption_re_encodings: int = 0  # encodes that followed a preemption (apart from request_re_encodings)
    refused_requests: int = 0  # requests admission could never grant, refused when added (``Run.refused``)
    released_holds: int = 0  # images a request held for a repeat, let go so a running request's item fits


_SUMMED = ("tokens", "items_touched", "hits", "misses", "encoder_calls", "encoded_items", "encoded_tokens",
           "re_encodings", "request_re_encodings", "evictions", "refused_puts", "encoder_ms", "bookkeeping_ms",
           "preemption_re_encodings")


@dataclass(frozen=True)
class Run:
    """One replay: its settings, per-step and per-window rows, totals, per-request latencies and
    their summary; with ``keep_embeddings`` each window's embedding keyed by ``(step, rid)``."""

    config: ReplayConfig
    capacity_bytes: int
    rows: tuple[StepRow, ...]
    window_rows: tuple[WindowRow, ...]
    summary: RunSummary
    requests: tuple[RequestLatency, ...]
    latency: LatencySummary
    cache_stats: CacheStats
    sources: str  # what timed the steps
    arrivals: str = "trace times"  # how requests arrived (e.g. "poisson 40/s")
    shadow: tuple[tuple[float, float, list], ...] = field(default=(), repr=False, compare=False)  # see StepClock
    embeddings: Mapping[tuple[int, Hashable], torch.Tensor | None] = field(default_factory=dict, repr=False,
                                                                           compare=False)
    cache: EmbeddingCache | None = field(default=None, repr=False, compare=False)  # as left at the end
    refused: Mapping[Hashable, str] = field(default_factory=dict)  # requests refused when added -> why

    def record(self) -> dict[str, Any]:
        """Settings, latency summary and totals as one flat dict (a table row)."""
        return {**self.config.flat(), "arrivals": self.arrivals, **asdict(self.latency), **asdict(self.summary)}


def summarize(rows: Sequence[StepRow], forced_grants: int = 0, refused_requests: int = 0,
              released_holds: int = 0) -> RunSummary:
    """Totals over ``rows`` (peaks for the byte columns); the admission's counts are given."""
    totals = {name: sum(getattr(r, name) for r in rows) for name in _SUMMED}
    return RunSummary(steps=len(rows), windows=sum(len(r.windows) for r in rows),
                      hit_rate=totals["hits"] / totals["items_touched"] if totals["items_touched"] else 0.0,
                      forced_grants=forced_grants, peak_cache_bytes=max((r.cache_bytes for r in rows), default=0),
                      peak_pinned_bytes=max((r.pinned_bytes for r in rows), default=0),
                      preemptions=sum(len(r.preempted) for r in rows),
                      redone_tokens=sum(stop - start for r in rows for _, start, stop in r.preempted),
                      refused_requests=refused_requests, released_holds=released_holds, **totals)


def _window_rows(ran: StepRun, encoded_before: set[str]) -> list[WindowRow]:
    """The step's windows as rows; ``again`` marks an encode of a hash in ``encoded_before`` (updated here)
    or encoded by an earlier call of this step (per-request mode: its put did not stay)."""
    first_call: dict[str, int] = {}  # hash -> first call of this step that encoded it
    for outcomes in ran.result.outcomes:
        for o in outcomes:
            if o.fate in ENCODING_FATES:
                first_call[o.hash] = min(o.call, first_call.get(o.hash, o.call))
    rows = []
    for w, outcomes in zip(ran.step.windows, ran.result.outcomes):
        again = tuple(o.fate in ENCODING_FATES and (o.hash in encoded_before or first_call[o.hash] < o.call)
                      for o in outcomes)
        # lost: distinct hashes, as a window encodes an image once however often it shows it
        rows.append(WindowRow(ran.step.index, w.rid, w.start, w.stop, items=tuple(o.index for o in outcomes),
                              hit=tuple(o.fate == "hit" for o in outcomes), fates=tuple(o.fate for o in outcomes),
                              again=again, lost=len({o.hash for o in outcomes if o.lost})))
    encoded_before.update(first_call)
    return rows


@dataclass
class _Preemptions:
    """What each request's windows touched, and what a preempted one had touched before it was preempted:
    encodes of that, after it resumes, are the re-encodings its preemption caused (vLLM frees a preempted
    request's encoder cache references, ``encoder_cache_manager.free``, and recomputes)."""

    touched: dict[Hashable, set[str]] = field(default_factory=dict)
    before: dict[Hashable, set[str]] = field(default_factory=dict)

    def re_encodings(self, ran: StepRun) -> int:
        for w in ran.step.preempted:
            self.before.setdefault(w.rid, set()).update(self.touched.pop(w.rid, set()))
        count = 0
        for w, outcomes in zip(ran.step.windows, ran.result.outcomes):
            had = self.before.get(w.rid, set())
            for o in outcomes:
                if o.hash in had:  # the first touch since it resumed: encoded again, or found in the cache
                    count += o.fate == "encoded"
                    had.discard(o.hash)
                self.touched.setdefault(w.rid, set()).add(o.hash)
        return count


def _lost_encodes(ran: StepRun) -> int:
    """The step's encodes that some window had lost: distinct ``(call, hash)`` among lost lookups. One encode
    can serve several requests that each lost the content (batched de-duplication, ``"shared"``), and is
    one re-encoding however many lost it; so these are a part of ``re_encodings``, never more."""
    return len({(o.call, o.hash) for outcomes in ran.result.outcomes for o in outcomes if o.lost})


def _step_row(ran: StepRun, windows: Sequence[WindowRow], preemption_re_encodings: int = 0) -> StepRow:
    step, r, t = ran.step, ran.result, ran.times
    return StepRow(
        step=step.index, time_ms=step.time_ms, duration_ms=t.duration_ms,
        windows=tuple((w.rid, w.start, w.stop) for w in step.windows), tokens=step.tokens,
        items_touched=r.cache_hits + r.cache_misses, hits=r.cache_hits, misses=r.cache_misses,
        encoder_calls=r.encoder_calls, encoded_items=r.encoded_items, encoded_tokens=r.encoded_tokens,
        call_tokens=r.call_tokens, re_encodings=sum(sum(w.again) for w in windows),
        request_re_encodings=_lost_encodes(ran),
        evictions=ran.after.evictions - ran.before.evictions, refused_puts=ran.after.rejected - ran.before.rejected,
        cache_bytes=ran.after.bytes, pinned_bytes=ran.after.pinned_bytes, encoder_ms=t.encoder_ms,
        prefill_ms=t.prefill_ms, bookkeeping_ms=t.bookkeeping_ms,
        admitted=step.admitted, finished=step.finished, aborted=step.aborted,
        preempted=tuple((w.rid, w.start, w.stop) for w in step.preempted),
        preemption_re_encodings=preemption_re_encodings,
    )


PolicyFactory = Callable[[Mapping[Hashable, Request], EmbeddingCache, int], Policy]  # (requests, cache, row bytes)


def replay(requests: Mapping[Hashable, Request], arrivals: Iterable[Arrival], config: ReplayConfig, clock: StepClock,
           encoder: Encoder | None = None, *, row_bytes: int | None = None, keep_embeddings: bool = False,
           progress: bool = False, label: str = "", make_policy: PolicyFactory | None = None) -> Run:
    """Replay ``arrivals`` of ``requests`` under ``config``, timed by ``clock``, with a fresh cache of
    ``config.cache_tokens`` rows of ``row_bytes`` (default: the encoder's; the encoder: a fake one, counts
    only unless ``keep_embeddings``: the same counts and times without making rows nobody reads).
    ``make_policy`` builds the run's scheduler over that cache (default: ``config.scheduler.build``), e.g.
    one with an admission of one's own."""
    encoder = FakeEncoder(FAKE_HIDDEN, counts_only=not keep_embeddings) if encoder is None else encoder
    row_bytes = bytes_per_token(encoder) if row_bytes is None else row_bytes
    if row_bytes is None:  # the cache is sized in embedding rows: their width must be known
        raise ValueError(f"encoder {getattr(encoder, 'name', encoder)!r} has no hidden_size/dtype: give row_bytes")
    capacity = max(1, config.cache_tokens * row_bytes)  # 1 byte holds nothing
    cache = EmbeddingCache(capacity)
    if make_policy is None:
        policy = config.scheduler.build(requests, cache, row_bytes, hold_hits=config.mode == "per_request",
                                        hold_recurring=config.pin_recurring)
    else:
        policy = make_policy(requests, cache, row_bytes)
    arrival_ms = {}
    for arrival in arrivals:
        policy.add(arrival)
        arrival_ms[arrival.rid] = arrival.arrival_ms
    encoded_before: set[str] = set()
    preemptions = _Preemptions()
    rows, window_rows, embeddings = [], [], {}
    loop = run_steps(requests, policy, encoder, cache, config, clock)
    desc = f"{label} {config.mode} {config.scheduler.policy}".strip()
    for ran in tqdm(loop, desc=desc, disable=not progress, leave=False, mininterval=0.5):
        windows = _window_rows(ran, encoded_before)
        rows.append(_step_row(ran, windows, preemptions.re_encodings(ran)))
        window_rows += windows
        if keep_embeddings:
            embeddings.update({(ran.step.index, w.rid): e for w, e in zip(ran.step.windows, ran.result.embeddings)})
    refused = dict(getattr(policy, "refused", {}))
    released = getattr(getattr(policy, "admission", None), "released", 0)
    latencies = request_latencies(rows, arrival_ms)
    costs = clock.costs.label() if clock.costs is not None else f"fixed {clock.step_ms} ms steps, measured encoder"
    summary = summarize(rows, 0, len(refused), released)  # no window is forced: the scheduler preempts
    return Run(config, capacity, tuple(rows), tuple(window_rows), summary, tuple(latencies),
               summarize_latency(latencies, rows, arrival_ms), cache.stats(), costs,
               shadow=tuple(clock.shadow_ms), embeddings=embeddings, cache=cache, refused=refused)


@dataclass(frozen=True)
class Stream:
    """A trace made ready to replay: its requests (items built, hashed) and their arrivals."""

    trace: Trace
    requests: Mapping[Hashable, Request]
    arrivals: tuple[Arrival, ...]


def prepare(trace: Trace | str | Path, make_item: ItemFactory = fake_item, *, video_items: str = "whole") -> Stream:
    """Load (a path or an example name) and build the requests, once; each video as ``video_items`` says
    (``"whole"``, or ``"frame-groups:g"``)."""
    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    requests = build_requests(trace, make_item, video_items=video_items)
    return Stream(trace, requests, tuple(trace.arrivals({rid: r.prompt_len for rid, r in requests.items()})))


def replay_stream(stream: Stream | Trace, config: ReplayConfig, costs: StepCosts | None = None, *,
                  step_ms: float | None = None, **kwargs: Any) -> Run:
    """``replay`` of a stream (or a trace, prepared here) timed by ``costs`` and/or a fixed ``step_ms``."""
    stream = stream if isinstance(stream, Stream) else prepare(stream)
    if costs is None and step_ms is None:
        step_ms = DEFAULT_STEP_MS
    clock = StepClock(costs, step_ms=step_ms)
    return replay(stream.requests, stream.arrivals, config, clock, label=stream.trace.name, **kwargs)


def compare(stream: Stream, configs: Sequence[ReplayConfig], costs: StepCosts | None = None, *,
            step_ms: float | None = None, encoder: Encoder | None = None, progress: bool = True) -> list[Run]:
    """Replay the same stream under every config (a fresh cache and scheduler each)."""
    return [replay_stream(stream, c, costs, step_ms=step_ms, encoder=encoder)
            for c in tqdm(configs, desc="sim configs", disable=not progress)]


@dataclass(frozen=True)
class LoadPoint:
    """One point of a latency-versus-load curve."""

    workload: str
    rate_per_s: float
    run: Run


def workload_trace(workload: str | Trace, num_requests: int | None = None) -> Trace:
    """A stock TTFT workload by name (``vitkit.sim.workload.TTFT_WORKLOADS``), or a trace as is."""
    if isinstance(workload, Trace):
        return workload
    return generate_workload(workload_params(workload, num_requests), workload)


def stream_at_rate(stream: Stream, rate_per_s: float, seed: int = 0) -> Stream:
    """``stream``'s requests arriving Poisson at ``rate_per_s`` (seeded); its built requests are reused, so a
    search over rates builds items and hashes once."""
    trace = ArrivalProcess("poisson", rate_per_s, seed=seed).apply(stream.trace)
    return Stream(trace, stream.requests, tuple(trace.arrivals({rid: r.prompt_len for rid, r in stream.requests.items()})))


def replay_at_rate(trace: Trace, rate_per_s: float, costs: StepCosts, config: ReplayConfig, *, seed: int = 0,
                   progress: bool = False) -> Run:
    """``trace``'s requests arriving Poisson at ``rate_per_s`` (seeded), replayed."""
    process = ArrivalProcess("poisson", rate_per_s, seed=seed)
    run = replay_stream(process.apply(trace), config, costs, progress=progress)
    return replace(run, arrivals=process.label())


def load_sweep(workload: str | Trace, rates: Sequence[float], costs: StepCosts, configs: Sequence[ReplayConfig], *,
               num_requests: int | None = None, seed: int = 0, progress: bool = True) -> list[LoadPoint]:
    """Every config at every rate, on one workload (the same requests and arrival pattern)."""
    trace = workload_trace(workload, num_requests)
    jobs = [(c, r) for c in configs for r in sorted(rates)]
    return [LoadPoint(trace.name, rate, replay_at_rate(trace, rate, costs, config, seed=seed))
            for config, rate in tqdm(jobs, desc=f"ttft {trace.name}", disable=not progress)]


def sustainable_rate(workload: str | Trace, costs: StepCosts, config: ReplayConfig, bound_ms: float,
                     rates: Sequence[float], *, num_requests: int | None = None, seed: int = 0,
                     refine: int = 5) -> tuple[float | None, list[LoadPoint]]:
    """The highest Poisson rate whose TTFT p99 stays at or under ``bound_ms``, and every point tried."""
    trace = workload_trace(workload, num_requests)
    tried: list[LoadPoint] = []

    def p99(rate: float) -> float:
        run = replay_at_rate(trace, rate, costs, config, seed=seed)
        tried.append(LoadPoint(trace.name, rate, run))
        return run.latency.ttft_p99_ms

    best, _ = max_sustainable_rate(p99, bound_ms, rates, refine=refine)
    return best, tried
