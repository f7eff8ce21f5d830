"""``python -m vitkit.bench.encoder_costs``: the bucketed encoder's cost, measured part by part.

The TTFT replay needs the cost of one encoder call. Fitting it to a stream's step times (each
step one sum of bucket graphs) gave bucket ms that were off by up to 30% for single calls on the
H100 (the fit cannot tell buckets apart that mostly occur together), and the stream's pixels sat
on the GPU already, where a server's come from the host. So this measures the two parts directly:

1. every bucket's CUDA graph replayed alone (its static buffers filled with 448x448 images, as
   many as fit, the rest padding): ``bucket_ms``;
2. whole calls of real processor outputs of several sizes and counts, pixels on the host (as
   the replay and a server feed them) and on the GPU: the host's share of a call (checking,
   layout, staging pixels through pinned memory, splitting rows) is the call minus its graphs.

Both under the load a server puts on the GPU (``Load``): a second of untimed calls first, and a
decoder prefill step before every call. ``vitkit.sim.bucketcost.measured_bucket_cost`` turns the
file into the replay's encoder model.
Writes ``encoder-costs-<stamp>.json`` (schema ``vitkit.encoder-costs/1``) and prints a table.

    python -m vitkit.bench.encoder_costs --out results/h100     # GPU, about 2 minutes
    python -m vitkit.bench.encoder_costs --smoke --out /tmp/x   # tiny tower on CPU: the plumbing
"""

from __future__ import annotations

import argparse
import gc
import datetime as dt
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
PREFILL_TOKENS = 1024  # the decoder step run before every call: between a small and a large image's step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Load:
    """What keeps the GPU busy around the timed calls, as a server's steps do: ``sustain_s``
    seconds of untimed calls first, and ``between`` (a language-model prefill step, untimed)
    before every call, warm-up and timed alike. Without it the encoder's calls ran 15-20% faster
    on the H100 than inside the TTFT replay, where every encoder call follows a 7B prefill."""

    sustain_s: float = SUSTAIN_S
    between: Callable[[], Any] | None = None
    label: str = "none"


def sustained_median(fn: Callable[[int], Any], device: torch.device, load: Load = Load(), *, repeats: int = REPEATS) -> float:
    """Median wall time of ``fn(1) .. fn(repeats)`` after running ``fn(0)`` untimed for
    ``load.sustain_s`` seconds (at least twice), each call preceded by ``load.between``. Each
    timed call is synchronised before and after (the host's work counts)."""
    def one(k: int) -> None:
        if load.between is not None:
            load.between()
        fn(k)

    start, warm = time.perf_counter(), 0
    while warm < 2 or time.perf_counter() - start < load.sustain_s:
        one(0)
        warm += 1
    times = []
    for k in range(1, repeats + 1):
        if load.between is not None:
            load.between()
        _sync(device)
        t0 = time.perf_counter()
        fn(k)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def prefill_load(device: torch.device, tokens: int, sustain_s: float = SUSTAIN_S) -> Load:
    """A ``Load`` whose ``between`` is a Qwen2.5-VL-7B decoder prefill of one ``tokens``-token
    window (a tiny decoder off CUDA: the plumbing), as the replay runs one after each encoder call."""
    from vitkit.bench.decoder import TINY_DECODER
    from vitkit.bench.prefill import PrefillRunner

    runner = PrefillRunner(device=device) if device.type == "cuda" else PrefillRunner(TINY_DECODER, device=device, compile=False)
    runner.warmup(progress=False)
    step = runner.prepare([(0, tokens)])

    def between() -> None:
        runner.model.forward(*step)

    return Load(sustain_s, between, f"{runner.config.name} prefill of {tokens} tokens before every call")


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


def bucket_rows(encoder, device: torch.device, progress: bool, load: Load = Load()) -> list[dict[str, Any]]:
    """Each bucket's graph replayed alone, its buffers holding ``fill_items``."""
    rows = []
    for bucket in tqdm(encoder.buckets.sizes, desc="bucket graphs", disable=not progress):
        items = fill_items(encoder, bucket, FILL_SIZE)
        with torch.inference_mode():
            if not encoder.fill(items, bucket):
                raise RuntimeError(f"bucket {bucket}: {len(items)} fill images overflow its window capacity")
            fn, args = encoder.bucket_fn(bucket), encoder.bucket_args(bucket)
            if encoder.graphs is not None:
                ms = sustained_median(lambda _: encoder.graphs.run(bucket, fn, args), device, load)
            else:
                ms = sustained_median(lambda _: fn(*args), device, load)
        rows.append({"bucket": bucket, "images": len(items), "real_units": sum(encoder.item_units(k, it) for k, it in enumerate(items)),
                     "ms": ms})
    return rows


def call_rows(encoder, device: torch.device, calls: Sequence, progress: bool, load: Load = Load(),
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
        host_ms = sustained_median(lambda j: encoder(sets[j]), device, load, repeats=repeats)
        for items in sets:
            for item in items:
                item.to(device)
        device_ms = sustained_median(lambda j: encoder(sets[j]), device, load, repeats=repeats)
        units = [encoder.item_units(i, item) for i, item in enumerate(sets[0])]
        rows.append({"size": list(size), "images": k, "item_units": units, "item_rows": [it.num_tokens for it in sets[0]],
                     "packs": [[p.size, p.bucket] for p in pack(units, encoder.buckets)],
                     "host_pixels_ms": host_ms, "device_pixels_ms": device_ms})
        del sets
    return rows


def measure(preset: str, device: torch.device, dtype: torch.dtype, calls: Sequence, load: Load = Load(),
            progress: bool = True) -> dict[str, Any]:
    encoder = build_encoder(preset, device=device, dtype=dtype)
    warm = encoder.warmup(progress=progress)
    stats = encoder.stats.copy()
    buckets = bucket_rows(encoder, device, progress, load)
    calls_measured = call_rows(encoder, device, calls, progress, load)
    after = encoder.stats - stats
    return {
        "schema": SCHEMA, "kind": "gpu" if device.type == "cuda" else "cpu-smoke",
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": machine_info(device), "versions": versions(),
        "settings": {"encoder": preset, "impl": encoder.impl, "dtype": str(dtype).removeprefix("torch."),
                     "buckets": list(encoder.buckets.sizes), "max_items": encoder.buckets.max_items,
                     "unit": encoder.unit, "fill_size": list(FILL_SIZE), "graphs": encoder.graphs is not None,
                     "timing": f"wall clock, synchronised before and after, median of {REPEATS} after "
                               f"{load.sustain_s} s of untimed calls; each timed call on images of its own",
                     "load": load.label,
                     "warmup_s": warm.seconds},
        "buckets": buckets, "calls": calls_measured,
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
    parser.add_argument("--prefill-tokens", type=int, default=PREFILL_TOKENS,
                        help="tokens of the decoder prefill run before every call (0: none, the encoder alone)")
    args = parser.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        load = prefill_load(device, 16, sustain_s=0.02) if args.prefill_tokens else Load(0.02)
        data = measure("qwen2.5-vl-tiny", device, torch.float32, SMOKE_CALLS, load, progress=False)
    else:
        device = torch.device(resolve_device(None))
        load = prefill_load(device, args.prefill_tokens) if args.prefill_tokens else Load()
        data = measure(PRESET, device, torch.bfloat16, CALLS, load)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"encoder-costs-{data['created']}.json"
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    print(format_table(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
