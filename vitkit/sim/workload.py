"""Generated request streams (seeded), and turning any trace into vitkit ``Request`` objects.

The two stock TTFT workloads bracket the latency-versus-load question: many small images (many misses a
step for batching to merge) and large ones (one or two requests a step, little to merge). The stored
examples add long items: document pages that straddle every window, videos larger than a cache, and chats
mixing photos and short clips (``EXAMPLES``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from vitkit.checks import positive_int, positive_number
from vitkit.item import MultimodalItem
from vitkit.processing import synthetic_items
from vitkit.request import Request
from vitkit.sim.fake import fake_item, fake_video_items, image_seed
from vitkit.sim.trace import ImageSpec, Segment, Trace, TraceRequest

ItemFactory = Callable[[str, int, int], MultimodalItem]  # (image_id, height, width) -> item
# (video_id, frames, height, width, video_items) -> the video's items: one ("whole") or its frame groups
VideoFactory = Callable[[str, int, int, int, str], list[MultimodalItem]]


@dataclass(frozen=True)
class WorkloadParams:
    """Parameters of a generated stream; ranges are inclusive ``(low, high)``, drawn uniformly."""

    num_requests: int = 16
    arrival_rate_per_s: float | None = None  # Poisson rate of conversations; None: all at t=0
    text_tokens: tuple[int, int] = (16, 128)  # per text segment
    images_per_request: tuple[int, int] = (1, 3)  # new images (or videos) per turn
    image_sizes: tuple[tuple[int, int], ...] = ((448, 448), (672, 448), (896, 672))  # (height, width) px
    repeat_share: float = 0.0  # chance an image slot shows an image used earlier in the stream
    distinct_in_request: bool = False  # a repeat never shows what its request shows already (a document's pages)
    video_share: float = 0.0  # chance a new image slot holds a video instead
    video_frames: tuple[int, int] = (16, 64)  # frames per video
    video_sizes: tuple[tuple[int, int], ...] = ((360, 640),)  # (height, width) px of a video's frames
    turns: int = 1  # requests per conversation; turn t resends turns < t
    turn_gap_ms: float = 2000.0  # between turns of a conversation
    abort_share: float = 0.0  # chance a request is aborted ...
    abort_after_ms: float = 100.0  # ... this long after it arrives
    image_prefix: str = "img"  # image ids are f"{image_prefix}-{k}"
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("WorkloadParams.num_requests", self.num_requests)
        positive_int("WorkloadParams.turns", self.turns)
        for name in ("text_tokens", "images_per_request", "video_frames"):
            low, high = getattr(self, name)
            if not 0 <= low <= high or (name == "video_frames" and low == 0):
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(low, high)}")
        if self.text_tokens[0] == 0 and self.images_per_request[0] == 0:
            raise ValueError("text_tokens and images_per_request both allow 0: a prompt could be empty")
        for name in ("image_sizes", "video_sizes"):
            if not getattr(self, name):
                raise ValueError(f"{name} must name at least one (height, width)")
        for name in ("repeat_share", "abort_share", "video_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.arrival_rate_per_s is not None and not self.arrival_rate_per_s > 0:
            raise ValueError(f"arrival_rate_per_s must be > 0 or None, got {self.arrival_rate_per_s}")


class _ImagePool:
    """Images drawn so far; a repeat picks a past *use*, so popular images get more popular (as in a catalog)."""

    def __init__(self, params: WorkloadParams, rng: random.Random) -> None:
        self.params, self.rng = params, rng
        self.images: dict[str, ImageSpec] = {}
        self.uses: list[str] = []

    def draw(self, shown: Sequence[Segment] = ()) -> str:
        """An image id; with ``distinct_in_request`` a repeat skips what ``shown`` (its request) holds."""
        uses = [u for u in self.uses if u not in shown] if self.params.distinct_in_request else self.uses
        if uses and self.rng.random() < self.params.repeat_share:
            image_id = self.rng.choice(uses)
        else:
            image_id = f"{self.params.image_prefix}-{len(self.images)}"
            self.images[image_id] = self._new_spec()
        self.uses.append(image_id)
        return image_id

    def _new_spec(self) -> ImageSpec:
        # no draw for the video share unless it is set: streams of images stay what their seed made them
        if self.params.video_share and self.rng.random() < self.params.video_share:
            height, width = self.rng.choice(self.params.video_sizes)
            return ImageSpec(height, width, self.rng.randint(*self.params.video_frames))
        height, width = self.rng.choice(self.params.image_sizes)
        return ImageSpec(height, width)


def _turn_segments(params: WorkloadParams, rng: random.Random, pool: _ImagePool,
                   history: Sequence[Segment] = ()) -> list[Segment]:
    """One turn (after ``history``, the turns before): a text segment before each new image, and one after the last."""
    segments: list[Segment] = []
    for _ in range(rng.randint(*params.images_per_request)):
        segments += [rng.randint(*params.text_tokens), pool.draw([*history, *segments])]
    segments.append(rng.randint(*params.text_tokens))
    return [s for s in segments if s != 0]


def generate_workload(params: WorkloadParams = WorkloadParams(), name: str = "generated") -> Trace:
    """Draw a stream of ``params.num_requests`` requests (deterministic for a given seed)."""
    rng = random.Random(params.seed)
    pool = _ImagePool(params, rng)
    requests: list[TraceRequest] = []
    start = 0.0
    conversation = 0
    while len(requests) < params.num_requests:
        if params.arrival_rate_per_s is not None and conversation > 0:
            start += rng.expovariate(params.arrival_rate_per_s) * 1000.0
        history: list[Segment] = []
        for turn in range(min(params.turns, params.num_requests - len(requests))):
            history = history + _turn_segments(params, rng, pool, history)
            arrival = round(start + turn * params.turn_gap_ms, 3)
            abort = round(arrival + params.abort_after_ms, 3) if rng.random() < params.abort_share else None
            requests.append(TraceRequest(f"c{conversation}t{turn}", arrival, tuple(history), abort))
        conversation += 1
    requests.sort(key=lambda r: r.arrival_ms)  # stable: turns of one time keep conversation order
    return Trace(name, tuple(requests), pool.images, description=repr(params))


def build_requests(trace: Trace, make_item: ItemFactory = fake_item, *, video_items: str = "whole",
                   make_video: VideoFactory = fake_video_items) -> dict[str, Request]:
    """One ``Request`` per trace request (by rid, in trace order), one item per image id (a repeat: same hash)
    and, per video id, the items ``video_items`` makes of it (``"whole"``: one; ``"frame-groups:g"``: one a
    group of g temporal patches, laid out back to back)."""
    items: dict[str, list[MultimodalItem]] = {}
    requests = {}
    for req in trace.requests:
        for seg in req.segments:
            if isinstance(seg, str) and seg not in items:
                spec = trace.images[seg]
                items[seg] = ([make_item(seg, spec.height, spec.width)] if spec.frames is None else
                              make_video(seg, spec.frames, spec.height, spec.width, video_items))
        segments = [part for s in req.segments for part in (items[s] if isinstance(s, str) else [s])]
        requests[req.rid] = Request.from_segments(req.rid, segments)
    return requests


def processing_items(preset_name: str) -> ItemFactory:
    """An item factory of real processor outputs (``synthetic_items``, pixels seeded by the image id)."""
    def make(image_id: str, height: int, width: int) -> MultimodalItem:
        return synthetic_items(preset_name, [(height, width)], seed=image_seed(image_id))[0]

    return make


# The example traces in data/traces, regenerated by ``python -m vitkit.sim --write-examples``. Replay
# them with chunked_prefill_size=4096 and long_prefill_token_threshold=1024 (see data/traces/README.md).
EXAMPLES: dict[str, tuple[WorkloadParams, str]] = {
    "product-catalog": (
        WorkloadParams(num_requests=48, arrival_rate_per_s=60.0, text_tokens=(16, 96), images_per_request=(1, 3),
                       image_sizes=((448, 448), (672, 672), (896, 896), (1344, 1008)), repeat_share=0.5,
                       image_prefix="sku", seed=7),
        "Shoppers asking about product photos: 48 single-turn requests, Poisson at 60/s, 1-3 "
        "photos each; half the photo slots show a photo seen before, popular ones more often.",
    ),
    "chat-multiturn": (
        WorkloadParams(num_requests=24, arrival_rate_per_s=20.0, turns=4, turn_gap_ms=300.0, text_tokens=(32, 160),
                       images_per_request=(1, 1), image_sizes=((672, 672), (896, 672), (1008, 1344)), abort_share=0.1,
                       abort_after_ms=100.0, image_prefix="photo", seed=3),
        "Six chat conversations of four turns, one new photo per turn; each turn resends the "
        "whole conversation so far, earlier photos included; about one request in ten is "
        "aborted 100 ms after it arrives.",
    ),
    "doc-qa": (
        WorkloadParams(num_requests=40, text_tokens=(16, 64), images_per_request=(3, 8), image_sizes=((1176, 896),),
                       repeat_share=0.5, distinct_in_request=True, image_prefix="page", seed=19),
        "Questions over scanned documents, a burst of 40 requests at once: 3-8 pages of 1176x896 px "
        "(1,344 rows each) per request, never one page twice in a request; half the page slots show a "
        "page another request shows too. Every page straddles a 1,024-token window.",
    ),
    "video-qa": (
        WorkloadParams(num_requests=16, arrival_rate_per_s=1.0, text_tokens=(8, 48), images_per_request=(1, 1),
                       video_share=1.0, video_frames=(16, 512), video_sizes=((360, 640), (480, 854), (720, 1280)),
                       repeat_share=0.25, image_prefix="clip", seed=23),
        "Questions about one video each: 16 requests, Poisson at 1/s, a video of 16-512 frames at 360p, "
        "480p or 720p between a short prompt and a question; a video slot shows a video asked about "
        "before with chance 1/4 (here 16 requests over 9 videos).",
    ),
    "mixed-chat": (
        WorkloadParams(num_requests=24, arrival_rate_per_s=8.0, turns=4, turn_gap_ms=400.0, text_tokens=(16, 96),
                       images_per_request=(1, 2), image_sizes=((448, 448), (672, 672), (896, 672)), video_share=0.3,
                       video_frames=(16, 48), video_sizes=((360, 640), (480, 854)), image_prefix="media", seed=29),
        "Six chat conversations of four turns, 1-2 new photos or short clips (16-48 frames at 360p or "
        "480p; about a third are clips) per turn; each turn resends the whole conversation so far.",
    ),
}


def example_trace(name: str) -> Trace:
    """Generate example ``name`` (equal to the file in data/traces)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example trace {name!r}; known: {sorted(EXAMPLES)}")
    params, description = EXAMPLES[name]
    trace = generate_workload(params, name)
    return Trace(name, trace.requests, trace.images, description)


