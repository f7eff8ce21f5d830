"""Run a stream (``vitkit.bench.stream``) through ``embed_chunks``: the regime serving lives in.

Per encoder implementation, in this order, on one set of items:
1. cold: the first ``cold_steps`` steps in batched mode before any warm-up, each step timed, in
   a fresh process with empty compile caches (``vitkit.bench.stream_cold``) on a GPU: what a new
   server pays (compiles, captures, first kernels);
2. ``encoder.warmup()`` (every bucket compiled and captured, timed; cold too, since the cold
   pass ran in another process with caches of its own);
3. the whole stream in each mode, each with a fresh cache that persists across the stream's
   steps (repeats hit it), every step timed with CUDA events around ``embed_chunks`` and the
   encoder's calls; the encoder's counters give compiles, captures and padding during the stream;
4. steady state: the stream step nearest the mean encoded rows, repeated on the same shape with
   all misses (the best case the sweeps measure), so the stream can be read against it.

Results file schema ``vitkit.stream/1``: top-level like ``vitkit.bench/1`` (schema, kind, created,
machine, versions, settings) plus ``warmups``, ``summaries`` (one per impl and mode),
``steady`` and ``steps`` (one row per step, impl and mode: ``encoder, impl, mode, step, images,
requests, encoder_calls, encoded_items, encoded_rows, padded_rows, cache_hits, encoder_ms,
step_ms``). Times in ms, rates per second, rows are embedding rows.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vitkit.bench.machine import machine_info, versions
from vitkit.bench.stream import StreamSpec, generate_stream, make_stream_items, step_requests
from vitkit.bench.run import DTYPES
from vitkit.bench.timing import EventTimedEncoder, Stopwatch, synchronize
from vitkit.cache import EmbeddingCache, embedding_row_bytes
from vitkit.checks import positive_int
from vitkit.embed import MODES, embed_chunks
from vitkit.encoders import build_encoder, default_buckets
from vitkit.encoders.buckets import Buckets
from vitkit.item import MultimodalItem
from vitkit.span import Span

SCHEMA = "vitkit.stream/1"


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
        if self.dtype not in DTYPES:
            raise ValueError(f"stream: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
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


def _cache(items: dict[int, MultimodalItem], encoder) -> EmbeddingCache:
    # Room for every image of the stream: the stream measures batching, not eviction.
    row_bytes = embedding_row_bytes(encoder.hidden_size, encoder.dtype)
    return EmbeddingCache(row_bytes * sum(item.num_tokens for item in items.values()) + 1)


def _run_steps(batches, encoder, timed: EventTimedEncoder, cache: EmbeddingCache, mode: str, device: str,
               bar=None) -> list[dict]:
    """Run each step's batch through ``embed_chunks`` and time it; one row per step."""
    rows = []
    for index, batch in batches:
        before = encoder.stats.copy()
        timed.reset()
        synchronize(device)
        watch = Stopwatch(device)
        watch.start()
        result = embed_chunks(batch, timed, cache, mode=mode, check_finite=False)  # timed: no extra sync
        watch.stop()
        spent = encoder.stats - before
        rows.append({
            "step": index, "images": sum(len(r.items) for r, _ in batch), "requests": len(batch),
            "encoder_calls": result.encoder_calls, "encoded_items": result.encoded_items,
            "encoded_rows": result.encoded_tokens, "padded_rows": spent.padded_rows, "cache_hits": result.cache_hits,
            "unbucketed": spent.unbucketed, "compiles": spent.compiles, "captures": spent.captures,
            "step_ms": watch.elapsed_ms(), "encoder_ms": timed.encoder_ms(),
        })
        del result
        if bar is not None:
            bar.update()
    return rows


def summarize_stream(rows: Sequence[dict], warmup_s: float) -> dict[str, Any]:
    """One impl and mode over the stream: throughput, step latency percentiles, counters, waste."""
    total_s = sum(r["step_ms"] for r in rows) / 1e3
    step_ms = np.array([r["step_ms"] for r in rows])
    real = sum(r["encoded_rows"] for r in rows)
    padded = sum(r["padded_rows"] for r in rows)
    return {
        "steps": len(rows), "images": sum(r["images"] for r in rows), "encoded_rows": real,
        "total_s": total_s, "images_per_s": sum(r["images"] for r in rows) / total_s,
        "rows_per_s": real / total_s, "step_ms_p50": float(np.percentile(step_ms, 50)),
        "step_ms_p99": float(np.percentile(step_ms, 99)), "step_ms_mean": float(step_ms.mean()),
        "encoder_ms_total": sum(r["encoder_ms"] for r in rows),
        "compiles": sum(r["compiles"] for r in rows), "captures": sum(r["captures"] for r in rows),
        "unbucketed": sum(r["unbucketed"] for r in rows), "padded_rows": padded,
        "padding_waste": padded / real if real else 0.0, "warmup_s": warmup_s,
    }


