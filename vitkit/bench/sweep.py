"""``python -m vitkit.bench sweep``: both modes of ``embed_chunks`` over named sweeps of step shapes.

A point is one step of distinct synthetic images, a window over each whole prompt; each repeat
starts from a fresh cache holding ``hit_fraction`` of them, so repeats do the same work. CUDA events
time the step and the encoder's calls; the rest is bookkeeping. Writes a JSON, PNGs and a table.

    python -m vitkit.bench sweep --sweep token-budget --max-tokens-per-call 512,none   # one axis overridden
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.bench.machine import (DTYPES, RUN_OPTIONS, EventTimedEncoder, MatmulPeak, Stopwatch, check_dtype,
                                  default_dtype, free_memory, layout_batch, list_of, measure_matmul_peak, number_arg,
                                  on_gpu, out_for, parser, positive_int_arg, provenance, resolve_device, roomy_cache,
                                  synchronize, table, timed_step, timing_stats)
from vitkit.bench.plot import save_figures
from vitkit.bench.rows import BenchRow, write_results
from vitkit.cache import embedding_row_bytes
from vitkit.checks import non_negative_int, positive_int, positive_number
from vitkit.costs import results as files
from vitkit.embed import MODES, embed_chunks
from vitkit.encoders import IMPLS, build_encoder
from vitkit.encoders.flops import item_flops
from vitkit.item import MultimodalItem, move_items_to_device
from vitkit.processing import synthetic_items
from vitkit.request import Request
from vitkit.span import Span

# A resolution is a square side in px, "native" (a fixed-resolution tower's own) or "mixed" (below).
Resolution = int | str
RESOLUTION_LABELS = ("native", "mixed")

# (height, width) px, multiples of 28 (Qwen2.5-VL's processor keeps them), mixed as in serving.
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


def check_hit_fraction(value: Any, where: str = "hit fraction") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where} must be in [0, 1), got {value!r}")
    return float(value)


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
        where = f"sweep {self.name!r}"
        if not self.encoder or not isinstance(self.encoder, str):
            raise ValueError(f"{where}: encoder must be a preset name, got {self.encoder!r}")
        for axis in ("requests", "images_per_request", "resolutions", "hit_fractions", "max_tokens_per_call"):
            if not getattr(self, axis):
                raise ValueError(f"{where}: {axis} is empty")
        for axis in ("requests", "images_per_request", "max_tokens_per_call"):
            for v in getattr(self, axis):
                if v is not None or axis != "max_tokens_per_call":
                    positive_int(f"{where}: {axis}", v)
        for r in self.resolutions:
            if isinstance(r, str) and r not in RESOLUTION_LABELS:
                raise ValueError(f"{where}: resolution {r!r} is neither a pixel side nor one of {RESOLUTION_LABELS}")
            if not isinstance(r, str):
                positive_int(f"{where}: resolution (px side)", r)
        for h in self.hit_fractions:
            check_hit_fraction(h, f"{where}: hit fraction")

    def points(self) -> list[SweepPoint]:
        axes = (self.requests, self.images_per_request, self.resolutions, self.hit_fractions, self.max_tokens_per_call)
        return [SweepPoint(self.name, self.encoder, *values) for values in itertools.product(*axes)]


CLIP, SIGLIP, QWEN = "clip-l-336", "siglip-so400m-384", "qwen2.5-vl-7b"
BATCH = (1, 2, 4, 8, 16, 32, 64)

_GPU_SWEEPS = (
    Sweep("clip-batch", CLIP, requests=BATCH, description="CLIP-L/336, 1..64 requests x 1 image"),
    Sweep("siglip-batch", SIGLIP, requests=BATCH, description="SigLIP so400m/384, 1..64 requests x 1 image"),
    Sweep("qwen-batch", QWEN, requests=(1, 2, 4, 8, 16), resolutions=(448,), description="Qwen2.5-VL, 1..16 x 448x448"),
    Sweep("qwen-resolution", QWEN, requests=(8,), resolutions=(224, 448, 672, 896, 1120, 1344, "mixed"),
          description="Qwen2.5-VL tower, 8 requests x 1 image, 224..1344 px side and a mixed-size case"),
    Sweep("images-per-request", CLIP, requests=(64,), images_per_request=(1, 2, 4, 8),
          description="CLIP-L/336, 64 requests x 1..8 images (the bookkeeping target is 64 x 4)"),
    Sweep("cache-hits", CLIP, requests=(32,), images_per_request=(2,), hit_fractions=(0.0, 0.25, 0.5, 0.9),
          description="CLIP-L/336, 32 requests x 2 images, a share of them already cached"),
    Sweep("token-budget", QWEN, requests=(16,), resolutions=(448,), max_tokens_per_call=(512, 1024, 2048, 4096),
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
SWEEPS |= {"full": _GPU_SWEEPS, "quick": _QUICK_SWEEPS, "cpu-smoke": _CPU_SWEEPS}

# Command-line axis name -> Sweep field.
OVERRIDABLE = {"encoder": "encoder", "requests": "requests", "images_per_request": "images_per_request",
               "resolution": "resolutions", "hit_fraction": "hit_fractions",
               "max_tokens_per_call": "max_tokens_per_call"}


def get_sweeps(name: str, overrides: Mapping[str, Any] | None = None) -> tuple[Sweep, ...]:
    """The sweeps of preset ``name`` with ``overrides`` (axis -> values, None kept) applied to each."""
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; known: {sorted(SWEEPS)}")
    given = {axis: values for axis, values in (overrides or {}).items() if values is not None}
    unknown = sorted(set(given) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot override {unknown[0]!r}; overridable axes: {sorted(OVERRIDABLE)}")
    changes = {OVERRIDABLE[axis]: v if axis == "encoder" else tuple(v) for axis, v in given.items()}
    return tuple(replace(s, **changes) for s in SWEEPS[name])


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
        check_dtype(self.dtype)
        for name in ("repeats", "min_repeats", "matmul_repeats"):
            positive_int(name, getattr(self, name))
        for name in ("warmup", "text_tokens", "seed"):
            non_negative_int(name, getattr(self, name))
        positive_number("seconds_per_mode", self.seconds_per_mode)
        if not self.impls:
            raise ValueError("impls is empty: name at least one of 'vitkit', 'stock'")

    @classmethod
    def for_device(cls, device: str | None = None, *, quick: bool = False, **overrides: Any) -> RunSettings:
        """Settings for ``device``: bf16, sweep "full" or "quick" on a GPU; fp32 "cpu-smoke" on CPU."""
        device = resolve_device(device)
        gpu = on_gpu(device)
        # On a CPU the tiny towers' steps take milliseconds and a shared 2-core machine stalls now and then:
        # more warm-up and repeats are cheap there, and the speedup's p10-p90 spread is read only with enough of them.
        defaults = dict(
            device=device, dtype=default_dtype(device), repeats=3 if quick else 10 if gpu else 21,
            min_repeats=3 if gpu else 11, warmup=3 if gpu else 5, matmul_repeats=30 if gpu else 5,
            kind="gpu" if gpu else "cpu-smoke", sweep=("quick" if quick else "full") if gpu else "cpu-smoke",
        )
        return cls(**defaults | {key: value for key, value in overrides.items() if value is not None})


def image_sizes(encoder: Any, point: SweepPoint) -> tuple[list[tuple[int, int]], int | str]:
    """(height, width) of each image, and the resolution to record (a fixed tower's own whatever asked)."""
    n = point.images
    if not encoder.variable_resolution:
        side = encoder.config.image_size
        return [(side, side)] * n, side
    if point.resolution == "mixed":
        cycle = MIXED_SIZES_TINY if getattr(getattr(encoder, "preset", None), "tiny", False) else MIXED_SIZES
        return [cycle[k % len(cycle)] for k in range(n)], "mixed"
    if point.resolution == "native":
        raise ValueError(f"encoder {encoder.name!r} is variable-resolution: give a pixel side or 'mixed', not 'native'")
    return [(point.resolution, point.resolution)] * n, point.resolution


def layout_requests(items: Sequence[MultimodalItem], images_per_request: int,
                    text_tokens: int) -> list[tuple[Request, Span]]:
    """A step of requests of ``images_per_request`` consecutive items each, a window over each prompt."""
    if len(items) % images_per_request:
        raise ValueError(f"{len(items)} items do not split into requests of {images_per_request} images")
    k = images_per_request
    return layout_batch((items[i:i + k] for i in range(0, len(items), k)), text_tokens)


def flop_layers(encoder: Any) -> int | None:
    """Layers the embedding needs (CLIP's rows come from the penultimate one): MFU credits only these."""
    if getattr(getattr(encoder, "preset", None), "feature_layer", -1) != -2:
        return None
    return (getattr(encoder.config, "num_hidden_layers", None) or encoder.config.depth) - 1


@dataclass
class _Point:
    """A point made concrete: its step, which items are cache hits, and their FLOPs."""

    batch: list[tuple[Request, Span]]
    items: list[MultimodalItem]
    hits: list[MultimodalItem]
    flops: dict[str, int]
    resolution: int | str
    patches: int


def prepare_point(point: SweepPoint, encoder: Any, settings: RunSettings, seed: int) -> _Point:
    sizes, resolution = image_sizes(encoder, point)
    items = synthetic_items(encoder.name, sizes, seed)
    if len({item.hash for item in items}) != len(items):
        raise ValueError(f"point {point}: synthetic items are not distinct; batching would de-duplicate them")
    move_items_to_device(items, settings.device)
    hits = random.Random(seed).sample(items, round(point.hit_fraction * len(items)))
    layers = flop_layers(encoder)
    flops = {item.hash: item_flops(encoder.config, item, num_layers=layers).total for item in items}
    # Qwen's feature has one row per patch; CLIP/SigLIP's patches are its embedding rows.
    patches = sum(item.feature.shape[0] if encoder.variable_resolution else item.num_tokens for item in items)
    batch = layout_requests(items, point.images_per_request, settings.text_tokens)
    return _Point(batch, items, hits, flops, resolution, patches)


def _prefilled_cache(prep: _Point, encoder: Any, device: str):
    cache = roomy_cache(prep.items, encoder, copies=2)
    for item in prep.hits:
        cache.put(item.hash, torch.zeros(item.num_tokens, encoder.hidden_size, dtype=encoder.dtype, device=device))
    return cache


def measure_mode(prep: _Point, encoder: Any, mode: str, point: SweepPoint, settings: RunSettings) -> dict[str, Any]:
    """Warm up, then time ``repeats`` steps of ``mode``; the raw figures of one row."""
    device, timed = settings.device, EventTimedEncoder(encoder, settings.device)
    gpu = on_gpu(device)
    samples: dict[str, list[float]] = {"step": [], "encoder": [], "bookkeeping": [], "wall": []}
    repeats, k = settings.repeats, 0
    while k < settings.warmup + repeats:
        cache = _prefilled_cache(prep, encoder, device)
        timed.reset()
        if gpu and k == settings.warmup:
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if gpu else None
        synchronize(device)
        with Stopwatch("cpu") as wall:
            result, watch = timed_step(prep.batch, timed, cache, mode, device,
                                       max_tokens_per_call=point.max_tokens_per_call)
            synchronize(device)
        # Keep the counters, drop the chunks: the next step must not start with this one's outputs.
        result = replace(result, embeddings=[])
        if k >= settings.warmup:
            step, enc = watch.elapsed_ms(), timed.encoder_ms()
            for key, ms in (("step", step), ("encoder", enc), ("bookkeeping", step - enc), ("wall", wall.elapsed_ms())):
                samples[key].append(ms)
        elif k == settings.warmup - 1:  # last warm-up step: size the repeats to the time budget
            repeats = _repeats_for(settings, wall.elapsed_ms())
        del cache
        k += 1
    peak = torch.cuda.max_memory_allocated(device) if gpu else None
    return {"result": result, "samples": samples, "peak": peak, "base": base}


def _repeats_for(settings: RunSettings, step_ms: float) -> int:
    """Repeats that fit ``seconds_per_mode``, between ``min_repeats`` and ``repeats``."""
    fit = int(settings.seconds_per_mode * 1e3 / max(step_ms, 1e-3))
    return max(min(settings.repeats, settings.min_repeats), min(settings.repeats, fit))


def make_row(point: SweepPoint, prep: _Point, encoder: Any, impl: str, mode: str, raw: dict, peak: MatmulPeak,
             modes_max_rel_diff: float | None = None) -> BenchRow:
    result, samples = raw["result"], raw["samples"]
    step, enc, book, wall = (timing_stats(samples[k]) for k in ("step", "encoder", "bookkeeping", "wall"))
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
        step_wall_ms_median=wall.median_ms, repeats=step.repeats, base_mem_bytes=raw["base"],
        out_bytes_per_token=embedding_row_bytes(encoder.hidden_size, encoder.dtype),
        dtype=str(encoder.dtype).removeprefix("torch."), modes_max_rel_diff=modes_max_rel_diff,
    )


