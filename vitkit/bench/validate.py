"""``python -m vitkit.bench validate --out DIR``: the timed replay on the GPU against the cost models.

The same arrivals are replayed per workload and mode measured (the real Qwen2.5-VL-7B tower and
decoder, each step's measured time moving the clock, so queueing follows the real costs) and
modelled (the cost models); target: TTFT p50 and p99 within 10%, decode in neither. Rows keep every
measured step and the trace's digest, so ``--modelled-only`` recomputes the modelled side on a CPU
and proves it is the same trace; use the models of the card and process that ran it (graph times
differ between them, and a queue near saturation amplifies the difference).

``--trace FILE`` replays a user's own trace (``vitkit.sim.trace/1``) instead of the built-in workloads, at
its own arrival times or Poisson at ``--rate``, with the settings ``python -m vitkit.sim advise`` printed
(``--policy``, ``--encoder-budget-tokens``, ...). Bad input (a malformed trace, a cache too small for its
largest image, a results folder from another card) ends with one line and exit status 2, before any GPU work.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.machine import machine_info, parser, versions
from vitkit.bench.prefill import PrefillRunner
from vitkit.checks import positive_int
from vitkit.costs import results
from vitkit.costs.clock import StepClock, StepCosts, TimedEncoder, prefill_source, prefill_windows
from vitkit.costs.encoder import item_temporal, load_encoder_cost, stored_item_rows
from vitkit.costs.prefill import default_prefill_calibration, has_prefill_steps, load_prefill_cost
from vitkit.embed import MODES
from vitkit.encoders import build_encoder
from vitkit.encoders.base import dynamo_compiles
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import bytes_per_token
from vitkit.sim.latency import DECODE_NOTE
from vitkit.sim.replay import Run, replay, replay_stream
from vitkit.sim.report import encoder_fit_record, rows_of_image
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import Trace, check_cache_sizes, load_trace
from vitkit.sim.workload import VALIDATION_SIZES, build_requests, generate_workload, processing_items, workload_params

COUNTS = ("encoded_items", "re_encodings", "request_re_encodings", "refused_puts", "evictions", "forced_grants")
PRESET = "qwen2.5-vl-7b"
DEFAULTS = VALIDATION_SIZES  # rate /s, requests per workload


def gpu_prefill_runner(device: str = "cuda") -> Any:
    """The Qwen2.5-VL-7B decoder's prefill on ``device``, warm (``step_ms(windows) -> ms``)."""
    runner = PrefillRunner(device=device)
    runner.warmup()
    return runner


def _gpu_encoder(device: str = "cuda") -> Any:
    """The bucketed Qwen2.5-VL-7B tower on ``device``, warm (its ``warmup_report`` kept)."""
    encoder = build_encoder(PRESET, device=device, dtype=torch.bfloat16)
    encoder.warmup_report = encoder.warmup()
    return encoder


class HostTimedClock(StepClock):
    """A ``StepClock`` that also keeps each step's host ms around the encoder (``embed_chunks``' wall time
    less its encoder calls: lookups, puts, assembly), one per step with windows, in ``bookkeeping_ms``: the
    cost models' bookkeeping term, measured in the replay itself rather than borrowed from a stream file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bookkeeping_ms: list[float] = []

    def __call__(self, step: Any, result: Any, requests: Any, spent: Any, wall_ms: float) -> Any:
        self.bookkeeping_ms.append(max(0.0, wall_ms - spent.measured_ms))
        return super().__call__(step, result, requests, spent, wall_ms)


def trace_digest(trace: Any) -> str:
    """A digest of a trace's requests (ids, arrival times to the microsecond, prompt segments)."""
    text = json.dumps([[r.rid, round(r.arrival_ms, 3), repr(r.segments)] for r in trace.requests])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rel(measured: float, modelled: float) -> float:
    return (modelled - measured) / measured if measured else float("nan")


def _counts(run: Run) -> dict[str, Any]:
    """A run's TTFT summary and what its cache did, as a stored row writes them."""
    return asdict(run.latency) | {k: getattr(run.summary, k) for k in COUNTS}


