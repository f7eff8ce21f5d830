"""One-off H100 exploration: which techniques move CLIP-L/336 towards 70% MFU.

Run on the GPU box: PYTHONPATH=. python3 results/scripts/explore_clip_perf.py --out $OUT
Writes explore_clip.json and prints a table. Notes went to results/README.md.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import CLIPVisionConfig, CLIPVisionModel


def bench(fn, warmup=3, repeats=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def matmul_peak():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b, 3, 20)
    return 2 * 8192**3 / ms / 1e9


def clip_flops(n_img, layers=24, t=577, d=1024, f=4096):
    per_layer = 2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d
    return n_img * (layers * per_layer + 2 * 576 * 588 * d)


def fused_forward(model, pixel_values, layers, backend_ctx):
    vm = getattr(model, "vision_model", model)
    x = vm.embeddings(pixel_values)
    x = vm.pre_layrnorm(x)
    for p in layers:
        x = p(x)
    return x


def layer_params(layer):
    attn = layer.self_attn
    w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    b_qkv = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
    return (layer.layer_norm1.weight, layer.layer_norm1.bias, w_qkv, b_qkv, attn.out_proj.weight, attn.out_proj.bias,
            layer.layer_norm2.weight, layer.layer_norm2.bias, layer.mlp.fc1.weight, layer.mlp.fc1.bias,
            layer.mlp.fc2.weight, layer.mlp.fc2.bias)


def layer_fn(x, ln1w, ln1b, w_qkv, b_qkv, ow, ob, ln2w, ln2b, f1w, f1b, f2w, f2b):
    b, t, d = x.shape
    heads = 16
    h = F.layer_norm(x, (d,), ln1w, ln1b, 1e-5)
    qkv = F.linear(h, w_qkv, b_qkv).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    x = x + F.linear(a.transpose(1, 2).reshape(b, t, d), ow, ob)
    h = F.layer_norm(x, (d,), ln2w, ln2b, 1e-5)
    h = F.linear(h, f1w, f1b)
    h = h * torch.sigmoid(1.702 * h)
    return x + F.linear(h, f2w, f2b)


def make_layers(model, fn):
    return [lambda x, p=layer_params(l): fn(x, *p) for l in getattr(model, "vision_model", model).encoder.layers]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak()
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    cfg._attn_implementation = "sdpa"
    model = CLIPVisionModel(cfg).cuda().to(torch.bfloat16).eval()
    rows = []

    def record(name, n, ms, compile_s=None):
        fl = clip_flops(n)
        rows.append(dict(name=name, images=n, ms=ms, img_s=n / ms * 1e3, mfu=fl / ms / 1e9 / peak, compile_s=compile_s))
        print(rows[-1], flush=True)

    for n in (64, 1):
        px = torch.randn(n, 3, 336, 336, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            record("hf-eager-sdpa", n, bench(lambda: model(pixel_values=px)))
            layer_fns = make_layers(model, layer_fn)
            record("fused-eager", n, bench(lambda: fused_forward(model, px, layer_fns, None)))
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                try:
                    with sdpa_kernel([backend]):
                        record(f"fused-eager-{backend.name}", n, bench(lambda: fused_forward(model, px, layer_fns, None)))
                except Exception as err:  # noqa: BLE001
                    print("backend failed", backend, err)
    # compiled variants (one layer function compiled, reused for all layers)
    for mode in ("default", "max-autotune-no-cudagraphs"):
        torch._dynamo.reset()
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            for n in (64, 1) if mode == "default" else (64,):
                px = torch.randn(n, 3, 336, 336, device="cuda", dtype=torch.bfloat16)
                with torch.inference_mode(), sdpa_kernel([backend]):
                    fns = make_layers(model, torch.compile(layer_fn, mode=mode, dynamic=False))
                    t0 = time.time()
                    fused_forward(model, px, fns, None)
                    torch.cuda.synchronize()
                    c = time.time() - t0
                    record(f"compile-{mode}-{backend.name}", n, bench(lambda: fused_forward(model, px, fns, None)), c)
                    if n == 1 or mode == "default":
                        static = px.clone()
                        g = torch.cuda.CUDAGraph()
                        s = torch.cuda.Stream()
                        s.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(s):
                            for _ in range(2):
                                fused_forward(model, static, fns, None)
                        torch.cuda.current_stream().wait_stream(s)
                        with torch.cuda.graph(g):
                            out = fused_forward(model, static, fns, None)
                        record(f"graph-compile-{mode}-{backend.name}", n, bench(g.replay))
    json.dump(dict(peak_tflops=peak, rows=rows, torch=torch.__version__), open(f"{args.out}/explore_clip.json", "w"), indent=1)
    print(f"peak {peak:.0f} TFLOP/s")
    for r in rows:
        print(f"{r['name']:50s} n={r['images']:3d} {r['ms']:8.2f} ms {r['img_s']:8.0f} img/s MFU {r['mfu']*100:5.1f}%")


if __name__ == "__main__":
    main()
