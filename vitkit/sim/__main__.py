"""``python -m vitkit.sim [TRACE]``: replay a trace for both modes, pinning on/off, a few cache
sizes, and print the summary table. ``--write-examples`` regenerates data/traces.

``python -m vitkit.sim generate --like NAME --seed N --out FILE``: a new trace drawn like a stock workload
(``--requests``, ``--rate`` to change its size and load). ``python -m vitkit.sim ttft ...``: time to first token against load (``vitkit.sim.report``; ``--trace FILE``
for a user's own trace). ``python -m vitkit.sim advise --trace FILE --p99-ms B``: the engine settings that
serve it best under the bound (``vitkit.sim.advise``). The same replay on a GPU, real encoder and prefill
against the cost models, is a benchmark: ``python -m vitkit.bench validate ...``.

Bad input (a malformed trace, a bound no setting meets, a results folder from another card) ends with one
line naming what was wrong, and exit status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.sim.advise import main as advise_main
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.replay import compare, prepare
from vitkit.sim.report import main as ttft_main
from vitkit.sim.report import print_table
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import TRACES_DIR, save_trace
from vitkit.sim.workload import EXAMPLES, example_trace, trace_like

COLUMNS = ("mode", "pin", "cache_tokens", "hit_rate", "encoder_calls", "encoded_items", "re_encodings",
           "request_re_encodings", "refused_puts")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except ValueError as err:  # bad input names itself in one line (the library's ValueErrors do): no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "ttft":
        ttft_main(argv[1:])
        return 0
    if argv and argv[0] == "advise":
        return advise_main(argv[1:])
    if argv and argv[0] == "generate":
        return _generate(argv[1:])
    if argv and argv[0] == "validate":
        print("validate runs on a GPU: python -m vitkit.bench validate " + " ".join(argv[1:]), file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim", description=__doc__)
    parser.add_argument("trace", nargs="?", default="product-catalog", help="trace file or example name")
    parser.add_argument("--write-examples", action="store_true", help="regenerate data/traces/*.json and exit")
    parser.add_argument("--chunked-prefill-size", type=int, default=4096)
    parser.add_argument("--long-prefill-token-threshold", type=int, default=1024)
    parser.add_argument("--cache-tokens", type=int, nargs="+", default=[4096, 6144, 8192, 12288])
    args = parser.parse_args(argv)
    if args.write_examples:
        for name in EXAMPLES:
            print(save_trace(example_trace(name), TRACES_DIR / f"{name}.json"))
        return 0
    scheduler = SchedulerConfig(args.chunked_prefill_size, args.long_prefill_token_threshold)
    configs = [ReplayConfig(scheduler, mode=m, pin=p, cache_tokens=t)
               for m in ("batched", "per_request") for t in args.cache_tokens for p in (True, False)]
    runs = compare(prepare(args.trace), configs)
    records = [run.record() for run in runs]
    print_table(COLUMNS, [[f"{r[c]:.3f}" if c == "hit_rate" else r[c] for c in COLUMNS] for r in records],
                [max(len(c), 11) for c in COLUMNS])
    return 0


def _generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim generate",
                                     description="write a new trace drawn like a stock workload, with another seed")
    parser.add_argument("--like", required=True, help="stock workload: an example trace or a TTFT workload")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--requests", type=int, help="number of requests (default: the stock workload's)")
    parser.add_argument("--rate", type=float, help="Poisson arrivals per second (default: the stock workload's)")
    parser.add_argument("--out", required=True, help="the trace file to write (never overwritten)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"{out} exists; it is not overwritten")
    trace = trace_like(args.like, seed=args.seed, num_requests=args.requests, arrival_rate_per_s=args.rate)
    print(f"{save_trace(trace, out)}: {len(trace.requests)} requests over {len(trace.images)} images or videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