def max_rel_diff(got: Sequence[torch.Tensor | None], want: Sequence[torch.Tensor | None]) -> float:
    """Largest |got - want| over the largest |want|, pairwise; ValueError when one side lacks a chunk."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g is None or w is None:
            if (g is None) != (w is None):
                raise ValueError("one side assembled a chunk where the other assembled none")
            continue
        scale = w.abs().max().float().clamp_min(torch.finfo(torch.float32).tiny)
        worst = max(worst, float((g.float() - w.float()).abs().max() / scale))
    return worst


def modes_max_rel_diff(prep: _Point, encoder: Any, point: SweepPoint, settings: RunSettings) -> float:
    """``max_rel_diff`` of the two modes' chunks at a point (bf16 batch shapes round differently)."""
    chunks = {}
    for mode in MODES:
        cache = _prefilled_cache(prep, encoder, settings.device)
        chunks[mode] = embed_chunks(prep.batch, encoder, cache, mode=mode,
                                    max_tokens_per_call=point.max_tokens_per_call).embeddings
        del cache
    try:
        return max_rel_diff(chunks["per_request"], chunks["batched"])
    except ValueError as err:
        raise ValueError(f"point {point}: {err}") from None


def _measure_point(point, encoder, impl, settings, seed, peak, bar) -> list[BenchRow]:
    """Both modes at one point; the items are the same for every impl (same seed)."""
    prep = prepare_point(point, encoder, settings, seed)
    diff = modes_max_rel_diff(prep, encoder, point, settings) if settings.check else None
    free_memory(settings.device)
    rows = []
    for mode in MODES:
        bar.set_postfix_str(f"{point.sweep} {impl} {mode} {point.requests}x{point.images_per_request} "
                            f"{prep.resolution}")
        raw = measure_mode(prep, encoder, mode, point, settings)
        rows.append(make_row(point, prep, encoder, impl, mode, raw, peak, modes_max_rel_diff=diff))
        bar.update()
    del prep, raw
    free_memory(settings.device)
    return rows


