"""What every benchmark shares: device, machine and versions recorded, a matmul peak, timing, the
steps it builds, its tables and command-line options. GPU work is timed with CUDA events (no sync
inside the timed region: it would add its own latency), CPU work with ``perf_counter``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from vitkit.cache import EmbeddingCache, embedding_row_bytes
from vitkit.checks import non_negative_int, positive_int
from vitkit.costs import results
from vitkit.embed import embed_chunks
from vitkit.item import MultimodalItem
from vitkit.request import Request
from vitkit.span import Span

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GIT_COMMIT_ENV = "VITKIT_GIT_COMMIT"
_COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")


def resolve_device(device: torch.device | str | None = None) -> str:
    """``device``, or "cuda" when torch sees a GPU, else "cpu"; ValueError for CUDA without a GPU."""
    name = str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return name


def on_gpu(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def default_dtype(device: torch.device | str) -> str:
    """"bf16" on a GPU (what serving runs), "fp32" on CPU (bf16 matmuls are slow there)."""
    return "bf16" if on_gpu(device) else "fp32"


def check_dtype(dtype: str, where: str = "dtype") -> None:
    if dtype not in DTYPES:
        raise ValueError(f"{where} must be one of {sorted(DTYPES)}, got {dtype!r}")


def device_slug(name: str) -> str:
    """Folder-safe short name of a device: "NVIDIA A100-SXM4-40GB" -> "a100", "cpu" -> "cpu" (decided in
    ``vitkit.costs.results.card_slug``, where the models' folder is chosen by the same name)."""
    return results.card_slug(name)


def _run(*cmd: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when present (torch does not expose it)."""
    exe = shutil.which("nvidia-smi")
    out = exe and _run(exe, "--query-gpu=driver_version", "--format=csv,noheader")
    lines = out.stdout.strip().splitlines() if out else []
    return lines[0].strip() if out and out.returncode == 0 and lines else None


def machine_info(device: torch.device | str | None = None) -> dict:
    """Device name, memory, capability and driver (GPU), or the CPU model and core count."""
    device = torch.device(resolve_device(device))
    # no host name: these files are committed
    info = {"device_type": device.type, "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"device_name": props.name, "device_memory_bytes": props.total_memory,
                 "cuda_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                 "driver_version": _driver_version()}
    else:
        info |= {"device_name": "cpu", "device_memory_bytes": None, "cuda_capability": None, "driver_version": None}
    info["slug"] = device_slug(info["device_name"])
    return info


def versions() -> dict:
    """The stack's versions; ``vitkit_git`` from ``$VITKIT_GIT_COMMIT`` (a copied tree's ``.git`` may not be
    its own) or the checkout, ``vitkit_git_source`` saying which."""
    commit, source = os.environ.get(GIT_COMMIT_ENV, "").strip().lower(), "env"
    if commit and not _COMMIT.fullmatch(commit):
        raise ValueError(f"{GIT_COMMIT_ENV} must be a git commit (7-40 hex digits, optional -dirty), got {commit!r}")
    if not commit:
        commit = _git_commit()
        source = commit and "git"
    try:
        vitkit = version("vitkit")
    except PackageNotFoundError:
        vitkit = "unknown"
    return {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__, "vitkit": vitkit, "vitkit_git": commit,
        "vitkit_git_source": source,
    }


def _git_commit() -> str | None:
    """The checkout's commit (with "-dirty" if files differ), or None outside a git checkout."""
    root = __file__.rsplit("/vitkit/", 1)[0]
    head = _run("git", "-C", root, "rev-parse", "HEAD")
    dirty = _run("git", "-C", root, "status", "--porcelain", "--untracked-files=no")
    if head is None or dirty is None or head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: torch.device | str, kind: str | None = None) -> dict[str, Any]:
    """``kind`` (default by device), ``created`` (ISO 8601, UTC), ``machine``, ``versions``."""
    kind = kind or ("gpu" if on_gpu(device) else "cpu-smoke")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"kind": kind, "created": created, "machine": machine_info(device), "versions": versions()}


def run_card(device: str | torch.device, kind: str) -> str:
    """The folder name a run's results go under: the card's slug, or "cpu-smoke" for a smoke run."""
    if kind == "cpu-smoke":
        return "cpu-smoke"
    return results.card_slug(torch.cuda.get_device_name(torch.device(device)))


def save_tower_figures(path: Path, data: Mapping[str, Any], presets: Sequence[str],
                       figure: Callable[[Mapping[str, Any], str], Any]) -> None:
    """``figure(data, preset)`` for each tower, as ``<path's stem>-<preset>.png`` beside the results file."""
    for preset in presets:
        png = path.with_name(f"{path.stem}-{preset}.png")
        figure(data, preset).savefig(png, dpi=110)
        print(f"wrote {png}")