def _modelled_side(measured: Mapping[str, Any], modelled: Run) -> dict[str, Any]:
    """A row's modelled fields against its ``measured`` TTFT summary (``_counts``)."""
    c = modelled.latency
    return {"modelled_p50_ms": c.ttft_p50_ms, "p50_rel_err": _rel(measured["ttft_p50_ms"], c.ttft_p50_ms),
            "modelled_p99_ms": c.ttft_p99_ms, "p99_rel_err": _rel(measured["ttft_p99_ms"], c.ttft_p99_ms),
            "modelled_encoder_ms": modelled.summary.encoder_ms,
            "modelled_prefill_ms": sum(t.prefill_ms for t in modelled.rows), "modelled": _counts(modelled)}


def _compare(workload: str, mode: str, measured: Run, modelled: Run, calls_ms: Sequence[float] = ()) -> dict[str, Any]:
    counts = _counts(measured)
    return {
        "workload": workload, "mode": mode, "arrivals": measured.arrivals,
        "measured_p50_ms": counts["ttft_p50_ms"], "measured_p99_ms": counts["ttft_p99_ms"],
        "measured_encoder_ms": measured.summary.encoder_ms,
        "measured_prefill_ms": sum(t.prefill_ms for t in measured.rows), "measured": counts,
        **_modelled_side(counts, modelled), "measured_steps": measured_steps(measured, calls_ms),
        # the models applied to the measured steps themselves: their error without the closed loop
        "open_loop_encoder_ms": sum(e for e, _, _ in measured.shadow),
        "open_loop_prefill_ms": sum(p for _, p, _ in measured.shadow),
    }


def pass_record(run: Run, calls_ms: Sequence[float], compiles: int, stats: dict[str, int] | None) -> dict[str, Any]:
    s = run.latency
    return {"p50_ms": s.ttft_p50_ms, "p99_ms": s.ttft_p99_ms, "encoder_ms": run.summary.encoder_ms,
            "prefill_ms": sum(t.prefill_ms for t in run.rows), "encoder_calls": len(calls_ms), "compiles": compiles,
            "captures": None if stats is None else stats["captures"]}


def measured_steps(run: Run, calls_ms: Sequence[float] = ()) -> list[dict[str, Any]]:
    """Per step of a measured run: its clock, ms and windows; with a shadow the models' ms, its calls'
    items (``call_item_rows``, and where a call holds a video ``call_item_temporal``: see ``step_calls``) and
    (from ``calls_ms``) each call's ms."""
    rows, next_call = [], 0
    for k, t in enumerate(run.rows):
        row = {"step": t.step, "start_ms": t.time_ms, "encoder_ms": t.encoder_ms, "prefill_ms": t.prefill_ms,
               "windows": [list(w) for w in prefill_windows(t.windows)]}
        if k < len(run.shadow):
            enc, pre, calls = run.shadow[k]
            row |= {"modelled_encoder_ms": enc, "modelled_prefill_ms": pre,
                    "call_item_rows": [[int(r) for r in c] for c in calls]}
            temporal = [item_temporal(c) for c in calls]
            if any(temporal):  # JSON writes a VideoSize as its rows: its temporal patches go beside them
                row["call_item_temporal"] = [t or [0] * len(c) for t, c in zip(temporal, calls)]
            if calls_ms:
                row["call_ms"] = list(calls_ms[next_call: next_call + len(calls)])
                next_call += len(calls)
        rows.append(row)
    if calls_ms and next_call != len(calls_ms):
        raise ValueError(f"{len(calls_ms)} timed encoder calls for {next_call} calls in the steps' records")
    return rows


def step_calls(step: Mapping[str, Any], where: str = "step") -> list[list[int]]:
    """A stored measured step's calls as the cost model reads them (``call_item_rows``): each video a
    ``VideoSize`` again from ``call_item_temporal`` (absent from steps of images only, and from every file
    from before videos)."""
    calls = step["call_item_rows"]
    temporal = step.get("call_item_temporal") or [None] * len(calls)
    if len(temporal) != len(calls):
        raise ValueError(f"{where}: {len(calls)} calls but {len(temporal)} lists of temporal patches")
    return [stored_item_rows(c, t, f"{where} call {j}") for j, (c, t) in enumerate(zip(calls, temporal))]