def run_sweeps(sweeps: Sequence[Sweep], settings: RunSettings, *, progress: bool = True) -> dict[str, Any]:
    """Every point of ``sweeps`` in both modes for each impl: the results object, rows ``BenchRow``."""
    peak = measure_matmul_peak(settings.device, repeats=settings.matmul_repeats)
    points = list(enumerate(p for s in sweeps for p in s.points()))
    rows: list[BenchRow] = []
    bar = tqdm(total=len(points) * len(settings.impls) * len(MODES), desc="vitkit.bench", unit="run",
               disable=not progress)
    # One encoder at a time (grouped by encoder, then impl), so peak memory holds one model's weights.
    for name in dict.fromkeys(p.encoder for _, p in points):
        for impl in settings.impls:
            encoder = build_encoder(name, device=settings.device, dtype=DTYPES[settings.dtype], impl=impl)
            encoder.warmup(progress=False)  # every bucket compiled and captured before timing
            for index, point in points:
                if point.encoder == name:
                    rows += _measure_point(point, encoder, impl, settings, settings.seed + index, peak, bar)
            del encoder
            free_memory(settings.device)
    bar.close()
    return {"schema": files.schema("bench"), **provenance(settings.device, settings.kind),
            "settings": asdict(settings) | {"sweeps": [asdict(s) for s in sweeps], "window": "whole prompt, one step"},
            "matmul_peak": asdict(peak), "rows": rows, "memory_model": memory_report(rows)}