def out_for(out: str | Path | None, device: str | torch.device, kind: str) -> Path:
    """The folder a run writes to, decided before it runs: ``out``, or its card's ``results/<card>/``;
    ``results.Refused`` when that folder holds another card's results or is named for another card."""
    card = run_card(device, kind)
    folder = Path(out) if out is not None else results.results_folder(card)
    results.check_out(folder, card)
    return folder


def free_memory(device: torch.device | str) -> None:
    """Drop what the last measurement left: Python garbage and the CUDA caching allocator's blocks."""
    gc.collect()
    if on_gpu(device):
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated timings, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def timing_stats(samples_ms: Sequence[float]) -> TimingStats:
    """Median, 10th/90th percentile (linear interpolation), mean, min and max of ``samples_ms``."""
    if len(samples_ms) == 0:
        raise ValueError("timing_stats needs at least one timing sample, got none")
    x = np.asarray(samples_ms, dtype=float)
    p10, median, p90 = np.percentile(x, [10, 50, 90])
    return TimingStats(float(median), float(p10), float(p90), float(x.mean()), float(x.min()), float(x.max()), len(x))


class Stopwatch:
    """GPU ms between ``start`` and ``stop`` (or a ``with`` block) from two CUDA events, launch gaps
    included (perf_counter on CPU); ``elapsed_ms`` synchronises once."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = on_gpu(device)
        self._start: Any = None
        self._stop: Any = None

    def start(self) -> None:
        self._start = self._mark()

    def stop(self) -> None:
        self._stop = self._mark()

    def __enter__(self) -> Stopwatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self) -> float:
        if self._start is None or self._stop is None:
            raise ValueError("Stopwatch.elapsed_ms called before start() and stop()")
        if self.cuda:
            self._stop.synchronize()
            return float(self._start.elapsed_time(self._stop))
        return (self._stop - self._start) * 1e3


def synchronize(device: torch.device | str) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(device)


def time_callable(fn: Callable[[], Any], *, device: torch.device | str, warmup: int = 3,
                  repeats: int = 10) -> TimingStats:
    """Run ``fn`` ``warmup`` times untimed, then time ``repeats`` calls one by one."""
    non_negative_int("time_callable warmup", warmup)
    positive_int("time_callable repeats", repeats)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        with Stopwatch(device) as watch:
            fn()
        samples.append(watch.elapsed_ms())
    return timing_stats(samples)


@dataclass(frozen=True)
class MatmulPeak:
    """Measured dense matmul rate: median over timed repeats of an ``n x n @ n x n`` product."""

    tflops: float  # TFLOP/s, 2 FLOPs per multiply-add
    n: int
    dtype: str
    repeats: int
    device: str
    label: str  # "cuda-bf16" or "cpu-float32": a CPU figure is no GPU peak


def measure_matmul_peak(device: torch.device | str | None = None, *, n: int | None = None,
                        repeats: int = 30) -> MatmulPeak:
    """Median rate of a dense matmul: bf16 8192^3 on a GPU, float32 1024^3 on CPU (label "cpu-float32")."""
    device = torch.device(resolve_device(device))
    gpu = on_gpu(device)
    n = n or (8192 if gpu else 1024)
    dtype = torch.bfloat16 if gpu else torch.float32
    a, b, out = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))
    stats = time_callable(lambda: torch.mm(a, b, out=out), device=device, warmup=max(3, repeats // 3), repeats=repeats)
    name = str(dtype).removeprefix("torch.")
    return MatmulPeak(tflops=2 * n**3 / (stats.median_ms * 1e-3) / 1e12, n=n, dtype=name, repeats=repeats,
                      device=str(device), label=f"{device.type}-{name.replace('bfloat16', 'bf16')}")


class EventTimedEncoder:
    """An encoder whose calls are each timed by a Stopwatch (``encoder_ms``); attributes pass through."""

    def __init__(self, encoder: Callable[[list], Sequence[torch.Tensor]], device: torch.device | str) -> None:
        self.encoder = encoder
        self.device = torch.device(device)
        self._watches: list[Stopwatch] = []

    def __call__(self, items: list) -> Sequence[torch.Tensor]:
        with Stopwatch(self.device) as watch:
            out = self.encoder(items)
        self._watches.append(watch)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def reset(self) -> None:
        self._watches = []

    def encoder_ms(self) -> float:
        """Sum of the encoder calls' times since the last ``reset`` (synchronises)."""
        return sum(w.elapsed_ms() for w in self._watches)


