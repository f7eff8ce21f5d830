"""Token buckets: the few input sizes an encoder compiles and captures, and packing calls into them.

Compiled code and CUDA graphs are specialised to one shape while a serving stream changes the input
every step, so every call is padded to one of a few sizes, one graph per size (as nano-vllm, vLLM's
encoder graphs and SGLang's ViT graph runner do). Units: patches for Qwen2.5-VL, images otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vitkit.checks import positive_int


@dataclass(frozen=True)
class Buckets:
    """Padded call sizes, ascending, and the most items one call may pack; every size a ``multiple``
    (Qwen2.5-VL: 4 patches, so padding never splits a merged row). ``max_items`` counts sequences
    where a tower says so (Qwen: one per image and one per temporal patch of a video).

    ``large``: ascending sizes above ``sizes[-1]``, each for one item alone that no regular bucket holds
    (an image; a video is split into frame groups instead). Their graphs are captured on first use (or
    by ``warmup(large=True)``), so they cost memory only once such an item comes; ``large[-1]`` is the
    memory cap: a larger item runs unbucketed and eager.
    """

    sizes: tuple[int, ...]
    max_items: int
    multiple: int = 1
    large: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        sizes, large = tuple(self.sizes), tuple(self.large)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "large", large)
        if not sizes:
            raise ValueError("buckets: sizes is empty; give at least one size")
        positive_int("buckets: multiple", self.multiple)
        for what, values in (("size", sizes), ("large size", large)):
            for s in values:
                positive_int(f"buckets: {what} in {values}", s)
                if s % self.multiple:
                    raise ValueError(f"buckets: {what} {s} is not a multiple of {self.multiple} ({values})")
            if list(values) != sorted(set(values)):
                raise ValueError(f"buckets: {what}s must be strictly ascending, got {values}")
        if large and large[0] <= sizes[-1]:
            raise ValueError(f"buckets: large sizes {large} must all exceed the largest size {sizes[-1]}")
        positive_int("buckets: max_items", self.max_items)

    @property
    def largest(self) -> int:
        """The largest regular bucket: no pack of several items is larger."""
        return self.sizes[-1]

    def pick(self, size: int) -> int | None:
        """The smallest bucket holding ``size``; None when ``size`` exceeds the largest."""
        if size < 0:
            raise ValueError(f"buckets: size must be >= 0, got {size}")
        return next((s for s in self.sizes if s >= size), None)

    def pick_large(self, size: int) -> int | None:
        """The smallest large bucket holding one item of ``size``; None within ``largest`` (a regular
        bucket's) or above the cap."""
        return None if size <= self.largest else next((s for s in self.large if s >= size), None)

    def capped(self, cap: int) -> Buckets:
        """These buckets with only the large sizes up to ``cap`` (0: none; images over ``largest`` run eager)."""
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"buckets: large-bucket cap must be an int >= 0 (units), got {cap!r}")
        return replace(self, large=tuple(s for s in self.large if s <= cap))


def geometric_sizes(start: int, stop: int, step: float, multiple: int) -> tuple[int, ...]:
    """Sizes above ``start`` up to ``stop`` (included), each at most ``1 + step`` times the one before,
    rounded down to a ``multiple``: an item padded to the next size wastes under ``step`` of it."""
    sizes, size = [], start
    while size < stop:
        size = min(stop, max(size + multiple, int(size * (1 + step)) // multiple * multiple))
        sizes.append(size)
    return tuple(sizes)


@dataclass(frozen=True)
class Pack:
    """Items (indices into the call's list) run together, their size, and bucket (a regular or a large
    one; None: no bucket holds it)."""

    indices: tuple[int, ...]
    size: int
    bucket: int | None

    @property
    def padding(self) -> int:
        return 0 if self.bucket is None else self.bucket - self.size


def pack(sizes: Sequence[int], buckets: Buckets, sequences: Sequence[int] | None = None) -> list[Pack]:
    """Pack items of ``sizes`` into calls as vLLM's encoder does: largest first, first fit under
    ``buckets.largest`` and ``max_items`` (counted in ``sequences`` per item, 1 each by default), each pack
    padded to the smallest bucket that holds it. An item over the largest bucket (or of more sequences than
    ``max_items``) is a pack of its own with no bucket: the encoder runs it in a large bucket where one
    holds it (``Buckets.pick_large``), else eager. Indices listed largest item first."""
    sequences = [1] * len(sizes) if sequences is None else list(sequences)
    if len(sequences) != len(sizes):
        raise ValueError(f"pack: {len(sizes)} sizes but {len(sequences)} sequence counts")
    for k, (s, n) in enumerate(zip(sizes, sequences)):
        positive_int(f"pack: item {k}'s size", s)
        positive_int(f"pack: item {k}'s sequence count", n)
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
    open_packs: list[list[int]] = []
    loads: list[int] = []
    counts: list[int] = []
    alone: list[Pack] = []
    for k in order:
        if sizes[k] > buckets.largest or sequences[k] > buckets.max_items:
            alone.append(Pack((k,), sizes[k], None))
            continue
        for p, members in enumerate(open_packs):
            if loads[p] + sizes[k] <= buckets.largest and counts[p] + sequences[k] <= buckets.max_items:
                members.append(k)
                loads[p] += sizes[k]
                counts[p] += sequences[k]
                break
        else:
            open_packs.append([k])
            loads.append(sizes[k])
            counts.append(sequences[k])
    packed = [Pack(tuple(m), load, buckets.pick(load)) for m, load in zip(open_packs, loads)]
    return alone + packed


def video_pieces(temporal: int, frame_units: int, buckets: Buckets) -> list[tuple[int, int]]:
    """How the bucketed encoder runs a video of ``temporal`` temporal patches of ``frame_units`` units each
    (Qwen: h*w patches): its pieces in order, each as (units, sequences). Whole when it fits the largest
    bucket within ``max_items`` sequences; else frame groups (``vitkit.item.frame_groups``) of as many temporal
    patches as both allow, the last holding the rest. A temporal patch over the largest bucket goes alone (a
    large bucket takes it, or it runs eager), as an image over it does. Images are one temporal patch."""
    positive_int("video pieces: temporal patches", temporal)
    positive_int("video pieces: units per temporal patch", frame_units)
    if temporal * frame_units <= buckets.largest and temporal <= buckets.max_items:
        return [(temporal * frame_units, temporal)]
    group = max(1, min(buckets.max_items, buckets.largest // frame_units))
    sizes = [min(group, temporal - start) for start in range(0, temporal, group)]
    return [(n * frame_units, n) for n in sizes]


def padding_waste(calls: Sequence[Sequence[int]], buckets: Buckets) -> tuple[int, int]:
    """(real, padding) summed over ``calls`` (each a list of item sizes) packed into ``buckets``."""
    real = pad = 0
    for sizes in calls:
        for p in pack(list(sizes), buckets):
            real += p.size
            pad += p.padding
    return real, pad
