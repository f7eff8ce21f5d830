"""The language model's decoder, prefilling a step of chunked windows through a KV cache.

Window ``(context, new)`` prefills ``new`` tokens after ``context`` cached ones, attending causally
within its request: per layer the new keys and values go into the cache, then one causal GQA varlen
flash attention reads every window (as vLLM's and SGLang's prefill, with contiguous cache rows). A Qwen2
text stack (Qwen2.5-VL's); layers are plain functions of tensors, so one compiled graph with a dynamic
row count serves every layer and step size. Position ids are 1-D (``context + i``), M-RoPE's text ids.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitkit.checks import positive_int
from vitkit.encoders.attention import uses_varlen_kernel, varlen_attn
from vitkit.encoders.fused import rms_norm, wide
from vitkit.lm.graphs import SegmentGraphs


def _causal_gqa_kwargs() -> dict:
    """``varlen_attn``'s causal GQA keywords in this torch: 2.10 ``is_causal=True``; 2.11+ ``window_size=(-1, 0)``
    (a tuple, compared as one); 2.13 also ``enable_gqa=True``."""
    if varlen_attn is None:
        return {}
    params = inspect.signature(varlen_attn).parameters
    kwargs: dict = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return kwargs


VARLEN_CAUSAL_GQA = _causal_gqa_kwargs()
# Set (once, process-wide) if the varlen kernel refused GQA and KV heads are being repeated.
GQA_EXPANDED_KV = [False]


@dataclass(frozen=True)
class DecoderConfig:
    """A Qwen2-style decoder's shapes (``head_dim * heads`` need not equal ``hidden``)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float
    rms_eps: float
    qkv_bias: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            positive_int(f"DecoderConfig {self.name!r}: {field}", getattr(self, field))
        if self.heads % self.kv_heads:
            raise ValueError(f"DecoderConfig {self.name!r}: heads={self.heads} is not a multiple of "
                             f"kv_heads={self.kv_heads}")

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


# Qwen/Qwen2.5-VL-7B-Instruct config.json's top-level fields (not transformers' defaults, the 72B's);
# head_dim = hidden_size // num_attention_heads as transformers takes it; biases on q/k/v only.
QWEN2_5_VL_7B_TEXT = DecoderConfig(
    name="qwen2.5-vl-7b-text", hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128,
    vocab=152064, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True,
    source="Qwen/Qwen2.5-VL-7B-Instruct config.json (text fields); biases from transformers' Qwen2_5_VL modelling",
)

# Same structure, a few hundred thousand parameters: CPU tests and the smoke run.
TINY_DECODER = DecoderConfig(
    name="tiny-decoder", hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, head_dim=16,
    vocab=101, rope_theta=1e4, rms_eps=1e-6, qkv_bias=True, source="tiny variant of qwen2.5-vl-7b-text",
)


@dataclass(frozen=True)
class DecoderWeights:
    """``layers[i]``: ``(norm1, qkv_w, qkv_b, o_w, norm2, gate_up_w, down_w)``, q/k/v and gate/up stacked."""

    embed: torch.Tensor  # (vocab, hidden)
    layers: tuple[tuple[torch.Tensor, ...], ...]
    final_norm: torch.Tensor  # (hidden,)
    lm_head: torch.Tensor  # (vocab, hidden)


