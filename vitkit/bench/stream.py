"""``python -m vitkit.bench stream``: a seeded stream of steps whose layout changes every step, as in
serving, through ``embed_chunks`` in every impl; ``buckets``: candidate bucket sets' padding on it.

Per impl: the first ``cold_steps`` steps before any warm-up (on a GPU in a fresh process: what a
new server pays), ``encoder.warmup()`` (with the large buckets the stream's document scans and video
frames meet), the stream in each mode on one cache kept across steps, and the steady state (the step
nearest the mean, repeated, all misses). Its own loop, not ``run_steps``: its steps are the seeded
stream's, not scheduled, each timed by CUDA events. Without a GPU: tiny towers.

``--stream mixed`` (images and videos) and ``--stream scans`` (2% document scans, run after its twin
without them) are issue 19's streams; the last table printed holds the ratios it sets targets on
(``stream_targets``), which the scan stream's JSON keeps under ``targets``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench.machine import (DTYPES, RUN_OPTIONS, EventTimedEncoder, check_dtype, default_dtype, free_memory,
                                  int_range, layout_batch, list_of, on_gpu, out_for, parser, positive_int_arg,
                                  provenance, resolve_device, roomy_cache, table, timed_step)
from vitkit.bench.rows import StreamRow, load_stream_results, write_stream_results
from vitkit.bench.stream_items import (CPU_NAMED_BUCKETS, CPU_STREAMS, GPU_STREAMS, NAMED_STREAMS, TWINS, StreamSpec,
                                       check_twin, generate_stream, make_stream_items, miss_units, named_stream,
                                       step_miss_units, stream_profile, tuples, with_twins)
from vitkit.checks import positive_int
from vitkit.costs import results as files
from vitkit.costs.encoder import BucketCost, fit_bucket_cost
from vitkit.embed import MODES
from vitkit.encoders import build_encoder, default_buckets
from vitkit.encoders.base import EncoderStats
from vitkit.encoders.buckets import Buckets, pack, padding_waste
from vitkit.encoders.fixed import FIXED_BUCKETS
from vitkit.encoders.presets import get_preset
from vitkit.encoders.qwen import QWEN_BUCKETS
from vitkit.item import MultimodalItem

# Which large buckets warm-up captures: "stream", exactly those the stream's items meet (the encoder holds
# only those, and each item picks the bucket it would from the whole set); "all", every one
# (``warmup(large=True)``: a server that cannot know its stream); "none", each on its first use (the
# captures then count in the stream's rows).
LARGE_WARMUPS = ("stream", "all", "none")


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
    large_buckets: tuple[int, ...] | None = None  # override the tower's large bucket sizes (() none)
    large_warmup: str = "stream"  # see LARGE_WARMUPS

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "stream: dtype")
        for name in ("cold_steps", "steady_repeats"):
            positive_int(f"stream: {name}", getattr(self, name))
        if not self.impls:
            raise ValueError("stream: impls is empty")
        if self.large_warmup not in LARGE_WARMUPS:
            raise ValueError(f"stream: large_warmup must be one of {LARGE_WARMUPS}, got {self.large_warmup!r}")


def stream_buckets(spec: StreamSpec, settings: StreamSettings, items: Iterable[MultimodalItem]) -> Buckets:
    """Impl vitkit's bucket set on the stream of ``items``: the tower's default with ``settings``' sizes and
    large sizes; under ``large_warmup="stream"`` only the large sizes the items meet."""
    default = default_buckets(spec.encoder)
    sizes = default.sizes if settings.buckets is None else tuple(settings.buckets)
    # The default large sizes above the largest given size (a large size must exceed every regular one).
    large = (tuple(s for s in default.large if s > sizes[-1]) if settings.large_buckets is None
             else tuple(settings.large_buckets))
    buckets = Buckets(sizes, default.max_items, default.multiple, large=large)
    if settings.large_warmup == "stream":
        buckets = replace(buckets, large=large_buckets_met(spec.encoder, buckets, items))
    return buckets


def large_buckets_met(encoder: str, buckets: Buckets, items: Iterable[MultimodalItem]) -> tuple[int, ...]:
    """The large sizes of ``buckets`` that ``items`` run in, asked of the tower itself (a shape-only copy
    on the meta device): each item's pieces (a video's frame groups), and the large bucket of each piece
    over the largest regular one, as ``VisionEncoder._run_pack`` picks it."""
    if not buckets.large:
        return ()
    probe = build_encoder(encoder, device="meta", impl="vitkit", buckets=buckets)
    met = set()
    for k, item in enumerate(items):
        for piece in probe.split_for_buckets(k, item, probe.item_units(k, item)):
            units = probe.item_units(k, piece)
            if units > buckets.largest and probe.item_sequences(k, piece) <= buckets.max_items:
                met.add(buckets.pick_large(units))
    return tuple(sorted(met - {None}))


def _build(spec: StreamSpec, settings: StreamSettings, impl: str, items: Iterable[MultimodalItem]):
    buckets = stream_buckets(spec, settings, items) if impl == "vitkit" else None
    return build_encoder(spec.encoder, device=settings.device, dtype=DTYPES[settings.dtype], impl=impl,
                         buckets=buckets, seed=spec.seed)


def _batches(spec: StreamSpec, settings: StreamSettings, steps: int | None = None):
    """The stream's items and, per step, its index and batch (one window over each whole prompt); the first
    ``steps`` steps only when given (their items are the whole stream's first, the same features)."""
    stream = generate_stream(spec)[:steps]
    items = make_stream_items(spec, stream, settings.device)
    return items, [(s.index, layout_batch(([items[it.key] for it in r] for r in s.requests), settings.text_tokens,
                                          name=f"s{s.index}r")) for s in stream]


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


def summarize_stream(rows: Sequence[StreamRow], warmup_s: float, stats: EncoderStats | None = None) -> dict[str, Any]:
    """One impl and mode over the stream: throughput, step latency percentiles, counters, waste; ``stats``,
    the encoder's counters over the same steps (packs, large packs, split items, real and padded rows)."""
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
        **({} if stats is None else {"encoder_stats": asdict(stats)}),
    }


