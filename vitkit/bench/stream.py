"""``python -m vitkit.bench stream``: a seeded stream of steps whose layout changes every step, as in
serving, through ``embed_chunks`` in every impl; ``buckets``: candidate bucket sets' padding on it.

Per impl: the first ``cold_steps`` steps before any warm-up (on a GPU in a fresh process: what a
new server pays), ``encoder.warmup()``, the stream in each mode on one cache kept across steps, and
the steady state (the step nearest the mean, repeated, all misses). Its own loop, not ``run_steps``: its
steps are the seeded stream's, not scheduled, each timed by CUDA events. Without a GPU: tiny towers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench.machine import (DTYPES, RUN_OPTIONS, EventTimedEncoder, check_dtype, default_dtype, free_memory,
                                  int_range, layout_batch, list_of, on_gpu, out_folder, parser, positive_int_arg,
                                  provenance, resolve_device, roomy_cache, table, timed_step)
from vitkit.bench.rows import StreamRow, load_stream_results, write_stream_results
from vitkit.bench.sweep import check_hit_fraction
from vitkit.checks import positive_int
from vitkit.costs import results as files
from vitkit.costs.encoder import BucketCost, fit_bucket_cost
from vitkit.embed import MODES
from vitkit.encoders import build_encoder, default_buckets
from vitkit.encoders.buckets import Buckets, pack, padding_waste
from vitkit.encoders.fixed import FIXED_BUCKETS
from vitkit.encoders.presets import get_preset
from vitkit.encoders.qwen import QWEN_BUCKETS
from vitkit.item import MultimodalItem
from vitkit.processing import qwen_grid

RECENT_IMAGES = 64  # a repeated image is drawn from the last this many distinct images


@dataclass(frozen=True)
class StreamSpec:
    """What the stream draws from; ranges are inclusive, sides in px (variable-resolution towers)."""

    encoder: str
    steps: int = 200
    images_per_step: tuple[int, int] = (1, 8)
    images_per_request: tuple[int, int] = (1, 4)
    sides: tuple[int, int] = (224, 1344)  # height and width drawn independently
    hit_fraction: float = 0.2  # chance an image repeats a recent one
    seed: int = 0

    def __post_init__(self) -> None:
        get_preset(self.encoder)  # names an unknown preset
        positive_int("stream: steps", self.steps)
        for name in ("images_per_step", "images_per_request", "sides"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 < lo <= hi):
                raise ValueError(f"stream: {name} must be (low, high) ints with 0 < low <= high, got {(lo, hi)!r}")
        check_hit_fraction(self.hit_fraction, "stream: hit_fraction")

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> StreamSpec:
        """The spec of a JSON object (lists back to tuples), as results files store it."""
        return cls(**_tuples(fields))


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


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


def generate_stream(spec: StreamSpec) -> list[StreamStep]:
    """The stream's steps, the same for the same spec."""
    rng = random.Random(spec.seed)
    preset = get_preset(spec.encoder)
    recent: list[StreamImage] = []
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
                recent.append(StreamImage(len(recent), height, width))
                images.append(recent[-1])
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
    return t * h * w // int(preset.config["spatial_merge_size"]) ** 2, t * h * w


def make_stream_items(spec: StreamSpec, steps: Sequence[StreamStep], device: str | torch.device,
                      dtype: torch.dtype = torch.bfloat16) -> dict[int, MultimodalItem]:
    """One item per distinct image, random features on ``device``, hashed by name."""
    preset = get_preset(spec.encoder)
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    items: dict[int, MultimodalItem] = {}
    for image in (im for step in steps for request in step.requests for im in request):
        if image.key in items:
            continue
        key = f"stream-{spec.encoder}-{spec.seed}-{image.key}"
        if not preset.variable_resolution:
            side = preset.image_size
            feature = torch.randn(3, side, side, generator=gen, device=device).to(dtype)
            items[image.key] = MultimodalItem(feature, preset.fixed_num_tokens, hash=key)
            continue
        t, h, w = qwen_grid(image.height, image.width, preset)
        width = 3 * int(preset.config["temporal_patch_size"]) * preset.patch_size**2
        feature = torch.randn(t * h * w, width, generator=gen, device=device).to(dtype)
        rows = image_rows(spec, image)[0]
        items[image.key] = MultimodalItem(feature, rows, hash=key, meta={"image_grid_thw": (t, h, w)})
    return items


def miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[int]]:
    """Bucket units of each encoder call the stream makes with an unbounded cache."""
    return [call for calls in step_miss_units(spec, steps, mode) for call in calls]


def step_miss_units(spec: StreamSpec, steps: Sequence[StreamStep], mode: str = "batched") -> list[list[list[int]]]:
    """Per step, each encoder call's bucket units with an unbounded cache (one call batched, one a request)."""
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


@dataclass(frozen=True)
class StreamSettings:
    """How the stream is measured."""

    device: str = "cpu"
    dtype: str = "fp32"
    impls: tuple[str, ...] = ("vitkit", "vitkit-eager", "stock")
    cold_steps: int = 40
    steady_repeats: int = 10
    text_tokens: int = 8
    buckets: tuple[int, ...] | None = None  # override the tower's default bucket sizes
    kind: str = "gpu"
    cold_in_subprocess: bool | None = None  # the cold pass in a fresh process (None: on CUDA only)

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "stream: dtype")
        for name in ("cold_steps", "steady_repeats"):
            positive_int(f"stream: {name}", getattr(self, name))
        if not self.impls:
            raise ValueError("stream: impls is empty")


def _build(spec: StreamSpec, settings: StreamSettings, impl: str):
    buckets = None
    if settings.buckets is not None and impl == "vitkit":
        default = default_buckets(spec.encoder)
        buckets = Buckets(tuple(settings.buckets), default.max_items, default.multiple)
    return build_encoder(spec.encoder, device=settings.device, dtype=DTYPES[settings.dtype], impl=impl,
                         buckets=buckets, seed=spec.seed)


def _batches(spec: StreamSpec, settings: StreamSettings):
    """The stream's items and, per step, its index and batch (one window over each whole prompt)."""
    steps = generate_stream(spec)
    items = make_stream_items(spec, steps, settings.device)
    return items, [(s.index, layout_batch(([items[im.key] for im in r] for r in s.requests), settings.text_tokens,
                                          name=f"s{s.index}r")) for s in steps]


def _run_steps(batches, encoder, items, mode: str, settings: StreamSettings, impl: str, bar=None) -> list[StreamRow]:
    """Each step's batch through ``embed_chunks`` on one fresh cache, timed; a row per step."""
    timed, cache, rows = EventTimedEncoder(encoder, settings.device), roomy_cache(items.values(), encoder), []
    for index, batch in batches:
        before = encoder.stats.copy()
        timed.reset()
        result, watch = timed_step(batch, timed, cache, mode, settings.device)
        spent = encoder.stats - before
        rows.append(StreamRow(
            encoder=encoder.name, impl=impl, mode=mode, step=index, images=sum(len(r.items) for r, _ in batch),
            requests=len(batch), encoder_calls=result.encoder_calls, encoded_items=result.encoded_items,
            encoded_rows=result.encoded_tokens, padded_rows=spent.padded_rows, cache_hits=result.cache_hits,
            unbucketed=spent.unbucketed, compiles=spent.compiles, captures=spent.captures,
            step_ms=watch.elapsed_ms(), encoder_ms=timed.encoder_ms()))
        del result
        if bar is not None:
            bar.update()
    return rows


