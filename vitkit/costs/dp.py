"""The data-parallel encoder's cost: one call's images spread over N GPUs, from the measured scaling.

As ``vitkit.encoders.dp.DataParallelEncoder`` (and SGLang's ``--mm-enable-dp-encoder``, vLLM's
``--mm-encoder-tp-mode data``), a call's images go whole to ranks, largest first to the least-loaded
(``assign``, token-balanced); each rank encodes its share as one call, and the call ends when the slowest
rank has and the rows are gathered. So a call over N GPUs costs the one-GPU model of the slowest rank's share
times ``overhead[N]``: what the measured N-GPU step took beyond a perfect split of its rows (the gather,
the ranks' sync), from ``python -m vitkit.bench dp``'s batched, token-balanced runs:

    overhead[N] = (N / load_balance[N]) / speedup[N]

One image never splits: a step of one image gains nothing from more GPUs, as on the real engines. The
scaling was measured for one impl (the graphed one); other impls are not modelled over N GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from vitkit.costs import results
from vitkit.costs.encoder import EncoderCost
from vitkit.encoders.assignment import assign

DP_FILE = Path("dp") / "dp.json"  # the merged runs, under a card's results folder
POLICY, GATHER = "token-balanced", "all_gather_into_tensor"  # what the engines do, and the bench's default


class CallModel(Protocol):
    def call_ms(self, item_rows: int | Sequence[int]) -> float: ...


@dataclass(frozen=True)
class DPScaling:
    """Measured data-parallel overhead of one encoder and impl: world size -> factor (1.0 at one GPU)."""

    encoder: str
    impl: str
    overhead: Mapping[int, float]
    source: str

    @property
    def world_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.overhead))


def dp_scaling(data: Mapping[str, Any], encoder: str, source: str = "") -> DPScaling | None:
    """The ``DPScaling`` of ``encoder`` in merged dp results (``dp.json``), or None when it has no N>1 rows."""
    rows = [r for r in data.get("rows", []) if r.get("encoder") == encoder and r.get("mode") == "batched"
            and r.get("policy") == POLICY and r.get("gather") == GATHER and r.get("speedup")]
    overhead = {1: 1.0}
    for r in rows:
        n = int(r["world_size"])
        if n > 1:
            overhead[n] = max(1.0, (n / float(r["load_balance"])) / float(r["speedup"]))
    if len(overhead) == 1:
        return None
    impls = {r.get("impl") for r in rows}
    return DPScaling(encoder, impls.pop() if len(impls) == 1 else "?", overhead, source)


def load_dp_scaling(folder: str | Path, encoder: str) -> DPScaling | None:
    """The scaling of ``encoder`` in ``folder/dp/dp.json`` (a card's results folder), or None without one."""
    path = Path(folder) / DP_FILE
    if not path.is_file():
        return None
    data = results.read("dp", path)
    cards = sorted({str(run.get("machine", {}).get("device_name")) for run in data.get("runs", [])})
    return dp_scaling(data, encoder, f"{path.parent.name}/{path.name} ({', '.join(cards) or '?'})")


@dataclass(frozen=True)
class DataParallelCallCost:
    """A call over ``world_size`` GPUs: the slowest rank's share under ``call`` (one GPU), times ``overhead``."""

    call: CallModel
    world_size: int
    overhead: float

    def call_ms(self, item_rows: int | Sequence[int]) -> float:
        rows = [item_rows] if isinstance(item_rows, int) else list(item_rows)
        if not rows:
            return 0.0
        plan = assign(rows, self.world_size, POLICY)
        slowest = max(self.call.call_ms([rows[i] for i in items]) for items in plan.items if items)
        return self.overhead * slowest if self.world_size > 1 else slowest


def data_parallel(cost: EncoderCost, scaling: DPScaling, world_size: int) -> EncoderCost:
    """``cost`` with each call spread over ``world_size`` GPUs (one of ``scaling.world_sizes``)."""
    if world_size not in scaling.overhead:
        raise ValueError(f"no data-parallel scaling measured at {world_size} GPUs for {scaling.encoder} "
                         f"(measured: {list(scaling.world_sizes)}, {scaling.source})")
    call = DataParallelCallCost(cost.call, world_size, scaling.overhead[world_size])
    return replace(cost, call=call, source=f"{cost.source}, over {world_size} GPUs (x{call.overhead:.3f}, "
                                           f"{scaling.source})")
