"""The timed replay: requests arrive, queue and are prefilled in steps whose cost moves the clock.

``timed_replay`` drives the one step loop (``vitkit.sim.engine.run_steps``) with a
``StepClock`` as its ``step_duration``: each step lasts encoder + language-model prefill +
bookkeeping ms, so when steps are slow the waiting queue grows and every later request waits
longer. Embeddings come from a fake encoder (identical in both modes); only their *time* is
modelled, unless a real encoder is passed (the GPU validation). The result holds, per request,
queueing delay and time to first token, and per run the percentiles, rates, the encoder's share
of step time and what the cache did (re-encodings, refused puts, forced grants).

``load_sweep`` replays one workload at several Poisson rates for each mode and admission policy:
the latency-versus-load curves. ``sustainable_rate`` finds the highest rate whose TTFT p99
stays under a bound. Decode is out of scope throughout (see ``vitkit.sim.latency``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from vitkit.cache import EmbeddingCache
from vitkit.checks import positive_int
from vitkit.embed import MODES, Encoder
from vitkit.request import Request
from vitkit.sim.admission import POLICIES, CacheAwareAdmission
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.engine import run_steps
from vitkit.sim.fake import FakeEncoder, bytes_per_token
from vitkit.sim.latency import LatencySummary, RequestLatency, StepTime, request_latencies, summarize_latency
from vitkit.sim.load import max_sustainable_rate, workload_params
from vitkit.sim.scheduler import Scheduler
from vitkit.sim.stepcost import StepClock, StepCosts
from vitkit.sim.timing import TimedEncoderLike
from vitkit.sim.trace import Trace
from vitkit.sim.workload import build_requests, generate_workload

FAKE_HIDDEN = 8  # rows only need to exist (identical in both modes); their width costs time


@dataclass(frozen=True)
class ReplayConfig:
    """Scheduler, cache and embedding path of one timed replay (tokens are embedding rows)."""

    mode: str = "batched"
    policy: str = "legacy"  # or "cache-aware"
    chunked_prefill_size: int = 2048  # prompt tokens a step (vLLM max_num_batched_tokens)
    long_prefill_token_threshold: int | None = None  # tokens per request per step
    max_running: int | None = None
    cache_tokens: int = 16384  # embedding rows the cache holds
    pin: bool = True
    encoder_budget_tokens: int | None = None  # cache-aware: rows a step may encode (None: the step budget)
    max_tokens_per_call: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        positive_int("cache_tokens", self.cache_tokens)


@dataclass(frozen=True)
class CacheCounts:
    """What the cache did over a replay (counts)."""

    encoded_items: int
    re_encodings: int  # encodes of a content hash encoded before in the run
    request_re_encodings: int  # encodes of an image a request had already had encoded for it
    refused_puts: int  # puts the cache could not take
    evictions: int
    forced_grants: int  # cache-aware: deadlock-breaking grants (0 under legacy)


@dataclass(frozen=True)
class TimedRun:
    """One timed replay: its settings, per-request latencies, per-step times and the summary."""

    config: ReplayConfig
    arrivals: str  # how requests arrived (e.g. "poisson 40/s")
    summary: LatencySummary
    cache: CacheCounts
    requests: tuple[RequestLatency, ...]
    steps: tuple[StepTime, ...]
    sources: str  # which cost models timed the steps
    shadow: tuple[tuple[float, float, list], ...] = field(default=(), repr=False, compare=False)  # see StepClock
    embeddings: Mapping[tuple[int, Hashable], Any] = field(default_factory=dict, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """Settings, summary and cache counts as one flat dict (a table row)."""
        return {**asdict(self.config), "arrivals": self.arrivals, **asdict(self.summary), **asdict(self.cache)}


def _scheduler(config: ReplayConfig, requests: Mapping[Hashable, Request], cache: EmbeddingCache, row_bytes: int) -> Scheduler:
    admission = None
    if config.policy == "cache-aware":
        budget = config.encoder_budget_tokens or config.chunked_prefill_size
        admission = CacheAwareAdmission(requests, cache, row_bytes, budget, hold_hits=config.mode == "per_request")
    return Scheduler(config.chunked_prefill_size, config.max_running, config.long_prefill_token_threshold, admission=admission)


def timed_replay(
    trace: Trace,
    costs: StepCosts,
    config: ReplayConfig = ReplayConfig(),
    *,
    encoder: Encoder | None = None,
    encoder_timer: TimedEncoderLike | None = None,
    make_item=None,
    requests: Mapping[Hashable, Request] | None = None,
    keep_embeddings: bool = False,
    progress: bool = False,
    shadow: StepCosts | None = None,
) -> TimedRun:
    """Replay ``trace`` (its own arrival times) on the step loop, timed by ``costs``.

    ``encoder`` defaults to a fake one (embeddings only, the time is modelled); a real encoder
    with ``encoder_timer`` (its ``TimedEncoder``) times the encoder for real. ``requests``: the
    trace's requests already built (by ``build_requests(trace, make_item)``), to reuse heavy items.
    ``shadow``: cost models also applied to every step as it ran (``TimedRun.shadow``).
    """
    if requests is None:
        requests = build_requests(trace) if make_item is None else build_requests(trace, make_item)
    encoder = FakeEncoder(FAKE_HIDDEN) if encoder is None else encoder
    row_bytes = bytes_per_token(encoder)
    if row_bytes is None:  # the cache is sized in embedding rows: their width must be known
        raise ValueError(f"encoder {getattr(encoder, 'name', encoder)!r} has no hidden_size/dtype: cannot size a cache in rows")
    cache = EmbeddingCache(config.cache_tokens * row_bytes)
    scheduler = _scheduler(config, requests, cache, row_bytes)
    for arrival in trace.arrivals({rid: r.prompt_len for rid, r in requests.items()}):
        scheduler.add(arrival)
    clock = StepClock(costs, encoder_timer, requests, shadow)
    seen: set[str] = set()
    re_enc = req_re_enc = refused = evictions = encoded = 0
    embeddings = {}
    # the loop takes its own encoder time (wall, for bookkeeping) from whatever it is given; a
    # measured run hands it the timer's bound call, so the clock's timer keeps the encoder ms
    loop_encoder = encoder if encoder_timer is None else encoder_timer.__call__
    loop = run_steps(requests, scheduler, loop_encoder, cache,
                     mode=config.mode, pin=config.pin, max_tokens_per_call=config.max_tokens_per_call, step_duration=clock)
    for ran in tqdm(loop, desc=f"{trace.name} {config.mode} {config.policy}", disable=not progress, leave=False, mininterval=0.5):
        r = ran.result
        encoded += r.encoded_items
        for key in r.encoded_hashes:  # in call order: a second encode within one step counts too
            re_enc += key in seen
            seen.add(key)
        req_re_enc += sum(len({o.hash for o in window if o.lost}) for window in r.outcomes)
        refused += ran.after.rejected - ran.before.rejected
        evictions += ran.after.evictions - ran.before.evictions
        if keep_embeddings:
            embeddings.update({(ran.step.index, w.rid): e for w, e in zip(ran.step.windows, r.embeddings)})
    admission = getattr(scheduler, "admission", None)
    counts = CacheCounts(encoded, re_enc, req_re_enc, refused, evictions, admission.forced if admission else 0)
    arrival_ms = {req.rid: req.arrival_ms for req in trace.requests}
    rows = request_latencies(clock.times, arrival_ms)
    summary = summarize_latency(rows, clock.times, arrival_ms)
    return TimedRun(config, "trace times", summary, counts, tuple(rows), tuple(clock.times),
                    costs.label(), tuple(clock.shadow_ms), embeddings)


@dataclass(frozen=True)
class LoadPoint:
    """One point of a latency-versus-load curve."""

    workload: str
    rate_per_s: float
    run: TimedRun


def workload_trace(workload: str | Trace, num_requests: int | None = None) -> Trace:
    """A stock TTFT workload by name (``vitkit.sim.load.TTFT_WORKLOADS``), or a trace as is."""
    if isinstance(workload, Trace):
        return workload
    return generate_workload(workload_params(workload, num_requests), workload)


def replay_at_rate(trace: Trace, rate_per_s: float, costs: StepCosts, config: ReplayConfig, *, seed: int = 0,
                   progress: bool = False) -> TimedRun:
    """``trace``'s requests arriving Poisson at ``rate_per_s`` (seeded), replayed."""
    process = ArrivalProcess("poisson", rate_per_s, seed=seed)
    run = timed_replay(process.apply(trace), costs, config, progress=progress)
    return replace(run, arrivals=process.label())