def timed_step(batch: Sequence[tuple[Request, Span]], encoder: Any, cache: EmbeddingCache, mode: str,
               device: torch.device | str, **kwargs: Any) -> tuple[Any, Stopwatch]:
    """One ``embed_chunks`` step timed after a sync (``check_finite`` off: it syncs); (result, watch)."""
    synchronize(device)
    with Stopwatch(device) as watch:
        result = embed_chunks(batch, encoder, cache, mode=mode, check_finite=False, **kwargs)
    return result, watch


def layout_batch(groups: Iterable[Sequence[MultimodalItem]], text_tokens: int = 8,
                 name: str = "req") -> list[tuple[Request, Span]]:
    """A step of one request per group of items (text, image, ..., text), a window over each prompt."""
    batch = []
    for r, items in enumerate(groups):
        segments: list[int | MultimodalItem] = [text_tokens]
        for item in items:
            segments += [item, text_tokens]
        request = Request.from_segments(f"{name}{r}", segments)
        batch.append((request, Span(0, request.prompt_len)))
    return batch


def roomy_cache(items: Iterable[MultimodalItem], encoder: Any, copies: int = 1) -> EmbeddingCache:
    """A cache with room for ``copies`` of every embedding: benches measure batching, not eviction."""
    row_bytes = embedding_row_bytes(encoder.hidden_size, encoder.dtype)
    return EmbeddingCache(copies * row_bytes * sum(item.num_tokens for item in items) + 1)


def table(columns: Sequence[tuple[str, str, Any]], rows: Iterable[Any], *, rule: bool = False) -> list[str]:
    """Fixed-width lines: header (and rule), a line per row. ``columns``: (title, format spec, the row's key,
    attribute or a function of it); None prints "-"."""
    widths = [int(re.match(r"[<>^]?[+\- ]?(\d*)", spec).group(1) or 0) for _, spec, _ in columns]
    head = " ".join(f"{title:{'<' if spec[:1] == '<' else '>'}{w}}" for (title, spec, _), w in zip(columns, widths))
    lines = [head, "-" * len(head)] if rule else [head]
    for row in rows:
        cells = []
        for (_, spec, get), w in zip(columns, widths):
            value = get(row) if callable(get) else row.get(get) if isinstance(row, Mapping) else getattr(row, get)
            cells.append("-".rjust(w) if value is None else format(value, spec))
        lines.append(" ".join(cells))
    return lines


def number_arg(part: str, kind: type = int) -> Any:
    """``kind(part)``; a ValueError naming ``part`` otherwise (``list_of`` makes it argparse's message)."""
    try:
        return kind(part)
    except ValueError:
        raise ValueError(f"expected comma-separated {'integers' if kind is int else 'numbers'}, got {part!r}") from None


def positive_int_arg(part: str) -> int:
    return positive_int("each value", number_arg(part))


def list_of(parse: Callable[[str], Any], *, single: bool = False) -> Callable[[str], Any]:
    """An argparse type: comma-separated values each through ``parse`` (``single``: one value, so "2,3"
    is an error, not 2); a ValueError becomes argparse's error message."""
    def parse_text(text: str) -> Any:
        try:
            return parse(text) if single else [parse(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) if single else f"{err} (in {text!r})") from None
    return parse_text


def int_range(text: str) -> tuple[int, int]:
    """An argparse type: ``LOW-HIGH`` with 0 < LOW <= HIGH (ints)."""
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH integers, got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return lo, hi


# The options several jobs share, by name; a job may change one's settings (``parser``).
OPTIONS: dict[str, dict[str, Any]] = {
    "device": dict(help="cuda or cpu (default: cuda when available)"),
    "dtype": dict(choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU"),
    "out": dict(type=Path, help="output folder (default results/<device-slug>/)"),
    "no-plots": dict(action="store_true", help="write the JSON only"),
    "no-progress": dict(action="store_true", help="hide the progress bar"),
    "smoke": dict(action="store_true", help="tiny model on CPU, float32: checks the plumbing"),
    "seed": dict(type=int, default=0),
    "steps": dict(type=int),
    "repeats": dict(type=int),
    "warmup": dict(type=int),
}


def parser(prog: str, doc: str, *options: str, **changes: dict[str, Any]) -> argparse.ArgumentParser:
    """A job's parser: ``doc``'s first paragraph, the rest as epilog, the shared ``options`` changed by
    ``changes`` (keyed by dest)."""
    intro, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(prog=f"python -m vitkit.bench {prog}", description=intro, epilog=rest or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in options:
        p.add_argument(f"--{name}", **OPTIONS[name] | changes.get(name.replace("-", "_"), {}))
    return p


RUN_OPTIONS = ("device", "dtype", "out", "no-plots", "no-progress")  # every measuring job's
