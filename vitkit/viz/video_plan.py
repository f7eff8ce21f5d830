"""Notebook 01's video view, the model: one request holding a video and a short text, replayed through
``vitkit.sim``'s step loop once per engine policy for long items (``vitkit.sim.policies.ENGINE_POLICIES``).

The video is the sample clip (``data/coffee_pan.webp``) through Qwen2.5-VL's video processor
(``make_video_item``), its frames evenly sampled when fewer are asked for; or, for more frames than the clip
has or another frame size, a synthetic video (``vitkit.sim.fake.fake_video_items``: the same grid and token
count, a hash per item, no pixels: processing hundreds of real frames would hold a slider up for seconds).

Each engine takes the video as its items (``"whole"``: one item and span; ``"frame-groups:g"``: one per g
temporal patches, each its own hash and cache entry) under its own admission, call grouping and pinning.
One request alone: step ``s`` runs one window of at most ``chunk_size`` tokens (cache-aware admission may
cut it before an item that does not fit). The encoder is a stand-in (``FakeEncoder`` with ``counts_only``): the
counts are the real ``embed_chunks`` path's, the embeddings are not a ViT's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from vitkit.checks import non_negative_int, positive_int
from vitkit.costs.clock import StepClock
from vitkit.embed import ENCODING_FATES
from vitkit.images import CLIP_PATH, load_clip
from vitkit.item import MultimodalItem, parse_video_items, video_grid
from vitkit.processing import make_request, make_video_item, qwen_video_grid, video_settings
from vitkit.request import Request
from vitkit.sim.fake import FakeEncoder, fake_video_items
from vitkit.sim.policies import ENGINE_POLICIES
from vitkit.sim.replay import Run, StepRow, WindowRow, replay
from vitkit.sim.scheduler import Arrival, SchedulerConfig
from vitkit.span import Span
from vitkit.viz.plan import TOY_BYTES_PER_TOKEN, TOY_HIDDEN

PRESET = "qwen2.5-vl-7b"  # whose video processor turns the clip into an item (fake_video_items uses its grid)
ITEM_POLICIES = ("per engine", "whole", "frame-groups")  # per engine: ENGINE_POLICIES' own video_items
FRAMES_PER_PATCH = video_settings(PRESET)["temporal_patch_size"]  # frames a temporal patch holds
TEXT_BEFORE = "Here is a short clip filmed in a coffee bar."
TEXT_AFTER = "Describe how the camera moves, and what is in the cup at the end of the clip."
SYNTHETIC_ID = "synthetic video"  # fake_video_items' content id: one video, whatever engine takes it


@dataclass(frozen=True)
class VideoSettings:
    """What the video view's controls set. Sizes in tokens (one a video embedding row) unless named otherwise."""

    frames: int = 20  # the sample clip's own frame count (data/README.md)
    height: int | None = None  # px a frame; None (with width): the clip's own frame size
    width: int | None = None
    chunk_size: int = 1024  # tokens the request advances a step (the chunked-prefill window)
    cache_tokens: int = 1024  # embedding rows the cache holds; 0 = no cache
    items: str = "per engine"  # one of ITEM_POLICIES
    group_size: int = 2  # temporal patches a frame group ("frame-groups:g"), vitkit's VITKIT_FRAME_GROUP
    engines: tuple[str, ...] = tuple(ENGINE_POLICIES)

    def __post_init__(self) -> None:
        for name in ("frames", "chunk_size"):
            positive_int(f"VideoSettings.{name}", getattr(self, name))
        non_negative_int("VideoSettings.cache_tokens (rows)", self.cache_tokens)
        positive_int("VideoSettings.group_size (temporal patches per frame group)", self.group_size)
        if (self.height is None) != (self.width is None):
            raise ValueError(f"VideoSettings: give both height and width (px) or neither (the clip's size), got "
                             f"height={self.height!r}, width={self.width!r}")
        if self.height is not None:
            positive_int("VideoSettings.height (px)", self.height)
            positive_int("VideoSettings.width (px)", self.width)
        if self.items not in ITEM_POLICIES:
            raise ValueError(f"VideoSettings.items must be one of {ITEM_POLICIES}, got {self.items!r}")
        unknown = [e for e in self.engines if e not in ENGINE_POLICIES]
        if unknown or not self.engines:
            raise ValueError(f"VideoSettings.engines must be among {sorted(ENGINE_POLICIES)}, got {self.engines!r}")

    def video_items(self, engine: str) -> str:
        """How ``engine`` takes the video: its own policy's items (``"per engine"``, with ``group_size`` for
        frame groups), or the same for every engine (``"whole"``, ``"frame-groups"``)."""
        own = ENGINE_POLICIES[engine].video_items
        whole = self.items == "whole" or (self.items == "per engine" and parse_video_items(own) is None)
        return "whole" if whole else f"frame-groups:{self.group_size}"