# The memory model: a batched step's peak GPU memory is what was allocated before it plus the larger
# of two moments of ``vitkit.embed``'s batched path, in bytes:
#     during call k:  out * (rows of calls before k) + act * rows_k      (earlier outputs are kept)
#     at the end:     out * (2 * rows_encoded + rows_assembled)          (outputs, cache copies, chunks)
# ``out`` (bytes per embedding row) is known; ``act`` (activation bytes per row of a call) is fitted
# at one budget (the largest call) and predicts the others: is the budget a usable memory knob?

MEMORY_GROUP = ("sweep", "encoder", "impl", "mode", "requests", "images_per_request", "resolution", "hit_fraction")


@dataclass(frozen=True)
class MemoryModel:
    """Calibrated coefficients (bytes per embedding row)."""

    act_bytes_per_token: float
    out_bytes_per_token: int
    calibrated_budget: int | None
    calibrated_max_call_tokens: int

    def step_bytes(self, call_tokens: Sequence[int], assembled_tokens: int) -> float:
        """Predicted bytes a step adds over what was allocated before it."""
        during = max(self.out_bytes_per_token * sum(call_tokens[:k]) + self.act_bytes_per_token * rows
                     for k, rows in enumerate(call_tokens))
        return max(during, self.out_bytes_per_token * (2 * sum(call_tokens) + assembled_tokens))


