"""Staging a call's host features for the GPU: one page-locked buffer, written by one thread.

A server's pixels arrive on the host, so every encoder call first gathers its items' features
into one buffer and copies it to the device. On the H100 host (16 vCPUs,
``results/h100/slow-staging-20261127T054103Z.json``), gathering one 448x448 image (4.8 MB of
float32 patches) with torch's intra-op thread pool took 0.1-0.3 ms at the median but 3-4 ms at
the p90 when the GPU had just been busy (a parallel region waits for its slowest thread), and a
new buffer from the caching host allocator each call added more; one thread's copy took
0.6-0.9 ms every time. Inside the TTFT validation this made one-image calls bimodal, 6.4 or
9.3 ms, in whichever calls followed a prefill step (``slow-calls-20261127T053635Z.json``): a
cost no model of the call's shape can predict. vLLM's GPU workers run with one intra-op thread
for the same contention.

So features are copied by one thread (numpy) into one page-locked buffer that lives as long as
the encoder and grows to the largest call seen, and moved in one non-blocking copy. An event
marks when that copy has read the buffer; the next call waits for it before writing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

COMBINES = ("stack", "cat")


def joined_shape(parts: Sequence[torch.Tensor], combine: str) -> tuple[int, ...]:
    """Shape of ``parts`` stacked (a new first dim) or concatenated (along dim 0)."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if not parts:
        raise ValueError("no parts to join")
    first = parts[0]
    for k, p in enumerate(parts):
        rest_ok = p.shape == first.shape if combine == "stack" else p.shape[1:] == first.shape[1:]
        if not rest_ok or p.dtype != first.dtype:
            raise ValueError(f"part {k} is {tuple(p.shape)} {p.dtype}, part 0 {tuple(first.shape)} {first.dtype}: "
                             f"cannot {combine} them")
    if combine == "stack":
        return (len(parts), *first.shape)
    return (sum(p.shape[0] for p in parts), *first.shape[1:])


def copy_parts(parts: Sequence[torch.Tensor], out: torch.Tensor, combine: str) -> None:
    """Write ``parts`` stacked or concatenated into host tensor ``out``, on this one thread (numpy
    copies; torch's own copy, which may use the intra-op pool, only for dtypes numpy lacks)."""
    start = 0
    for p in parts:
        stop = start + (1 if combine == "stack" else p.shape[0])
        target = out[start] if combine == "stack" else out[start:stop]
        try:
            np.copyto(target.numpy(), p.detach().numpy())
        except TypeError:  # e.g. bfloat16, which numpy has no type for
            target.copy_(p)
        start = stop


def join_host(parts: Sequence[torch.Tensor], combine: str, pin: bool) -> torch.Tensor:
    """``parts`` stacked or concatenated into one new (optionally page-locked) host tensor, in
    one copy by one thread (``torch.cat(...).pin_memory()`` would make two)."""
    out = torch.empty(joined_shape(parts, combine), dtype=parts[0].dtype, pin_memory=pin)
    copy_parts(parts, out, combine)
    return out


class HostStaging:
    """One page-locked buffer for the host features of ``device``'s calls (see the module doc).

    ``stage(parts, combine)`` returns the joined features on the device, in their own dtype; the
    copy is queued on the current stream, and the buffer is not written again before it has run.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"HostStaging pages memory for a CUDA device, got {self.device}")
        self.buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    @property
    def capacity_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def stage(self, parts: Sequence[torch.Tensor], combine: str) -> torch.Tensor:
        shape = joined_shape(parts, combine)
        dtype, numel = parts[0].dtype, int(np.prod(shape))
        if self._copied is not None:
            self._copied.synchronize()  # the last call's copy must have read the buffer
        if self.buffer is None or self.buffer.dtype != dtype or self.buffer.numel() < numel:
            self.buffer = None  # back to torch's host cache before the larger one is taken
            self.buffer = torch.empty(numel, dtype=dtype, pin_memory=True)
        host = self.buffer[:numel].view(shape)
        copy_parts(parts, host, combine)
        out = host.to(self.device, non_blocking=True)
        if self._copied is None:
            self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return out
