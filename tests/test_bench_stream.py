"""The stream benchmark: a seeded stream of changing layouts, its results and their checks."""

from __future__ import annotations

import json

import pytest

from vitkit.bench.rows import StreamRow, load_stream_results, write_stream_results
from vitkit.bench.stream import (StreamSettings, StreamSpec, bucket_choice, fit_stream_bucket_cost, format_stream_table,
                                 generate_stream, miss_units, run_stream, summarize_stream)
from vitkit.costs import results
from vitkit.encoders import Buckets
from vitkit.encoders.presets import get_preset


def test_stream_is_seeded_and_varies_every_axis():
    spec = StreamSpec("qwen2.5-vl-7b", steps=60, hit_fraction=0.3, seed=4)
    steps = generate_stream(spec)
    assert steps == generate_stream(spec) and steps != generate_stream(StreamSpec("qwen2.5-vl-7b", steps=60, seed=5))
    assert all(1 <= sum(map(len, s.requests)) <= 8 for s in steps)
    images = [im for s in steps for r in s.requests for im in r]
    assert len({len(s.requests) for s in steps}) > 3  # request counts vary
    assert len({(im.height, im.width) for im in images}) > 50  # sizes and aspect ratios vary
    assert all(224 <= im.height <= 1344 and 224 <= im.width <= 1344 for im in images)
    repeats = len(images) - len({im.key for im in images})
    assert 0.15 * len(images) < repeats < 0.45 * len(images)  # repeats: cache hits


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps"), (dict(images_per_step=(3, 2)), "images_per_step"),
    (dict(sides=(0, 10)), "sides"), (dict(hit_fraction=1.0), "hit_fraction"), (dict(encoder="nope"), "unknown"),
])
def test_bad_stream_specs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        StreamSpec(**({"encoder": "clip-l-336"} | bad))


def test_miss_units_count_each_image_once_with_an_unbounded_cache():
    spec = StreamSpec("clip-l-336", steps=30, images_per_step=(1, 16))
    steps = generate_stream(spec)
    distinct = len({im.key for s in steps for r in s.requests for im in r})
    for mode in ("batched", "per_request"):
        assert sum(len(c) for c in miss_units(spec, steps, mode)) == distinct


def test_bucket_choice_reports_waste_per_mode():
    spec = StreamSpec("clip-l-336", steps=30, images_per_step=(1, 64))
    rows = bucket_choice(spec, {"pow2": Buckets((1, 2, 4, 8, 16, 32, 64), 64), "all": Buckets(tuple(range(1, 65)), 64)})
    assert rows[1]["batched_waste"] == 0.0 < rows[0]["batched_waste"] and rows[1]["graphs"] == 64


@pytest.mark.parametrize("subprocess_cold", [False, True])
def test_stream_run_on_tiny_towers_writes_valid_results(tmp_path, subprocess_cold):
    spec = StreamSpec("qwen2.5-vl-tiny", steps=4, images_per_step=(1, 3), sides=(56, 140))
    settings = StreamSettings(impls=("vitkit", "vitkit-eager"), cold_steps=2, steady_repeats=1, kind="cpu-smoke",
                              cold_in_subprocess=subprocess_cold)
    results = run_stream(spec, settings, progress=False)
    path = write_stream_results(results, tmp_path / "s.json")
    loaded = load_stream_results(path)
    assert {(s["impl"], s["mode"]) for s in loaded["summaries"]} == {
        (i, m) for i in ("vitkit", "vitkit-eager") for m in ("batched", "per_request")}
    assert len(loaded["steps"]) == 2 * 2 * 4 and all(c["steps"] == 2 for c in loaded["cold"])
    assert all(c["fresh_process"] == subprocess_cold for c in loaded["cold"])
    vitkit = next(s for s in loaded["summaries"] if s["impl"] == "vitkit" and s["mode"] == "batched")
    assert vitkit["padded_rows"] == sum(r["padded_rows"] for r in loaded["steps"]
                                        if r["impl"] == "vitkit" and r["mode"] == "batched")
    assert vitkit["batched_speedup"] > 0 and "qwen2.5-vl-tiny" in format_stream_table(loaded)


def test_summaries_agree_with_rows():
    rows = [StreamRow(encoder="e", impl="vitkit", mode="batched", step=k, images=2, requests=1, encoder_calls=1,
                      encoded_items=2, encoded_rows=100, padded_rows=10, cache_hits=0, unbucketed=0, compiles=0,
                      captures=0, step_ms=10.0 * (k + 1), encoder_ms=5.0) for k in range(4)]
    s = summarize_stream(rows, warmup_s=1.5)
    assert s["total_s"] == pytest.approx(0.1) and s["images_per_s"] == pytest.approx(80.0)
    assert s["padding_waste"] == pytest.approx(0.1) and s["step_ms_p50"] == pytest.approx(25.0)


def test_a_results_file_without_step_fields_is_refused(tmp_path):
    with pytest.raises(ValueError, match="schema"):
        write_stream_results({"schema": "x"}, tmp_path / "bad.json")


def test_stored_stream_calls_recomputed_and_fitted():
    (path,) = sorted(results.results_folder().glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    cost, steps = fit_stream_bucket_cost(path, "qwen2.5-vl-7b")
    rows = [r for r in json.loads(path.read_text())["steps"] if r["impl"] == "vitkit"]
    assert len(steps) == len(rows) and not any(s["flagged"] for s in steps)
    assert cost.median_rel_err < 0.05 and cost.per_call_ms >= 0
    assert list(cost.bucket_ms) == sorted(cost.bucket_ms)
    s = steps[0]
    assert s["modelled_ms"] == pytest.approx(sum(cost.call_units_ms(c) for c in s["calls"]))


def test_stored_clip_stream_fits_images_as_bucket_units():
    (path,) = sorted(results.results_folder().glob("stream-clip-l-336-*.json"))[-1:]
    cost, steps = fit_stream_bucket_cost(path, "clip-l-336")
    rows = [r for r in json.loads(path.read_text())["steps"] if r["impl"] == "vitkit"]
    assert len(steps) == len(rows) and not any(s["flagged"] for s in steps)
    assert cost.rows_per_unit == get_preset("clip-l-336").fixed_num_tokens and cost.unit == 1
    assert all(u == 1 for s in steps for call in s["calls"] for u in call)  # one unit per image
    s = next(s for s in steps if s["calls"])
    assert s["modelled_ms"] == pytest.approx(sum(cost.call_units_ms(c) for c in s["calls"]))
