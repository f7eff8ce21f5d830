"""Searching deployment settings on a trace: how one setting is judged, and the descent over settings.

A ``Bench`` is what settings are judged on: a prepared stream whose requests arrive Poisson at each rate
tried, the same requests at the trace's own load, the cost models and a TTFT p99 bound. ``sustainable_rate``
finds the highest Poisson rate whose modelled p99 stays within the bound (p99 rises with load: the arrival
pattern is one draw scaled, ``vitkit.sim.arrivals``). ``capacity_bound`` is the check before any replay: the
rate above which a setting's modelled work alone outlasts the trace. ``Descent`` is the coarse stage of
``vitkit.sim.advise`` (its docstring says how it goes); its replays run in forked worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from vitkit.costs.clock import StepCosts
from vitkit.costs.dp import DataParallelCallCost
from vitkit.costs.eager import LineCallCost
from vitkit.costs.encoder import BucketCost
from vitkit.costs.prefill import PrefillCost
from vitkit.sim.engines import Setting
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.replay import Stream, replay_stream, stream_at_rate

PRUNE = 0.8  # a candidate whose work bound is under this share of the probe rate is not replayed
# the coarse grids (tokens, rows): the descent refines the best value halfway to its neighbours (4096, ...)
STEP_TOKENS = (2048, 8192, 16384)
CACHE_TOKENS = (4096, 16384, 65536)
ENCODER_BUDGETS = (None, 2048, 8192)  # cache-aware only; None: the step budget


@dataclass(frozen=True)
class RateSearch:
    """How closely a rate is searched: the bracket's final relative width, and the first step out of a start."""

    tolerance: float
    step: float


COARSE, FINE = RateSearch(tolerance=0.05, step=1.5), RateSearch(tolerance=0.04, step=1.15)


@dataclass(frozen=True)
class Bench:
    """What settings are judged on: ``stream`` (its requests arrive Poisson at each rate tried), ``load`` (the
    same requests at the trace's own times or a given rate), the step costs of a setting, the bound (ms)."""

    stream: Stream
    load: Stream
    costs: Callable[[Setting], StepCosts]
    bound_ms: float


@dataclass(frozen=True)
class Latency:
    """TTFT p50 and p99 (ms) of one replay."""

    p50_ms: float
    p99_ms: float


def replay_latency(bench: Bench, s: Setting, rate_per_s: float | None) -> Latency:
    """``s``'s TTFT with the bench's requests Poisson at ``rate_per_s`` (None: at the bench's load)."""
    stream = bench.load if rate_per_s is None else stream_at_rate(bench.stream, rate_per_s)
    # the embeddings' values are never read here, only their rows counted: the narrowest fake encoder
    summary = replay_stream(stream, s.replay_config(), bench.costs(s), encoder=FakeEncoder(1, counts_only=True)).latency
    return Latency(summary.ttft_p50_ms, summary.ttft_p99_ms)


@dataclass
class RateFinder:
    """The highest rate of one setting within the bound, each rate replayed once (``replays`` counts them)."""

    bench: Bench
    setting: Setting
    search: RateSearch
    seen: dict[float, float] = field(default_factory=dict)  # rate -> p99 (ms)

    @property
    def replays(self) -> int:
        return len(self.seen)

    def holds(self, rate: float) -> bool:
        if rate not in self.seen:
            self.seen[rate] = replay_latency(self.bench, self.setting, rate).p99_ms
        return self.seen[rate] <= self.bench.bound_ms

    def find(self, start: float, cap: float) -> float | None:
        """The highest rate that holds, from ``start`` (which need not hold) up to ``cap``; None when a
        thousandth of the start does not hold either (the bound is below what requests take with no queue)."""
        low, high, floor = min(start, cap), None, min(start, cap) / 1000
        factor = self.search.step
        while not self.holds(low):  # steps down, each longer than the last: a start near the answer is cheap
            if low <= floor:
                return None
            high, low, factor = low, max(low / factor, floor), factor * self.search.step
        factor = self.search.step
        while high is None and low < min(cap, start * 1e6):  # 1e6: a bound no load breaks ends the search too
            up = min(low * factor, cap)  # and up, the same way
            low, high, factor = (up, None, factor * self.search.step) if self.holds(up) else (low, up, factor)
        while high is not None and high / low > 1 + self.search.tolerance:
            mid = math.sqrt(low * high)
            low, high = (mid, high) if self.holds(mid) else (low, mid)
        return low


def sustainable_rate(bench: Bench, s: Setting, start: float, search: RateSearch) -> tuple[float | None, int]:
    """(the highest Poisson rate of ``s`` within the bound, or None; replays it took), searched from ``start``
    and never above ``capacity_bound``."""
    finder = RateFinder(bench, s, search)
    rate = finder.find(start, capacity_bound(bench.stream, bench.costs(s), s))
    return rate, finder.replays


