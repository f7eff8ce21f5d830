"""Shared test set-up: offline Hugging Face, a headless matplotlib, artefact folder, GPU skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # gitignored; CI keeps it

# Nothing may be downloaded at test time, and no test may open a window.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/`` at the repository root (screenshots, executed notebooks)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests cleanly when torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


def _bench_row(sweep, mode, encoder, requests, resolution, step_ms):
    calls = 1 if mode == "batched" else requests
    return {
        "sweep": sweep, "encoder": encoder, "mode": mode, "impl": "vitkit", "requests": requests,
        "images_per_request": 1, "images": requests, "resolution": resolution, "tokens": 576 * requests,
        "encoder_calls": calls, "step_ms_median": step_ms, "step_ms_p10": 0.9 * step_ms, "step_ms_p90": 1.1 * step_ms,
        "encoder_ms_median": 0.9 * step_ms, "bookkeeping_ms_median": 0.1 * step_ms,
        "images_per_s": requests / step_ms * 1e3, "tokens_per_s": 576 * requests / step_ms * 1e3,
        "peak_mem_bytes": 3 * 2**30, "model_flops": 10**11 * requests, "mfu": 0.4, "bookkeeping_share": 0.1,
        "hit_fraction": 0.0, "max_tokens_per_call": None,
    }


def _fake_bench_results(kind="gpu", device="NVIDIA H100 80GB HBM3"):
    """A small valid ``vitkit.bench/1`` results object: a CLIP batch sweep and a Qwen resolution sweep."""
    from vitkit.bench.results import SCHEMA, validate_results

    rows = []
    for n in (1, 8, 64):
        rows += [_bench_row("clip-batch", "batched", "clip-l-336", n, "native", 4.0 + n / 8),
                 _bench_row("clip-batch", "per_request", "clip-l-336", n, "native", 4.0 * n)]
    for side in (224, 448, "mixed"):
        rows += [_bench_row("qwen-resolution", "batched", "qwen2.5-vl-7b", 8, side, 20.0),
                 _bench_row("qwen-resolution", "per_request", "qwen2.5-vl-7b", 8, side, 50.0)]
    out = {"schema": SCHEMA, "kind": kind, "created": "2026-11-26T00:00:00+00:00",
           "machine": {"device_name": device, "slug": "h100"}, "versions": {"torch": "2.11", "transformers": "5.17.0"},
           "settings": {}, "matmul_peak": {"tflops": 780.0, "label": "cuda-bf16"}, "rows": rows,
           "memory_model": [
               {"encoder": "qwen2.5-vl-7b", "impl": "vitkit", "mode": "batched", "max_tokens_per_call": b,
                "max_call_tokens": b, "calibration": b == 4096, "predicted_peak_bytes": 2**30 + b * 2**18,
                "measured_peak_bytes": 2**30 + b * 2**18 + 2**24, "error": 0.01, "step_error": 0.05}
               for b in (512, 4096)
           ] if kind == "gpu" else []}
    validate_results(out)
    return out


@pytest.fixture
def fake_bench_results():
    """Factory ``(kind="gpu", device=...) -> results`` of a small valid bench results object."""
    return _fake_bench_results