def trace_like(name: str, *, seed: int, num_requests: int | None = None,
               arrival_rate_per_s: float | None = None) -> Trace:
    """A new trace drawn like stock workload ``name`` (an example or a TTFT workload) with another ``seed`` and,
    if given, another request count and Poisson rate: a trace none of the stored ones is, for ``advise``."""
    stock = EXAMPLES | TTFT_WORKLOADS
    if name not in stock:
        raise ValueError(f"unknown workload {name!r} to draw a trace like; known: {sorted(stock)}")
    params, description = stock[name]
    changes: dict[str, object] = {"seed": seed}
    if num_requests is not None:
        changes["num_requests"] = positive_int("num_requests", num_requests)
    if arrival_rate_per_s is not None:
        changes["arrival_rate_per_s"] = positive_number("arrival_rate_per_s", arrival_rate_per_s)
    params = replace(params, **changes)
    rate = "all at t=0" if params.arrival_rate_per_s is None else f"Poisson at {params.arrival_rate_per_s:g}/s"
    trace = generate_workload(params, f"{name}-seed{seed}")
    return Trace(trace.name, trace.requests, trace.images,
                 f"Drawn like {name} with seed {seed}: {params.num_requests} requests, {rate}. {description}")


TTFT_WORKLOADS: dict[str, tuple[WorkloadParams, str]] = {
    "small-images": (
        WorkloadParams(num_requests=400, text_tokens=(16, 64), images_per_request=(1, 1),
                       image_sizes=((448, 448),), repeat_share=0.2, image_prefix="thumb", seed=11),
        "one 448x448 photo (256 rows) and 16-128 text tokens per request; a fifth of the photos repeat",
    ),
    "large-images": (
        WorkloadParams(num_requests=200, text_tokens=(32, 128), images_per_request=(1, 2),
                       image_sizes=((896, 896), (1344, 1008), (1008, 1344)), repeat_share=0.1,
                       image_prefix="photo", seed=12),
        "1-2 photos of 896x896 to 1344x1008 (1024-1728 rows each) and 32-384 text tokens per request",
    ),
}

