"""Named benchmark sweeps: which encoder, how many requests and images, which sizes, hit
fractions and token budgets. A sweep's points are the product of its axes."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vitkit.checks import positive_int

# A resolution is a square side in pixels, "native" (the fixed-resolution tower's own size),
# or "mixed" (a fixed cycle of sizes and aspect ratios, below).
Resolution = int | str
RESOLUTION_LABELS = ("native", "mixed")

# (height, width) pixels, multiples of 28 so Qwen2.5-VL's processor keeps them as they are:
# small to large, portrait and landscape, like a serving mix. Mean about 650x650.
MIXED_SIZES: tuple[tuple[int, int], ...] = (
    (224, 224), (448, 336), (672, 448), (336, 896), (896, 672), (1344, 1008), (560, 560), (448, 1344),
)
MIXED_SIZES_TINY: tuple[tuple[int, int], ...] = ((56, 56), (84, 56), (56, 112), (112, 84))


@dataclass(frozen=True)
class SweepPoint:
    """One measured configuration; both modes of ``embed_chunks`` run at each point."""

    sweep: str
    encoder: str
    requests: int
    images_per_request: int
    resolution: Resolution
    hit_fraction: float
    max_tokens_per_call: int | None

    @property
    def images(self) -> int:
        return self.requests * self.images_per_request


@dataclass(frozen=True)
class Sweep:
    """Axes of one sweep; ``points()`` is their product, in the order written."""

    name: str
    encoder: str
    requests: tuple[int, ...] = (1,)
    images_per_request: tuple[int, ...] = (1,)
    resolutions: tuple[Resolution, ...] = ("native",)
    hit_fractions: tuple[float, ...] = (0.0,)
    max_tokens_per_call: tuple[int | None, ...] = (None,)
    description: str = ""

    def __post_init__(self) -> None:
        check_sweep(self)

    def points(self) -> list[SweepPoint]:
        axes = (self.requests, self.images_per_request, self.resolutions, self.hit_fractions, self.max_tokens_per_call)
        return [SweepPoint(self.name, self.encoder, *values) for values in itertools.product(*axes)]


def _check_positive_ints(sweep: str, axis: str, values: tuple, *, allow_none: bool = False) -> None:
    if not values:
        raise ValueError(f"sweep {sweep!r}: {axis} is empty")
    for v in values:
        if v is not None or not allow_none:
            positive_int(f"sweep {sweep!r}: {axis}", v)


def check_sweep(sweep: Sweep) -> None:
    """Raise ValueError naming the sweep and axis for empty axes or out-of-range values."""
    name = sweep.name
    if not sweep.encoder or not isinstance(sweep.encoder, str):
        raise ValueError(f"sweep {name!r}: encoder must be a preset name, got {sweep.encoder!r}")
    _check_positive_ints(name, "requests", sweep.requests)
    _check_positive_ints(name, "images_per_request", sweep.images_per_request)
    _check_positive_ints(name, "max_tokens_per_call", sweep.max_tokens_per_call, allow_none=True)
    if not sweep.resolutions:
        raise ValueError(f"sweep {name!r}: resolutions is empty")
    for r in sweep.resolutions:
        if isinstance(r, str):
            if r not in RESOLUTION_LABELS:
                raise ValueError(
                    f"sweep {name!r}: resolution {r!r} is neither a pixel side nor one of {RESOLUTION_LABELS}"
                )
        else:
            positive_int(f"sweep {name!r}: resolution (px side)", r)
    if not sweep.hit_fractions:
        raise ValueError(f"sweep {name!r}: hit_fractions is empty")
    for h in sweep.hit_fractions:
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0.0 <= h < 1.0:
            raise ValueError(f"sweep {name!r}: hit fraction must be in [0, 1), got {h!r}")


CLIP, SIGLIP, QWEN = "clip-l-336", "siglip-so400m-384", "qwen2.5-vl-7b"
BATCH = (1, 2, 4, 8, 16, 32, 64)

_GPU_SWEEPS = (
    Sweep("clip-batch", CLIP, requests=BATCH, description="CLIP-L/336, 1..64 requests x 1 image"),
    Sweep("siglip-batch", SIGLIP, requests=BATCH, description="SigLIP so400m/384, 1..64 requests x 1 image"),
    Sweep("qwen-batch", QWEN, requests=(1, 2, 4, 8, 16), resolutions=(448,),
          description="Qwen2.5-VL tower, 1..16 requests x 1 image of 448x448"),
    Sweep("qwen-resolution", QWEN, requests=(8,), resolutions=(224, 448, 672, 896, 1120, 1344, "mixed"),
          description="Qwen2.5-VL tower, 8 requests x 1 image, 224..1344 px side and a mixed-size case"),
    Sweep("images-per-request", CLIP, requests=(64,), images_per_request=(1, 2, 4, 8),
          description="CLIP-L/336, 64 requests x 1..8 images (the bookkeeping target is 64 x 4)"),
    Sweep("cache-hits", CLIP, requests=(32,), images_per_request=(2,), hit_fractions=(0.0, 0.25, 0.5, 0.9),
          description="CLIP-L/336, 32 requests x 2 images, a share of them already cached"),
    Sweep("token-budget", QWEN, requests=(16,), resolutions=(448,),
          max_tokens_per_call=(512, 1024, 2048, 4096),
          description="Qwen2.5-VL tower, 16 x 448x448 (4096 rows), max_tokens_per_call 512..4096; memory model"),
)

_QUICK_SWEEPS = (
    Sweep("quick-clip", CLIP, requests=(1, 8, 64), description="GPU sanity: CLIP-L/336, 1/8/64 requests"),
    Sweep("quick-qwen", QWEN, requests=(1, 16), resolutions=(448,), description="GPU sanity: Qwen2.5-VL, 1/16 x 448"),
)

_CPU_SWEEPS = (
    Sweep("cpu-clip", "clip-tiny", requests=(1, 2, 4), description="CPU smoke: tiny CLIP"),
    Sweep("cpu-siglip", "siglip-tiny", requests=(1, 4), description="CPU smoke: tiny SigLIP"),
    Sweep("cpu-qwen", "qwen2.5-vl-tiny", requests=(2,), resolutions=(56, 112, "mixed"),
          description="CPU smoke: tiny Qwen2.5-VL"),
    Sweep("cpu-hits", "clip-tiny", requests=(4,), images_per_request=(2,), hit_fractions=(0.0, 0.5),
          description="CPU smoke: cache hits"),
    Sweep("cpu-budget", "qwen2.5-vl-tiny", requests=(4,), resolutions=(112,), max_tokens_per_call=(16, 32, 64),
          description="CPU smoke: token budget"),
)

# Every single sweep by its own name, then the groups.
SWEEPS: dict[str, tuple[Sweep, ...]] = {s.name: (s,) for s in _GPU_SWEEPS + _QUICK_SWEEPS + _CPU_SWEEPS}
SWEEPS["full"] = _GPU_SWEEPS
SWEEPS["quick"] = _QUICK_SWEEPS
SWEEPS["cpu-smoke"] = _CPU_SWEEPS

# Command-line axis name -> Sweep field.
OVERRIDABLE = {
    "encoder": "encoder",
    "requests": "requests",
    "images_per_request": "images_per_request",
    "resolution": "resolutions",
    "hit_fraction": "hit_fractions",
    "max_tokens_per_call": "max_tokens_per_call",
}


def get_sweeps(name: str, overrides: Mapping[str, Any] | None = None) -> tuple[Sweep, ...]:
    """The sweeps of preset ``name``, each with ``overrides`` (axis -> values) applied.

    An override replaces that axis in every sweep of the preset (``--requests 1,2`` on ``full``
    runs every sweep at 1 and 2 requests). Unknown names or axes raise ValueError.
    """
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; known: {sorted(SWEEPS)}")
    changes = {}
    for axis, values in (overrides or {}).items():
        if values is None:
            continue
        if axis not in OVERRIDABLE:
            raise ValueError(f"cannot override {axis!r}; overridable axes: {sorted(OVERRIDABLE)}")
        field = OVERRIDABLE[axis]
        changes[field] = values if field == "encoder" else tuple(values)
    return tuple(replace(s, **changes) for s in SWEEPS[name])
