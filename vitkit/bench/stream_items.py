"""What the stream benchmark draws: ``StreamSpec``, the seeded steps it gives, the items they hold (images,
videos, document scans) and the named streams of issue 19.

A new item is a video with chance ``video_fraction``, a document scan (an image larger than the largest
regular bucket, drawn from ``scan_sides``) with chance ``scan_fraction``, else an image. The kind and the
video and scan shapes come from a second generator that every new item draws from the same way, so a spec
that only changes the fractions or those shapes gives the same steps, repeats and image sizes, with some
items changed: a stream with scans and its twin without them differ in those items alone, and a spec without
videos or scans gives the stream it gave before they existed (stored results recompute their calls from it).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from vitkit.bench.sweep import check_hit_fraction
from vitkit.checks import positive_int
from vitkit.costs.encoder import VideoSize
from vitkit.encoders.presets import get_preset
from vitkit.item import MultimodalItem
from vitkit.processing import VIDEO_RESOLUTIONS, qwen_grid, qwen_video_grid, video_settings

RECENT_IMAGES = 64  # a repeated item is drawn from the last this many distinct items
KINDS = ("image", "video", "scan")


@dataclass(frozen=True)
class StreamSpec:
    """What the stream draws from; ranges are inclusive, sides in px (variable-resolution towers).

    ``video_fraction`` / ``scan_fraction``: chance a new item is a video of ``video_frames`` frames at one
    of ``video_resolutions`` (keys of ``vitkit.processing.VIDEO_RESOLUTIONS``) / a document scan of
    ``scan_sides`` px a side. ``name``: the named stream it is ("" for a plain one)."""

    encoder: str
    steps: int = 200
    images_per_step: tuple[int, int] = (1, 8)
    images_per_request: tuple[int, int] = (1, 4)
    sides: tuple[int, int] = (224, 1344)  # height and width drawn independently
    hit_fraction: float = 0.2  # chance an item repeats a recent one
    seed: int = 0
    video_fraction: float = 0.0
    video_frames: tuple[int, int] = (16, 64)
    video_resolutions: tuple[str, ...] = ("360p", "480p", "720p")
    scan_fraction: float = 0.0
    scan_sides: tuple[int, int] = (2000, 2000)
    name: str = ""

    def __post_init__(self) -> None:
        preset = get_preset(self.encoder)  # names an unknown preset
        positive_int("stream: steps", self.steps)
        for name in ("images_per_step", "images_per_request", "sides", "video_frames", "scan_sides"):
            _check_range(name, getattr(self, name))
        check_hit_fraction(self.hit_fraction, "stream: hit_fraction")
        for name in ("video_fraction", "scan_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"stream: {name} must be a number in [0, 1], got {value!r}")
        if self.video_fraction + self.scan_fraction > 1:
            raise ValueError(f"stream: video_fraction + scan_fraction must be at most 1, got "
                             f"{self.video_fraction} + {self.scan_fraction}")
        unknown = [r for r in self.video_resolutions if r not in VIDEO_RESOLUTIONS]
        if unknown or not self.video_resolutions:
            raise ValueError(f"stream: video_resolutions must be among {sorted(VIDEO_RESOLUTIONS)}, "
                             f"got {self.video_resolutions!r}")
        self._check_tower(preset)
        if not isinstance(self.name, str):
            raise ValueError(f"stream: name must be a str, got {self.name!r}")

    def _check_tower(self, preset) -> None:
        """Videos and scans need a variable-resolution tower (and videos Qwen2-VL's video processor)."""
        for name in ("video_fraction", "scan_fraction"):
            if getattr(self, name) and not preset.variable_resolution:
                raise ValueError(f"stream: {name}={getattr(self, name)} needs a variable-resolution tower; "
                                 f"{preset.name!r} resizes every image to {preset.image_size} px")
        if self.video_fraction:
            try:
                video_settings(preset)
            except ValueError as err:
                raise ValueError(f"stream: video_fraction={self.video_fraction}: {err}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StreamSpec:
        """The spec of a JSON object (lists back to tuples), as results files store it; older files
        (no videos or scans) load with those fractions 0."""
        return cls(**tuples(values))


def _check_range(name: str, pair: Any) -> None:
    lo, hi = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 < lo <= hi):
        raise ValueError(f"stream: {name} must be (low, high) ints with 0 < low <= high, got {pair!r}")


def tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with JSON lists back as tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class StreamItem:
    """One item of the stream: ``key`` identifies its content (equal key, equal pixels); an image or scan
    of ``height`` x ``width`` px, or a video (``frames`` > 0) of that frame size."""

    key: int
    height: int
    width: int
    frames: int = 0
    scan: bool = False

    @property
    def kind(self) -> str:
        """The item's kind: one of ``KINDS``."""
        return "video" if self.frames else "scan" if self.scan else "image"


@dataclass(frozen=True)
class StreamStep:
    """One scheduler step: its requests, each a tuple of items in prompt order."""

    index: int
    requests: tuple[tuple[StreamItem, ...], ...]


def generate_stream(spec: StreamSpec) -> list[StreamStep]:
    """The stream's steps, the same for the same spec."""
    rng = random.Random(spec.seed)
    kinds = random.Random(f"stream-kinds-{spec.seed}")  # a str seed is hashed the same in every process
    preset = get_preset(spec.encoder)
    recent: list[StreamItem] = []
    steps = []
    for index in range(spec.steps):
        n = rng.randint(*spec.images_per_step)
        requests = []
        while n:
            k = min(n, rng.randint(*spec.images_per_request))
            items = []
            for _ in range(k):
                if recent and rng.random() < spec.hit_fraction:
                    items.append(rng.choice(recent[-RECENT_IMAGES:]))
                    continue
                if preset.variable_resolution:
                    height, width = rng.randint(*spec.sides), rng.randint(*spec.sides)
                else:
                    height = width = preset.image_size
                recent.append(_new_item(spec, kinds, len(recent), height, width))
                items.append(recent[-1])
            requests.append(tuple(items))
            n -= k
        steps.append(StreamStep(index, tuple(requests)))
    return steps


def _new_item(spec: StreamSpec, kinds: random.Random, key: int, height: int, width: int) -> StreamItem:
    """The new item ``key``: the image of ``height`` x ``width`` px, or what ``kinds`` makes it instead."""
    # Five draws whatever the item becomes, each one ``random()`` (randint's draws vary with the range): the
    # streams of two specs that differ only in their fractions and shapes stay aligned (module docstring).
    draw = kinds.random()
    frames, resolution = _draw(kinds, *spec.video_frames), spec.video_resolutions[_draw(kinds, 0, len(
        spec.video_resolutions) - 1)]
    scan = (_draw(kinds, *spec.scan_sides), _draw(kinds, *spec.scan_sides))
    if draw < spec.video_fraction:
        return StreamItem(key, *VIDEO_RESOLUTIONS[resolution], frames=frames)
    if draw < spec.video_fraction + spec.scan_fraction:
        return StreamItem(key, *scan, scan=True)
    return StreamItem(key, height, width)


def _draw(rng: random.Random, low: int, high: int) -> int:
    """An int uniform in [low, high] from exactly one ``rng.random()``."""
    return low + min(high - low, int(rng.random() * (high - low + 1)))


def item_grid(spec: StreamSpec, item: StreamItem) -> tuple[int, int, int]:
    """(t, h, w) patches the preset's processor gives a variable-resolution item (a video's: its video
    processor's, as ``make_video_item``)."""
    if item.frames:
        return qwen_video_grid(item.frames, item.height, item.width, spec.encoder)
    return qwen_grid(item.height, item.width, spec.encoder)


def item_rows(spec: StreamSpec, item: StreamItem) -> tuple[int, int]:
    """(embedding rows, bucket units) of an item: for Qwen2.5-VL the units are patches, else images."""
    preset = get_preset(spec.encoder)
    if not preset.variable_resolution:
        return preset.fixed_num_tokens, 1
    t, h, w = item_grid(spec, item)
    return t * h * w // int(preset.config["spatial_merge_size"]) ** 2, t * h * w


def item_units(spec: StreamSpec, item: StreamItem) -> int:
    """Bucket units of an item, a video's a ``VideoSize`` that carries its temporal patches."""
    units = item_rows(spec, item)[1]
    return VideoSize(units, item_grid(spec, item)[0]) if item.frames else units


def make_stream_items(spec: StreamSpec, steps: Sequence[StreamStep], device: str | torch.device,
                      dtype: torch.dtype = torch.bfloat16) -> dict[int, MultimodalItem]:
    """One item per distinct stream item, random features on ``device``, hashed by name. Videos have the
    grid and patch layout ``make_video_item`` gives their frames; the pixels are random, as the images'
    are (processing a 64-frame 720p clip takes seconds and its float32 patches 0.4 GB of host memory)."""
    preset = get_preset(spec.encoder)
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    items: dict[int, MultimodalItem] = {}
    for item in (it for step in steps for request in step.requests for it in request):
        if item.key in items:
            continue
        key = f"stream-{spec.encoder}-{spec.seed}-{item.key}"
        if not preset.variable_resolution:
            side = preset.image_size
            feature = torch.randn(3, side, side, generator=gen, device=device).to(dtype)
            items[item.key] = MultimodalItem(feature, preset.fixed_num_tokens, hash=key)
            continue
        grid = item_grid(spec, item)
        width = 3 * int(preset.config["temporal_patch_size"]) * preset.patch_size**2
        feature = torch.randn(grid[0] * grid[1] * grid[2], width, generator=gen, device=device).to(dtype)
        modality, grid_key = ("video", "video_grid_thw") if item.frames else ("image", "image_grid_thw")
        items[item.key] = MultimodalItem(feature, item_rows(spec, item)[0], modality=modality, hash=key,
                                         meta={grid_key: grid})
    return items


def miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[int]]:
    """Bucket units of each encoder call the stream makes with an unbounded cache."""
    return [call for calls in step_miss_units(spec, steps, mode) for call in calls]


