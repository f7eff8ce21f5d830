"""Token buckets: the few input sizes an encoder compiles and captures, and packing calls into them.

A serving stream changes the encoder's input at almost every step (which requests share the step,
how many images miss, their sizes). Compiled code and CUDA graphs are specialised to one shape, so
vitkit pads every call up to one of a small, fixed set of sizes and keeps one compiled graph per
size, never per layout (nano-vllm's ``capture_cudagraph`` does this for decode batch sizes; vLLM's
encoder CUDA graphs and SGLang's ViT graph runner for vision towers).

The unit of a size is what the tower's tensors are shaped by: patches for Qwen2.5-VL (rows before
the 2x2 merge), images for the fixed-resolution towers. ``pack`` follows vLLM's encoder packing:
items are sorted largest first and packed first-fit under the largest bucket and a maximum item
count; each pack is then padded to the smallest bucket that holds it. An item larger than the
largest bucket is a pack of its own with no bucket: it runs without a graph, and still exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitkit.checks import positive_int


@dataclass(frozen=True)
class Buckets:
    """Padded call sizes, ascending, and the most items one call may pack.

    ``multiple``: every size must be a multiple of it (Qwen2.5-VL: the 2x2 merge unit, 4 patches,
    so padding never splits a merged row).
    """

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
        for s in self.sizes:
            if s >= size:
                return s
        return None


@dataclass(frozen=True)
class Pack:
    """Items (indices into the call's item list) run together, their total size, and its bucket
    (None: larger than the largest bucket, run unpadded without a graph)."""

    indices: tuple[int, ...]
    size: int
    bucket: int | None

    @property
    def padding(self) -> int:
        return 0 if self.bucket is None else self.bucket - self.size


def pack(sizes: Sequence[int], buckets: Buckets) -> list[Pack]:
    """Pack items of ``sizes`` into calls: largest first, first fit under ``buckets.largest`` and
    ``buckets.max_items``; each pack padded to the smallest bucket that holds it.

    Every index appears in exactly one pack; packs list indices largest item first (ties in
    input order), so a caller restores the input order from the indices.
    """
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
    """(real, padding) summed over ``calls`` (each a list of item sizes) packed into ``buckets``:
    the padding-waste figure that the default bucket sets were chosen by."""
    real = pad = 0
    for sizes in calls:
        for p in pack(list(sizes), buckets):
            real += p.size
            pad += p.padding
    return real, pad