# Poisson rates (requests/s) of each workload's latency-versus-load curve: from light load to
# past saturation on the stored card's cost models
DEFAULT_RATES = {
    "small-images": (10, 20, 30, 40, 50, 60, 65, 70, 75, 80, 85, 90),
    "large-images": (1, 2, 4, 6, 8, 9, 10, 11, 12),
}
ADMISSION_RATES = {"small-images": 60.0, "large-images": 6.0}  # the admission comparison's rate, near the knee
# The GPU validation's Poisson rate (/s) and request count per workload (``vitkit.bench.validate``):
# enough requests that p99 is over several of them (the 2nd-slowest request of 200 is a noisy statistic)
VALIDATION_SIZES = {"small-images": (40.0, 600), "large-images": (4.0, 150)}


def workload_params(name: str, num_requests: int | None = None) -> WorkloadParams:
    """The stock workload ``name`` (arrivals are set by the load sweep), optionally resized."""
    if name not in TTFT_WORKLOADS:
        raise ValueError(f"unknown TTFT workload {name!r}; known: {sorted(TTFT_WORKLOADS)}")
    params = TTFT_WORKLOADS[name][0]
    return params if num_requests is None else replace(params, num_requests=num_requests)


@dataclass(frozen=True)
class RatePoint:
    """One rate of a search: requests per second and the TTFT p99 it gave (ms)."""

    rate_per_s: float
    ttft_p99_ms: float


def max_sustainable_rate(p99_at: Callable[[float], float], bound_ms: float, rates: Sequence[float], *,
                         refine: int = 5) -> tuple[float | None, list[RatePoint]]:
    """The highest rate whose TTFT p99 (``p99_at(rate)``, ms) stays at or under ``bound_ms`` (None when even
    the lowest fails), and every point evaluated, in order: ``rates`` ascending until one fails, then
    ``refine`` bisections between the last that held and the first that failed (p99 rises with load)."""
    positive_number("bound_ms", bound_ms)
    ordered = sorted(rates)
    if not ordered or ordered[0] <= 0:
        raise ValueError(f"rates must be a non-empty list of rates > 0, got {list(rates)!r}")
    points: list[RatePoint] = []

    def holds(rate: float) -> bool:
        points.append(RatePoint(rate, p99_at(rate)))
        return points[-1].ttft_p99_ms <= bound_ms

    good, bad = None, None
    for rate in ordered:
        if not holds(rate):
            bad = rate
            break
        good = rate
    if good is None or bad is None:
        return good, points
    for _ in range(refine):
        mid = (good + bad) / 2
        if holds(mid):
            good = mid
        else:
            bad = mid
    return good, points
