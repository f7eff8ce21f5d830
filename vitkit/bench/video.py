"""``python -m vitkit.bench video``: video encoding on the attached card, whole videos against frame groups
(its figure and table: ``vitkit.bench.video_report``).

Issue 19's GPU measurements: throughput (frames/s, embedding rows/s) and peak encoder memory against frames
(16 to 512) and frame size (360p, 720p, 448x448: the memory target is a 512-frame 448x448 video), for the
Qwen2.5-VL-7B tower (``--towers qwen3-vl-8b`` for Qwen3-VL's), along three paths:

- ``whole-eager``: the whole video as one item, unpadded and eager (impl ``vitkit-eager``), the way the
  engines run it (vLLM and SGLang encode a video whole in one forward): its memory grows with frames;
- ``whole-bucketed``: the whole video through vitkit's bucketed encoder, which splits it at frame-group
  boundaries into packs of at most the largest bucket (``split_for_buckets``), in one call;
- ``frame-groups``: the video as frame-group items (``video_items="frame-groups:g"``, g temporal patches an
  item, by default ``vitkit.sim.policies``' g) in calls of at most the largest bucket's rows (vitkit's policy).

and, on a second grid, several requests' videos a step (1, 2, 4 videos of 16 frames) in one call (``batched``)
against one call per request (``per_request``). Every step is one ``embed_chunks`` step over whole prompts on a
fresh cache (all misses), timed by CUDA events after a sync; each point runs ``--warmup`` untimed steps, then
``--repeats`` timed ones (median and p90). Peak memory is ``torch.cuda.max_memory_allocated`` over each encoder
call minus what was allocated when it began, the largest of a step's calls: what a call needs on top of what
the server holds (the graph pool, which bucketed paths hold from warm-up on, is recorded apart). Off CUDA no
memory is measured (None). Per tower: a cold first step of each path before any warm-up (compiles, captures),
``warmup()``, the grids, and the largest bucket's own call as the memory reference. Frames are seeded noise in
the processors' patch layout, made on the device; each frames point checks that the frame groups' rows equal
the whole video's. Writes ``results/<card>/video-<stamp>.json`` (never into another card's folder), a figure per
tower and a table.

    python -m vitkit.bench video                          # Qwen2.5-VL-7B, default grid, on the GPU
    python -m vitkit.bench video --towers qwen3-vl-8b --frames 64,512 --resolutions 448x448
    python -m vitkit.bench video --plan                   # the grid and its time estimate, nothing run
    python -m vitkit.bench video --smoke                  # tiny towers on CPU, in seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vitkit.bench.crossover import resolution_label, resolution_size
from vitkit.bench.machine import (DTYPES, RUN_OPTIONS, EventTimedEncoder, check_dtype, default_dtype, free_memory,
                                  list_of, on_gpu, parser, positive_int_arg, provenance, resolve_device, roomy_cache,
                                  out_for, run_card, save_tower_figures, timed_step,
                                  timing_stats)
from vitkit.bench.video_report import format_table, video_figure
from vitkit.checks import non_negative_int, positive_int
from vitkit.costs import results as files
from vitkit.costs.results import Refused
from vitkit.costs.eager import load_eager_cost
from vitkit.costs.encoder import DEFAULT_ENCODER, load_encoder_cost
from vitkit.embed import MODES, plan_calls
from vitkit.encoders import build_encoder, default_buckets, get_preset
from vitkit.item import MultimodalItem, frame_groups, parse_video_items
from vitkit.processing import VIDEO_MAX_TOKENS, VIDEO_MIN_TOKENS, video_frame_size, video_settings
from vitkit.request import Request
from vitkit.sim.policies import ENGINE_POLICIES
from vitkit.span import Span

# Registered here until vitkit.costs.results lists it (then this line is a no-op and can go).

RESOLUTIONS = ("360p", "720p", "448x448")  # crossover's labels (640x360, 1280x720) or WxH px
FRAMES = (16, 32, 64, 128, 256, 512)
PATHS = {  # path -> (encoder impl, how a video becomes items)
    "whole-eager": ("vitkit-eager", "whole"),
    "whole-bucketed": ("vitkit", "whole"),
    "frame-groups": ("vitkit", "frame-groups"),
}
TWINS = {"qwen2.5-vl-7b": "qwen2.5-vl-tiny", "qwen3-vl-8b": "qwen3-vl-tiny"}  # tower -> its CPU smoke twin
VIDEO_FAMILIES = ("qwen2_5_vl", "qwen3_vl")  # towers that take videos (attention within a temporal patch)
POLICY_GROUP = parse_video_items(ENGINE_POLICIES["vitkit"].video_items)  # temporal patches a frame-group item
# The CPU smoke grid: 16 frames split over two of the tiny towers' largest buckets (1024 patches), in seconds.
SMOKE = dict(resolutions=("360p", "448x448"), frames=(4, 16), batch_frames=8, videos=(1, 2), repeats=2,
             warmup_calls=0)
FP32_TOLERANCE = 1e-5  # relative error at which fp32 rows count equal (tests/test_video.py's bar)


@dataclass(frozen=True)
class VideoSettings:
    """What the run measures and how: towers, frame sizes, frames per video, paths; the batching grid
    (``videos`` a step of ``batch_frames`` frames each); untimed and timed steps per point."""

    device: str
    dtype: str
    presets: tuple[str, ...] = ("qwen2.5-vl-7b",)
    resolutions: tuple[str, ...] = RESOLUTIONS
    frames: tuple[int, ...] = FRAMES
    paths: tuple[str, ...] = tuple(PATHS)
    frame_group: int = POLICY_GROUP  # temporal patches (2 frames each) a frame-group item
    videos: tuple[int, ...] = (1, 2, 4)
    batch_frames: int = 16  # 8 temporal patches: a short clip, where batching across requests counts
    repeats: int = 3
    warmup_calls: int = 1
    seed: int = 0
    text_tokens: int = 8
    kind: str = "gpu"

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "video: dtype")
        for name in ("presets", "resolutions", "frames", "paths", "videos"):
            if not getattr(self, name):
                raise ValueError(f"video: {name} is empty; give at least one")
        for name in self.presets:
            video_tower(name)
        for label in self.resolutions:
            resolution_size(label)
        for path in self.paths:
            path_name(path)
        for n in (*self.frames, *self.videos):
            positive_int("video: frames and videos a step (each)", n)
        positive_int("video: frame_group (temporal patches)", self.frame_group)
        positive_int("video: batch_frames", self.batch_frames)
        positive_int("video: repeats", self.repeats)
        non_negative_int("video: warmup_calls", self.warmup_calls)

    @property
    def video_items(self) -> str:
        """The frame-groups path's item spec, as ``make_request`` and the simulator take it."""
        return f"frame-groups:{self.frame_group}"

    def points(self) -> list[dict[str, Any]]:
        """Every measured point of one tower, in run order: the frames grid (one video a step), then the
        batching grid (each videos-a-step count in both modes)."""
        out = [dict(grid="frames", resolution=r, frames=f, videos=1, path=p, mode="batched")
               for r in self.resolutions for f in self.frames for p in self.paths]
        out += [dict(grid="batching", resolution=r, frames=self.batch_frames, videos=v, path=p, mode=m)
                for r in self.resolutions for v in self.videos for p in self.paths for m in MODES]
        return out


