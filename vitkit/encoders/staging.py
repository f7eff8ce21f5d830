"""Staging a call's host features for the GPU: one page-locked buffer, written by one thread.

Torch's multi-threaded gather (and a fresh host buffer per call) has multi-millisecond stragglers
after busy GPU steps, which made one-image calls bimodal; one thread's copy is steady (vLLM's workers
also use one intra-op thread; results/README.md). So one thread (numpy) copies into one growing
page-locked buffer, moved in one non-blocking copy; the next call waits on an event before writing.
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
    """Write ``parts`` stacked or concatenated into host tensor ``out`` on this thread (numpy; torch only
    for dtypes numpy lacks)."""
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
    """``parts`` joined into one new (optionally pinned) host tensor, in one copy by one thread."""
    out = torch.empty(joined_shape(parts, combine), dtype=parts[0].dtype, pin_memory=pin)
    copy_parts(parts, out, combine)
    return out


class HostStaging:
    """One page-locked buffer for ``device``'s calls: ``stage(parts, combine)`` returns the joined
    features on the device, in their own dtype, copied on the current stream."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"HostStaging pages memory for a CUDA device, got {self.device}")
        self.buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

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