def _print_row(r: Mapping[str, Any]) -> None:
    line = (f"{r['workload']:>13} {r['mode']:>11}: p50 measured {r['measured_p50_ms']:8.1f} modelled "
            f"{r['modelled_p50_ms']:8.1f} ({r['p50_rel_err']:+.1%}); p99 measured {r['measured_p99_ms']:8.1f} "
            f"modelled {r['modelled_p99_ms']:8.1f} ({r['p99_rel_err']:+.1%}); encoder ms "
            f"{r['measured_encoder_ms']:.0f} / {r['modelled_encoder_ms']:.0f}")
    if r.get("open_loop_encoder_ms") is not None:
        line += (f"; open loop on the measured steps: encoder {r['measured_encoder_ms']:.0f} vs "
                 f"{r['open_loop_encoder_ms']:.0f} ms, prefill {r['measured_prefill_ms']:.0f} vs "
                 f"{r['open_loop_prefill_ms']:.0f} ms")
    if "measured_passes" in r:
        line += (f"; compiles in the timed passes {r['measured_pass_compiles']}; p99 of each timed pass "
                 + " ".join(f"{p['p99_ms']:.1f}" for p in r["measured_passes"]))
    print(line)


@dataclass(frozen=True)
class Replayed:
    """One trace the validation replays: ``name`` (its rows' workload), the trace at its arrival times, how
    they arrived (``arrivals``, e.g. "poisson 40/s"), and the fields that rebuild it (``origin``)."""

    name: str
    trace: Trace
    arrivals: str
    origin: dict[str, Any] = field(default_factory=dict)


def stock_replayed(workload: str, requests: int, rate_per_s: float, seed: int = 0) -> Replayed:
    """A built-in workload as the validation replays it (``validation_trace``)."""
    trace, process = validation_trace(workload, requests, rate_per_s, seed)
    return Replayed(workload, trace, process.label(), {"trace_seed": seed})


def user_replayed(path: str | Path, rate_per_s: float | None = None) -> Replayed:
    """A user's trace file at its own arrival times, or its requests Poisson at ``rate_per_s``."""
    trace = load_trace(path)
    process = ArrivalProcess("trace") if rate_per_s is None else ArrivalProcess("poisson", rate_per_s)
    return Replayed(trace.name, process.apply(trace), process.label(),
                    {"trace_file": str(path), "trace_rate": rate_per_s})


