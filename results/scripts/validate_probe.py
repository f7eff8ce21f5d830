"""The TTFT validation on the GPU plus probes of where measured and modelled step costs part.

Runs ``python -m vitkit.sim validate`` (same file, same code path) and then, on the same warm
encoder and prefill runner:

1. encoder calls of k 448x448 (and 1344x1008) images, pixels on the host as the replay feeds
   them versus already on the GPU as the stream benchmark (the encoder model's source) feeds
   them, versus the bucket graph's replay alone: where the per-call host cost is;
2. a sample of the replay's measured prefill steps re-timed in isolation (median of repeats):
   whether a step costs more inside the replay than alone, and what the model says.

    VITKIT_GIT_COMMIT=<sha> python results/scripts/validate_probe.py --out $OUT
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from vitkit.encoders.buckets import pack
from vitkit.processing import synthetic_items
from vitkit.sim.stepcost import default_prefill, load_encoder_cost
from vitkit.sim.ttft_report import write_json
from vitkit.sim.validate import PRESET, parse_args, run_on_gpu


def wall_ms(fn, repeats: int = 9, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def encoder_probe(encoder) -> list[dict]:
    model = load_encoder_cost(model="bucket")
    rows = []
    for size, counts in (((448, 448), (1, 2, 3, 4, 6, 8, 12, 16)), ((1344, 1008), (1, 2))):
        for k in counts:
            host = synthetic_items(PRESET, [size] * k, seed=1000 + k)
            device = synthetic_items(PRESET, [size] * k, seed=1000 + k)
            for item in device:
                item.to("cuda")
            torch.cuda.synchronize()
            units = [encoder.item_units(i, item) for i, item in enumerate(device)]
            (p,) = pack(units, encoder.buckets)  # every probed call fits one bucket
            encoder.fill(device, p.bucket)
            replay = wall_ms(lambda: encoder.graphs.run(p.bucket, encoder.bucket_fn(p.bucket), encoder.bucket_args(p.bucket)))
            rows.append({"size": list(size), "images": k, "bucket": p.bucket,
                         "host_pixels_ms": wall_ms(lambda: encoder(host)),
                         "device_pixels_ms": wall_ms(lambda: encoder(device)),
                         "graph_replay_ms": replay,
                         "modelled_ms": model.call_ms([item.num_tokens for item in host])})
    return rows


def prefill_probe(runner, rows: list[dict], per_run: int = 40) -> list[dict]:
    model = default_prefill()
    out = []
    for row in rows:
        steps = [s for s in row["measured_steps"] if s["windows"]]
        for s in steps[:: max(1, len(steps) // per_run)][:per_run]:
            windows = [tuple(w) for w in s["windows"]]
            alone = runner.time_step(windows, warmup=2, repeats=7).median_ms
            out.append({"workload": row["workload"], "mode": row["mode"], "step": s["step"], "windows": [list(w) for w in windows],
                        "tokens": sum(n for _, n in windows), "in_replay_ms": s["prefill_ms"], "alone_ms": alone,
                        "modelled_ms": model.step_ms(windows)})
    return out


def main() -> None:
    parser, args = parse_args(sys.argv[1:])
    data, encoder, runner = run_on_gpu(args)
    out = Path(args.out)
    print(write_json(out / f"ttft-validate-{data['created']}.json", data))
    enc, pre = [], []
    try:  # the validation file is written: a failing probe must not lose it
        enc = encoder_probe(encoder)
        pre = prefill_probe(runner, data["rows"])
    except Exception:
        traceback.print_exc()
    probe = {"schema": "vitkit.validate-probe/1", "created": data["created"], "machine": data["machine"],
             "versions": data["versions"], "encoder_calls": enc, "prefill_steps": pre}
    (out / f"validate-probe-{data['created']}.json").write_text(json.dumps(probe, indent=1))
    print(f"{'size':>10} {'k':>3} {'bucket':>6} {'host px':>8} {'dev px':>8} {'replay':>8} {'model':>8}")
    for r in enc:
        print(f"{'x'.join(map(str, r['size'])):>10} {r['images']:>3} {r['bucket']:>6} {r['host_pixels_ms']:8.2f} "
              f"{r['device_pixels_ms']:8.2f} {r['graph_replay_ms']:8.2f} {r['modelled_ms']:8.2f}")
    for key in sorted({(p["workload"], p["mode"]) for p in pre}):
        ps = [p for p in pre if (p["workload"], p["mode"]) == key]
        print(f"prefill {key}: {len(ps)} steps, in replay {sum(p['in_replay_ms'] for p in ps):.0f} ms, alone "
              f"{sum(p['alone_ms'] for p in ps):.0f} ms, model {sum(p['modelled_ms'] for p in ps):.0f} ms")
    for r in data["rows"]:
        print(f"{r['workload']:>13} {r['mode']:>11} p50 {r['measured_p50_ms']:.1f}/{r['modelled_p50_ms']:.1f} "
              f"p99 {r['measured_p99_ms']:.1f}/{r['modelled_p99_ms']:.1f} enc {r['measured_encoder_ms']:.0f}/"
              f"{r['open_loop_encoder_ms']:.0f} pre {r['measured_prefill_ms']:.0f}/{r['open_loop_prefill_ms']:.0f} "
              f"stats {r['measured_pass_encoder_stats']}")


if __name__ == "__main__":
    main()
