"""``python -m vitkit.bench dp``: the encoder across N GPUs, one process per GPU under ``torchrun``.

Every rank runs the same seeded steps through ``embed_chunks`` with a ``DataParallelEncoder`` for
every mode, policy and gather, timed from a common start (a barrier, then a sync). Rank 0 writes
``dp-n<N>.json`` under ``--out`` and merges all of them there into ``dp.json`` and ``dp.png``.

    for n in 1 2 4; do torchrun --standalone --nproc-per-node $n -m vitkit.bench dp --out DIR; done
    torchrun --nproc-per-node 2 -m vitkit.bench dp --device cpu --out /tmp/dp   # CPU smoke (gloo, tiny towers)
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench.machine import (DTYPES, check_dtype, default_dtype, free_memory, list_of, on_gpu, parser, provenance,
                                  resolve_device, roomy_cache, table, timed_step)
from vitkit.bench.plot import MODE_STYLE
from vitkit.bench.sweep import MIXED_SIZES, MIXED_SIZES_TINY, layout_requests, max_rel_diff
from vitkit.checks import non_negative_int, positive_int
from vitkit.costs import results as files
from vitkit.embed import MODES
from vitkit.encoders import IMPLS, build_encoder
from vitkit.encoders.assignment import POLICIES
from vitkit.encoders.dp import GATHERS, DataParallelEncoder
from vitkit.item import MultimodalItem, move_items_to_device
from vitkit.processing import synthetic_items
from vitkit.request import Request
from vitkit.span import Span

GPU_ENCODERS = ("qwen2.5-vl-7b", "clip-l-336")
CPU_ENCODERS = ("qwen2.5-vl-tiny", "clip-tiny")
# A rank that dies leaves the others in a collective: the group's timeout ends them if torchrun does not.
GROUP_TIMEOUT = dt.timedelta(minutes=5)
STORED_DP = files.results_folder() / "dp" / "dp.json"  # the stored card's merged runs
DEFAULT_GATHER = "all_gather_into_tensor"
# Issue 11's targets: the Qwen2.5-VL tower, 32 mixed-size images a step, token-balanced.
TARGET_ENCODER = "qwen2.5-vl-7b"
TARGET_SPEEDUP = {2: 1.85, 4: 3.4}
TARGET_BALANCE = 1.05  # max rank load / mean
TARGET_GATHER_SHARE = 0.05
# Rows in the wrong order or from the wrong item differ by O(1), bf16 batches' rounding by a few percent.
DIFF_WARNING = 0.1


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
    # False: no encoder warmup(); the untimed passes capture just the buckets they use (a faster start).
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
        check_dtype(self.dtype)
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
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        # eager init (device_id): the NCCL communicator is made here, not inside the first timed step
        dist.init_process_group("nccl", device_id=device, timeout=GROUP_TIMEOUT)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


@dataclass
class Step:
    """One scheduler step: its requests (windows over whole prompts) and their items."""

    batch: list[tuple[Request, Span]]
    items: list[MultimodalItem]


def make_steps(encoder: Any, settings: DPSettings, device: torch.device) -> list[Step]:
    """The run's seeded steps, the same on every rank, features already on the rank's device; images
    of the tower's own size, or drawn from the sweeps' mixed-size cycle."""
    cycle = MIXED_SIZES_TINY if encoder.preset.tiny else MIXED_SIZES
    steps = []
    for s in range(settings.steps):
        seed = settings.seed * 1000 + s
        rng = random.Random(seed)
        sizes = [rng.choice(cycle) if encoder.variable_resolution else (encoder.preset.image_size,) * 2
                 for _ in range(settings.images)]
        items = synthetic_items(encoder.name, sizes, seed)
        move_items_to_device(items, device)
        steps.append(Step(layout_requests(items, settings.images_per_request, settings.text_tokens), items))
    return steps


def time_step(dp: DataParallelEncoder, step: Step, mode: str, where: Dist) -> dict[str, float]:
    """One step on this rank: step ms, and over its calls encode / gather / reorder ms and loads (rows)."""
    cache = roomy_cache(step.items, dp, copies=2)
    dp.reset_calls()
    if where.world_size > 1:
        dist.barrier()
    result, watch = timed_step(step.batch, dp, cache, mode, where.device)
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
    """This rank's timed samples after ``warmup`` passes, and the encoder's counters while timed."""
    dp.check_items = True
    for _ in range(settings.warmup):
        for step in steps:
            time_step(dp, step, mode, where)
    dp.check_items = False
    before = dp.encoder.stats.copy()
    samples = [time_step(dp, step, mode, where) for _ in range(settings.repeats) for step in steps]
    delta = dp.encoder.stats - before
    keys = ("compiles", "captures", "real_rows", "padded_rows", "packs", "unbucketed")
    return {"samples": samples, "counters": {k: getattr(delta, k) for k in keys}}


def measure_encoder(name: str, settings: DPSettings, where: Dist, bar: tqdm) -> list[dict[str, Any]]:
    """Every (mode, policy, gather) of one tower; rows on rank 0, [] elsewhere."""
    encoder = build_encoder(name, device=where.device, dtype=DTYPES[settings.dtype], impl=settings.impl)
    # every bucket compiled and captured before anything is timed (progress on rank 0 only)
    warmup_s = encoder.warmup(progress=not bar.disable).seconds if settings.encoder_warmup else 0.0
    if where.rank == 0:
        print(f"vitkit.bench dp N={where.world_size}: {name} warm-up {warmup_s:.1f} s", flush=True)
    steps = make_steps(encoder, settings, where.device)
    reference = encoder(steps[0].items)
    # One GPU: every policy and gather is the wrapped encoder itself; measure it once.
    policies = settings.policies if where.world_size > 1 else settings.policies[:1]
    gathers = settings.gathers if where.world_size > 1 else settings.gathers[:1]
    rows = []
    for mode, policy, gather in itertools.product(settings.modes, policies, gathers):
        bar.set_postfix_str(f"{name} {mode} {policy} {gather}")
        dp = DataParallelEncoder(encoder, policy=policy, gather=gather, timed=True)
        measured = measure_config(dp, steps, mode, settings, where)
        measured |= {"diff": max_rel_diff(dp(steps[0].items), reference), "warmup_s": warmup_s}
        per_rank = [measured]
        if where.world_size > 1:
            per_rank = [None] * where.world_size
            dist.all_gather_object(per_rank, measured)
        if where.rank == 0:
            rows.append(make_row(encoder, settings, where, mode, policy, gather, steps, per_rank))
        bar.update()
    del encoder, steps, reference
    free_memory(where.device)
    return rows


def combine(per_rank: list[list[dict[str, float]]]) -> dict[str, Any]:
    """Rank samples -> a row's figures: a step lasts until the slowest rank ends; the gather costs what
    the least-waiting rank spent in it (the most any rank spent is the wait for stragglers)."""
    def each(key: str, how) -> np.ndarray:
        return np.array([how([rank[i][key] for rank in per_rank]) for i in range(len(per_rank[0]))])

    step = each("step", max)
    encode = np.array([[rank[i]["encode"] for rank in per_rank] for i in range(len(per_rank[0]))])
    enc_balance = encode.max(axis=1) / np.maximum(encode.mean(axis=1), 1e-9) if encode.any() else np.ones(len(step))
    critical, mean = each("critical_rows", max), each("mean_rows", max)
    gather = each("gather", min)
    return {
        "step_ms_median": float(np.median(step)), "step_ms_p10": float(np.percentile(step, 10)),
        "step_ms_p90": float(np.percentile(step, 90)),
        "encode_ms_median": float(np.median(each("encode", max))),
        "gather_ms_median": float(np.median(gather)), "gather_wait_ms_median": float(np.median(each("gather", max))),
        "reorder_ms_median": float(np.median(each("reorder", max))),
        "gather_share": float(np.median(gather / step)),
        # rows on the critical path (the most-loaded rank, summed over calls) / the mean rank's
        "load_balance": float(critical.sum() / mean.sum()) if mean.sum() else 1.0,
        "encode_time_balance": float(np.median(enc_balance)),
        "encoder_calls": float(np.median(each("calls", max))), "samples": len(step),
    }


def make_row(encoder: Any, settings: DPSettings, where: Dist, mode: str, policy: str, gather: str,
             steps: list[Step], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    figures = combine([m["samples"] for m in per_rank])
    counters = {k: sum(m["counters"].get(k, 0) for m in per_rank) for k in per_rank[0]["counters"]}
    seconds = figures["step_ms_median"] / 1e3
    rows = float(np.mean([sum(item.num_tokens for item in s.items) for s in steps]))
    return {
        "world_size": where.world_size,
        "device_name": torch.cuda.get_device_name(where.device) if on_gpu(where.device) else "cpu",
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
    per_encoder = len(settings.modes) * (len(settings.policies) * len(settings.gathers) if where.world_size > 1 else 1)
    bar = tqdm(total=per_encoder * len(settings.encoders), desc=f"vitkit.bench dp N={where.world_size}",
               unit="config", disable=not progress or where.rank != 0)
    rows = [row for name in settings.encoders for row in measure_encoder(name, settings, where, bar)]
    bar.close()
    if where.rank != 0:
        return None
    head = provenance(where.device)
    nccl = torch.cuda.nccl.version() if on_gpu(where.device) else None
    return {
        "schema": files.schema("dp"), "world_size": where.world_size, "created": head["created"],
        "machine": head["machine"], "versions": head["versions"] | {
            "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl and str(nccl)},
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
        "settings": asdict(settings), "rows": rows,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-N runs merged: each row's ``speedup``/``efficiency`` against N=1 and step-time ratios."""
    for k, r in enumerate(runs):
        files.check_schema("dp", r, f"run {k}")
    rows = [dict(row) for r in sorted(runs, key=lambda r: r["world_size"]) for row in r["rows"]]

    def setup(row):
        return tuple(row[k] for k in ("device_name", "encoder", "impl", "dtype", "images", "images_per_request"))

    single = {(setup(r), r["mode"]): r for r in rows if r["world_size"] == 1}
    index = {(setup(r), r["world_size"], r["mode"], r["policy"], r["gather"]): r for r in rows}
    for r in rows:
        base = single.get((setup(r), r["mode"]))
        r["speedup"] = base["step_ms_median"] / r["step_ms_median"] if base else None
        r["efficiency"] = r["speedup"] / r["world_size"] if base else None
        key = (setup(r), r["world_size"])
        other = index.get((*key, "per_request", r["policy"], r["gather"]))
        r["batched_over_per_request"] = (other["step_ms_median"] / r["step_ms_median"]
                                         if other and r["mode"] == "batched" else None)
        rr = index.get((*key, r["mode"], "round-robin", r["gather"]))
        r["balanced_over_round_robin"] = (rr["step_ms_median"] / r["step_ms_median"]
                                          if rr and r["policy"] == "token-balanced" and r["world_size"] > 1 else None)
    merged = {"schema": files.schema("dp"), "kind": "merged",
              "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs], "rows": rows}
    return merged | {"targets": target_checks(merged)}


def target_checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets on the batched, token-balanced Qwen rows (default gather) at each N > 1."""
    checks = []
    for r in results["rows"]:
        if (r["encoder"], r["mode"], r["policy"], r["gather"]) != (TARGET_ENCODER, "batched", "token-balanced",
                                                                  DEFAULT_GATHER) or r["world_size"] == 1:
            continue
        wanted = [("speedup", ">=", TARGET_SPEEDUP.get(r["world_size"])), ("load_balance", "<=", TARGET_BALANCE),
                  ("gather_share", "<=", TARGET_GATHER_SHARE)]
        for what, op, target in wanted:
            if target is not None:
                value = r[what]
                met = None if value is None else (value >= target if op == ">=" else value <= target)
                checks.append({"where": f"N={r['world_size']} {r['device_name']}", "what": what, "value": value,
                               "op": op, "target": target, "met": met})
    return checks


def merge_folder(folder: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Merge ``folder/dp-n*.json`` into ``folder/dp.json`` (and ``dp.png``); returns the object."""
    paths = list(reversed(files.newest_first("dp", folder)))
    if not paths:
        raise ValueError(f"merge: no dp-n*.json files in {folder}")
    merged = merge([files.read("dp", p) for p in paths])
    files.write("dp", merged, Path(folder) / "dp.json")
    if plots:
        dp_scaling_figure(merged).savefig(Path(folder) / "dp.png", dpi=110)
    return merged


def format_table(results: Mapping[str, Any]) -> str:
    """A line per row, then warnings and target checks; bal / t-bal: max rank rows / time over the mean."""
    lines = table([("N", ">2", "world_size"), ("card", "<22.22", "device_name"), ("encoder", "<15.15", "encoder"),
                   ("mode", "<11", "mode"), ("policy", "<14", "policy"), ("gather", "<22", "gather"),
                   ("step ms", "8.2f", "step_ms_median"), ("img/s", "7.1f", "images_per_s"),
                   ("speedup", "7.2f", "speedup"), ("eff", "5.2f", "efficiency"), ("bal", "5.3f", "load_balance"),
                   ("t-bal", "5.3f", "encode_time_balance"), ("gath ms", "7.3f", "gather_ms_median"),
                   ("gath%", "5.1f", lambda r: 100 * r["gather_share"]),
                   ("pad%", "5.1f", lambda r: None if r.get("padding_waste") is None else 100 * r["padding_waste"]),
                   ("b/pr", "5.2f", "batched_over_per_request"), ("tb/rr", "5.2f", "balanced_over_round_robin")],
                  results["rows"], rule=True)
    for r in results["rows"]:
        which = f"WARNING N={r['world_size']} {r['encoder']} {r['mode']} {r['policy']} {r['gather']}: "
        diff = r.get("max_rel_diff_vs_single")
        if diff is not None and diff > DIFF_WARNING:
            lines.append(f"{which}DP rows differ from the single-GPU rows by {diff:.3g} (max rel; "
                         f"expected < {DIFF_WARNING})")
        if r.get("compiles_during_timing") or r.get("captures_during_timing"):
            lines.append(f"{which}{r.get('compiles_during_timing') or 0} compiles / "
                         f"{r.get('captures_during_timing') or 0} captures while timing (expected 0 after warm-up): "
                         "the times include them")
    for c in results.get("targets", []):
        state = {True: "met", False: "MISSED", None: "no N=1 run"}[c["met"]]
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        lines.append(f"target {c['where']}: {c['what']} {value} {c['op']} {c['target']}: {state}")
    return "\n".join(lines)


# Notebook 02's scaling panel (``vitkit.viz``).
POLICY_COLORS = {"token-balanced": "tab:blue", "round-robin": "tab:orange", "contiguous": "tab:green"}
# Efficiency (speedup / N) is the distance of the speedup from the ideal line, drawn in the first panel.
PANELS = (("speedup", "speedup vs 1 GPU (x)"), ("images_per_s", "images/s"),
          ("batched_over_per_request", "batched / per-request (x)"), ("load_balance", "load balance (max rank rows / mean)"))


def load_dp_results(path: str | Path) -> dict[str, Any]:
    """A merged ``dp.json`` (``python -m vitkit.bench dp --merge DIR`` writes it)."""
    data = files.read("dp", path)
    if "rows" not in data:
        raise ValueError(f"{path}: not a data-parallel results file (no 'rows')")
    return data


def stored_dp_results(path: str | Path = STORED_DP) -> dict[str, Any] | None:
    """The stored merged results, or None when none are stored yet (the notebook says so)."""
    return load_dp_results(path) if Path(path).is_file() else None


def scaling_series(rows: Sequence[Mapping[str, Any]], encoder: str,
                   gather: str = DEFAULT_GATHER) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """(policy, mode) -> rows of ``encoder`` by N, each starting at the N=1 row; N > 1 with ``gather``."""
    ones = [r for r in rows if r["encoder"] == encoder and r["world_size"] == 1]
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["encoder"] == encoder and r["world_size"] > 1 and r["gather"] == gather:
            series.setdefault((r["policy"], r["mode"]), []).append(r)
    for (policy, mode), group in series.items():
        group.extend(r for r in ones if r["mode"] == mode)
        group.sort(key=lambda r: r["world_size"])
    return series


def dp_scaling_figure(results: Mapping[str, Any], encoder: str | None = None,
                      gather: str = DEFAULT_GATHER) -> Figure:
    """``PANELS`` against N: a 2x2 grid for one ``encoder``, else a row per tower; a line per policy (colour) and
    mode (style), one legend under the panels."""
    rows = results["rows"]
    if not rows:
        raise ValueError("dp_scaling_figure: the results have no rows")
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    if encoder is not None and encoder not in encoders:
        raise ValueError(f"dp_scaling_figure: no rows for encoder {encoder!r}; the results have {encoders}")
    shown = [encoder] if encoder else encoders
    shape = (2, 2) if encoder else (len(shown), len(PANELS))
    fig = Figure(figsize=(10, 6.5) if encoder else (4.0 * len(PANELS), 3.4 * len(shown)), layout="constrained")
    grids = fig.subplots(*shape, squeeze=False).reshape(len(shown), len(PANELS))
    ns = sorted({r["world_size"] for r in rows})
    for ax_row, name in zip(grids, shown):
        _scaling_panels(ax_row, scaling_series(rows, name, gather), ns, name)
    handles, labels = grids[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9, frameon=False)
    cards = sorted({r["device_name"] for r in rows})
    smoke = " [CPU SMOKE: not a GPU measurement]" if "cpu" in cards else ""
    fig.suptitle(f"data-parallel encoder{': ' + encoder if encoder else ''}, {rows[0]['images']} images a step, "
                 f"gather {gather}: {', '.join(cards)}{smoke}")
    return fig


def _scaling_panels(axes, series: Mapping[tuple[str, str], list[Mapping[str, Any]]], ns: list[int], name: str) -> None:
    for (policy, mode), group in series.items():
        xs = [r["world_size"] for r in group]
        for ax, (key, _) in zip(axes, PANELS):
            ys = [r.get(key) for r in group]
            if any(y is None for y in ys):
                continue  # no N=1 run: no speedup to draw
            ax.plot(xs, ys, color=POLICY_COLORS.get(policy, "gray"), label=f"{policy}, {mode.replace('_', '-')}",
                    **MODE_STYLE.get(mode, {}))
    axes[0].plot(ns, ns, color="black", linewidth=0.8, linestyle=":", label="ideal (N x)")
    for ax, (_, label) in zip(axes, PANELS):
        ax.set_title(name, fontsize=9)
        ax.set(xlabel="GPUs (N)", ylabel=label, xticks=ns)
        ax.grid(True, alpha=0.3)


def dp_table_rows(results: Mapping[str, Any], encoder: str | None = None) -> list[dict[str, Any]]:
    """Rows for ``vitkit.viz.show_table`` (of one ``encoder``, or all): N, tower, mode, policy, gather and the
    figures, rounded to what a reader compares."""
    keys = {"world_size": "N", "encoder": "tower", "mode": "mode", "policy": "policy", "gather": "gather",
            "step_ms_median": "step ms", "images_per_s": "images/s", "speedup": "speedup", "efficiency": "efficiency",
            "load_balance": "load balance", "gather_share": "gather share",
            "batched_over_per_request": "batched / per-request"}
    return [{label: _rounded(r.get(key)) for key, label in keys.items()}
            for r in results["rows"] if encoder is None or r["encoder"] == encoder]


def _rounded(value: Any) -> Any:
    return round(value, 3 if abs(value) < 10 else 1) if isinstance(value, float) else value


def build_parser() -> argparse.ArgumentParser:
    p = parser("dp", __doc__, "device", "out", "no-plots", "no-progress", "steps", "repeats", "warmup",
               steps=dict(help="distinct steps, cycled (default 4; CPU 2)"),
               repeats=dict(help="timed passes over the steps (default 5; CPU 2)"),
               warmup=dict(default=1, help="untimed passes per configuration (default 1)"))
    p.add_argument("--merge", type=Path, metavar="DIR", help="only merge the dp-n*.json in DIR into dp.json + dp.png")
    p.add_argument("--encoders", type=list_of(str), help=f"presets (default GPU {GPU_ENCODERS}, CPU {CPU_ENCODERS})")
    p.add_argument("--images", type=int, help="images per step (default 32; CPU 8)")
    p.add_argument("--images-per-request", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--modes", type=list_of(str), default=MODES, help=f"subset of {MODES}")
    p.add_argument("--policies", type=list_of(str), default=POLICIES, help=f"subset of {POLICIES}")
    p.add_argument("--gathers", type=list_of(str), default=GATHERS, help=f"subset of {GATHERS}")
    p.add_argument("--impl", default="vitkit", help="vitkit, vitkit-eager or stock (default vitkit)")
    p.add_argument("--no-encoder-warmup", action="store_true",
                   help="skip encoder.warmup(): the untimed passes capture only the buckets used (faster start)")
    return p


def settings_from_args(args: argparse.Namespace) -> DPSettings:
    """The run's settings, device defaults for options left out (``--images 0`` is refused, not defaulted)."""
    gpu = on_gpu(device := resolve_device(args.device))

    def given(value: Any, gpu_default: Any, cpu_default: Any) -> Any:
        return (gpu_default if gpu else cpu_default) if value is None else value

    return DPSettings(
        encoders=tuple(given(args.encoders, GPU_ENCODERS, CPU_ENCODERS)), images=given(args.images, 32, 8),
        images_per_request=args.images_per_request, steps=given(args.steps, 4, 2),
        modes=tuple(args.modes), policies=tuple(args.policies), gathers=tuple(args.gathers),
        repeats=given(args.repeats, 5, 2), warmup=args.warmup, impl=args.impl,
        dtype=default_dtype(device), device=device, encoder_warmup=not args.no_encoder_warmup,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.merge is not None:
        print(format_table(merge_folder(args.merge, plots=not args.no_plots)))
        return 0
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        p.error(str(err))
    where = init_distributed(torch.device(settings.device).type)
    try:
        data = run(settings, where, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if data is None:
        return 0
    folder = args.out or files.results_folder(data["machine"]["slug"]) / "dp"
    print(f"wrote {files.write('dp', data, folder / f'dp-n{where.world_size}.json')}")
    print(format_table(merge_folder(folder, plots=not args.no_plots)))
    return 0
