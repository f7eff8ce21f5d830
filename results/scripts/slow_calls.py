"""Why one-image encoder calls were bimodal (6.4 or 9.3 ms) in the small-image GPU validation.

In ttft-validate-20261127T045832Z a 448x448 one-image call (bucket 1024) was slow in ~60% of the
batched pass's calls and in ~20% of the per-request pass's, nearly always the first call of its
step, i.e. the first encoder work after a 7B prefill step. This asks, on one GPU:

1. ``probes``: one-image calls (pixels on the host, a new image each call) each preceded by one
   of: nothing, a graphed 7B prefill step (2048 or 256 tokens), the same FLOPs of eager matmuls,
   a sleep, another encoder bucket's graph. Per call: wall ms, the host's time in ``fill`` and in
   the graph launch, the graph's GPU time (CUDA events), SM clock and power before and after
   (NVML when present).
2. ``passes``: the small-image validation trace (600 requests at 40/s) with the same per-call
   record: modes in the other order than the validation ran them, batched again, and both modes
   with the modelled prefill instead of the real one (is the prefill the trigger?).

    PYTHONPATH=. python results/scripts/slow_calls.py --out DIR      # one GPU, about 6 minutes

Writes ``slow-calls-<stamp>.json`` and prints a table per condition. Diagnostic only: the
maintained validation is ``python -m vitkit.sim validate``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from vitkit.bench.machine import machine_info, versions
from vitkit.processing import synthetic_items
from vitkit.sim.stepcost import StepCosts, default_prefill, load_encoder_cost
from vitkit.sim.timing import TimedEncoder
from vitkit.sim.validate import PRESET, _gpu_encoder, gpu_prefill_runner, validate
from vitkit.sim.workload import processing_items

try:
    import pynvml
except ImportError:  # the record keeps None for clocks and power
    pynvml = None

MEMORY_KEYS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")


class Nvml:
    """SM clock (MHz), power (W) and clock-event reasons of GPU 0, or Nones without NVML."""

    def __init__(self) -> None:
        self.handle = None
        if pynvml is not None:
            try:
                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            except Exception as e:  # noqa: BLE001 - a diagnostic keeps going without clocks
                print(f"NVML unavailable: {e}")

    def read(self) -> tuple[int | None, float | None, int | None]:
        if self.handle is None:
            return None, None, None
        h = self.handle
        reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM), pynvml.nvmlDeviceGetPowerUsage(h) / 1e3, int(reasons(h))


def memory_counters() -> dict[str, int]:
    stats = torch.cuda.memory_stats()
    host_stats = getattr(torch.cuda, "host_memory_stats", None) or getattr(torch.cuda.memory, "host_memory_stats", dict)
    host = {f"host.{k}": int(v) for k, v in host_stats().items() if isinstance(v, (int, float))}
    return {k: int(stats.get(k, 0)) for k in MEMORY_KEYS} | host


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


class Phases:
    """Per call: host ms in ``encoder.fill`` and in each graph launch, and each graph's GPU ms."""

    def __init__(self, encoder) -> None:
        self.fill_ms: list[float] = []
        self.launch_ms: list[float] = []
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        fill, run = encoder.fill, encoder.graphs.run

        def timed_fill(group, bucket):
            t0 = time.perf_counter()
            ok = fill(group, bucket)
            self.fill_ms.append((time.perf_counter() - t0) * 1e3)
            return ok

        def timed_run(key, fn, args):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            out = run(key, fn, args)
            end.record()
            self.launch_ms.append((time.perf_counter() - t0) * 1e3)
            self.events.append((start, end))
            return out

        encoder.fill, encoder.graphs.run = timed_fill, timed_run

    def take(self) -> dict[str, Any]:
        out = {"fill_ms": self.fill_ms, "launch_ms": self.launch_ms,
               "graph_gpu_ms": [s.elapsed_time(e) for s, e in self.events]}
        self.fill_ms, self.launch_ms, self.events = [], [], []
        return out


class ProbeTimer(TimedEncoder):
    """``TimedEncoder`` that also records, per call, its phases, clocks and allocator counters
    (read outside the timed span), into ``log`` under ``label``."""

    def __init__(self, encoder, phases: Phases, nvml: Nvml, log: list, label: str, read_before: bool = True) -> None:
        super().__init__(encoder)
        self.phases, self.nvml, self.log, self.label, self.read_before = phases, nvml, log, label, read_before

    def __call__(self, items):
        # in the passes NVML is read only after the call: a read before would lengthen the GPU's idle gap
        clock0, power0, reasons0 = self.nvml.read() if self.read_before else (None, None, None)
        mem0 = memory_counters()
        self.phases.take()
        t0 = time.time()
        out = super().__call__(items)
        clock1, power1, reasons1 = self.nvml.read()
        self.log.append({"label": self.label, "t0": t0, "rows": [it.num_tokens for it in items], "ms": self.calls_ms[-1],
                         "clock_before": clock0, "clock_after": clock1, "power_before": power0, "power_after": power1,
                         "reasons_before": reasons0, "reasons_after": reasons1, "memory": delta(memory_counters(), mem0)}
                        | self.phases.take())
        return out


def burn_matmuls(ms_target: float, device: torch.device) -> Any:
    """An eager bf16 matmul loop of about ``ms_target`` ms (calibrated once): a prefill's power
    draw without its graphs."""
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


