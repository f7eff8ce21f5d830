"""Encoder time in the simulator: measured around a real encoder, or reported by a cost model.

An encoder the runner drives keeps two clocks per step: ``reported`` is the encoder time the
simulation shows (measured for a real encoder, modelled for ``ModelledEncoder``) and
``measured`` is the wall time actually spent inside the call, which the runner subtracts from
the step's wall time to get the bookkeeping time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from vitkit.embed import Encoder
from vitkit.item import MultimodalItem


@dataclass(frozen=True)
class EncoderTime:
    """Encoder time (ms) since the last ``take_time``: shown, and really spent in the call."""

    reported_ms: float
    measured_ms: float


@runtime_checkable
class TimedEncoderLike(Protocol):
    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]: ...

    def take_time(self) -> EncoderTime: ...


def _synchronize(device: torch.device | None) -> None:
    # CUDA launches are asynchronous: without a sync the timer would stop before the kernels end.
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedEncoder:
    """Wraps a real encoder and measures each call's wall time (synchronising CUDA)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        device = getattr(encoder, "device", None)
        self.device = torch.device(device) if device is not None else None
        self._ms = 0.0
        self.calls_ms: list[float] = []  # every call's ms, in call order (never reset)

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        _synchronize(self.device)
        start = time.perf_counter()
        out = self.encoder(items)
        _synchronize(self.device)
        ms = (time.perf_counter() - start) * 1e3
        self._ms += ms
        self.calls_ms.append(ms)
        return out

    def take_time(self) -> EncoderTime:
        ms, self._ms = self._ms, 0.0
        return EncoderTime(ms, ms)


def as_timed(encoder: Encoder) -> TimedEncoderLike:
    """The encoder itself when it already keeps time (e.g. ``ModelledEncoder``), else wrapped."""
    return encoder if isinstance(encoder, TimedEncoderLike) else TimedEncoder(encoder)