# --- the clip ----------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def clip_frames() -> tuple[Image.Image, ...]:
    """The sample clip's frames (RGB PIL images), loaded once."""
    return tuple(load_clip(CLIP_PATH))


def clip_frame_indices(frames: int) -> list[int]:
    """Which of the clip's frames a video of ``frames`` frames shows: evenly spaced, first and last kept."""
    available = len(clip_frames())
    if not 1 <= positive_int("frames", frames) <= available:
        raise ValueError(f"the clip {CLIP_PATH.name} has {available} frames; asked for {frames}")
    return [round(k * (available - 1) / max(frames - 1, 1)) for k in range(frames)]


@lru_cache(maxsize=16)  # the frames control offers 9 counts up to the clip's; each item holds its patches
def clip_item(frames: int) -> MultimodalItem:
    """The clip as one Qwen2.5-VL video item of ``frames`` of its frames (memoised: a slider that comes back
    to a frame count finds the item, and its hash, as before)."""
    chosen = [clip_frames()[k] for k in clip_frame_indices(frames)]
    return make_video_item(chosen, PRESET, name=f"{CLIP_PATH.name} ({frames} frames)")


def uses_clip(settings: VideoSettings) -> bool:
    """Whether ``settings`` show the real clip (its size, at most its frames), not a synthetic video."""
    return _is_clip(settings.frames, settings.height)


def _is_clip(frames: int, height: int | None) -> bool:
    return height is None and frames <= len(clip_frames())


def frame_size(settings: VideoSettings) -> tuple[int, int]:
    """(height, width) px of the video's frames before the processor resizes them."""
    if settings.height is None:
        width, height = clip_frames()[0].size
        return height, width
    return settings.height, settings.width


def video_request(settings: VideoSettings, engine: str) -> Request:
    """The view's request as ``engine`` takes it: short text, the video (as ``settings.video_items(engine)``
    says), short text; request id 0."""
    return _video_request(settings.frames, *frame_size(settings), _is_clip(settings.frames, settings.height),
                          settings.video_items(engine))


def _video_request(frames: int, height: int, width: int, clip: bool, video_items: str) -> Request:
    if clip:
        return make_request(0, [TEXT_BEFORE, clip_item(frames), TEXT_AFTER], PRESET, video_items=video_items)
    items = fake_video_items(SYNTHETIC_ID, frames, height, width, video_items)
    return make_request(0, [TEXT_BEFORE, *items, TEXT_AFTER], PRESET)


# --- one engine's run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemMark:
    """One item a window touched: the part of its span inside the window, and what became of it."""

    item: int  # index in the request's items: 0 for a whole video, else the frame group's number
    part: Span  # tokens of the item's span inside the window
    fate: str  # embed.FATES: "hit" | "encoded" | "shared" | "re-encoded"
    again: bool  # encoded although an earlier encoder call of the run had encoded it (the cache lost it)

    @property
    def letter(self) -> str:
        """H hit, E encoded, R encoded again, S shared with another lookup of the step."""
        return "R" if self.again else {"hit": "H", "shared": "S"}.get(self.fate, "E")


@dataclass(frozen=True)
class VideoWindow:
    """One step's window over the request, what it encoded (rows) and the cache after it (rows)."""

    step: int
    window: Span
    marks: tuple[ItemMark, ...]
    encoded_rows: int  # embedding rows the step's encoder calls produced
    re_encoded_rows: int  # of those, rows of items an earlier call had encoded already
    cache_rows: int  # rows the cache holds after the step
    pinned_rows: int  # of those, rows pinned for a later window


