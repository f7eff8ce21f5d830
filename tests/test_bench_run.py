"""The benchmark end to end on CPU: the smoke sweep through the CLI, its JSON file and schema,
and the runner's bookkeeping (both modes on the same requests, hit fractions, budgets, FLOPs)."""

from __future__ import annotations

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest import bench_row
from vitkit.bench.plot import save_figures
from vitkit.bench.rows import ROW_FIELDS, BenchRow, find_results, load_results, validate_results, write_results
from vitkit.bench.sweep import RunSettings, Sweep, get_sweeps, layout_requests, main, run_sweeps
from vitkit.costs.results import results_folder, schema
from vitkit.encoders.flops import items_flops
from vitkit.processing import synthetic_items

SMOKE_ARGS = ["--sweep", "cpu-smoke", "--requests", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(SMOKE_ARGS + ["--out", str(out), "--no-plots"]) == 0
    (path,) = out.glob("*.json")
    return path, load_results(path)


def test_smoke_file_follows_schema(smoke):
    path, results = smoke
    assert path.name.startswith("cpu-smoke-vitkit-fp32-")
    assert results["schema"] == schema("bench") and results["kind"] == "cpu-smoke"
    assert results["machine"]["device_name"] == "cpu"
    assert results["versions"]["torch"] == torch.__version__
    assert results["settings"]["dtype"] == "fp32" and results["settings"]["repeats"] == 1
    assert results["matmul_peak"]["label"] == "cpu-float32" and results["matmul_peak"]["tflops"] > 0
    for row in results["rows"]:
        for key, types in ROW_FIELDS.items():
            value = getattr(row, key)
            assert isinstance(value, types) and not isinstance(value, bool), (key, value)
        assert row.peak_mem_bytes is None  # not measured on CPU, and said so
        assert row.step_ms_p10 <= row.step_ms_median <= row.step_ms_p90


def test_every_point_has_both_modes_with_equal_work(smoke):
    _, results = smoke
    rows = results["rows"]
    assert len(rows) % 2 == 0
    for batched, per_request in zip(rows[::2], rows[1::2]):
        assert (batched.mode, per_request.mode) == ("batched", "per_request")
        same = ("encoder", "requests", "images_per_request", "resolution", "hit_fraction", "max_tokens_per_call")
        assert all(getattr(batched, k) == getattr(per_request, k) for k in same)
        assert batched.tokens == per_request.tokens and batched.model_flops == per_request.model_flops
        assert per_request.encoder_calls >= batched.encoder_calls
        # float32 on CPU: both modes assemble the same chunks up to float rounding of batch shapes
        assert batched.modes_max_rel_diff == per_request.modes_max_rel_diff < 1e-5
        assert batched.images == batched.requests * batched.images_per_request


def test_hits_budgets_and_resolutions_show_in_rows(smoke):
    _, results = smoke
    rows = results["rows"]
    hits = {r.hit_fraction: r for r in rows if r.sweep == "cpu-hits" and r.mode == "batched" and r.requests == 2}
    # 2 requests x 2 images: half of the 4 images are cached, so half the rows are encoded.
    assert hits[0.5].tokens == hits[0.0].tokens // 2 and hits[0.5].cache_hits == 2
    budget = [r for r in rows if r.sweep == "cpu-budget" and r.mode == "batched" and r.requests == 2]
    assert {r.max_tokens_per_call for r in budget} == {16, 32, 64}
    for r in budget:  # 2 images of 16 rows each: calls of 16, 32, 32 rows
        assert max(r.call_tokens) <= r.max_tokens_per_call and sum(r.call_tokens) == r.tokens == 32
        assert r.encoder_calls == len(r.call_tokens) == (2 if r.max_tokens_per_call == 16 else 1)
    assert {r.resolution for r in rows if r.sweep == "cpu-qwen"} == {56, 112, "mixed"}
    assert {r.resolution for r in rows if r.encoder == "clip-tiny"} == {56}  # fixed-resolution tower


def test_model_flops_are_the_encoded_items_flops():
    sweep = Sweep("t", "qwen2.5-vl-tiny", requests=(2,), resolutions=("mixed",), hit_fractions=(0.5,))
    from vitkit.encoders import build_encoder

    results = run_sweeps([sweep], RunSettings(repeats=1, warmup=0, kind="cpu-smoke"), progress=False)
    encoder = build_encoder("qwen2.5-vl-tiny")  # the same config the run's encoder had
    row = results["rows"][0]
    items = synthetic_items("qwen2.5-vl-tiny", [(56, 56), (84, 56)], 0)  # seed = settings.seed + point index
    flops = {item.hash: items_flops(encoder.config, [item]) for item in items}
    assert row.encoded_items == 1 and row.cache_hits == 1
    assert row.model_flops in flops.values()
    peak = results["matmul_peak"]["tflops"] * 1e12
    assert row.mfu == pytest.approx(row.model_flops / (row.step_ms_median / 1e3) / peak)


def test_layout_requests_lays_out_text_and_images():
    items = synthetic_items("clip-tiny", [(56, 56)] * 6, 0)
    requests = [r for r, _ in layout_requests(items, 3, text_tokens=5)]
    assert [len(r.items) for r in requests] == [3, 3]
    assert requests[0].spans[0].start == 5 and requests[0].prompt_len == 5 + 3 * (16 + 5)
    with pytest.raises(ValueError, match="do not split"):
        layout_requests(items, 4, text_tokens=5)


def test_variable_resolution_needs_a_pixel_side():
    sweeps = get_sweeps("cpu-qwen", {"resolution": ["native"]})
    with pytest.raises(ValueError, match="variable-resolution"):
        run_sweeps(sweeps, RunSettings(repeats=1, warmup=0, kind="cpu-smoke"), progress=False)


def test_schema_rejects_bad_files(smoke, tmp_path):
    path, _ = smoke
    results = json.loads(path.read_text())  # as written: rows are JSON objects
    broken = copy.deepcopy(results)
    del broken["rows"][1]["mfu"]
    with pytest.raises(ValueError, match=r"row 1 lacks field\(s\) \['mfu'\]"):
        validate_results(broken)
    broken = copy.deepcopy(results)
    broken["rows"][0]["tokens"] = "many"
    with pytest.raises(ValueError, match="'tokens' must be int"):
        validate_results(broken)
    broken = copy.deepcopy(results)
    broken["kind"] = "gpu-ish"
    with pytest.raises(ValueError, match="kind"):
        write_results(broken, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ValueError, match="bad.json"):
        load_results(tmp_path / "bad.json")


def test_plots_from_the_smoke_file(smoke, tmp_path):
    path, results = smoke
    pngs = save_figures(results, tmp_path, prefix=path.stem + "-")
    sweeps = ("cpu-clip", "cpu-siglip", "cpu-qwen", "cpu-hits", "cpu-budget")
    assert {p.name.removeprefix(path.stem + "-") for p in pngs} == {f"{s}.png" for s in sweeps}
    assert all(p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_tiny_sweep_measures_memory_and_the_memory_model():
    sweeps = get_sweeps("cpu-budget") + get_sweeps("cpu-clip")
    settings = RunSettings(device="cuda", dtype="bf16", repeats=3, warmup=1, kind="gpu")
    results = run_sweeps(sweeps, settings, progress=False)
    validate_results(results)
    assert all(isinstance(r.peak_mem_bytes, int) and r.peak_mem_bytes > 0 for r in results["rows"])
    assert results["matmul_peak"]["label"] == "cuda-bf16"
    assert {e["max_tokens_per_call"] for e in results["memory_model"]} == {16, 32, 64}


def test_stored_results_load_as_typed_rows_and_write_back_unchanged(tmp_path):
    for path in find_results(results_folder(), kind="gpu"):
        results = load_results(path)
        assert results["rows"] and all(isinstance(row, BenchRow) for row in results["rows"])
        copy_path = write_results(results, tmp_path / path.name)
        assert json.loads(copy_path.read_text()) == json.loads(path.read_text())
        assert [list(r) for r in json.loads(copy_path.read_text())["rows"]] == \
            [list(r) for r in json.loads(path.read_text())["rows"]]  # same fields, same order


@pytest.mark.parametrize("change, message", [
    ({"sweep": None}, r"lacks field\(s\) \['sweep'\]"),  # required: no empty-name fallback
    ({"speed": 1.0}, r"unknown field\(s\) \['speed'\]"),
    ({"mode": "fast"}, "mode must be one of"),
    ({"tokens": -1}, "'tokens' must be a non-negative int, got -1"),
    ({"mfu": float("nan")}, "not a finite number"),
    ({"call_tokens": "12"}, "'call_tokens' must be list or tuple or null"),
])
def test_bench_row_rejects_bad_fields(change, message):
    row = bench_row("s", "batched").to_dict() | change
    row = {k: v for k, v in row.items() if v is not None or k != "sweep"}
    with pytest.raises(ValueError, match=message):
        BenchRow.from_dict(row, 3)


def test_bench_row_round_trips_through_json():
    row = bench_row("s", "per_request", requests=4, call_tokens=(16, 32))
    again = BenchRow.from_dict(json.loads(json.dumps(row.to_dict())))
    assert again == row and again.call_tokens == (16, 32) and row.to_dict()["call_tokens"] == [16, 32]
