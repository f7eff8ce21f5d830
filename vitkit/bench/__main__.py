"""``python -m vitkit.bench <job> [options]``: the one entry of the benchmarks (``make bench`` too);
``<job> -h`` lists a job's options. Without a job the sweep runs; the older ``--sweep stream`` and
``--sweep dp`` pick those jobs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

JOBS = {  # job -> (module, its entry function, what it measures)
    "sweep": ("vitkit.bench.sweep", "main", "both modes of embed_chunks over named sweeps of step shapes"),
    "stream": ("vitkit.bench.stream", "main", "a seeded stream of changing layouts through every impl"),
    "buckets": ("vitkit.bench.stream", "buckets_main", "padding waste of candidate bucket sets on the streams (CPU)"),
    "dp": ("vitkit.bench.dp", "main", "the encoder across N GPUs, under torchrun (--merge DIR re-merges)"),
    "prefill": ("vitkit.bench.prefill", "main", "the language model's chunked prefill over a grid of steps"),
    "encoder-costs": ("vitkit.bench.encoder_costs", "main", "the bucketed encoder's graph replays and serving calls"),
    "calibrate": ("vitkit.bench.calibrate", "main", "the attached card's cost models measured, validated, summarised"),
    "validate": ("vitkit.bench.validate", "main", "the simulator's modelled TTFT against a measured replay"),
    "errors": ("vitkit.bench.errors", "main", "per-call model errors of stored validations and their p99 bands (CPU)"),
    "bookkeeping": ("vitkit.bench.bookkeeping", "main", "content hashing and embed_chunks' bookkeeping, on CPU"),
    "crossover": ("vitkit.bench.crossover", "main", "CUDA graphs against cross-request batching, by resolution"),
    "video": ("vitkit.bench.video", "main", "video encoding: throughput and peak memory by frames, whole or frame groups"),
}


def job_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with its job first: "sweep" before a leading option, "stream" / "dp" for ``--sweep stream|dp``."""
    argv = list(argv)
    if argv[:1] and (argv[0] in JOBS or not argv[0].startswith("-") or argv[0] in ("-h", "--help")):
        return argv
    for k, arg in enumerate(argv):
        for job in ("stream", "dp"):
            if arg == f"--sweep={job}":
                return [job, *argv[:k], *argv[k + 1:]]
            if arg == "--sweep" and argv[k + 1:k + 2] == [job]:
                return [job, *argv[:k], *argv[k + 2:]]
    return ["sweep", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = job_argv(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m vitkit.bench",
                                description="Run one benchmark job; python -m vitkit.bench JOB -h lists its options.")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    for name, (_, _, what) in JOBS.items():
        jobs.add_parser(name, help=what, add_help=False)
    module, entry, _ = JOBS[p.parse_args(argv[:1]).job]  # the job's own parser reads the rest
    return getattr(importlib.import_module(module), entry)(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
