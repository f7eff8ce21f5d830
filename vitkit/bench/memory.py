"""A memory model for ``max_tokens_per_call``: predict a batched step's peak GPU memory from its budget.

A step's peak is what was allocated before it (weights, the items' pixels, the pre-filled cache)
plus the larger of two moments of the batched path (``vitkit.embed``)::

    during call k:  out * (rows of calls before k) + act * rows_k      (earlier outputs are kept)
    at the end:     out * (2 * rows_encoded + rows_assembled)          (outputs, the cache's compact
                                                                        copies, the assembled chunks)

``out`` is the bytes of one embedding row (hidden size times element size, known); ``act`` is the
activation bytes per embedding row of an encoder call, calibrated on one measured budget (the
one with the largest call) and used to predict the others; the error then says whether
``max_tokens_per_call`` is a usable memory knob. Only batched rows are modelled: the per-request
path's calls follow the requests, not the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vitkit.bench.rows import BenchRow

GROUP_KEYS = ("sweep", "encoder", "impl", "mode", "requests", "images_per_request", "resolution", "hit_fraction")


@dataclass(frozen=True)
class MemoryModel:
    """Calibrated coefficients (bytes per embedding row)."""

    act_bytes_per_token: float
    out_bytes_per_token: int
    calibrated_budget: int | None
    calibrated_max_call_tokens: int

    def step_bytes(self, call_tokens: Sequence[int], assembled_tokens: int) -> float:
        """Predicted bytes a step adds over what was allocated before it."""
        during = max(self.out_bytes_per_token * sum(call_tokens[:k]) + self.act_bytes_per_token * rows
                     for k, rows in enumerate(call_tokens))
        end = self.out_bytes_per_token * (2 * sum(call_tokens) + assembled_tokens)
        return max(during, end)


def _largest_call(calls: Sequence[int]) -> int:
    return max(range(len(calls)), key=lambda k: (calls[k], -k))  # first of the largest


def _modelled(row: BenchRow) -> bool:
    """A row the model can use: its calls, peak and base memory and row bytes were recorded."""
    return bool(row.call_tokens) and None not in (row.peak_mem_bytes, row.base_mem_bytes, row.out_bytes_per_token)


def calibrate(row: BenchRow) -> MemoryModel:
    """Fit the activation bytes per row to one measured row, at its largest encoder call."""
    if not _modelled(row):
        raise ValueError(f"cannot calibrate the memory model on a row without calls or peak memory "
                         f"(mode {row.mode!r}, budget {row.max_tokens_per_call!r})")
    calls, out = row.call_tokens, row.out_bytes_per_token
    step = row.peak_mem_bytes - row.base_mem_bytes
    k = _largest_call(calls)
    act = (step - out * sum(calls[:k])) / calls[k]
    return MemoryModel(act, out, row.max_tokens_per_call, calls[k])


def predict_peak(model: MemoryModel, row: BenchRow) -> float:
    """Predicted peak bytes of ``row``'s step: its base allocation plus the model's step bytes."""
    calls = row.call_tokens
    assembled = row.step_rows if row.step_rows is not None else sum(calls)
    return row.base_mem_bytes + model.step_bytes(calls, assembled)


def _groups(rows: Sequence[BenchRow]) -> dict[tuple, list[BenchRow]]:
    groups: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        if row.mode == "batched" and _modelled(row):
            groups.setdefault(tuple(getattr(row, k) for k in GROUP_KEYS), []).append(row)
    return {key: members for key, members in groups.items() if len({m.max_tokens_per_call for m in members}) > 1}


def memory_report(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """For each group of batched rows that differ only in ``max_tokens_per_call``: calibrate on
    the row with the largest call and predict every row. Errors are (measured - predicted) /
    predicted, for the whole peak and for the step's own part (``step_error``, the stricter one)."""
    report = []
    for key, members in _groups(rows).items():
        anchor = max(members, key=lambda r: max(r.call_tokens))
        model = calibrate(anchor)
        for row in sorted(members, key=lambda r: max(r.call_tokens)):
            predicted = predict_peak(model, row)
            step_pred = predicted - row.base_mem_bytes
            step_meas = row.peak_mem_bytes - row.base_mem_bytes
            report.append(dict(zip(GROUP_KEYS, key)) | {
                "max_tokens_per_call": row.max_tokens_per_call,
                "max_call_tokens": max(row.call_tokens),
                "calibration": row is anchor,
                "predicted_peak_bytes": int(predicted),
                "measured_peak_bytes": row.peak_mem_bytes,
                "error": (row.peak_mem_bytes - predicted) / predicted,
                "step_error": (step_meas - step_pred) / step_pred if step_pred else None,
                "model": asdict(model),
            })
    return report
