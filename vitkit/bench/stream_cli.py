"""``python -m vitkit.bench --sweep stream``: a stream of changing layouts through every impl.

Examples::

    python -m vitkit.bench --sweep stream                          # GPU: Qwen2.5-VL and CLIP-L/336 streams
    python -m vitkit.bench --sweep stream --encoder qwen2.5-vl-7b --steps 200 --images-per-step 1-8 --sides 224-1344
    python -m vitkit.bench --sweep stream --encoder clip-l-336 --images-per-step 1-64 --buckets 1,2,4,8,16,32,64

Without a GPU it runs the tiny towers on short streams (a smoke run, labelled "cpu-smoke").
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import torch

from vitkit.bench.args import int_range, list_of, positive_int_arg
from vitkit.bench.machine import default_dtype, resolve_device
from vitkit.bench.stream import StreamSpec
from vitkit.bench.stream_plot import save_stream_figure
from vitkit.bench.stream_run import DTYPES, StreamSettings, format_stream_table, run_stream, write_stream_results

# Each tower's stream on a GPU (the regime) and its CPU smoke twin.
GPU_STREAMS = {
    "qwen2.5-vl-7b": dict(images_per_step=(1, 8), images_per_request=(1, 4), sides=(224, 1344)),
    "clip-l-336": dict(images_per_step=(1, 64), images_per_request=(1, 4)),
}
CPU_STREAMS = {
    "qwen2.5-vl-tiny": dict(steps=12, images_per_step=(1, 6), images_per_request=(1, 3), sides=(56, 224)),
    "clip-tiny": dict(steps=12, images_per_step=(1, 16), images_per_request=(1, 4)),
}


def build_parser() -> argparse.ArgumentParser:
    intro, examples = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m vitkit.bench --sweep stream", description=intro, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", choices=["stream"], default="stream")
    p.add_argument("--encoder", action="append", help="tower preset (repeatable; default: both GPU streams)")
    p.add_argument("--steps", type=int, help="steps in the stream (default 200 GPU, 12 CPU)")
    p.add_argument("--images-per-step", type=int_range, help="LOW-HIGH images a step")
    p.add_argument("--images-per-request", type=int_range, help="LOW-HIGH images a request")
    p.add_argument("--sides", type=int_range, help="LOW-HIGH image side in px (variable-resolution towers)")
    p.add_argument("--hit-fraction", type=float, help="chance an image repeats a recent one (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--buckets", type=list_of(positive_int_arg),
                   help="bucket sizes for impl vitkit (patches for Qwen, images otherwise)")
    p.add_argument("--impl", default="vitkit,vitkit-eager,stock", help="comma-separated impls")
    p.add_argument("--cold-steps", type=int, default=40, help="steps timed cold, in a fresh process on a GPU (default 40)")
    p.add_argument("--dtype", choices=sorted(DTYPES))
    p.add_argument("--device")
    p.add_argument("--out", type=Path, help="output folder (default results/<device-slug>/)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def specs_from_args(args: argparse.Namespace, on_gpu: bool) -> list[StreamSpec]:
    table = GPU_STREAMS if on_gpu else CPU_STREAMS
    specs = []
    for name in args.encoder or list(table):
        base = dict(table.get(name, {}))
        for key in ("steps", "images_per_step", "images_per_request", "sides", "hit_fraction"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
        specs.append(StreamSpec(name, seed=args.seed, **base))
    return specs


def settings_from_args(args: argparse.Namespace) -> tuple[list[StreamSpec], StreamSettings]:
    """Resolve defaults that depend on the device (``vitkit.bench.machine``, as ``python -m
    vitkit.bench`` does): the streams, and how they are measured."""
    device = resolve_device(args.device)
    on_gpu = torch.device(device).type == "cuda"
    settings = StreamSettings(device=device, dtype=args.dtype or default_dtype(device),
                              impls=tuple(args.impl.split(",")), cold_steps=args.cold_steps,
                              buckets=None if args.buckets is None else tuple(args.buckets),
                              kind="gpu" if on_gpu else "cpu-smoke")
    return specs_from_args(args, on_gpu), settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        specs, settings = settings_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    for spec in specs:
        print(f"vitkit.bench stream: {spec.encoder}, {spec.steps} steps, impls {settings.impls} on {settings.device}",
              flush=True)
        results = run_stream(spec, settings, progress=not args.no_progress)
        folder = args.out or Path("results") / (results["machine"]["slug"] if settings.kind == "gpu" else "cpu-smoke")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = write_stream_results(results, folder / f"stream-{spec.encoder}-{stamp}.json")
        print(f"wrote {path}")
        if not args.no_plots:
            print(f"wrote {save_stream_figure(results, path.with_suffix('.png'))}")
        print(format_stream_table(results), flush=True)
    return 0
