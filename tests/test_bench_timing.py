"""Timing summaries, the encoder/bookkeeping split, the memory model and machine info."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from conftest import bench_row
from vitkit.bench.machine import (EventTimedEncoder, Stopwatch, device_slug, machine_info, measure_matmul_peak,
                                  time_callable, timing_stats, versions)
from vitkit.bench.sweep import RunSettings, _repeats_for, calibrate, memory_report, predict_peak


def test_summarize_percentiles():
    stats = timing_stats([float(x) for x in range(1, 12)])  # 1..11
    assert (stats.median_ms, stats.p10_ms, stats.p90_ms) == (6.0, 2.0, 10.0)
    assert stats.min_ms == 1.0 and stats.max_ms == 11.0 and stats.repeats == 11
    with pytest.raises(ValueError, match="at least one"):
        timing_stats([])


def test_time_callable_counts_warmup_and_repeats():
    calls = []
    stats = time_callable(lambda: calls.append(time.sleep(0.002)), device="cpu", warmup=2, repeats=3)
    assert len(calls) == 5 and stats.repeats == 3 and stats.median_ms >= 1.5
    with pytest.raises(ValueError, match="repeats must be a positive int, got 0"):
        time_callable(lambda: None, device="cpu", repeats=0)


def test_timed_encoder_separates_encoder_time_and_passes_attributes():
    class Slow:
        name = "slow"

        def __call__(self, items):
            time.sleep(0.01)
            return [torch.zeros(1, 2) for _ in items]

    timed = EventTimedEncoder(Slow(), "cpu")
    step = Stopwatch("cpu")
    step.start()
    timed([1, 2])
    time.sleep(0.01)  # "bookkeeping" outside the encoder
    timed([3])
    step.stop()
    assert timed.name == "slow"
    assert 18 <= timed.encoder_ms() < step.elapsed_ms()
    assert step.elapsed_ms() - timed.encoder_ms() >= 9
    timed.reset()
    assert timed.encoder_ms() == 0
    with pytest.raises(ValueError, match="before start"):
        Stopwatch("cpu").elapsed_ms()


def test_repeats_fit_the_time_budget():
    settings = RunSettings(repeats=10, min_repeats=3, seconds_per_mode=1.0)
    assert _repeats_for(settings, step_ms=10.0) == 10
    assert _repeats_for(settings, step_ms=200.0) == 5
    assert _repeats_for(settings, step_ms=5000.0) == 3


@pytest.mark.parametrize("field, message", [
    ({"repeats": 0}, "repeats must be a positive int, got 0"),
    ({"dtype": "int4"}, "dtype must be one of"),
    ({"warmup": -1}, "warmup must be a non-negative int, got -1"),
    ({"min_repeats": True}, "min_repeats must be a positive int, got True"),
    ({"seconds_per_mode": 0.0}, "seconds_per_mode must be a finite number > 0"),
    ({"impls": ()}, "impls is empty"),
])
def test_bad_run_settings_name_the_field(field, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**field)


def mem_row(budget, calls, act=1000, out=10, base=10**6, mode="batched"):
    during = max(out * sum(calls[:k]) + act * rows for k, rows in enumerate(calls))
    return bench_row("token-budget", mode, requests=4, resolution=448, encoder="e", max_tokens_per_call=budget,
                     call_tokens=tuple(calls), step_rows=sum(calls), base_mem_bytes=base, out_bytes_per_token=out,
                     peak=base + max(during, 3 * out * sum(calls)))


def test_memory_model_recovers_a_linear_law():
    rows = [mem_row(100, [100] * 4), mem_row(200, [200, 200]), mem_row(None, [400])]
    rows += [mem_row(b, [400], mode="per_request") for b in (100, 200)]  # not modelled
    model = calibrate(rows[2])
    assert model.act_bytes_per_token == pytest.approx(1000) and model.calibrated_max_call_tokens == 400
    assert predict_peak(model, rows[0]) == rows[0].peak_mem_bytes
    report = memory_report(rows)
    assert [e["max_tokens_per_call"] for e in report] == [100, 200, None]
    assert [e["calibration"] for e in report] == [False, False, True]
    assert all(abs(e["error"]) < 1e-12 for e in report)


def test_memory_model_end_of_step_copies_bind_for_cheap_calls():
    # Activations of 5 bytes a row are less than the 3 copies of 10-byte outputs at the end.
    rows = [mem_row(100, [100] * 4, act=5), mem_row(None, [400], act=5)]
    model = calibrate(replace(rows[1], peak_mem_bytes=rows[1].base_mem_bytes + 5 * 400))
    assert predict_peak(model, rows[0]) == rows[0].base_mem_bytes + 3 * 10 * 400


def test_memory_report_measures_the_miss():
    rows = [mem_row(100, [100] * 4), mem_row(None, [400])]
    rows[0] = replace(rows[0], peak_mem_bytes=rows[0].peak_mem_bytes + 50_000)  # 50 KB more than the law says
    (small, _) = memory_report(rows)
    assert small["error"] == pytest.approx(50_000 / (rows[0].peak_mem_bytes - 50_000))
    assert small["step_error"] > small["error"] > 0
    assert memory_report([rows[0]]) == []  # one budget alone: nothing to predict
    with pytest.raises(ValueError, match="without calls or peak memory"):
        calibrate(replace(rows[0], peak_mem_bytes=None))
    assert memory_report([replace(r, peak_mem_bytes=None) for r in rows]) == []  # CPU rows


def test_machine_info_and_versions_on_cpu():
    info = machine_info("cpu")
    assert info["device_name"] == "cpu" and info["slug"] == "cpu" and info["driver_version"] is None
    assert versions()["torch"] == torch.__version__
    peak = measure_matmul_peak("cpu", n=64, repeats=3)
    assert peak.label == "cpu-float32" and peak.tflops > 0 and peak.n == 64


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("cpu", "cpu"), ("Some Odd Card", "some-odd-card"),
])
def test_device_slug(name, slug):
    assert device_slug(name) == slug


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matmul_peak_is_plausible():
    peak = measure_matmul_peak("cuda", n=4096, repeats=10)
    assert peak.label == "cuda-bf16" and 10 < peak.tflops < 5000
    assert machine_info("cuda")["cuda_capability"]