def random_weights(config: DecoderConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   std: float = 0.02, seed: int = 0) -> DecoderWeights:
    """Normal(0, std) matrices, norms near 1, made directly on ``device`` in ``dtype`` (no host copy)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, scale: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * scale

    def norm() -> torch.Tensor:
        return 1.0 + randn(config.hidden, scale=0.1)

    d, qkv = config.hidden, config.q_width + 2 * config.kv_width
    layers = tuple(
        (norm(), randn(qkv, d), randn(qkv) if config.qkv_bias else torch.zeros(qkv, device=device, dtype=dtype),
         randn(d, config.q_width), norm(), randn(2 * config.intermediate, d), randn(d, config.intermediate))
        for _ in range(config.layers)
    )
    return DecoderWeights(randn(config.vocab, d, scale=1.0), layers, norm(), randn(config.vocab, d))


def check_windows(windows: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """``windows`` as a tuple of ``(context_tokens, new_tokens)`` int pairs (context >= 0, new >= 1)."""
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise TypeError(f"windows must be a sequence of (context_tokens, new_tokens) pairs, "
                        f"got {type(windows).__name__}")
    if len(windows) == 0:
        raise ValueError("windows is empty: a prefill step needs at least one (context_tokens, new_tokens) window")
    out = []
    for i, window in enumerate(windows):
        if not isinstance(window, Sequence) or len(window) != 2:
            raise ValueError(f"window {i} is {window!r}, not a (context_tokens, new_tokens) pair")
        ctx, new = window
        for name, value in (("context_tokens", ctx), ("new_tokens", new)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"window {i} {window!r}: {name} must be an int, got {type(value).__name__} {value!r}")
        if ctx < 0 or new < 1:
            raise ValueError(f"window {i} {window!r}: needs context_tokens >= 0 and new_tokens >= 1")
        out.append((ctx, new))
    return tuple(out)


@dataclass(frozen=True)
class StepLayout:
    """Where a step's rows live: new rows window by window; KV rows each window's context then new tokens."""

    windows: tuple[tuple[int, int], ...]
    cu_q: torch.Tensor  # int32 (windows + 1,): new-row bounds
    cu_k: torch.Tensor  # int32 (windows + 1,): KV-row bounds (context + new per window)
    max_q: int
    max_k: int
    slots: torch.Tensor  # int64 (rows,): the KV row each new token's key and value go to
    positions: torch.Tensor  # int64 (rows,): rotary position of each new token (context + i)
    last_rows: torch.Tensor  # int64 (finishing windows,): rows whose logits are computed

    @property
    def rows(self) -> int:
        return sum(new for _, new in self.windows)

    @property
    def kv_rows(self) -> int:
        return sum(ctx + new for ctx, new in self.windows)


def step_layout(windows: Sequence[tuple[int, int]], *, finishing: Sequence[bool] | None = None,
                device: torch.device | str = "cpu") -> StepLayout:
    """A step's layout; ``finishing[i]``: window ``i`` ends its prompt, its last row gets logits (default all)."""
    windows = check_windows(windows)
    if finishing is None:
        finishing = [True] * len(windows)
    if len(finishing) != len(windows):
        raise ValueError(f"finishing has {len(finishing)} flags for {len(windows)} windows")
    cu_q, cu_k, slots, positions, last = [0], [0], [], [], []
    for (ctx, new), fin in zip(windows, finishing):
        slots.extend(range(cu_k[-1] + ctx, cu_k[-1] + ctx + new))
        positions.extend(range(ctx, ctx + new))
        cu_q.append(cu_q[-1] + new)
        cu_k.append(cu_k[-1] + ctx + new)
        if fin:
            last.append(cu_q[-1] - 1)

    def tensor(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    return StepLayout(windows, tensor(cu_q, torch.int32), tensor(cu_k, torch.int32), max(n for _, n in windows),
                      max(c + n for c, n in windows), tensor(slots, torch.int64), tensor(positions, torch.int64),
                      tensor(last, torch.int64))


@dataclass(frozen=True)
class PackedKV:
    """The step's KV cache: ``k``/``v`` (layers, kv_rows, kv_heads, head_dim) laid out by ``cu_k``."""

    k: torch.Tensor
    v: torch.Tensor


def pack_kv(contexts: Sequence[tuple[torch.Tensor, torch.Tensor] | None], layout: StepLayout,
            config: DecoderConfig, dtype: torch.dtype = torch.float32) -> PackedKV:
    """A step's cache from each window's cached (K, V) (layers, context, kv_heads, head_dim), or None;
    the new tokens' slots are zero until the forward fills them."""
    if len(contexts) != len(layout.windows):
        raise ValueError(f"pack_kv got {len(contexts)} contexts for {len(layout.windows)} windows")
    parts_k, parts_v = [], []
    for i, ((ctx, new), kv) in enumerate(zip(layout.windows, contexts)):
        have = 0 if kv is None else kv[0].shape[1]
        if have != ctx:
            raise ValueError(f"window {i} {(ctx, new)!r}: its cached context has {have} tokens, not {ctx}")
        if kv is not None:
            parts_k.append(kv[0])
            parts_v.append(kv[1])
        blank = torch.zeros(config.layers, new, config.kv_heads, config.head_dim, dtype=dtype,
                            device=layout.slots.device)
        parts_k.append(blank)
        parts_v.append(blank.clone())
    return PackedKV(torch.cat(parts_k, dim=1).contiguous(), torch.cat(parts_v, dim=1).contiguous())


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2's rotary tables for ``positions``: (rows, head_dim) each, computed wide, cast to ``dtype``."""
    wide_dtype = wide(dtype)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=wide_dtype) / head_dim)
    freqs = positions.to(wide_dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # transformers' apply_rotary_pos_emb (rotate_half), in the input dtype; x is (rows, heads, dim).
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def pre_attention(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, eps: float,
                  norm_w: torch.Tensor, qkv_w: torch.Tensor, qkv_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """RMSNorm, fused QKV, rotary: (rows, hidden) -> q (rows, heads, dim), k and v (rows, kv_heads, dim)."""
    rows = x.shape[0]
    dim = cos.shape[-1]
    qkv = F.linear(rms_norm(x, norm_w, eps), qkv_w, qkv_b)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = q.view(rows, heads, dim), k.view(rows, kv_heads, dim), v.view(rows, kv_heads, dim)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def post_attention(x: torch.Tensor, attn: torch.Tensor, eps: float, o_w: torch.Tensor, norm_w: torch.Tensor,
                   gate_up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """Output projection and residual, RMSNorm, SwiGLU (gate and up in one GEMM), residual."""
    x = x + F.linear(attn.reshape(x.shape[0], -1), o_w)
    gate, up = F.linear(rms_norm(x, norm_w, eps), gate_up_w).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down_w)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: StepLayout) -> torch.Tensor:
    """New token ``j`` of each window attends to its KV rows ``0 .. context + j``: ``q`` (rows, heads, dim),
    ``k``/``v`` (kv_rows, kv_heads, dim) -> (rows, heads, dim)."""
    if not uses_varlen_kernel(q):
        return _reference_causal_attention(q, k, v, layout)
    if GQA_EXPANDED_KV[0] and k.shape[1] != q.shape[1]:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    try:
        return varlen_attn(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k, **VARLEN_CAUSAL_GQA)
    except RuntimeError:
        # A torch build that refuses fewer KV than query heads: repeat them from now on (the bench records it).
        if GQA_EXPANDED_KV[0] or k.shape[1] == q.shape[1]:
            raise
        GQA_EXPANDED_KV[0] = True
        return causal_attention(q, k, v, layout)


def _reference_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                layout: StepLayout) -> torch.Tensor:
    # Explicit matmul/softmax per window (CPU, float32): exact, and torch's FLOP counter sees it.
    group = q.shape[1] // k.shape[1]
    out = []
    for (ctx, new), qa, ka in zip(layout.windows, layout.cu_q.tolist(), layout.cu_k.tolist()):
        qi = q[qa:qa + new].transpose(0, 1)  # (heads, new, dim)
        ki = k[ka:ka + ctx + new].repeat_interleave(group, dim=1).transpose(0, 1)
        vi = v[ka:ka + ctx + new].repeat_interleave(group, dim=1).transpose(0, 1)
        scores = torch.matmul(qi, ki.transpose(1, 2)) * q.shape[-1] ** -0.5
        allowed = torch.arange(ctx + new, device=q.device)[None, :] <= ctx + torch.arange(new, device=q.device)[:, None]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")).to(wide(q.dtype)), dim=-1).to(q.dtype)
        out.append(torch.matmul(probs, vi).transpose(0, 1))
    return torch.cat(out)


