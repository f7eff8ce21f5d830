"""``python -m vitkit.bench prefill``: the language model's chunked prefill over a grid of steps.

Qwen2.5-VL-7B's decoder (``vitkit.lm``, random weights) prefills steps of packed windows: tokens x
context x windows per step, plus mixed contexts, each timed with CUDA events (median after warm-up);
MFU against the run's own matmul peak, FLOPs from the shapes. ``vitkit.costs.prefill`` fits to it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench.machine import (Stopwatch, TimingStats, measure_matmul_peak, on_gpu, out_for, parser, provenance,
                                  resolve_device, synchronize, table, time_callable)
from vitkit.costs import results as files
from vitkit.lm.decoder import (GQA_EXPANDED_KV, QWEN2_5_VL_7B_TEXT, TINY_DECODER, VARLEN_CAUSAL_GQA, DecoderConfig,
                               PackedKV, PrefillDecoder, _reference_causal_attention, causal_attention, check_windows,
                               random_weights, step_layout, uses_varlen_kernel)
from vitkit.lm.flops import FLOP_FORMULA, prefill_flops
from vitkit.lm.graphs import PREFILL_GRAPH_BUCKETS, pad_to_bucket

# small steps too: a serving step of a few short requests is a few hundred tokens
TOKENS = (16, 64, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)
CONTEXTS = (0, 2048, 8192, 16384)
WINDOWS = (1, 4, 16)
# Steps whose windows have different contexts: the fit must add them up, not only fit uniform ones.
MIXED_CONTEXTS = (0, 2048, 8192, 16384)
MIXED_TOKENS = (1024, 4096)


class PrefillRunner:
    """The decoder on a device with a KV pool (random values); ``graph_buckets``: CUDA-graph segment sizes."""

    def __init__(self, config: DecoderConfig = QWEN2_5_VL_7B_TEXT, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.bfloat16, compile: bool = True, seed: int = 0,
                 graph_buckets: Sequence[int] | None = None) -> None:
        self.config = config
        self.device = torch.device(resolve_device(device))
        self.dtype = dtype
        self.weights = random_weights(config, device=self.device, dtype=dtype, seed=seed)
        if graph_buckets is None:  # graphs where they exist; `()` runs every step ungraphed
            graph_buckets = PREFILL_GRAPH_BUCKETS if self.device.type == "cuda" else ()
        self.graph_buckets = tuple(sorted(graph_buckets))
        self.model = PrefillDecoder(config, self.weights, compile=compile, graph_buckets=self.graph_buckets)
        self._gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warm = False
        self.warmup_s: float | None = None

    def reserve(self, kv_rows: int) -> None:
        """Make the KV pool hold at least ``kv_rows`` rows per layer (random values)."""
        if self._pool is not None and self._pool[0].shape[1] >= kv_rows:
            return
        self._pool = None  # free the old pool before making the new one
        c = self.config
        shape = (c.layers, -(-kv_rows // 1024) * 1024, c.kv_heads, c.head_dim)
        pool = tuple(torch.empty(shape, device=self.device, dtype=self.dtype) for _ in range(2))
        for t in pool:
            for layer in t:  # layer by layer: one fill of 4e9 elements would risk 32-bit indexing
                layer.normal_(generator=self._gen)
        self._pool = pool

    def prepare(self, windows: Sequence[tuple[int, int]],
                finishing: Sequence[bool] | None = None) -> tuple[torch.Tensor, Any, PackedKV]:
        """(token ids, layout, KV view) for a step, padded to its graph bucket (``pad_to_bucket``); untimed."""
        windows = check_windows(windows)
        if self.graph_buckets:
            windows, finishing = pad_to_bucket(windows, finishing, self.graph_buckets)
        layout = step_layout(windows, finishing=finishing, device=self.device)
        self.reserve(layout.kv_rows)
        k, v = self._pool
        kv = PackedKV(k[:, : layout.kv_rows], v[:, : layout.kv_rows])
        ids = torch.randint(0, self.config.vocab, (layout.rows,), generator=self._gen, device=self.device)
        return ids, layout, kv

    def warmup(self, progress: bool = True) -> float:
        """Compile and capture every graph bucket's segments; its seconds (a cold start), kept as ``warmup_s``."""
        start = time.perf_counter()
        largest = max(self.graph_buckets, default=256)
        for windows in ([(0, largest + 64)], [(100, 60), (0, 36)]):
            self.model.forward(*self.prepare(windows))
        if self.model.segments is not None:
            self.model.segments.capture(progress)
        synchronize(self.device)
        self._warm = True
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    def step_ms(self, windows: Sequence[tuple[int, int]], finishing: Sequence[bool] | None = None) -> float:
        """Prefill one step of ``(context, new)`` windows; its ms. ``finishing[i]``: window ``i`` ends its prompt."""
        if not self._warm:
            self.warmup()
        ids, layout, kv = self.prepare(windows, finishing)
        with Stopwatch(self.device) as watch:
            self.model.forward(ids, layout, kv)
        return watch.elapsed_ms()

    def time_step(self, windows: Sequence[tuple[int, int]], *, warmup: int = 2, repeats: int = 6) -> TimingStats:
        """Median and spread of ``repeats`` timed prefills of the same step after ``warmup``."""
        if not self._warm:
            self.warmup()
        ids, layout, kv = self.prepare(windows)
        return time_callable(lambda: self.model.forward(ids, layout, kv), device=self.device,
                             warmup=warmup, repeats=repeats)


