"""``python -m vitkit.sim validate --out DIR``: the timed replay on the GPU against the cost models.

The same requests, arriving at the same times, are replayed twice per workload and mode:
measured (the real bucketed Qwen2.5-VL-7B vision tower encodes every miss, its calls timed with
CUDA syncs, and the real Qwen2.5-VL-7B decoder prefills every step's windows, timed with CUDA
events) and modelled (the fitted encoder and prefill cost models, as any CPU replays them). The
closed loop feeds each measured step's time back into the clock, so queueing follows the real
costs. Bookkeeping is the same constant per step in both (it is host time the model shares).
Target: TTFT p50 and p99 within 10%. Writes ``ttft-validate-<stamp>.json`` and prints a table.
Decode is not modelled in either.

Each row keeps every measured step (its windows, each encoder call's items and ms, and what the
models say of that very step: the open-loop error, without the closed loop's divergence) and a
digest of its trace, so ``--modelled-only`` can recompute the modelled side on any CPU with other
cost models and prove it replays the trace the GPU did. Model it with the cost models of the card
and process that ran it (``python -m vitkit.bench.prefill``, then
``results/scripts/costs_and_validate.py``, which measures the encoder's costs and validates in one
process; ``--modelled-only --encoder-costs F --prefill G`` remodels with them): on the H100s
tried, one bucket graph's replay differed by up to 25% between processes, and one card's prefill
calibration put another card's steps 3-4% high.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.machine import machine_info, versions
from vitkit.bench.prefill import PrefillRunner
from vitkit.embed import MODES
from vitkit.encoders import build_encoder
from vitkit.encoders.base import dynamo_compiles
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.load import VALIDATION_SIZES, workload_params
from vitkit.sim.prefill import default_prefill_calibration, default_prefill_results, has_prefill_steps, load_prefill_cost
from vitkit.sim.stepcost import ENCODER_MODELS, STORED, StepCosts, default_prefill, load_encoder_cost, prefill_source, prefill_windows
from vitkit.sim.timing import TimedEncoder
from vitkit.sim.ttft import ReplayConfig, TimedRun, timed_replay
from vitkit.sim.ttft_report import encoder_fit_record, write_json
from vitkit.sim.workload import build_requests, generate_workload, processing_items

SCHEMA = "vitkit.ttft-validate/1"
PRESET = "qwen2.5-vl-7b"
DEFAULTS = VALIDATION_SIZES  # rate /s, requests per workload


def gpu_prefill_runner(device: str = "cuda") -> Any:
    """The real Qwen2.5-VL-7B decoder prefill on ``device``: ``step_ms(windows) -> ms``."""
    runner = PrefillRunner(device=device)
    runner.warmup()  # compiles the layers once (row count dynamic)
    return runner


def _gpu_encoder(device: str = "cuda") -> Any:
    """The bucketed Qwen2.5-VL-7B tower on ``device``, warmed (its ``warmup_report`` kept)."""
    encoder = build_encoder(PRESET, device=device, dtype=torch.bfloat16)
    encoder.warmup_report = encoder.warmup()
    return encoder


def warmup_record(encoder: Any, runner: Any) -> dict[str, Any]:
    """The cold start both paid before the first timed step: seconds, compiles and captures."""
    report = getattr(encoder, "warmup_report", None)
    return {"encoder_s": getattr(report, "seconds", None), "encoder_captures": getattr(report, "captures", None),
            "encoder_pool_bytes": getattr(report, "pool_bytes", None), "prefill_s": getattr(runner, "warmup_s", None),
            "prefill_graph_buckets": list(getattr(runner, "graph_buckets", ()))}


def trace_digest(trace: Any) -> str:
    """A digest of a trace's requests (ids, arrival times to the microsecond, prompt segments): a
    stored row names the very trace it replayed, so a rebuilt replay can prove it is that one."""
    text = json.dumps([[r.rid, round(r.arrival_ms, 3), repr(r.segments)] for r in trace.requests])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stats(encoder: Any) -> Any:
    stats = getattr(encoder, "stats", None)
    return stats.copy() if stats is not None else None


def _stats_delta(encoder: Any, before: Any) -> dict[str, int] | None:
    """The encoder's counters over the timed pass (packs, unbucketed runs, padding, compiles, captures)."""
    return None if before is None else asdict(encoder.stats - before)


