"""Notebook 01's model: chunk windows over a few requests, step by step, in both embed modes.

``chunk_plan`` lays out requests from the photos in ``data/`` and replays them through
``vitkit.sim``'s step loop twice, once per mode, each mode with its own cache; every window's
items and their fates (cache hit, encoded by this window, or shared: encoded once in the step
for another window that missed it too) come from ``embed_chunks``' per-window outcomes.

Scheduling is deliberately the simplest chunked prefill (``Scheduler.fixed_chunk``): every
unfinished request advances by ``chunk_size`` tokens per step, so step ``s`` gives each request
the window ``[s * chunk_size, (s + 1) * chunk_size)``. SGLang and vLLM share one token budget
between the requests of a step instead; ``vitkit.sim``'s ``Scheduler`` models that, notebook 01
only needs the windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vitkit.checks import non_negative_int, positive_int
from vitkit.embed import ENCODING_FATES, MODES
from vitkit.item import MultimodalItem
from vitkit.processing import make_request
from vitkit.request import Request
from vitkit.sim.run import StepRow, WindowRow, replay
from vitkit.sim.scheduler import Arrival, Scheduler
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


def chunk_plan(settings: PlanSettings | None = None, **overrides: object) -> ChunkPlan:
    """Run ``settings`` (or ``PlanSettings(**overrides)``) through both modes, step by step.

    Per-request mode serves a step's requests one after another (as SGLang's legacy path does),
    so a request finds in the cache what an earlier request of the same step put there.
    """
    settings = settings or PlanSettings(**overrides)
    requests, photos = plan_requests(settings)
    by_rid = {r.rid: r for r in requests}
    capacity = max(1, settings.cache_tokens * TOY_BYTES_PER_TOKEN)  # 1 byte holds nothing
    windows: list[WindowResult] = []
    steps: list[StepResult] = []
    for mode in MODES:
        policy = Scheduler.fixed_chunk(settings.chunk_size)
        for r in requests:
            policy.add(Arrival(r.rid, r.prompt_len))
        run = replay(by_rid, policy, toy_encoder, capacity, mode=mode)
        windows += [_window_result(mode, w, by_rid[w.rid], photos) for w in run.window_rows]
        steps += [_step_result(row) for row in run.rows]
    return ChunkPlan(settings, tuple(requests), tuple(photos), tuple(windows), tuple(steps), photo_names())


def _window_result(mode: str, row: WindowRow, request: Request, photos: Sequence[tuple[str, ...]]) -> WindowResult:
    window = Span(row.start, row.stop)
    marks = tuple(
        ItemInWindow(index, photos[request.rid][index], request.spans[index].intersect(window),
                     "encoded" if fate in ENCODING_FATES else fate, again)
        for index, fate, again in zip(row.items, row.fates, row.again)
    )
    return WindowResult(mode, row.step, request.rid, window, marks)


def _step_result(row: StepRow) -> StepResult:
    return StepResult(
        row.mode, row.step, len(row.windows), row.encoder_calls, row.encoded_items, row.encoded_tokens,
        row.hits, row.misses, row.re_encodings, row.cache_bytes, row.pinned_bytes,
    )
