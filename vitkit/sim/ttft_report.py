"""``python -m vitkit.sim ttft``: TTFT against load for both modes, the rate each sustains, and
the admission policies compared; writes ``ttft-<stamp>.json`` and PNGs under ``--out``.

Results file (``vitkit.ttft/1``)::

    {"schema", "created", "note": "prefill only: decode is not modelled ...",
     "sources": {"encoder": ..., "prefill": ...}, "settings": {...},
     "load": [row, ...],          # one per workload x mode x policy x rate (TimedRun.record())
     "sustainable": [{"workload", "mode", "policy", "bound_ms", "rate_per_s"}, ...],
     "admission": [row, ...],     # stored traces and stock workloads, both policies, both modes
     "timing": {"requests", "seconds"}}  # one 10,000-request replay's wall time on this CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vitkit.embed import MODES
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.load import ADMISSION_RATES, DEFAULT_RATES, TTFT_WORKLOADS
from vitkit.sim.plot_ttft import plot_admission, plot_ttft_vs_load
from vitkit.sim.stepcost import STORED, StepCosts, default_prefill, load_encoder_cost, prefill_source
from vitkit.sim.trace import example_traces, load_trace
from vitkit.sim.ttft import (
    LoadPoint,
    ReplayConfig,
    load_sweep,
    replay_at_rate,
    sustainable_rate,
    timed_replay,
    workload_trace,
)

SCHEMA = "vitkit.ttft/1"
ROW_COLUMNS = ("workload", "mode", "policy", "rate", "ttft_p50_ms", "ttft_p99_ms", "requests_per_s", "encoder_share")


def _row(point: LoadPoint) -> dict[str, Any]:
    return {"workload": point.workload, "rate_per_s": point.rate_per_s, **point.run.record()}


def _admission_rows(traces: Sequence[str], costs: StepCosts, cache_tokens: Sequence[int],
                    num_requests: int) -> list[dict[str, Any]]:
    """Both policies x both modes on each trace (stored traces at their own times, stock
    workloads Poisson at a mid rate), with the stored traces' settings (4096 tokens a step, 1024
    a request: several requests part-way through their prompts) and tight caches."""
    base = ReplayConfig(chunked_prefill_size=4096, long_prefill_token_threshold=1024)
    rows = []
    for name in traces:
        if name in example_traces():
            trace, arrivals = load_trace(name), "trace times"
        else:
            rate = ADMISSION_RATES[name]
            trace, arrivals = ArrivalProcess("poisson", rate).apply(workload_trace(name, num_requests)), f"poisson {rate:g}/s"
        for tokens in cache_tokens:
            for mode in MODES:
                for policy in ("legacy", "cache-aware"):
                    run = timed_replay(trace, costs, replace(base, mode=mode, policy=policy, cache_tokens=tokens))
                    rows.append({"trace": trace.name, **run.record(), "arrivals": arrivals})
    return rows


def _portable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with folders inside the checkout written relative to it (files are committed)."""
    root = STORED.parents[1]
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


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path`` (folders made); non-JSON values as their str."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def _print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(" ".join(f"{c:>14}" for c in ROW_COLUMNS))
    for r in rows:
        values = (r["workload"], r["mode"], r["policy"], f"{r['rate_per_s']:g}", f"{r['ttft_p50_ms']:.1f}",
                  f"{r['ttft_p99_ms']:.1f}", f"{r['requests_per_s']:.1f}", f"{r['encoder_share']:.2f}")
        print(" ".join(f"{str(v):>14}" for v in values))


