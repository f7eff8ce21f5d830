"""``python -m vitkit.sim [TRACE]``: replay a trace for both modes, pinning on/off, a few cache
sizes, and print the summary table. ``--write-examples`` regenerates data/traces.

``python -m vitkit.sim ttft ...``: time to first token against load (``vitkit.sim.ttft_report``).
``python -m vitkit.sim validate ...``: the same on the GPU, real encoder and prefill against the
cost models (``vitkit.sim.validate``)."""

from __future__ import annotations

import argparse
import sys

from vitkit.sim.fake import FakeEncoder, cache_bytes_for_tokens
from vitkit.sim.run import compare, prepare
from vitkit.sim.trace import TRACES_DIR, save_trace
from vitkit.sim.ttft_report import main as ttft_main
from vitkit.sim.validate import main as validate_main
from vitkit.sim.workload import EXAMPLES, example_trace

COLUMNS = ("mode", "pin", "cache_tokens", "hit_rate", "encoder_calls", "encoded_items", "re_encodings", "request_re_encodings", "rejected")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "ttft":
        return ttft_main(argv[1:])
    if argv and argv[0] == "validate":
        return validate_main(argv[1:])
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
        return
    stream = prepare(args.trace, chunked_prefill_size=args.chunked_prefill_size,
                     long_prefill_token_threshold=args.long_prefill_token_threshold)
    encoder = FakeEncoder()
    runs = compare(stream, [cache_bytes_for_tokens(t, encoder) for t in args.cache_tokens], encoder=encoder)
    widths = [max(len(c), 11) for c in COLUMNS]
    print(" ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, widths)))
    for run in runs:
        s = run.summary
        values = (s.mode, s.pin, s.capacity_tokens, f"{s.hit_rate:.3f}", s.encoder_calls,
                  s.encoded_items, s.re_encodings, s.request_re_encodings, s.rejected)
        print(" ".join(f"{str(v):>{w}}" for v, w in zip(values, widths)))


if __name__ == "__main__":
    main()
