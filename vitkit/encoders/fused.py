"""Fused layer functions over the towers' own weights, shaped for ``torch.compile`` and CUDA graphs.

Each layer is a plain function of tensors (no ``nn.Module`` argument), so one compiled graph
serves every layer of a tower and the CUDA graph of a whole forward holds only these kernels. Where the transformers model keeps q/k/v (or gate/up) as separate
``nn.Linear``s, their weights are moved into one fused buffer and the modules' parameters become
views of it: one GEMM instead of three reads the input once, the model's own forward still works
and no weight is copied. Measured on an H200 (results/explore/): for CLIP-L/336 x64 these, plus
the patch embedding as a GEMM instead of cuDNN's Conv2d and the residual added in the GEMM's C
operand, take the compiled tower from 52.8 ms to 49.9 ms.
"""

from __future__ import annotations

import torch
import torch._dynamo.config as dynamo_config
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from vitkit.encoders.attention import packed_attention

# Compiled layers specialise on their input shape: measured on an H100, Qwen2.5-VL at 16 x 448 ran
# 52 ms specialised but 65 ms once dynamo had seen a few shapes and switched to a dynamic-shape
# graph. So shapes are few by construction: every call is padded to a token bucket
# (vitkit.encoders.buckets) and each bucket compiles once, in ``warmup``.


def compile_layer(fn, variants: int):
    """``torch.compile`` a layer function specialised per input shape, allowing ``variants``
    specialisations (one or two per bucket) before dynamo would fall back to eager."""
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, variants)
    return torch.compile(fn, dynamic=False)


