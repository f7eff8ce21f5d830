"""``python -m vitkit.bench.prefill``: the language model's chunked prefill, measured on the GPU.

Qwen2.5-VL-7B's decoder (``vitkit.bench.decoder``: published text config, random bf16 weights,
fused QKV and gate/up GEMMs, layers compiled once with the row count dynamic, varlen flash
attention over a KV cache; steps of up to 2048 rows padded to a row bucket and run as CUDA-graph
segments between eager attention calls, ``vitkit.bench.decoder_graphs``) prefills steps of packed windows over a grid of step
tokens x context before each window x windows per step, plus a few steps whose windows have
different contexts. Each point is timed with CUDA events (median after warm-up); MFU is against
the bf16 matmul peak measured in the same run. Writes ``prefill-<stamp>.json`` and a PNG under
``--out`` (default ``results/<device>/``) and prints a short table.

FLOPs (``prefill_flops``; 2 per multiply-add, counted from the shapes) for a step of windows
``(c_i, n_i)`` with ``N = sum n_i``, per layer:
  GEMMs      2 N (d (q + 2 kv) + q d + 2 d I + I d)        (QKV, output, gate+up, down)
  attention  4 H h sum_i n_i (c_i + n_i / 2)                (QK^T and PV; causal: each new token
                                                             sees its context and half the window)
plus the LM head 2 d V per finishing window (its last token only). d hidden, q = H h query width,
kv = H_kv h, I intermediate, V vocab. Norms, rotary, activations and the embedding lookup are not
counted (they are not matrix products).

    python -m vitkit.bench.prefill --out results/h100      # GPU, about 3 minutes on an H100
    python -m vitkit.bench.prefill --smoke --out /tmp/x    # tiny decoder on CPU: checks the plumbing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench.decoder import (
    GQA_EXPANDED_KV,
    QWEN2_5_VL_7B_TEXT,
    TINY_DECODER,
    VARLEN_CAUSAL_GQA,
    DecoderConfig,
    PackedKV,
    PrefillDecoder,
    _reference_causal_attention,
    causal_attention,
    check_windows,
    random_weights,
    step_layout,
    uses_varlen_kernel,
)
from vitkit.bench.decoder_graphs import PREFILL_GRAPH_BUCKETS, pad_to_bucket
from vitkit.bench.machine import machine_info, measure_matmul_peak, resolve_device, versions
from vitkit.bench.timing import Stopwatch, TimingStats, synchronize, time_callable

SCHEMA = "vitkit.prefill/1"
# small steps too: a serving step of a few short requests is a few hundred tokens
TOKENS = (16, 64, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)
CONTEXTS = (0, 2048, 8192, 16384)
WINDOWS = (1, 4, 16)
# Steps whose windows have different contexts: the fit must add them up, not only fit uniform ones.
MIXED_CONTEXTS = (0, 2048, 8192, 16384)
MIXED_TOKENS = (1024, 4096)


@dataclass(frozen=True)
class PrefillFlops:
    """A step's FLOPs (2 per multiply-add) by kind; see the module docstring for the formula."""

    gemm: int
    attention: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.gemm + self.attention + self.lm_head


def prefill_flops(config: DecoderConfig, windows: Sequence[tuple[int, int]], *, causal: bool = True,
                  logits_rows: int | None = None) -> PrefillFlops:
    """FLOPs of prefilling ``windows`` (``(context, new)`` pairs). ``causal=False`` counts the
    whole ``new x (context + new)`` score block (what a masked dense reference computes).
    ``logits_rows``: rows through the LM head (default one per window)."""
    windows = check_windows(windows)
    c = config
    rows = sum(new for _, new in windows)
    per_row = c.hidden * (c.q_width + 2 * c.kv_width) + c.q_width * c.hidden + 3 * c.hidden * c.intermediate
    if causal:  # sum n (c + n/2), kept in integers: 4 n c + 2 n^2
        attn = sum(4 * new * ctx + 2 * new * new for ctx, new in windows)
    else:
        attn = sum(4 * new * (ctx + new) for ctx, new in windows)
    logits_rows = len(windows) if logits_rows is None else logits_rows
    return PrefillFlops(gemm=2 * rows * per_row * c.layers, attention=attn * c.heads * c.head_dim * c.layers,
                        lm_head=2 * logits_rows * c.hidden * c.vocab)


