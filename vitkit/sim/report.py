"""``python -m vitkit.sim ttft``: TTFT against load for both modes, the rate each sustains, and
the admission policies compared; writes ``ttft-<stamp>.json`` and PNGs under ``--out``.

``--trace FILE`` replays a user's own trace (``vitkit.sim.trace/1``, README "Your own trace") instead of
the built-in workloads: at its own arrival times, or its requests Poisson at ``--rates``.

Results file (kind ``ttft`` in ``vitkit.costs.results``)::

    {"schema", "created", "note": "prefill only: decode is not modelled ...",
     "sources": {"encoder": ..., "prefill": ...}, "settings": {...},
     "load": [row, ...],          # one per workload x mode x policy x rate (Run.record())
     "sustainable": [{"workload", "mode", "policy", "bound_ms", "rate_per_s"}, ...],
     "admission": [row, ...],     # stored traces and stock workloads (or the --trace), both policies and modes
     "trace": {"name", "file", "requests", "arrivals"} or None,  # --trace
     "timing": {"requests", "seconds"}}  # one large replay's wall time on this CPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

from vitkit.costs import results
from vitkit.costs.clock import StepCosts, prefill_source
from vitkit.costs.encoder import load_encoder_cost
from vitkit.costs.prefill import load_prefill_cost
from vitkit.embed import MODES
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.engines import Setting
from vitkit.sim.fake import fake_video_items, qwen_like_tokens
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.plot import plot_admission, plot_ttft_vs_load
from vitkit.sim.replay import (LoadPoint, load_sweep, prepare, replay_at_rate, replay_stream, sustainable_rate,
                               workload_trace)
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.search import capacity_bound
from vitkit.sim.trace import Trace, check_cache_sizes, example_traces, load_trace, mean_rate_per_s
from vitkit.sim.workload import ADMISSION_RATES, DEFAULT_RATES, TTFT_WORKLOADS
ROW_COLUMNS = ("workload", "mode", "policy", "rate", "ttft_p50_ms", "ttft_p99_ms", "requests_per_s", "encoder_share")


def rows_of_image(spec: Any) -> int:
    """Embedding rows of a trace image (or whole video) in the replays: ``vitkit.sim.fake``'s count."""
    if getattr(spec, "frames", None) is None:
        return qwen_like_tokens(spec.height, spec.width)
    return sum(item.num_tokens for item in fake_video_items("rows", spec.frames, spec.height, spec.width))


def _admission_rows(traces: Sequence[str | Trace], costs: StepCosts, cache_tokens: Sequence[int],
                    num_requests: int) -> list[dict[str, Any]]:
    """Both policies x both modes on each trace (stock workloads Poisson at a mid rate; a ``Trace`` at its own
    times) with tight caches; the caches too small for a trace's largest image are left out for it (said so:
    cache-aware admission could never grant that image)."""
    scheduler = SchedulerConfig(chunked_prefill_size=4096, long_prefill_token_threshold=1024)
    rows = []
    for name in traces:
        if isinstance(name, Trace):
            trace, arrivals = name, "trace times"
        elif name in example_traces():
            trace, arrivals = load_trace(name), "trace times"
        else:
            rate = ADMISSION_RATES[name]
            process = ArrivalProcess("poisson", rate)
            trace, arrivals = process.apply(workload_trace(name, num_requests)), f"poisson {rate:g}/s"
        holding = _holding(trace, cache_tokens)
        if len(holding) < len(cache_tokens):
            print(f"admission comparison: caches of {sorted(set(cache_tokens) - set(holding))} rows cannot hold the "
                  f"largest image of trace {trace.name!r}; left out for it")
        for tokens, mode, policy in product(holding, MODES, ("legacy", "cache-aware")):
            # a long video the cache holds is never refused for the encoder budget
            config = ReplayConfig(replace(scheduler, policy=policy).budget_for_cache(tokens), mode=mode,
                                  cache_tokens=tokens)
            rows.append({"trace": trace.name, **replay_stream(trace, config, costs).record(), "arrivals": arrivals})
    return rows


