"""Timing: CUDA events after warm-up on a GPU, perf_counter on CPU; medians and spread."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitkit.checks import non_negative_int, positive_int


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def timing_stats(samples_ms: Sequence[float]) -> TimingStats:
    """Median, 10th/90th percentile (linear interpolation), mean, min and max of ``samples_ms``."""
    if len(samples_ms) == 0:
        raise ValueError("timing_stats needs at least one timing sample, got none")
    x = np.asarray(samples_ms, dtype=float)
    p10, median, p90 = np.percentile(x, [10, 50, 90])
    return TimingStats(float(median), float(p10), float(p90), float(x.mean()), float(x.min()), float(x.max()), len(x))


class Stopwatch:
    """Brackets GPU work with a pair of CUDA events (host time with perf_counter on CPU).

    Events measure what the GPU spent between the two points, launch gaps included, without a
    sync inside the timed region; ``elapsed_ms`` synchronises once at the end.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._start: Any = None
        self._stop: Any = None

    def start(self) -> None:
        self._start = self._mark()

    def stop(self) -> None:
        self._stop = self._mark()

    def _mark(self) -> Any:
        """A recorded CUDA event on the current stream, or the host clock (s) on CPU."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self) -> float:
        if self._start is None or self._stop is None:
            raise ValueError("Stopwatch.elapsed_ms called before start() and stop()")
        if self.cuda:
            self._stop.synchronize()
            return float(self._start.elapsed_time(self._stop))
        return (self._stop - self._start) * 1e3


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], Any], *, device: torch.device | str, warmup: int = 3, repeats: int = 10
) -> TimingStats:
    """Run ``fn`` ``warmup`` times untimed, then time ``repeats`` calls one by one."""
    non_negative_int("time_callable warmup", warmup)
    positive_int("time_callable repeats", repeats)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        watch = Stopwatch(device)
        watch.start()
        fn()
        watch.stop()
        samples.append(watch.elapsed_ms())
    return timing_stats(samples)


class EventTimedEncoder:
    """Wraps an encoder so that each of its calls is bracketed by a Stopwatch.

    ``embed_chunks`` sees an ordinary encoder; after the step, ``encoder_ms()`` is the time spent
    inside encoder calls and the rest of the step is bookkeeping (lookups, hashing, cache puts,
    slicing and concatenation). Other attributes (``name``, ``config``, ...) pass through.
    """

    def __init__(self, encoder: Callable[[list], Sequence[torch.Tensor]], device: torch.device | str) -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        self._watches: list[Stopwatch] = []

    def __call__(self, items: list) -> Sequence[torch.Tensor]:
        watch = Stopwatch(self.device)
        watch.start()
        out = self.encoder(items)
        watch.stop()
        self._watches.append(watch)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def reset(self) -> None:
        self._watches = []

    @property
    def calls(self) -> int:
        return len(self._watches)

    def encoder_ms(self) -> float:
        """Sum of the encoder calls' times since the last ``reset`` (synchronises)."""
        return sum(w.elapsed_ms() for w in self._watches)