def _rel(measured: float, modelled: float) -> float:
    return (modelled - measured) / measured if measured else float("nan")


def _compare(workload: str, mode: str, measured: TimedRun, modelled: TimedRun, calls_ms: Sequence[float] = ()) -> dict[str, Any]:
    m, c = measured.summary, modelled.summary
    return {
        "workload": workload, "mode": mode, "arrivals": measured.arrivals,
        "measured_p50_ms": m.ttft_p50_ms, "modelled_p50_ms": c.ttft_p50_ms, "p50_rel_err": _rel(m.ttft_p50_ms, c.ttft_p50_ms),
        "measured_p99_ms": m.ttft_p99_ms, "modelled_p99_ms": c.ttft_p99_ms, "p99_rel_err": _rel(m.ttft_p99_ms, c.ttft_p99_ms),
        "measured_encoder_ms": sum(t.encoder_ms for t in measured.steps), "modelled_encoder_ms": sum(t.encoder_ms for t in modelled.steps),
        "measured_prefill_ms": sum(t.prefill_ms for t in measured.steps), "modelled_prefill_ms": sum(t.prefill_ms for t in modelled.steps),
        "measured": asdict(m) | asdict(measured.cache), "modelled": asdict(c) | asdict(modelled.cache),
        "measured_steps": measured_steps(measured, calls_ms),
        # the models applied to the measured steps themselves: their error without the closed loop
        "open_loop_encoder_ms": sum(e for e, _, _ in measured.shadow), "open_loop_prefill_ms": sum(p for _, p, _ in measured.shadow),
    }


def pass_record(run: TimedRun, calls_ms: Sequence[float], compiles: int, stats: dict[str, int] | None) -> dict[str, Any]:
    """One timed pass in brief: its TTFT quantiles, encoder and prefill ms, compiles and captures."""
    s = run.summary
    return {"p50_ms": s.ttft_p50_ms, "p99_ms": s.ttft_p99_ms, "encoder_ms": sum(t.encoder_ms for t in run.steps),
            "prefill_ms": sum(t.prefill_ms for t in run.steps), "encoder_calls": len(calls_ms), "compiles": compiles,
            "captures": None if stats is None else stats["captures"]}