def _steady(batches, encoder, items, device: str, repeats: int) -> dict[str, Any]:
    """The step nearest the mean (in its distinct items' rows), repeated with every item a miss."""
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
    spec, settings = StreamSpec.from_dict(json.loads(argv[0])), StreamSettings(**tuples(json.loads(argv[1])))
    items, batches = _batches(spec, settings, settings.cold_steps)
    encoder = _build(spec, settings, argv[2], items.values())
    rows = _run_steps(batches, encoder, items, "batched", settings, argv[2])
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


def run_stream(spec: StreamSpec, settings: StreamSettings, *, progress: bool = True,
               twin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every impl over the stream (``_run_impl``); ``twin``: the results of the stream this one is measured
    against (the same stream without scans, ``stream_items.TWINS``), for ``stream_targets``."""
    if twin is not None:
        check_twin(spec, StreamSpec.from_dict(twin["settings"]["stream"]))
    fresh = on_gpu(settings.device) if settings.cold_in_subprocess is None else settings.cold_in_subprocess
    items, batches = _batches(spec, settings)
    total = len(settings.impls) * (min(settings.cold_steps, len(batches)) + len(MODES) * len(batches))
    bar = tqdm(total=total, desc=f"stream {spec.name or spec.encoder}", unit="step", disable=not progress)
    out: dict[str, list] = {"warmups": [], "summaries": [], "steady": [], "steps": [], "cold": []}
    for impl in settings.impls:
        _run_impl(spec, settings, impl, items, batches, fresh, out, bar)
        free_memory(settings.device)
    bar.close()
    by_key = {(s["impl"], s["mode"]): s for s in out["summaries"]}
    for s in out["summaries"]:  # batched over per-request on the stream (total time)
        other = by_key.get((s["impl"], "per_request"))
        s["batched_speedup"] = other["total_s"] / s["total_s"] if s["mode"] == "batched" and other else None
    results = {"schema": files.schema("stream"), **provenance(settings.device, settings.kind),
               "settings": asdict(settings) | {"stream": asdict(spec)},
               "stream_items": stream_profile(spec, generate_stream(spec)), **out}
    return results | {"targets": stream_targets(results, twin)}


def _run_impl(spec: StreamSpec, settings: StreamSettings, impl: str, items, batches, fresh: bool,
              out: dict[str, list], bar) -> None:
    """One impl: the cold pass, warm-up, the stream in each mode, the steady state; appended to ``out``."""
    encoder = _build(spec, settings, impl, items.values())
    tag = {"encoder": spec.encoder, "impl": impl}
    if fresh:
        cold_pass = _cold_in_subprocess(spec, settings, impl)
        bar.update(len(cold_pass))
    else:
        cold_pass = _run_steps(batches[: settings.cold_steps], encoder, items, "batched", settings, impl, bar)
    report = encoder.warmup(progress=not bar.disable, large=settings.large_warmup != "none")
    large = list(encoder.buckets.large) if encoder.buckets else []
    out["warmups"].append(tag | asdict(report) | {"large_warmup": settings.large_warmup, "large_buckets": large})
    for mode in MODES:
        before = encoder.stats.copy()
        rows = _run_steps(batches, encoder, items, mode, settings, impl, bar)
        out["steps"] += rows
        out["summaries"].append(tag | {"mode": mode} | summarize_stream(rows, report.seconds, encoder.stats - before))
        if mode == "batched":
            out["cold"].append(tag | {
                "steps": len(cold_pass), "cold_s": sum(r.step_ms for r in cold_pass) / 1e3,
                "warm_s": sum(r.step_ms for r in rows[: len(cold_pass)]) / 1e3,
                "cold_compiles": sum(r.compiles for r in cold_pass),
                "cold_captures": sum(r.captures for r in cold_pass),
                "fresh_process": fresh, "step_ms": [r.step_ms for r in cold_pass]})
    out["steady"].append(tag | _steady(batches, encoder, items, settings.device, settings.steady_repeats))


# Issue 19's targets (minimums), on the stream with scans, batched, impl vitkit: its rows/s at least 0.9x its
# twin's without scans (within 10%), and at least 1.8x the eager impl's on the same stream.
TWIN_TARGET = 0.9
BUCKETED_TARGET = 1.8


def stream_targets(results: Mapping[str, Any], twin: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ratios issue 19 sets targets on, of one stream's results: rows/s of the bucketed impl (vitkit) over
    the eager one (vitkit-eager) per mode, and given ``twin`` (the same stream's results without scans) each
    impl and mode's rows/s over the twin's. Each names what it is compared against and, where the issue sets
    one, its target (``target_min``) and whether it is met (judged on a GPU run only: None otherwise)."""
    spec = results["settings"]["stream"]
    judged = results.get("kind") == "gpu"
    name = spec.get("name") or spec["encoder"]
    scans = spec.get("scan_fraction", 0) > 0
    mine = {(s["impl"], s["mode"]): s for s in results["summaries"]}
    out = []
    for mode in MODES:
        bucketed, eager = mine.get(("vitkit", mode)), mine.get(("vitkit-eager", mode))
        if bucketed and eager:
            goal = BUCKETED_TARGET if scans and mode == "batched" else None
            out.append(_ratio(name, "bucketed / eager rows/s", "vitkit", mode, bucketed, eager,
                              f"vitkit-eager {mode} on the same stream", goal, judged))
    if twin is not None:
        twin_name = twin["settings"]["stream"].get("name") or "its twin"
        theirs = {(s["impl"], s["mode"]): s for s in twin["summaries"]}
        for (impl, mode), s in mine.items():
            if (impl, mode) in theirs:
                goal = TWIN_TARGET if scans and (impl, mode) == ("vitkit", "batched") else None
                out.append(_ratio(name, f"rows/s / {twin_name}'s", impl, mode, s, theirs[impl, mode],
                                  f"{impl} {mode} on stream {twin_name!r} (same seed, no scans, "
                                  f"measured {twin['created']})", goal, judged))
    return out


def _ratio(stream: str, ratio: str, impl: str, mode: str, this: Mapping[str, Any], other: Mapping[str, Any],
           against: str, target: float | None, judged: bool) -> dict[str, Any]:
    value = this["rows_per_s"] / other["rows_per_s"] if other["rows_per_s"] else None
    met = value >= target if judged and target is not None and value is not None else None
    return {"stream": stream, "ratio": ratio, "impl": impl, "mode": mode, "value": value, "against": against,
            "target_min": target, "met": met}


def format_targets(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per ratio: its value, the target it is held to ("-": none set) and what it is compared against."""
    return table([("stream", "<10", "stream"), ("ratio", "<24", "ratio"), ("impl", "<12", "impl"),
                  ("mode", "<11", "mode"), ("value", ">6", lambda t: _times(t["value"])),
                  ("target", ">7", lambda t: f">={t['target_min']}x" if t["target_min"] else None),
                  ("met", ">4", lambda t: None if t["met"] is None else "yes" if t["met"] else "NO"),
                  ("against", "<", "against")], targets, rule=True)


def _times(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


def format_stream_table(results: Mapping[str, Any]) -> str:
    """One line per encoder, impl and mode, then cold starts, steady state and the targets' ratios."""
    def stat(key):
        return lambda s: (s.get("encoder_stats") or {}).get(key)

    lines = table([("encoder", "<15.15", "encoder"), ("impl", "<12", "impl"), ("mode", "<11", "mode"),
                   ("warmup s", "8.1f", "warmup_s"), ("img/s", "8.1f", "images_per_s"),
                   ("rows/s", "9.0f", "rows_per_s"), ("p50 ms", "8.2f", "step_ms_p50"),
                   ("p99 ms", "8.2f", "step_ms_p99"), ("compiles", "8d", "compiles"), ("captures", "8d", "captures"),
                   ("waste%", "6.1f", lambda s: 100 * s["padding_waste"]), ("large", "5d", stat("large")),
                   ("split", "5d", stat("split_items")),
                   ("speedup", ">7", lambda s: f"{s['batched_speedup']:.2f}x" if s.get("batched_speedup") else None)],
                  results["summaries"], rule=True)
    for c in results["cold"]:
        lines.append(f"cold start {c['encoder']} {c['impl']}: first {c['steps']} steps {c['cold_s']:.1f} s cold "
                     f"({c['cold_compiles']} compiles, {c['cold_captures']} captures) vs {c['warm_s']:.2f} s warm")
    for s in results["steady"]:
        lines.append(f"steady state {s['encoder']} {s['impl']}: step {s['step']} ({s['images']} images, "
                     f"{s['encoded_rows']} rows; stream mean {s['mean_step_rows']:.0f}) {s['step_ms_median']:.2f} ms, "
                     f"{s['images_per_s']:.1f} img/s, {s['rows_per_s']:.0f} rows/s")
    if "stream_items" in results:
        lines.append("distinct items: " + ", ".join(f"{p['items']} {kind}s ({p['rows']} rows)"
                                                   for kind, p in results["stream_items"].items() if p["items"]))
    lines.append(f"device={results['machine']['device_name']}")
    if results.get("targets"):
        lines += format_targets(results["targets"])
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
    extra = "".join(f", {100 * spec[f'{kind}_fraction']:g}% {kind}s" for kind in ("video", "scan")
                    if spec.get(f"{kind}_fraction"))
    fig.suptitle(f"{spec['encoder']} {spec.get('name') or 'stream'}: {spec['steps']} steps of "
                 f"{spec['images_per_step'][0]}-{spec['images_per_step'][1]} items{extra} — "
                 f"{results['machine']['device_name']} ({results['kind']})")
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
    """Median warm-up seconds per regular bucket of each tower, from the stream files in ``folder`` (newest wins)."""
    out = {}
    for path in reversed(files.newest_first("stream", folder)):
        for w in files.read("stream", path).get("warmups", []):
            large = set(w.get("large_buckets", ()))  # a large graph's seconds would lift the regular median
            secs = sorted(s for b, s in w.get("bucket_seconds") or () if b not in large)
            if w["impl"] == "vitkit" and secs:
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


SPEC_OPTIONS = ("steps", "images_per_step", "images_per_request", "sides", "hit_fraction", "video_fraction",
                "video_frames", "scan_fraction", "scan_sides")  # options that change the stream's spec
TARGET_IMPLS = ("vitkit", "vitkit-eager")  # a named stream's default impls: the two its targets compare


def build_parser() -> argparse.ArgumentParser:
    p = parser("stream", __doc__, *RUN_OPTIONS, "steps", "seed", steps=dict(help="steps in the stream "
                                                                               "(default 200 GPU, 12 CPU)"))
    p.add_argument("--encoder", action="append", help="tower preset (repeatable; default: both GPU streams)")
    p.add_argument("--stream", type=list_of(str), help=f"named streams, comma-separated: {', '.join(NAMED_STREAMS)} "
                   f"(each after its twin: {', '.join(f'{k} after {v}' for k, v in TWINS.items())}); they set "
                   f"the encoder, impls {','.join(TARGET_IMPLS)} unless --impl")
    p.add_argument("--images-per-step", type=int_range, help="LOW-HIGH items a step")
    p.add_argument("--images-per-request", type=int_range, help="LOW-HIGH items a request")
    p.add_argument("--sides", type=int_range, help="LOW-HIGH image side in px (variable-resolution towers)")
    p.add_argument("--hit-fraction", type=float, help="chance an item repeats a recent one (default 0.2)")
    p.add_argument("--video-fraction", type=float, help="chance a new item is a video (default 0)")
    p.add_argument("--video-frames", type=int_range, help="LOW-HIGH frames a video (default 16-64)")
    p.add_argument("--scan-fraction", type=float, help="chance a new item is a document scan (default 0)")
    p.add_argument("--scan-sides", type=int_range, help="LOW-HIGH scan side in px (default 2000-2000)")
    p.add_argument("--buckets", type=list_of(positive_int_arg),
                   help="bucket sizes for impl vitkit (patches for Qwen, images otherwise)")
    p.add_argument("--large-buckets", type=list_of(positive_int_arg),
                   help="large bucket sizes for impl vitkit, one oversize image each (patches)")
    p.add_argument("--large-warmup", choices=LARGE_WARMUPS, default="stream",
                   help="large buckets warm-up captures: those the stream meets (default), all, none")
    p.add_argument("--impl", type=list_of(str), help="comma-separated impls (default vitkit,vitkit-eager,stock)")
    p.add_argument("--cold-steps", type=int, default=40,
                   help="steps timed cold, in a fresh process on a GPU (default 40)")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[list[StreamSpec], StreamSettings]:
    """The specs to run, in order (a named stream after its twin), and the settings they share."""
    device = resolve_device(args.device)
    gpu = on_gpu(device)
    named = getattr(args, "stream", None)
    if named and args.encoder:
        raise ValueError("--stream and --encoder: a named stream sets its own encoder")
    sizes, large = args.buckets, getattr(args, "large_buckets", None)
    if named and not gpu and sizes is None and large is None:
        sizes, large = CPU_NAMED_BUCKETS  # the tiny tower's scans and video frames oversize, as on a GPU
    impls = args.impl or (TARGET_IMPLS if named else ("vitkit", "vitkit-eager", "stock"))
    settings = StreamSettings(device=device, dtype=args.dtype or default_dtype(device), impls=tuple(impls),
                              cold_steps=args.cold_steps, buckets=None if sizes is None else tuple(sizes),
                              large_buckets=None if large is None else tuple(large),
                              large_warmup=getattr(args, "large_warmup", "stream"), kind="gpu" if gpu else "cpu-smoke")
    given = {k: getattr(args, k) for k in SPEC_OPTIONS if getattr(args, k, None) is not None}
    if named:
        specs = [named_stream(name, gpu, seed=args.seed, **given) for name in with_twins(named)]
        by_name = {spec.name: spec for spec in specs}
        for spec in specs:  # before anything runs: a stream and its twin must differ in their scans alone
            if spec.name in TWINS:
                check_twin(spec, by_name[TWINS[spec.name]])
        return specs, settings
    streams = GPU_STREAMS if gpu else CPU_STREAMS
    return [StreamSpec(name, seed=args.seed, **streams.get(name, {}) | given)
            for name in args.encoder or list(streams)], settings


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        specs, settings = settings_from_args(args)
    except ValueError as err:
        p.error(str(err))
    try:
        out = out_for(args.out, settings.device, settings.kind)  # before the run, never after it
    except files.Refused as err:
        print(f"vitkit.bench stream: refused: {err}", file=sys.stderr)
        return 2
    done: dict[str, dict[str, Any]] = {}  # named stream -> its results, for the twins' comparisons
    targets = []
    for spec in specs:
        print(f"vitkit.bench stream: {spec.name or 'stream'} of {spec.encoder}, {spec.steps} steps, impls "
              f"{settings.impls} on {settings.device}", flush=True)
        results = run_stream(spec, settings, progress=not args.no_progress, twin=done.get(TWINS.get(spec.name)))
        # A named stream's file leads with its name: "stream-<encoder>-*" stays the plain streams' (cost fits).
        name = f"stream-{spec.name + '-' if spec.name else ''}{spec.encoder}-{files.stamp()}.json"
        path = write_stream_results(results, out / name)
        print(f"wrote {path}")
        data = load_stream_results(path)
        if not args.no_plots:
            stream_figure(data).savefig(path.with_suffix(".png"), dpi=110)
            print(f"wrote {path.with_suffix('.png')}")
        print(format_stream_table(data), flush=True)
        done[spec.name] = data
        targets += data.get("targets", [])
    if len(specs) > 1 and targets:  # the ratios of every stream, last
        print("\n".join(["", "targets (issue 19):", *format_targets(targets)]), flush=True)
    return 0
