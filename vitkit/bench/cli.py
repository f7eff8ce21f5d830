"""``python -m vitkit.bench``: run a sweep, write its JSON and PNGs, print a short table.

Examples::

    python -m vitkit.bench                       # GPU: the full sweep; CPU: the tiny smoke sweep
    python -m vitkit.bench --quick               # GPU sanity run, about a minute
    python -m vitkit.bench --sweep clip-batch --requests 1,8,64 --impl vitkit,stock
    python -m vitkit.bench --sweep token-budget --max-tokens-per-call 512,none
    python -m vitkit.bench --sweep stream        # a stream of changing layouts (vitkit.bench.stream_cli)
    torchrun --nproc-per-node 2 -m vitkit.bench --sweep dp --out results/h100/dp   # see vitkit.bench.dp
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vitkit.bench.args import list_of, positive_int_arg, single
from vitkit.bench.dp import main as dp_main
from vitkit.bench.plot import save_figures
from vitkit.bench.results import write_results
from vitkit.bench.rows import BenchRow
from vitkit.bench.stream_cli import main as stream_main
from vitkit.bench.run import DTYPES, RunSettings, run_sweeps
from vitkit.bench.sweeps import RESOLUTION_LABELS, SWEEPS, get_sweeps
from vitkit.encoders import IMPLS


def _fraction(part: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise ValueError(f"expected comma-separated fractions, got {part!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"hit fractions must be in [0, 1), got {value}")
    return value


def _budget(part: str) -> int | None:
    return None if part.strip().lower() == "none" else positive_int_arg(part)


def _resolution(part: str) -> int | str:
    return part if part in RESOLUTION_LABELS else positive_int_arg(part)


def _impl(part: str) -> str:
    if part not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {part!r}")
    return part


def _asks_for_stream(argv: Sequence[str] | None) -> bool:
    args = list(sys.argv[1:] if argv is None else argv)
    return "--sweep=stream" in args or any(a == "--sweep" and b == "stream" for a, b in zip(args, args[1:]))


def build_parser() -> argparse.ArgumentParser:
    intro, examples = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m vitkit.bench", description=intro, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", choices=sorted(SWEEPS), metavar="NAME",
                   help="named sweep (default: full on GPU, cpu-smoke on CPU); --list-sweeps shows them; "
                        "'--sweep dp' first runs the multi-GPU sweep (python -m vitkit.bench.dp, under torchrun)")
    p.add_argument("--list-sweeps", action="store_true", help="print the named sweeps and exit")
    p.add_argument("--quick", action="store_true",
                   help="GPU sanity run, about a minute: the 'quick' sweep, 3 repeats (CPU: the smoke sweep)")
    p.add_argument("--encoder", help="encoder preset for every sweep of the run (e.g. clip-l-336)")
    p.add_argument("--requests", type=list_of(positive_int_arg), help="requests per step, e.g. 1,2,4")
    p.add_argument("--images-per-request", type=list_of(positive_int_arg), help="images per request, e.g. 1,4,8")
    p.add_argument("--resolution", type=list_of(_resolution),
                   help="image side in px, or 'mixed' (variable-resolution towers; fixed ones use their own size)")
    p.add_argument("--hit-fraction", type=list_of(_fraction), help="share of the step's images already cached, e.g. 0,0.5")
    p.add_argument("--max-tokens-per-call", type=list_of(_budget), help="encoder token budgets, e.g. 512,2048,none")
    p.add_argument("--impl", type=list_of(_impl), default=["vitkit"], help="vitkit, stock or vitkit,stock")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--repeats", type=single(positive_int_arg),
                   help="timed steps per point and mode (default 10 GPU, 3 quick, 2 CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 GPU, 1 CPU)")
    p.add_argument("--seconds-per-mode", type=float, default=2.0,
                   help="timed-step budget per point and mode: slow points get fewer repeats, at least 3 (default 2)")
    p.add_argument("--out", type=Path, help="output folder (default results/<device-slug>/)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.add_argument("--no-check", action="store_true",
                   help="skip the untimed comparison of the two modes' embeddings at each point")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any], RunSettings]:
    """Resolve defaults that depend on the device: (sweep name, overrides, run settings)."""
    settings = RunSettings.for_device(
        args.device, quick=args.quick, sweep=args.sweep, dtype=args.dtype, impls=tuple(args.impl),
        repeats=args.repeats, warmup=args.warmup, seconds_per_mode=args.seconds_per_mode, check=not args.no_check,
    )
    overrides = {
        "encoder": args.encoder, "requests": args.requests, "images_per_request": args.images_per_request,
        "resolution": args.resolution, "hit_fraction": args.hit_fraction,
        "max_tokens_per_call": args.max_tokens_per_call,
    }
    return settings.sweep, overrides, settings


def describe_sweeps() -> str:
    """One line per named sweep: its name, encoders and description."""
    lines = []
    for name, sweeps in SWEEPS.items():
        what = "; ".join(s.description or s.encoder for s in sweeps) if len(sweeps) == 1 else \
            f"{len(sweeps)} sweeps: " + ", ".join(s.name for s in sweeps)
        lines.append(f"{name:<20} {what}")
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """A short fixed-width table of the rows."""
    head = f"{'sweep':<18} {'encoder':<18} {'impl':<6} {'mode':<11} {'req x img':>9} {'res':>6} {'calls':>5} " \
           f"{'step ms':>9} {'enc ms':>9} {'book%':>6} {'img/s':>9} {'MFU%':>6} {'peak MiB':>9}"
    lines = [head, "-" * len(head)]
    for r in results["rows"]:
        mem = f"{r.peak_mem_bytes / 2**20:9.0f}" if r.peak_mem_bytes is not None else f"{'-':>9}"
        lines.append(
            f"{r.sweep:<18.18} {r.encoder:<18.18} {r.impl:<6} {r.mode:<11} "
            f"{r.requests:>4} x {r.images_per_request:<2} {str(r.resolution):>6} {r.encoder_calls:>5} "
            f"{r.step_ms_median:9.2f} {r.encoder_ms_median:9.2f} {_percent(r.bookkeeping_share, 6, 1)} "
            f"{r.images_per_s:9.1f} {100 * r.mfu:6.1f} {mem}"
        )
    for e in results.get("memory_model", []):
        lines.append(f"memory model {e['encoder']} {e['mode']} budget={e['max_tokens_per_call']}: predicted "
                     f"{e['predicted_peak_bytes'] / 2**20:.0f} MiB, "
                     f"measured {e['measured_peak_bytes'] / 2**20:.0f} MiB, "
                     f"error {100 * e['error']:+.1f}%{' (calibration)' if e['calibration'] else ''}")
    lines += summary_lines(results)
    peak = results["matmul_peak"]
    lines.append(f"kind={results['kind']}  device={results['machine']['device_name']}  "
                 f"matmul peak {peak['tflops']:.2f} TFLOP/s ({peak['label']})")
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per sweep, encoder and impl: the batched path at the point with the most images, and
    how it compares with the per-request path there."""
    lines = []
    keyed: dict[tuple, dict[str, BenchRow]] = {}
    for r in results["rows"]:
        key = (r.sweep, r.encoder, r.impl, r.requests, r.images_per_request, repr(r.resolution), r.hit_fraction,
               r.max_tokens_per_call)
        keyed.setdefault(key, {})[r.mode] = r
    best: dict[tuple, dict[str, BenchRow]] = {}
    for key, modes in keyed.items():
        if "batched" in modes and "per_request" in modes:
            group = key[:3]
            if group not in best or modes["batched"].images >= best[group]["batched"].images:
                best[group] = modes
    for (sweep, encoder, impl), modes in best.items():
        b, p = modes["batched"], modes["per_request"]
        lines.append(f"{sweep}: {encoder} {impl} at {b.requests} x {b.images_per_request} ({b.resolution}): "
                     f"batched {b.images_per_s:.1f} img/s, MFU {100 * b.mfu:.1f}%, bookkeeping "
                     f"{_percent(b.bookkeeping_share, 0, 2)}%; per-request {p.images_per_s:.1f} img/s; "
                     f"speedup {p.step_ms_median / b.step_ms_median:.2f}x{_diff_note(b)}")
    return lines


