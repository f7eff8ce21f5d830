"""``python -m vitkit.sim advise --trace FILE --p99-ms B``: the deployment settings that serve a trace best
under a TTFT p99 bound, from the cost models, with the SGLang and vLLM flags that set them.

A setting (``vitkit.sim.engines.Setting``) is judged by its sustainable rate, the highest Poisson rate of the
trace's requests whose modelled TTFT p99 stays within the bound, then by its p50/p99 at the trace's own load
(its arrival times, or ``--rate``); one over the bound there does not qualify. The search, coarse to fine
(``vitkit.sim.search``):

1. coarse, on the trace's first ``COARSE_REQUESTS`` requests: coordinate descent from 8192-token batched
   steps on the graphed encoder. Each part of the setting in turn (encoder, mode, step budget, admission,
   encoder budget, cache, GPUs) takes every value with the others held, and each candidate is replayed once,
   at the probe rate: the leader's sustainable rate, where the leader's p99 is at the bound, so a lower p99
   there means headroom. A candidate whose modelled work alone cannot keep up with most of the probe rate
   (``capacity_bound``) is pruned without a replay. After each pass the leader's rate is searched again and
   becomes the probe; passes repeat until the leader stays, then the step budget and the cache are refined
   between the best value and its neighbours.
2. fine, on the whole trace: the best setting, the best on each other GPU count and the next best up to
   ``top``, and the engines' defaults, each rate-searched and replayed at the trace's load.

The replays of a step run in forked worker processes; the answer does not depend on their number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.cache import embedding_row_bytes
from vitkit.costs import results
from vitkit.costs.clock import PrefillModel, StepCosts, prefill_source
from vitkit.costs.dp import data_parallel, load_dp_scaling
from vitkit.costs.eager import load_eager_cost
from vitkit.costs.encoder import EncoderCost, load_encoder_cost
from vitkit.costs.prefill import PrefillCost, load_prefill_cost
from vitkit.encoders.presets import get_preset
from vitkit.sim.engines import (DEFAULT_STEP_TOKENS, ENCODER_IMPLS, EngineDefault, Setting, engine_defaults,
                                sglang_flags, vllm_flags)
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.replay import prepare, stream_at_rate
from vitkit.sim.report import rows_of_image
from vitkit.sim.search import (BENCHES, CACHE_TOKENS, COARSE, ENCODER_BUDGETS, FINE, STEP_TOKENS, Bench, Descent,
                               RateSearch, Space, capacity_bound, replay_latency, run_jobs, sustainable_rate,
                               worker_pool)
from vitkit.sim.trace import Trace, check_cache_sizes, load_trace, mean_rate_per_s

COARSE_REQUESTS = 300  # the coarse stage's prefix of the trace: replays a third as long, the same ranking
SCHEMA = "vitkit.sim.advise/1"


@dataclass(frozen=True)
class Models:
    """The cost models a setting can choose from: an encoder per (impl, GPUs), the prefill, the width of an
    embedding row of the served model (bytes: the engines size caches in MB), and what is not modelled."""

    encoders: dict[tuple[str, int], EncoderCost]
    prefill: PrefillModel
    row_bytes: int
    notes: tuple[str, ...] = ()

    def costs(self, s: Setting) -> StepCosts:
        return StepCosts(self.encoders[(s.encoder, s.gpus)], self.prefill)

    def covers(self, s: Setting) -> bool:
        return (s.encoder, s.gpus) in self.encoders

    @property
    def max_step_tokens(self) -> int | None:
        """The largest prefill step measured (tokens): beyond it the prefill model would extrapolate."""
        return max(self.prefill.knots) if isinstance(self.prefill, PrefillCost) else None

    def label(self) -> str:
        return f"encoder: {self.encoders[('graphs', 1)].source}; prefill: {prefill_source(self.prefill)}"


def load_models(folder: str | Path, encoder: str = "qwen2.5-vl-7b") -> Models:
    """Every model ``folder`` (a card's results) allows: the graphed encoder, the eager one when a stream file
    measured it, the graphed one over each GPU count the data-parallel runs measured; and notes on the rest."""
    name = Path(folder).name
    graphs = load_encoder_cost(folder, encoder)
    encoders = {("graphs", 1): graphs}
    notes = [("prefill is modelled on one GPU in every setting (the measured grid ran TP=1): the engines' --tp N "
              "would split the language model too, which is not modelled")]
    eager = load_eager_cost(folder, encoder)
    if eager is None:
        notes.append(f"eager encoder: no measured model (no stream file in {name}/ ran vitkit-eager), so eager "
                     "settings and the engines' defaults (eager ViT) are not modelled")
    else:
        encoders[("eager", 1)] = eager
        notes.append(f"eager encoder: {eager.source}; the graphed model is from another file and session")
    scaling = load_dp_scaling(folder, encoder)
    if scaling is None:
        notes.append(f"data-parallel encoder: no measured scaling in {name}/dp/, one GPU only")
    else:
        for n in scaling.world_sizes[1:]:
            encoders[("graphs", n)] = data_parallel(graphs, scaling, n)
        notes.append(f"data-parallel encoder: scaling measured on the graphed encoder ({scaling.source}); the eager "
                     "encoder over several GPUs is not modelled")
    prefill = load_prefill_cost(folder=folder)
    if isinstance(prefill, PrefillCost):
        notes.append(f"step budgets above {max(prefill.knots)} tokens, the largest prefill step measured, are not "
                     "searched: the prefill model would extrapolate")
    row_bytes = embedding_row_bytes(get_preset(encoder).hidden_size, torch.bfloat16)
    return Models(encoders, prefill, row_bytes, tuple(notes))


def space_for(models: Models, largest_rows: int, step_tokens: Sequence[int] = STEP_TOKENS,
              cache_tokens: Sequence[int] = CACHE_TOKENS) -> Space:
    """The values searched: those the models cover (step budgets up to the largest prefill step measured),
    cache sizes and encoder budgets that hold the largest image; ValueError when no step budget is left."""
    top = models.max_step_tokens
    steps = tuple(sorted(t for t in set(step_tokens) if top is None or t <= top))
    if not steps:
        raise ValueError(f"step budgets {sorted(step_tokens)} are all above the largest prefill step measured ({top} "
                         "tokens), where the prefill model would extrapolate; ask for smaller ones")
    return Space(tuple(e for e in ENCODER_IMPLS if (e, 1) in models.encoders),
                 tuple(sorted({n for _, n in models.encoders})), steps,
                 tuple(sorted(t for t in set(cache_tokens) if t >= largest_rows)),
                 tuple(b for b in ENCODER_BUDGETS if b is None or b >= largest_rows), max_step_tokens=top)


@dataclass(frozen=True)
class Outcome:
    """One setting on the whole trace: its sustainable rate (requests/s; None: not even with no queue), its
    p50/p99 at the trace's load (ms) and the replays it took."""

    setting: Setting
    rate_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    replays: int

    def within(self, bound_ms: float) -> bool:
        return self.rate_per_s is not None and self.p99_ms is not None and self.p99_ms <= bound_ms


def fine_job(job: tuple[str, Setting, float, RateSearch]) -> Outcome:
    """A setting's ``Outcome`` on ``BENCHES[name]``, its rate searched from a start (a worker's job)."""
    torch.set_num_threads(1)  # one replay a core: torch's own threads would fight over the cores
    name, s, start, search = job
    rate, replays = sustainable_rate(BENCHES[name], s, start, search)
    if rate is None:
        return Outcome(s, None, None, None, replays)
    at_load = replay_latency(BENCHES[name], s, None)
    return Outcome(s, rate, at_load.p50_ms, at_load.p99_ms, replays + 1)


def fine_key(o: Outcome) -> tuple:
    """Better first: a higher rate (equal within the fine tolerance), fewer GPUs, a lower p99 at the load."""
    return (-round(math.log(o.rate_per_s) / math.log(1 + FINE.tolerance)), o.setting.gpus, o.p99_ms)


@dataclass(frozen=True)
class Advice:
    """The answer: the best settings (judged on the whole trace), the engines' defaults judged the same way,
    and how the search went."""

    trace: str
    requests: int
    load: str  # "trace times" or "poisson R/s"
    bound_ms: float
    best: tuple[Outcome, ...]  # within the bound at the load, best first
    over: tuple[Outcome, ...]  # judged with them but over the bound at the load (e.g. the best on 1 GPU)
    defaults: tuple[tuple[EngineDefault, Outcome], ...]
    models: str
    notes: tuple[str, ...]
    settings_met: int  # by the coarse stage
    replays: int
    seconds: float
    row_bytes: int
    largest_item_rows: int


def _benches(trace: Trace, models: Models, bound_ms: float, rate_per_s: float | None) -> tuple[Bench, Bench, str]:
    """The whole trace's bench, its coarse prefix's, and the load's label."""
    def bench(t: Trace) -> Bench:
        stream = prepare(t)
        load = stream if rate_per_s is None else stream_at_rate(stream, rate_per_s)
        return Bench(stream, load, models.costs, bound_ms)

    label = "trace times" if rate_per_s is None else f"poisson {rate_per_s:g}/s"
    prefix = Trace(trace.name, trace.requests[:COARSE_REQUESTS], trace.images, trace.description)
    return bench(trace), bench(prefix), label


def advise(trace: Trace, bound_ms: float, models: Models, *, rate_per_s: float | None = None, top: int = 3,
           workers: int = 1, step_tokens: Sequence[int] = STEP_TOKENS,
           cache_tokens: Sequence[int] = CACHE_TOKENS) -> Advice:
    """The best settings for ``trace`` under TTFT p99 <= ``bound_ms`` (at least ``top``), and the engines'
    defaults judged the same way. ValueError when no cache size holds the trace's largest image (rows) or no
    setting holds the bound at the trace's load."""
    began = time.perf_counter()
    check_cache_sizes(trace, rows_of_image, cache_tokens)
    full, coarse, load = _benches(trace, models, bound_ms, rate_per_s)
    largest = max((item.num_tokens for r in full.stream.requests.values() for item in r.items), default=0)
    space = space_for(models, largest, step_tokens, cache_tokens)
    start = Setting(chunked_prefill_size=_nearest(space.step_tokens, DEFAULT_STEP_TOKENS),
                    cache_tokens=_nearest(space.cache_tokens, 16384))
    start_rate = mean_rate_per_s(coarse.load.trace) or capacity_bound(coarse.stream, models.costs(start), start) / 4
    defaults = [d for d in engine_defaults(models.row_bytes, largest) if models.covers(d.setting)]
    BENCHES.update(coarse=coarse, full=full)
    pool = worker_pool(workers)
    try:
        descent = Descent(space, models.covers, largest, pool)
        best = descent.run(start, start_rate)
        chosen = descent.ranking(best, top)
        # each rate search starts where the work bounds place it against the coarse leader's rate
        lead = capacity_bound(full.stream, models.costs(best), best)
        jobs = [("full", s, descent.rate * capacity_bound(full.stream, models.costs(s), s) / lead, FINE)
                for s in [*chosen, *(d.setting for d in defaults)]]
        judged = run_jobs(pool, fine_job, jobs)
    finally:
        if pool is not None:
            pool.shutdown()
    ranked = sorted((o for o in judged[: len(chosen)] if o.within(bound_ms)), key=fine_key)
    if not ranked:
        raise ValueError(_no_setting_message(judged, descent, trace.name, load, bound_ms))
    over = tuple(o for o in judged[: len(chosen)] if not o.within(bound_ms))
    return Advice(trace.name, len(trace.requests), load, bound_ms, tuple(ranked), over,
                  tuple(zip(defaults, judged[len(chosen):])), models.label(), models.notes, len(descent.order),
                  descent.replays + sum(o.replays for o in judged), time.perf_counter() - began, models.row_bytes,
                  largest)


def _nearest(values: Sequence[int], target: int) -> int:
    """The value nearest ``target`` by ratio: where the descent starts (the engines' step budget, a 16k cache)."""
    return min(values, key=lambda v: abs(math.log(v / target)))


def _no_setting_message(outcomes: Sequence[Outcome], descent: Descent, name: str, load: str, bound_ms: float) -> str:
    """One line: the bound, and the closest any setting came to it."""
    at_load = [o for o in outcomes if o.p99_ms is not None]
    if at_load:
        near = min(at_load, key=lambda o: o.p99_ms)
        return (f"no setting meets TTFT p99 <= {bound_ms:g} ms on trace {name!r} at its load ({load}): the lowest p99 "
                f"there is {near.p99_ms:.1f} ms ({near.setting.label()})")
    lowest = descent.lowest()
    closest = f": the lowest p99 with almost no queue is {lowest[1]:.1f} ms ({lowest[0].label()})" if lowest else ""
    return f"no setting meets TTFT p99 <= {bound_ms:g} ms on trace {name!r}, not even with almost no queue{closest}"


# ------------------------------------------------------------------ what the user reads


def validate_command(a: Advice, trace_path: str, rate_per_s: float | None) -> tuple[int, str] | None:
    """(rank, command) replaying the best setting the GPU validation can run (graphed encoder, one GPU)."""
    for rank, o in enumerate(a.best, 1):
        s = o.setting
        if s.encoder == "graphs" and s.gpus == 1:
            budget = f" --encoder-budget-tokens {s.encoder_budget_tokens}" if s.encoder_budget_tokens else ""
            rate = f" --rate {rate_per_s:g}" if rate_per_s is not None else ""
            return rank, (f"python -m vitkit.bench validate --trace {trace_path}{rate} --modes {s.mode} "
                          f"--chunked-prefill-size {s.chunked_prefill_size} --cache-tokens {s.cache_tokens} "
                          f"--policy {s.policy}{budget} --out results/<card>")
    return None


def _gain(best: Outcome, other: Outcome) -> str:
    rate = f"{best.rate_per_s:.1f} vs {other.rate_per_s:.1f} req/s ({best.rate_per_s / other.rate_per_s - 1:+.0%})" \
        if other.rate_per_s else f"{best.rate_per_s:.1f} req/s vs none within the bound"
    p99 = f"{best.p99_ms:.0f} vs {other.p99_ms:.0f} ms ({best.p99_ms / other.p99_ms - 1:+.0%})" \
        if other.p99_ms else "no p99 to compare"
    return f"sustainable rate {rate}; p99 at the trace's load {p99}"


def comparisons(a: Advice) -> list[str]:
    """How the best setting on one GPU (like for like), and the best overall, beat each engine's defaults."""
    one = next((o for o in a.best if o.setting.gpus == 1), None)
    lines = []
    for d, o in a.defaults:
        for label, b in (("best on 1 GPU", one), ("best overall", a.best[0])):
            if b is not None and (label == "best on 1 GPU" or b is not one):
                lines.append(f"{label} (#{a.best.index(b) + 1}) against {d.engine}'s defaults: {_gain(b, o)}")
    return lines


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_advice(a: Advice, trace_path: str, rate_per_s: float | None = None) -> str:
    """The advice as text: settings, their flags in each engine, the defaults, the gains, the notes."""
    lines = [f"advise: trace {a.trace!r} ({a.requests} requests, load: {a.load}), TTFT p99 <= {a.bound_ms:g} ms",
             DECODE_NOTE, f"models: {a.models}",
             f"searched {a.settings_met} settings with {a.replays} replays in {a.seconds:.1f} s", "",
             f"{'#':>2} {'p50 ms':>7} {'p99 ms':>7} {'max req/s':>9}  setting"]
    for rank, o in enumerate(a.best, 1):
        s = o.setting
        lines.append(f"{rank:>2} {_fmt(o.p50_ms):>7} {_fmt(o.p99_ms):>7} {_fmt(o.rate_per_s):>9}  {s.label()}")
        lines.append("     SGLang: " + "; ".join(sglang_flags(s, a.row_bytes)))
        lines.append("     vLLM:   " + "; ".join(vllm_flags(s, a.largest_item_rows)))
    for o in a.over:
        lines.append(f"   over the bound at the trace's load: p50 {_fmt(o.p50_ms)} ms, p99 {_fmt(o.p99_ms)} ms, max "
                     f"{_fmt(o.rate_per_s)} req/s  {o.setting.label()}")
    lines += ["", "engine defaults, judged the same way:"]
    for d, o in a.defaults:
        verdict = "within" if o.within(a.bound_ms) else "over"
        lines.append(f"  {d.engine} ({d.says}): p50 {_fmt(o.p50_ms)} ms, p99 {_fmt(o.p99_ms)} ms ({verdict} the "
                     f"bound at the trace's load), max {_fmt(o.rate_per_s)} req/s")
    lines += [f"  {line}" for line in comparisons(a)]
    lines += ["", "notes:"] + [f"  - {note}" for note in a.notes]
    command = validate_command(a, trace_path, rate_per_s)
    if command is not None:
        lines += ["", f"confirm #{command[0]} on a GPU: {command[1]}"]
    return "\n".join(lines)


def advice_record(a: Advice, trace_path: str, rate_per_s: float | None = None) -> dict[str, Any]:
    """The advice as a JSON-ready dict (schema ``SCHEMA``)."""
    def outcome(o: Outcome) -> dict[str, Any]:
        return {"setting": asdict(o.setting), "label": o.setting.label(), "rate_per_s": o.rate_per_s,
                "p50_ms": o.p50_ms, "p99_ms": o.p99_ms, "within_bound": o.within(a.bound_ms), "replays": o.replays}

    command = validate_command(a, trace_path, rate_per_s)
    return {"schema": SCHEMA, "created": results.stamp(), "note": DECODE_NOTE,
            "trace": {"name": a.trace, "file": trace_path, "requests": a.requests, "load": a.load,
                      "largest_item_rows": a.largest_item_rows},
            "bound_ms": a.bound_ms, "models": a.models, "notes": list(a.notes),
            "best": [outcome(o) | {"rank": k, "sglang": sglang_flags(o.setting, a.row_bytes),
                                   "vllm": vllm_flags(o.setting, a.largest_item_rows)}
                     for k, o in enumerate(a.best, 1)],
            "over_bound": [outcome(o) for o in a.over],
            "defaults": [outcome(o) | {"engine": d.engine, "defaults": d.says} for d, o in a.defaults],
            "comparisons": comparisons(a), "validate": None if command is None else {"rank": command[0],
                                                                                      "command": command[1]},
            "search": {"settings": a.settings_met, "replays": a.replays, "seconds": round(a.seconds, 2),
                       "coarse_requests": min(COARSE_REQUESTS, a.requests), "coarse": asdict(COARSE),
                       "fine": asdict(FINE)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitkit.sim advise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True, help="a vitkit.sim.trace/1 file, or an example's name")
    p.add_argument("--p99-ms", type=float, required=True, help="the TTFT p99 bound (ms)")
    p.add_argument("--rate", type=float, help="the load: the trace's requests Poisson at this rate (requests/s) "
                                              "instead of their own arrival times")
    p.add_argument("--results", help="folder of GPU results (cost models; default: the attached card's when "
                                     "calibrated, else the stored card's)")
    p.add_argument("--encoder", default="qwen2.5-vl-7b")
    p.add_argument("--top", type=int, default=3, help="settings to show (at least the best on each GPU count)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="replay processes")
    p.add_argument("--chunked-prefill-sizes", type=int, nargs="+", default=list(STEP_TOKENS))
    p.add_argument("--cache-tokens", type=int, nargs="+", default=list(CACHE_TOKENS), help="embedding rows")
    p.add_argument("--json", help="also write the advice to this JSON file")
    args = p.parse_args(argv)
    for name in ("p99_ms", "rate"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("top", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("chunked_prefill_sizes", "cache_tokens"):
        if min(getattr(args, name)) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive token counts, got {getattr(args, name)}")
    folder = results.models_folder(args.results)
    results.check_results_card(folder.folder)
    trace = load_trace(args.trace)
    models = load_models(folder.folder, args.encoder)
    advice = advise(trace, args.p99_ms, models, rate_per_s=args.rate, top=args.top, workers=args.workers,
                    step_tokens=args.chunked_prefill_sizes, cache_tokens=args.cache_tokens)
    print(f"{folder.label()}" + (f"\n{folder.hint}" if folder.hint else ""))
    print(format_advice(advice, args.trace, args.rate))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(advice_record(advice, args.trace, args.rate), indent=1) + "\n")
        print(path)
    return 0
