"""``python -m vitkit.bench.encoder_costs``: the bucketed encoder's cost, measured part by part.

The TTFT replay needs the cost of one encoder call. Fitting it to a stream's step times (each
step one sum of bucket graphs) gave bucket ms that were off by up to 30% for single calls on the
H100 (the fit cannot tell buckets apart that mostly occur together), and the stream's pixels sat
on the GPU already, where a server's come from the host. So this measures:

1. every bucket's CUDA graph replayed alone (its static buffers filled with 448x448 images, as
   many as fit, the rest padding), after a second of untimed replays: the shape of the cost;
2. whole calls of real processor outputs of several sizes and counts, pixels on the host (as a
   server feeds them) and on the GPU, each timed call on images of its own: the host's share;
3. every encoder call of a calibration serving replay (``SERVING``: the TTFT validation's
   workloads and rates, another draw of requests and arrival times, the real 7B prefill between
   calls). On the H100 calls ran 10-20% slower there than alone, by amounts probes 1-2 did not
   reproduce (timed alone, after a prefill, or under sustained load), so the model is fitted here.
   The replay's prefill steps are kept too: the prefill grid, timed as repeats of one step, ran
   some step shapes up to 10% slower than serving did.

``vitkit.sim.bucketcost.measured_bucket_cost`` turns the file into the replay's encoder model:
the graphs' ms from 1, scaled, plus a host share per pack and per patch, fitted to 3 (to 2 when
a file has no serving calls). Writes ``encoder-costs-<stamp>.json`` (schema
``vitkit.encoder-costs/1``) and prints a table.

    python -m vitkit.bench.encoder_costs --out results/h100     # GPU, about 4 minutes
    python -m vitkit.bench.encoder_costs --smoke --out /tmp/x   # tiny tower and decoder on CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.bench.machine import machine_info, resolve_device, versions
from vitkit.encoders import build_encoder
from vitkit.encoders.buckets import pack
from vitkit.processing import synthetic_items

SCHEMA = "vitkit.encoder-costs/1"
PRESET = "qwen2.5-vl-7b"
FILL_SIZE = (448, 448)  # the image the bucket graphs are filled with
# (height, width) x counts of the whole-call probes: small to large images, one to many per call
CALLS = (((224, 224), (1, 4, 16)), ((448, 448), (1, 2, 3, 4, 6, 8, 12, 16)), ((896, 896), (1, 2, 3)),
         ((1344, 1008), (1, 2)))
SMOKE_CALLS = (((56, 56), (1, 2, 4)), ((112, 112), (1, 2)))
REPEATS = 9  # timed calls per point (median)
SUSTAIN_S = 1.0  # seconds of untimed calls before each point's timed calls
# The calibration serving replay: the validation's workloads and rates, another draw of requests
# and arrival times (vitkit.sim.validate.validation_trace), half as many requests
SERVING = {"small-images": (40.0, 300), "large-images": (4.0, 80)}
SMOKE_SERVING = {"small-images": (40.0, 6), "large-images": (4.0, 2)}
CALIBRATION_SEED = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sustained_median(fn: Callable[[int], Any], device: torch.device, *, sustain_s: float = SUSTAIN_S,
                     repeats: int = REPEATS) -> float:
    """Median wall time of ``fn(1) .. fn(repeats)`` after running ``fn(0)`` untimed for
    ``sustain_s`` seconds (at least twice). Each timed call is synchronised before and after
    (the host's work counts). The untimed calls put the card under load first, as a server's
    steps do (on the H100 it moved no point by more than the calls' own jitter)."""
    start, warm = time.perf_counter(), 0
    while warm < 2 or time.perf_counter() - start < sustain_s:
        fn(0)
        warm += 1
    times = []
    for k in range(1, repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        fn(k)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fill_items(encoder, bucket: int, size: tuple[int, int]) -> list:
    """As many ``size`` images as fit ``bucket``, on the encoder's device; for a bucket smaller
    than one such image, the largest square image (a side of 28 px steps) that fits."""
    def units(sz: tuple[int, int]) -> int:
        return encoder.item_units(0, synthetic_items(encoder.name, [sz])[0])

    if units(size) > bucket:
        side = 28 * int((bucket // 4) ** 0.5)  # (side / 14)^2 patches, a multiple of the 2x2 merge
        size = (side, side)
    items = synthetic_items(encoder.name, [size] * max(1, bucket // units(size)), seed=1)
    return [item.to(encoder.device) for item in items]


def bucket_rows(encoder, device: torch.device, progress: bool, sustain_s: float = SUSTAIN_S) -> list[dict[str, Any]]:
    """Each bucket's graph replayed alone, its buffers holding ``fill_items``."""
    rows = []
    for bucket in tqdm(encoder.buckets.sizes, desc="bucket graphs", disable=not progress):
        items = fill_items(encoder, bucket, FILL_SIZE)
        with torch.inference_mode():
            if not encoder.fill(items, bucket):
                raise RuntimeError(f"bucket {bucket}: {len(items)} fill images overflow its window capacity")
            fn, args = encoder.bucket_fn(bucket), encoder.bucket_args(bucket)
            if encoder.graphs is not None:
                ms = sustained_median(lambda _: encoder.graphs.run(bucket, fn, args), device, sustain_s=sustain_s)
            else:
                ms = sustained_median(lambda _: fn(*args), device, sustain_s=sustain_s)
        rows.append({"bucket": bucket, "images": len(items), "real_units": sum(encoder.item_units(k, it) for k, it in enumerate(items)),
                     "ms": ms})
    return rows


def call_rows(encoder, device: torch.device, calls: Sequence, progress: bool, sustain_s: float = SUSTAIN_S,
              repeats: int = REPEATS) -> list[dict[str, Any]]:
    """Whole calls, pixels on the host and on the device: ms of each and the packs they made.
    Every timed call gets images of its own (new pixels, as in a stream of requests), so the
    host's copy reads memory no earlier call left in the CPU's caches. All images are made
    before the first call is timed (making them is seconds of host work with the GPU idle)."""
    jobs = [(size, k) for size, counts in calls for k in counts]
    made = {job: [synthetic_items(encoder.name, [job[0]] * job[1], seed=1000 * job[1] + j) for j in range(repeats + 1)]
            for job in tqdm(jobs, desc="images", disable=not progress)}
    gc.collect()
    rows = []
    for (size, k) in tqdm(jobs, desc="encoder calls", disable=not progress):
        sets = made.pop((size, k))
        host_ms = sustained_median(lambda j: encoder(sets[j]), device, sustain_s=sustain_s, repeats=repeats)
        for items in sets:
            for item in items:
                item.to(device)
        device_ms = sustained_median(lambda j: encoder(sets[j]), device, sustain_s=sustain_s, repeats=repeats)
        units = [encoder.item_units(i, item) for i, item in enumerate(sets[0])]
        rows.append({"size": list(size), "images": k, "item_units": units, "item_rows": [it.num_tokens for it in sets[0]],
                     "packs": [[p.size, p.bucket] for p in pack(units, encoder.buckets)],
                     "host_pixels_ms": host_ms, "device_pixels_ms": device_ms})
        del sets
    return rows


def serving_rows(encoder, runner, sizes: dict[str, tuple[float, int]], preset: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every encoder call and every prefill step of a serving replay (``vitkit.sim.validate.validate``
    on a calibration draw of each stock workload, seed ``CALIBRATION_SEED``: other requests and
    arrival times than the validation's), both modes, timed pass only: (calls, each its items'
    rows and ms; prefill steps, each its ``(context, new)`` windows and ms). The prefill steps
    calibrate the prefill grid's model to serving (``vitkit.sim.prefill.fit_prefill_cost``)."""
    from vitkit.sim.stepcost import FlopPrefillCost, StepCosts, load_encoder_cost
    from vitkit.sim.validate import validate
    from vitkit.sim.workload import processing_items

    shadow = StepCosts(load_encoder_cost(), FlopPrefillCost())  # only its call bookkeeping is used
    rows = validate(encoder, runner, shadow, workloads=list(sizes), sizes=sizes, make_item=processing_items(preset),
                    seed=CALIBRATION_SEED)
    calls = [{"workload": r["workload"], "mode": r["mode"], "item_rows": items, "ms": ms}
             for r in rows for step in r["measured_steps"] for items, ms in zip(step["call_item_rows"], step["call_ms"])]
    steps = [{"workload": r["workload"], "mode": r["mode"], "windows": step["windows"], "ms": step["prefill_ms"]}
             for r in rows for step in r["measured_steps"] if step["windows"]]
    return calls, steps


def measure(preset: str, device: torch.device, dtype: torch.dtype, calls: Sequence, runner=None,
            serving: dict[str, tuple[float, int]] | None = None, progress: bool = True,
            sustain_s: float = SUSTAIN_S, encoder=None) -> dict[str, Any]:
    """Warm the encoder, time its bucket graphs and the probe ``calls``, then (with a prefill
    ``runner`` and ``serving`` sizes) the calls of a calibration serving replay. ``encoder``: one
    of ``preset`` already built on ``device`` (its warm-up is then only checked, not repeated)."""
    encoder = encoder or build_encoder(preset, device=device, dtype=dtype)
    # a warm encoder passed in reports its own cold warm-up (``vitkit.sim.validate._gpu_encoder`` keeps it)
    warm = getattr(encoder, "warmup_report", None) or encoder.warmup(progress=progress)
    stats = encoder.stats.copy()
    buckets = bucket_rows(encoder, device, progress, sustain_s)
    calls_measured = call_rows(encoder, device, calls, progress, sustain_s)
    after = encoder.stats - stats
    served, prefill_steps = serving_rows(encoder, runner, serving, preset) if runner is not None and serving else ([], [])
    return {
        "schema": SCHEMA, "kind": "gpu" if device.type == "cuda" else "cpu-smoke",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": machine_info(device), "versions": versions(),
        "settings": {"encoder": preset, "impl": encoder.impl, "dtype": str(dtype).removeprefix("torch."),
                     "buckets": list(encoder.buckets.sizes), "max_items": encoder.buckets.max_items,
                     "unit": encoder.unit, "fill_size": list(FILL_SIZE), "graphs": encoder.graphs is not None,
                     "timing": f"wall clock, synchronised before and after, median of {REPEATS} after "
                               f"{sustain_s} s of untimed calls; each timed call on images of its own",
                     "serving": {"sizes": serving or {}, "seed": CALIBRATION_SEED,
                                 "prefill": getattr(getattr(runner, "config", None), "name", None)},
                     "warmup_s": warm.seconds},
        "buckets": buckets, "calls": calls_measured, "serving_calls": served, "serving_prefill_steps": prefill_steps,
        "compiles_after_warmup": after.compiles, "captures_after_warmup": after.captures,
    }


def format_table(data: dict[str, Any]) -> str:
    lines = [f"{'bucket':>6} {'ms':>7}"] + [f"{r['bucket']:>6} {r['ms']:7.2f}" for r in data["buckets"]]
    lines.append(f"{'size':>9} {'k':>3} {'host px':>8} {'dev px':>8}")
    lines += [f"{'x'.join(map(str, r['size'])):>9} {r['images']:>3} {r['host_pixels_ms']:8.2f} {r['device_pixels_ms']:8.2f}"
              for r in data["calls"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitkit.bench.encoder_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for encoder-costs-<stamp>.json")
    parser.add_argument("--smoke", action="store_true", help="tiny Qwen tower on CPU, float32 (plumbing check)")
    parser.add_argument("--no-serving", action="store_true", help="skip the calibration serving replay")
    args = parser.parse_args(argv)
    from vitkit.bench.decoder import TINY_DECODER
    from vitkit.bench.prefill import PrefillRunner

    if args.smoke:
        device = torch.device("cpu")
        runner = None if args.no_serving else PrefillRunner(TINY_DECODER, device=device, dtype=torch.float32, compile=False)
        data = measure("qwen2.5-vl-tiny", device, torch.float32, SMOKE_CALLS, runner, SMOKE_SERVING, progress=False, sustain_s=0.02)
    else:
        device = torch.device(resolve_device(None))
        runner = None if args.no_serving else PrefillRunner(device=device)
        if runner is not None:
            runner.warmup()
        data = measure(PRESET, device, torch.bfloat16, CALLS, runner, SERVING)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"encoder-costs-{data['created']}.json"
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    print(format_table(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
