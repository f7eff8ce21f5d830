"""Attention over a packed batch: many sequences laid end to end, boundaries in ``cu_seqlens``.

On CUDA in fp16/bf16: one ``torch.nn.attention.varlen.varlen_attn`` (flash varlen) call for every image
and window, as SGLang's and vLLM's Qwen2.5-VL towers do (stock transformers loops SDPA per window).
Elsewhere a reference path computes the same with SDPA (a block-diagonal mask, or one call per sequence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # PyTorch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: reference path only
    varlen_attn = None

VARLEN_DTYPES = (torch.float16, torch.bfloat16)
# Above this many packed rows the block-diagonal mask (rows^2 bools) costs more than a loop.
MASK_MAX_ROWS = 1024


def uses_varlen_kernel(query: torch.Tensor) -> bool:
    """Whether ``packed_attention`` runs the single varlen kernel for this query tensor."""
    return varlen_attn is not None and query.is_cuda and query.dtype in VARLEN_DTYPES


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int) -> torch.Tensor:
    """Bidirectional attention within each packed sequence, none across: (rows, heads, head_dim) in and out.
    ``cu_seqlens``: int32 ``[0, len0, len0+len1, ...]``; ``max_seqlen``: a Python int (no host sync)."""
    if uses_varlen_kernel(query):
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    return _reference_attention(query, key, value, cu_seqlens)


def _reference_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         cu_seqlens: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # (1, heads, rows, dim)
    bounds = cu_seqlens.tolist()
    if len(bounds) == 2:
        out = F.scaled_dot_product_attention(q, k, v)
    elif query.shape[0] <= MASK_MAX_ROWS:
        lengths = torch.diff(cu_seqlens.to(device=query.device, dtype=torch.long))
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=query.device), lengths)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=segment[:, None] == segment[None, :])
    else:  # empty sequences (a padded layout's unused slots) contribute no rows
        out = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
                         for a, b in zip(bounds[:-1], bounds[1:]) if b > a], dim=2)
    return out.squeeze(0).transpose(0, 1)
