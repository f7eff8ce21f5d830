"""CUDA graphs of an encoder's padded forward, one per token bucket.

A per-request ViT call on one image is launch-bound: CLIP-L/336 runs ~300 kernels for 5 ms of
eager time but only ~2 ms of GPU work (measured on an H200, results/explore/). Replaying a
captured graph removes the launch gaps, so the per-request baseline is as fast as the card
allows and the batched-vs-per-request comparison does not flatter batching.

Graphs are keyed by bucket, never by layout: everything that depends on how a call's rows split
into images (pixels or patches, cu_seqlens, window permutations, rotary positions) lives in
static buffers that the encoder fills before each replay (nano-vllm's ``capture_cudagraph``
pattern). SGLang's ViT graph runner keys on the total patch count and keeps the first capture's
cu_seqlens, so a second call with the same total and another split attends across images;
here the split is an input, so any split of a bucket replays exactly.
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
    """One captured graph per bucket, all sharing one memory pool, never evicted.

    The graphs replay one at a time on one stream, so they may share intermediates: capturing
    the largest bucket first (``warmup`` does) lets every smaller one reuse its memory. The
    caller owns the input buffers (views of static tensors it fills before ``run``) and must copy
    what it keeps out of the returned output, which the next replay of that bucket overwrites.
    """

    def __init__(self) -> None:
        self._graphs: dict[Hashable, _Captured] = {}
        self._pool = None
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def run(self, key: Hashable, fn: Callable[..., torch.Tensor], args: tuple) -> torch.Tensor:
        """Replay the graph of ``key`` (captured now from ``fn(*args)`` if new); its output buffer."""
        entry = self._graphs.get(key)
        if entry is None:
            entry = self.capture(key, fn, args)
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