def _percent(share: float | None, width: int, digits: int) -> str:
    """``share`` as a percentage, or "-" when the row did not record it."""
    return f"{'-':>{width}}" if share is None else f"{100 * share:{width}.{digits}f}"


def _diff_note(row: BenchRow) -> str:
    diff = row.modes_max_rel_diff
    return "" if diff is None else f"; modes differ by {diff:.1e} (max rel)"


def output_path(out: Path | None, results: dict[str, Any], sweep: str, settings: RunSettings) -> Path:
    folder = out or Path("results") / ("cpu-smoke" if settings.kind == "cpu-smoke" else results["machine"]["slug"])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{sweep}-{'-'.join(settings.impls)}-{settings.dtype}-{stamp}.json"


def _without_dp_sweep(argv: list[str]) -> list[str] | None:
    """``argv`` without its ``--sweep dp`` (or ``--sweep=dp``), or None when it asks another sweep."""
    for k, arg in enumerate(argv):
        if arg == "--sweep=dp":
            return argv[:k] + argv[k + 1:]
        if arg == "--sweep" and argv[k + 1:k + 2] == ["dp"]:
            return argv[:k] + argv[k + 2:]
    return None


def main(argv: Sequence[str] | None = None, *, run: Callable[..., dict[str, Any]] = run_sweeps) -> int:
    if _asks_for_stream(argv):  # the stream benchmark has its own axes (vitkit.bench.stream_cli)
        return stream_main(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = _without_dp_sweep(argv)
    if rest is not None:
        # The multi-GPU sweep has its own options and runs under torchrun: vitkit.bench.dp.
        return dp_main(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_sweeps:
        print(describe_sweeps())
        return 0
    try:
        sweep, overrides, settings = settings_from_args(args)
        sweeps = get_sweeps(sweep, overrides)
    except ValueError as err:
        parser.error(str(err))
    total = sum(len(s.points()) for s in sweeps) * len(settings.impls) * 2
    print(f"vitkit.bench: sweep {sweep!r} on {settings.device} ({settings.dtype}), {total} measurements "
          f"x {settings.repeats} repeats (+{settings.warmup} warm-up)", flush=True)
    results = run(sweeps, settings, progress=not args.no_progress)
    path = write_results(results, output_path(args.out, results, sweep, settings))
    print(f"wrote {path}")
    if not args.no_plots:
        for png in save_figures(results, path.parent, prefix=path.stem + "-"):
            print(f"wrote {png}")
    print(format_table(results))
    return 0
