"""A memory model for ``max_tokens_per_call``: predict a step's peak GPU memory from its budget.

A step's peak is what was allocated before it (weights, the items' pixels, the cache) plus
what the step adds::

    step_bytes(B) = out_bytes_per_token * T_total + act_bytes_per_token * T_max(B)

``T_total`` is the embedding rows the step encodes (they are all kept until the step's chunks
are assembled); ``T_max(B)`` is the largest encoder call under budget ``B`` (calls are planned
by ``vitkit.embed.plan_calls``), whose activations dominate. ``out_bytes_per_token`` is known
(hidden size times element size); ``act_bytes_per_token`` is calibrated from one measured
budget and the others are predicted, so the error says whether the budget is a usable memory knob.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GROUP_KEYS = ("sweep", "encoder", "impl", "mode", "requests", "images_per_request", "resolution", "hit_fraction")


@dataclass(frozen=True)
class MemoryModel:
    """Calibrated coefficients (bytes per embedding row)."""

    act_bytes_per_token: float
    out_bytes_per_token: int
    calibrated_budget: int | None
    calibrated_max_call_tokens: int

    def step_bytes(self, total_tokens: int, max_call_tokens: int) -> float:
        """Predicted bytes a step adds over what was allocated before it."""
        return self.out_bytes_per_token * total_tokens + self.act_bytes_per_token * max_call_tokens


def calibrate(row: Mapping[str, Any]) -> MemoryModel:
    """Fit ``act_bytes_per_token`` to one measured row (needs peak and base memory, call tokens)."""
    calls = row["call_tokens"]
    if not calls or row.get("peak_mem_bytes") is None:
        raise ValueError(f"cannot calibrate the memory model on a row without calls or peak memory: {row.get('mode')!r}")
    step = row["peak_mem_bytes"] - row["base_mem_bytes"]
    out = row["out_bytes_per_token"]
    act = (step - out * sum(calls)) / max(calls)
    return MemoryModel(act, out, row["max_tokens_per_call"], max(calls))


def predict_peak(model: MemoryModel, row: Mapping[str, Any]) -> float:
    """Predicted peak bytes of ``row``'s step: its base allocation plus the model's step bytes."""
    calls = row["call_tokens"]
    return row["base_mem_bytes"] + model.step_bytes(sum(calls), max(calls))


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("peak_mem_bytes") is None or not row.get("call_tokens"):
            continue
        groups.setdefault(tuple(row.get(k) for k in GROUP_KEYS), []).append(row)
    return {key: members for key, members in groups.items() if len({m["max_tokens_per_call"] for m in members}) > 1}


def memory_report(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each group of rows that differ only in ``max_tokens_per_call``: calibrate on the row
    with the largest call and predict every row. Errors are (measured - predicted) / predicted,
    for the whole peak and for the step's own part (``step_error``, the stricter figure)."""
    report = []
    for key, members in _groups(rows).items():
        anchor = max(members, key=lambda r: max(r["call_tokens"]))
        model = calibrate(anchor)
        for row in sorted(members, key=lambda r: max(r["call_tokens"])):
            predicted = predict_peak(model, row)
            step_pred = predicted - row["base_mem_bytes"]
            step_meas = row["peak_mem_bytes"] - row["base_mem_bytes"]
            report.append(dict(zip(GROUP_KEYS, key)) | {
                "max_tokens_per_call": row["max_tokens_per_call"],
                "max_call_tokens": max(row["call_tokens"]),
                "calibration": row is anchor,
                "predicted_peak_bytes": int(predicted),
                "measured_peak_bytes": row["peak_mem_bytes"],
                "error": (row["peak_mem_bytes"] - predicted) / predicted,
                "step_error": (step_meas - step_pred) / step_pred if step_pred else None,
                "model": asdict(model),
            })
    return report
