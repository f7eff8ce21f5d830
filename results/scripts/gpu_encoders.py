"""GPU check of vitkit's encoders: bf16 correctness of the batched path, and tower throughput.

(a) For each full preset, on the sample photographs: a float32 per-item reference (stock
    transformers forward), then the bf16 vitkit encoder per item and batched. Both bf16 outputs
    are compared with the reference by ||out - ref|| / ||ref|| over all rows; the batched error
    must not exceed 1.5x the per-item error (batching must add nothing beyond bf16 rounding).
(b) Qwen2.5-VL-7B tower, 16 x 448x448 images (and 1 image) batched, bf16: stock transformers
    (sdpa, Python loop over windows) vs vitkit-eager (one varlen kernel per layer) vs vitkit,
    the compiled + CUDA-graphed default; CLIP-L/336 at 64 images and 1 image likewise. CUDA events around
    the encoder call after warm-up, median over repeats; features already on the GPU.
(c) Writes JSON (``--out`` directory, else $OUT, else results/gpu_encoders) and prints a table.

Run on the GPU machine: ``PYTHONPATH=. python3 results/scripts/gpu_encoders.py``. ``--device cpu
--tiny`` runs the same code on the tiny presets (a smoke test of this script only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from vitkit.encoders import build_encoder
from vitkit.encoders.attention import varlen_attn
from vitkit.images import load_images
from vitkit.item import move_items_to_device
from vitkit.processing import make_items, synthetic_items

FULL = ("clip-l-336", "siglip-so400m-384", "qwen2.5-vl-7b")
TINY = ("clip-tiny", "siglip-tiny", "qwen2.5-vl-tiny")
TOLERANCE_RATIO = 1.5
FLOAT32_FLOOR = 1e-5


def rel_error(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    a = torch.cat([t.float() for t in out])
    b = torch.cat([t.float() for t in ref])
    return ((a - b).norm() / b.norm()).item()


def check_correctness(name: str, images, device: str, low: torch.dtype) -> dict:
    """Per-item float32 stock reference vs bf16 vitkit per item and batched (and stock batched)."""
    items = make_items(images, name)
    ref_enc = build_encoder(name, device=device, dtype=torch.float32, impl="stock")
    ref = [ref_enc([item])[0].float() for item in items]
    # float32 batched vitkit path (same float32 weights) vs the reference: a pure layout check.
    fp32_vitkit = rel_error(ref_enc.variant(impl="vitkit")(items), ref)
    enc = ref_enc.variant(dtype=low, impl="vitkit")
    del ref_enc
    per_item = [enc([item])[0] for item in items]
    batched = enc(items)
    stock_batched = enc.variant(impl="stock")(items)
    per_err, bat_err = rel_error(per_item, ref), rel_error(batched, ref)
    row = {
        "preset": name, "dtype": str(low).removeprefix("torch."), "images": len(items),
        "rows": sum(i.num_tokens for i in items), "rows_per_item": [i.num_tokens for i in items],
        "per_item_rel_err": per_err, "batched_rel_err": bat_err,
        "stock_batched_rel_err": rel_error(stock_batched, ref),
        "batched_vs_per_item_rel_err": rel_error(batched, per_item),
        "per_item_rel_err_max": max(rel_error([p], [r]) for p, r in zip(per_item, ref)),
        "batched_rel_err_max": max(rel_error([b], [r]) for b, r in zip(batched, ref)),
        "fp32_batched_vitkit_rel_err": fp32_vitkit,  # float32 vitkit vs float32 stock
        "ratio": bat_err / per_err if per_err > 0 else float("inf") if bat_err > 0 else 1.0,
    }
    # The floor covers float32 runs (CPU smoke), where both errors are rounding noise near 1e-7.
    row["passed"] = bat_err <= max(TOLERANCE_RATIO * per_err, FLOAT32_FLOOR)
    del enc
    _free(device)
    return row


def time_call(fn, device: str, warmup: int, repeats: int) -> dict:
    """Median / p10 / p90 milliseconds of ``fn()``: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return {"ms_median": statistics.median(times), "ms_p10": q[0], "ms_p90": q[-1], "repeats": repeats}


def matmul_peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    stats = time_call(lambda: a @ b, device, warmup=5, repeats=20)
    return 2 * n**3 / (stats["ms_median"] * 1e-3) / 1e12


def model_flops(enc, items) -> int | None:
    # Useful work only: CLIP's rows come from the penultimate layer, so its last layer is not counted.
    layers = getattr(enc, "layers", None)
    try:  # the bench helper's FLOP model (vitkit.bench.flops); MFU is left out without it
        from vitkit.bench.flops import items_flops

        return items_flops(enc.config, items, num_layers=len(layers) if layers is not None else None)
    except Exception as exc:
        print(f"no FLOP count: {type(exc).__name__}: {exc}")
        return None