def _steady(batches, encoder, items, device: str, repeats: int) -> dict[str, Any]:
    """The stream step nearest the mean step (in its distinct images' rows), repeated on one shape
    with every image a miss: the steady state a sweep point measures."""
    def rows_of(batch):
        return sum({item.hash: item.num_tokens for r, _ in batch for item in r.items}.values())

    mean = float(np.mean([rows_of(b) for _, b in batches]))
    index, batch = min(batches, key=lambda ib: abs(rows_of(ib[1]) - mean))
    samples = []
    for k in range(repeats + 2):
        cache = _cache(items, encoder)
        synchronize(device)
        watch = Stopwatch(device)
        watch.start()
        embed_chunks(batch, encoder, cache, mode="batched", check_finite=False)
        watch.stop()
        if k >= 2:
            samples.append(watch.elapsed_ms())
    ms = float(np.median(samples))
    images = sum(len(r.items) for r, _ in batch)
    return {"step": index, "images": images, "encoded_rows": rows_of(batch), "mean_step_rows": mean,
            "step_ms_median": ms, "images_per_s": images / ms * 1e3, "rows_per_s": rows_of(batch) / ms * 1e3}


def _batches(spec: StreamSpec, settings: StreamSettings):
    steps = generate_stream(spec)
    items = make_stream_items(spec, steps, settings.device)
    return items, [(s.index, [(r, Span(0, r.prompt_len)) for r in step_requests(s, items, settings.text_tokens)])
                   for s in steps]


def cold_rows(spec: StreamSpec, settings: StreamSettings, impl: str) -> list[dict]:
    """The first ``cold_steps`` steps, batched, on a new encoder with nothing warmed up."""
    items, batches = _batches(spec, settings)
    encoder = _build(spec, settings, impl)
    timed = EventTimedEncoder(encoder, settings.device)
    return _run_steps(batches[: settings.cold_steps], encoder, timed, _cache(items, encoder), "batched",
                      settings.device)