@torch.library.custom_op("vitkit::addmm_into", mutates_args={"out"})
def addmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` in place: the residual stream is the GEMM's C operand.

    ``torch.addmm(c, a, b)`` first copies ``c`` into a fresh output (a device-to-device memcpy per
    residual, 3.5% of CLIP-L/336's step on an H200); as a mutating custom op, inductor fuses the
    producer of ``out`` (``x + bias``, next to the layer norm that reads ``x``) and lets cuBLAS
    accumulate into it, with no copy (checked in inductor's generated code).
    """
    out.addmm_(a, b)


@addmm_into.register_fake
def _(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    return None


@register_flop_formula(torch.ops.vitkit.addmm_into)
def _addmm_into_flops(c_shape, a_shape, b_shape, *args, **kwargs) -> int:
    # So torch.utils.flop_counter (and the bench's FLOP checks) see this GEMM like addmm.
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n


def residual_linear(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x + a @ weight.T + bias`` with the residual accumulated in place by the GEMM (see
    addmm_into). Measured on an H100 (results/explore/explore_inplace_residual_h100.json):
    CLIP-L/336 x64 49.7 -> 47.8 ms, x1 1.74 -> 1.61 ms; but Qwen2.5-VL x16 54.7 -> 65.3 ms, so
    the Qwen block keeps ``residual_addmm``."""
    out = x + bias
    addmm_into(out, a, weight.t())
    return out


def residual_addmm(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x + a @ weight.T + bias`` through ``torch.addmm`` (C copied once, then accumulated)."""
    return torch.addmm(x + bias, a, weight.t())


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases) along the output dim; rebind each module's
    parameters as views into the fused buffers so the model keeps working on the same memory."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    has_bias = all(lin.bias is not None for lin in linears)
    bias = torch.cat([lin.bias.detach() for lin in linears]) if has_bias else None
    start = 0
    for lin in linears:
        stop = start + lin.out_features
        lin.weight = nn.Parameter(weight[start:stop], requires_grad=False)
        if has_bias:
            lin.bias = nn.Parameter(bias[start:stop], requires_grad=False)
        start = stop
    return weight, bias


def patch_embed_gemm(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A Conv2d whose stride equals its kernel, as one GEMM: (B, C, H, W) -> (B, patches, D).

    Like the convolution, it ignores the pixels past the last whole patch (SigLIP-384/14 has a
    27x27 grid and drops 6 pixels of each side's 384)."""
    b, c, h, w = pixel_values.shape
    d, _, p, _ = weight.shape
    gh, gw = h // p, w // p
    if h != gh * p or w != gw * p:
        pixel_values = pixel_values[:, :, : gh * p, : gw * p]
    patches = pixel_values.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
    return F.linear(patches, weight.reshape(d, -1), bias).view(b, gh * gw, d)


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """The towers' MLP activations, exactly as transformers' ACT2FN computes them."""
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu_pytorch_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(f"unsupported activation {name!r}")


def fuse_tower(preset, model: nn.Module) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per-layer fused weight tuples of a freshly loaded tower (called where weights are loaded:
    ``build_encoder``, or ``VisionEncoder.variant`` after a cast). The modules' q/k/v (gate/up)
    parameters become views of the fused buffers, so the transformers forward keeps working."""
    # Plain tensors even under a caller's inference_mode: the buffers back the model's own
    # parameters, which must stay usable outside it.
    with torch.inference_mode(False), torch.no_grad():
        if preset.family == "qwen2_5_vl":
            return tuple(qwen_block_weights(block) for block in model.blocks)
        return tuple(vit_layer_weights(layer) for layer in model.encoder.layers)


def vit_layer_weights(layer: nn.Module) -> tuple[torch.Tensor, ...]:
    """A CLIP/SigLIP encoder layer's weights in ``fused_vit_layer``'s argument order."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv_w, qkv_b = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
    return (layer.layer_norm1.weight, layer.layer_norm1.bias, qkv_w, qkv_b, attn.out_proj.weight,
            attn.out_proj.bias, layer.layer_norm2.weight, layer.layer_norm2.bias, mlp.fc1.weight, mlp.fc1.bias,
            mlp.fc2.weight, mlp.fc2.bias)


def fused_vit_layer(x: torch.Tensor, heads: int, eps: float, act: str, *w: torch.Tensor) -> torch.Tensor:
    """One pre-norm CLIP/SigLIP layer on (B, N, D): same math as the module, fused QKV, and each
    residual accumulated by the GEMM itself (``residual_linear``) instead of a separate pass."""
    ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
    b, n, d = x.shape
    x = x.reshape(b * n, d)
    h = F.layer_norm(x, (d,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, d)
    x = residual_linear(x, a, o_w, o_b)
    h = activation(F.linear(F.layer_norm(x, (d,), ln2_w, ln2_b, eps), fc1_w, fc1_b), act)
    return residual_linear(x, h, fc2_w, fc2_b).view(b, n, d)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm: normalise in float32, scale in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb_vision`` for one tensor (float32 inside)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.unsqueeze(-2).float() + rotated * sin.unsqueeze(-2).float()).to(x.dtype)


def qwen_block_weights(block: nn.Module) -> tuple[torch.Tensor, ...]:
    """A Qwen2.5-VL vision block's weights in ``fused_qwen_block``'s argument order."""
    attn, mlp = block.attn, block.mlp
    gate_up_w, gate_up_b = fuse_linears([mlp.gate_proj, mlp.up_proj])
    return (block.norm1.weight, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
            block.norm2.weight, gate_up_w, gate_up_b, mlp.down_proj.weight, mlp.down_proj.bias)


def fused_qwen_block(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    eps: float,
    *w: torch.Tensor,
) -> torch.Tensor:
    """One Qwen2.5-VL vision block on packed rows (rows, D): RMSNorm, fused QKV, rotary, one
    variable-length attention call for all sequences, SwiGLU with gate and up in one GEMM."""
    n1_w, qkv_w, qkv_b, o_w, o_b, n2_w, gu_w, gu_b, down_w, down_b = w
    rows, d = x.shape
    q, k, v = F.linear(rms_norm(x, n1_w, eps), qkv_w, qkv_b).view(rows, 3, heads, d // heads).unbind(1)
    a = packed_attention(rotary(q, cos, sin), rotary(k, cos, sin), v, cu_seqlens, max_seqlen)
    x = residual_addmm(x, a.reshape(rows, d), o_w, o_b)
    gate, up = F.linear(rms_norm(x, n2_w, eps), gu_w, gu_b).chunk(2, dim=-1)
    return residual_addmm(x, F.silu(gate) * up, down_w, down_b)