def summarize_stream(rows: Sequence[StreamRow], warmup_s: float) -> dict[str, Any]:
    """One impl and mode over the stream: throughput, step latency percentiles, counters, waste."""
    total_s = sum(r.step_ms for r in rows) / 1e3
    step_ms = np.array([r.step_ms for r in rows])
    real, padded, images = (sum(getattr(r, k) for r in rows) for k in ("encoded_rows", "padded_rows", "images"))
    return {
        "steps": len(rows), "images": images, "encoded_rows": real, "total_s": total_s,
        "images_per_s": images / total_s, "rows_per_s": real / total_s,
        "step_ms_p50": float(np.percentile(step_ms, 50)), "step_ms_p99": float(np.percentile(step_ms, 99)),
        "step_ms_mean": float(step_ms.mean()), "encoder_ms_total": sum(r.encoder_ms for r in rows),
        **{k: sum(getattr(r, k) for r in rows) for k in ("compiles", "captures", "unbucketed")},
        "padded_rows": padded, "padding_waste": padded / real if real else 0.0, "warmup_s": warmup_s,
    }


def _steady(batches, encoder, items, device: str, repeats: int) -> dict[str, Any]:
    """The step nearest the mean (in its distinct images' rows), repeated with every image a miss."""
    def rows_of(batch):
        return sum({item.hash: item.num_tokens for r, _ in batch for item in r.items}.values())

    mean = float(np.mean([rows_of(b) for _, b in batches]))
    index, batch = min(batches, key=lambda ib: abs(rows_of(ib[1]) - mean))
    samples = [timed_step(batch, encoder, roomy_cache(items.values(), encoder), "batched", device)[1].elapsed_ms()
               for _ in range(repeats + 2)][2:]
    ms = float(np.median(samples))
    images = sum(len(r.items) for r, _ in batch)
    return {"step": index, "images": images, "encoded_rows": rows_of(batch), "mean_step_rows": mean,
            "step_ms_median": ms, "images_per_s": images / ms * 1e3, "rows_per_s": rows_of(batch) / ms * 1e3}


def cold_main(argv: Sequence[str]) -> None:
    """The cold pass (``SPEC_JSON SETTINGS_JSON IMPL``): the first ``cold_steps`` steps, batched, on a new
    encoder with nothing warmed up; its rows printed as JSON, the last line."""
    spec, settings = StreamSpec.from_dict(json.loads(argv[0])), StreamSettings(**_tuples(json.loads(argv[1])))
    items, batches = _batches(spec, settings)
    encoder = _build(spec, settings, argv[2])
    rows = _run_steps(batches[: settings.cold_steps], encoder, items, "batched", settings, argv[2])
    print(json.dumps([asdict(r) for r in rows]))