# ------------------------------------------------------------------ the work bound


def encoder_floor_ms(call: Any, rows: int) -> float:
    """A lower bound on the ms one image of ``rows`` embedding rows adds to any call of ``call``."""
    if isinstance(call, DataParallelCallCost):
        return encoder_floor_ms(call.call, rows) / call.world_size
    if isinstance(call, LineCallCost):
        return call.per_item_ms + call.ms_per_kilo_row * rows / 1e3
    if isinstance(call, BucketCost):
        # a pack of bucket b holds at most b units: no unit costs less than the cheapest bucket per unit
        per_unit = min(ms / size for ms, size in zip(call.bucket_ms, call.buckets.sizes))
        return (per_unit + call.per_unit_ms) * rows * call.unit / call.rows_per_unit
    return 0.0


def prefill_floor_ms_per_token(prefill: Any, step_tokens: int) -> float:
    """A lower bound on the prefill ms of a token in steps of at most ``step_tokens``: the dense part is linear
    between its knots, so its cost per row is lowest at a knot or at the step budget."""
    if not isinstance(prefill, PrefillCost):
        return 0.0
    points = [k for k in prefill.knots if k <= step_tokens] + [step_tokens]
    return min(prefill.dense_ms(n) / n for n in points)


def capacity_bound(stream: Stream, costs: StepCosts, s: Setting) -> float:
    """Requests/s above which ``s`` cannot keep up with ``stream`` on the models: each distinct image encoded
    once at the encoder's cheapest ms per row, every token prefilled at the cheapest ms per token of its step
    budget, the bookkeeping of every step; queueing, calls and re-encodings only add to it."""
    images: Mapping[str, int] = {item.hash: item.num_tokens for r in stream.requests.values() for item in r.items}
    tokens = sum(r.prompt_len for r in stream.requests.values())
    encoder = sum(encoder_floor_ms(costs.encoder.call, rows) for rows in images.values())
    prefill = tokens * prefill_floor_ms_per_token(costs.prefill, s.chunked_prefill_size)
    work = encoder + prefill + math.ceil(tokens / s.chunked_prefill_size) * costs.encoder.bookkeeping_ms
    return len(stream.requests) / (work / 1e3) if work > 0 else math.inf


# ------------------------------------------------------------------ replays in worker processes

BENCHES: dict[str, Bench] = {}  # what forked workers replay on: set before the pool starts