def probes(encoder, runner, phases: Phases, nvml: Nvml, log: list, repeats: int = 40) -> None:
    images = synthetic_items(PRESET, [(448, 448)] * (repeats * 8), seed=7)
    other = [it.to(encoder.device) for it in synthetic_items(PRESET, [(448, 448)] * 4, seed=8)]
    prefill_ms = runner.step_ms([(0, 2048)])
    burn = burn_matmuls(prefill_ms, encoder.device)
    before = {
        "none": lambda: None,
        "prefill-2048": lambda: runner.step_ms([(0, 2048)]),
        "prefill-256": lambda: runner.step_ms([(0, 256)]),
        "matmuls": burn,
        "sleep-15ms": lambda: time.sleep(0.015),
        "encoder-4096": lambda: encoder(other),
    }
    k = 0
    for label, action in before.items():
        timer = ProbeTimer(encoder, phases, nvml, log, f"probe:{label}")
        for _ in range(repeats):
            action()
            torch.cuda.synchronize()
            timer([images[k % len(images)]])
            k += 1


class LoggedPrefill:
    """The prefill runner's ``step_ms``, each step's start, padded rows and ms kept in ``log``."""

    def __init__(self, runner, log: list) -> None:
        self.runner, self.log = runner, log

    def step_ms(self, windows, finishing=None) -> float:
        t0 = time.time()
        ms = self.runner.step_ms(windows) if finishing is None else self.runner.step_ms(windows, finishing)
        self.log.append({"t0": t0, "t1": time.time(), "rows": sum(n for _, n in windows), "windows": len(windows), "ms": ms})
        return ms


def passes(encoder, runner, phases: Phases, nvml: Nvml, log: list, prefill_log: list) -> list[dict[str, Any]]:
    costs = StepCosts(load_encoder_cost(model="measured"), default_prefill())
    runner = LoggedPrefill(runner, prefill_log)
    rows = []
    for label, modes, prefill in (("real-prefill", ("per_request", "batched"), runner),
                                  ("real-prefill-again", ("batched",), runner),
                                  ("modelled-prefill", ("batched", "per_request"), costs.prefill)):
        made = []

        def timer(enc, label=label, modes=modes):
            # validate makes one timer per pass: a warm pass, then the timed one, per mode in order
            mode, kind = modes[len(made) // 2], ("warm", "timed")[len(made) % 2]
            made.append(ProbeTimer(enc, phases, nvml, log, f"{label}:{mode}:{kind}", read_before=False))
            return made[-1]

        found = validate(encoder, prefill, costs, workloads=["small-images"], modes=modes,
                         make_item=processing_items(PRESET), timer=timer)
        rows += [{k: v for k, v in r.items() if k != "measured_steps"} | {"label": label} for r in found]
    return rows


def summary(log: list[dict[str, Any]], rows: list[int], slow_ms: float) -> list[str]:
    """Per condition, calls of ``rows``: wall ms quantiles, the share over ``slow_ms``, and for
    slow | fast calls the medians of host fill, host launch and graph GPU ms and the SM clock."""
    def med(calls, key):
        vals = [sum(r[key]) if isinstance(r.get(key), list) else r.get(key) for r in calls]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else float("nan")

    lines = [f"calls of {rows} rows (slow: over {slow_ms} ms); slow | fast medians",
             f"{'condition':<34} {'n':>4} {'p10':>6} {'p50':>6} {'p90':>6} {'slow':>5} {'fill':>11} {'launch':>11} "
             f"{'graph GPU':>13} {'MHz after':>11}"]
    for label in dict.fromkeys(r["label"] for r in log):
        calls = [r for r in log if r["label"] == label and r["rows"] == rows]
        if not calls:
            continue
        ms = sorted(r["ms"] for r in calls)
        slow, fast = [r for r in calls if r["ms"] > slow_ms], [r for r in calls if r["ms"] <= slow_ms]
        cols = " ".join(f"{med(slow, k):5.2f}|{med(fast, k):5.2f}" for k in ("fill_ms", "launch_ms", "graph_gpu_ms"))
        lines.append(f"{label:<34} {len(ms):>4} {ms[len(ms) // 10]:6.2f} {ms[len(ms) // 2]:6.2f} {ms[9 * len(ms) // 10]:6.2f} "
                     f"{len(slow) / len(ms):5.0%} {cols} {med(slow, 'clock_after'):5.0f}|{med(fast, 'clock_after'):5.0f}")
    return lines


def print_summary(log: list[dict[str, Any]]) -> None:
    for rows, slow_ms in (([256], 8.0), ([256, 256], 13.0)):
        print("\n".join(summary(log, rows, slow_ms)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-passes", action="store_true", help="probes only")
    args = parser.parse_args()
    nvml = Nvml()
    encoder = _gpu_encoder()
    runner = gpu_prefill_runner()
    print(f"warm-up: encoder {encoder.warmup_report.seconds:.1f} s, prefill {runner.warmup_s:.1f} s")
    phases, log, prefill_log = Phases(encoder), [], []
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out) / f"slow-calls-{stamp}.json"
    data = {"schema": "vitkit.slow-calls/1", "created": stamp, "machine": machine_info(), "versions": versions(),
            "nvml": nvml.handle is not None, "warmup": {"encoder_s": encoder.warmup_report.seconds, "prefill_s": runner.warmup_s},
            "rows": [], "calls": log, "prefill_steps": prefill_log}
    probes(encoder, runner, phases, nvml, log)
    path.write_text(json.dumps(data))  # the probes survive a pass that fails
    print_summary(log)
    if not args.skip_passes:
        data["rows"] = passes(encoder, runner, phases, nvml, log, prefill_log)
        path.write_text(json.dumps(data))
        print_summary(log)
    for r in data["rows"]:
        print(f"{r['label']:>20} {r['mode']:>11}: p50 {r['measured_p50_ms']:.1f} / {r['modelled_p50_ms']:.1f}, "
              f"p99 {r['measured_p99_ms']:.1f} / {r['modelled_p99_ms']:.1f} (measured / modelled)")
    print(path)


if __name__ == "__main__":
    main()
