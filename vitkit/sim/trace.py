"""Request streams as data: the ``Trace`` value and its JSON file format.

Trace file format (``vitkit.sim.trace/1``), one JSON object::

    {"schema": "vitkit.sim.trace/1", "name": "product-catalog", "description": "free text",
     "images": {"sku-17": {"height": 448, "width": 448}, ...},
     "requests": [{"rid": "q0", "arrival_ms": 0.0, "segments": [{"text": 24}, {"image": "sku-17"}, {"text": 40}],
                   "abort_ms": 350.0}, ...]}

``images`` names each distinct picture once with its pixel size: segments naming the same image are the
same content, so they hash alike and can hit the embedding cache. ``segments`` lay out the prompt in
order (``{"text": n}``: n text tokens; ``{"image": id}``: its placeholder tokens, as many as the item
factory makes). A video is an ``images`` entry with ``"frames"`` too (``{"height": 360, "width": 640,
"frames": 64}``), named by ``{"video": id}`` segments (``{"image": id}`` reads the same); files without
videos are unchanged. ``abort_ms`` (optional) is when the client gives up; request ids are unique strings, and
requests come in arrival order (times in ms from any origin, never negative). A bad file is a ValueError
that names the request and field (``load_trace``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.checks import non_negative_int, non_negative_number, positive_int
from vitkit.costs.results import schema
from vitkit.sim.scheduler import Arrival

SCHEMA = schema("trace")
TRACES_DIR = Path(__file__).resolve().parents[2] / "data" / "traces"

Segment = int | str  # text token count, or an image (or video) id


@dataclass(frozen=True)
class ImageSpec:
    """A distinct picture's size in pixels; a video's also has its number of ``frames`` (None: an image)."""

    height: int
    width: int
    frames: int | None = None


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: its prompt layout and its times (ms)."""

    rid: str
    arrival_ms: float
    segments: tuple[Segment, ...]
    abort_ms: float | None = None


@dataclass(frozen=True)
class Trace:
    """A request stream plus the pictures it refers to; checked on construction."""

    name: str
    requests: tuple[TraceRequest, ...]
    images: Mapping[str, ImageSpec] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", tuple(self.requests))
        object.__setattr__(self, "images", dict(self.images))
        for image_id, spec in self.images.items():
            for name in ("height", "width") if spec.frames is None else ("height", "width", "frames"):
                positive_int(f"trace {self.name!r}: image {image_id!r} {name}", getattr(spec, name))
        seen: dict[str, int] = {}
        for k, req in enumerate(self.requests):
            _check_request(self, k, req, seen)
            if k and req.arrival_ms < self.requests[k - 1].arrival_ms:
                before = self.requests[k - 1]
                raise ValueError(f"trace {self.name!r} request {k} ({req.rid!r}): arrival_ms {req.arrival_ms} is before "
                                 f"request {k - 1} ({before.rid!r}) at {before.arrival_ms}; requests must be in "
                                 "arrival order")

    def arrivals(self, prompt_lens: Mapping[str, int]) -> list[Arrival]:
        """Scheduler arrivals, with prompt lengths (tokens) from the built requests."""
        return [Arrival(r.rid, prompt_lens[r.rid], r.arrival_ms, r.abort_ms) for r in self.requests]


def _check_request(trace: Trace, k: int, req: TraceRequest, seen: dict[str, int]) -> None:
    where = f"trace {trace.name!r} request {k} ({req.rid!r})"
    if not isinstance(req.rid, str) or not req.rid:
        raise ValueError(f"trace {trace.name!r} request {k}: rid must be a non-empty string, got {req.rid!r}")
    if req.rid in seen:
        raise ValueError(f"{where}: rid is used twice (request {seen[req.rid]} has it too)")
    seen[req.rid] = k
    non_negative_number(f"{where}: arrival_ms", req.arrival_ms)
    if req.abort_ms is not None and non_negative_number(f"{where}: abort_ms", req.abort_ms) < req.arrival_ms:
        raise ValueError(f"{where}: abort_ms must be a number >= arrival_ms ({req.arrival_ms}), got {req.abort_ms!r}")
    for j, seg in enumerate(req.segments):
        if isinstance(seg, str) and seg not in trace.images:
            raise ValueError(f"{where}: segments[{j}] names unknown image {seg!r}")
        if not isinstance(seg, str):
            non_negative_int(f"{where}: segments[{j}] (a text token count, or an image id)", seg)
    if not any(isinstance(s, str) or s > 0 for s in req.segments):
        raise ValueError(f"{where}: the prompt is empty (no text tokens and no image)")


def trace_to_json(trace: Trace) -> dict[str, Any]:
    def request(r: TraceRequest) -> dict[str, Any]:
        segments = [{"text": s} if not isinstance(s, str) else
                    {"image": s} if trace.images[s].frames is None else {"video": s} for s in r.segments]
        out = {"rid": r.rid, "arrival_ms": r.arrival_ms, "segments": segments}
        if r.abort_ms is not None:
            out["abort_ms"] = r.abort_ms
        return out

    return {"schema": SCHEMA, "name": trace.name, "description": trace.description,
            "images": {k: {"height": v.height, "width": v.width, **({} if v.frames is None else {"frames": v.frames})}
                       for k, v in trace.images.items()},
            "requests": [request(r) for r in trace.requests]}


