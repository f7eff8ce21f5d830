"""``python -m vitkit.bench encoder-costs``: the bucketed encoder's cost, measured part by part.

A stream's step times cannot tell apart buckets that occur together, and its pixels are on the GPU
already. So: each bucket's CUDA graph replayed alone (the cost's shape); whole calls, pixels on the
host and on the GPU (the host's share); and the calls and prefill steps of a calibration serving
replay, where calls run slower than alone. ``vitkit.costs`` fits its encoder and prefill models to it.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.bench.machine import parser, provenance, resolve_device, synchronize, table
from vitkit.bench.prefill import PrefillRunner
from vitkit.bench.validate import step_calls, validate
from vitkit.costs import results
from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import item_temporal, load_encoder_cost
from vitkit.costs.prefill import load_prefill_cost
from vitkit.encoders import build_encoder
from vitkit.encoders.buckets import pack
from vitkit.lm.decoder import TINY_DECODER
from vitkit.processing import synthetic_items
from vitkit.sim.workload import processing_items

PRESET = "qwen2.5-vl-7b"
FILL_SIZE = (448, 448)  # the image the bucket graphs are filled with
# (height, width) x counts of the whole-call probes: small to large images, one to many per call
CALLS = (((224, 224), (1, 4, 16)), ((448, 448), (1, 2, 3, 4, 6, 8, 12, 16)), ((896, 896), (1, 2, 3)),
         ((1344, 1008), (1, 2)))
SMOKE_CALLS = (((56, 56), (1, 2, 4)), ((112, 112), (1, 2)))
REPEATS = 9  # timed calls per point (median)
SUSTAIN_S = 1.0  # seconds of untimed calls before each point's timed calls
# The calibration serving replay: workload -> (rate /s, requests), half the validation's requests
# and another draw of them and their arrivals (``vitkit.bench.validate.validation_trace``).
SERVING = {"small-images": (40.0, 300), "large-images": (4.0, 80)}
SMOKE_SERVING = {"small-images": (40.0, 6), "large-images": (4.0, 2)}
CALIBRATION_SEED = 1


def sustained_median(fn: Callable[[int], Any], device: torch.device, *, sustain_s: float = SUSTAIN_S,
                     repeats: int = REPEATS) -> float:
    """Median ms of ``fn(1..repeats)``, synchronised around each, after ``fn(0)`` kept the card busy for
    ``sustain_s``, as a server's steps do."""
    start, warm = time.perf_counter(), 0
    while warm < 2 or time.perf_counter() - start < sustain_s:
        fn(0)
        warm += 1
    times = []
    for k in range(1, repeats + 1):
        synchronize(device)
        t0 = time.perf_counter()
        fn(k)
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fill_items(encoder: Any, bucket: int, size: tuple[int, int]) -> list:
    """As many ``size`` images as fit ``bucket`` (else the largest square that does), on the device."""
    def units(sz: tuple[int, int]) -> int:
        return encoder.item_units(0, synthetic_items(encoder.name, [sz])[0])

    if units(size) > bucket:
        side = 28 * int((bucket // 4) ** 0.5)  # (side / 14)^2 patches, a multiple of the 2x2 merge
        size = (side, side)
    items = synthetic_items(encoder.name, [size] * max(1, bucket // units(size)), seed=1)
    return [item.to(encoder.device) for item in items]


def bucket_rows(encoder: Any, device: torch.device, progress: bool,
                sustain_s: float = SUSTAIN_S) -> list[dict[str, Any]]:
    """Each bucket's graph replayed alone, its buffers holding ``fill_items``."""
    rows = []
    for bucket in tqdm(encoder.buckets.sizes, desc="bucket graphs", disable=not progress):
        items = fill_items(encoder, bucket, FILL_SIZE)
        with torch.inference_mode():
            if not encoder.fill(items, bucket):
                raise RuntimeError(f"bucket {bucket}: {len(items)} fill images overflow its window capacity")
            fn, args = encoder.bucket_fn(bucket), encoder.bucket_args(bucket)
            graphs = encoder.graphs
            replay = (lambda _: fn(*args)) if graphs is None else (lambda _: graphs.run(bucket, fn, args))
            ms = sustained_median(replay, device, sustain_s=sustain_s)
        units = sum(encoder.item_units(k, it) for k, it in enumerate(items))
        rows.append({"bucket": bucket, "images": len(items), "real_units": units, "ms": ms})
    return rows


def call_rows(encoder: Any, device: torch.device, calls: Sequence, progress: bool, sustain_s: float = SUSTAIN_S,
              repeats: int = REPEATS) -> list[dict[str, Any]]:
    """Whole calls, pixels on the host and on the device: ms of each and their packs. Every timed call
    has images of its own, made beforehand: no call finds its pixels left in the CPU's caches."""
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
        rows.append({"size": list(size), "images": k, "item_units": units,
                     "item_rows": [it.num_tokens for it in sets[0]],
                     "packs": [[p.size, p.bucket] for p in pack(units, encoder.buckets)],
                     "host_pixels_ms": host_ms, "device_pixels_ms": device_ms})
        del sets
    return rows


def serving_rows(encoder: Any, runner: Any, sizes: dict[str, tuple[float, int]],
                 preset: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[float]]:
    """(encoder calls: items' rows, a video's temporal patches beside them (``serving_call``), and ms; prefill
    steps: windows and ms; host ms around the encoder per step) of the calibration replay: the cost models'
    bookkeeping term is measured here, on this card."""
    shadow = StepCosts(load_encoder_cost(), load_prefill_cost())  # the stored card's: only its calls' items are used
    rows = validate(encoder, runner, shadow, workloads=list(sizes), sizes=sizes, make_item=processing_items(preset),
                    seed=CALIBRATION_SEED)
    steps = [(r, step) for r in rows for step in r["measured_steps"]]
    calls = [serving_call(r["workload"], r["mode"], items, ms)
             for r, step in steps for items, ms in zip(step_calls(step), step["call_ms"])]
    prefill = [{"workload": r["workload"], "mode": r["mode"], "windows": step["windows"], "ms": step["prefill_ms"]}
               for r, step in steps if step["windows"]]
    return calls, prefill, [ms for r in rows for ms in r["measured_bookkeeping_ms"]]


def serving_call(workload: str, mode: str, item_rows: Sequence[int], ms: float) -> dict[str, Any]:
    """One calibration call as the file keeps it: its items' rows, and for a call with a video each item's
    temporal patches (``item_temporal``: 0 an image) that ``measured_bucket_cost`` rebuilds its videos by."""
    call = {"workload": workload, "mode": mode, "item_rows": [int(r) for r in item_rows], "ms": ms}
    temporal = item_temporal(item_rows)
    return call if temporal is None else call | {"item_temporal": temporal}


def measure(preset: str, device: torch.device, dtype: torch.dtype, calls: Sequence, runner: Any = None,
            serving: dict[str, tuple[float, int]] | None = None, progress: bool = True,
            sustain_s: float = SUSTAIN_S, encoder: Any = None) -> dict[str, Any]:
    """The file: bucket graphs, probe ``calls`` and, with ``runner`` and ``serving``, the calibration replay."""
    encoder = encoder or build_encoder(preset, device=device, dtype=dtype)
    warm = getattr(encoder, "warmup_report", None) or encoder.warmup(progress=progress)
    stats = encoder.stats.copy()
    buckets = bucket_rows(encoder, device, progress, sustain_s)
    calls_measured = call_rows(encoder, device, calls, progress, sustain_s)
    after = encoder.stats - stats
    served, prefill_steps, bookkeeping = serving_rows(encoder, runner, serving, preset) if runner and serving else (
        [], [], [])
    timing = (f"wall clock, synchronised before and after, median of {REPEATS} after {sustain_s} s of untimed "
              f"calls; each timed call on images of its own")
    return {
        "schema": results.schema("encoder-costs"), **provenance(device), "created": results.stamp(),
        "settings": {"encoder": preset, "impl": encoder.impl, "dtype": str(dtype).removeprefix("torch."),
                     "buckets": list(encoder.buckets.sizes), "max_items": encoder.buckets.max_items,
                     "large_buckets": list(encoder.buckets.large),  # none replayed: priced by FLOPs
                     "unit": encoder.unit, "fill_size": list(FILL_SIZE), "graphs": encoder.graphs is not None,
                     "timing": timing, "serving": {"sizes": serving or {}, "seed": CALIBRATION_SEED,
                                                   "prefill": getattr(getattr(runner, "config", None), "name", None)},
                     "warmup_s": warm.seconds},
        "buckets": buckets, "calls": calls_measured, "serving_calls": served, "serving_prefill_steps": prefill_steps,
        "serving_bookkeeping_ms": bookkeeping,
        "compiles_after_warmup": after.compiles, "captures_after_warmup": after.captures,
    }


def format_table(data: dict[str, Any]) -> str:
    lines = table([("bucket", ">6", "bucket"), ("ms", "7.2f", "ms")], data["buckets"])
    lines += table([("size", ">9", lambda r: "x".join(map(str, r["size"]))), ("k", ">3", "images"),
                    ("host px", "8.2f", "host_pixels_ms"), ("dev px", "8.2f", "device_pixels_ms")], data["calls"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("encoder-costs", __doc__, "out", "smoke",
               out=dict(required=True, help="folder for encoder-costs-<stamp>.json"))
    p.add_argument("--no-serving", action="store_true", help="skip the calibration serving replay")
    args = p.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        runner = None if args.no_serving else PrefillRunner(TINY_DECODER, device=device, dtype=torch.float32,
                                                             compile=False)
        data = measure("qwen2.5-vl-tiny", device, torch.float32, SMOKE_CALLS, runner, SMOKE_SERVING, progress=False,
                       sustain_s=0.02)
    else:
        device = torch.device(resolve_device(None))
        runner = None if args.no_serving else PrefillRunner(device=device)
        if runner is not None:
            runner.warmup()
        data = measure(PRESET, device, torch.bfloat16, CALLS, runner, SERVING)
    path = results.write("encoder-costs", data, args.out / f"encoder-costs-{data['created']}.json")
    print(format_table(data))
    print(f"wrote {path}")
    return 0