class PrefillDecoder:
    """The decoder's prefill of one step. ``compile=True`` compiles the layer halves (row count dynamic).
    A step of a ``graph_buckets`` size runs as graph segments (``vitkit.lm.graphs``; ``pad_to_bucket``)."""

    def __init__(self, config: DecoderConfig, weights: DecoderWeights, *, compile: bool = False,
                 graph_buckets: Sequence[int] = ()) -> None:
        self.config, self.weights, self.compiled = config, weights, compile
        self._pre = torch.compile(pre_attention) if compile else pre_attention
        self._post = torch.compile(post_attention) if compile else post_attention
        self.segments = None
        if graph_buckets:
            c, w = config, weights
            self.segments = SegmentGraphs(
                graph_buckets, layers=c.layers, hidden=c.hidden, heads=c.heads, kv_heads=c.kv_heads,
                head_dim=c.head_dim, pre=self._call_dynamic(self._pre, 3), post=self._call_dynamic(self._post, 2),
                pre_args=lambda i: (c.heads, c.kv_heads, c.rms_eps, *w.layers[i][:3]),
                post_args=lambda i: (c.rms_eps, *w.layers[i][3:]),
                device=w.embed.device, dtype=w.embed.dtype)

    def _call_dynamic(self, fn, row_args: int):
        """``fn`` with its first ``row_args`` arguments' row dim dynamic: every bucket shares one graph."""
        if not self.compiled:
            return fn

        def call(*args):
            for t in args[:row_args]:
                torch._dynamo.mark_dynamic(t, 0)
            return fn(*args)
        return call

    def _forward_segments(self, token_ids: torch.Tensor, layout: StepLayout,
                          kv: PackedKV) -> tuple[torch.Tensor, torch.Tensor]:
        c, w, s, rows = self.config, self.weights, self.segments, layout.rows
        s.x[0][:rows].copy_(F.embedding(token_ids, w.embed))
        cos, sin = rope_cos_sin(layout.positions, c.head_dim, c.rope_theta, w.embed.dtype)
        s.cos[:rows].copy_(cos)
        s.sin[:rows].copy_(sin)
        for i in range(c.layers):
            s.run_segment(i, rows)
            k_cache, v_cache = kv.k[i], kv.v[i]
            k_cache.index_copy_(0, layout.slots, s.k[:rows])
            v_cache.index_copy_(0, layout.slots, s.v[:rows])
            s.attn[:rows].copy_(causal_attention(s.q[:rows], k_cache, v_cache, layout))
        x = s.run_segment(c.layers, rows).clone()  # the buffer is the next step's
        last = rms_norm(x.index_select(0, layout.last_rows), w.final_norm, c.rms_eps)
        return x, F.linear(last, w.lm_head)

    def forward(self, token_ids: torch.Tensor, layout: StepLayout, kv: PackedKV) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill ``token_ids`` (rows,), writing the new keys and values into ``kv``: the last layer's
        hidden states (rows, hidden) and the finishing windows' last rows' logits (finishing, vocab)."""
        c, w = self.config, self.weights
        if token_ids.shape != (layout.rows,):
            raise ValueError(f"token_ids has shape {tuple(token_ids.shape)}, the layout needs ({layout.rows},)")
        if self.segments is not None and layout.rows in self.segments.buckets:
            return self._forward_segments(token_ids, layout, kv)
        x = F.embedding(token_ids, w.embed)
        cos, sin = rope_cos_sin(layout.positions, c.head_dim, c.rope_theta, x.dtype)
        # A size-1 dim cannot be symbolic (dynamo specialises 0 and 1): a one-row step compiles its own graph.
        dynamic = self.compiled and layout.rows > 1
        if dynamic:
            for t in (x, cos, sin):
                torch._dynamo.mark_dynamic(t, 0)
        for i, (n1, qkv_w, qkv_b, o_w, n2, gu_w, down_w) in enumerate(w.layers):
            q, k, v = self._pre(x, cos, sin, c.heads, c.kv_heads, c.rms_eps, n1, qkv_w, qkv_b)
            k_cache, v_cache = kv.k[i], kv.v[i]
            k_cache.index_copy_(0, layout.slots, k)
            v_cache.index_copy_(0, layout.slots, v)
            attn = causal_attention(q, k_cache, v_cache, layout)
            if dynamic:
                torch._dynamo.mark_dynamic(attn, 0)
            x = self._post(x, attn, c.rms_eps, o_w, n2, gu_w, down_w)
        last = rms_norm(x.index_select(0, layout.last_rows), w.final_norm, c.rms_eps)
        return x, F.linear(last, w.lm_head)