def step_miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[list[int]]]:
    """Per step, each encoder call's bucket units with an unbounded cache (one call batched, one a request);
    a video's as a ``VideoSize`` (the cost model splits it into frame groups as the encoder does)."""
    seen: set[int] = set()
    per_step = []
    for step in steps:
        groups = [list(step.requests)] if mode == "batched" else [[r] for r in step.requests]
        calls = []
        for group in groups:
            call = []
            for item in (it for request in group for it in request):
                if item.key not in seen:
                    seen.add(item.key)
                    call.append(item_units(spec, item))
            if call:
                calls.append(call)
        per_step.append(calls)
    return per_step


def stream_profile(spec: StreamSpec, steps: Sequence[StreamStep]) -> dict[str, dict[str, int]]:
    """Per kind (image, video, scan): distinct items, their embedding rows and bucket units."""
    distinct = {it.key: it for step in steps for request in step.requests for it in request}
    profile = {kind: {"items": 0, "rows": 0, "units": 0} for kind in KINDS}
    for item in distinct.values():
        rows, units = item_rows(spec, item)
        entry = profile[item.kind]
        entry["items"] += 1
        entry["rows"] += rows
        entry["units"] += units
    return profile


# Each tower's stream on a GPU and its CPU smoke twin.
GPU_STREAMS = {
    "qwen2.5-vl-7b": dict(images_per_step=(1, 8), images_per_request=(1, 4), sides=(224, 1344)),
    "clip-l-336": dict(images_per_step=(1, 64), images_per_request=(1, 4)),
}
CPU_STREAMS = {
    "qwen2.5-vl-tiny": dict(steps=12, images_per_step=(1, 6), images_per_request=(1, 3), sides=(56, 224)),
    "clip-tiny": dict(steps=12, images_per_step=(1, 16), images_per_request=(1, 4)),
}

