"""Which rank encodes which item of a call: the data-parallel encoder's assignment policies.

Every rank computes the same assignment from the same item list (SPMD), so no rank has to tell
the others what it encodes or how many rows it will send.

- ``token-balanced``: largest item first, each to the rank with the least load so far (greedy
  longest-processing-time scheduling). This is what SGLang's ``--mm-enable-dp-encoder`` and
  vLLM's ``mm_encoder_tp_mode="data"`` do for Qwen-style towers (both weigh an image by its
  patch count, which for Qwen2.5-VL is 4x its embedding rows: the same order). Its maximum
  load is at most the mean load plus the largest item.
- ``round-robin``: item k to rank k mod N; balances the item count, not the tokens.
- ``contiguous``: consecutive runs of n/N items (the first n mod N ranks one more); also balances
  the count only, and keeps each rank's items adjacent (one request's images stay together).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from vitkit.checks import non_negative_int, positive_int

POLICIES = ("token-balanced", "round-robin", "contiguous")


@dataclass(frozen=True)
class Assignment:
    """Items per rank. ``items[r]``: indices (into the call's item list, ascending) that rank
    ``r`` encodes; ``loads[r]``: the sum of their costs (embedding rows by default)."""

    items: tuple[tuple[int, ...], ...]
    loads: tuple[int, ...]

    @property
    def world_size(self) -> int:
        return len(self.items)

    @property
    def balance(self) -> float:
        """Max rank load / mean rank load (1.0 is perfect; 1.0 also when nothing is assigned)."""
        total = sum(self.loads)
        return max(self.loads) * len(self.loads) / total if total else 1.0


def assign(costs: Sequence[int], world_size: int, policy: str = "token-balanced") -> Assignment:
    """Split items of the given ``costs`` (non-negative ints, e.g. embedding rows) over
    ``world_size`` ranks with ``policy`` (one of ``POLICIES``)."""
    positive_int("world_size", world_size)
    for k, c in enumerate(costs):
        non_negative_int(f"costs[{k}]", c)
    if policy == "token-balanced":
        groups = _token_balanced(costs, world_size)
    elif policy == "round-robin":
        groups = [list(range(r, len(costs), world_size)) for r in range(world_size)]
    elif policy == "contiguous":
        groups = _contiguous(len(costs), world_size)
    else:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    items = tuple(tuple(sorted(g)) for g in groups)
    return Assignment(items, tuple(sum(costs[i] for i in g) for g in items))


def _token_balanced(costs: Sequence[int], world_size: int) -> list[list[int]]:
    # Ties broken by item index, then by rank, so every rank computes the very same split.
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0, r) for r in range(world_size)]  # (load, rank): the least-loaded rank on top
    groups: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        load, r = heapq.heappop(heap)
        groups[r].append(i)
        heapq.heappush(heap, (load + costs[i], r))
    return groups


def _contiguous(n: int, world_size: int) -> list[list[int]]:
    size, extra = divmod(n, world_size)
    groups, start = [], 0
    for r in range(world_size):
        stop = start + size + (1 if r < extra else 0)
        groups.append(list(range(start, stop)))
        start = stop
    return groups