def validate(encoder: Any, prefill_runner: Any, modelled_costs: StepCosts, *,
             workloads: Sequence[str] = tuple(DEFAULTS), modes: Sequence[str] = MODES,
             config: ReplayConfig = ReplayConfig(), make_item: Any = None,
             sizes: dict[str, tuple[float, int]] | None = None, warm_passes: int = 1, seed: int = 0,
             timed_passes: int = 1, traces: Sequence[Replayed] | None = None) -> list[dict[str, Any]]:
    """A row per workload (or given trace) x mode: the real ``encoder`` and ``prefill_runner`` against
    ``modelled_costs`` on the same arrivals. One pass's p99 is one sample: the row shows the timed pass with
    the median. ``traces`` (e.g. ``user_replayed``) replace the built-in ``workloads``."""
    measured_costs = replace(modelled_costs, prefill=prefill_runner)
    positive_int("timed_passes", timed_passes)
    if traces is None:
        traces = [stock_replayed(w, (sizes or DEFAULTS)[w][1], (sizes or DEFAULTS)[w][0], seed) for w in workloads]
    rows = []
    for job in traces:
        workload, trace = job.name, job.trace
        # built once: real pixels are heavy
        requests = build_requests(trace) if make_item is None else build_requests(trace, make_item)
        arrivals = trace.arrivals({rid: r.prompt_len for rid, r in requests.items()})
        for mode in modes:
            run_config = replace(config, mode=mode)
            # warm passes meet every shape the replay meets (compiled buckets, graphs); then the timed ones
            passes = []
            books = []  # per timed pass, each step's measured host ms (HostTimedClock)
            for k in range(warm_passes + timed_passes):
                compiles = dynamo_compiles()  # a compile inside the timed pass would stall its steps
                stats = getattr(encoder, "stats", None)
                before = stats.copy() if stats is not None else None
                timed = TimedEncoder(encoder)
                if k >= warm_passes:
                    # the heap built so far (items, graphs, caches) is left out of collections, as
                    # vLLM's engine does after start-up: no multi-ms collector pause inside a step
                    gc.collect()
                    gc.freeze()
                try:
                    clock = HostTimedClock(measured_costs, encoder_measured=True, shadow=modelled_costs)
                    measured = replay(requests, arrivals, run_config, clock, timed, row_bytes=bytes_per_token(encoder),
                                      progress=True, label=workload)
                finally:
                    gc.unfreeze()
                if k >= warm_passes:
                    delta = None if before is None else asdict(encoder.stats - before)
                    passes.append((measured, timed.calls_ms, dynamo_compiles() - compiles, delta))
                    books.append(clock.bookkeeping_ms)
            # the pass whose p99 is the median of the timed passes is the row's measured side; all are kept
            order = sorted(range(len(passes)), key=lambda i: passes[i][0].latency.ttft_p99_ms)
            shown = order[(len(order) - 1) // 2]
            measured, calls_ms, _, stats_delta = passes[shown]
            modelled = replay_stream(trace, run_config, modelled_costs)
            label = job.arrivals
            rows.append(_compare(workload, mode, replace(measured, arrivals=label), replace(modelled, arrivals=label),
                                 calls_ms)
                        | {"trace_digest": trace_digest(trace), **job.origin,
                           "measured_pass_compiles": sum(p[2] for p in passes),  # any compile in any timed pass
                           "measured_pass_encoder_stats": stats_delta, "measured_pass": shown,
                           "measured_passes": [pass_record(*p) for p in passes],
                           "measured_bookkeeping_ms": books[shown]})
            _print_row(rows[-1])
    return rows


def validation_trace(workload: str, requests: int, rate_per_s: float, seed: int = 0) -> tuple[Any, ArrivalProcess]:
    """The stock ``workload``'s first ``requests`` arriving Poisson at ``rate_per_s``; seed 0 is the
    validation's draw, another a calibration trace."""
    params = workload_params(workload, requests)
    process = ArrivalProcess("poisson", rate_per_s, seed=seed)
    return process.apply(generate_workload(replace(params, seed=params.seed + seed), workload)), process


def stored_replay(row: dict[str, Any], settings: dict[str, Any]) -> tuple[Any, ReplayConfig, ArrivalProcess]:
    """The trace, config and arrivals a stored validation row was replayed with, rebuilt (a user's trace from
    its ``trace_file``)."""
    scheduler = SchedulerConfig(settings["chunked_prefill_size"], policy=settings.get("policy") or "legacy",
                                encoder_budget_tokens=settings.get("encoder_budget_tokens"))
    config = ReplayConfig(scheduler, mode=row["mode"], cache_tokens=settings["cache_tokens"])
    if row.get("trace_file"):
        job = user_replayed(row["trace_file"], row.get("trace_rate"))
        process = ArrivalProcess("trace") if row.get("trace_rate") is None else \
            ArrivalProcess("poisson", row["trace_rate"])
        return job.trace, config, process
    kind, _, rate = row["arrivals"].partition(" ")
    where = f"{row['workload']}/{row['mode']}"
    if kind != "poisson" or not rate.endswith("/s"):
        raise ValueError(f"stored row {where}: arrivals {row['arrivals']!r} is not 'poisson <rate>/s'")
    trace, process = validation_trace(row["workload"], row["measured"]["requests"], float(rate[:-2]),
                                      row.get("trace_seed", 0))
    return trace, config, process


def remodel(stored: dict[str, Any], costs: StepCosts) -> list[dict[str, Any]]:
    """The stored rows with a modelled side replayed with ``costs``; ValueError unless each rebuilt
    trace has the row's ``trace_digest``."""
    rows = []
    for row in stored["rows"]:
        trace, config, process = stored_replay(row, stored["settings"])
        where = f"{row['workload']}/{row['mode']}"
        if "trace_digest" not in row:
            raise ValueError(f"{where}: the stored row has no trace_digest, so the rebuilt trace cannot be proven "
                             f"to be the one measured; re-run the GPU validation")
        if trace_digest(trace) != row["trace_digest"]:
            raise ValueError(f"{where}: the rebuilt trace's digest {trace_digest(trace)} "
                             f"is not the stored {row['trace_digest']}")
        modelled = replace(replay_stream(trace, config, costs), arrivals=process.label())
        keep = ("workload", "mode", "arrivals", "trace_digest", "trace_file", "trace_rate", "trace_seed")
        new = {k: v for k, v in row.items() if k.startswith("measured") or k in keep}
        new |= _modelled_side(row["measured"], modelled) | {
            "previous_modelled_p50_ms": row["modelled_p50_ms"], "previous_modelled_p99_ms": row["modelled_p99_ms"]}
        if row.get("measured_steps") and "call_item_rows" in row["measured_steps"][0]:
            new |= open_loop(row["measured_steps"], costs)
        rows.append(new)
    return rows


def open_loop(steps: Sequence[dict[str, Any]], costs: StepCosts) -> dict[str, float]:
    """``costs`` on each measured step as it ran: encoder and prefill totals and median errors."""
    def prefill(step: dict[str, Any]) -> float:
        return costs.prefill.step_ms([tuple(w) for w in step["windows"]]) if step["windows"] else 0.0

    out = {}
    for part, model in (("encoder", lambda s: costs.encoder.step_ms(step_calls(s, f"step {s['step']}"))),
                        ("prefill", prefill)):
        ms = [(model(s), s[f"{part}_ms"]) for s in steps]
        errs = sorted(abs(m - y) / y for m, y in ms if y > 0)
        out[f"open_loop_{part}_ms"] = sum(m for m, _ in ms)
        out[f"open_loop_{part}_median_rel_err"] = errs[len(errs) // 2] if errs else None
    return out


def modelled_only(measured: str | Path, folder: str | Path | None = None,
                  encoder_costs: str | Path | None = None, prefill: str | Path | None = None,
                  prefill_calibration: str | Path | None = None) -> dict[str, Any]:
    """A validation file: the stored ``measured`` side, the modelled side recomputed here with the newest
    models in ``folder`` or those given; the prefill grid calibrated by ``prefill_calibration``."""
    stored = results.read("ttft-validate", measured)
    folder = results.results_folder() if folder is None else Path(folder)
    # the encoder-costs file given also calibrates the prefill grid given (one card, one session)
    calibration = prefill_calibration or encoder_costs or (None if prefill else default_prefill_calibration(folder))
    if calibration and not has_prefill_steps(calibration):
        calibration = None  # files from before the calibration replay kept its prefill steps
    prefill = prefill or results.newest("prefill", folder)
    costs = StepCosts(load_encoder_cost(folder, PRESET, costs_file=encoder_costs),
                      load_prefill_cost(prefill, calibration))
    rows = remodel(stored, costs)
    note = (f"{stored['note']}. Measured on the GPU at {stored['created']} ({Path(measured).name}); modelled "
            f"recomputed on CPU with {costs.label()} (trace digests checked)")
    sources = stored["sources"] | {"modelled": costs.label(), "encoder_fit": encoder_fit_record(costs.encoder.call),
                                   "previous_modelled": stored["sources"]["modelled"]}
    settings = stored["settings"] | {"modelled_only": True, "measured_file": Path(measured).name,
                                     "encoder_costs_file": encoder_costs and Path(encoder_costs).name,
                                     "prefill_file": Path(prefill).name,
                                     "prefill_calibration_file": calibration and Path(calibration).name}
    return stored | {"note": note, "sources": sources, "rows": rows, "settings": settings}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    default = "default: the newest in --results"
    out = "folder for ttft-validate-<stamp>.json (default with --modelled-only: the measured file's)"
    p = parser("validate", __doc__, "out", out=dict(type=None, help=out))
    p.add_argument("--modelled-only", action="store_true",
                   help="no GPU: recompute the modelled side of the stored --measured file with the cost models")
    p.add_argument("--measured", help="a stored ttft-validate-*.json whose measured side to keep (--modelled-only)")
    p.add_argument("--encoder-costs", help=f"an encoder-costs-*.json to model with (--modelled-only; {default})")
    p.add_argument("--prefill", help=f"a prefill-*.json to model with (--modelled-only; {default})")
    p.add_argument("--prefill-calibration", help="an encoder-costs-*.json whose serving prefill steps calibrate the "
                                                 "prefill grid (--modelled-only; default: --encoder-costs's)")
    p.add_argument("--workloads", nargs="+", default=list(DEFAULTS), choices=sorted(DEFAULTS))
    p.add_argument("--trace", help="a vitkit.sim.trace/1 file to replay instead of the built-in workloads")
    p.add_argument("--rate", type=float, help="--trace's requests Poisson at this rate (requests/s) instead of its "
                                              "own arrival times")
    # checked here, before minutes of GPU warm-up, not by the first replay's ReplayConfig
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--policy", default="legacy", choices=["legacy", "cache-aware"], help="admission policy")
    p.add_argument("--encoder-budget-tokens", type=int, help="embedding rows a step may encode (cache-aware)")
    p.add_argument("--timed-passes", type=int, default=1,
                   help="timed replays per workload and mode; the row shows the one with the median p99")
    p.add_argument("--chunked-prefill-size", type=int, default=2048)
    p.add_argument("--cache-tokens", type=int, default=16384)
    p.add_argument("--results", default=str(results.results_folder()),
                   help="folder of the results the cost models come from")
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> int | None:
    p, args = parse_args(argv)
    if args.modelled_only:
        if not args.measured:
            p.error("--modelled-only needs --measured FILE")
        data = modelled_only(args.measured, args.results, args.encoder_costs, args.prefill, args.prefill_calibration)
        for row in data["rows"]:
            _print_row(row)
        out = Path(args.out) if args.out else Path(args.measured).parent
        stamp = results.stamp()
        print(results.write("ttft-validate", data | {"created": stamp}, out / f"ttft-validate-{stamp}.json"))
        return
    if not args.out:
        p.error("--out is required (unless --modelled-only)")
    try:
        replay_config(args), modelled_costs(args), user_traces(args)  # bad input stops here, before the GPU
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data, _, _ = run_on_gpu(args)
    print(results.write("ttft-validate", data, Path(args.out) / f"ttft-validate-{data['created']}.json"))


def replay_config(args: argparse.Namespace) -> ReplayConfig:
    """The replay settings in parsed ``args`` (those ``advise`` prints: policy and encoder budget too)."""
    scheduler = SchedulerConfig(args.chunked_prefill_size, policy=getattr(args, "policy", None) or "legacy",
                                encoder_budget_tokens=getattr(args, "encoder_budget_tokens", None))
    return ReplayConfig(scheduler, cache_tokens=args.cache_tokens)


def modelled_costs(args: argparse.Namespace) -> StepCosts:
    """The cost models the validation compares against, from ``--results`` (a folder of one card's files)."""
    results.check_results_card(args.results)
    prefill_folder = getattr(args, "prefill_results", None) or args.results
    return StepCosts(load_encoder_cost(args.results, PRESET), load_prefill_cost(folder=prefill_folder))


def user_traces(args: argparse.Namespace) -> list[Replayed] | None:
    """``--trace`` as the validation replays it (None without one), its largest image checked against the
    cache; ValueError naming what is wrong."""
    if getattr(args, "trace", None) is None:
        return None
    job = user_replayed(args.trace, getattr(args, "rate", None))
    check_cache_sizes(job.trace, rows_of_image, [args.cache_tokens])
    return [job]


def run_on_gpu(args: argparse.Namespace, encoder: Any = None, runner: Any = None) -> tuple[dict[str, Any], Any, Any]:
    """The GPU validation for parsed ``args``: (data, warm encoder, warm runner); reuses warm ones given. A
    ``--trace`` is replayed instead of the workloads, with the same models and measurement."""
    costs, config, traces = modelled_costs(args), replay_config(args), user_traces(args)
    encoder = encoder or _gpu_encoder()
    runner = runner or gpu_prefill_runner()
    rows = validate(encoder, runner, costs, workloads=args.workloads, modes=args.modes, config=config,
                    make_item=processing_items(PRESET), timed_passes=args.timed_passes, traces=traces)
    report = getattr(encoder, "warmup_report", None)  # the cold start both paid before the first timed step
    warmup = {"encoder_s": getattr(report, "seconds", None), "encoder_captures": getattr(report, "captures", None),
              "encoder_pool_bytes": getattr(report, "pool_bytes", None), "prefill_s": getattr(runner, "warmup_s", None),
              "prefill_graph_buckets": list(getattr(runner, "graph_buckets", ()))}
    data = {"created": results.stamp(), "note": DECODE_NOTE, "machine": machine_info(), "versions": versions(),
            "sources": {"modelled": costs.label(), "measured_prefill": prefill_source(runner),
                        "measured_encoder": f"{PRESET} bf16 {getattr(encoder, 'impl', '?')}"},
            "settings": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows, "warmup": warmup}
    return data, encoder, runner
