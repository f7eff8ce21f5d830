"""``python -m vitkit.bench.dp`` (also ``python -m vitkit.bench --sweep dp``): the encoder across
N GPUs, one process per GPU, launched by ``torchrun``.

Every rank builds the same tower and the same seeded steps (``--images`` images a step, in
requests of ``--images-per-request``; Qwen2.5-VL draws each image's size from the mixed-size
cycle of the single-GPU sweeps) and runs each step through ``embed_chunks`` with a
``DataParallelEncoder``, for every mode, assignment policy and gather variant. A step is timed
with CUDA events from a common start (a barrier, then a sync) to the end of ``embed_chunks``;
medians are over ``--repeats`` passes over the ``--steps`` steps, after ``--warmup`` passes.
Rank 0 writes ``dp-n<N>.json`` under ``--out`` and then merges every ``dp-n*.json`` there into
``dp.json`` + ``dp.png`` (speedup and efficiency against the N=1 file). Examples::

    for n in 1 2 4; do torchrun --standalone --nproc-per-node $n -m vitkit.bench.dp --out results/h100/dp; done
    python -m vitkit.bench.dp --merge results/h100/dp      # re-merge the per-N files
    torchrun --nproc-per-node 2 -m vitkit.bench.dp --device cpu --out /tmp/dp   # CPU smoke (gloo, tiny towers)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from vitkit.bench.dp_summary import SCHEMA, combine, format_table, merge_folder, write_json
from vitkit.bench.machine import default_dtype, machine_info, resolve_device, versions
from vitkit.bench.run import DTYPES, layout_requests
from vitkit.bench.sweeps import MIXED_SIZES, MIXED_SIZES_TINY
from vitkit.bench.timing import Stopwatch, synchronize
from vitkit.cache import EmbeddingCache, embedding_row_bytes
from vitkit.checks import non_negative_int, positive_int
from vitkit.embed import MODES, embed_chunks
from vitkit.encoders import IMPLS, build_encoder
from vitkit.encoders.assignment import POLICIES
from vitkit.encoders.dp import GATHERS, DataParallelEncoder
from vitkit.item import MultimodalItem, move_items_to_device
from vitkit.processing import synthetic_items
from vitkit.request import Request
from vitkit.span import Span

GPU_ENCODERS = ("qwen2.5-vl-7b", "clip-l-336")
CPU_ENCODERS = ("qwen2.5-vl-tiny", "clip-tiny")
# A rank that dies leaves the others in a collective: torchrun stops them, and failing that the
# group's timeout does, well inside the device's 10-minute command limit (warm-ups included).
GROUP_TIMEOUT = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class DPSettings:
    """What one run measures (the same on every rank)."""

    encoders: tuple[str, ...] = GPU_ENCODERS
    images: int = 32  # images per step
    images_per_request: int = 4  # per-request mode: one encoder call per request of this many images
    steps: int = 4  # distinct seeded steps, cycled
    modes: tuple[str, ...] = MODES
    policies: tuple[str, ...] = POLICIES
    gathers: tuple[str, ...] = GATHERS
    repeats: int = 5  # timed passes over the steps
    warmup: int = 1  # untimed passes over the steps, per configuration
    impl: str = "vitkit"
    dtype: str = "bf16"
    device: str = "cuda"
    text_tokens: int = 8
    seed: int = 0
    # False: skip the encoder's warmup(); each configuration's untimed passes (the very calls the
    # timed passes repeat) then compile and capture just the buckets they use. Shorter, and the
    # rows' compiles/captures while timing still prove none was left for the timed passes.
    encoder_warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "images_per_request", "steps", "repeats"):
            positive_int(name, getattr(self, name))
        non_negative_int("warmup", self.warmup)
        if self.images % self.images_per_request:
            raise ValueError(f"images ({self.images}) must split into requests of "
                             f"images_per_request ({self.images_per_request})")
        for name, allowed in (("modes", MODES), ("policies", POLICIES), ("gathers", GATHERS)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.encoders:
            raise ValueError("encoders is empty")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")


@dataclass(frozen=True)
class Dist:
    """This process's place: rank, world size, and its device."""

    rank: int
    world_size: int
    device: torch.device