@dataclass(frozen=True)
class EngineRun:
    """``engine``'s replay of the request: its windows, or the reason its admission refused the request."""

    engine: str
    video_items: str
    request: Request
    windows: tuple[VideoWindow, ...]
    refused: str | None  # the admission's reason (vLLM's "exceeds the pre-allocated encoder cache size")

    def total(self, what: str) -> int:
        """Sum of a ``VideoWindow`` counter (``"encoded_rows"``, ``"re_encoded_rows"``) over the windows."""
        return sum(getattr(w, what) for w in self.windows)

    def encodes(self, item: int) -> int:
        """How many times item ``item`` was encoded (first time and again)."""
        return sum(m.item == item and m.fate in ENCODING_FATES for w in self.windows for m in w.marks)

    def label(self, item: int) -> str:
        """The item's name on screen: ``"video"`` when whole, else ``"g<k>"`` (k: its frame group)."""
        return "video" if len(self.request.items) == 1 else f"g{item}"

    def table(self) -> list[dict[str, object]]:
        """One row per window: its items with their letters, rows encoded and encoded again, the cache after."""
        return [{
            "step": w.step, "window": f"[{w.window.start}, {w.window.stop})",
            "items": ", ".join(f"{self.label(m.item)} {m.letter}" for m in w.marks) or "-",
            "encoded rows": w.encoded_rows, "re-encoded rows": w.re_encoded_rows,
            "cache rows held": w.cache_rows, "pinned rows": w.pinned_rows,
        } for w in self.windows]


def run_engine(settings: VideoSettings, engine: str) -> EngineRun:
    """Replay ``video_request(settings, engine)`` under ``ENGINE_POLICIES[engine]`` with a cache of
    ``settings.cache_tokens`` rows and ``settings.chunk_size``-token steps (memoised: a control that changes
    one engine's items replays that engine alone)."""
    video = (settings.frames, *frame_size(settings), _is_clip(settings.frames, settings.height))
    return _run_engine(engine, settings.video_items(engine), video, settings.chunk_size, settings.cache_tokens)


@lru_cache(maxsize=64)
def _run_engine(engine: str, video_items: str, video: tuple[int, int, int, bool], chunk_size: int,
                cache_tokens: int) -> EngineRun:
    request = _video_request(*video, video_items)
    scheduler = SchedulerConfig(chunked_prefill_size=chunk_size)
    config = ENGINE_POLICIES[engine].replay_config(scheduler, cache_tokens)
    run = replay({request.rid: request}, [Arrival(request.rid, request.prompt_len)], config, StepClock(step_ms=1.0),
                 FakeEncoder(TOY_HIDDEN, counts_only=True), row_bytes=TOY_BYTES_PER_TOKEN)
    return EngineRun(engine, video_items, request, _windows(run, request), run.refused.get(request.rid))


def _windows(run: Run, request: Request) -> tuple[VideoWindow, ...]:
    steps: Mapping[int, StepRow] = {row.step: row for row in run.rows}
    return tuple(_window(w, steps[w.step], request) for w in run.window_rows)


