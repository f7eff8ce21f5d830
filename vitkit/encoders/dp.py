"""One encoder call spread over several GPUs: data-parallel, one replica of the tower per rank.

Every rank gets the same items (SPMD), computes the same assignment, encodes its share, pads its rows
to the largest rank's count and all-gathers them (no sizes exchanged, as SGLang's and vLLM's DP encoders),
then cuts them per item in the caller's order. Without a process group, or with one rank, a call is
exactly the wrapped encoder's call.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vitkit.encoders.assignment import POLICIES, Assignment, assign
from vitkit.item import MultimodalItem

# "all_gather_into_tensor" writes one flat buffer; "all_gather" per-rank buffers (NCCL copies them out
# of a flat buffer of its own: one more pass over the rows).
GATHERS = ("all_gather_into_tensor", "all_gather")
# torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns); same collective.
_gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass(frozen=True)
class DPCall:
    """One call on this rank: its assignment and four time marks (CUDA events, or ``perf_counter`` s
    on CPU) around the local encode, the collective and the reordering."""

    assignment: Assignment
    rank: int
    marks: tuple[Any, Any, Any, Any]

    def times_ms(self) -> dict[str, float]:
        """``encode``, ``gather`` (with any wait for slower ranks) and ``reorder`` ms; syncs on a GPU."""
        a, b, c, d = self.marks
        return {"encode": _elapsed_ms(a, b), "gather": _elapsed_ms(b, c), "reorder": _elapsed_ms(c, d)}


def _mark(device: torch.device) -> Any:
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _elapsed_ms(start: Any, stop: Any) -> float:
    if isinstance(start, float):
        return (stop - start) * 1e3
    stop.synchronize()
    return float(start.elapsed_time(stop))


class DataParallelEncoder:
    """``encoder(items) -> list[Tensor]`` over every rank of ``group``, behind the same contract.

    The encoder's ``hidden_size``, ``dtype`` and ``device`` size the gather buffers unless given; ``cost(item)``
    weighs items (default ``num_tokens``); ``timed``: a ``DPCall`` per call in ``calls``; ``check_items``:
    compare an item digest across ranks first. A rank's failed encode leaves the others waiting until timeout."""

    def __init__(self, encoder: Callable[[list[MultimodalItem]], Sequence[torch.Tensor]], *,
                 policy: str = "token-balanced", gather: str = "all_gather_into_tensor",
                 group: dist.ProcessGroup | None = None, hidden_size: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 cost: Callable[[MultimodalItem], int] | None = None, timed: bool = False,
                 check_items: bool = False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if gather not in GATHERS:
            raise ValueError(f"gather must be one of {GATHERS}, got {gather!r}")
        self.encoder, self.policy, self.gather, self.group = encoder, policy, gather, group
        self.hidden_size = _required(encoder, "hidden_size", hidden_size)
        self.dtype = _required(encoder, "dtype", dtype)
        self.device = torch.device(_required(encoder, "device", device))
        self.cost = cost or (lambda item: item.num_tokens)
        self.timed, self.check_items = timed, check_items
        self.calls: list[DPCall] = []
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
            if dist.get_backend(group) == "nccl" and self.device.type != "cuda":
                raise ValueError(f"process group backend 'nccl' needs a CUDA encoder, got device {self.device}")
        else:
            self.rank, self.world_size = 0, 1

    def __getattr__(self, name: str) -> Any:
        # name, config, preset, variable_resolution, ...: the wrapped encoder's
        if name == "encoder":
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def __repr__(self) -> str:
        return (f"DataParallelEncoder({self.encoder!r}, policy={self.policy!r}, gather={self.gather!r}, "
                f"rank={self.rank}, world_size={self.world_size})")

    def warmup(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped encoder's ``warmup`` (per rank, no collective), or nothing when it has none."""
        fn = getattr(self.encoder, "warmup", None)
        return fn(*args, **kwargs) if callable(fn) else None

    def plan(self, items: Sequence[MultimodalItem]) -> Assignment:
        """The assignment a call with these items uses (the same on every rank)."""
        return assign([int(self.cost(item)) for item in items], self.world_size, self.policy)

    @torch.inference_mode()
    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        items = list(items)
        for k, item in enumerate(items):
            if not isinstance(item, MultimodalItem):
                raise TypeError(f"DataParallelEncoder: item {k} is {type(item).__name__}, not a MultimodalItem")
        if self.world_size == 1:
            return list(self.encoder(items))  # exactly the single-GPU path, no collective
        if not items:
            return []  # every rank sees the same empty call: nobody enters a collective
        if self.check_items:
            self._check_same_items(items)
        plan = self.plan(items)
        rows = [[items[i].num_tokens for i in share] for share in plan.items]
        max_rows = max(sum(r) for r in rows)
        marks = []
        mark = (lambda: marks.append(_mark(self.device))) if self.timed else (lambda: None)
        mark()
        local = self._encode_local([items[i] for i in plan.items[self.rank]], max_rows)
        mark()
        parts = self._gather(local) if max_rows else [local] * self.world_size
        mark()
        out = self._reorder(parts, plan, rows, len(items))
        mark()
        if self.timed:
            self.calls.append(DPCall(plan, self.rank, tuple(marks)))
        return list(torch.split(out, [item.num_tokens for item in items]))

    def _encode_local(self, mine: list[MultimodalItem], max_rows: int) -> torch.Tensor:
        """This rank's rows, end to end, in a (max_rows, hidden) buffer (the tail is padding)."""
        buf = torch.empty(max_rows, self.hidden_size, dtype=self.dtype, device=self.device)
        if not mine:
            return buf
        outs = list(self.encoder(mine))
        if len(outs) != len(mine):
            raise ValueError(f"DataParallelEncoder rank {self.rank}: the encoder returned {len(outs)} "
                             f"tensors for {len(mine)} items")
        for k, (item, out) in enumerate(zip(mine, outs)):
            if tuple(out.shape) != (item.num_tokens, self.hidden_size) or out.dtype != self.dtype:
                raise ValueError(
                    f"DataParallelEncoder rank {self.rank}: local item {k} (hash {item.hash[:12]}) came back "
                    f"{tuple(out.shape)} {out.dtype}, expected {(item.num_tokens, self.hidden_size)} {self.dtype}")
        torch.cat(outs, out=buf[:sum(item.num_tokens for item in mine)])  # one copy, into the send buffer
        return buf

    def _gather(self, local: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's (max_rows, hidden) buffer, in rank order."""
        if self.gather == "all_gather":
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local, group=self.group)
            return parts
        flat = torch.empty((self.world_size * local.shape[0], local.shape[1]), dtype=local.dtype, device=local.device)
        _gather_into_tensor(flat, local, group=self.group)
        return list(flat.view(self.world_size, *local.shape).unbind(0))

    @staticmethod
    def _reorder(parts: list[torch.Tensor], plan: Assignment, rows: list[list[int]], n: int) -> torch.Tensor:
        """Every rank's real rows in item order, one compact copy (not keeping the gather buffers alive)."""
        pieces: list[torch.Tensor | None] = [None] * n
        for r, (share, counts) in enumerate(zip(plan.items, rows)):
            start = 0
            for i, count in zip(share, counts):
                pieces[i] = parts[r][start:start + count]
                start += count
        return torch.cat(pieces)

    def _check_same_items(self, items: list[MultimodalItem]) -> None:
        digest = hashlib.sha256(repr([(item.hash, item.num_tokens) for item in items]).encode()).hexdigest()
        seen: list[Any] = [None] * self.world_size
        dist.all_gather_object(seen, (len(items), digest), group=self.group)
        if len(set(seen)) != 1:
            raise ValueError(f"DataParallelEncoder rank {self.rank}: ranks were called with different items "
                             f"(count, digest) per rank: {seen}")

    def reset_calls(self) -> None:
        self.calls = []


def _required(encoder: object, name: str, given: Any) -> Any:
    if given is not None:
        return given
    value = getattr(encoder, name, None)
    if value is None:
        raise TypeError(f"DataParallelEncoder: the wrapped encoder {type(encoder).__name__} has no {name!r}; "
                        f"pass {name}=... explicitly")
    return value