def _portable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with folders inside the checkout written relative to it (files are committed)."""
    root = results.RESULTS.parent
    out = {}
    for key, value in settings.items():
        path = Path(value) if isinstance(value, str) and "/" in value else None
        out[key] = str(path.resolve().relative_to(root)) if path and path.resolve().is_relative_to(root) else value
    return out


def encoder_fit_record(call: Any) -> dict[str, Any]:
    """An encoder cost model's fields as JSON-ready values (folders dropped from its source)."""
    record = dict(vars(call)) | {"source": prefill_source(call), "model": type(call).__name__}
    if "buckets" in record:
        record["buckets"] = list(call.buckets.sizes)
    return record


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], widths: Sequence[int]) -> None:
    """``rows`` under ``columns``, each value right-aligned in its column's width."""
    for values in (columns, *rows):
        print(" ".join(f"{str(v):>{w}}" for v, w in zip(values, widths)))


def time_large_replay(costs: StepCosts, num_requests: int = 10_000, rate_per_s: float = 40.0) -> dict[str, Any]:
    """Wall time (s) of one ``num_requests`` replay of the small-images workload, with a progress bar."""
    trace = workload_trace("small-images", num_requests)
    start = time.perf_counter()
    run = replay_at_rate(trace, rate_per_s, costs, ReplayConfig(), progress=True)
    return {"requests": num_requests, "rate_per_s": rate_per_s, "steps": run.summary.steps,
            "seconds": round(time.perf_counter() - start, 2)}


def trace_rates(trace: Trace, costs: StepCosts, chunked_prefill_size: int) -> tuple[float, ...]:
    """Poisson rates (requests/s) for a trace's sustainable-rate search: around its own mean rate, or, when
    all its requests arrive at once, around a quarter of what its modelled work allows."""
    setting = Setting(chunked_prefill_size=chunked_prefill_size)
    base = mean_rate_per_s(trace) or capacity_bound(prepare(trace), costs, setting) / 4
    return tuple(round(base * k, 3) for k in (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4))


def trace_points(trace: Trace, rates: Sequence[float] | None, costs: StepCosts,
                 configs: Sequence[ReplayConfig]) -> list[LoadPoint]:
    """``trace`` under each config: Poisson at ``rates``, or at its own arrival times (one point a config,
    at its own mean rate, or its finished requests per second when all arrive at once)."""
    if rates:
        return load_sweep(trace, rates, costs, configs)
    points = []
    for config in configs:
        run = replay_stream(trace, config, costs)
        points.append(LoadPoint(trace.name, mean_rate_per_s(trace) or run.latency.requests_per_s, run))
    return points


def _holding(trace: Trace, cache_tokens: Sequence[int]) -> list[int]:
    """The cache sizes (rows) of ``cache_tokens`` that hold ``trace``'s largest image; [] when none does."""
    try:
        return check_cache_sizes(trace, rows_of_image, cache_tokens)
    except ValueError:
        return []