def throughput(name: str, sizes: list[tuple[int, int]], device: str, low: torch.dtype, args, peak,
               compile_blocks: bool) -> list[dict]:
    """Stock vs vitkit (vs vitkit + compiled blocks) on the same bf16 weights and items."""
    enc = build_encoder(name, device=device, dtype=low, impl="vitkit")
    items = synthetic_items(name, sizes, seed=1)
    move_items_to_device(items, device)
    variants = [("stock-sdpa", enc.variant(impl="stock")), ("vitkit-eager", enc.variant(impl="vitkit-eager"))]
    if compile_blocks:  # impl="vitkit" on CUDA: compiled layers replayed from CUDA graphs
        variants.append(("vitkit", enc))
    flops = model_flops(enc, items)
    # float32 arithmetic over the same (bf16-valued) weights: what each bf16 variant approximates.
    fp32 = enc.variant(dtype=torch.float32, impl="stock")
    exact = fp32(items)
    del fp32
    _free(device)
    rows, reference = [], None
    for label, variant in variants:
        row = {"preset": name, "impl": label, "images": len(items), "size": list(sizes[0]),
               "tokens": sum(i.num_tokens for i in items), "dtype": str(low).removeprefix("torch.")}
        try:
            t0 = time.perf_counter()
            out = variant(items)
            row["first_call_s"] = time.perf_counter() - t0
            reference = reference or out
            row["rel_err_vs_stock"] = rel_error(out, reference)
            row["rel_err_vs_fp32"] = rel_error(out, exact)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row.update(time_call(lambda: variant(items), device, args.warmup, args.repeats))
            row["images_per_s"] = len(items) / row["ms_median"] * 1e3
            row["peak_mem_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
            row["model_flops"] = flops
            if flops and peak:
                row["mfu"] = flops / (row["ms_median"] * 1e-3) / (peak * 1e12)
        except Exception as exc:  # one failing variant must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-3000:]
        rows.append(row)
    del enc, variants, items
    _free(device)
    return rows


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def print_table(results: dict) -> None:
    print("\n== correctness (rel. error vs float32 per-item reference) ==")
    print(f"{'preset':20} {'per-item':>10} {'batched':>10} {'ratio':>6} {'stock-bat':>10} {'pass':>5}")
    for r in results["correctness"]:
        if "error" in r:
            print(f"{r['preset']:20} ERROR {r['error'][:80]}")
            continue
        print(f"{r['preset']:20} {r['per_item_rel_err']:10.3e} {r['batched_rel_err']:10.3e} "
              f"{r['ratio']:6.2f} {r['stock_batched_rel_err']:10.3e} {str(r['passed']):>5}")
    print(f"\n== throughput ({results['device_name']}, matmul peak {results['matmul_peak_tflops']} TFLOP/s) ==")
    print(f"{'preset':18} {'impl':15} {'imgs':>4} {'ms':>9} {'img/s':>9} {'MFU':>6} {'err vs fp32':>12}")
    for r in results["throughput"]:
        if "error" in r:
            print(f"{r['preset']:18} {r['impl']:15} {r['images']:4} ERROR {r['error'][:60]}")
            continue
        mfu = f"{r['mfu'] * 100:5.1f}%" if r.get("mfu") else "   -  "
        print(f"{r['preset']:18} {r['impl']:15} {r['images']:4} {r['ms_median']:9.2f} "
              f"{r['images_per_s']:9.1f} {mfu:>6} {r['rel_err_vs_fp32']:12.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output directory (default $OUT, else results/gpu_encoders)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny presets (script smoke test)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    device = args.device
    low = torch.bfloat16 if device == "cuda" else torch.float32
    names = TINY if args.tiny else FULL
    results = {
        "schema": "vitkit.gpu_encoders/1",
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                     "transformers": __import__("transformers").__version__},
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "compile": args.compile,
                     "tolerance_ratio": TOLERANCE_RATIO, "features_on_device": True},
        "varlen_attn_available": varlen_attn is not None,
        "matmul_peak_tflops": None, "correctness": [], "throughput": [],
    }
    images = load_images()
    for name in names:
        try:
            results["correctness"].append(check_correctness(name, images, device, low))
        except Exception as exc:
            results["correctness"].append({"preset": name, "error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc()[-3000:]})
        print(f"[{time.perf_counter() - started:6.1f}s] correctness {name}: {results['correctness'][-1]}", flush=True)
    peak = matmul_peak_tflops(device)
    results["matmul_peak_tflops"] = round(peak, 1) if peak else None
    qwen, clip = names[2], names[0]
    qwen_side, clip_n = (448, 64) if not args.tiny else (112, 8)
    for name, sizes, comp in ((qwen, [(qwen_side, qwen_side)] * 16, True), (qwen, [(qwen_side, qwen_side)], True),
                              (clip, [(336, 336)] * clip_n, True), (clip, [(336, 336)], True)):
        results["throughput"] += throughput(name, sizes, device, low, args, peak, comp and args.compile)
        print(f"[{time.perf_counter() - started:6.1f}s] throughput {name} x{len(sizes)} done", flush=True)
    results["elapsed_s"] = time.perf_counter() - started
    out_dir = Path(args.out or os.environ.get("OUT") or "results/gpu_encoders")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("encoders.json" if not args.tiny else "encoders-tiny.json")
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path} ({results['elapsed_s']:.0f} s)")
    print_table(results)


if __name__ == "__main__":
    main()