def time_large_replay(costs: StepCosts, num_requests: int = 10_000, rate_per_s: float = 40.0) -> dict[str, Any]:
    """Wall time (s) of one ``num_requests`` replay of the small-images workload, with a progress bar."""
    trace = workload_trace("small-images", num_requests)
    start = time.perf_counter()
    run = replay_at_rate(trace, rate_per_s, costs, ReplayConfig(), progress=True)
    return {"requests": num_requests, "rate_per_s": rate_per_s, "steps": run.summary.steps,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim ttft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(TTFT_WORKLOADS), choices=sorted(TTFT_WORKLOADS))
    parser.add_argument("--requests", type=int, default=None, help="requests per workload (default: the workload's)")
    parser.add_argument("--rates", type=float, nargs="+", default=None, help="Poisson rates, requests/s (default per workload)")
    parser.add_argument("--policies", nargs="+", default=["legacy"], choices=["legacy", "cache-aware"])
    parser.add_argument("--chunked-prefill-size", type=int, default=2048)
    parser.add_argument("--cache-tokens", type=int, default=16384)
    parser.add_argument("--admission-cache-tokens", type=int, nargs="+", default=[2048, 4096],
                        help="the tight caches of the admission comparison (embedding rows)")
    parser.add_argument("--bound-ms", type=float, default=500.0, help="TTFT p99 bound for the sustainable rate")
    parser.add_argument("--results", default=str(STORED), help="folder of stored GPU results to fit the encoder model to")
    parser.add_argument("--encoder", default="qwen2.5-vl-7b")
    parser.add_argument("--time-requests", type=int, default=10_000, help="size of the timed replay (0: skip)")
    parser.add_argument("--out", default=str(STORED))
    args = parser.parse_args(argv)

    costs = StepCosts(load_encoder_cost(args.results, args.encoder), default_prefill())
    print(f"{DECODE_NOTE}\nencoder: {costs.encoder.source}\nprefill: {prefill_source(costs.prefill)}")
    base = ReplayConfig(chunked_prefill_size=args.chunked_prefill_size, cache_tokens=args.cache_tokens)
    configs = [replace(base, mode=m, policy=p) for m in MODES for p in args.policies]
    points, sustainable = [], []
    for workload in args.workloads:
        rates = args.rates or DEFAULT_RATES[workload]
        points += load_sweep(workload, rates, costs, configs, num_requests=args.requests)
        for config in configs:
            best, _ = sustainable_rate(workload, costs, config, args.bound_ms, rates, num_requests=args.requests)
            sustainable.append({"workload": workload, "mode": config.mode, "policy": config.policy,
                                "bound_ms": args.bound_ms, "rate_per_s": best})
    rows = [_row(p) for p in points]
    _print_table(rows)
    for s in sustainable:
        print(f"{s['workload']:>14} {s['mode']:>12} {s['policy']:>12}: highest rate with p99 <= {s['bound_ms']:g} ms: {s['rate_per_s']}")
    traces = [*example_traces(), *args.workloads]
    admission = _admission_rows(traces, costs, args.admission_cache_tokens, args.requests or 200)
    for r in admission:
        print(f"{r['trace']:>16} cache {r['cache_tokens']:>5} {r['mode']:>12} {r['policy']:>12}: re-encodings in a request {r['request_re_encodings']:4d}, "
              f"refused puts {r['refused_puts']:4d}, forced {r['forced_grants']}, TTFT p99 {r['ttft_p99_ms']:.1f} ms")
    timing = time_large_replay(costs, args.time_requests) if args.time_requests else None
    if timing:
        print(f"{timing['requests']} requests replayed in {timing['seconds']} s on this CPU")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    data = {"schema": SCHEMA, "created": stamp, "note": DECODE_NOTE,
            "sources": {"encoder": costs.encoder.source, "encoder_fit": encoder_fit_record(costs.encoder.call),
                        "bookkeeping_ms": costs.encoder.bookkeeping_ms, "prefill": prefill_source(costs.prefill)},
            "settings": _portable(vars(args)), "load": rows, "sustainable": sustainable, "admission": admission, "timing": timing}
    print(write_json(out / f"ttft-{stamp}.json", data))
    figures = {"load": plot_ttft_vs_load(points, args.bound_ms), "admission": plot_admission(admission)}
    for name, fig in figures.items():
        path = out / f"ttft-{stamp}-{name}.png"
        fig.savefig(path, dpi=110)
        print(path)