def trace_from_json(data: Mapping[str, Any]) -> Trace:
    """Parse a trace object; a ValueError names the field (and request) that is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"trace must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"schema", "name", "description", "images", "requests"}
    if unknown:
        raise ValueError(f"trace: unknown fields {sorted(unknown)} (a trace has schema, name, description, images, "
                         "requests)")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"trace field 'schema' must be {SCHEMA!r}, got {data.get('schema')!r}")
    name = data.get("name")
    if not isinstance(name, str):
        raise ValueError(f"trace field 'name' must be a string, got {name!r}")
    images = data.get("images", {})
    if not isinstance(images, Mapping):
        raise ValueError(f"trace {name!r}: field 'images' must be an object of id -> size")
    for image_id, size in images.items():
        if not isinstance(size, Mapping) or set(size) - {"frames"} != {"height", "width"}:
            raise ValueError(f"trace {name!r}: images[{image_id!r}] must be {{'height': int, 'width': int}} "
                             f"(a video: and 'frames': int), got {size!r}")
    raw = data.get("requests")
    if not isinstance(raw, list):
        raise ValueError(f"trace {name!r}: field 'requests' must be a list, got {type(raw).__name__}")
    if not raw:
        raise ValueError(f"trace {name!r}: field 'requests' is empty; a trace needs at least one request")
    requests = [_parse_request(name, k, r) for k, r in enumerate(raw)]
    specs = {image_id: ImageSpec(size["height"], size["width"], size.get("frames"))
             for image_id, size in images.items()}
    return Trace(name, tuple(requests), specs, str(data.get("description", "")))


def _parse_request(name: str, k: int, raw: object) -> TraceRequest:
    where = f"trace {name!r} request {k}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object, got {raw!r}")
    where = f"{where} ({raw.get('rid')!r})"
    for key in ("rid", "arrival_ms", "segments"):
        if key not in raw:
            raise ValueError(f"{where}: missing field {key!r}")
    unknown = set(raw) - {"rid", "arrival_ms", "segments", "abort_ms"}
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    if not isinstance(raw["segments"], list):
        raise ValueError(f"{where}: field 'segments' must be a list")
    segments = tuple(_parse_segment(where, j, s) for j, s in enumerate(raw["segments"]))
    return TraceRequest(raw["rid"], raw["arrival_ms"], segments, raw.get("abort_ms"))


def _parse_segment(where: str, j: int, raw: object) -> Segment:
    if isinstance(raw, Mapping) and len(raw) == 1:
        if "text" in raw:
            return raw["text"]  # type checked by Trace
        for kind in ("image", "video"):  # the images table says which an id is
            if kind in raw and isinstance(raw[kind], str):
                return raw[kind]
    raise ValueError(f"{where}: segments[{j}] must be {{'text': n}}, {{'image': id}} or {{'video': id}}, got {raw!r}")


def format_trace(trace: Trace) -> str:
    """JSON text with one image and one request per line, so diffs of trace files stay readable."""
    data = trace_to_json(trace)
    head = [f"  {json.dumps(key)}: {json.dumps(data[key])}," for key in ("schema", "name", "description")]
    images = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in data["images"].items())
    requests = ",\n".join(f"    {json.dumps(r)}" for r in data["requests"])
    lines = ["{", *head, '  "images": {', images, "  },", '  "requests": [', requests, "  ]", "}"]
    return "\n".join(line for line in lines if line) + "\n"


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as a ``vitkit.sim.trace/1`` JSON file."""
    path = Path(path)
    path.write_text(format_trace(trace))
    return path


def load_trace(path: str | Path) -> Trace:
    """Read a trace file; a bare name (e.g. ``"chat-multiturn"``) is looked up in ``data/traces``."""
    given = Path(path)
    path = given
    if not path.suffix and not path.exists():
        path = TRACES_DIR / f"{path}.json"
    if not path.is_file():
        raise ValueError(f"trace file {given} does not exist (give a path, or an example: {example_traces()})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"trace file {path} is not valid JSON: {err}") from None
    return trace_from_json(data)


def mean_rate_per_s(trace: Trace) -> float | None:
    """The trace's own arrival rate (requests/s) over its arrival span; None when all arrive at once."""
    span_ms = trace.requests[-1].arrival_ms - trace.requests[0].arrival_ms if trace.requests else 0.0
    return (len(trace.requests) - 1) / (span_ms / 1e3) if span_ms > 0 else None


def check_cache_sizes(trace: Trace, rows_of: Callable[[ImageSpec], int], cache_tokens: Sequence[int]) -> list[int]:
    """The cache sizes (embedding rows) of ``cache_tokens`` that hold the trace's largest image (``rows_of``: an
    image's rows); ValueError naming that image, its rows and the largest size asked for when none does."""
    used = {seg: req for req in reversed(trace.requests) for seg in req.segments if isinstance(seg, str)}
    if not used or not cache_tokens:
        return list(cache_tokens)
    image_id = max(used, key=lambda i: rows_of(trace.images[i]))
    rows = rows_of(trace.images[image_id])
    fits = [t for t in cache_tokens if t >= rows]
    if not fits:
        spec, req = trace.images[image_id], used[image_id]
        size = f"{spec.height}x{spec.width} px" + ("" if spec.frames is None else f", {spec.frames} frames")
        raise ValueError(f"trace {trace.name!r} request {trace.requests.index(req)} ({req.rid!r}): image {image_id!r} "
                         f"({size}) has {rows} embedding rows, more than the largest cache asked for "
                         f"({max(cache_tokens)} rows); ask for a cache of at least {rows} rows")
    return fits


def example_traces() -> list[str]:
    """Names of the traces shipped in ``data/traces``."""
    return sorted(p.stem for p in TRACES_DIR.glob("*.json"))
