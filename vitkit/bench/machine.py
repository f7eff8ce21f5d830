"""The machine a benchmark ran on: device, driver, versions, and the measured matmul peak."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
import transformers

from vitkit.bench.timing import time_callable


def resolve_device(device: torch.device | str | None = None) -> str:
    """``device`` as a string, or "cuda" when torch sees a GPU, else "cpu" (every bench's default).

    ValueError when a CUDA device is asked for and torch sees none: the run would fail later, less clearly.
    """
    name = str(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return name


def default_dtype(device: torch.device | str) -> str:
    """The benches' dtype name (a ``vitkit.bench.run.DTYPES`` key) on ``device``: "bf16" on a GPU
    (what serving runs), "fp32" on CPU (where bf16 matmuls are slow and the smoke runs check numbers)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


@dataclass(frozen=True)
class MatmulPeak:
    """Measured dense matmul rate: median over timed repeats of an ``n x n @ n x n`` product."""

    tflops: float  # TFLOP/s, 2 FLOPs per multiply-add
    n: int
    dtype: str
    repeats: int
    device: str
    label: str  # "cuda-bf16" or "cpu-float32": a CPU figure is no GPU peak


def device_slug(name: str) -> str:
    """Folder-safe short name: "NVIDIA H100 80GB HBM3" -> "h100", "cpu" -> "cpu"."""
    match = re.search(r"\b([AHBL]\d{2,3}|GH\d{3}|GB\d{3}|RTX\s?\d{4})\b", name, re.IGNORECASE)
    if match:
        return match.group(1).replace(" ", "").lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when present (torch does not expose it)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def machine_info(device: torch.device | str | None = None) -> dict:
    """Device name, memory, capability and driver (GPU), or the CPU model and core count."""
    device = torch.device(resolve_device(device))
    # deliberately no host name: these files are committed
    info = {"device_type": device.type, "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "device_memory_bytes": props.total_memory,
            "cuda_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "driver_version": _driver_version(),
        }
    else:
        info |= {"device_name": "cpu", "device_memory_bytes": None, "cuda_capability": None, "driver_version": None}
    info["slug"] = device_slug(info["device_name"])
    return info


GIT_COMMIT_ENV = "VITKIT_GIT_COMMIT"
_COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")


def versions(git_commit: str | None = None) -> dict:
    """Versions of the stack that changes the numbers.

    ``vitkit_git`` is the commit measured: ``git_commit`` when given, else ``$VITKIT_GIT_COMMIT``
    when set, else the checkout's own. An explicit value wins because a copy of the working tree
    can carry a ``.git`` that is not its own: the GPU machine's copy reported the session's
    starting commit (``ebf82c2-dirty``) for a tree six commits later. ``vitkit_git_source`` says
    which one ("option", "env", "git") or is None when none was known.
    """
    commit, source = _recorded_commit(git_commit)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "vitkit": _vitkit_version(),
        "vitkit_git": commit,
        "vitkit_git_source": source,
    }


def _recorded_commit(git_commit: str | None) -> tuple[str | None, str | None]:
    """The commit to record and where it came from: an explicit one first, then the checkout."""
    for value, source, name in ((git_commit, "option", "git_commit"), (os.environ.get(GIT_COMMIT_ENV), "env", GIT_COMMIT_ENV)):
        if value:
            value = value.strip().lower()
            if not _COMMIT.fullmatch(value):
                raise ValueError(f"{name} must be a git commit (7-40 hex digits, optional -dirty), got {value!r}")
            return value, source
    found = _git_commit()
    return (found, "git") if found is not None else (None, None)


def _git_commit() -> str | None:
    """The checkout's commit (with "-dirty" if files differ), or None outside a git checkout."""
    root = __file__.rsplit("/vitkit/", 1)[0]
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _vitkit_version() -> str:
    try:
        return version("vitkit")
    except PackageNotFoundError:
        return "unknown"


def measure_matmul_peak(
    device: torch.device | str | None = None, *, n: int | None = None, repeats: int = 30
) -> MatmulPeak:
    """Median rate of a dense matmul: bf16 8192^3 timed with CUDA events on a GPU, a 1024^3
    float32 one with perf_counter on CPU (labelled "cpu-float32"; no GPU figure)."""
    device = torch.device(resolve_device(device))
    on_gpu = device.type == "cuda"
    n = n or (8192 if on_gpu else 1024)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    stats = time_callable(lambda: torch.mm(a, b, out=out), device=device, warmup=max(3, repeats // 3), repeats=repeats)
    tflops = 2 * n**3 / (stats.median_ms * 1e-3) / 1e12
    label = f"{device.type}-{str(dtype).removeprefix('torch.').replace('bfloat16', 'bf16')}"
    name = str(dtype).removeprefix("torch.")
    return MatmulPeak(tflops=tflops, n=n, dtype=name, repeats=repeats, device=str(device), label=label)


def peak_as_dict(peak: MatmulPeak) -> dict:
    return asdict(peak)
