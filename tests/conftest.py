"""Shared test set-up (offline Hugging Face, a headless matplotlib, artefact folder, GPU skips)
and the helpers several test modules use: items, the reference encoder, cache state, bench rows."""

from __future__ import annotations

import os

# Nothing may be downloaded at test time, and no test may open a window. Set before anything
# imports huggingface_hub or matplotlib (vitkit does), which read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from collections.abc import Hashable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from vitkit import EmbeddingCache, MultimodalItem  # noqa: E402
from vitkit.bench.machine import device_slug  # noqa: E402
from vitkit.bench.rows import BenchRow, validate_results  # noqa: E402
from vitkit.costs.results import schema  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # gitignored; CI keeps it


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/`` at the repository root (screenshots, executed notebooks)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests cleanly when torch sees no CUDA device."""
    gpu_items = [test for test in items if test.get_closest_marker("gpu")]
    if not gpu_items or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    for test in gpu_items:
        test.add_marker(skip)


# ---------------------------------------------------------------- shared helpers
# Test modules import these (``from conftest import item``): pytest's default "prepend" import
# mode puts tests/ on sys.path, so this module is importable as ``conftest``.


def item(num_tokens: int, seed: int = 0) -> MultimodalItem:
    """A tiny image item whose content (and so hash) is fixed by ``seed``."""
    return MultimodalItem(torch.full((3,), float(seed)), num_tokens)


def reference(item: MultimodalItem, hidden: int = 4) -> torch.Tensor:
    """The embedding a deterministic encoder gives ``item``: row r, column c holds
    ``1000 * sum(feature) + 10 * r + c``, so every row of every distinct item differs and any
    re-encoding or mis-sliced row is visible."""
    base = float(item.cpu_feature.sum())
    rows = torch.arange(item.num_tokens, dtype=torch.float32).unsqueeze(1)
    return base * 1000 + rows * 10 + torch.arange(hidden, dtype=torch.float32)


def cache_state(cache: EmbeddingCache, owners: Iterable[Hashable] = ()) -> tuple:
    """Everything a failed step or a rolled-back transaction must leave as it was: the keys in
    recency order, the counters, and each owner's pins."""
    return cache.keys(), cache.stats(), {owner: cache.pinned_by(owner) for owner in owners}


def bench_row(sweep: str, mode: str, requests: int = 1, resolution: int | str = 336, step: float = 10.0,
              peak: int | None = 2**30, **fields) -> BenchRow:
    """A complete hand-made bench row of CLIP-L/336 with one image per request: ``step`` ms a
    step (p10 0.9x, p90 1.2x; 95% encoder, 5% bookkeeping), MFU 0.5, ``peak`` bytes."""
    made = dict(
        encoder="clip-l-336", mode=mode, impl="vitkit", requests=requests, images_per_request=1, images=requests,
        resolution=resolution, tokens=576 * requests, encoder_calls=1 if mode == "batched" else requests,
        step_ms_median=step, step_ms_p10=0.9 * step, step_ms_p90=1.2 * step, encoder_ms_median=0.95 * step,
        bookkeeping_ms_median=0.05 * step, images_per_s=requests / step * 1e3, tokens_per_s=576 * requests / step * 1e3,
        peak_mem_bytes=peak, model_flops=int(3.5e11) * requests, mfu=0.5, sweep=sweep, bookkeeping_share=0.05,
        call_tokens=(576 * requests,), base_mem_bytes=None if peak is None else peak // 2, out_bytes_per_token=2048,
    )
    return BenchRow(**made | fields)


def fake_bench_results(kind: str = "gpu", device: str = "NVIDIA H100 80GB HBM3") -> dict:
    """A small valid ``vitkit.bench/1`` results object: a CLIP batch sweep (1..64 requests,
    batched 5 + n ms, per-request 5n ms), a Qwen-style resolution sweep, and (GPU only) a
    memory model over three token budgets."""
    rows = []
    for n in (1, 4, 16, 64):
        rows.append(bench_row("clip-batch", "batched", requests=n, step=5.0 + n))
        rows.append(bench_row("clip-batch", "per_request", requests=n, step=5.0 * n))
    for side in (224, 448, "mixed"):
        for mode, step in (("batched", 20.0), ("per_request", 30.0)):
            rows.append(bench_row("qwen-resolution", mode, requests=8, resolution=side, step=step, encoder="qwen2.5-vl-7b"))
    results = {
        "schema": schema("bench"), "kind": kind, "created": "2026-11-26T00:00:00+00:00",
        "machine": {"device_name": device, "slug": device_slug(device)},
        "versions": {"torch": "2.11", "transformers": "5.17.0"}, "settings": {},
        "matmul_peak": {"tflops": 780.0, "label": "cuda-bf16"}, "rows": rows,
        "memory_model": [
            {"encoder": "qwen2.5-vl-7b", "impl": "vitkit", "mode": "batched", "max_tokens_per_call": b,
             "max_call_tokens": b, "calibration": b == 4096, "predicted_peak_bytes": 2**30 + b * 2**18,
             "measured_peak_bytes": 2**30 + b * 2**18 + 2**24, "error": 0.01, "step_error": 0.05}
            for b in (512, 1024, 4096)
        ] if kind == "gpu" else [],
    }
    validate_results(results)
    return results


@pytest.fixture(name="fake_bench_results")
def fake_bench_results_factory():
    """``fake_bench_results`` as a fixture, for tests that take it as an argument."""
    return fake_bench_results


class OnlyAlone:
    """An admission that grants a running request's window only while it runs alone, and a waiting one's
    only when nothing runs: two running requests deadlock, so the scheduler must preempt."""

    def __init__(self):
        self.running, self.preempted, self.unblocks = {}, [], 0

    def check(self, rid):
        pass

    def begin_step(self, aborted=(), progress=None):
        self.running = dict(progress or {})

    def grant(self, rid, start, stop):
        if rid in self.running:
            return stop if len(self.running) == 1 else start
        return start if self.running else stop

    def unblock(self):
        self.unblocks += 1
        return False

    def preempt(self, rid):
        self.preempted.append(rid)


class CountingGraphs:
    """Stands in for an encoder's graph cache off CUDA: counts captures (one per new bucket), runs eagerly."""

    def __init__(self):
        self.keys, self.captures = set(), 0

    def __len__(self):
        return len(self.keys)

    def capture(self, key, fn, args):
        if key not in self.keys:
            self.keys.add(key)
            self.captures += 1

    def run(self, key, fn, args):
        self.capture(key, fn, args)
        return fn(*args)
