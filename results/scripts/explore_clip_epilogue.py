"""H100 exploration 4: can Triton GEMMs with fused epilogues (quick-GELU, residual) lift CLIP-L/336 x64?

Variants of vitkit's fused CLIP layer, each compiled once for all 23 layers, whole forward in a
CUDA graph, vs vitkit's default. PYTHONPATH=. python3 results/scripts/explore_clip_epilogue.py --out $OUT
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from vitkit.bench.flops import items_flops
from vitkit.bench.machine import measure_matmul_peak
from vitkit.encoders import build_encoder
from vitkit.encoders.fused import activation, fused_vit_layer
from vitkit.processing import synthetic_items


def attn_half(x, heads, eps, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b):
    b, n, d = x.shape
    x = x.reshape(b * n, d)
    h = F.layer_norm(x, (d,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, d)
    x = torch.addmm(x + o_b, a, o_w.t())
    return x, F.layer_norm(x, (d,), ln2_w, ln2_b, eps)


def mlp_in(h, w, b, act):
    return activation(F.linear(h, w, b), act)


def mlp_out(x, h, w, b, shape):
    return torch.addmm(x + b, h, w.t()).view(shape)


def split_layer(attn_fn, in_fn, out_fn):
    def layer(x, heads, eps, act, *w):
        ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
        shape = x.shape
        x2, h = attn_fn(x, heads, eps, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b)
        return out_fn(x2, in_fn(h, fc1_w, fc1_b, act), fc2_w, fc2_b, shape)
    return layer


TRITON = {"max_autotune": True, "max_autotune_gemm_backends": "TRITON", "epilogue_fusion": True,
          "triton.enable_persistent_tma_matmul": True}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    peak = measure_matmul_peak().tflops
    enc = build_encoder("clip-l-336", device="cuda", dtype=torch.bfloat16)
    items = synthetic_items("clip-l-336", [(336, 336)] * 64, seed=0)
    for it in items:
        it.to("cuda")
    flops = items_flops(enc.config, items, num_layers=len(enc.layers))
    ref = torch.cat(enc.variant(impl="vitkit-eager")(items)).float()
    variants = {
        "vitkit-default": fused_vit_layer,
        "split-fc1-triton-epilogue": split_layer(torch.compile(attn_half, dynamic=False),
                                                 torch.compile(mlp_in, dynamic=False, options=TRITON),
                                                 torch.compile(mlp_out, dynamic=False)),
        "all-triton-epilogues": torch.compile(fused_vit_layer, dynamic=False, options=TRITON),
    }
    out = {"peak_tflops": peak, "rows": []}
    for name, fn in variants.items():
        v = enc.variant(impl="vitkit", compile=name == "vitkit-default")
        if name != "vitkit-default":
            v.layer_fn = fn
        t0 = time.time()
        try:
            got = torch.cat(v(items)).float()
            first = time.time() - t0
            err = ((got - ref).norm() / ref.norm()).item()
            times = []
            for _ in range(3):
                v(items)
            torch.cuda.synchronize()
            for _ in range(15):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); v(items); e.record(); torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            ms = sorted(times)[len(times) // 2]
            row = dict(name=name, ms=ms, img_s=64 / ms * 1e3, mfu=flops / ms / 1e9 / peak, err_vs_eager=err, first_call_s=first)
        except Exception as exc:  # noqa: BLE001
            row = dict(name=name, error=repr(exc)[:400])
        out["rows"].append(row)
        print(row, flush=True)
    json.dump(out, open(f"{args.out}/explore_clip_epilogue.json", "w"), indent=1)
    for r in out["rows"]:
        if "ms" in r:
            print(f"{r['name']:30s} {r['ms']:7.2f} ms {r['img_s']:7.0f} img/s MFU {r['mfu']*100:5.1f}% err {r['err_vs_eager']:.1e} first {r['first_call_s']:.0f}s")


if __name__ == "__main__":
    main()
