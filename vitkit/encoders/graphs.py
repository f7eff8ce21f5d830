"""CUDA graphs of an encoder's padded forward, one per token bucket.

A one-image ViT call is launch-bound (hundreds of kernels), so replaying a graph keeps the
per-request baseline honest. Graphs are keyed by bucket, never by layout: how rows split into
images lives in static buffers filled before each replay (nano-vllm's pattern), so any split of a
bucket replays exactly (SGLang's ViT runner keeps the first capture's cu_seqlens).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    output: torch.Tensor


class GraphCache:
    """One captured graph per bucket, sharing one memory pool (capture the largest first), never evicted.
    The caller owns the static inputs and copies out what it keeps: the next replay overwrites outputs."""

    def __init__(self) -> None:
        self._graphs: dict[Hashable, _Captured] = {}
        self._pool = None
        self.captures = 0

    def run(self, key: Hashable, fn: Callable[..., torch.Tensor], args: tuple) -> torch.Tensor:
        """Replay the graph of ``key`` (captured now from ``fn(*args)`` if new); its output buffer."""
        entry = self._graphs.get(key) or self.capture(key, fn, args)
        entry.graph.replay()
        return entry.output

    def capture(self, key: Hashable, fn: Callable[..., torch.Tensor], args: tuple) -> _Captured:
        """Capture ``fn(*args)`` for ``key`` (no-op if captured); ``args`` are the static buffers."""
        if key in self._graphs:
            return self._graphs[key]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: compiles, cuBLAS/cuDNN plans
            for _ in range(2):
                fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = fn(*args)
        self.captures += 1
        self._graphs[key] = _Captured(graph, output)
        return self._graphs[key]