def video_tower(name: str) -> str:
    """``name`` when it is a preset whose tower takes videos; ValueError naming it otherwise."""
    if get_preset(name).family not in VIDEO_FAMILIES:
        video = sorted(n for n in (*TWINS, *TWINS.values()))
        raise ValueError(f"tower {name!r} takes no video; video towers: {video}")
    return name


def path_name(name: str) -> str:
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; paths: {list(PATHS)}")
    return name


# --- videos: frame sizes, grids, items ------------------------------------------------------------

def frame_settings(preset: str) -> dict[str, Any]:
    """The per-frame resize settings of a tower's videos: Qwen2VLVideoProcessor's (``video_settings``) for
    Qwen2.5-VL. Qwen3-VL's video processor shares one pixel budget over the whole clip (a 512-frame clip gets
    32 px frames), so for it the same per-frame token bounds (qwen-vl-utils' 128 to 768 merged tokens) in
    its own 32-px units: this benchmark varies frames at a fixed frame size."""
    p = get_preset(preset)
    if p.family == "qwen2_5_vl":
        return video_settings(p)
    settings = {**p.processor, "cap_pixels_per_frame": False}
    if not p.tiny:  # tiny towers keep their image bounds, as video_settings does
        factor = settings["patch_size"] * settings["merge_size"]
        settings.update(min_pixels=VIDEO_MIN_TOKENS * factor**2, max_pixels=VIDEO_MAX_TOKENS * factor**2)
    return settings


