"""``python -m vitkit.bench crossover``: CUDA graphs against cross-request batching, by resolution.

The question of SGLang's ViT review (an H200, Qwen3-VL-8B): how much of the encoder's throughput comes
from the ViT CUDA graph and how much from batching images of several requests into one call, at 360p,
720p and 1080p? This job crosses {per-request, batched} x {eager, graphs} over images of those sizes
(640x360, 1280x720, 1920x1080 through each tower's own processor) and 1..8 images a step, one image a
request, on the attached card, for each tower asked (by default Qwen3-VL-8B and Qwen2.5-VL-7B).

"graphs" is impl ``vitkit`` (token buckets, compiled fused blocks, one CUDA graph per bucket: what a
server with encoder graphs runs); "eager" is ``vitkit-eager`` (the same fused blocks unpadded, no
compile, no graphs), the same weights. Per tower: a cold pass (one step of one image at each
resolution, before any warm-up: what a new server's first requests pay; in this process, so the
inductor's on-disk cache may shorten its compiles), then ``warmup()`` (every bucket captured), then per
resolution a stream of steps whose image count changes every step (each count ``repeats`` times in a
seeded order, after ``warmup_steps`` untimed ones, recorded too). Every step's images are new (all
misses) and run in all four settings back to back on the same images, the order alternating. CUDA
events time each ``embed_chunks`` step (bookkeeping included) and its encoder calls; pixels are on the
GPU already. Writes ``results/<card>/crossover-<stamp>.json``, a figure per tower and a table.

    python -m vitkit.bench crossover                                       # both towers, on the GPU
    python -m vitkit.bench crossover --device cpu --resolutions 128x72 --images 1-2   # CPU smoke, tiny towers
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm

from vitkit.bench.machine import (DTYPES, RUN_OPTIONS, EventTimedEncoder, check_dtype, default_dtype, free_memory,
                                  int_range, layout_batch, list_of, on_gpu, out_for, parser, provenance, resolve_device,
                                  roomy_cache, save_tower_figures, table, timed_step)
from vitkit.checks import non_negative_int, positive_int
from vitkit.costs import results as files
from vitkit.costs.results import Refused
from vitkit.embed import MODES
from vitkit.encoders import build_encoder, get_preset
from vitkit.item import MultimodalItem
from vitkit.processing import make_items

RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}  # label -> (width, height) px
IMPLS = {"eager": "vitkit-eager", "graphs": "vitkit"}  # the crossover's names -> encoder impls
GPU_PRESETS = ("qwen3-vl-8b", "qwen2.5-vl-7b")
CPU_PRESETS = ("qwen3-vl-tiny", "qwen2.5-vl-tiny")  # the CPU smoke run's twins


@dataclass(frozen=True)
class CrossoverSettings:
    """What the run measures and how: towers, resolutions (labels or ``WxH``), images a step (inclusive)."""

    device: str
    dtype: str
    presets: tuple[str, ...] = GPU_PRESETS
    resolutions: tuple[str, ...] = tuple(RESOLUTIONS)
    images: tuple[int, int] = (1, 8)
    repeats: int = 5  # timed steps per image count and resolution
    warmup_steps: int = 3  # untimed steps at the start of each resolution's stream
    seed: int = 0
    text_tokens: int = 8
    kind: str = "gpu"

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "crossover: dtype")
        positive_int("crossover: repeats", self.repeats)
        non_negative_int("crossover: warmup_steps", self.warmup_steps)
        for label in self.resolutions:
            resolution_size(label)
        for name in self.presets:
            if not get_preset(name).variable_resolution:
                raise ValueError(f"crossover: preset {name!r} has one fixed input size; resolutions need a "
                                 f"variable-resolution tower (e.g. {GPU_PRESETS})")

    def counts(self, seed: int) -> list[int]:
        """One resolution's stream: images per step, warm-up steps first, then each count ``repeats`` times."""
        rng = random.Random(seed)
        low, high = self.images
        timed = [n for n in range(low, high + 1) for _ in range(self.repeats)]
        rng.shuffle(timed)
        return [rng.randint(low, high) for _ in range(self.warmup_steps)] + timed