def _user_trace(args: argparse.Namespace) -> Trace | None:
    """The --trace (its first --requests, if given), checked against the cache sizes asked for."""
    if args.trace is None:
        return None
    trace = load_trace(args.trace)
    if args.requests:
        trace = Trace(trace.name, trace.requests[: args.requests], trace.images, trace.description)
    check_cache_sizes(trace, rows_of_image, [args.cache_tokens])
    return trace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim ttft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=None, choices=sorted(TTFT_WORKLOADS),
                        help="built-in workloads (default: all, or none with --trace)")
    parser.add_argument("--trace", help="a vitkit.sim.trace/1 file (or an example's name) to replay")
    parser.add_argument("--requests", type=int, default=None, help="requests per workload (default: the workload's)")
    parser.add_argument("--rates", type=float, nargs="+", default=None,
                        help="Poisson rates, requests/s (default per workload; a --trace: its own arrival times)")
    parser.add_argument("--policies", nargs="+", default=["legacy"], choices=["legacy", "cache-aware"])
    parser.add_argument("--chunked-prefill-size", type=int, default=2048)
    parser.add_argument("--cache-tokens", type=int, default=16384)
    parser.add_argument("--admission-cache-tokens", type=int, nargs="+", default=[2048, 4096],
                        help="the tight caches of the admission comparison (embedding rows)")
    parser.add_argument("--bound-ms", type=float, default=500.0, help="TTFT p99 bound for the sustainable rate")
    parser.add_argument("--results", default=None, help="folder of GPU results (cost models; default: the attached "
                                                        "card's when calibrated, else the stored card's)")
    parser.add_argument("--encoder", default="qwen2.5-vl-7b")
    parser.add_argument("--time-requests", type=int, default=10_000, help="size of the timed replay (0: skip)")
    parser.add_argument("--out", default=None, help="default: the models' folder")
    args = parser.parse_args(argv)

    models = results.models_folder(args.results)  # the one decision of whose models (vitkit.costs.results)
    results.check_results_card(models.folder)
    args.results, args.out = str(models.folder), args.out or str(models.folder)
    user = _user_trace(args)
    args.workloads = args.workloads if args.workloads is not None else [] if user else list(TTFT_WORKLOADS)
    costs = StepCosts(load_encoder_cost(args.results, args.encoder), load_prefill_cost(folder=args.results))
    print(f"{DECODE_NOTE}\n{models.label()}\nencoder: {costs.encoder.source}\nprefill: {prefill_source(costs.prefill)}")
    if models.hint:
        print(models.hint)
    configs = [ReplayConfig(SchedulerConfig(args.chunked_prefill_size, policy=p), mode=m,
                            cache_tokens=args.cache_tokens) for m in MODES for p in args.policies]
    points, sustainable = [], []
    for workload in args.workloads:
        rates = args.rates or DEFAULT_RATES[workload]
        points += load_sweep(workload, rates, costs, configs, num_requests=args.requests)
        for config in configs:
            best, _ = sustainable_rate(workload, costs, config, args.bound_ms, rates, num_requests=args.requests)
            sustainable.append({"workload": workload, "mode": config.mode, "policy": config.scheduler.policy,
                                "bound_ms": args.bound_ms, "rate_per_s": best})
    if user is not None:
        points += trace_points(user, args.rates, costs, configs)
        rates = args.rates or trace_rates(user, costs, args.chunked_prefill_size)
        for config in configs:
            best, _ = sustainable_rate(user, costs, config, args.bound_ms, rates)
            sustainable.append({"workload": user.name, "mode": config.mode, "policy": config.scheduler.policy,
                                "bound_ms": args.bound_ms, "rate_per_s": best})
    rows = [{"workload": p.workload, "rate_per_s": p.rate_per_s, **p.run.record()} for p in points]
    print_table(ROW_COLUMNS, [(r["workload"], r["mode"], r["policy"], f"{r['rate_per_s']:g}", f"{r['ttft_p50_ms']:.1f}",
                               f"{r['ttft_p99_ms']:.1f}", f"{r['requests_per_s']:.1f}", f"{r['encoder_share']:.2f}")
                              for r in rows], [14] * len(ROW_COLUMNS))
    for s in sustainable:
        print(f"{s['workload']:>14} {s['mode']:>12} {s['policy']:>12}: highest rate with p99 <= {s['bound_ms']:g} ms: "
              f"{s['rate_per_s']}")
    traces = [user] if user is not None else [*example_traces(), *args.workloads]  # a user's trace: it alone
    admission = _admission_rows(traces, costs, args.admission_cache_tokens, args.requests or 200)
    for r in admission:
        print(f"{r['trace']:>16} cache {r['cache_tokens']:>5} {r['mode']:>12} {r['policy']:>12}: re-encodings in a "
              f"request {r['request_re_encodings']:4d}, refused puts {r['refused_puts']:4d}, forced "
              f"{r['forced_grants']}, TTFT p99 {r['ttft_p99_ms']:.1f} ms")
    timing = time_large_replay(costs, args.time_requests) if args.time_requests else None
    if timing:
        print(f"{timing['requests']} requests replayed in {timing['seconds']} s on this CPU")
    stamp = results.stamp()
    out = Path(args.out)
    data = {"created": stamp, "note": DECODE_NOTE,
            "sources": {"encoder": costs.encoder.source, "encoder_fit": encoder_fit_record(costs.encoder.call),
                        "bookkeeping_ms": costs.encoder.bookkeeping_ms, "prefill": prefill_source(costs.prefill)},
            "settings": _portable(vars(args)), "load": rows, "sustainable": sustainable, "admission": admission,
            "trace": None if user is None else {"name": user.name, "file": _portable(vars(args))["trace"],
                                                "requests": len(user.requests),
                                                "arrivals": "poisson" if args.rates else "trace times"},
            "timing": timing}
    print(results.write("ttft", data, out / f"ttft-{stamp}.json"))
    title = None
    if user is not None:
        load = "Poisson at --rates" if args.rates else "its own arrival times (placed at their mean rate)"
        title = f"TTFT of trace {user.name!r} at {load}; prefill only, decode not modelled"
    figures = {"load": plot_ttft_vs_load(points, args.bound_ms, title=title)}
    if admission:
        figures["admission"] = plot_admission(admission, sources=costs.label())
    for name, fig in figures.items():
        path = out / f"ttft-{stamp}-{name}.png"
        fig.savefig(path, dpi=110)
        print(path)