def _modelled(row: BenchRow) -> bool:
    """A row the model can use: its calls, peak and base memory and row bytes were recorded."""
    return bool(row.call_tokens) and None not in (row.peak_mem_bytes, row.base_mem_bytes, row.out_bytes_per_token)


def calibrate(row: BenchRow) -> MemoryModel:
    """Fit the activation bytes per row to one measured row, at its largest encoder call."""
    if not _modelled(row):
        raise ValueError(f"cannot calibrate the memory model on a row without calls or peak memory "
                         f"(mode {row.mode!r}, budget {row.max_tokens_per_call!r})")
    calls, out = row.call_tokens, row.out_bytes_per_token
    k = max(range(len(calls)), key=lambda i: (calls[i], -i))  # the first of the largest
    act = (row.peak_mem_bytes - row.base_mem_bytes - out * sum(calls[:k])) / calls[k]
    return MemoryModel(act, out, row.max_tokens_per_call, calls[k])


def predict_peak(model: MemoryModel, row: BenchRow) -> float:
    """Predicted peak bytes of ``row``'s step: its base allocation plus the model's step bytes."""
    assembled = row.step_rows if row.step_rows is not None else sum(row.call_tokens)
    return row.base_mem_bytes + model.step_bytes(row.call_tokens, assembled)