# The named streams of issue 19, on a GPU (Qwen2.5-VL-7B) and on the CPU (the tiny tower, a smoke run):
# "mixed", images and videos; "scans", images with 2% document scans (2,000 px a side: 20,164 patches,
# over the largest regular bucket of 16,384); "no-scans", its twin without them (on a GPU the Qwen stream
# above, same seed). The CPU streams keep images within the regular buckets of CPU_NAMED_BUCKETS and scans
# and video frames above them, and take 10% scans so that 12 steps meet a few.
_GPU, _CPU = GPU_STREAMS["qwen2.5-vl-7b"], CPU_STREAMS["qwen2.5-vl-tiny"] | {"sides": (56, 112)}
_SCANS = {"gpu": dict(encoder="qwen2.5-vl-7b", **_GPU, scan_fraction=0.02, scan_sides=(2000, 2000)),
          "cpu": dict(encoder="qwen2.5-vl-tiny", **_CPU, scan_fraction=0.1, scan_sides=(168, 224))}
NAMED_STREAMS: dict[str, dict[str, dict[str, Any]]] = {
    "mixed": {"gpu": dict(encoder="qwen2.5-vl-7b", **_GPU, video_fraction=0.1, video_frames=(16, 64)),
              "cpu": dict(encoder="qwen2.5-vl-tiny", **_CPU, video_fraction=0.2, video_frames=(2, 6))},
    "scans": _SCANS,
    "no-scans": {device: spec | {"scan_fraction": 0.0} for device, spec in _SCANS.items()},
}
TWINS = {"scans": "no-scans"}  # a named stream -> the one it is measured against (run first)
# CPU bucket sizes and large sizes (patches) of the named streams: tiny images (<= 256 patches) all fit
# the tiny tower's default buckets, so these make its scans and video frames oversize as on a GPU.
CPU_NAMED_BUCKETS = ((16, 32, 64), (128, 192, 256))