def init_distributed(device_type: str) -> Dist:
    """Join torchrun's group (NCCL on GPUs, gloo on CPU); one process without torchrun."""
    if "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
        return Dist(0, 1, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        # eager init (device_id): the NCCL communicator is made here, not inside the first timed step
        dist.init_process_group("nccl", device_id=device, timeout=GROUP_TIMEOUT)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


@dataclass
class Step:
    """One scheduler step: its requests (windows cover whole prompts) and their items."""

    batch: list[tuple[Request, Span]]
    items: list[MultimodalItem]

    @property
    def rows(self) -> int:
        return sum(item.num_tokens for item in self.items)


def step_sizes(encoder: Any, images: int, seed: int) -> list[tuple[int, int]]:
    """(height, width) px per image: the tower's own size, or drawn from the mixed-size cycle."""
    if not encoder.variable_resolution:
        side = encoder.preset.image_size
        return [(side, side)] * images
    cycle = MIXED_SIZES_TINY if encoder.preset.tiny else MIXED_SIZES
    rng = random.Random(seed)
    return [rng.choice(cycle) for _ in range(images)]


def make_steps(encoder: Any, settings: DPSettings, device: torch.device) -> list[Step]:
    """The run's seeded steps; every rank builds the very same ones (SPMD)."""
    steps = []
    for s in range(settings.steps):
        seed = settings.seed * 1000 + s
        items = synthetic_items(encoder.name, step_sizes(encoder, settings.images, seed), seed)
        # Features live on each rank's GPU before the step, as in the single-GPU sweeps: the
        # host-to-device copy is not what is measured.
        move_items_to_device(items, device)
        requests = layout_requests(items, settings.images_per_request, settings.text_tokens)
        steps.append(Step([(r, Span(0, r.prompt_len)) for r in requests], items))
    return steps


def _fresh_cache(step: Step, encoder: Any) -> EmbeddingCache:
    row_bytes = embedding_row_bytes(encoder.hidden_size, encoder.dtype)
    return EmbeddingCache(2 * row_bytes * step.rows + 1)  # no eviction: the sweep measures encoding


def _start_together(where: Dist) -> None:
    if where.world_size > 1:
        dist.barrier()
    synchronize(where.device)


def time_step(dp: DataParallelEncoder, step: Step, mode: str, where: Dist) -> dict[str, float]:
    """One timed step on this rank: step ms, and the DP encoder's encode / gather / reorder ms
    and critical-path loads (rows) summed over its calls."""
    cache = _fresh_cache(step, dp)
    dp.reset_calls()
    _start_together(where)
    watch = Stopwatch(where.device)
    watch.start()
    result = embed_chunks(step.batch, dp, cache, mode=mode, check_finite=False)  # timed: no extra sync
    watch.stop()
    sample = {"step": watch.elapsed_ms(), "encode": 0.0, "gather": 0.0, "reorder": 0.0,
              "critical_rows": 0.0, "mean_rows": 0.0, "calls": float(result.encoder_calls)}
    for call in dp.calls:
        for key, ms in call.times_ms().items():
            sample[key] += ms
        loads = call.assignment.loads
        sample["critical_rows"] += max(loads)
        sample["mean_rows"] += sum(loads) / len(loads)
    return sample


def measure_config(dp: DataParallelEncoder, steps: list[Step], mode: str, settings: DPSettings,
                   where: Dist) -> dict[str, Any]:
    """This rank's samples: ``warmup`` untimed passes (items checked across ranks), then
    ``repeats`` timed passes over the steps; with the wrapped encoder's counters over the timed
    passes (compiles and captures must stay 0 after its warm-up; rows padded to buckets)."""
    dp.check_items = True
    for _ in range(settings.warmup):
        for step in steps:
            time_step(dp, step, mode, where)
    dp.check_items = False
    stats = getattr(dp.encoder, "stats", None)
    before = stats.copy() if stats is not None else None
    samples = [time_step(dp, step, mode, where) for _ in range(settings.repeats) for step in steps]
    counters = {}
    if before is not None:
        delta = dp.encoder.stats - before
        counters = {k: getattr(delta, k) for k in ("compiles", "captures", "real_rows", "padded_rows", "packs",
                                                   "unbucketed")}
    return {"samples": samples, "counters": counters}


def max_rel_diff(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """Largest |got - want| relative to the largest |want| (bf16 batches of different
    composition round differently; 0.0 when identical)."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        scale = w.abs().max().float().clamp_min(torch.finfo(torch.float32).tiny)
        worst = max(worst, float((g.float() - w.float()).abs().max() / scale))
    return worst


def _gather_objects(obj: Any, where: Dist) -> list[Any]:
    if where.world_size == 1:
        return [obj]
    out: list[Any] = [None] * where.world_size
    dist.all_gather_object(out, obj)
    return out


def measure_encoder(name: str, settings: DPSettings, where: Dist, bar: tqdm) -> list[dict[str, Any]]:
    """Every (mode, policy, gather) of one tower; rows on rank 0, [] elsewhere."""
    encoder = build_encoder(name, device=where.device, dtype=DTYPES[settings.dtype], impl=settings.impl)
    warmup_s = warm_up(encoder, where, progress=not bar.disable) if settings.encoder_warmup else 0.0
    if where.rank == 0:
        print(f"vitkit.bench.dp N={where.world_size}: {name} warm-up {warmup_s:.1f} s", flush=True)
    steps = make_steps(encoder, settings, where.device)
    reference = encoder(steps[0].items)
    # One GPU: every policy and gather is the wrapped encoder itself; measure it once.
    policies = settings.policies if where.world_size > 1 else settings.policies[:1]
    gathers = settings.gathers if where.world_size > 1 else settings.gathers[:1]
    rows = []
    for mode in settings.modes:
        for policy in policies:
            for gather in gathers:
                bar.set_postfix_str(f"{name} {mode} {policy} {gather}")
                dp = DataParallelEncoder(encoder, policy=policy, gather=gather, timed=True)
                measured = measure_config(dp, steps, mode, settings, where)
                measured["diff"] = max_rel_diff(dp(steps[0].items), reference)
                measured["warmup_s"] = warmup_s
                per_rank = _gather_objects(measured, where)
                if where.rank == 0:
                    rows.append(make_row(encoder, settings, where, mode, policy, gather, steps, per_rank))
                bar.update()
    del encoder, steps, reference
    gc.collect()
    if where.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def warm_up(encoder: Any, where: Dist, progress: bool = True) -> float:
    """The wrapped encoder's ``warmup`` (every bucket compiled and captured before anything is
    timed; a progress bar on rank 0 only); its seconds, 0.0 when it has none."""
    warm = getattr(encoder, "warmup", None)
    if not callable(warm):
        return 0.0
    takes_progress = "progress" in inspect.signature(warm).parameters
    report = warm(progress=progress and where.rank == 0) if takes_progress else warm()
    return float(getattr(report, "seconds", 0.0))


def device_name(device: torch.device) -> str:
    """The card's name (what every row records), or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def make_row(encoder: Any, settings: DPSettings, where: Dist, mode: str, policy: str, gather: str,
             steps: list[Step], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One results row from every rank's ``measure_config`` output (plus ``diff``, ``warmup_s``)."""
    figures = combine([m["samples"] for m in per_rank])
    counters = {k: sum(m["counters"].get(k, 0) for m in per_rank) for k in per_rank[0]["counters"]}
    seconds = figures["step_ms_median"] / 1e3
    rows = float(np.mean([s.rows for s in steps]))
    return {
        "world_size": where.world_size, "device_name": device_name(where.device),
        "encoder": encoder.name, "impl": settings.impl, "mode": mode, "policy": policy, "gather": gather,
        "images": settings.images, "images_per_request": settings.images_per_request,
        "requests": settings.images // settings.images_per_request, "rows_per_step": rows,
        "images_per_s": settings.images / seconds, "rows_per_s": rows / seconds,
        **figures,
        "max_rel_diff_vs_single": max(m["diff"] for m in per_rank),
        "warmup_s": max(m["warmup_s"] for m in per_rank),
        # the wrapped encoders' counters over the timed passes, summed over ranks
        "compiles_during_timing": counters.get("compiles"), "captures_during_timing": counters.get("captures"),
        "padding_waste": counters["padded_rows"] / counters["real_rows"] if counters.get("real_rows") else None,
        "packs_during_timing": counters.get("packs"), "unbucketed_during_timing": counters.get("unbucketed"),
        "dtype": settings.dtype,
    }


def run(settings: DPSettings, where: Dist, *, progress: bool = True) -> dict[str, Any] | None:
    """Measure every tower; the results object on rank 0, None on the other ranks."""
    per_encoder = len(settings.modes) * (len(settings.policies) * len(settings.gathers) if where.world_size > 1 else 1)
    bar = tqdm(total=per_encoder * len(settings.encoders), desc=f"vitkit.bench.dp N={where.world_size}",
               unit="config", disable=not progress or where.rank != 0)
    rows = [row for name in settings.encoders for row in measure_encoder(name, settings, where, bar)]
    bar.close()
    if where.rank != 0:
        return None
    return {
        "schema": SCHEMA, "world_size": where.world_size,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(where.device), "versions": versions() | {"nccl": _nccl_version(where)},
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
        "settings": asdict(settings), "rows": rows,
    }


def _nccl_version(where: Dist) -> str | None:
    if where.device.type != "cuda":
        return None
    version = torch.cuda.nccl.version()
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    intro, examples = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m vitkit.bench.dp", description=intro, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for dp-n<N>.json, dp.json, dp.png (default results/<card>/dp)")
    p.add_argument("--merge", type=Path, metavar="DIR", help="only merge the dp-n*.json in DIR into dp.json + dp.png")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--encoders", type=_list, help=f"presets (default GPU {GPU_ENCODERS}, CPU {CPU_ENCODERS})")
    p.add_argument("--images", type=int, help="images per step (default 32; CPU 8)")
    p.add_argument("--images-per-request", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--steps", type=int, help="distinct steps, cycled (default 4; CPU 2)")
    p.add_argument("--modes", type=_list, default=MODES, help=f"subset of {MODES}")
    p.add_argument("--policies", type=_list, default=POLICIES, help=f"subset of {POLICIES}")
    p.add_argument("--gathers", type=_list, default=GATHERS, help=f"subset of {GATHERS}")
    p.add_argument("--repeats", type=int, help="timed passes over the steps (default 5; CPU 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per configuration (default 1)")
    p.add_argument("--impl", default="vitkit", help="vitkit, vitkit-eager or stock (default vitkit)")
    p.add_argument("--no-encoder-warmup", action="store_true",
                   help="skip encoder.warmup(): the untimed passes capture only the buckets used (faster start)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _given(value: Any, default: Any) -> Any:
    """``value`` unless the option was left out: ``--images 0`` reaches DPSettings (which names
    it) instead of silently becoming the default."""
    return default if value is None else value


def settings_from_args(args: argparse.Namespace) -> DPSettings:
    device = resolve_device(args.device)
    gpu = torch.device(device).type == "cuda"
    return DPSettings(
        encoders=_given(args.encoders, GPU_ENCODERS if gpu else CPU_ENCODERS), images=_given(args.images, 32 if gpu else 8),
        images_per_request=args.images_per_request, steps=_given(args.steps, 4 if gpu else 2),
        modes=tuple(args.modes), policies=tuple(args.policies), gathers=tuple(args.gathers),
        repeats=_given(args.repeats, 5 if gpu else 2), warmup=args.warmup, impl=args.impl,
        dtype=default_dtype(device), device=device, encoder_warmup=not args.no_encoder_warmup,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge is not None:
        print(format_table(merge_folder(args.merge, plots=not args.no_plots)))
        return 0
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    where = init_distributed(settings.device)
    try:
        results = run(settings, where, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if results is None:
        return 0
    folder = args.out or Path("results") / results["machine"]["slug"] / "dp"
    path = write_json(results, folder / f"dp-n{where.world_size}.json")
    print(f"wrote {path}")
    print(format_table(merge_folder(folder, plots=not args.no_plots)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