def memory_report(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Per group of batched rows differing only in budget: calibrate on the largest call, predict each;
    errors (measured - predicted) / predicted of the peak and of the step's own part."""
    groups: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        if row.mode == "batched" and _modelled(row):
            groups.setdefault(tuple(getattr(row, k) for k in MEMORY_GROUP), []).append(row)
    report = []
    for key, members in groups.items():
        if len({m.max_tokens_per_call for m in members}) < 2:
            continue
        anchor = max(members, key=lambda r: max(r.call_tokens))
        model = calibrate(anchor)
        for row in sorted(members, key=lambda r: max(r.call_tokens)):
            predicted = predict_peak(model, row)
            step_pred, step_meas = predicted - row.base_mem_bytes, row.peak_mem_bytes - row.base_mem_bytes
            report.append(dict(zip(MEMORY_GROUP, key)) | {
                "max_tokens_per_call": row.max_tokens_per_call, "max_call_tokens": max(row.call_tokens),
                "calibration": row is anchor, "predicted_peak_bytes": int(predicted),
                "measured_peak_bytes": row.peak_mem_bytes, "error": (row.peak_mem_bytes - predicted) / predicted,
                "step_error": (step_meas - step_pred) / step_pred if step_pred else None, "model": asdict(model),
            })
    return report


def _impl(part: str) -> str:
    if part not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {part!r}")
    return part


def build_parser() -> argparse.ArgumentParser:
    repeats = "timed steps per point and mode (default 10 GPU, 3 quick, 2 CPU)"
    p = parser("sweep", __doc__, *RUN_OPTIONS, "repeats", "warmup",
               repeats=dict(type=list_of(positive_int_arg, single=True), help=repeats),
               warmup=dict(help="untimed steps first (default 3 GPU, 1 CPU)"))
    p.add_argument("--sweep", choices=sorted(SWEEPS), metavar="NAME",
                   help="named sweep (default: full on GPU, cpu-smoke on CPU); --list-sweeps shows them")
    p.add_argument("--list-sweeps", action="store_true", help="print the named sweeps and exit")
    p.add_argument("--quick", action="store_true",
                   help="GPU sanity run: the 'quick' sweep, 3 repeats (CPU: the smoke sweep)")
    p.add_argument("--encoder", help="encoder preset for every sweep of the run (e.g. clip-l-336)")
    p.add_argument("--requests", type=list_of(positive_int_arg), help="requests per step, e.g. 1,2,4")
    p.add_argument("--images-per-request", type=list_of(positive_int_arg), help="images per request, e.g. 1,4,8")
    p.add_argument("--resolution", type=list_of(lambda v: v if v in RESOLUTION_LABELS else positive_int_arg(v)),
                   help="image side in px, or 'mixed' (variable-resolution towers; fixed ones use their own size)")
    fraction = list_of(lambda v: check_hit_fraction(number_arg(v, float), "hit fractions"))
    p.add_argument("--hit-fraction", type=fraction, help="share of the step's images already cached")
    budget = list_of(lambda v: None if v.lower() == "none" else positive_int_arg(v))
    p.add_argument("--max-tokens-per-call", type=budget, help="encoder token budgets, e.g. 512,2048,none")
    p.add_argument("--impl", type=list_of(_impl), default=["vitkit"], help="vitkit, stock or vitkit,stock")
    p.add_argument("--seconds-per-mode", type=float, default=2.0,
                   help="timed-step budget per point and mode: slow points get fewer repeats, at least 3 (default 2)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the untimed comparison of the two modes' embeddings at each point")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any], RunSettings]:
    settings = RunSettings.for_device(
        args.device, quick=args.quick, sweep=args.sweep, dtype=args.dtype, impls=tuple(args.impl),
        repeats=args.repeats, warmup=args.warmup, seconds_per_mode=args.seconds_per_mode, check=not args.no_check,
    )
    return settings.sweep, {axis: getattr(args, axis) for axis in OVERRIDABLE}, settings


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width table of the rows, the memory model's checks and a summary per sweep."""
    lines = table([("sweep", "<18.18", "sweep"), ("encoder", "<18.18", "encoder"), ("impl", "<6", "impl"),
                   ("mode", "<11", "mode"),
                   ("req x img", ">9", lambda r: f"{r.requests:>4} x {r.images_per_request:<2}"),
                   ("res", ">6", lambda r: str(r.resolution)), ("calls", ">5", "encoder_calls"),
                   ("step ms", "9.2f", "step_ms_median"), ("enc ms", "9.2f", "encoder_ms_median"),
                   ("book%", "6.1f", lambda r: None if r.bookkeeping_share is None else 100 * r.bookkeeping_share),
                   ("img/s", "9.1f", "images_per_s"), ("MFU%", "6.1f", lambda r: 100 * r.mfu),
                   ("peak MiB", "9.0f", lambda r: None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20)],
                  results["rows"], rule=True)
    for e in results.get("memory_model", []):
        lines.append(f"memory model {e['encoder']} {e['mode']} budget={e['max_tokens_per_call']}: predicted "
                     f"{e['predicted_peak_bytes'] / 2**20:.0f} MiB, measured {e['measured_peak_bytes'] / 2**20:.0f} "
                     f"MiB, error {100 * e['error']:+.1f}%{' (calibration)' if e['calibration'] else ''}")
    lines += summary_lines(results)
    peak = results["matmul_peak"]
    lines.append(f"kind={results['kind']}  device={results['machine']['device_name']}  "
                 f"matmul peak {peak['tflops']:.2f} TFLOP/s ({peak['label']})")
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Per sweep, encoder and impl: batched at its point with the most images, against per-request."""
    keyed: dict[tuple, dict[str, BenchRow]] = {}
    for r in results["rows"]:
        key = (r.sweep, r.encoder, r.impl, r.requests, r.images_per_request, repr(r.resolution), r.hit_fraction,
               r.max_tokens_per_call)
        keyed.setdefault(key, {})[r.mode] = r
    best: dict[tuple, dict[str, BenchRow]] = {}
    for key, modes in keyed.items():
        if "batched" in modes and "per_request" in modes:
            if key[:3] not in best or modes["batched"].images >= best[key[:3]]["batched"].images:
                best[key[:3]] = modes
    lines = []
    for (sweep, encoder, impl), modes in best.items():
        b, p = modes["batched"], modes["per_request"]
        diff = "" if b.modes_max_rel_diff is None else f"; modes differ by {b.modes_max_rel_diff:.1e} (max rel)"
        book = "-" if b.bookkeeping_share is None else f"{100 * b.bookkeeping_share:.2f}"
        lines.append(f"{sweep}: {encoder} {impl} at {b.requests} x {b.images_per_request} ({b.resolution}): "
                     f"batched {b.images_per_s:.1f} img/s, MFU {100 * b.mfu:.1f}%, bookkeeping {book}%; "
                     f"per-request {p.images_per_s:.1f} img/s; speedup {p.step_ms_median / b.step_ms_median:.2f}x"
                     f"{diff}")
    return lines


def main(argv: Sequence[str] | None = None, *, run: Callable[..., dict[str, Any]] = run_sweeps) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.list_sweeps:
        for name, sweeps in SWEEPS.items():
            what = sweeps[0].description or sweeps[0].encoder if len(sweeps) == 1 else \
                f"{len(sweeps)} sweeps: " + ", ".join(s.name for s in sweeps)
            print(f"{name:<20} {what}")
        return 0
    try:
        sweep, overrides, settings = settings_from_args(args)
        sweeps = get_sweeps(sweep, overrides)
    except ValueError as err:
        p.error(str(err))
    try:
        out = out_for(args.out, settings.device, settings.kind)  # before the run, never after it
    except files.Refused as err:
        print(f"vitkit.bench: refused: {err}", file=sys.stderr)
        return 2
    total = sum(len(s.points()) for s in sweeps) * len(settings.impls) * 2
    print(f"vitkit.bench: sweep {sweep!r} on {settings.device} ({settings.dtype}), {total} measurements "
          f"x {settings.repeats} repeats (+{settings.warmup} warm-up)", flush=True)
    results = run(sweeps, settings, progress=not args.no_progress)
    name = f"{sweep}-{'-'.join(settings.impls)}-{settings.dtype}-{files.stamp()}.json"
    path = write_results(results, out / name)
    print(f"wrote {path}")
    if not args.no_plots:
        for png in save_figures(results, path.parent, prefix=path.stem + "-"):
            print(f"wrote {png}")
    print(format_table(results))
    return 0
