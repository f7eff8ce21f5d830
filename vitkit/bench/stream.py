"""A seeded stream of scheduler steps whose layout changes every step, as a serving stream does.

Every step draws how many images it carries, how they split into requests, each new image's
size (height and width drawn apart: mixed aspect ratios) and which images repeat one seen in a
recent step (a cache hit, when the cache still holds it). ``vitkit.bench.stream_run`` runs the
stream through ``embed_chunks``; ``bucket_choice`` scores bucket sets on its encoder calls.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vitkit.checks import positive_int
from vitkit.encoders.buckets import Buckets, pack, padding_waste
from vitkit.encoders.presets import get_preset
from vitkit.item import MultimodalItem
from vitkit.processing import qwen_grid
from vitkit.request import Request

RECENT_IMAGES = 64  # a repeated image is drawn from the last this many distinct images


@dataclass(frozen=True)
class StreamSpec:
    """What the stream draws from. Sides in pixels (variable-resolution towers only)."""

    encoder: str
    steps: int = 200
    images_per_step: tuple[int, int] = (1, 8)  # inclusive range
    images_per_request: tuple[int, int] = (1, 4)  # inclusive range
    sides: tuple[int, int] = (224, 1344)  # inclusive range, height and width drawn independently
    hit_fraction: float = 0.2  # chance an image repeats a recent one
    seed: int = 0

    def __post_init__(self) -> None:
        get_preset(self.encoder)  # names an unknown preset
        positive_int("stream: steps", self.steps)
        for name in ("images_per_step", "images_per_request", "sides"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 < lo <= hi):
                raise ValueError(f"stream: {name} must be (low, high) ints with 0 < low <= high, got {(lo, hi)!r}")
        if not 0.0 <= self.hit_fraction < 1.0:
            raise ValueError(f"stream: hit_fraction must be in [0, 1), got {self.hit_fraction!r}")


@dataclass(frozen=True)
class StreamImage:
    """One image of the stream: ``key`` identifies its content (equal key, equal pixels)."""

    key: int
    height: int
    width: int


@dataclass(frozen=True)
class StreamStep:
    """One scheduler step: its requests, each a tuple of images in prompt order."""

    index: int
    requests: tuple[tuple[StreamImage, ...], ...]

    @property
    def images(self) -> int:
        return sum(len(r) for r in self.requests)


def generate_stream(spec: StreamSpec) -> list[StreamStep]:
    """The stream's steps, the same for the same spec."""
    rng = random.Random(spec.seed)
    preset = get_preset(spec.encoder)
    recent: list[StreamImage] = []
    next_key = 0
    steps = []
    for index in range(spec.steps):
        n = rng.randint(*spec.images_per_step)
        requests = []
        while n:
            k = min(n, rng.randint(*spec.images_per_request))
            images = []
            for _ in range(k):
                if recent and rng.random() < spec.hit_fraction:
                    images.append(rng.choice(recent[-RECENT_IMAGES:]))
                    continue
                if preset.variable_resolution:
                    height, width = rng.randint(*spec.sides), rng.randint(*spec.sides)
                else:
                    height = width = preset.image_size
                image = StreamImage(next_key, height, width)
                next_key += 1
                recent.append(image)
                images.append(image)
            requests.append(tuple(images))
            n -= k
        steps.append(StreamStep(index, tuple(requests)))
    return steps


def image_rows(spec: StreamSpec, image: StreamImage) -> tuple[int, int]:
    """(embedding rows, bucket units) of an image: for Qwen2.5-VL the units are patches."""
    preset = get_preset(spec.encoder)
    if not preset.variable_resolution:
        return preset.fixed_num_tokens, 1
    t, h, w = qwen_grid(image.height, image.width, preset)
    merge = int(preset.config["spatial_merge_size"])
    return t * h * w // merge**2, t * h * w


def make_stream_items(spec: StreamSpec, steps: Sequence[StreamStep], device: str | torch.device,
                      dtype: torch.dtype = torch.bfloat16) -> dict[int, MultimodalItem]:
    """One item per distinct image, random features drawn on ``device`` (the content is irrelevant
    to timing); the hash names the stream and key, so nothing is hashed (equal key, equal hash)."""
    preset = get_preset(spec.encoder)
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    items: dict[int, MultimodalItem] = {}
    for step in steps:
        for request in step.requests:
            for image in request:
                if image.key not in items:
                    items[image.key] = _item(spec, preset, image, gen, device, dtype)
    return items


def _item(spec, preset, image: StreamImage, gen, device, dtype) -> MultimodalItem:
    key = f"stream-{spec.encoder}-{spec.seed}-{image.key}"
    if not preset.variable_resolution:
        side = preset.image_size
        feature = torch.randn(3, side, side, generator=gen, device=device).to(dtype)
        return MultimodalItem(feature, preset.fixed_num_tokens, hash=key)
    t, h, w = qwen_grid(image.height, image.width, preset)
    width = 3 * int(preset.config["temporal_patch_size"]) * preset.patch_size**2
    feature = torch.randn(t * h * w, width, generator=gen, device=device).to(dtype)
    merge = int(preset.config["spatial_merge_size"])
    return MultimodalItem(feature, t * h * w // merge**2, hash=key, meta={"image_grid_thw": (t, h, w)})


def step_requests(step: StreamStep, items: dict[int, MultimodalItem], text_tokens: int = 8) -> list[Request]:
    """The step's requests laid out as text, image, text, ... (one window covers each prompt)."""
    requests = []
    for r, images in enumerate(step.requests):
        segments: list[int | MultimodalItem] = [text_tokens]
        for image in images:
            segments += [items[image.key], text_tokens]
        requests.append(Request.from_segments(f"s{step.index}r{r}", segments))
    return requests


def miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[int]]:
    """Bucket units of each encoder call the stream makes with an unbounded cache: per step the
    new distinct images (batched), or per request its new distinct images (per_request)."""
    return [call for calls in step_miss_units(spec, steps, mode) for call in calls]


def step_miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[list[int]]]:
    """``miss_units`` grouped by step: per step, its encoder calls (none when every image was seen)."""
    seen: set[int] = set()
    per_step = []
    for step in steps:
        groups = [list(step.requests)] if mode == "batched" else [[r] for r in step.requests]
        calls = []
        for group in groups:
            call = []
            for image in (im for request in group for im in request):
                if image.key not in seen:
                    seen.add(image.key)
                    call.append(image_rows(spec, image)[1])
            if call:
                calls.append(call)
        per_step.append(calls)
    return per_step


def bucket_choice(spec: StreamSpec, candidates: dict[str, Buckets]) -> list[dict]:
    """Padding waste (padded / real units) and graph count of each candidate bucket set on the
    stream's calls in both modes: the trade-off behind the default buckets."""
    steps = generate_stream(spec)
    calls_of = {mode: miss_units(spec, steps, mode) for mode in ("batched", "per_request")}  # once, not per candidate
    rows = []
    for name, buckets in candidates.items():
        row = {"name": name, "sizes": list(buckets.sizes), "max_items": buckets.max_items, "graphs": len(buckets.sizes)}
        for mode, calls in calls_of.items():
            real, pad = padding_waste(calls, buckets)
            packs = sum(len(pack(c, buckets)) for c in calls)
            row |= {f"{mode}_waste": pad / real if real else 0.0, f"{mode}_calls": len(calls), f"{mode}_packs": packs}
        rows.append(row)
    return rows