def measured_steps(run: TimedRun, calls_ms: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Per step of a measured run: its clock, measured encoder and prefill ms, its windows as
    ``(context, new)`` and, when the run had a shadow, what the cost models say of that very
    step (open loop: the models' error without the closed loop's divergence) and its encoder
    calls' items. ``calls_ms``: every encoder call's measured ms in order (``TimedEncoder``),
    split over the steps by their call counts into ``call_ms``."""
    rows, next_call = [], 0
    for k, t in enumerate(run.steps):
        row = {"step": t.step, "start_ms": t.start_ms, "encoder_ms": t.encoder_ms, "prefill_ms": t.prefill_ms,
               "windows": [list(w) for w in prefill_windows(t.windows)]}
        if k < len(run.shadow):
            enc, pre, calls = run.shadow[k]
            row |= {"modelled_encoder_ms": enc, "modelled_prefill_ms": pre, "call_item_rows": calls}
            if calls_ms:
                row["call_ms"] = list(calls_ms[next_call: next_call + len(calls)])
                next_call += len(calls)
        rows.append(row)
    if calls_ms and next_call != len(calls_ms):
        raise ValueError(f"{len(calls_ms)} timed encoder calls for {next_call} calls in the steps' records")
    return rows


def validate(
    encoder: Any,
    prefill_runner: Any,
    modelled_costs: StepCosts,
    *,
    workloads: Sequence[str] = tuple(DEFAULTS),
    modes: Sequence[str] = ("batched", "per_request"),
    config: ReplayConfig = ReplayConfig(),
    make_item: Any = None,
    sizes: dict[str, tuple[float, int]] | None = None,
    warm_passes: int = 1,
    seed: int = 0,
    timer: Callable[[Any], TimedEncoder] = TimedEncoder,
    timed_passes: int = 1,
) -> list[dict[str, Any]]:
    """One comparison row per workload x mode: ``encoder`` (real, timed) and ``prefill_runner``
    (real, ``step_ms``) against ``modelled_costs``, on the same requests and arrival times.
    ``sizes``: workload -> (Poisson rate /s, requests); ``warm_passes`` untimed replays first;
    ``seed``: another draw of requests and arrivals (``validation_trace``); ``timer`` wraps the
    encoder for each pass (a ``TimedEncoder`` or a subclass that records more per call).
    ``timed_passes``: replays timed after the warm ones. One pass's p99 is one sample: two runs of
    one trace on one H100 differed by 8% at 40 req/s, where the queue about doubles a change in
    step cost (4% more step cost moved the modelled p99 by 7-10%). The row shows the pass with
    the median p99 (``measured_pass``) and keeps every pass's summary (``measured_passes``)."""
    measured_costs = replace(modelled_costs, prefill=prefill_runner)
    if timed_passes < 1:
        raise ValueError(f"timed_passes must be >= 1, got {timed_passes}")
    rows = []
    for workload in workloads:
        rate, n = (sizes or DEFAULTS)[workload]
        trace, process = validation_trace(workload, n, rate, seed)
        requests = build_requests(trace) if make_item is None else build_requests(trace, make_item)  # once: real pixels are heavy
        for mode in modes:
            run_config = replace(config, mode=mode)
            # warm passes meet every shape the replay meets (compiled buckets, graphs); then the timed ones
            passes = []
            for k in range(warm_passes + timed_passes):
                compiles = dynamo_compiles()  # a compile inside the timed pass would stall its steps
                stats = _stats(encoder)
                timed = timer(encoder)
                if k >= warm_passes:
                    # the heap built so far (items, graphs, caches) is left out of collections, as
                    # vLLM's engine does after start-up: no multi-ms collector pause inside a step
                    gc.collect()
                    gc.freeze()
                try:
                    measured = timed_replay(trace, measured_costs, run_config, encoder=encoder, encoder_timer=timed,
                                            requests=requests, progress=True, shadow=modelled_costs)
                finally:
                    gc.unfreeze()
                if k >= warm_passes:
                    passes.append((measured, timed.calls_ms, dynamo_compiles() - compiles, _stats_delta(encoder, stats)))
            # the pass whose p99 is the median of the timed passes is the row's measured side; all are kept
            order = sorted(range(len(passes)), key=lambda i: passes[i][0].summary.ttft_p99_ms)
            shown = order[(len(order) - 1) // 2]
            measured, calls_ms, _, stats_delta = passes[shown]
            compiles = sum(p[2] for p in passes)  # any compile in any timed pass
            modelled = timed_replay(trace, modelled_costs, run_config)
            rows.append(_compare(workload, mode, replace(measured, arrivals=process.label()), replace(modelled, arrivals=process.label()),
                                 calls_ms)
                        | {"trace_digest": trace_digest(trace), "trace_seed": seed, "measured_pass_compiles": compiles,
                           "measured_pass_encoder_stats": stats_delta, "measured_pass": shown,
                           "measured_passes": [pass_record(*p) for p in passes]})
            r = rows[-1]
            print(f"{workload:>13} {mode:>11}: p50 measured {r['measured_p50_ms']:8.1f} modelled {r['modelled_p50_ms']:8.1f} "
                  f"({r['p50_rel_err']:+.1%}); p99 measured {r['measured_p99_ms']:8.1f} modelled {r['modelled_p99_ms']:8.1f} "
                  f"({r['p99_rel_err']:+.1%}); open loop on the measured steps: encoder {r['measured_encoder_ms']:.0f} vs "
                  f"{r['open_loop_encoder_ms']:.0f} ms, prefill {r['measured_prefill_ms']:.0f} vs {r['open_loop_prefill_ms']:.0f} ms; "
                  f"compiles in the timed passes {r['measured_pass_compiles']}; p99 of each timed pass "
                  + " ".join(f"{p['p99_ms']:.1f}" for p in r["measured_passes"]))
    return rows


def validation_trace(workload: str, requests: int, rate_per_s: float, seed: int = 0) -> tuple[Any, ArrivalProcess]:
    """The stock ``workload``'s first ``requests`` requests arriving Poisson at ``rate_per_s``:
    seed 0 is the validation's draw; another seed draws other requests (the workload's own seed
    plus it) and other arrival times (a calibration trace, ``vitkit.bench.encoder_costs``)."""
    params = workload_params(workload, requests)
    process = ArrivalProcess("poisson", rate_per_s, seed=seed)
    return process.apply(generate_workload(replace(params, seed=params.seed + seed), workload)), process


def stored_replay(row: dict[str, Any], settings: dict[str, Any]) -> tuple[Any, ReplayConfig, ArrivalProcess]:
    """The trace, config and arrival process a stored validation row was replayed with, rebuilt
    as ``validate`` builds them (``validation_trace`` with the row's seed, 0 if it names none) at
    the rate in the row's ``arrivals`` label, the file's step budget and cache size."""
    kind, _, rate = row["arrivals"].partition(" ")
    if kind != "poisson" or not rate.endswith("/s"):
        raise ValueError(f"stored row {row['workload']}/{row['mode']}: arrivals {row['arrivals']!r} is not 'poisson <rate>/s'")
    trace, process = validation_trace(row["workload"], row["measured"]["requests"], float(rate[:-2]), row.get("trace_seed", 0))
    config = ReplayConfig(mode=row["mode"], chunked_prefill_size=settings["chunked_prefill_size"], cache_tokens=settings["cache_tokens"])
    return trace, config, process


def remodel(stored: dict[str, Any], costs: StepCosts) -> list[dict[str, Any]]:
    """The stored file's measured side next to a new modelled side: each row's replay rebuilt
    (``stored_replay``) and replayed with ``costs``. Each row's ``trace_digest`` proves that the
    rebuilt trace is the one the GPU replayed (ValueError if it differs, or if the row has none:
    files written before digests cannot be remodelled)."""
    rows = []
    for row in stored["rows"]:
        trace, config, process = stored_replay(row, stored["settings"])
        if "trace_digest" not in row:
            raise ValueError(f"{row['workload']}/{row['mode']}: the stored row has no trace_digest, so the rebuilt trace "
                             f"cannot be proven to be the one measured; re-run the GPU validation")
        if trace_digest(trace) != row["trace_digest"]:
            raise ValueError(f"{row['workload']}/{row['mode']}: the rebuilt trace's digest {trace_digest(trace)} "
                             f"is not the stored {row['trace_digest']}")
        modelled = replace(timed_replay(trace, costs, config), arrivals=process.label())
        m, c = row["measured"], modelled.summary
        new = {k: v for k, v in row.items() if k.startswith("measured") or k in ("workload", "mode", "arrivals", "trace_digest")}
        new |= {"modelled_p50_ms": c.ttft_p50_ms, "p50_rel_err": _rel(m["ttft_p50_ms"], c.ttft_p50_ms),
                "modelled_p99_ms": c.ttft_p99_ms, "p99_rel_err": _rel(m["ttft_p99_ms"], c.ttft_p99_ms),
                "modelled_encoder_ms": sum(t.encoder_ms for t in modelled.steps),
                "modelled_prefill_ms": sum(t.prefill_ms for t in modelled.steps),
                "modelled": asdict(c) | asdict(modelled.cache),
                "previous_modelled_p50_ms": row["modelled_p50_ms"], "previous_modelled_p99_ms": row["modelled_p99_ms"]}
        if row.get("measured_steps") and "call_item_rows" in row["measured_steps"][0]:
            new |= open_loop(row["measured_steps"], costs)
        rows.append(new)
    return rows


def open_loop(steps: Sequence[dict[str, Any]], costs: StepCosts) -> dict[str, float]:
    """``costs`` applied to each measured step as it ran (its calls' items, its windows): totals
    and the median relative error per step, of encoder and prefill, without the closed loop."""
    out = {}
    for part, model, measured in (("encoder", lambda s: costs.encoder.step_ms(s["call_item_rows"]), "encoder_ms"),
                                  ("prefill", lambda s: costs.prefill.step_ms([tuple(w) for w in s["windows"]]) if s["windows"] else 0.0, "prefill_ms")):
        ms = [(model(s), s[measured]) for s in steps]
        errs = sorted(abs(m - y) / y for m, y in ms if y > 0)
        out |= {f"open_loop_{part}_ms": sum(m for m, _ in ms), f"open_loop_{part}_median_rel_err": errs[len(errs) // 2] if errs else None}
    return out


def modelled_only(measured: str | Path, results: str | Path = STORED, model: str = "measured",
                  encoder_costs: str | Path | None = None, prefill: str | Path | None = None,
                  prefill_calibration: str | Path | None = None) -> dict[str, Any]:
    """A validation file whose measured side is the stored file ``measured`` (GPU numbers, kept
    as they are) and whose modelled side is recomputed on this CPU with the encoder ``model``
    and the prefill model of the results in ``results`` (``remodel``): the newest files there, or
    the ``encoder_costs`` and ``prefill`` files given (those the validation's own card measured).
    The prefill grid is calibrated with the serving prefill steps of ``prefill_calibration``, by
    default of ``encoder_costs`` (or, with neither file given, of the newest that has them);
    none when that file predates them."""
    stored = json.loads(Path(measured).read_text())
    if stored.get("schema") != SCHEMA:
        raise ValueError(f"{measured}: schema must be {SCHEMA!r}, got {stored.get('schema')!r}")
    # the encoder-costs file given also calibrates the prefill grid given (one card, one session)
    calibration = prefill_calibration or encoder_costs or (None if prefill else default_prefill_calibration(results))
    if calibration and not has_prefill_steps(calibration):
        calibration = None  # files from before the calibration replay kept its prefill steps
    costs = StepCosts(load_encoder_cost(results, PRESET, model=model, costs_file=encoder_costs),
                      load_prefill_cost(prefill or default_prefill_results(results), calibration))
    rows = remodel(stored, costs)
    note = (f"{stored['note']}. Measured on the GPU at {stored['created']} ({Path(measured).name}); modelled recomputed "
            f"on CPU with {costs.label()} (trace digests checked)")
    sources = stored["sources"] | {"modelled": costs.label(), "encoder_fit": encoder_fit_record(costs.encoder.call),
                                   "previous_modelled": stored["sources"]["modelled"]}
    prefill_file = Path(prefill or default_prefill_results(results)).name
    return stored | {"note": note, "sources": sources, "rows": rows,
                     "settings": stored["settings"] | {"modelled_only": True, "measured_file": Path(measured).name, "model": model,
                                                       "encoder_costs_file": encoder_costs and Path(encoder_costs).name,
                                                       "prefill_file": prefill_file,
                                                       "prefill_calibration_file": calibration and Path(calibration).name}}


def _print_rows(rows: Sequence[dict[str, Any]]) -> None:
    for r in rows:
        print(f"{r['workload']:>13} {r['mode']:>11}: p50 measured {r['measured_p50_ms']:8.1f} modelled {r['modelled_p50_ms']:8.1f} "
              f"({r['p50_rel_err']:+.1%}); p99 measured {r['measured_p99_ms']:8.1f} modelled {r['modelled_p99_ms']:8.1f} "
              f"({r['p99_rel_err']:+.1%}); encoder ms {r['measured_encoder_ms']:.0f} / {r['modelled_encoder_ms']:.0f}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for ttft-validate-<stamp>.json (default with --modelled-only: the measured file's)")
    parser.add_argument("--modelled-only", action="store_true",
                        help="no GPU: recompute the modelled side of the stored --measured file with the cost models")
    parser.add_argument("--measured", default=None, help="a stored ttft-validate-*.json whose measured side to keep (--modelled-only)")
    parser.add_argument("--model", default="measured", choices=ENCODER_MODELS, help="encoder cost model (--modelled-only)")
    parser.add_argument("--encoder-costs", default=None,
                        help="an encoder-costs-*.json to model with (--modelled-only; default: the newest in --results)")
    parser.add_argument("--prefill", default=None, help="a prefill-*.json to model with (--modelled-only; default: the newest in --results)")
    parser.add_argument("--prefill-calibration", default=None,
                        help="an encoder-costs-*.json whose serving prefill steps calibrate the prefill grid "
                             "(--modelled-only; default: --encoder-costs's)")
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULTS), choices=sorted(DEFAULTS))
    # checked here, before minutes of GPU warm-up, not by the first replay's ReplayConfig
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--timed-passes", type=int, default=1,
                        help="timed replays per workload and mode; the row shows the one with the median p99")
    parser.add_argument("--chunked-prefill-size", type=int, default=2048)
    parser.add_argument("--cache-tokens", type=int, default=16384)
    parser.add_argument("--results", default=str(STORED), help="stored results the cost models were fitted to")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    parser, args = parse_args(argv)
    if args.modelled_only:
        if not args.measured:
            parser.error("--modelled-only needs --measured FILE")
        data = modelled_only(args.measured, args.results, args.model, args.encoder_costs, args.prefill, args.prefill_calibration)
        _print_rows(data["rows"])
        out = Path(args.out) if args.out else Path(args.measured).parent
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        print(write_json(out / f"ttft-validate-{stamp}.json", data | {"created": stamp}))
        return
    if not args.out:
        parser.error("--out is required (unless --modelled-only)")

    data, _, _ = run_on_gpu(args)
    print(write_json(Path(args.out) / f"ttft-validate-{data['created']}.json", data))


def run_on_gpu(args: argparse.Namespace, encoder: Any = None, runner: Any = None) -> tuple[dict[str, Any], Any, Any]:
    """The GPU validation for parsed CLI ``args``: (the file's data, the warm encoder, the
    warm prefill runner; both kept for probes that follow on the same machine). ``encoder`` and
    ``runner``: warm ones to reuse (their warm-up seconds are still reported)."""
    modelled_costs = StepCosts(load_encoder_cost(args.results, PRESET), default_prefill())
    encoder = encoder or _gpu_encoder()
    runner = runner or gpu_prefill_runner()
    config = ReplayConfig(chunked_prefill_size=args.chunked_prefill_size, cache_tokens=args.cache_tokens)
    rows = validate(encoder, runner, modelled_costs, workloads=args.workloads, modes=args.modes, config=config,
                    make_item=processing_items(PRESET), timed_passes=args.timed_passes)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    data = {"schema": SCHEMA, "created": stamp, "note": DECODE_NOTE, "machine": machine_info(), "versions": versions(),
            "sources": {"modelled": modelled_costs.label(), "measured_prefill": prefill_source(runner),
                        "measured_encoder": f"{PRESET} bf16 {getattr(encoder, 'impl', '?')}"},
            "settings": vars(args), "rows": rows, "warmup": warmup_record(encoder, runner)}
    return data, encoder, runner
