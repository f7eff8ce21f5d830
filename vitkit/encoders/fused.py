"""Fused layer functions over the towers' own weights, shaped for ``torch.compile`` and CUDA graphs.

Layers are plain functions of tensors, so one compiled graph serves every layer. q/k/v (gate/up) weights
move into one buffer the modules' parameters view (one GEMM, nothing copied); with the patch embedding as
a GEMM and residuals added in the GEMM's C operand this speeds up CLIP-L/336 (results/README.md).
"""

from __future__ import annotations

import torch
import torch._dynamo.config as dynamo_config
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from vitkit.encoders.attention import packed_attention


def compile_layer(fn, variants: int):
    """``torch.compile`` ``fn`` specialised per input shape, allowing ``variants`` specialisations (dynamo's
    dynamic-shape fallback runs Qwen2.5-VL markedly slower, so every call is padded to a bucket)."""
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, variants)
    return torch.compile(fn, dynamic=False)


@torch.library.custom_op("vitkit::addmm_into", mutates_args={"out"})
def addmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` in place: as a mutating op, inductor fuses ``out``'s producer and cuBLAS accumulates
    into it, where ``torch.addmm`` would first copy C (a visible memcpy per residual in CLIP-L/336)."""
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
    """``x + a @ weight.T + bias``, accumulated in place (``addmm_into``): faster for CLIP-L/336, slower
    for Qwen2.5-VL's packed call, which keeps ``residual_addmm``."""
    out = x + bias
    addmm_into(out, a, weight.t())
    return out


def residual_addmm(x: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x + a @ weight.T + bias`` through ``torch.addmm`` (C copied once, then accumulated)."""
    return torch.addmm(x + bias, a, weight.t())


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The linears' weights (and biases) concatenated on the output dim; their parameters become views."""
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
    """A Conv2d whose stride equals its kernel, as one GEMM: (B, C, H, W) -> (B, patches, D); pixels past
    the last whole patch are ignored, as by the conv (SigLIP-384/14 drops 6 per side)."""
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
    """Per-layer fused weight tuples of a freshly loaded tower (its q/k/v, gate/up parameters become views)."""
    # Plain tensors even under a caller's inference_mode: they back parameters used outside it.
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
    """One pre-norm CLIP/SigLIP layer on (B, N, D): the module's math, fused QKV, GEMM-accumulated residuals."""
    ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
    b, n, d = x.shape
    x = x.reshape(b * n, d)
    h = F.layer_norm(x, (d,), ln1_w, ln1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, d)
    x = residual_linear(x, a, o_w, o_b)
    h = activation(F.linear(F.layer_norm(x, (d,), ln2_w, ln2_b, eps), fc1_w, fc1_b), act)
    return residual_linear(x, h, fc2_w, fc2_b).view(b, n, d)


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms and rotary angles are computed in: float32 as in transformers (float64 stays)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2RMSNorm (the vision tower's and the language model's): normalise wide, scale in the input dtype."""
    xf = x.to(wide(x.dtype))
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


def fused_qwen_block(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, cos: torch.Tensor, sin: torch.Tensor,
                     heads: int, eps: float, *w: torch.Tensor) -> torch.Tensor:
    """One Qwen2.5-VL vision block on packed rows (rows, D): fused QKV, one varlen attention, fused SwiGLU."""
    n1_w, qkv_w, qkv_b, o_w, o_b, n2_w, gu_w, gu_b, down_w, down_b = w
    rows, d = x.shape
    q, k, v = F.linear(rms_norm(x, n1_w, eps), qkv_w, qkv_b).view(rows, 3, heads, d // heads).unbind(1)
    a = packed_attention(rotary(q, cos, sin), rotary(k, cos, sin), v, cu_seqlens, max_seqlen)
    x = residual_addmm(x, a.reshape(rows, d), o_w, o_b)
    gate, up = F.linear(rms_norm(x, n2_w, eps), gu_w, gu_b).chunk(2, dim=-1)
    return residual_addmm(x, F.silu(gate) * up, down_w, down_b)