def load_sweep(
    workload: str | Trace,
    rates: Sequence[float],
    costs: StepCosts,
    configs: Sequence[ReplayConfig],
    *,
    num_requests: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[LoadPoint]:
    """Every config at every rate, on one workload (the same requests and arrival pattern)."""
    trace = workload_trace(workload, num_requests)
    jobs = [(c, r) for c in configs for r in sorted(rates)]
    points = []
    for config, rate in tqdm(jobs, desc=f"ttft {trace.name}", disable=not progress):
        points.append(LoadPoint(trace.name, rate, replay_at_rate(trace, rate, costs, config, seed=seed)))
    return points


def sustainable_rate(
    workload: str | Trace,
    costs: StepCosts,
    config: ReplayConfig,
    bound_ms: float,
    rates: Sequence[float],
    *,
    num_requests: int | None = None,
    seed: int = 0,
    refine: int = 5,
) -> tuple[float | None, list[LoadPoint]]:
    """The highest Poisson rate whose TTFT p99 stays at or under ``bound_ms`` (see
    ``vitkit.sim.load.max_sustainable_rate``), and every point tried."""
    trace = workload_trace(workload, num_requests)
    tried: list[LoadPoint] = []

    def p99(rate: float) -> float:
        run = replay_at_rate(trace, rate, costs, config, seed=seed)
        tried.append(LoadPoint(trace.name, rate, run))
        return run.summary.ttft_p99_ms

    best, _ = max_sustainable_rate(p99, bound_ms, rates, refine=refine)
    return best, tried
