"""Attention over a packed batch: many sequences laid end to end, boundaries in ``cu_seqlens``.

On CUDA in fp16/bf16 this is one ``torch.nn.attention.varlen.varlen_attn`` call (Flash Attention's
variable-length kernel) for the whole batch: every image and every attention window in one launch,
as SGLang's and vLLM's Qwen2.5-VL towers do with ``flash_attn_varlen_func``. Stock transformers in
sdpa mode instead splits the packed tensor and calls SDPA once per window from Python.

Elsewhere (CPU, or float32 on CUDA, where the flash kernel does not run) a reference path computes
the same function with SDPA: one call with a block-diagonal mask when the packed batch is small,
otherwise one call per sequence.
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


def packed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
) -> torch.Tensor:
    """Bidirectional attention within each packed sequence; no attention across boundaries.

    ``query``/``key``/``value``: (rows, heads, head_dim). ``cu_seqlens``: int32 (sequences + 1,)
    on the same device, ``[0, len0, len0+len1, ...]``. ``max_seqlen``: longest sequence (rows), a
    Python int so that no device-to-host sync is needed. Scale is head_dim ** -0.5 (the towers'
    own). Returns (rows, heads, head_dim).
    """
    if uses_varlen_kernel(query):
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    return _reference_attention(query, key, value, cu_seqlens)


def _reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    # (rows, heads, dim) -> (1, heads, rows, dim) for SDPA.
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
    rows = query.shape[0]
    bounds = cu_seqlens.tolist()
    if len(bounds) == 2:
        out = F.scaled_dot_product_attention(q, k, v)
    elif rows <= MASK_MAX_ROWS:
        lengths = torch.diff(cu_seqlens.to(device=query.device, dtype=torch.long))
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=query.device), lengths)
        mask = segment[:, None] == segment[None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:  # empty sequences (a padded layout's unused slots) contribute no rows
        out = torch.cat(
            [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
             for a, b in zip(bounds[:-1], bounds[1:]) if b > a],
            dim=2,
        )
    return out.squeeze(0).transpose(0, 1)
