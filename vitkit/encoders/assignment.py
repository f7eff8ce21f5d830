"""Which rank encodes which item of a call: the data-parallel encoder's assignment policies.

Every rank computes the same assignment from the same item list (SPMD), so no sizes are exchanged.
``token-balanced``: largest item first to the least-loaded rank (greedy LPT, as SGLang's and vLLM's
data-parallel encoders); ``round-robin``: item k to rank k mod N (balances counts, not tokens);
``contiguous``: runs of n/N items (the first n mod N ranks one more), one request's images together.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from vitkit.checks import non_negative_int, positive_int

POLICIES = ("token-balanced", "round-robin", "contiguous")


@dataclass(frozen=True)
class Assignment:
    """``items[r]``: ascending item indices rank ``r`` encodes; ``loads[r]``: their summed costs."""

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
    """Split items of ``costs`` (non-negative ints, e.g. embedding rows) over ``world_size`` ranks."""
    positive_int("world_size", world_size)
    for k, c in enumerate(costs):
        non_negative_int(f"costs[{k}]", c)
    if policy == "token-balanced":
        groups = _token_balanced(costs, world_size)
    elif policy == "round-robin":
        groups = [list(range(r, len(costs), world_size)) for r in range(world_size)]
    elif policy == "contiguous":
        size, extra = divmod(len(costs), world_size)
        bounds = [r * size + min(r, extra) for r in range(world_size + 1)]
        groups = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
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
