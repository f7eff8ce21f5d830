"""Token buckets: the few input sizes an encoder compiles and captures, and packing calls into them.

Compiled code and CUDA graphs are specialised to one shape while a serving stream changes the input
every step, so every call is padded to one of a few sizes, one graph per size (as nano-vllm, vLLM's
encoder graphs and SGLang's ViT graph runner do). Units: patches for Qwen2.5-VL, images otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitkit.checks import positive_int


@dataclass(frozen=True)
class Buckets:
    """Padded call sizes, ascending, and the most items one call may pack; every size a ``multiple``
    (Qwen2.5-VL: 4 patches, so padding never splits a merged row)."""

    sizes: tuple[int, ...]
    max_items: int
    multiple: int = 1

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        object.__setattr__(self, "sizes", sizes)
        if not sizes:
            raise ValueError("buckets: sizes is empty; give at least one size")
        positive_int("buckets: multiple", self.multiple)
        for s in sizes:
            positive_int(f"buckets: size in {sizes}", s)
            if s % self.multiple:
                raise ValueError(f"buckets: size {s} is not a multiple of {self.multiple} (sizes {sizes})")
        if list(sizes) != sorted(set(sizes)):
            raise ValueError(f"buckets: sizes must be strictly ascending, got {sizes}")
        positive_int("buckets: max_items", self.max_items)

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def pick(self, size: int) -> int | None:
        """The smallest bucket holding ``size``; None when ``size`` exceeds the largest."""
        if size < 0:
            raise ValueError(f"buckets: size must be >= 0, got {size}")
        return next((s for s in self.sizes if s >= size), None)


@dataclass(frozen=True)
class Pack:
    """Items (indices into the call's list) run together, their size, and bucket (None: too large)."""

    indices: tuple[int, ...]
    size: int
    bucket: int | None

    @property
    def padding(self) -> int:
        return 0 if self.bucket is None else self.bucket - self.size


def pack(sizes: Sequence[int], buckets: Buckets) -> list[Pack]:
    """Pack items of ``sizes`` into calls as vLLM's encoder does: largest first, first fit under
    ``buckets.largest`` and ``max_items``, each pack padded to the smallest bucket that holds it; an item
    over the largest bucket is a pack of its own with no bucket. Indices listed largest item first."""
    for k, s in enumerate(sizes):
        positive_int(f"pack: item {k}'s size", s)
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
    open_packs: list[list[int]] = []
    loads: list[int] = []
    oversize: list[Pack] = []
    for k in order:
        if sizes[k] > buckets.largest:
            oversize.append(Pack((k,), sizes[k], None))
            continue
        for p, members in enumerate(open_packs):
            if loads[p] + sizes[k] <= buckets.largest and len(members) < buckets.max_items:
                members.append(k)
                loads[p] += sizes[k]
                break
        else:
            open_packs.append([k])
            loads.append(sizes[k])
    packed = [Pack(tuple(m), load, buckets.pick(load)) for m, load in zip(open_packs, loads)]
    return oversize + packed


def padding_waste(calls: Sequence[Sequence[int]], buckets: Buckets) -> tuple[int, int]:
    """(real, padding) summed over ``calls`` (each a list of item sizes) packed into ``buckets``."""
    real = pad = 0
    for sizes in calls:
        for p in pack(list(sizes), buckets):
            real += p.size
            pad += p.padding
    return real, pad