def video_shape(preset: str, label: str, frames: int) -> dict[str, Any]:
    """A ``label`` video of ``frames`` frames for ``preset``: its frame size after resizing (px), patch grid
    (t, h, w), patches and embedding rows."""
    width, height = resolution_size(label)
    settings = frame_settings(preset)
    frame_h, frame_w = video_frame_size(frames, height, width, settings)
    patch, merge = settings["patch_size"], settings["merge_size"]
    grid = (-(-frames // settings["temporal_patch_size"]), frame_h // patch, frame_w // patch)
    patches = math.prod(grid)
    return {"label": label, "width": width, "height": height, "frames": frames, "frame_px": [frame_h, frame_w],
            "grid": list(grid), "patches": patches, "rows": patches // merge**2}


def frame_size(preset: str, label: str) -> dict[str, Any]:
    """A ``label`` frame for ``preset``: its size after resizing (px) and the patches and rows of a temporal
    patch (two frames)."""
    shape = video_shape(preset, label, 2)
    return {k: shape[k] for k in ("label", "width", "height", "frame_px", "patches", "rows")}


def video_item(encoder: Any, shape: Mapping[str, Any], seed: int, name: str) -> MultimodalItem:
    """A video of ``shape`` as its processor lays out patches, seeded noise made on the encoder's device in its
    dtype (a 512-frame 720p video is 1.7 GB in bf16: no host copy), named ``name`` (no content hash)."""
    cfg = encoder.config
    width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
    gen = torch.Generator(device=encoder.device).manual_seed(seed)
    feature = torch.randn(shape["patches"], width, generator=gen, device=encoder.device, dtype=encoder.dtype)
    return MultimodalItem(feature, shape["rows"], modality="video", hash=name,
                          meta={"video_grid_thw": tuple(shape["grid"])})


def path_items(video: MultimodalItem, path: str, frame_group: int) -> list[MultimodalItem]:
    """The items ``path`` makes of a video: itself, or its frame groups (named by the video's hash and
    patch range: hashing gigabytes is the processor's cost, not the step's)."""
    if PATHS[path][1] == "whole":
        return [video]
    return frame_groups(video, frame_group, hash_content=False)


def video_batch(per_request: Sequence[Sequence[MultimodalItem]], text_tokens: int) -> list[tuple[Request, Span]]:
    """A step of one request per video: text, the video's items back to back, text; a window over each prompt."""
    batch = []
    for r, items in enumerate(per_request):
        request = Request.from_segments(f"video{r}", [text_tokens, *items, text_tokens])
        batch.append((request, Span(0, request.prompt_len)))
    return batch


def call_budget(path: str, encoder: Any) -> int | None:
    """Rows a call may hold: frame groups in calls of at most the largest bucket (vitkit's policy, which
    bounds a call's memory); whole videos in one call a step, as the engines batch them."""
    return encoder.max_tokens_per_call if PATHS[path][1] == "frame-groups" else None


# --- measuring ------------------------------------------------------------------------------------

class MemoryTracked:
    """An encoder whose calls each record the CUDA memory they allocate: the peak over the call above what was
    allocated when it began (bytes). Allocator counters only, so nothing synchronises. Off CUDA: None."""

    def __init__(self, encoder: Any, device: torch.device | str) -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        self.cuda = on_gpu(device)
        self.call_peaks: list[int] = []
        self._tops: list[int] = []  # the step's peak before each call's reset
        self._base = 0

    def __call__(self, items: list) -> Sequence[torch.Tensor]:
        if not self.cuda:
            return self.encoder(items)
        before = torch.cuda.memory_allocated(self.device)
        self._tops.append(torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        out = self.encoder(items)
        self.call_peaks.append(torch.cuda.max_memory_allocated(self.device) - before)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def begin_step(self) -> None:
        """Start the step's count: what is allocated now is its base."""
        if self.cuda:
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def call_peak(self) -> int | None:
        return max(self.call_peaks, default=0) if self.cuda else None

    def step_peak(self) -> int | None:
        """The step's peak above its base (embeddings stored and assembled included)."""
        if not self.cuda:
            return None
        return max([*self._tops, torch.cuda.max_memory_allocated(self.device)]) - self._base


def run_step(per_request: Sequence[Sequence[MultimodalItem]], encoder: Any, path: str, mode: str,
             settings: VideoSettings) -> tuple[dict[str, Any], Any]:
    """One ``embed_chunks`` step of one request per video on a fresh cache; (its row, its result)."""
    batch = video_batch(per_request, settings.text_tokens)
    timed = EventTimedEncoder(encoder, settings.device)
    tracked = MemoryTracked(timed, settings.device)
    items = [item for request in per_request for item in request]
    cache, before = roomy_cache(items, encoder), encoder.stats.copy()
    tracked.begin_step()
    result, watch = timed_step(batch, tracked, cache, mode, settings.device,
                               max_tokens_per_call=call_budget(path, encoder))
    spent = encoder.stats - before
    row = {"step_ms": watch.elapsed_ms(), "encoder_ms": timed.encoder_ms(), "encoder_calls": result.encoder_calls,
           "items": len(items), "packs": spent.packs, "unbucketed": spent.unbucketed, "split_items": spent.split_items,
           "padded_rows": spent.padded_rows, "compiles": spent.compiles, "captures": spent.captures,
           "call_peak_bytes": tracked.call_peak(), "step_peak_bytes": tracked.step_peak()}
    return row, result


def measure_point(videos: Sequence[MultimodalItem], encoders: Mapping[str, Any], point: Mapping[str, Any],
                  settings: VideoSettings, bar) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """A point's untimed then timed steps; (their rows, the first video's rows of the last step)."""
    per_request = [path_items(video, point["path"], settings.frame_group) for video in videos]
    encoder = encoders[point["path"]]
    rows, result = [], None
    for step in range(settings.warmup_calls + settings.repeats):
        row, result = run_step(per_request, encoder, point["path"], point["mode"], settings)
        rows.append({**point, "step": step, "timed": step >= settings.warmup_calls, **row})
        bar.update(sum(v.feature.shape[0] for v in videos))
    return rows, result.embeddings[0]


def largest_bucket_call(encoders: Mapping[str, Any], settings: VideoSettings, seed: int) -> dict[str, Any]:
    """The memory reference: one call whose one pack fills the largest bucket exactly (a single temporal patch
    of ``largest`` patches), bucketed and eager, each the largest peak of its timed calls and median ms."""
    bucketed = encoders["whole-bucketed"]
    largest = bucketed.buckets.largest
    side = math.isqrt(largest)
    grid = [1, side, side] if side * side == largest and side % 2 == 0 else [1, 2, largest // 2]
    shape = {"patches": largest, "rows": bucketed.units_to_rows(largest), "grid": grid}
    item = video_item(bucketed, shape, seed, "largest-bucket")
    out = {"patches": largest, "rows": shape["rows"], "grid": grid}
    for impl, encoder in (("bucketed", bucketed), ("eager", encoders["whole-eager"])):
        tracked, times = MemoryTracked(EventTimedEncoder(encoder, settings.device), settings.device), []
        for step in range(settings.warmup_calls + settings.repeats):
            tracked.encoder.reset()
            tracked([item])
            if step >= settings.warmup_calls:
                times.append(tracked.encoder.encoder_ms())
            else:
                tracked.call_peaks.clear()  # a first call's layouts and allocator growth are not the call's
        out |= {f"{impl}_call_peak_bytes": tracked.call_peak(), f"{impl}_ms": timing_stats(times).median_ms}
    return out


def cold_pass(encoders: Mapping[str, Any], preset: str, settings: VideoSettings) -> list[dict[str, Any]]:
    """One step of each path before any warm-up, at the first frames point: first-call costs (compiles,
    captures, the allocator's growth)."""
    if on_gpu(settings.device):  # CUDA context and cuBLAS up first: no path's first step pays them
        torch.ones(8, 8, device=settings.device) @ torch.ones(8, 8, device=settings.device)
    shape = video_shape(preset, settings.resolutions[0], settings.frames[0])
    video = video_item(encoders["whole-bucketed"], shape, settings.seed, f"cold-{preset}")
    rows = []
    for path in settings.paths:
        row, _ = run_step([path_items(video, path, settings.frame_group)], encoders[path], path, "batched", settings)
        rows.append({"path": path, "resolution": shape["label"], "frames": shape["frames"], **row})
    return rows


def build_encoders(preset: str, settings: VideoSettings) -> dict[str, Any]:
    """Per path its encoder: one tower's weights, bucketed (impl ``vitkit``) and eager."""
    bucketed = build_encoder(preset, device=settings.device, dtype=DTYPES[settings.dtype], impl="vitkit",
                             seed=settings.seed)
    eager = bucketed.variant(impl="vitkit-eager")
    return {path: bucketed if impl == "vitkit" else eager for path, (impl, _) in PATHS.items()}


def measure_tower(preset: str, settings: VideoSettings, bar) -> tuple[dict[str, Any], list, list]:
    """One tower: cold pass, warm-up, memory reference, then the grids' points, those sharing videos together;
    (the tower's record, its step rows, its rows checks)."""
    encoders = build_encoders(preset, settings)
    bucketed = encoders["whole-bucketed"]
    bar.set_postfix_str(f"{preset} cold pass")
    cold = cold_pass(encoders, preset, settings)
    bar.set_postfix_str(f"{preset} warm-up")
    warmup = bucketed.warmup(progress=not bar.disable)  # videos split to the regular buckets: no large ones
    reference = largest_bucket_call(encoders, settings, settings.seed + 1)
    steps, checks = [], []
    for k, ((grid, resolution, frames, count), points) in enumerate(groupby(settings.points(), key=video_key)):
        shape = video_shape(preset, resolution, frames)
        videos = [video_item(bucketed, shape, settings.seed * 1_000_003 + k * 101 + v, f"{preset}-{k}-{v}")
                  for v in range(count)]
        rows_of = {}  # path -> the first video's rows, for the rows check
        for point in points:
            bar.set_postfix_str(f"{preset} {resolution} {frames}f x{count} {point['path']} {point['mode']}")
            rows, rows_of[point["path"]] = measure_point(videos, encoders, point, settings, bar)
            steps += [{"preset": preset, "video_patches": shape["patches"], "video_rows": shape["rows"], **row}
                      for row in rows]
        if grid == "frames":
            checks.append({"preset": preset, **check_rows(resolution, frames, rows_of, settings.dtype)})
        del videos, rows_of
        free_memory(settings.device)  # a 512-frame video and its rows are gigabytes
    tower = {"preset": preset, "hidden_size": bucketed.hidden_size, "buckets": list(bucketed.buckets.sizes),
             "largest_bucket_rows": bucketed.max_tokens_per_call, "cuda_graphs": bucketed.cuda_graphs,
             "compiled": bucketed.compiled, "frame_rule": frame_rule(preset),
             "frame_sizes": [frame_size(preset, label) for label in settings.resolutions], "cold": cold,
             "warmup": asdict(warmup), "graph_pool_bytes": warmup.pool_bytes if bucketed.cuda_graphs else None,
             "largest_bucket": reference}
    del encoders, bucketed
    free_memory(settings.device)
    return tower, steps, checks


def video_key(point: Mapping[str, Any]) -> tuple:
    """What a point's videos are: its grid, frame size, frames and videos a step."""
    return point["grid"], point["resolution"], point["frames"], point["videos"]


def frame_rule(preset: str) -> str:
    if get_preset(preset).family == "qwen2_5_vl":
        return "Qwen2VLVideoProcessor's per-frame smart_resize (vitkit.processing.video_settings)"
    return ("per-frame smart_resize within 128..768 merged tokens of 32 px (not Qwen3VLVideoProcessor's "
            "whole-clip budget, which shrinks frames as the clip grows)")


def relative_error(a: torch.Tensor, b: torch.Tensor, chunk_rows: int = 4096) -> float:
    """||a - b|| / ||b|| in float32, a chunk of rows at a time (a 512-frame video's rows are gigabytes)."""
    diff = norm = torch.zeros((), device=b.device)
    for start in range(0, b.shape[0], chunk_rows):
        x, y = a[start:start + chunk_rows].float(), b[start:start + chunk_rows].float()
        diff, norm = diff + (x - y).square().sum(), norm + y.square().sum()
    return float(diff.sqrt() / norm.sqrt().clamp_min(1e-30))


def check_rows(resolution: str, frames: int, rows: Mapping[str, torch.Tensor], dtype: str) -> dict[str, Any]:
    """Whether the frame groups' rows equal the whole video's at one frames point: their relative error against
    each whole path, and ``equal`` against the same impl's whole video (whole-bucketed, else whole-eager): bitwise,
    or within fp32's ``FP32_TOLERANCE``, or in half precision within how far the two whole paths (eager and
    bucketed kernels) differ from each other (None without both)."""
    out: dict[str, Any] = {"resolution": resolution, "frames": frames}
    groups = rows.get("frame-groups")
    whole = {p: rows[p] for p in ("whole-bucketed", "whole-eager") if p in rows}
    if groups is None or not whole:
        return out | {"equal": None, "note": "needs the frame-groups path and a whole one"}
    for path, t in whole.items():
        same_shape = tuple(t.shape) == tuple(groups.shape)
        out[f"rel_err_vs_{path}"] = relative_error(groups, t) if same_shape else None
        out[f"bitwise_vs_{path}"] = same_shape and torch.equal(groups, t)
    yardstick = relative_error(whole["whole-eager"], whole["whole-bucketed"]) if len(whole) == 2 else None
    tolerance = FP32_TOLERANCE if dtype == "fp32" else None if yardstick is None else max(FP32_TOLERANCE, yardstick)
    ref = next(iter(whole))
    err = out[f"rel_err_vs_{ref}"]
    equal = out[f"bitwise_vs_{ref}"] or (None if tolerance is None else err is not None and err <= tolerance)
    return out | {"whole_paths_rel_err": yardstick, "tolerance": tolerance, "judged_against": ref, "equal": equal}


def run_video(settings: VideoSettings, *, progress: bool = True, plan: Estimate | None = None) -> dict[str, Any]:
    """Every tower on both grids; the results object (``summary``: throughput and memory per point)."""
    bar = tqdm(total=sum(work_patches(p, settings) for p in settings.presets), desc="video", unit="patch",
               unit_scale=True, disable=not progress)
    start, towers, steps, checks = time.perf_counter(), [], [], []
    for preset in settings.presets:
        tower, tower_steps, tower_checks = measure_tower(preset, settings, bar)
        towers.append(tower)
        steps += tower_steps
        checks += tower_checks
    bar.close()
    gpu = on_gpu(settings.device)
    return {"schema": files.schema("video"), **provenance(settings.device, settings.kind),
            "card": run_card(settings.device, settings.kind),
            "settings": asdict(settings) | {"video_items": settings.video_items},
            "memory": ("torch.cuda.max_memory_allocated over each encoder call minus what was allocated when it "
                       "began (bytes), the largest of a step's calls" if gpu else
                       "not measured: torch.cuda's allocator statistics need a CUDA device (values are None)"),
            "paths": {p: {"impl": impl, "items": items if items == "whole" else settings.video_items}
                      for p, (impl, items) in PATHS.items() if p in settings.paths},
            "estimate": None if plan is None else asdict(plan), "elapsed_s": time.perf_counter() - start,
            "towers": towers, "steps": steps, "summary": summarize(steps), "rows_check": checks}


def work_patches(preset: str, settings: VideoSettings) -> int:
    """Patches one tower's grids encode, untimed steps included (the progress bar's unit)."""
    per_point = settings.warmup_calls + settings.repeats
    return sum(video_shape(preset, p["resolution"], p["frames"])["patches"] * p["videos"] * per_point
               for p in settings.points())


POINT_KEYS = ("preset", "grid", "resolution", "frames", "videos", "path", "mode")


def summarize(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per point over its timed steps: step ms (median, p90), frames/s and rows/s at the median, the largest
    call and step peaks, and what the encoder did."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in steps:
        if row["timed"]:
            groups.setdefault(tuple(row[k] for k in POINT_KEYS), []).append(row)
    out = []
    for key, members in groups.items():
        stats = timing_stats([m["step_ms"] for m in members])
        first = members[0]
        frames, rows = first["frames"] * first["videos"], first["video_rows"] * first["videos"]
        peaks = [m["call_peak_bytes"] for m in members if m["call_peak_bytes"] is not None]
        step_peaks = [m["step_peak_bytes"] for m in members if m["step_peak_bytes"] is not None]
        out.append(dict(zip(POINT_KEYS, key)) | {
            "steps": len(members), "step_ms_median": stats.median_ms, "step_ms_p90": stats.p90_ms,
            "encoder_ms_median": timing_stats([m["encoder_ms"] for m in members]).median_ms,
            "frames_per_s": frames / stats.median_ms * 1e3, "rows_per_s": rows / stats.median_ms * 1e3,
            "call_peak_bytes": max(peaks, default=None), "step_peak_bytes": max(step_peaks, default=None),
            "encoder_calls": first["encoder_calls"], "items": first["items"], "packs": first["packs"],
            "unbucketed": first["unbucketed"], "split_items": first["split_items"],
            "compiles": sum(m["compiles"] for m in members), "captures": sum(m["captures"] for m in members)})
    return out


# --- the time estimate ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """Seconds the run is expected to take (None: not estimated), and what the number comes from."""

    seconds: float | None
    basis: str


def planned_calls(rows: Sequence[Sequence[int]], mode: str, budget: int | None) -> list[list[int]]:
    """The encoder calls (each its items' rows) ``embed_chunks`` makes of requests with items of ``rows``."""
    stand_ins = [[MultimodalItem(torch.empty(0), n, hash=f"{r}.{k}") for k, n in enumerate(request)]
                 for r, request in enumerate(rows)]
    groups = [[item for request in stand_ins for item in request]] if mode == "batched" else stand_ins
    return [[item.num_tokens for item in call] for group in groups for call in plan_calls(group, budget)]


def item_rows(shape: Mapping[str, Any], path: str, frame_group: int) -> list[int]:
    """Rows of the items ``path`` makes of a video of ``shape``."""
    t, rows = shape["grid"][0], shape["rows"]
    if PATHS[path][1] == "whole":
        return [rows]
    return [rows // t * min(frame_group, t - start) for start in range(0, t, frame_group)]


def estimate(settings: VideoSettings) -> Estimate:
    """Seconds of the run from the card's cost models (``costs.results.models_folder``: the attached card's when
    calibrated, else the stored card's): every step's calls through the bucketed and eager models of Qwen2.5-VL-7B
    (another tower counted as it per row), plus its warm-up as measured; the cold pass's compiles not counted."""
    if settings.kind == "cpu-smoke":
        return Estimate(None, "a CPU smoke run on the tiny towers: seconds, not estimated from GPU models")
    folder = files.models_folder().folder
    try:
        bucketed = load_encoder_cost(folder)
        eager = load_eager_cost(folder, DEFAULT_ENCODER) or bucketed
    except (ValueError, FileNotFoundError) as err:
        return Estimate(None, f"not estimated: {err}")
    largest = default_buckets(DEFAULT_ENCODER)
    budget = largest.largest // bucketed.call.unit
    per_point = settings.warmup_calls + settings.repeats
    ms = 0.0
    for preset in settings.presets:
        for p in settings.points():
            rows = [item_rows(video_shape(preset, p["resolution"], p["frames"]), p["path"], settings.frame_group)
                    ] * p["videos"]
            model = eager if PATHS[p["path"]][0] == "vitkit-eager" else bucketed
            calls = planned_calls(rows, p["mode"], budget if PATHS[p["path"]][1] == "frame-groups" else None)
            ms += per_point * (model.step_ms(calls) + model.bookkeeping_ms)
    warmup_s = stored_warmup_s(folder) or 0.0
    return Estimate(ms / 1e3 + warmup_s * len(settings.presets),
                    f"{ms / 6e4:.1f} min of steps as {folder.name}/'s cost models give them ({bucketed.source}), "
                    f"{warmup_s * len(settings.presets):.0f} s of warm-up as measured there; cold-pass compiles and "
                    f"making the videos not counted")


def stored_warmup_s(folder: Path) -> float | None:
    """The warm-up seconds of ``folder``'s newest GPU encoder-costs file of Qwen2.5-VL-7B, if any."""
    for path in files.newest_first("encoder-costs", folder):
        data = files.read("encoder-costs", path)
        if data.get("kind") == "gpu" and data["settings"].get("encoder") == DEFAULT_ENCODER:
            return data["settings"].get("warmup_s")
    return None


# --- figure and table -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = parser("video", __doc__, *RUN_OPTIONS, "seed", "repeats", "warmup", "smoke",
               repeats=dict(help="timed steps per point (default 3; --smoke 2)"),
               warmup=dict(dest="warmup_calls", help="untimed steps first at each point (default 1; --smoke 0)"),
               smoke=dict(help="the tiny twins of the towers on CPU in float32, a small grid: the plumbing, in "
                               "seconds"))
    p.add_argument("--towers", type=list_of(video_tower),
                   help="comma-separated towers (default qwen2.5-vl-7b; or qwen3-vl-8b; --smoke: their tiny twins)")
    p.add_argument("--frames", type=list_of(positive_int_arg),
                   help=f"comma-separated frames a video (default {','.join(map(str, FRAMES))})")
    p.add_argument("--resolutions", type=list_of(resolution_label),
                   help=f"comma-separated frame sizes: 360p, 720p, 1080p or WxH px (default {','.join(RESOLUTIONS)})")
    p.add_argument("--paths", type=list_of(path_name), help=f"comma-separated paths (default {','.join(PATHS)})")
    p.add_argument("--frame-group", type=int, help=f"temporal patches a frame-group item (default {POLICY_GROUP}, "
                                                   "vitkit.sim.policies')")
    p.add_argument("--videos", type=list_of(positive_int_arg), help="batching grid: videos a step (default 1,2,4)")
    p.add_argument("--batch-frames", type=int, help="batching grid: frames a video (default 16)")
    p.add_argument("--plan", action="store_true", help="print the grid and its time estimate, run nothing")
    return p


def settings_from_args(args: argparse.Namespace) -> VideoSettings:
    """The run's settings; ``Refused`` where this machine cannot run it (no GPU, a full tower on CPU)."""
    if args.smoke and args.device not in (None, "cpu"):
        raise ValueError(f"--smoke runs on the CPU; got --device {args.device}")
    device = "cpu" if args.smoke else args.device
    if device is None and not torch.cuda.is_available() and not args.plan:
        raise Refused("it measures video encoding on the attached GPU, and torch sees no CUDA device "
                      f"(torch {torch.__version__}); the code path alone runs on CPU: python -m vitkit.bench video "
                      "--smoke")
    try:
        device = resolve_device(device) if not args.plan else (device or "cuda")
    except ValueError as err:
        raise Refused(str(err)) from None
    gpu = on_gpu(device)
    presets = tuple(args.towers or ("qwen2.5-vl-7b",))
    if args.smoke:
        presets = tuple(dict.fromkeys(TWINS.get(name, name) for name in presets))
    full = [name for name in presets if not get_preset(name).tiny]
    if not gpu and full:
        raise Refused(f"on CPU only the tiny towers run ({', '.join(TWINS.values())}; --smoke picks them); {full} "
                      "would take hours there and measure no graphs")
    dtype = "fp32" if args.smoke and args.dtype is None else (args.dtype or default_dtype(device))
    if gpu and dtype == "fp32":
        raise ValueError("--dtype fp32: the bucketed encoder's CUDA graphs need bf16 or fp16 (the varlen attention "
                         "kernel)")
    given = {"resolutions": args.resolutions, "frames": args.frames, "paths": args.paths, "videos": args.videos,
             "frame_group": args.frame_group, "batch_frames": args.batch_frames, "repeats": args.repeats,
             "warmup_calls": args.warmup_calls}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    defaults = SMOKE if not gpu else {}
    return VideoSettings(device=device, dtype=dtype, presets=presets, seed=args.seed,
                         kind="gpu" if gpu else "cpu-smoke", **defaults | given)


def plan_lines(settings: VideoSettings, plan: Estimate) -> list[str]:
    points = settings.points()
    minutes = "not estimated" if plan.seconds is None else f"about {plan.seconds / 60:.1f} min"
    frames = sum(p["grid"] == "frames" for p in points)
    return [(f"vitkit.bench video: {', '.join(settings.presets)} on {settings.device} ({settings.dtype}): "
             f"{len(points)} points a tower ({frames} frames x resolution x path, {len(points) - frames} batching), "
             f"{settings.warmup_calls} untimed + {settings.repeats} timed steps each, after a cold pass and a warm-up"),
            f"estimate: {minutes} ({plan.basis})"]


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except Refused as err:
        print(f"vitkit.bench video: refused: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        p.error(str(err))
    plan = estimate(settings)
    print("\n".join(plan_lines(settings, plan)), flush=True)
    if args.plan:
        return 0
    try:
        path = out_for(args.out, settings.device, settings.kind) / f"video-{files.stamp()}.json"
        if path.exists():
            raise Refused(f"{path} exists; it is not overwritten")
    except Refused as err:
        print(f"vitkit.bench video: refused: {err}", file=sys.stderr)
        return 2
    results = run_video(settings, progress=not args.no_progress, plan=plan)
    files.write("video", results, path)
    print(f"wrote {path}")
    data = files.read("video", path)
    if not args.no_plots:
        save_tower_figures(path, data, settings.presets, video_figure)
    print(format_table(data), flush=True)
    return 0
