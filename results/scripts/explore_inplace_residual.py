"""H100 exploration 5: residual accumulated in place by the GEMM (vitkit::addmm_into) vs torch.addmm.

Run when both CLIP and Qwen layers used ``residual_linear``; after it, the Qwen block keeps torch.addmm.

PYTHONPATH=. python3 results/scripts/explore_inplace_residual.py --out $OUT
"""

import argparse
import json

import torch

import vitkit.encoders.fused as fused
from vitkit.bench.flops import items_flops
from vitkit.bench.machine import measure_matmul_peak
from vitkit.encoders import build_encoder
from vitkit.processing import synthetic_items


def addmm_residual(x, a, weight, bias):
    return torch.addmm(x + bias, a, weight.t())


def measure(name, sizes, peak):
    enc = build_encoder(name, device="cuda", dtype=torch.bfloat16)
    items = synthetic_items(name, sizes, seed=0)
    for it in items:
        it.to("cuda")
    flops = items_flops(enc.config, items, num_layers=len(enc.layers) if hasattr(enc, "layers") else None)
    for _ in range(3):
        enc(items)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); enc(items); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = sorted(times)[len(times) // 2]
    out = torch.cat(enc(items)).float()
    return dict(preset=name, images=len(sizes), ms=ms, img_s=len(sizes) / ms * 1e3, mfu=flops / ms / 1e9 / peak), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    peak = measure_matmul_peak().tflops
    rows, outs = [], {}
    for variant in ("addmm_into", "torch.addmm"):
        torch._dynamo.reset()
        if variant == "torch.addmm":
            fused.residual_linear = addmm_residual
        for name, sizes in (("clip-l-336", [(336, 336)] * 64), ("qwen2.5-vl-7b", [(448, 448)] * 16),
                            ("clip-l-336", [(336, 336)])):
            row, out = measure(name, sizes, peak)
            row["variant"] = variant
            key = (name, len(sizes))
            if key in outs:
                row["rel_diff_vs_addmm_into"] = ((out - outs[key]).norm() / outs[key].norm()).item()
            outs[key] = out
            rows.append(row)
            print(row, flush=True)
    json.dump(dict(peak_tflops=peak, rows=rows), open(f"{args.out}/explore_inplace_residual.json", "w"), indent=1)
    print(f"peak {peak:.0f}")
    for r in rows:
        print(f"{r['variant']:12s} {r['preset']:15s} x{r['images']:<3d} {r['ms']:7.2f} ms {r['img_s']:7.0f} img/s MFU {r['mfu']*100:5.1f}%")


if __name__ == "__main__":
    main()
