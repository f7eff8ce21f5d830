"""Notebook 01's model: chunk windows over a few requests, step by step, in both embed modes.

``chunk_plan`` lays out requests from the photos in ``data/``, cuts each prompt into windows
and runs every step through ``embed_chunks`` twice, once per mode, each mode with its own cache,
recording for every window which items it touches and whether each was a cache hit, encoded by
this window, or shared (encoded once in the step for another window that missed it too).

Scheduling is deliberately the simplest chunked prefill: every unfinished request advances by
``chunk_size`` tokens per step, so step ``s`` gives each request the window
``[s * chunk_size, (s + 1) * chunk_size)``. SGLang and vLLM share one token budget between the
requests of a step instead; ``vitkit.sim`` models that, notebook 01 only needs the windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vitkit.cache import EmbeddingCache
from vitkit.chunk import ChunkEntry, find_chunk_items
from vitkit.embed import MODES, embed_chunks
from vitkit.item import MultimodalItem
from vitkit.processing import make_request
from vitkit.request import Request
from vitkit.span import Span
from vitkit.viz.photos import photo_items, photo_names

TOY_HIDDEN = 1  # the toy encoder's output width: cache sizes read directly in embedding rows
TOY_BYTES_PER_TOKEN = 4 * TOY_HIDDEN  # float32
STATUSES = ("hit", "encoded", "shared")


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"PlanSettings.{name} must be a positive int, got {value!r}")
        for name in ("cache_tokens", "text_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PlanSettings.{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True)
class ItemInWindow:
    """One item a window touches: which part of its span lies inside, and what happened to it."""

    item: int  # index in the request
    photo: str
    part: Span  # tokens of the item's span inside the window
    status: str  # "hit" | "encoded" (by this window) | "shared" (encoded in this step for another window)
    again: bool = False  # encoded although an earlier step had encoded it already (evicted or never stored)


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
    photo_names: tuple[str, ...] = field(default=())  # all photos of data/: colours stay put across plans

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
        """One row per window of ``mode``: the items it touched (``index:photo``), hits, misses,
        the items it encoded (``*`` = encoded again after an earlier step had), misses shared
        with another window of the step, and the encoder calls of its whole step."""
        calls = {s.step: s.encoder_calls for s in self.steps_of(mode)}
        rows = []
        for w in self.windows_of(mode):
            rows.append({
                "step": w.step,
                "request": w.request,
                "window": f"[{w.window.start}, {w.window.stop})",
                "items": ", ".join(f"{i.item}:{i.photo}" for i in w.items) or "-",
                "hits": w.count("hit"),
                "misses": w.count("encoded") + w.count("shared"),
                "encoded here": ", ".join(f"{i.item}{'*' if i.again else ''}" for i in w.items if i.status == "encoded") or "-",
                "shared": w.count("shared"),
                "step encoder calls": calls[w.step],
            })
        return rows


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def toy_encoder(items: list[MultimodalItem]) -> list[torch.Tensor]:
    """A cheap deterministic stand-in for a ViT: ``(num_tokens, 1)`` rows derived from the hash.

    Notebook 01 is about which items get encoded when, not about the embeddings, so it needs
    no model; equal content still gives equal embeddings, as a real encoder would.
    """
    return [torch.full((item.num_tokens, TOY_HIDDEN), float(int(item.hash[:6], 16))) for item in items]


def plan_requests(settings: PlanSettings) -> tuple[list[Request], list[tuple[str, ...]]]:
    """Requests of text and photos: request ``r``'s image ``j`` is photo ``(r * K + j) % distinct``.

    Text runs differ by request (48, 64, 80... tokens by default) so windows cut images at
    different places in different requests.
    """
    k = settings.images_per_request
    # only the photos some request shows get processed: a new image size costs ~80 ms per photo
    pool = photo_items(settings.image_size, min(settings.distinct_images, settings.num_requests * k), settings.preset)
    requests, photos = [], []
    for r in range(settings.num_requests):
        text = settings.text_tokens + 16 * r
        chosen = [pool[(r * k + j) % len(pool)] for j in range(k)]
        segments: list[int | MultimodalItem] = []
        for name, item in chosen:
            segments += [text, item]
        segments.append(text)
        requests.append(make_request(r, segments, settings.preset))
        photos.append(tuple(name for name, _ in chosen))
    return requests, photos


def windows_at(requests: Sequence[Request], step: int, chunk_size: int) -> list[tuple[Request, Span]]:
    """The ``(request, window)`` pairs of step ``step``: unfinished requests, in request order."""
    start = step * chunk_size
    return [(r, Span(start, min(start + chunk_size, r.prompt_len))) for r in requests if start < r.prompt_len]


def chunk_plan(settings: PlanSettings | None = None, **overrides: object) -> ChunkPlan:
    """Run ``settings`` (or ``PlanSettings(**overrides)``) through both modes, step by step."""
    settings = settings or PlanSettings(**overrides)
    requests, photos = plan_requests(settings)
    windows: list[WindowResult] = []
    steps: list[StepResult] = []
    for mode in MODES:
        cache = EmbeddingCache(max(1, settings.cache_tokens * TOY_BYTES_PER_TOKEN))  # 1 byte holds nothing
        ever_encoded: set[str] = set()
        step = 0
        while batch := windows_at(requests, step, settings.chunk_size):
            w, s = _run_step(mode, step, batch, photos, cache, ever_encoded)
            windows += w
            steps.append(s)
            step += 1
    return ChunkPlan(settings, tuple(requests), tuple(photos), tuple(windows), tuple(steps), photo_names())


def _run_step(
    mode: str,
    step: int,
    batch: list[tuple[Request, Span]],
    photos: Sequence[tuple[str, ...]],
    cache: EmbeddingCache,
    ever_encoded: set[str],
) -> tuple[list[WindowResult], StepResult]:
    """One step of ``mode``. Per-request mode serves requests one after another (as SGLang's
    legacy path does), so each request's lookups see the puts of the requests before it: run it
    as one ``embed_chunks`` call per request to observe the cache between them."""
    groups = [batch] if mode == "batched" else [[pair] for pair in batch]
    windows, calls, items, tokens, hits, misses, again = [], 0, 0, 0, 0, 0, 0
    for group in groups:
        present = {e.item.hash for r, w in group for e in _touching(r, w) if cache.peek(e.item.hash) is not None}
        result = embed_chunks(group, toy_encoder, cache, mode=mode)
        encoded = list(result.encoded_hashes)
        again += sum(h in ever_encoded for h in encoded)
        windows += _window_results(mode, step, group, photos, present, encoded, ever_encoded)
        ever_encoded.update(encoded)
        calls, items, tokens = calls + result.encoder_calls, items + result.encoded_items, tokens + result.encoded_tokens
        hits, misses = hits + result.cache_hits, misses + result.cache_misses
    stats = cache.stats()
    return windows, StepResult(mode, step, len(batch), calls, items, tokens, hits, misses, again, stats.bytes, stats.pinned_bytes)


def _touching(request: Request, window: Span) -> list[ChunkEntry]:
    return find_chunk_items(request, window, None)  # no cache: touches no counters or recency


def _window_results(
    mode: str,
    step: int,
    group: list[tuple[Request, Span]],
    photos: Sequence[tuple[str, ...]],
    present: set[str],
    encoded: list[str],
    ever_encoded: set[str],
) -> list[WindowResult]:
    """Label each touched item: hit if cached before the call, else encoded by the first window
    of the call that missed it and shared by any later one (batched de-duplication)."""
    unclaimed = set(encoded)
    out = []
    for request, window in group:
        marks = []
        for entry in _touching(request, window):
            index = request.spans.index(entry.span)  # spans are unique; items may repeat
            key = entry.item.hash
            if key in present:
                status = "hit"
            elif key in unclaimed:
                status = "encoded"
                unclaimed.discard(key)
            else:
                status = "shared"
            again = status == "encoded" and key in ever_encoded
            marks.append(ItemInWindow(index, photos[request.rid][index], entry.span.intersect(window), status, again))
        out.append(WindowResult(mode, step, request.rid, window, tuple(marks)))
    return out