def _cold_in_subprocess(spec: StreamSpec, settings: StreamSettings, impl: str) -> list[StreamRow]:
    """``cold_main`` in a fresh process with compile caches of its own: every first cost is paid."""
    with tempfile.TemporaryDirectory(prefix="vitkit-cold-") as tmp:
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        code = "import sys; from vitkit.bench.stream import cold_main; cold_main(sys.argv[1:])"
        args = [sys.executable, "-c", code, json.dumps(asdict(spec)), json.dumps(asdict(settings)), impl]
        done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cold pass of {spec.encoder} {impl} failed:\n{done.stderr[-3000:]}")
    return [StreamRow(**r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def run_stream(spec: StreamSpec, settings: StreamSettings, *, progress: bool = True) -> dict[str, Any]:
    fresh = on_gpu(settings.device) if settings.cold_in_subprocess is None else settings.cold_in_subprocess
    items, batches = _batches(spec, settings)
    cold = batches[: settings.cold_steps]
    total = len(settings.impls) * (len(cold) + len(MODES) * len(batches))
    bar = tqdm(total=total, desc=f"stream {spec.encoder}", unit="step", disable=not progress)
    out: dict[str, list] = {"warmups": [], "summaries": [], "steady": [], "steps": [], "cold": []}
    for impl in settings.impls:
        encoder = _build(spec, settings, impl)
        tag = {"encoder": spec.encoder, "impl": impl}
        if fresh:
            cold_pass = _cold_in_subprocess(spec, settings, impl)
            bar.update(len(cold_pass))
        else:
            cold_pass = _run_steps(cold, encoder, items, "batched", settings, impl, bar)
        report = encoder.warmup(progress=progress)
        out["warmups"].append(tag | asdict(report))
        for mode in MODES:
            rows = _run_steps(batches, encoder, items, mode, settings, impl, bar)
            out["steps"] += rows
            out["summaries"].append(tag | {"mode": mode} | summarize_stream(rows, report.seconds))
            if mode == "batched":
                out["cold"].append(tag | {
                    "steps": len(cold_pass), "cold_s": sum(r.step_ms for r in cold_pass) / 1e3,
                    "warm_s": sum(r.step_ms for r in rows[: len(cold_pass)]) / 1e3,
                    "cold_compiles": sum(r.compiles for r in cold_pass),
                    "cold_captures": sum(r.captures for r in cold_pass),
                    "fresh_process": fresh, "step_ms": [r.step_ms for r in cold_pass]})
        out["steady"].append(tag | _steady(batches, encoder, items, settings.device, settings.steady_repeats))
        del encoder
        free_memory(settings.device)
    bar.close()
    by_key = {(s["impl"], s["mode"]): s for s in out["summaries"]}
    for s in out["summaries"]:  # batched over per-request on the stream (total time)
        other = by_key.get((s["impl"], "per_request"))
        s["batched_speedup"] = other["total_s"] / s["total_s"] if s["mode"] == "batched" and other else None
    return {"schema": files.schema("stream"), **provenance(settings.device, settings.kind),
            "settings": asdict(settings) | {"stream": asdict(spec)}, **out}


def format_stream_table(results: Mapping[str, Any]) -> str:
    """One line per encoder, impl and mode, then cold starts and steady state."""
    lines = table([("encoder", "<15.15", "encoder"), ("impl", "<12", "impl"), ("mode", "<11", "mode"),
                   ("warmup s", "8.1f", "warmup_s"), ("img/s", "8.1f", "images_per_s"),
                   ("rows/s", "9.0f", "rows_per_s"), ("p50 ms", "8.2f", "step_ms_p50"),
                   ("p99 ms", "8.2f", "step_ms_p99"), ("compiles", "8d", "compiles"), ("captures", "8d", "captures"),
                   ("waste%", "6.1f", lambda s: 100 * s["padding_waste"]),
                   ("speedup", ">7", lambda s: f"{s['batched_speedup']:.2f}x" if s.get("batched_speedup") else None)],
                  results["summaries"], rule=True)
    for c in results["cold"]:
        lines.append(f"cold start {c['encoder']} {c['impl']}: first {c['steps']} steps {c['cold_s']:.1f} s cold "
                     f"({c['cold_compiles']} compiles, {c['cold_captures']} captures) vs {c['warm_s']:.2f} s warm")
    for s in results["steady"]:
        lines.append(f"steady state {s['encoder']} {s['impl']}: step {s['step']} ({s['images']} images, "
                     f"{s['encoded_rows']} rows; stream mean {s['mean_step_rows']:.0f}) {s['step_ms_median']:.2f} ms, "
                     f"{s['images_per_s']:.1f} img/s, {s['rows_per_s']:.0f} rows/s")
    lines.append(f"device={results['machine']['device_name']}")
    return "\n".join(lines)


MODE_COLOR = {"batched": "tab:blue", "per_request": "tab:orange"}
IMPL_MARKERS = (("o", "black"), ("s", "tab:purple"), ("^", "tab:olive"), ("D", "tab:cyan"))  # not the modes' colours


def stream_figure(results: Mapping[str, Any]) -> Figure:
    """Rows encoded per second per impl and mode, steady state marked; each batched step's latency against the
    rows it encoded (a step whose images were all cache hits makes no encoder call: its latency is bookkeeping)."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.3))
    impls = _throughput_bars(left, results)
    for k, impl in enumerate(impls):
        rows = [r for r in results["steps"] if r["impl"] == impl and r["mode"] == "batched"]
        marker, color = IMPL_MARKERS[k % len(IMPL_MARKERS)]
        right.scatter([r["encoded_rows"] for r in rows], [r["step_ms"] for r in rows], s=12, alpha=0.55,
                      marker=marker, color=color, label=impl)
    hits_only = sum(r["encoded_rows"] == 0 for r in results["steps"] if r["mode"] == "batched" and r["impl"] == impls[0])
    right.set(yscale="log", xlabel="embedding rows encoded in the step", ylabel="step latency (ms, log)",
              title=f"batched steps; at 0 rows: {hits_only} steps with only cache hits (no encoder call)")
    right.title.set_fontsize(9)
    right.legend(fontsize=8, loc="lower right")
    spec = results["settings"]["stream"]
    fig.suptitle(f"{spec['encoder']} stream: {spec['steps']} steps of {spec['images_per_step'][0]}-"
                 f"{spec['images_per_step'][1]} images — {results['machine']['device_name']} ({results['kind']})")
    return fig


def _throughput_bars(ax, results: Mapping[str, Any]) -> list[str]:
    """Rows per second on the stream per impl (groups) and mode (bars), the steady state dotted; the impls."""
    summaries = results["summaries"]
    impls = list(dict.fromkeys(s["impl"] for s in summaries))
    width = 0.38
    for m, mode in enumerate(("batched", "per_request")):
        values = [next((s["rows_per_s"] for s in summaries if s["impl"] == i and s["mode"] == mode), 0) for i in impls]
        bars = ax.bar([k + (m - 0.5) * width for k in range(len(impls))], values, width, label=mode.replace("_", "-"),
                      color=MODE_COLOR[mode])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
    for k, impl in enumerate(impls):
        steady = next((s for s in results["steady"] if s["impl"] == impl), None)
        if steady:
            ax.hlines(steady["rows_per_s"], k - width, k, colors="black", linestyles=":",
                      label="batched, one shape repeated" if k == 0 else None)
    ax.set(xticks=range(len(impls)), xticklabels=impls, ylabel="embedding rows encoded / s on the stream")
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="upper right")
    return impls


def fit_stream_bucket_cost(path: str | Path, encoder: str,
                           impl: str = "vitkit") -> tuple[BucketCost, list[dict[str, Any]]]:
    """The ``BucketCost`` of a stream file's encoder fitted to its step rows (calls recomputed from the
    seed), and per row ``{mode, step, calls, measured_ms, modelled_ms, rel_err, flagged}``."""
    data = load_stream_results(path)
    spec = StreamSpec.from_dict(data["settings"]["stream"])
    stream = generate_stream(spec)
    buckets = default_buckets(encoder)
    if data["settings"].get("buckets"):
        buckets = Buckets(tuple(data["settings"]["buckets"]), buckets.max_items, buckets.multiple)
    preset = get_preset(encoder)
    unit = int(preset.config["spatial_merge_size"]) ** 2 if preset.variable_resolution else 1
    rows_per_unit = 1 if preset.variable_resolution else preset.fixed_num_tokens  # one bucket unit: one image
    steps, calls, targets = [], [], []
    for mode in ("batched", "per_request"):
        recomputed = step_miss_units(spec, stream, mode)
        for row in (r for r in data["steps"] if (r["encoder"], r["impl"], r["mode"]) == (encoder, impl, mode)):
            made = recomputed[row["step"]]
            ok = (len(made) == row["encoder_calls"] and sum(map(len, made)) == row["encoded_items"]
                  and sum(u * rows_per_unit // unit for c in made for u in c) == row["encoded_rows"])
            steps.append({"mode": mode, "step": row["step"], "calls": made, "measured_ms": row["encoder_ms"],
                          "flagged": not ok})
            if ok and made:
                calls.append(made)
                targets.append(row["encoder_ms"])
    if not steps:
        raise ValueError(f"{path}: no step rows for encoder {encoder!r} impl {impl!r}")
    machine = data.get("machine", {}).get("device_name") or "?"
    cost = fit_bucket_cost(calls, targets, buckets, unit=unit, encoder=encoder, impl=impl,
                           source=f"{Path(path).name} ({machine})")
    cost = replace(cost, rows_per_unit=rows_per_unit)
    for s in steps:
        s["modelled_ms"] = sum(cost.call_units_ms(c) for c in s["calls"])
        s["rel_err"] = (s["modelled_ms"] - s["measured_ms"]) / s["measured_ms"] if s["measured_ms"] > 0 else None
    return cost, steps


def _steps(step: int, top: int, small: Sequence[int] = ()) -> tuple[int, ...]:
    return tuple(sorted({*small, *range(step, top + 1, step)}))


def _geometric(low: int, top: int, ratio: float, multiple: int) -> tuple[int, ...]:
    sizes, x = set(), float(low)
    while x < top:
        sizes.add(max(multiple, int(round(x / multiple)) * multiple))
        x *= ratio
    return tuple(sorted(sizes | {top}))


CANDIDATES: dict[str, dict[str, Buckets]] = {
    "qwen2.5-vl-7b": {
        "default": QWEN_BUCKETS,
        "powers of 2, 256..16384": Buckets(tuple(2**k for k in range(8, 15)), 32, 4),
        "powers of 2, 256..32768": Buckets(tuple(2**k for k in range(8, 16)), 32, 4),
        "steps of 2048, ..16384": Buckets(_steps(2048, 16384, (256, 512, 1024)), 32, 4),
        "steps of 2048, ..32768": Buckets(_steps(2048, 32768, (256, 512, 1024)), 32, 4),
        "geometric x1.25, ..16384": Buckets(_geometric(256, 16384, 1.25, 64), 32, 4),
        "geometric x1.4, ..16384": Buckets(_geometric(256, 16384, 1.4, 64), 32, 4),
    },
    "clip-l-336": {
        "default": FIXED_BUCKETS,
        "powers of 2": Buckets((1, 2, 4, 8, 16, 32, 64), 64),
        "steps of 8": Buckets(_steps(8, 64, (1, 2, 3, 4, 6)), 64),
        "mixed 4/8": Buckets((1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64), 64),
        "every size": Buckets(tuple(range(1, 65)), 64),
    },
}


def bucket_choice(spec: StreamSpec, candidates: dict[str, Buckets]) -> list[dict]:
    """Padding waste (padded / real units) and graphs of each candidate set on the stream, both modes."""
    steps = generate_stream(spec)
    calls_of = {mode: miss_units(spec, steps, mode) for mode in MODES}  # once, not per candidate
    rows = []
    for name, buckets in candidates.items():
        row = {"name": name, "sizes": list(buckets.sizes), "max_items": buckets.max_items, "graphs": len(buckets.sizes)}
        for mode, calls in calls_of.items():
            real, pad = padding_waste(calls, buckets)
            packs = sum(len(pack(c, buckets)) for c in calls)
            row |= {f"{mode}_waste": pad / real if real else 0.0, f"{mode}_calls": len(calls), f"{mode}_packs": packs}
        rows.append(row)
    return rows


def measured_bucket_seconds(folder: str | Path) -> dict[str, float]:
    """Median warm-up seconds per bucket of each tower, from the stream files in ``folder`` (newest wins)."""
    out = {}
    for path in reversed(files.newest_first("stream", folder)):
        for w in files.read("stream", path).get("warmups", []):
            if w["impl"] == "vitkit" and w.get("bucket_seconds"):
                secs = sorted(s for _, s in w["bucket_seconds"])
                out[w["encoder"]] = secs[len(secs) // 2]
    return out


def choose(steps: int = 400, seed: int = 0, results: str | Path | None = None) -> list[dict]:
    """Every candidate set of each GPU stream's tower, with its estimated warm-up (None without data)."""
    per_bucket = measured_bucket_seconds(files.results_folder() if results is None else results)
    rows = []
    for encoder, candidates in CANDIDATES.items():
        spec = StreamSpec(encoder, steps=steps, seed=seed, **GPU_STREAMS[encoder])
        seconds = per_bucket.get(encoder)
        rows += [{"encoder": encoder, **row, "est_warmup_s": None if seconds is None else seconds * row["graphs"]}
                 for row in bucket_choice(spec, candidates)]
    return rows


def buckets_main(argv: Sequence[str] | None = None) -> int:
    p = parser("buckets", "The padding waste of candidate bucket sets on each tower's stream, against graphs.",
               "steps", "seed", "out", steps=dict(default=400),
               out=dict(default=files.results_folder("cpu") / "bucket-choice.json", help="the JSON to write"))
    args = p.parse_args(argv)
    rows = choose(args.steps, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stream_steps": args.steps, "seed": args.seed, "rows": rows}, indent=1) + "\n")
    print("\n".join(table([("encoder", "<14.14", "encoder"), ("bucket set", "<26", "name"), ("graphs", ">6", "graphs"),
                           ("waste batched", ">13", lambda r: f"{100 * r['batched_waste']:.1f}%"),
                           ("waste per-req", ">13", lambda r: f"{100 * r['per_request_waste']:.1f}%"),
                           ("est. warm-up s", "14.0f", "est_warmup_s")], rows)))
    print(f"wrote {args.out}")
    return 0


# Each tower's stream on a GPU and its CPU smoke twin.
GPU_STREAMS = {
    "qwen2.5-vl-7b": dict(images_per_step=(1, 8), images_per_request=(1, 4), sides=(224, 1344)),
    "clip-l-336": dict(images_per_step=(1, 64), images_per_request=(1, 4)),
}
CPU_STREAMS = {
    "qwen2.5-vl-tiny": dict(steps=12, images_per_step=(1, 6), images_per_request=(1, 3), sides=(56, 224)),
    "clip-tiny": dict(steps=12, images_per_step=(1, 16), images_per_request=(1, 4)),
}


def build_parser() -> argparse.ArgumentParser:
    p = parser("stream", __doc__, *RUN_OPTIONS, "steps", "seed", steps=dict(help="steps in the stream "
                                                                               "(default 200 GPU, 12 CPU)"))
    p.add_argument("--encoder", action="append", help="tower preset (repeatable; default: both GPU streams)")
    p.add_argument("--images-per-step", type=int_range, help="LOW-HIGH images a step")
    p.add_argument("--images-per-request", type=int_range, help="LOW-HIGH images a request")
    p.add_argument("--sides", type=int_range, help="LOW-HIGH image side in px (variable-resolution towers)")
    p.add_argument("--hit-fraction", type=float, help="chance an image repeats a recent one (default 0.2)")
    p.add_argument("--buckets", type=list_of(positive_int_arg),
                   help="bucket sizes for impl vitkit (patches for Qwen, images otherwise)")
    p.add_argument("--impl", type=list_of(str), default=["vitkit", "vitkit-eager", "stock"],
                   help="comma-separated impls")
    p.add_argument("--cold-steps", type=int, default=40,
                   help="steps timed cold, in a fresh process on a GPU (default 40)")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[list[StreamSpec], StreamSettings]:
    device = resolve_device(args.device)
    gpu = on_gpu(device)
    settings = StreamSettings(device=device, dtype=args.dtype or default_dtype(device), impls=tuple(args.impl),
                              cold_steps=args.cold_steps, buckets=None if args.buckets is None else tuple(args.buckets),
                              kind="gpu" if gpu else "cpu-smoke")
    streams = GPU_STREAMS if gpu else CPU_STREAMS
    keys = ("steps", "images_per_step", "images_per_request", "sides", "hit_fraction")
    given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    return [StreamSpec(name, seed=args.seed, **streams.get(name, {}) | given)
            for name in args.encoder or list(streams)], settings


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        specs, settings = settings_from_args(args)
    except ValueError as err:
        p.error(str(err))
    for spec in specs:
        print(f"vitkit.bench stream: {spec.encoder}, {spec.steps} steps, impls {settings.impls} on {settings.device}",
              flush=True)
        results = run_stream(spec, settings, progress=not args.no_progress)
        name = f"stream-{spec.encoder}-{files.stamp()}.json"
        path = write_stream_results(results, out_folder(args.out, results) / name)
        print(f"wrote {path}")
        data = load_stream_results(path)
        if not args.no_plots:
            stream_figure(data).savefig(path.with_suffix(".png"), dpi=110)
            print(f"wrote {path.with_suffix('.png')}")
        print(format_stream_table(data), flush=True)
    return 0