def worker_pool(workers: int) -> ProcessPoolExecutor | None:
    """Worker processes forked after ``BENCHES`` is set (they inherit it); None for one worker or where fork
    is not available (the jobs then run here, one after another)."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def run_jobs(pool: ProcessPoolExecutor | None, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
    return list(pool.map(fn, jobs)) if pool is not None else [fn(j) for j in jobs]


def probe_job(job: tuple[str, Setting, float]) -> float:
    """p99 (ms) of a setting at a rate on ``BENCHES[name]``; infinite, without a replay, when its work bound
    is under ``PRUNE`` of the rate."""
    torch.set_num_threads(1)  # one replay a core: torch's own threads would fight over the cores
    name, s, rate = job
    bench = BENCHES[name]
    if capacity_bound(bench.stream, bench.costs(s), s) < PRUNE * rate:
        return math.inf
    return replay_latency(bench, s, rate).p99_ms


# ------------------------------------------------------------------ the coarse stage


@dataclass(frozen=True)
class Space:
    """The values each part of a setting may take (cache sizes and budgets hold the largest image), and the
    largest step budget the refinement may reach (tokens; None: any)."""

    encoders: tuple[str, ...]
    gpus: tuple[int, ...]
    step_tokens: tuple[int, ...] = STEP_TOKENS
    cache_tokens: tuple[int, ...] = CACHE_TOKENS
    budgets: tuple[int | None, ...] = ENCODER_BUDGETS
    modes: tuple[str, ...] = ("batched", "per_request")
    policies: tuple[str, ...] = ("legacy", "cache-aware")
    max_step_tokens: int | None = None

    def dimensions(self) -> list[tuple[str, tuple]]:
        return [("encoder", self.encoders), ("mode", self.modes), ("chunked_prefill_size", self.step_tokens),
                ("policy", self.policies), ("encoder_budget_tokens", self.budgets), ("cache_tokens", self.cache_tokens),
                ("gpus", self.gpus)]


def between(value: int, grid: Sequence[int]) -> list[int]:
    """The geometric midpoints (to 256) between ``value`` and its neighbours in ``grid``: the fine values. At
    an end of the grid the missing neighbour is 4x out, so the search goes on past the grid by 2x."""
    grid = sorted({*grid, value})
    k = grid.index(value)
    near = [grid[k - 1] if k > 0 else value / 4, grid[k + 1] if k + 1 < len(grid) else value * 4]
    return [max(256, round(math.sqrt(value * n) / 256) * 256) for n in near]


@dataclass
class Descent:
    """The coarse stage on ``BENCHES["coarse"]``: ``probes`` keeps each (setting, rate) replayed, ``order`` the
    settings in the order first met (ties go to the earlier one: closer to the start). ``covers``: whether the
    models cover a setting; ``largest_rows``: the trace's largest image, which admission must be able to grant."""

    space: Space
    covers: Callable[[Setting], bool]
    largest_rows: int
    pool: ProcessPoolExecutor | None = None
    rate: float = 0.0  # the probe rate (requests/s)
    probes: dict[tuple[Setting, float], float] = field(default_factory=dict)
    order: dict[Setting, int] = field(default_factory=dict)
    replays: int = 0

    def probe(self, candidates: Sequence[Setting]) -> Setting:
        """Replay the new ``candidates`` at the probe rate; the best of them (lowest p99, then fewer GPUs)."""
        new = list(dict.fromkeys(c for c in candidates if (c, self.rate) not in self.probes))
        p99s = run_jobs(self.pool, probe_job, [("coarse", c, self.rate) for c in new])
        self.probes.update({(c, self.rate): p for c, p in zip(new, p99s)})
        self.replays += sum(math.isfinite(p) for p in p99s)
        for c in candidates:
            self.order.setdefault(c, len(self.order))
        return min(candidates, key=self.key)

    def key(self, s: Setting) -> tuple:
        return (self.probes[(s, self.rate)], s.gpus, self.order[s])

    def around(self, s: Setting, name: str, values: Sequence) -> list[Setting]:
        """``s`` and its neighbours along ``name`` that the models cover and admission can grant."""
        made = (replace(s, **{name: v}).normalised() for v in [getattr(s, name), *values])
        top = self.space.max_step_tokens
        return [c for c in dict.fromkeys(made) if self.covers(c) and self._holds_largest(c)
                and (top is None or c.chunked_prefill_size <= top)]

    def _holds_largest(self, s: Setting) -> bool:
        """Whether ``s``'s cache holds the trace's largest image, and cache-aware admission's encoder budget
        could ever grant it."""
        budget = s.encoder_budget_tokens or s.chunked_prefill_size
        return s.cache_tokens >= self.largest_rows and (s.policy != "cache-aware" or budget >= self.largest_rows)

    def rate_of(self, s: Setting, start: float) -> float | None:
        rate, replays = sustainable_rate(BENCHES["coarse"], s, start, COARSE)
        self.replays += replays
        return rate

    def run(self, start: Setting, start_rate: float, passes: int = 3) -> Setting:
        """Descend from ``start``; the best setting. The probe rate is the leader's sustainable rate (or, when
        it has none, a thousandth of ``start_rate``: latency with no queue decides)."""
        current = start
        found = self.rate_of(current, start_rate)
        self.rate = found or start_rate / 1000
        for _ in range(passes):
            before = current
            for name, values in self.space.dimensions():
                current = self.probe(self.around(current, name, values))
            if current != before or not found:
                found = self.rate_of(current, self.rate)
                self.rate = found or self.rate
            if current == before:
                break
        for name, grid in (("chunked_prefill_size", self.space.step_tokens), ("cache_tokens", self.space.cache_tokens)):
            current = self.probe(self.around(current, name, between(getattr(current, name), grid)))
        return current

    def ranking(self, best: Setting, top: int) -> list[Setting]:
        """The settings the fine stage judges: ``best``, the best on each other GPU count, then the next best
        up to ``top``, all among ``best`` and its neighbours (each probed at the final probe rate)."""
        for name, values in self.space.dimensions():
            self.probe(self.around(best, name, values))
        ranked = sorted((s for s in self.order if (s, self.rate) in self.probes), key=self.key)
        chosen = [best] + [next(s for s in ranked if s.gpus == n) for n in self.space.gpus
                           if n != best.gpus and any(s.gpus == n for s in ranked)]
        return list(dict.fromkeys([*chosen, *ranked]))[: max(top, len(chosen))]

    def lowest(self) -> tuple[Setting, float] | None:
        """The lowest p99 (ms) probed at the final probe rate, and its setting."""
        at_rate = [(s, p) for (s, r), p in self.probes.items() if r == self.rate]
        return min(at_rate, key=lambda sp: sp[1]) if at_rate else None