def _cold_in_subprocess(spec: StreamSpec, settings: StreamSettings, impl: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="vitkit-cold-") as tmp:
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        args = [sys.executable, "-m", "vitkit.bench.stream_cold", json.dumps(asdict(spec)),
                json.dumps(asdict(settings)), impl]
        done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cold pass of {spec.encoder} {impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_stream(spec: StreamSpec, settings: StreamSettings, *, progress: bool = True) -> dict[str, Any]:
    """Measure ``spec``'s stream for every impl in ``settings``; returns the results object."""
    subprocess_cold = settings.cold_in_subprocess
    if subprocess_cold is None:
        subprocess_cold = torch.device(settings.device).type == "cuda"
    items, batches = _batches(spec, settings)
    cold = batches[: settings.cold_steps]
    total = len(settings.impls) * (len(cold) + len(MODES) * len(batches))
    bar = tqdm(total=total, desc=f"stream {spec.encoder}", unit="step", disable=not progress)
    out: dict[str, list] = {"warmups": [], "summaries": [], "steady": [], "steps": [], "cold": []}
    for impl in settings.impls:
        encoder = _build(spec, settings, impl)
        timed = EventTimedEncoder(encoder, settings.device)
        tag = {"encoder": spec.encoder, "impl": impl}
        if subprocess_cold:
            cold_pass = _cold_in_subprocess(spec, settings, impl)
            bar.update(len(cold_pass))
        else:
            cold_pass = _run_steps(cold, encoder, timed, _cache(items, encoder), "batched", settings.device, bar)
        report = encoder.warmup(progress=progress)
        out["warmups"].append(tag | asdict(report))
        for mode in MODES:
            rows = _run_steps(batches, encoder, timed, _cache(items, encoder), mode, settings.device, bar)
            out["steps"] += [tag | {"mode": mode} | r for r in rows]
            out["summaries"].append(tag | {"mode": mode} | summarize_stream(rows, report.seconds))
            if mode == "batched":
                warm = sum(r["step_ms"] for r in rows[: len(cold_pass)]) / 1e3
                out["cold"].append(tag | {"steps": len(cold_pass), "cold_s": sum(r["step_ms"] for r in cold_pass) / 1e3,
                                          "warm_s": warm, "cold_compiles": sum(r["compiles"] for r in cold_pass),
                                          "cold_captures": sum(r["captures"] for r in cold_pass),
                                          "fresh_process": subprocess_cold, "step_ms": [r["step_ms"] for r in cold_pass]})
        out["steady"].append(tag | _steady(batches, encoder, items, settings.device, settings.steady_repeats))
        del encoder, timed
        gc.collect()
        if torch.device(settings.device).type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    _add_speedups(out["summaries"])
    return {
        "schema": SCHEMA, "kind": settings.kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(settings.device), "versions": versions(),
        "settings": asdict(settings) | {"stream": asdict(spec)}, **out,
    }


def _add_speedups(summaries: list[dict]) -> None:
    """Batched over per-request on the stream (total time), per encoder and impl."""
    by_key = {(s["encoder"], s["impl"], s["mode"]): s for s in summaries}
    for s in summaries:
        other = by_key.get((s["encoder"], s["impl"], "per_request"))
        s["batched_speedup"] = other["total_s"] / s["total_s"] if s["mode"] == "batched" and other else None


def validate_stream_results(results: dict[str, Any]) -> None:
    """Raise ValueError naming what is missing from a ``vitkit.stream/1`` object."""
    if results.get("schema") != SCHEMA:
        raise ValueError(f"stream results: schema must be {SCHEMA!r}, got {results.get('schema')!r}")
    for key in ("kind", "machine", "versions", "settings", "warmups", "summaries", "steady", "steps", "cold"):
        if key not in results:
            raise ValueError(f"stream results: missing top-level field {key!r}")
    needed = ("encoder", "impl", "mode", "encoder_calls", "encoded_items", "encoded_rows", "padded_rows",
              "encoder_ms", "step_ms")
    for k, row in enumerate(results["steps"]):
        missing = [f for f in needed if f not in row]
        if missing:
            raise ValueError(f"stream results: step row {k} lacks {missing}")


def write_stream_results(results: dict[str, Any], path: str | Path) -> Path:
    validate_stream_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return path


def load_stream_results(path: str | Path) -> dict[str, Any]:
    results = json.loads(Path(path).read_text())
    try:
        validate_stream_results(results)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return results


def format_stream_table(results: dict[str, Any]) -> str:
    """A short table: one line per encoder, impl and mode, then cold starts and steady state."""
    head = (f"{'encoder':<15} {'impl':<12} {'mode':<11} {'warmup s':>8} {'img/s':>8} {'rows/s':>9} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'compiles':>8} {'captures':>8} {'waste%':>6} {'speedup':>7}")
    lines = [head, "-" * len(head)]
    for s in results["summaries"]:
        speed = f"{s['batched_speedup']:.2f}x" if s.get("batched_speedup") else "-"
        lines.append(f"{s['encoder']:<15.15} {s['impl']:<12} {s['mode']:<11} {s['warmup_s']:8.1f} {s['images_per_s']:8.1f} "
                     f"{s['rows_per_s']:9.0f} {s['step_ms_p50']:8.2f} {s['step_ms_p99']:8.2f} {s['compiles']:8d} "
                     f"{s['captures']:8d} {100 * s['padding_waste']:6.1f} {speed:>7}")
    for c in results["cold"]:
        lines.append(f"cold start {c['encoder']} {c['impl']}: first {c['steps']} steps {c['cold_s']:.1f} s cold "
                     f"({c['cold_compiles']} compiles, {c['cold_captures']} captures) vs {c['warm_s']:.2f} s warm")
    for s in results["steady"]:
        lines.append(f"steady state {s['encoder']} {s['impl']}: step {s['step']} ({s['images']} images, "
                     f"{s['encoded_rows']} rows; stream mean {s['mean_step_rows']:.0f}) {s['step_ms_median']:.2f} ms, "
                     f"{s['images_per_s']:.1f} img/s, {s['rows_per_s']:.0f} rows/s")
    lines.append(f"device={results['machine']['device_name']}")
    return "\n".join(lines)
