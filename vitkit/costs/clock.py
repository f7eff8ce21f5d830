"""What a scheduler step costs and how far it moves the replay's clock: encoder + prefill + bookkeeping.

``StepClock`` is the one place a step's times are decided, each part modelled (``StepCosts``) or measured.
The clock moves by their sum, so a slow step delays every request behind it, or by a fixed ``step_ms``
(every mode and cache size then replays the same windows).
"""

from __future__ import annotations

import re
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from vitkit.checks import positive_number
from vitkit.costs.encoder import EncoderCost, VideoSize
from vitkit.embed import ENCODING_FATES, EmbedResult, Encoder
from vitkit.item import GRID_KEYS, MultimodalItem


class PrefillModel(Protocol):
    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float: ...


@dataclass(frozen=True)
class StepCosts:
    """The modelled parts of a step: encoder calls (and bookkeeping), language-model prefill."""

    encoder: EncoderCost
    prefill: PrefillModel

    def label(self) -> str:
        return f"encoder: {self.encoder.source}; prefill: {prefill_source(self.prefill)}"


def prefill_source(prefill: object) -> str:
    """``prefill``'s ``source`` without folders (they name this checkout, not the measurement), or its class."""
    source = str(getattr(prefill, "source", None) or type(prefill).__name__)
    return re.sub(r"\S*/([^/\s]+\.json)", r"\1", source)


@dataclass(frozen=True)
class EncoderTime:
    """Encoder time (ms) since the last ``take_time``: as reported, and as really spent in calls."""

    reported_ms: float
    measured_ms: float


@runtime_checkable
class TimedEncoderLike(Protocol):
    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]: ...

    def take_time(self) -> EncoderTime: ...


class TimedEncoder:
    """Wraps an encoder and times each call's wall ms, synchronising CUDA (its launches are asynchronous)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        device = getattr(encoder, "device", None)
        self.device = torch.device(device) if device is not None else None
        self._ms = 0.0
        self.calls_ms: list[float] = []  # every call's ms, in call order (never reset)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        self._sync()
        start = time.perf_counter()
        out = self.encoder(items)
        self._sync()
        ms = (time.perf_counter() - start) * 1e3
        self._ms += ms
        self.calls_ms.append(ms)
        return out

    def take_time(self) -> EncoderTime:
        ms, self._ms = self._ms, 0.0
        return EncoderTime(ms, ms)


def as_timed(encoder: Encoder) -> TimedEncoderLike:
    """The encoder itself when it already keeps time, else wrapped in a ``TimedEncoder``."""
    return encoder if isinstance(encoder, TimedEncoderLike) else TimedEncoder(encoder)


@dataclass(frozen=True)
class StepTimes:
    """One step's parts (ms) and how far it moved the clock (their sum, or the fixed step)."""

    encoder_ms: float
    prefill_ms: float
    bookkeeping_ms: float
    duration_ms: float


def prefill_windows(windows: Sequence[tuple[Any, int, int]]) -> list[tuple[int, int]]:
    """``(rid, start, stop)`` windows as the prefill model's ``(context_before, new_tokens)``."""
    return [(start, stop - start) for _, start, stop in windows if stop > start]


def item_cost_rows(item: MultimodalItem, where: str = "item") -> int:
    """An item's embedding rows as the encoder's cost model reads them: an image's ``num_tokens``, a video's
    a ``VideoSize`` of them with its temporal patches (``meta["video_grid_thw"]``'s t), which the bucketed
    encoder splits it by. ``where`` names the item in errors."""
    if item.modality != "video":
        return item.num_tokens
    who = f"{where} (video, hash {item.hash[:12]})"
    grid = (item.meta or {}).get(GRID_KEYS["video"])
    if grid is None:
        raise ValueError(f"{who} has no meta['video_grid_thw'] for the cost model to split it by "
                         f"(meta keys: {sorted(item.meta or {})})")
    values = grid.reshape(-1).tolist() if hasattr(grid, "reshape") else list(grid)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{who}: video_grid_thw must be three positive ints (t, h, w), got {grid!r}")
    if item.num_tokens % values[0]:
        raise ValueError(f"{who}: num_tokens={item.num_tokens} is not a whole number per temporal patch "
                         f"(grid {tuple(values)})")
    return VideoSize(item.num_tokens, values[0])


def call_item_rows(step: Any, result: EmbedResult, requests: Mapping[Hashable, Any]) -> list[list[int]]:
    """Per encoder call of the step, the embedding rows of each item it encoded (from ``result.outcomes``);
    a video's a ``VideoSize`` (``item_cost_rows``), an image's a plain int."""
    calls: list[list[int]] = [[] for _ in result.call_tokens]
    for window, outcomes in zip(step.windows, result.outcomes):
        items = requests[window.rid].items
        for o in outcomes:
            if o.fate in ENCODING_FATES:
                where = f"step {step.index}: request {window.rid!r} item {o.index}"
                calls[o.call].append(item_cost_rows(items[o.index], where))
    if [sum(c) for c in calls] != list(result.call_tokens):
        raise ValueError(f"step {step.index}: items per call {calls} do not add up to the calls' rows "
                         f"{result.call_tokens}")
    return calls


class StepClock:
    """Times each step (``StepTimes``) from the cost models (``costs``; None: measured times and a fixed
    ``step_ms``), the encoder's own report (``encoder_measured``), or both. ``shadow``: other costs of the
    same steps (open-loop check), kept in ``shadow_ms`` as ``(encoder_ms, prefill_ms, item rows per call)``."""

    def __init__(self, costs: StepCosts | None = None, *, step_ms: float | None = None, encoder_measured: bool = False,
                 shadow: StepCosts | None = None) -> None:
        if costs is None and step_ms is None:
            raise ValueError("a StepClock without cost models needs a fixed step_ms")
        self.costs = costs
        self.step_ms = None if step_ms is None else positive_number("step_ms", step_ms)
        self.encoder_measured = encoder_measured or costs is None
        self.shadow = shadow
        self.shadow_ms: list[tuple[float, float, list]] = []

    def __call__(self, step: Any, result: EmbedResult, requests: Mapping[Hashable, Any], spent: EncoderTime,
                 wall_ms: float) -> StepTimes:
        pairs = prefill_windows([(w.rid, w.start, w.stop) for w in step.windows])
        modelled = self.costs is not None and not self.encoder_measured
        calls = call_item_rows(step, result, requests) if modelled or self.shadow is not None else []
        encoder_ms = self.costs.encoder.step_ms(calls) if modelled else spent.reported_ms
        prefill_ms = self.costs.prefill.step_ms(pairs) if self.costs is not None and pairs else 0.0
        if self.costs is not None:
            book = self.costs.encoder.bookkeeping_ms if step.windows else 0.0
        else:
            book = max(0.0, wall_ms - spent.measured_ms)
        if self.shadow is not None:
            shadow_encoder = self.shadow.encoder.step_ms(calls)
            self.shadow_ms.append((shadow_encoder, self.shadow.prefill.step_ms(pairs) if pairs else 0.0, calls))
        duration = encoder_ms + prefill_ms + book if self.step_ms is None else self.step_ms
        return StepTimes(encoder_ms, prefill_ms, book, duration)
