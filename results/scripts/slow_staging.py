"""Which part of staging a call's pixels is slow after a 7B prefill step (slow_calls.py found the
bimodal one-image calls' extra 2-4 ms in ``encoder.fill``, on the host, not in the graph).

For one 448x448 image (pixels on the host, a new image each time), after each of: nothing, a
graphed 7B prefill step of 2048 tokens, eager matmuls of the same length, a 15 ms sleep, this
times every step of the staging with host timers, then a sync:

- ``pinned-per-call`` (today's ``gather_features``): concatenate into a new pinned buffer from
  the caching host allocator, non-blocking copy, cast to bf16 on the GPU, copy into the static
  buffer;
- ``pinned-persistent``: the same into one pinned buffer allocated once;
- ``pageable``: concatenate into pageable memory, blocking copy;
- ``memcpy``: the concatenation alone, into a pageable buffer allocated once; ``memcpy-1thread``
  the same with one intra-op thread; ``numpy-copy``: ``np.copyto`` of the same bytes.

    PYTHONPATH=. python results/scripts/slow_staging.py --out DIR      # one GPU, about 2 minutes

Writes ``slow-staging-<stamp>.json`` and prints, per condition and variant, the median and p90 of
each step's host ms. Diagnostic only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.bench.machine import machine_info, versions
from vitkit.bench.prefill import PrefillRunner
from vitkit.encoders.base import join_host
from vitkit.processing import synthetic_items

PRESET = "qwen2.5-vl-7b"
REPEATS = 30


class Steps:
    """Host ms of named steps since ``start``."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks.append((name, (now - self.t) * 1e3))
        self.t = now


def variants(device: torch.device, rows: int, width: int) -> dict[str, Callable[[list[torch.Tensor], Steps], None]]:
    patches = torch.zeros(rows, width, device=device, dtype=torch.bfloat16)
    pinned = torch.empty(rows, width, pin_memory=True)
    pageable = torch.empty(rows, width)
    pageable_np = pageable.numpy()

    def pinned_per_call(parts, s):
        host = join_host(parts, "cat", pin=True)
        s.mark("cat")
        dev = host.to(device, non_blocking=True)
        s.mark("h2d")
        dev = dev.to(torch.bfloat16)
        s.mark("cast")
        patches.copy_(dev)
        s.mark("copy")

    def pinned_persistent(parts, s):
        torch.cat(parts, out=pinned)
        s.mark("cat")
        dev = pinned.to(device, non_blocking=True)
        s.mark("h2d")
        patches.copy_(dev.to(torch.bfloat16))
        s.mark("cast+copy")

    def pageable_copy(parts, s):
        host = torch.cat(parts)
        s.mark("cat")
        dev = host.to(device)
        s.mark("h2d")
        patches.copy_(dev.to(torch.bfloat16))
        s.mark("cast+copy")

    def memcpy(parts, s):
        torch.cat(parts, out=pageable)
        s.mark("cat")

    def memcpy_1thread(parts, s):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.cat(parts, out=pageable)
        finally:
            torch.set_num_threads(threads)
        s.mark("cat")

    def numpy_copy(parts, s):
        np.copyto(pageable_np, parts[0].numpy())
        s.mark("copy")

    return {"pinned-per-call": pinned_per_call, "pinned-persistent": pinned_persistent, "pageable": pageable_copy,
            "memcpy": memcpy, "memcpy-1thread": memcpy_1thread, "numpy-copy": numpy_copy}


def burn_matmuls(ms_target: float, device: torch.device) -> Callable[[], None]:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    n = max(1, round(ms_target / ((time.perf_counter() - t0) * 100)))

    def burn() -> None:
        for _ in range(n):
            a @ a
    return burn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    runner = PrefillRunner(device=device)
    runner.warmup()
    images = [it.feature for it in synthetic_items(PRESET, [(448, 448)] * 64, seed=7)]
    rows, width = images[0].shape
    prefill_ms = runner.step_ms([(0, 2048)])
    conditions = {"none": lambda: None, "prefill-2048": lambda: runner.step_ms([(0, 2048)]),
                  "matmuls": burn_matmuls(prefill_ms, device), "sleep-15ms": lambda: time.sleep(0.015)}
    log, k = [], 0
    for cond, action in conditions.items():
        for name, fn in variants(device, rows, width).items():
            for _ in range(REPEATS):
                action()
                torch.cuda.synchronize()
                s = Steps()
                fn([images[k % len(images)]], s)
                torch.cuda.synchronize()
                s.mark("sync")
                k += 1
                log.append({"condition": cond, "variant": name, "steps": s.marks, "total_ms": sum(ms for _, ms in s.marks)})
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out) / f"slow-staging-{stamp}.json"
    path.write_text(json.dumps({"schema": "vitkit.slow-staging/1", "created": stamp, "machine": machine_info(),
                                "versions": versions(), "intra_op_threads": torch.get_num_threads(),
                                "image_bytes": images[0].numel() * 4, "calls": log}))
    print(f"intra-op threads {torch.get_num_threads()}; host ms, median (p90) per step")
    for cond in conditions:
        for name in dict.fromkeys(r["variant"] for r in log):
            calls = [r for r in log if r["condition"] == cond and r["variant"] == name]
            cols = []
            for step, _ in calls[0]["steps"]:
                vals = sorted(dict(r["steps"])[step] for r in calls)
                cols.append(f"{step} {statistics.median(vals):.2f} ({vals[9 * len(vals) // 10]:.2f})")
            print(f"{cond:<13} {name:<18} " + "  ".join(cols))
    print(path)


if __name__ == "__main__":
    main()
