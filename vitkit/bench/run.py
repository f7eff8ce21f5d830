"""Run a sweep: for every point, both modes of ``embed_chunks`` on the same requests and encoder.

Each point builds ``requests x images_per_request`` distinct synthetic images (random pixels
through ``vitkit.processing.synthetic_items``), lays each request out as text and image
placeholders, and runs one scheduler step whose windows cover every whole prompt. Every repeat
starts from a fresh ``EmbeddingCache`` pre-filled with ``hit_fraction`` of the step's images
(spread at random over the requests), so each repeat does the same work. The step is timed
with CUDA events around the whole ``embed_chunks`` call (perf_counter on CPU); the encoder's
own calls are timed the same way, and the rest of the step is bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import gc
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.bench.flops import item_flops
from vitkit.bench.machine import MatmulPeak, default_dtype, machine_info, measure_matmul_peak, resolve_device, versions
from vitkit.bench.memory import memory_report
from vitkit.bench.results import SCHEMA
from vitkit.bench.rows import BenchRow
from vitkit.bench.sweeps import MIXED_SIZES, MIXED_SIZES_TINY, Sweep, SweepPoint
from vitkit.bench.timing import EventTimedEncoder, Stopwatch, synchronize, timing_stats
from vitkit.cache import EmbeddingCache, embedding_row_bytes
from vitkit.checks import non_negative_int, positive_int
from vitkit.embed import MODES, embed_chunks
from vitkit.encoders import build_encoder
from vitkit.item import MultimodalItem, move_items_to_device
from vitkit.processing import synthetic_items
from vitkit.request import Request
from vitkit.span import Span

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MakeItems = Callable[[str, list[tuple[int, int]], int], list[MultimodalItem]]
MakeEncoder = Callable[[str, str], Any]


@dataclass(frozen=True)
class RunSettings:
    """How a run measures: device, dtype, implementations, repeats (times per mode and point)."""

    device: str = "cpu"
    dtype: str = "fp32"
    impls: tuple[str, ...] = ("vitkit",)
    repeats: int = 10  # at most; fewer when a point's steps are slow (``seconds_per_mode``)
    warmup: int = 2
    min_repeats: int = 3
    check: bool = True  # compare the two modes' chunk embeddings once per point (untimed)
    seconds_per_mode: float = 2.0  # timed-step budget per point and mode, to bound a sweep's time
    text_tokens: int = 8  # text tokens before, between and after the images of a request
    seed: int = 0
    matmul_repeats: int = 30
    kind: str = "gpu"
    sweep: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("repeats", "min_repeats", "matmul_repeats"):
            positive_int(name, getattr(self, name))
        for name in ("warmup", "text_tokens", "seed"):
            non_negative_int(name, getattr(self, name))
        if not self.seconds_per_mode > 0:
            raise ValueError(f"seconds_per_mode must be > 0, got {self.seconds_per_mode!r}")
        if not self.impls:
            raise ValueError("impls is empty: name at least one of 'vitkit', 'stock'")

    @classmethod
    def for_device(cls, device: str | None = None, *, quick: bool = False, **overrides: Any) -> RunSettings:
        """Settings for ``device`` (default: cuda when torch sees one, else cpu).

        On a GPU: bf16, 10 repeats (3 with ``quick``), 3 warm-up steps, a 30-repeat matmul peak,
        sweep "full" ("quick"). On CPU: the labelled smoke run (kind "cpu-smoke", sweep
        "cpu-smoke"), fp32, 2 repeats (3 with ``quick``), 1 warm-up step, a 5-repeat peak: full-size
        towers on CPU take many minutes. ``overrides`` replace fields; None values are ignored.
        """
        device = resolve_device(device)
        on_gpu = torch.device(device).type == "cuda"
        defaults = dict(
            device=device, dtype=default_dtype(device), repeats=3 if quick else 10 if on_gpu else 2,
            warmup=3 if on_gpu else 1, matmul_repeats=30 if on_gpu else 5, kind="gpu" if on_gpu else "cpu-smoke",
            sweep=("quick" if quick else "full") if on_gpu else "cpu-smoke",
        )
        return cls(**defaults | {key: value for key, value in overrides.items() if value is not None})


def default_encoder_factory(settings: RunSettings) -> MakeEncoder:
    def build(name: str, impl: str) -> Any:
        return build_encoder(name, device=settings.device, dtype=DTYPES[settings.dtype], impl=impl)

    return build


def image_sizes(encoder: Any, point: SweepPoint) -> tuple[list[tuple[int, int]], int | str]:
    """(height, width) of each image of the point, and the resolution to record.

    A fixed-resolution tower always sees its own input size, so its row records that size
    whatever the sweep asked; a variable-resolution tower needs a pixel side or "mixed".
    """
    n = point.images
    if not encoder.variable_resolution:
        side = encoder.config.image_size
        return [(side, side)] * n, side
    if point.resolution == "mixed":
        tiny = getattr(getattr(encoder, "preset", None), "tiny", False)
        cycle = MIXED_SIZES_TINY if tiny else MIXED_SIZES
        return [cycle[k % len(cycle)] for k in range(n)], "mixed"
    if point.resolution == "native":
        raise ValueError(f"encoder {encoder.name!r} is variable-resolution: give a pixel side or 'mixed', not 'native'")
    return [(point.resolution, point.resolution)] * n, point.resolution


def layout_requests(items: Sequence[MultimodalItem], images_per_request: int, text_tokens: int) -> list[Request]:
    """Requests of ``images_per_request`` consecutive items each, text before, between and after."""
    if len(items) % images_per_request:
        raise ValueError(f"{len(items)} items do not split into requests of {images_per_request} images")
    requests = []
    for r in range(len(items) // images_per_request):
        segments: list[int | MultimodalItem] = [text_tokens]
        for item in items[r * images_per_request : (r + 1) * images_per_request]:
            segments += [item, text_tokens]
        requests.append(Request.from_segments(f"req{r}", segments))
    return requests


def flop_layers(encoder: Any) -> int | None:
    """Layers whose output the embedding needs (CLIP's rows come from the penultimate layer).

    MFU counts this useful work for every impl: stock transformers also runs CLIP's last layer
    (``output_hidden_states``), which the rows do not use, and gets no credit for it.
    """
    preset = getattr(encoder, "preset", None)
    if preset is not None and getattr(preset, "feature_layer", -1) == -2:
        config = encoder.config
        return (getattr(config, "num_hidden_layers", None) or config.depth) - 1
    return None


@dataclass
class _Point:
    """A point made concrete: its requests, which items are cache hits, and their FLOPs."""

    batch: list[tuple[Request, Span]]
    items: list[MultimodalItem]
    hits: list[MultimodalItem]
    flops: dict[str, int]
    resolution: int | str
    patches: int


def prepare_point(point: SweepPoint, encoder: Any, make_items: MakeItems, settings: RunSettings, seed: int) -> _Point:
    sizes, resolution = image_sizes(encoder, point)
    items = make_items(encoder.name, sizes, seed)
    if len({item.hash for item in items}) != len(items):
        raise ValueError(f"point {point}: synthetic items are not distinct; batching would de-duplicate them")
    move_items_to_device(items, settings.device)
    requests = layout_requests(items, point.images_per_request, settings.text_tokens)
    hits = random.Random(seed).sample(items, round(point.hit_fraction * len(items)))
    layers = flop_layers(encoder)
    flops = {item.hash: item_flops(encoder.config, item, num_layers=layers).total for item in items}
    # Qwen's feature has one row per patch; CLIP/SigLIP's patches are its embedding rows.
    patches = sum(item.feature.shape[0] if encoder.variable_resolution else item.num_tokens for item in items)
    return _Point([(r, Span(0, r.prompt_len)) for r in requests], items, hits, flops, resolution, patches)


def _prefilled_cache(prep: _Point, hidden: int, dtype: torch.dtype, device: str) -> EmbeddingCache:
    # Room for every item twice over: the sweep measures batching, not eviction.
    row_bytes = embedding_row_bytes(hidden, dtype)
    cache = EmbeddingCache(2 * row_bytes * sum(item.num_tokens for item in prep.items) + 1)
    for item in prep.hits:
        cache.put(item.hash, torch.zeros(item.num_tokens, hidden, dtype=dtype, device=device))
    return cache


def _memory_allocated(device: str) -> int | None:
    return torch.cuda.memory_allocated(device) if torch.device(device).type == "cuda" else None


def measure_mode(prep: _Point, encoder: Any, mode: str, point: SweepPoint, settings: RunSettings) -> dict[str, Any]:
    """Warm up, then time ``repeats`` steps of ``mode``; returns the raw figures of one row."""
    device, timed = settings.device, EventTimedEncoder(encoder, settings.device)
    on_gpu = torch.device(device).type == "cuda"
    samples: dict[str, list[float]] = {"step": [], "encoder": [], "bookkeeping": [], "wall": []}
    peak = base = None
    repeats, k = settings.repeats, 0
    while k < settings.warmup + repeats:
        cache = _prefilled_cache(prep, encoder.hidden_size, encoder.dtype, device)
        timed.reset()
        if on_gpu and k == settings.warmup:
            torch.cuda.reset_peak_memory_stats(device)
        base = _memory_allocated(device)
        synchronize(device)
        watch, wall = Stopwatch(device), Stopwatch("cpu")
        wall.start()
        watch.start()
        result = embed_chunks(prep.batch, timed, cache, mode=mode, max_tokens_per_call=point.max_tokens_per_call,
                              check_finite=False)  # timed: no extra device sync (the untimed check keeps it)
        watch.stop()
        synchronize(device)
        wall.stop()
        # Keep the counters, drop the chunks: the next step must not start with this one's outputs.
        result = replace(result, embeddings=[])
        if k >= settings.warmup:
            step, enc = watch.elapsed_ms(), timed.encoder_ms()
            samples["step"].append(step)
            samples["encoder"].append(enc)
            samples["bookkeeping"].append(step - enc)
            samples["wall"].append(wall.elapsed_ms())
        elif k == settings.warmup - 1:  # last warm-up step: size the repeats to the time budget
            repeats = _repeats_for(settings, wall.elapsed_ms())
        del cache
        k += 1
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(device)
    return {"result": result, "samples": samples, "peak": peak, "base": base}


def _repeats_for(settings: RunSettings, step_ms: float) -> int:
    """Repeats that fit ``seconds_per_mode``, between ``min_repeats`` and ``repeats``."""
    fit = int(settings.seconds_per_mode * 1e3 / max(step_ms, 1e-3))
    return max(min(settings.repeats, settings.min_repeats), min(settings.repeats, fit))


def make_row(point: SweepPoint, prep: _Point, encoder: Any, impl: str, mode: str, raw: dict, peak: MatmulPeak,
             modes_max_rel_diff: float | None = None) -> BenchRow:
    """One results row of ``mode`` at ``point`` from ``measure_mode``'s figures."""
    result, samples = raw["result"], raw["samples"]
    step, enc, book = (timing_stats(samples[k]) for k in ("step", "encoder", "bookkeeping"))
    wall = timing_stats(samples["wall"])
    seconds = step.median_ms / 1e3
    flops = sum(prep.flops[h] for h in result.encoded_hashes)
    rate = peak.tflops * 1e12
    return BenchRow(
        encoder=encoder.name, mode=mode, impl=impl,
        requests=point.requests, images_per_request=point.images_per_request, images=point.images,
        resolution=prep.resolution, tokens=result.encoded_tokens, encoder_calls=result.encoder_calls,
        step_ms_median=step.median_ms, step_ms_p10=step.p10_ms, step_ms_p90=step.p90_ms,
        encoder_ms_median=enc.median_ms, bookkeeping_ms_median=book.median_ms,
        images_per_s=point.images / seconds, tokens_per_s=result.encoded_tokens / seconds,
        peak_mem_bytes=raw["peak"], model_flops=flops, mfu=flops / seconds / rate,
        sweep=point.sweep, hit_fraction=point.hit_fraction, max_tokens_per_call=point.max_tokens_per_call,
        encoded_items=result.encoded_items, cache_hits=result.cache_hits, call_tokens=tuple(result.call_tokens),
        patches=prep.patches, step_rows=sum(item.num_tokens for item in prep.items),
        step_ms_mean=step.mean_ms, step_ms_min=step.min_ms, step_ms_max=step.max_ms,
        encoder_ms_p10=enc.p10_ms, encoder_ms_p90=enc.p90_ms,
        bookkeeping_ms_p10=book.p10_ms, bookkeeping_ms_p90=book.p90_ms,
        bookkeeping_share=book.median_ms / step.median_ms if step.median_ms > 0 else 0.0,
        encoder_mfu=flops / (enc.median_ms / 1e3) / rate if enc.median_ms > 0 else 0.0,
        step_wall_ms_median=wall.median_ms, repeats=step.repeats,
        base_mem_bytes=raw["base"],
        out_bytes_per_token=embedding_row_bytes(encoder.hidden_size, encoder.dtype),
        dtype=str(encoder.dtype).removeprefix("torch."),
        modes_max_rel_diff=modes_max_rel_diff,
    )


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def modes_max_rel_diff(prep: _Point, encoder: Any, point: SweepPoint, settings: RunSettings) -> float:
    """Largest difference between the two modes' chunk embeddings, relative to the largest
    batched value, over the step (0.0 when identical; bf16 batch shapes may round differently)."""
    chunks = {}
    for mode in MODES:
        cache = _prefilled_cache(prep, encoder.hidden_size, encoder.dtype, settings.device)
        result = embed_chunks(prep.batch, encoder, cache, mode=mode, max_tokens_per_call=point.max_tokens_per_call)
        chunks[mode] = result.embeddings
        del cache, result
    worst = 0.0
    for a, b in zip(chunks["batched"], chunks["per_request"]):
        if a is None or b is None:
            if (a is None) != (b is None):
                raise ValueError(f"point {point}: one mode assembled a chunk where the other assembled none")
            continue
        scale = a.abs().max().float().clamp_min(torch.finfo(torch.float32).tiny)
        worst = max(worst, float((a.float() - b.float()).abs().max() / scale))
    return worst


def _measure_point(point, encoder, impl, make_items, settings, seed, peak, bar) -> list[BenchRow]:
    """Both modes at one point; the items are the same for every impl (same seed)."""
    prep = prepare_point(point, encoder, make_items, settings, seed)
    diff = modes_max_rel_diff(prep, encoder, point, settings) if settings.check else None
    _free(settings.device)
    rows = []
    for mode in MODES:
        shape = f"{point.requests}x{point.images_per_request} {prep.resolution}"
        bar.set_postfix_str(f"{point.sweep} {impl} {mode} {shape}")
        raw = measure_mode(prep, encoder, mode, point, settings)
        rows.append(make_row(point, prep, encoder, impl, mode, raw, peak, modes_max_rel_diff=diff))
        bar.update()
    del prep, raw
    _free(settings.device)
    return rows


def run_sweeps(
    sweeps: Sequence[Sweep],
    settings: RunSettings,
    *,
    make_encoder: MakeEncoder | None = None,
    make_items: MakeItems | None = None,
    peak: MatmulPeak | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every point of ``sweeps`` in both modes for each impl; returns the results object
    (``vitkit.bench.results``), its rows ``BenchRow``."""
    make_encoder = make_encoder or default_encoder_factory(settings)
    make_items = make_items or synthetic_items
    peak = peak or measure_matmul_peak(settings.device, repeats=settings.matmul_repeats)
    points = list(enumerate(p for s in sweeps for p in s.points()))
    order = list(dict.fromkeys(p.encoder for _, p in points))
    rows: list[BenchRow] = []
    total = len(points) * len(settings.impls) * len(MODES)
    bar = tqdm(total=total, desc="vitkit.bench", unit="run", disable=not progress)
    # One encoder at a time (grouped by encoder, then impl), so peak memory holds one model's weights.
    for name in order:
        for impl in settings.impls:
            encoder = make_encoder(name, impl)
            if hasattr(encoder, "warmup"):  # every bucket compiled and captured before timing
                encoder.warmup(progress=False)
            for index, point in points:
                if point.encoder == name:
                    rows += _measure_point(point, encoder, impl, make_items, settings, settings.seed + index, peak, bar)
            del encoder
            _free(settings.device)
    bar.close()
    return {
        "schema": SCHEMA,
        "kind": settings.kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(settings.device),
        "versions": versions(),
        "settings": asdict(settings) | {"sweeps": [asdict(s) for s in sweeps], "window": "whole prompt, one step"},
        "matmul_peak": asdict(peak),
        "rows": rows,
        "memory_model": memory_report(rows),
    }
