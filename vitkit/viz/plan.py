"""Notebook 01's model: requests of ``data/`` photos (processed once per size, memoised for sliders) replayed
through ``vitkit.sim``'s step loop once per embed mode.

Every unfinished request advances ``chunk_size`` tokens a step (no shared step budget), so step ``s``'s window is
``[s * chunk_size, (s + 1) * chunk_size)``; each item in it is a cache hit, encoded by it, or shared (encoded once
in the step for another window that missed it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image

from vitkit.checks import non_negative_int, positive_int
from vitkit.costs.clock import StepClock
from vitkit.embed import ENCODING_FATES, MODES
from vitkit.images import image_paths, load_images
from vitkit.item import MultimodalItem
from vitkit.processing import make_items, make_request
from vitkit.request import Request
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.replay import WindowRow, replay
from vitkit.sim.scheduler import Arrival, SchedulerConfig
from vitkit.span import Span

TOY_HIDDEN = 1  # the toy encoder's output width: cache sizes read directly in embedding rows
TOY_BYTES_PER_TOKEN = 4 * TOY_HIDDEN  # float32


@dataclass(frozen=True)
class PlanSettings:
    """What notebook 01's sliders set. Sizes in tokens unless named otherwise."""

    chunk_size: int = 384  # tokens each request advances per step
    num_requests: int = 3
    images_per_request: int = 2
    image_size: int = 448  # px, the longer side of each photo after resizing
    cache_tokens: int = 4096  # embedding rows the cache holds; 0 = no cache
    distinct_images: int = 4  # photos drawn from; fewer means more repeats across requests
    text_tokens: int = 48  # text before each image and after the last; grows by 16 per request
    preset: str = "qwen2.5-vl-7b"  # whose image processor turns photos into items

    def __post_init__(self) -> None:
        for name in ("chunk_size", "num_requests", "images_per_request", "image_size", "distinct_images"):
            positive_int(f"PlanSettings.{name}", getattr(self, name))
        for name in ("cache_tokens", "text_tokens"):
            non_negative_int(f"PlanSettings.{name}", getattr(self, name))


@dataclass(frozen=True)
class ItemInWindow:
    """One item a window touches: which part of its span lies inside, and what happened to it."""

    item: int  # index in the request
    photo: str
    part: Span  # tokens of the item's span inside the window
    status: str  # "hit" | "encoded" (by this window) | "shared" (encoded in this step for another window)
    again: bool = False  # encoded although an earlier encoder call had encoded it already (evicted or never stored)


@dataclass(frozen=True)
class WindowResult:
    mode: str
    step: int
    request: int
    window: Span
    items: tuple[ItemInWindow, ...]

    def count(self, status: str) -> int:
        return sum(i.status == status for i in self.items)


@dataclass(frozen=True)
class StepResult:
    """One ``embed_chunks`` step of one mode: its cost and the cache after it (bytes)."""

    mode: str
    step: int
    windows: int
    encoder_calls: int
    encoded_items: int
    encoded_tokens: int
    cache_hits: int
    cache_misses: int
    reencoded_items: int
    cache_bytes: int
    pinned_bytes: int


@dataclass(frozen=True)
class ChunkPlan:
    settings: PlanSettings
    requests: tuple[Request, ...]
    photos: tuple[tuple[str, ...], ...]  # photo name of each item, per request
    windows: tuple[WindowResult, ...]  # both modes, step-major
    steps: tuple[StepResult, ...]  # both modes
    photo_names: tuple[str, ...]  # all photos of data/: colours stay put across plans

    def windows_of(self, mode: str) -> list[WindowResult]:
        return [w for w in self.windows if w.mode == _check_mode(mode)]

    def steps_of(self, mode: str) -> list[StepResult]:
        return [s for s in self.steps if s.mode == _check_mode(mode)]

    @property
    def num_steps(self) -> int:
        return 1 + max((w.step for w in self.windows), default=-1)

    def total(self, mode: str, what: str) -> int:
        """Sum of a ``StepResult`` counter (e.g. ``"encoder_calls"``) over the steps of ``mode``."""
        return sum(getattr(s, what) for s in self.steps_of(mode))

    def table(self, mode: str) -> list[dict[str, object]]:
        """One row per window of ``mode``: its items (``index:photo``), hits, misses, the items it encoded for the
        first time and those it encoded again (an earlier call had, the cache no longer held them), misses shared
        with another window, and its step's encoder calls."""
        calls = {s.step: s.encoder_calls for s in self.steps_of(mode)}

        def encoded(w: WindowResult, again: bool) -> str:
            return ", ".join(str(i.item) for i in w.items if i.status == "encoded" and i.again == again) or "-"

        return [{
            "step": w.step, "request": w.request, "window": f"[{w.window.start}, {w.window.stop})",
            "items": ", ".join(f"{i.item}:{i.photo}" for i in w.items) or "-",
            "hits": w.count("hit"), "misses": w.count("encoded") + w.count("shared"),
            "encoded here (E)": encoded(w, False), "encoded again (R)": encoded(w, True),
            "shared (S)": w.count("shared"), "step encoder calls": calls[w.step],
        } for w in self.windows_of(mode)]


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def toy_encoder(items: list[MultimodalItem]) -> list[torch.Tensor]:
    """A stand-in for a ViT: ``(num_tokens, 1)`` rows from the item's hash, so equal content embeds equally."""
    return [torch.full((item.num_tokens, TOY_HIDDEN), float(int(item.hash[:6], 16))) for item in items]


@lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, Image.Image], ...]:
    return tuple((p.stem, im) for p, im in zip(image_paths(), load_images()))


@lru_cache(maxsize=512)
def _photo_item(index: int, size: int, preset: str) -> tuple[str, MultimodalItem]:
    name, image = _photos()[index]
    scale = positive_int("image size (px)", size) / max(image.size)  # the longer side becomes ``size`` px
    w, h = image.size
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    (item,) = make_items([image], preset)
    return name, item


def photo_names() -> tuple[str, ...]:
    """File stems of the photos in ``data/``, sorted: the order ``photo_items`` uses."""
    return tuple(name for name, _ in _photos())


def photo_items(size: int, count: int, preset: str = "qwen2.5-vl-7b") -> list[tuple[str, MultimodalItem]]:
    """``(name, item)`` for the first ``count`` photos of ``data/``, longer side ``size`` px, through ``preset``'s
    processor; memoised, so a photo is the same item in every request and slider position that shows it."""
    available = len(_photos())
    if positive_int("photo count", count) > available:
        raise ValueError(f"asked for {count} photos; data/ holds {available}")
    # two threads: the processor's numpy work releases the GIL
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda i: _photo_item(i, size, preset), range(count)))


def plan_requests(settings: PlanSettings) -> tuple[list[Request], list[tuple[str, ...]]]:
    """Requests of text and photos (request ``r``'s image ``j`` is photo ``(r * K + j) % distinct``); text runs
    grow by 16 tokens a request, so windows cut images at different places in different requests."""
    k = settings.images_per_request
    # process only the photos some request shows
    pool = photo_items(settings.image_size, min(settings.distinct_images, settings.num_requests * k), settings.preset)
    requests, photos = [], []
    for r in range(settings.num_requests):
        text = settings.text_tokens + 16 * r
        chosen = [pool[(r * k + j) % len(pool)] for j in range(k)]
        segments: list[int | MultimodalItem] = [part for _, item in chosen for part in (text, item)] + [text]
        requests.append(make_request(r, segments, settings.preset))
        photos.append(tuple(name for name, _ in chosen))
    return requests, photos


def chunk_plan(settings: PlanSettings | None = None, **overrides: object) -> ChunkPlan:
    """Run ``settings`` (or ``PlanSettings(**overrides)``) through both modes, step by step; per-request mode
    serves a step's requests one after another, so each finds what an earlier one of the step stored."""
    settings = settings or PlanSettings(**overrides)
    requests, photos = plan_requests(settings)
    by_rid = {r.rid: r for r in requests}
    # every unfinished request advances chunk_size tokens a step: no step budget, no running limit
    scheduler = SchedulerConfig(chunked_prefill_size=None, long_prefill_token_threshold=settings.chunk_size)
    arrivals = [Arrival(r.rid, r.prompt_len) for r in requests]
    windows: list[WindowResult] = []
    steps: list[StepResult] = []
    for mode in MODES:
        config = ReplayConfig(scheduler, mode=mode, cache_tokens=settings.cache_tokens)
        run = replay(by_rid, arrivals, config, StepClock(step_ms=1.0), toy_encoder, row_bytes=TOY_BYTES_PER_TOKEN)
        windows += [_window_result(mode, w, by_rid[w.rid], photos) for w in run.window_rows]
        steps += [StepResult(mode, r.step, len(r.windows), r.encoder_calls, r.encoded_items, r.encoded_tokens, r.hits,
                             r.misses, r.re_encodings, r.cache_bytes, r.pinned_bytes) for r in run.rows]
    return ChunkPlan(settings, tuple(requests), tuple(photos), tuple(windows), tuple(steps), photo_names())


def _window_result(mode: str, row: WindowRow, request: Request, photos: Sequence[tuple[str, ...]]) -> WindowResult:
    window = Span(row.start, row.stop)
    marks = tuple(
        ItemInWindow(index, photos[request.rid][index], request.spans[index].intersect(window),
                     "encoded" if fate in ENCODING_FATES else fate, again)
        for index, fate, again in zip(row.items, row.fates, row.again)
    )
    return WindowResult(mode, row.step, request.rid, window, marks)
