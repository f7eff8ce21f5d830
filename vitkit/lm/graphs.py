"""The decoder's prefill as CUDA-graph segments between attention calls, one set per row bucket.

An ungraphed 7B prefill of a few hundred tokens is launch-bound, so, as vLLM's piecewise graphs do,
everything between attention calls is graphed and attention runs eagerly (graphs hold no layout).
A step padded to ``R`` rows runs ``layers + 1`` segments: segment ``i`` is layer ``i - 1``'s output
projection and MLP, then layer ``i``'s norm, QKV and rotary, all on static buffers of the largest bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from vitkit.checks import positive_int
from vitkit.encoders.graphs import GraphCache

# Up to ~256 rows a step is bound by reading the weights, so padding is nearly free; above, steps of 256
# keep padding under 25%. Steps over 2048 rows are compute-bound and run ungraphed.
PREFILL_GRAPH_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1280, 1536, 1792, 2048)


def graph_bucket(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``rows`` (None: larger than every bucket)."""
    positive_int("rows", rows)
    return next((b for b in sorted(buckets) if b >= rows), None)


class SegmentGraphs:
    """Static buffers and per-(bucket, segment) graphs of a decoder's layers: ``pre(x, cos, sin, ...) ->
    (q, k, v)`` and ``post(x, attn, ...) -> x`` with layer ``i``'s ``pre_args(i)`` / ``post_args(i)``.
    Off CUDA the segments run as plain calls on the same buffers."""

    def __init__(self, buckets: Sequence[int], *, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 pre: Callable, post: Callable, pre_args: Callable[[int], tuple], post_args: Callable[[int], tuple],
                 device: torch.device, dtype: torch.dtype) -> None:
        if not buckets:
            raise ValueError("SegmentGraphs needs at least one row bucket")
        for b in buckets:
            positive_int("graph bucket", b)
        self.buckets = tuple(sorted(set(buckets)))
        self.layers = layers
        self.pre, self.post, self.pre_args, self.post_args = pre, post, pre_args, post_args
        largest = self.buckets[-1]

        def buf(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        self.x = (buf(largest, hidden), buf(largest, hidden))  # ping-pong: segment i writes x[i % 2]
        self.cos, self.sin = buf(largest, head_dim), buf(largest, head_dim)
        self.q = buf(largest, heads, head_dim)
        self.k, self.v = buf(largest, kv_heads, head_dim), buf(largest, kv_heads, head_dim)
        self.attn = buf(largest, heads, head_dim)
        self.graphs = GraphCache() if device.type == "cuda" else None

    def segment(self, i: int, rows: int) -> Callable[[], torch.Tensor]:
        """Segment ``i`` at ``rows`` rows: post of layer ``i - 1`` into x[i % 2], then pre of layer ``i``
        into q, k, v. Returns x[i % 2]'s rows."""
        def run() -> torch.Tensor:
            x = self.x[i % 2][:rows]
            if i > 0:
                x.copy_(self.post(self.x[(i - 1) % 2][:rows], self.attn[:rows], *self.post_args(i - 1)))
            if i < self.layers:
                q, k, v = self.pre(x, self.cos[:rows], self.sin[:rows], *self.pre_args(i))
                self.q[:rows].copy_(q)
                self.k[:rows].copy_(k)
                self.v[:rows].copy_(v)
            return x
        return run

    def run_segment(self, i: int, rows: int) -> torch.Tensor:
        fn = self.segment(i, rows)
        return fn() if self.graphs is None else self.graphs.run((rows, i), fn, ())

    def capture(self, progress: bool = False) -> None:
        """Capture every bucket's segments now, largest bucket first (smaller ones reuse its pool)."""
        if self.graphs is None:
            return
        for rows in tqdm(sorted(self.buckets, reverse=True), desc="prefill graphs", disable=not progress):
            for i in range(self.layers + 1):
                self.graphs.capture((rows, i), self.segment(i, rows), ())
        torch.cuda.synchronize()


def pad_to_bucket(windows: Sequence[tuple[int, int]], finishing: Sequence[bool] | None,
                  buckets: Sequence[int]) -> tuple[list[tuple[int, int]], list[bool]]:
    """``windows`` and ``finishing`` (default all) plus a window ``(0, pad)``, not finishing, that fills the
    step to its graph bucket (it attends only to itself); unchanged when over every bucket or exact."""
    windows = [tuple(w) for w in windows]
    finishing = [True] * len(windows) if finishing is None else list(finishing)
    if len(finishing) != len(windows):
        raise ValueError(f"finishing has {len(finishing)} flags for {len(windows)} windows")
    rows = sum(new for _, new in windows)
    bucket = graph_bucket(rows, buckets) if rows > 0 else None
    if bucket is None or bucket == rows:
        return windows, finishing
    return windows + [(0, bucket - rows)], finishing + [False]