def _window(row: WindowRow, step: StepRow, request: Request) -> VideoWindow:
    window = Span(row.start, row.stop)
    marks = tuple(ItemMark(index, request.spans[index].intersect(window), fate, again)
                  for index, fate, again in zip(row.items, row.fates, row.again))
    again_rows = sum(request.items[m.item].num_tokens for m in marks if m.again)
    # one request a step: the step's encoded rows are this window's
    return VideoWindow(row.step, window, marks, step.encoded_tokens, again_rows,
                       step.cache_bytes // TOY_BYTES_PER_TOKEN, step.pinned_bytes // TOY_BYTES_PER_TOKEN)


# --- the plan: every engine, and the frames to show ----------------------------------------------------
@dataclass(frozen=True)
class Thumbnail:
    """A frame shown above the span: its number in the video, in the clip, and its place (token)."""

    frame: int
    clip_frame: int
    x: float  # middle of its temporal patch's tokens in the prompt


@dataclass(frozen=True)
class VideoPlan:
    """The video view's model: the video (which, its size, grid and place in the prompt) and each engine's run."""

    settings: VideoSettings
    source: str  # "clip" | "synthetic"
    frame_size: tuple[int, int]  # (height, width) px before the processor's resize
    grid: tuple[int, int, int]  # (t, h, w): temporal patches, patch rows and columns a frame
    video_rows: int  # embedding rows of the whole video
    video_span: Span  # where the video's tokens sit in the prompt (the same for every engine)
    prompt_len: int
    runs: tuple[EngineRun, ...]  # one per settings.engines, in order

    def run(self, engine: str) -> EngineRun:
        """The run of ``engine``; ValueError naming the engines there are when it is not in the plan."""
        for r in self.runs:
            if r.engine == engine:
                return r
        raise ValueError(f"engine {engine!r} is not in this plan; it has {[r.engine for r in self.runs]}")

    @property
    def rows_per_patch(self) -> int:
        """Embedding rows of one temporal patch (every patch has the same)."""
        return self.video_rows // self.grid[0]

    def describe(self) -> str:
        """What the video is, in words: the clip (how many of its frames) or a synthetic one, and its size."""
        s, (height, width) = self.settings, self.frame_size
        if self.source == "clip":
            clip = f"the sample clip {CLIP_PATH.name}: {s.frames} of its {len(clip_frames())} frames"
            return f"{clip}, {width}x{height} px"
        return (f"a synthetic video: {s.frames} frames of {width}x{height} px, grid and hashes only "
                f"(thumbnails: the clip, looped)")

    def grid_text(self) -> str:
        """The video's grid and rows: temporal patches x patch rows x columns (after the processor's resize)."""
        t, h, w = self.grid
        return f"{t} temporal patches x {h}x{w} patches = {self.video_rows:,} rows"

    def summary(self) -> list[dict[str, object]]:
        """One row per engine: how it took the video, its windows, rows encoded (and again), the most rows
        its cache held, and why its admission refused the request (``-`` when it did not)."""
        return [{
            "engine": r.engine, "video as": r.video_items, "items": len(r.request.items), "windows": len(r.windows),
            "encoded rows": r.total("encoded_rows"), "re-encoded rows": r.total("re_encoded_rows"),
            "most cache rows held": max((w.cache_rows for w in r.windows), default=0), "refused": r.refused or "-",
        } for r in self.runs]

    def thumbnails(self, count: int = 6) -> list[Thumbnail]:
        """Up to ``count`` frames evenly spread over the video, each at its temporal patch's tokens."""
        frames = self.settings.frames
        shown = sorted({round(k * (frames - 1) / max(positive_int("count", count) - 1, 1)) for k in range(count)})
        # the clip's frames as sampled; a synthetic video's stand-ins: the clip, looped
        sampled = clip_frame_indices(frames) if self.source == "clip" else None
        clip = [sampled[f] if sampled else f % len(clip_frames()) for f in shown]
        tokens = self.rows_per_patch
        return [Thumbnail(f, c, self.video_span.start + (f // FRAMES_PER_PATCH + 0.5) * tokens)
                for f, c in zip(shown, clip)]


def video_plan(settings: VideoSettings | None = None, **overrides: object) -> VideoPlan:
    """Run ``settings`` (or ``VideoSettings(**overrides)``) under each of its engines."""
    settings = settings or VideoSettings(**overrides)
    runs = tuple(run_engine(settings, engine) for engine in settings.engines)
    first = runs[0].request
    video = Span(first.spans[0].start, first.spans[-1].stop)  # text, the video's items back to back, text
    rows = sum(item.num_tokens for item in first.items)
    height, width = frame_size(settings)
    clip = uses_clip(settings)
    grid = video_grid(clip_item(settings.frames)) if clip else qwen_video_grid(settings.frames, height, width, PRESET)
    return VideoPlan(settings, "clip" if clip else "synthetic", (height, width), grid, rows, video, first.prompt_len,
                     runs)