def attention_check(config: DecoderConfig, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                    windows: Sequence[tuple[int, int]] = ((700, 300), (0, 256), (3000, 45))) -> float:
    """Relative error of the step's attention as run (varlen kernel in ``dtype`` on CUDA) against the
    float32 reference: order 1 for a wrong causal alignment or GQA grouping, ~1e-2 for bf16 rounding."""
    layout = step_layout(windows, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(rows: int, heads: int) -> torch.Tensor:
        return torch.randn(rows, heads, config.head_dim, generator=gen, device=device).to(dtype)

    q = randn(layout.rows, config.heads)
    k, v = randn(layout.kv_rows, config.kv_heads), randn(layout.kv_rows, config.kv_heads)
    got = causal_attention(q, k, v, layout).float()
    ref = _reference_causal_attention(q.float(), k.float(), v.float(), layout)
    return ((got - ref).norm() / ref.norm()).item()


def grid_points(tokens: Sequence[int] = TOKENS, contexts: Sequence[int] = CONTEXTS,
                windows: Sequence[int] = WINDOWS, mixed_tokens: Sequence[int] = MIXED_TOKENS) -> list[dict[str, Any]]:
    """The grid's steps ``{context, windows, step_windows}``: ``t`` tokens in ``w`` equal windows."""
    points = [{"context": c, "windows": w, "step_windows": [(c, t // w)] * w}
              for t in tokens for c in contexts for w in windows if t % w == 0]
    n = len(MIXED_CONTEXTS)
    return points + [{"context": None, "windows": n, "step_windows": [(c, t // n) for c in MIXED_CONTEXTS]}
                     for t in mixed_tokens]


def run_sweep(runner: PrefillRunner, points: Sequence[dict[str, Any]], peak_tflops: float, *,
              warmup: int = 2, repeats: int = 6) -> list[dict[str, Any]]:
    """A results row per point: its shape, timing and FLOP rate (the KV pool sized for the largest first)."""
    runner.reserve(max(sum(c + n for c, n in p["step_windows"]) for p in points))
    runner.warmup()
    rows = []
    for point in tqdm(points, desc="prefill", unit="step"):
        windows = [tuple(w) for w in point["step_windows"]]
        stats = runner.time_step(windows, warmup=warmup, repeats=repeats)
        flops = prefill_flops(runner.config, windows)
        tokens = sum(n for _, n in windows)
        tflops = flops.total / (stats.median_ms * 1e-3) / 1e12
        rows.append({
            "tokens": tokens, "context": point["context"], "windows": len(windows),
            "step_windows": [list(w) for w in windows], "kv_rows": sum(c + n for c, n in windows),
            "ms_median": stats.median_ms, "ms_p10": stats.p10_ms, "ms_p90": stats.p90_ms, "ms_min": stats.min_ms,
            "repeats": stats.repeats, "flops": flops.total, "gemm_flops": flops.gemm,
            "attention_flops": flops.attention, "lm_head_flops": flops.lm_head, "tflops": tflops,
            "mfu": tflops / peak_tflops, "tokens_per_s": tokens / (stats.median_ms * 1e-3),
        })
    return rows


def format_table(results: dict[str, Any]) -> str:
    context = ("context", ">8", lambda r: "mixed" if r["context"] is None else str(r["context"]))
    return "\n".join(table([("tokens", ">6", "tokens"), context, ("windows", ">7", "windows"),
                            ("ms", ">9.2f", "ms_median"), ("TFLOP/s", ">8.1f", "tflops"), ("MFU", ">6.1%", "mfu")],
                           results["rows"]))


def plot_results(results: dict[str, Any], path: str | Path) -> Path:
    """Step time and MFU against step tokens, one line per (context, windows)."""
    fig = Figure(figsize=(12, 4.5))  # no pyplot: no global figure state, no backend to pick
    ax_ms, ax_mfu = fig.subplots(1, 2)
    rows = [r for r in results["rows"] if r["context"] is not None]
    styles = dict(zip(sorted({r["windows"] for r in rows}), ("-", "--", ":", "-.")))
    colours = dict(zip(sorted({r["context"] for r in rows}), matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (ctx, w) in sorted({(r["context"], r["windows"]) for r in rows}):
        line = sorted((r for r in rows if (r["context"], r["windows"]) == (ctx, w)), key=lambda r: r["tokens"])
        kw = dict(color=colours[ctx], linestyle=styles[w], marker="o", ms=3, label=f"context {ctx}, {w} windows")
        ax_ms.plot([r["tokens"] for r in line], [r["ms_median"] for r in line], **kw)
        ax_mfu.plot([r["tokens"] for r in line], [100 * r["mfu"] for r in line], **kw)
    peak = results.get("matmul_peak", {}).get("label", "")
    for ax, label in ((ax_ms, "step time (ms)"), (ax_mfu, f"MFU (% of the measured {peak} matmul peak)")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="new tokens in the step", ylabel=label)
        ax.grid(alpha=0.3)
    ax_ms.set_yscale("log")
    ax_mfu.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{results['settings']['config']['name']} prefill, {results['machine']['device_name']} "
                 f"(decode not included)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("prefill", __doc__, "out", "smoke", "warmup", "repeats", warmup=dict(default=2), repeats=dict(default=6),
               out=dict(help="folder for the JSON and PNG (default results/<device>/)"),
               smoke=dict(help="tiny decoder, small grid, float32 (CPU plumbing check)"))
    p.add_argument("--eager", action="store_true", help="do not torch.compile the layers")
    args = p.parse_args(argv)
    if args.smoke:
        config, dtype, points = TINY_DECODER, torch.float32, grid_points((16, 64), (0, 32), (1, 4), (64,))
    else:
        config, dtype, points = QWEN2_5_VL_7B_TEXT, torch.bfloat16, grid_points()
    runner = PrefillRunner(config, dtype=dtype, compile=not args.eager and not args.smoke)
    try:
        out = out_for(args.out, runner.device, "gpu" if on_gpu(runner.device) else "cpu-smoke")
    except files.Refused as err:
        print(f"vitkit.bench prefill: refused: {err}", file=sys.stderr)
        return 2
    check = attention_check(config, runner.device, dtype)
    if check > 2e-2:  # before spending minutes timing a wrong kernel
        raise RuntimeError(f"the step's attention differs from the float32 reference: relative error {check:.3g}")
    peak = measure_matmul_peak(runner.device)
    rows = run_sweep(runner, points, peak.tflops, warmup=args.warmup, repeats=args.repeats)
    attention = ("varlen_attn " + json.dumps(VARLEN_CAUSAL_GQA) if uses_varlen_kernel(runner.weights.embed)
                 else "reference (matmul + mask)")
    results = {
        "schema": files.schema("prefill"), **provenance(runner.device), "matmul_peak": asdict(peak),
        "settings": {"config": asdict(config), "dtype": str(dtype).removeprefix("torch."),
                     "compiled": runner.model.compiled,
                     "cuda_graphs": bool(runner.graph_buckets) and runner.device.type == "cuda",
                     "graph_buckets": list(runner.graph_buckets), "attention": attention,
                     "gqa_kv_heads_repeated": GQA_EXPANDED_KV[0], "attention_check_rel_error": check,
                     "kv_cache": "contiguous per window, context keys/values random",
                     "lm_head": "last token of every window",
                     "warmup": args.warmup, "repeats": args.repeats, "decode": "not included"},
        "flop_formula": FLOP_FORMULA,
        "rows": rows,
    }
    path = files.write("prefill", results, out / f"prefill-{files.stamp()}.json")
    plot_results(results, path.with_suffix(".png"))
    print(format_table(results))
    print(f"peak {peak.tflops:.0f} TFLOP/s ({peak.label}); wrote {path} and {path.with_suffix('.png').name}")
    return 0