class PrefillRunner:
    """The decoder on a device with a KV pool, ready to time steps.

    ``step_ms(windows)`` really prefills the step (each window's context keys and values are
    already in the pool, random values; the new ones are written into it) and returns its
    CUDA-event time in ms (perf_counter on CPU). ``warmup`` compiles (about a minute for the 7B)
    and captures every graph bucket's segments (``graph_buckets``, default
    ``PREFILL_GRAPH_BUCKETS`` on CUDA, none elsewhere; ``()`` runs every step ungraphed). The
    pool holds ``sum(context + new)`` rows per layer (plus a padding window's): 56 KiB a row for
    the 7B in bf16."""

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
        pool = (torch.empty(shape, device=self.device, dtype=self.dtype), torch.empty(shape, device=self.device, dtype=self.dtype))
        for t in pool:
            for layer in t:  # layer by layer: one fill of 4e9 elements would risk 32-bit indexing
                layer.normal_(generator=self._gen)
        self._pool = pool

    def prepare(self, windows: Sequence[tuple[int, int]], finishing: Sequence[bool] | None = None):
        """(token ids, layout, KV view) for a step, padded to its graph bucket (one more window
        of its own, ``pad_to_bucket``); nothing of this is timed."""
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
        """Compile (row count dynamic), run two step shapes once (one over the largest graph
        bucket, ungraphed) and capture every graph bucket's segments; its seconds (a server's
        cold start pays them), also kept as ``warmup_s``."""
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
        """Prefill one step of ``(context_tokens, new_tokens)`` windows; its time in ms.
        ``finishing[i]``: window ``i`` ends its prompt (LM head on its last token); default all."""
        if not self._warm:
            self.warmup()
        ids, layout, kv = self.prepare(windows, finishing)
        watch = Stopwatch(self.device)
        watch.start()
        self.model.forward(ids, layout, kv)
        watch.stop()
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
    """Relative error (Frobenius) of the step's attention as the bench runs it (the varlen kernel
    in ``dtype`` on CUDA) against the float32 masked reference on the same inputs. A wrong causal
    alignment or GQA grouping gives an error of order 1; bf16 rounding about 1e-2 or less."""
    layout = step_layout(windows, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(rows: int, heads: int) -> torch.Tensor:
        return torch.randn(rows, heads, config.head_dim, generator=gen, device=device).to(dtype)

    q, k, v = randn(layout.rows, config.heads), randn(layout.kv_rows, config.kv_heads), randn(layout.kv_rows, config.kv_heads)
    got = causal_attention(q, k, v, layout).float()
    ref = _reference_causal_attention(q.float(), k.float(), v.float(), layout)
    return ((got - ref).norm() / ref.norm()).item()


def grid_points(tokens: Sequence[int] = TOKENS, contexts: Sequence[int] = CONTEXTS,
                windows: Sequence[int] = WINDOWS, mixed_tokens: Sequence[int] = MIXED_TOKENS) -> list[dict[str, Any]]:
    """The sweep's steps: ``{"context": c or None, "windows": w, "step_windows": [...]}``. A
    uniform step splits ``t`` tokens into ``w`` equal windows (pairs with ``t % w`` are skipped)."""
    points = [{"context": c, "windows": w, "step_windows": [(c, t // w)] * w}
              for t in tokens for c in contexts for w in windows if t % w == 0]
    for t in mixed_tokens:
        n = len(MIXED_CONTEXTS)
        points.append({"context": None, "windows": n, "step_windows": [(c, t // n) for c in MIXED_CONTEXTS]})
    return points


def measure_point(runner: PrefillRunner, point: dict[str, Any], peak_tflops: float, *, warmup: int,
                  repeats: int) -> dict[str, Any]:
    """One results row: the step's shape, its timing and its FLOP rate."""
    windows = [tuple(w) for w in point["step_windows"]]
    stats = runner.time_step(windows, warmup=warmup, repeats=repeats)
    flops = prefill_flops(runner.config, windows)
    tokens = sum(n for _, n in windows)
    tflops = flops.total / (stats.median_ms * 1e-3) / 1e12
    return {
        "tokens": tokens, "context": point["context"], "windows": len(windows),
        "step_windows": [list(w) for w in windows], "kv_rows": sum(c + n for c, n in windows),
        "ms_median": stats.median_ms, "ms_p10": stats.p10_ms, "ms_p90": stats.p90_ms, "ms_min": stats.min_ms,
        "repeats": stats.repeats, "flops": flops.total, "gemm_flops": flops.gemm,
        "attention_flops": flops.attention, "lm_head_flops": flops.lm_head, "tflops": tflops,
        "mfu": tflops / peak_tflops, "tokens_per_s": tokens / (stats.median_ms * 1e-3),
    }


def run_sweep(runner: PrefillRunner, points: Sequence[dict[str, Any]], peak_tflops: float, *,
              warmup: int = 2, repeats: int = 6) -> list[dict[str, Any]]:
    """Measure every point (tqdm progress); the KV pool is sized for the largest step first."""
    runner.reserve(max(sum(c + n for c, n in p["step_windows"]) for p in points))
    runner.warmup()
    return [measure_point(runner, p, peak_tflops, warmup=warmup, repeats=repeats)
            for p in tqdm(points, desc="prefill", unit="step")]


def format_table(results: dict[str, Any]) -> str:
    """tokens, context, windows, ms, TFLOP/s, MFU: one line per row."""
    lines = [f"{'tokens':>6} {'context':>8} {'windows':>7} {'ms':>9} {'TFLOP/s':>8} {'MFU':>6}"]
    for r in results["rows"]:
        ctx = "mixed" if r["context"] is None else str(r["context"])
        lines.append(f"{r['tokens']:>6} {ctx:>8} {r['windows']:>7} {r['ms_median']:>9.2f} {r['tflops']:>8.1f} "
                     f"{r['mfu']:>6.1%}")
    return "\n".join(lines)


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
        ax.set_xlabel("new tokens in the step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_ms.set_yscale("log")
    ax_mfu.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{results['settings']['config']['name']} prefill, {results['machine']['device_name']} "
                 f"(decode not included)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vitkit.bench.prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON and PNG (default results/<device>/)")
    p.add_argument("--smoke", action="store_true", help="tiny decoder, small grid, float32 (CPU plumbing check)")
    p.add_argument("--eager", action="store_true", help="do not torch.compile the layers")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        config, dtype, points = TINY_DECODER, torch.float32, grid_points((16, 64), (0, 32), (1, 4), (64,))
    else:
        config, dtype, points = QWEN2_5_VL_7B_TEXT, torch.bfloat16, grid_points()
    runner = PrefillRunner(config, dtype=dtype, compile=not args.eager and not args.smoke)
    check = attention_check(config, runner.device, dtype)
    if check > 2e-2:  # before spending minutes timing a wrong kernel
        raise RuntimeError(f"the step's attention differs from the float32 reference: relative error {check:.3g}")
    machine = machine_info(runner.device)
    peak = measure_matmul_peak(runner.device)
    rows = run_sweep(runner, points, peak.tflops, warmup=args.warmup, repeats=args.repeats)
    results = {
        "schema": SCHEMA, "kind": "cpu-smoke" if runner.device.type == "cpu" else "gpu",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "versions": versions(), "matmul_peak": asdict(peak),
        "settings": {"config": asdict(config), "dtype": str(dtype).removeprefix("torch."),
                     "compiled": runner.model.compiled,
                     "cuda_graphs": bool(runner.graph_buckets) and runner.device.type == "cuda",
                     "graph_buckets": list(runner.graph_buckets),
                     "attention": "varlen_attn " + json.dumps(VARLEN_CAUSAL_GQA)
                     if uses_varlen_kernel(runner.weights.embed) else "reference (matmul + mask)",
                     "gqa_kv_heads_repeated": GQA_EXPANDED_KV[0], "attention_check_rel_error": check,
                     "kv_cache": "contiguous per window, context keys/values random", "lm_head": "last token of every window",
                     "warmup": args.warmup, "repeats": args.repeats, "decode": "not included"},
        "flop_formula": __doc__.split("FLOPs (")[1].split("\n\n")[0],
        "rows": rows,
    }
    folder = args.out or Path(__file__).resolve().parents[2] / "results" / machine["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"prefill-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    plot_results(results, path.with_suffix(".png"))
    print(format_table(results))
    print(f"peak {peak.tflops:.0f} TFLOP/s ({peak.label}); wrote {path} and {path.with_suffix('.png').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
