"""``python -m vitkit.bench.buckets``: the trade-off behind the default token buckets.

For candidate bucket sets, the padding waste (padded / real units) they cause on each tower's
stream (``vitkit.bench.stream``, both modes, an unbounded cache) against the number of graphs each
needs; with the warm-up seconds per bucket measured on the GPU (the stored stream files'
``warmups``) it estimates each set's warm-up. Pure arithmetic on the stream: runs on any CPU.
Writes ``results/cpu/bucket-choice.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from vitkit.bench.stream import StreamSpec, bucket_choice
from vitkit.bench.stream_cli import GPU_STREAMS
from vitkit.encoders.buckets import Buckets
from vitkit.encoders.fixed import FIXED_BUCKETS
from vitkit.encoders.qwen import QWEN_BUCKETS


def _steps(step: int, top: int, small: Sequence[int] = ()) -> tuple[int, ...]:
    return tuple(sorted({*small, *range(step, top + 1, step)}))


def _geometric(low: int, top: int, ratio: float, multiple: int) -> tuple[int, ...]:
    sizes, x = set(), float(low)
    while x < top:
        sizes.add(max(multiple, int(round(x / multiple)) * multiple))
        x *= ratio
    return tuple(sorted(sizes | {top}))


CANDIDATES: dict[str, dict[str, Buckets]] = {
    "qwen2.5-vl-7b": {
        "default": QWEN_BUCKETS,
        "powers of 2, 256..16384": Buckets(tuple(2**k for k in range(8, 15)), 32, 4),
        "powers of 2, 256..32768": Buckets(tuple(2**k for k in range(8, 16)), 32, 4),
        "steps of 2048, ..16384": Buckets(_steps(2048, 16384, (256, 512, 1024)), 32, 4),
        "steps of 2048, ..32768": Buckets(_steps(2048, 32768, (256, 512, 1024)), 32, 4),
        "geometric x1.25, ..16384": Buckets(_geometric(256, 16384, 1.25, 64), 32, 4),
        "geometric x1.4, ..16384": Buckets(_geometric(256, 16384, 1.4, 64), 32, 4),
    },
    "clip-l-336": {
        "default": FIXED_BUCKETS,
        "powers of 2": Buckets((1, 2, 4, 8, 16, 32, 64), 64),
        "steps of 8": Buckets(_steps(8, 64, (1, 2, 3, 4, 6)), 64),
        "mixed 4/8": Buckets((1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64), 64),
        "every size": Buckets(tuple(range(1, 65)), 64),
    },
}


def measured_bucket_seconds(folder: Path) -> dict[str, float]:
    """Median warm-up seconds per bucket of each tower, from stored stream results."""
    out = {}
    for path in sorted(folder.glob("stream-*.json")):
        data = json.loads(path.read_text())
        for w in data.get("warmups", []):
            if w["impl"] == "vitkit" and w.get("bucket_seconds"):
                secs = sorted(s for _, s in w["bucket_seconds"])
                out[w["encoder"]] = secs[len(secs) // 2]
    return out


def choose(steps: int = 400, seed: int = 0, results: Path = Path("results/h100")) -> list[dict]:
    per_bucket = measured_bucket_seconds(results)
    rows = []
    for encoder, candidates in CANDIDATES.items():
        spec = StreamSpec(encoder, steps=steps, seed=seed, **GPU_STREAMS[encoder])
        for row in bucket_choice(spec, candidates):
            seconds = per_bucket.get(encoder)
            rows.append({"encoder": encoder, **row,
                         "est_warmup_s": None if seconds is None else seconds * row["graphs"]})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitkit.bench.buckets", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/cpu/bucket-choice.json"))
    args = p.parse_args(argv)
    rows = choose(args.steps, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stream_steps": args.steps, "seed": args.seed, "rows": rows}, indent=1) + "\n")
    print(f"{'encoder':<14} {'bucket set':<26} {'graphs':>6} {'waste batched':>13} {'waste per-req':>13} {'est. warm-up s':>14}")
    for r in rows:
        est = "-" if r["est_warmup_s"] is None else f"{r['est_warmup_s']:.0f}"
        print(f"{r['encoder']:<14.14} {r['name']:<26} {r['graphs']:>6} {100 * r['batched_waste']:12.1f}% "
              f"{100 * r['per_request_waste']:12.1f}% {est:>14}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
