"""The eager encoder's cost: the same tower without buckets or CUDA graphs, what SGLang and vLLM run by default.

No bucket graphs means no step function: a call is modelled as a line, ``per_call_ms`` (launches, layout)
plus ``per_item_ms`` an image plus ``ms_per_kilo_row`` per thousand embedding rows, fitted to the eager impl's
steps of a stream benchmark (``python -m vitkit.bench stream``: the same seeded layouts as the graphed impl,
both modes). The graphed model (``vitkit.costs.encoder``) comes from another file and session: compare the
two with their fit errors in mind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.costs import results
from vitkit.costs.encoder import EncoderCost, nnls, stream_bookkeeping_ms

EAGER_IMPL = "vitkit-eager"


@dataclass(frozen=True)
class LineCallCost:
    """Modelled ms of one encoder call: a line over its calls, images and embedding rows."""

    encoder: str
    impl: str
    per_call_ms: float
    per_item_ms: float
    ms_per_kilo_row: float
    points: int  # steps fitted
    median_rel_err: float
    max_rel_err: float
    source: str = ""

    def call_ms(self, item_rows: int | Sequence[int]) -> float:
        """Modelled ms of one call of items of ``item_rows`` embedding rows each (an int: one item)."""
        rows = [item_rows] if isinstance(item_rows, int) else list(item_rows)
        if not rows:
            return 0.0
        return self.per_call_ms + self.per_item_ms * len(rows) + self.ms_per_kilo_row * sum(rows) / 1e3


def fit_line_cost(steps: Sequence[Mapping[str, Any]], *, encoder: str, impl: str, source: str) -> LineCallCost:
    """A ``LineCallCost`` fitted to stream steps (``encoder_calls``, ``encoded_items``, ``encoded_rows``,
    ``encoder_ms``): non-negative least squares on relative error, steps without a call skipped."""
    rows = [s for s in steps if s["encoder_calls"] > 0]
    if not rows:
        raise ValueError(f"{source}: no {encoder}/{impl} step with an encoder call to fit")
    design = np.array([[s["encoder_calls"], s["encoded_items"], s["encoded_rows"] / 1e3] for s in rows], float)
    ms = np.array([float(s["encoder_ms"]) for s in rows])
    x = nnls(design / ms[:, None], np.ones(len(ms)))
    errs = np.abs(design @ x - ms) / ms
    return LineCallCost(encoder, impl, *(float(v) for v in x), points=len(ms), median_rel_err=float(np.median(errs)),
                        max_rel_err=float(errs.max()), source=source)


def load_eager_cost(folder: str | Path, encoder: str, impl: str = EAGER_IMPL) -> EncoderCost | None:
    """The eager ``encoder``'s cost from the newest plain GPU stream file (``results.plain_streams``) in ``folder``
    that ran ``impl``, with the bookkeeping ms of that impl's steps; None when no stream file measured it (nothing
    is made up)."""
    for path in results.plain_streams(folder):
        data = results.read("stream", path)
        steps = [s for s in data["steps"] if (s["encoder"], s["impl"]) == (encoder, impl)]
        if data.get("kind", "gpu") != "gpu" or not steps:
            continue
        machine = data.get("machine", {}).get("device_name") or "?"
        call = fit_line_cost(steps, encoder=encoder, impl=impl, source=f"{path.name} ({machine})")
        book = stream_bookkeeping_ms(folder, encoder, impl)
        book_ms = book[0] if book else 0.0
        return EncoderCost(call, book_ms, f"line fit to {impl} steps of {path.name} ({encoder}/{impl}, "
                                          f"median error {call.median_rel_err:.1%})")
    return None