def named_stream(name: str, gpu: bool, **changes: Any) -> StreamSpec:
    """The named stream's spec on a GPU or the CPU, ``changes`` applied (a twin keeps no scans: the changes
    of a command that runs a stream and its twin apply to both)."""
    if name not in NAMED_STREAMS:
        raise ValueError(f"unknown stream {name!r}; named streams: {sorted(NAMED_STREAMS)}")
    if name in TWINS.values():
        changes = {k: v for k, v in changes.items() if k != "scan_fraction"}
    return StreamSpec(**NAMED_STREAMS[name]["gpu" if gpu else "cpu"] | changes, name=name)


def check_twin(spec: StreamSpec, twin: StreamSpec) -> None:
    """ValueError unless ``twin`` is ``spec`` without scans: every other field equal but the name."""
    ignored = ("scan_fraction", "scan_sides", "name")
    differ = [f for f in fields(StreamSpec) if f.name not in ignored and getattr(spec, f.name) != getattr(twin, f.name)]
    if differ or twin.scan_fraction:
        what = ", ".join(f"{f.name} {getattr(spec, f.name)!r} vs {getattr(twin, f.name)!r}" for f in differ)
        raise ValueError(f"stream {spec.name!r}: {twin.name!r} is not its twin (the same stream without scans): "
                         f"{what or f'twin scan_fraction {twin.scan_fraction}'}")


def with_twins(names: Sequence[str]) -> list[str]:
    """``names`` in order, each stream's twin inserted before it when not already earlier."""
    out: list[str] = []
    for name in names:
        twin = TWINS.get(name)
        if twin and twin not in out:
            out.append(twin)
        if name not in out:
            out.append(name)
    return out