def resolution_size(label: str) -> tuple[int, int]:
    """(width, height) px of ``360p``/``720p``/``1080p`` or ``WxH``."""
    if label in RESOLUTIONS:
        return RESOLUTIONS[label]
    try:
        width, height = (int(v) for v in label.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {label!r}: expected one of {list(RESOLUTIONS)} or WxH in px") from None
    return positive_int(f"resolution {label!r} width", width), positive_int(f"resolution {label!r} height", height)


def resolution_label(label: str) -> str:
    """``label`` once ``resolution_size`` accepts it (an argparse type)."""
    resolution_size(label)
    return label


def processed(preset: str, label: str) -> dict[str, Any]:
    """A ``label`` image through the preset's processor: its patch grid and embedding rows."""
    width, height = resolution_size(label)
    item = make_items([Image.new("RGB", (width, height), (128, 128, 128))], preset)[0]
    grid = [int(v) for v in item.meta["image_grid_thw"]]  # as JSON keeps it
    return {"label": label, "width": width, "height": height, "grid": grid, "patches": int(np.prod(grid)),
            "rows": item.num_tokens}


def step_items(encoder: Any, size: Mapping[str, Any], count: int, seed: int) -> list[MultimodalItem]:
    """``count`` new images of ``size``'s grid, random pixels made on the device, hashed by name."""
    cfg = encoder.config
    width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
    gen = torch.Generator(device=encoder.device).manual_seed(seed)
    grid = tuple(size["grid"])
    return [MultimodalItem(torch.randn(size["patches"], width, generator=gen, device=encoder.device).to(encoder.dtype),
                           size["rows"], hash=f"crossover-{size['label']}-{seed}-{k}", meta={"image_grid_thw": grid})
            for k in range(count)]


def item_seed(settings: CrossoverSettings, resolution: int, step: int) -> int:
    """The pixels' seed of a step (-1: the cold pass's) of a resolution's stream: every step's images new."""
    return settings.seed * 1_000_003 + resolution * 10_007 + step + 1


def run_step(items: list[MultimodalItem], encoder: Any, mode: str, settings: CrossoverSettings) -> dict[str, Any]:
    """One ``embed_chunks`` step of one request per image on a fresh cache, timed by CUDA events."""
    batch = layout_batch([[item] for item in items], settings.text_tokens)
    timed, before = EventTimedEncoder(encoder, settings.device), encoder.stats.copy()
    result, watch = timed_step(batch, timed, roomy_cache(items, encoder), mode, settings.device)
    spent = encoder.stats - before
    return {"step_ms": watch.elapsed_ms(), "encoder_ms": timed.encoder_ms(), "encoder_calls": result.encoder_calls,
            "packs": spent.packs, "unbucketed": spent.unbucketed, "padded_rows": spent.padded_rows,
            "compiles": spent.compiles, "captures": spent.captures}


def cold_pass(encoders: Mapping[str, Any], sizes: Sequence[Mapping[str, Any]],
              settings: CrossoverSettings) -> list[dict[str, Any]]:
    """Per impl, a one-image step at each resolution before any warm-up: first-call costs (compiles, captures)."""
    if on_gpu(settings.device):  # CUDA context and cuBLAS up first: neither impl's first step pays them
        torch.ones(8, 8, device=settings.device) @ torch.ones(8, 8, device=settings.device)
    rows = []
    for impl, encoder in encoders.items():
        for r, size in enumerate(sizes):
            items = step_items(encoder, size, 1, item_seed(settings, r, -1))
            rows.append({"impl": impl, "resolution": size["label"], **run_step(items, encoder, "batched", settings)})
    return rows


def measure_tower(name: str, settings: CrossoverSettings, bar) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One tower: cold pass, warm-up, then each resolution's stream in the four settings; (tower, step rows)."""
    graphs = build_encoder(name, device=settings.device, dtype=DTYPES[settings.dtype], impl=IMPLS["graphs"],
                           seed=settings.seed)
    encoders = {"eager": graphs.variant(impl=IMPLS["eager"]), "graphs": graphs}
    sizes = [processed(name, label) for label in settings.resolutions]
    bar.set_postfix_str(f"{name} cold pass")
    cold = cold_pass(encoders, sizes, settings)
    bar.set_postfix_str(f"{name} warm-up")
    warmup = graphs.warmup(progress=not bar.disable)  # about a minute on a GPU: its own bar
    combos = [(impl, mode) for impl in IMPLS for mode in MODES]
    rows = []
    for r, size in enumerate(sizes):
        bar.set_postfix_str(f"{name} {size['label']}")
        for index, count in enumerate(settings.counts(settings.seed + r)):
            items = step_items(graphs, size, count, item_seed(settings, r, index))
            for impl, mode in combos if index % 2 == 0 else combos[::-1]:
                rows.append({"preset": name, "impl": impl, "mode": mode, "resolution": size["label"], "step": index,
                             "images": count, "timed": index >= settings.warmup_steps,
                             **run_step(items, encoders[impl], mode, settings)})
                bar.update()
            del items
    tower = {"preset": name, "hidden_size": graphs.hidden_size, "resolutions": sizes, "cold": cold,
             "warmup": asdict(warmup), "cuda_graphs": graphs.cuda_graphs, "compiled": graphs.compiled,
             "buckets": list(graphs.buckets.sizes)}
    del encoders, graphs
    free_memory(settings.device)
    return tower, rows


def run_crossover(settings: CrossoverSettings, *, progress: bool = True) -> dict[str, Any]:
    """Every tower in the four settings; the results object (``summary``: throughput; ``gains``)."""
    steps = sum(len(settings.counts(0)) for _ in settings.resolutions)
    bar = tqdm(total=len(settings.presets) * steps * len(IMPLS) * len(MODES), desc="crossover", unit="step",
               disable=not progress)
    towers, rows = [], []
    for name in settings.presets:
        tower, tower_rows = measure_tower(name, settings, bar)
        towers.append(tower)
        rows += tower_rows
    bar.close()
    summary = summarize(rows)
    return {"schema": files.schema("crossover"), **provenance(settings.device, settings.kind),
            "settings": asdict(settings), "towers": towers, "steps": rows, "summary": summary,
            "gains": gains(summary)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Throughput of the timed steps per tower, setting, resolution and images a step, and over all
    counts (``images_per_step`` "all": the stream's images over its time)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["timed"]:
            key = (row["preset"], row["impl"], row["mode"], row["resolution"])
            groups.setdefault((*key, row["images"]), []).append(row)
            groups.setdefault((*key, "all"), []).append(row)
    out = []
    for (preset, impl, mode, resolution, per_step), members in groups.items():
        images, total_ms = sum(m["images"] for m in members), sum(m["step_ms"] for m in members)
        out.append({"preset": preset, "impl": impl, "mode": mode, "resolution": resolution,
                    "images_per_step": per_step, "steps": len(members), "images": images, "total_ms": total_ms,
                    "images_per_s": images / total_ms * 1e3,
                    "step_ms_median": float(np.median([m["step_ms"] for m in members])),
                    "encoder_ms_median": float(np.median([m["encoder_ms"] for m in members]))})
    return out


def gains(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Relative throughput gains (0.29: 29% more images/s) per tower, resolution and images a step: of
    graphs over eager in each mode, of batching over per-request with each impl, and of both together."""
    rate = {(s["preset"], s["resolution"], s["images_per_step"], s["impl"], s["mode"]): s["images_per_s"]
            for s in summary}
    out = []
    for key in dict.fromkeys(k[:3] for k in rate):
        r = {(impl, mode): rate.get((*key, impl, mode)) for impl in IMPLS for mode in MODES}
        if None in r.values():
            continue
        out.append(dict(zip(("preset", "resolution", "images_per_step"), key)) | {
            "graphs_per_request": r["graphs", "per_request"] / r["eager", "per_request"] - 1,
            "graphs_batched": r["graphs", "batched"] / r["eager", "batched"] - 1,
            "batching_eager": r["eager", "batched"] / r["eager", "per_request"] - 1,
            "batching_graphs": r["graphs", "batched"] / r["graphs", "per_request"] - 1,
            "both": r["graphs", "batched"] / r["eager", "per_request"] - 1})
    return out


IMPL_COLOR = {"eager": "tab:orange", "graphs": "tab:blue"}
MODE_LINE = {"per_request": dict(linestyle="--", marker="s"), "batched": dict(linestyle="-", marker="o")}
GAIN_LINES = (  # gains' key, legend, table column, colour, line style
    ("graphs_per_request", "graphs, per-request", "graphs/req%", "tab:blue", "--"),
    ("graphs_batched", "graphs, batched", "graphs/bat%", "tab:blue", "-"),
    ("batching_eager", "batching, eager", "batch/eager%", "tab:orange", ":"),
    ("batching_graphs", "batching, graphs", "batch/graphs%", "tab:green", "-"))


def impl_label(results: Mapping[str, Any], preset: str, impl: str) -> str:
    """``impl`` as the legend says it: off CUDA the "graphs" setting is padded buckets only."""
    tower = next(t for t in results["towers"] if t["preset"] == preset)
    return "buckets, no graphs (CPU)" if impl == "graphs" and not tower["cuda_graphs"] else impl


def throughput(results: Mapping[str, Any], preset: str, resolution: str, impl: str,
               mode: str) -> list[tuple[int, float]]:
    """(images a step, images/s) of one setting, by image count."""
    return sorted((s["images_per_step"], s["images_per_s"]) for s in results["summary"]
                  if (s["preset"], s["resolution"], s["impl"], s["mode"]) == (preset, resolution, impl, mode)
                  and s["images_per_step"] != "all")


def stream_gains(results: Mapping[str, Any], preset: str, resolution: str) -> str:
    """The gains over a resolution's whole stream (all image counts), as a figure's note."""
    g = next(g for g in results["gains"] if (g["preset"], g["resolution"], g["images_per_step"]) == (
        preset, resolution, "all"))
    pct = {key: f"{100 * g[key]:+.0f}%" for key, *_ in GAIN_LINES}
    return (f"whole stream: graphs {pct['graphs_per_request']} per-request, {pct['graphs_batched']} batched\n"
            f"batching {pct['batching_eager']} eager, {pct['batching_graphs']} with graphs")


def crossover_figure(results: Mapping[str, Any], preset: str) -> Figure:
    """Images/s against images a step, one panel per resolution, a line per (impl, mode); below, the
    gains of graphs and of batching (%)."""
    tower = next((t for t in results["towers"] if t["preset"] == preset), None)
    if tower is None:
        raise ValueError(f"no tower {preset!r} in these results; towers: {[t['preset'] for t in results['towers']]}")
    sizes = tower["resolutions"]
    fig = Figure(figsize=(4.6 * len(sizes), 7.5), layout="constrained")
    axes = fig.subplots(2, len(sizes), squeeze=False, sharex=True)
    for col, size in enumerate(sizes):
        top, bottom = axes[0][col], axes[1][col]
        for impl in IMPLS:
            for mode in MODES:
                top.plot(*zip(*throughput(results, preset, size["label"], impl, mode)), color=IMPL_COLOR[impl],
                         label=f"{impl_label(results, preset, impl)}, {mode.replace('_', '-')}", **MODE_LINE[mode])
        pixels = f"{size['width']}x{size['height']} px"
        name = f"{size['label']} ({pixels})" if size["label"] in RESOLUTIONS else pixels
        # two lines: on one, three panels' titles run into each other
        top.set(title=f"{name}\n{size['grid'][1]}x{size['grid'][2]} patches, {size['rows']} rows an image",
                ylabel="throughput (images/s)")
        rows = sorted((g for g in results["gains"] if (g["preset"], g["resolution"]) == (preset, size["label"])
                       and g["images_per_step"] != "all"), key=lambda g: g["images_per_step"])
        for key, label, _, color, style in GAIN_LINES:
            bottom.plot([g["images_per_step"] for g in rows], [100 * g[key] for g in rows], color=color,
                        linestyle=style, marker=".", label=label)
        bottom.axhline(0, color="grey", linewidth=0.8)
        bottom.set_title(stream_gains(results, preset, size["label"]), fontsize=8)
        bottom.set(xlabel="images a step (one a request)", ylabel="throughput gain (%)",
                   xticks=range(results["settings"]["images"][0], results["settings"]["images"][1] + 1))
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    smoke = " [CPU SMOKE: not a GPU measurement]" if results.get("kind") == "cpu-smoke" else ""
    fig.suptitle(f"{preset}: CUDA graphs against batching — {results['machine']['device_name']} "
                 f"({results['settings']['dtype']}){smoke}")
    return fig


def format_table(results: Mapping[str, Any]) -> str:
    """Per tower and resolution over all image counts: the four settings' images/s and the gains; then
    cold passes and warm-ups."""
    rate = {(s["preset"], s["resolution"], s["impl"], s["mode"]): s["images_per_s"] for s in results["summary"]
            if s["images_per_step"] == "all"}
    rows = [g | {f"rate {impl} {mode}": rate[g["preset"], g["resolution"], impl, mode] for impl in IMPLS
                 for mode in MODES} for g in results["gains"] if g["images_per_step"] == "all"]
    rates = [(f"{impl}/{mode[:3]}", "10.1f", f"rate {impl} {mode}") for impl in IMPLS for mode in MODES]
    gained = [(column, f"{len(column)}.1f", lambda g, key=key: 100 * g[key]) for key, _, column, *_ in GAIN_LINES]
    lines = table([("tower", "<15.15", "preset"), ("res", "<9.9", "resolution"), *rates, *gained], rows, rule=True)
    lines.insert(0, "images/s over each resolution's stream (all image counts); gains in %")
    for tower in results["towers"]:
        cold = ", ".join(f"{c['impl']} {c['resolution']} {c['step_ms']:.0f} ms" for c in tower["cold"])
        w = tower["warmup"]
        lines.append(f"{tower['preset']}: cold first steps {cold}; warm-up {w['seconds']:.1f} s "
                     f"({w['captures']} captures, {w['compiles']} compiles)")
    lines.append(f"device={results['machine']['device_name']} kind={results['kind']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = parser("crossover", __doc__, *RUN_OPTIONS, "seed", "repeats", "warmup",
               repeats=dict(help="timed steps per image count and resolution (default 5; CPU 1)"),
               warmup=dict(dest="warmup_steps", help="untimed steps first in each resolution's stream "
                                                     "(default 3; CPU 1)"))
    p.add_argument("--preset", action="append", help=f"tower (repeatable; default {', '.join(GPU_PRESETS)}; "
                                                     f"--device cpu: {', '.join(CPU_PRESETS)})")
    p.add_argument("--resolutions", type=list_of(resolution_label),
                   help=f"comma-separated labels ({', '.join(RESOLUTIONS)}) or WxH px (default all three)")
    p.add_argument("--images", type=int_range, help="LOW-HIGH images a step (default 1-8)")
    return p


def settings_from_args(args: argparse.Namespace) -> CrossoverSettings:
    """The run's settings; ``Refused`` where this machine cannot run it (no GPU, a full tower on CPU)."""
    if args.device is None and not torch.cuda.is_available():
        raise Refused("it times CUDA graphs against eager runs on the attached GPU, and torch sees no CUDA device "
                      f"(torch {torch.__version__}). The code path alone runs on CPU with the tiny towers: "
                      "python -m vitkit.bench crossover --device cpu")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise Refused(str(err)) from None
    gpu = on_gpu(device)
    presets = tuple(args.preset or (GPU_PRESETS if gpu else CPU_PRESETS))
    full = [name for name in presets if not get_preset(name).tiny]
    if not gpu and full:
        raise Refused(f"on CPU only tiny towers run ({', '.join(CPU_PRESETS)}); {full} would take hours there "
                      f"and measure no graphs")
    dtype = args.dtype or default_dtype(device)
    if gpu and dtype == "fp32":
        raise ValueError("--dtype fp32: CUDA graphs of these towers need bf16 or fp16 (the varlen attention kernel)")
    given = {"resolutions": args.resolutions and tuple(args.resolutions), "images": args.images,
             "repeats": args.repeats, "warmup_steps": args.warmup_steps}
    defaults = {} if gpu else {"repeats": 1, "warmup_steps": 1}
    return CrossoverSettings(device=device, dtype=dtype, presets=presets, seed=args.seed,
                             kind="gpu" if gpu else "cpu-smoke",
                             **defaults | {k: v for k, v in given.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        settings = settings_from_args(args)
        out = out_for(args.out, settings.device, settings.kind)  # before the run, never after it
    except Refused as err:
        print(f"vitkit.bench crossover: refused: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        p.error(str(err))
    steps = len(settings.resolutions) * len(settings.counts(0))
    print(f"vitkit.bench crossover: {', '.join(settings.presets)} on {settings.device} ({settings.dtype}): "
          f"{steps} steps a tower x {len(IMPLS) * len(MODES)} settings, after a cold pass and a warm-up", flush=True)
    results = run_crossover(settings, progress=not args.no_progress)
    path = files.write("crossover", results, out / f"crossover-{files.stamp()}.json")
    print(f"wrote {path}")
    data = files.read("crossover", path)
    if not args.no_plots:
        save_tower_figures(path, data, settings.presets, crossover_figure)
    print(format_table(data), flush=True)
    return 0
