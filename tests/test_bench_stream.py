"""The stream benchmark: a seeded stream of changing layouts, its results and their checks."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import CountingGraphs
from vitkit.bench import stream
from vitkit.bench.rows import StreamRow, load_stream_results, write_stream_results
from vitkit.bench.stream import (StreamSettings, bucket_choice, fit_stream_bucket_cost, format_stream_table,
                                 format_targets, run_stream, stream_targets, summarize_stream)
from vitkit.bench.stream_items import (CPU_NAMED_BUCKETS, GPU_STREAMS, StreamSpec, check_twin, generate_stream,
                                       item_rows, make_stream_items, miss_units, named_stream)
from vitkit.costs import results
from vitkit.encoders import Buckets, build_encoder
from vitkit.encoders.presets import get_preset
from vitkit.encoders.qwen import QWEN_BUCKETS
from vitkit.processing import make_video_item


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


# --- videos and document scans (issue 19) --------------------------------------------------------------

TINY_MIXED = dict(encoder="qwen2.5-vl-tiny", steps=6, images_per_step=(1, 4), images_per_request=(1, 3),
                  sides=(56, 112), video_fraction=0.3, video_frames=(2, 6), scan_fraction=0.2, scan_sides=(168, 224))
TINY_BUCKETS = dict(buckets=CPU_NAMED_BUCKETS[0], large_buckets=CPU_NAMED_BUCKETS[1])


@pytest.fixture
def counted_graphs(monkeypatch):
    """The stream's bucketed encoders capture into ``CountingGraphs`` on the CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)

    def build(*args, **kwargs):
        encoder = build_encoder(*args, **kwargs)
        if encoder.impl == "vitkit":
            encoder.graphs = CountingGraphs()
        return encoder
    monkeypatch.setattr(stream, "build_encoder", build)


def _distinct(steps):
    return {it.key: it for s in steps for r in s.requests for it in r}


@pytest.mark.parametrize("bad, match", [
    (dict(video_fraction=-0.1), "video_fraction must be a number in"),
    (dict(scan_fraction=1.5), "scan_fraction must be a number in"),
    (dict(video_fraction=0.6, scan_fraction=0.5), r"video_fraction \+ scan_fraction must be at most 1"),
    (dict(video_frames=(64, 16)), "video_frames must be"), (dict(scan_sides=(0, 2000)), "scan_sides must be"),
    (dict(video_resolutions=("1080p",)), "video_resolutions must be among"),
    (dict(encoder="clip-l-336", scan_fraction=0.1), "scan_fraction=0.1 needs a variable-resolution tower"),
    (dict(encoder="qwen3-vl-8b", video_fraction=0.1), "video_fraction=0.1: .*video processor of its own"),
])
def test_bad_video_and_scan_specs_raise_naming_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        StreamSpec(**({"encoder": "qwen2.5-vl-7b"} | bad))


def test_stored_stream_files_and_specs_load_without_videos_or_scans():
    (path,) = sorted(results.results_folder().glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    data = load_stream_results(path)
    spec = StreamSpec.from_dict(data["settings"]["stream"])
    assert (spec.video_fraction, spec.scan_fraction, spec.name) == (0.0, 0.0, "")
    assert {it.kind for it in _distinct(generate_stream(spec)).values()} == {"image"}
    table = format_stream_table(data)  # no encoder_stats, stream_items or targets in the file
    assert "large split" in table and "targets" not in data
    (batched, _) = stream_targets(data)
    assert batched["target_min"] is None and batched["value"] > 1  # no scans: a ratio, no target


def test_a_scan_stream_and_its_twin_differ_in_their_scans_alone():
    scans, twin = named_stream("scans", gpu=True), named_stream("no-scans", gpu=True)
    a, b = generate_stream(scans), generate_stream(twin)
    plain = generate_stream(StreamSpec("qwen2.5-vl-7b", **GPU_STREAMS["qwen2.5-vl-7b"]))
    assert b == plain  # the twin is the stored GPU stream
    pairs = [(x, y) for sa, sb in zip(a, b) for ra, rb in zip(sa.requests, sb.requests) for x, y in zip(ra, rb)]
    assert [[len(r) for r in s.requests] for s in a] == [[len(r) for r in s.requests] for s in b]  # same layouts
    changed = [(x, y) for x, y in pairs if x != y]
    assert changed and all(x.scan and y.kind == "image" and x.key == y.key for x, y in changed)
    distinct = _distinct(a).values()
    found = [it for it in distinct if it.scan]
    assert 0.01 < len(found) / len(distinct) < 0.03  # 2% of new items
    largest, large = QWEN_BUCKETS.largest, QWEN_BUCKETS.large
    assert all(largest < item_rows(scans, it)[1] <= large[-1] for it in found)  # over every regular bucket
    with pytest.raises(ValueError, match="is not its twin"):
        check_twin(scans, named_stream("mixed", gpu=True))


def test_stream_videos_have_the_grid_and_rows_make_video_item_gives_their_frames():
    spec = StreamSpec(**TINY_MIXED)
    steps = generate_stream(spec)
    items = make_stream_items(spec, steps, "cpu")
    videos = [it for it in _distinct(steps).values() if it.frames]
    assert videos
    rng = np.random.default_rng(0)
    for video in videos[:2]:
        frames = rng.integers(0, 256, (video.frames, video.height, video.width, 3), dtype=np.uint8)
        made = make_video_item(frames, spec.encoder)
        item = items[video.key]
        assert item.modality == "video" and item.meta == made.meta and item.num_tokens == made.num_tokens
        assert item.feature.shape == made.feature.shape


def test_large_buckets_met_are_those_the_encoder_runs_the_stream_in():
    spec = StreamSpec(**TINY_MIXED)
    items = make_stream_items(spec, generate_stream(spec), "cpu")
    settings = StreamSettings(**TINY_BUCKETS)
    full = stream.stream_buckets(spec, replace(settings, large_warmup="all"), items.values())
    met = stream.stream_buckets(spec, settings, items.values())
    assert full.large == CPU_NAMED_BUCKETS[1] and met.large and set(met.large) < set(full.large)
    encoder = build_encoder(spec.encoder, buckets=full)
    encoder(list(items.values()))
    assert {r.bucket for r in encoder.last_call if r.bucket > full.largest} == set(met.large)


def test_bucketed_rows_equal_eager_rows_per_item_on_a_stream_of_images_videos_and_scans(counted_graphs):
    spec = StreamSpec(**TINY_MIXED)
    steps = generate_stream(spec)
    items = make_stream_items(spec, steps, "cpu")
    encoder = stream._build(spec, StreamSettings(**TINY_BUCKETS), "vitkit", items.values())
    eager = encoder.variant(impl="vitkit-eager")
    encoder.warmup(progress=False, large=True)
    before = encoder.stats.copy()
    for step in steps:
        step_items = list({items[it.key].hash: items[it.key] for r in step.requests for it in r}.values())
        for k, (a, b) in enumerate(zip(encoder(step_items), eager(step_items))):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5), (step.index, k)
    spent = encoder.stats - before
    assert spent.captures == spent.compiles == spent.unbucketed == 0
    assert spent.large > 0 and spent.split_items > 0  # scans and video frames in large buckets, videos split


def test_a_mixed_stream_captures_nothing_after_warmup_and_records_the_encoders_counters(counted_graphs):
    spec = StreamSpec(**TINY_MIXED)
    settings = StreamSettings(impls=("vitkit", "vitkit-eager"), cold_steps=2, steady_repeats=1, kind="cpu-smoke",
                              cold_in_subprocess=False, **TINY_BUCKETS)
    data = run_stream(spec, settings, progress=False)
    bucketed = [s for s in data["summaries"] if s["impl"] == "vitkit"]
    assert all(s["compiles"] == s["captures"] == 0 and s["encoder_stats"]["captures"] == 0 for s in bucketed)
    assert all(s["encoder_stats"]["large"] > 0 and s["encoder_stats"]["split_items"] > 0 and s["unbucketed"] == 0
               for s in bucketed)
    assert all(s["encoder_stats"]["real_rows"] == s["encoded_rows"] for s in data["summaries"])
    cold = next(c for c in data["cold"] if c["impl"] == "vitkit")
    assert cold["cold_captures"] > 0  # the first encounters are paid, and counted, before warm-up
    warm = next(w for w in data["warmups"] if w["impl"] == "vitkit")
    assert warm["large_warmup"] == "stream" and warm["large_buckets"]
    assert data["stream_items"]["video"]["items"] > 0 and data["stream_items"]["scan"]["items"] > 0


def test_the_cold_pass_of_a_video_stream_runs_in_a_fresh_process(tmp_path, counted_graphs):
    spec = StreamSpec(**TINY_MIXED | dict(steps=3))
    settings = StreamSettings(impls=("vitkit",), cold_steps=2, steady_repeats=1, kind="cpu-smoke",
                              cold_in_subprocess=True, large_warmup="none", **TINY_BUCKETS)
    data = run_stream(spec, settings, progress=False)
    (cold,) = data["cold"]
    assert cold["fresh_process"] and cold["steps"] == 2 and len(cold["step_ms"]) == 2
    # the large buckets left out of warm-up are captured by the stream itself: the counts are real
    assert next(s for s in data["summaries"] if s["mode"] == "batched")["captures"] > 0
    loaded = load_stream_results(write_stream_results(data, tmp_path / "s.json"))
    assert StreamSpec.from_dict(loaded["settings"]["stream"]) == spec


def _summary(impl, mode, rows_per_s):
    return {"impl": impl, "mode": mode, "rows_per_s": rows_per_s}


def test_targets_compare_bucketed_with_eager_and_the_scan_stream_with_its_twin():
    def results(name, scan_fraction, kind, rates):
        return {"kind": kind, "created": "t0", "settings": {"stream": {"encoder": "e", "name": name,
                                                                        "scan_fraction": scan_fraction}},
                "summaries": [_summary(i, m, r) for (i, m), r in rates.items()]}

    twin = results("no-scans", 0.0, "gpu", {("vitkit", "batched"): 100.0, ("vitkit-eager", "batched"): 50.0})
    scans = results("scans", 0.02, "gpu", {("vitkit", "batched"): 95.0, ("vitkit-eager", "batched"): 55.0})
    got = {(t["ratio"], t["impl"]): t for t in stream_targets(scans, twin)}
    bucketed = got["bucketed / eager rows/s", "vitkit"]
    assert bucketed["value"] == pytest.approx(95 / 55) and bucketed["target_min"] == 1.8 and bucketed["met"] is False
    vs_twin = got["rows/s / no-scans's", "vitkit"]
    assert vs_twin["value"] == pytest.approx(0.95) and vs_twin["target_min"] == 0.9 and vs_twin["met"] is True
    assert "no-scans" in vs_twin["against"] and got["rows/s / no-scans's", "vitkit-eager"]["target_min"] is None
    (plain,) = stream_targets(twin)  # no scans: the ratio, no target
    assert plain["target_min"] is None and plain["value"] == pytest.approx(2.0)
    smoke = stream_targets(scans | {"kind": "cpu-smoke"}, twin)
    assert all(t["met"] is None for t in smoke)  # targets are judged on a GPU run only
    assert "NO" in "\n".join(format_targets(stream_targets(scans, twin)))


def test_named_streams_on_the_command_line_run_after_their_twins():
    def parse(*argv):
        return stream.settings_from_args(stream.build_parser().parse_args(["--device", "cpu", *argv]))

    specs, settings = parse("--stream", "scans,mixed", "--scan-fraction", "0.3")
    assert [s.name for s in specs] == ["no-scans", "scans", "mixed"]
    assert [s.scan_fraction for s in specs] == [0.0, 0.3, 0.3]  # the twin keeps no scans
    assert (settings.buckets, settings.large_buckets) == CPU_NAMED_BUCKETS and settings.impls == ("vitkit",
                                                                                                  "vitkit-eager")
    specs, settings = parse("--encoder", "qwen2.5-vl-tiny", "--video-fraction", "0.1", "--video-frames", "2-4")
    assert specs[0].video_fraction == 0.1 and specs[0].video_frames == (2, 4) and specs[0].name == ""
    assert settings.impls == ("vitkit", "vitkit-eager", "stock") and settings.large_buckets is None
    with pytest.raises(ValueError, match="--stream and --encoder"):
        parse("--stream", "scans", "--encoder", "qwen2.5-vl-tiny")
    with pytest.raises(ValueError, match="unknown stream 'nope'"):
        parse("--stream", "nope")


# --- GPU: a warmed-up stream of images, videos and scans compiles and captures nothing ---

@pytest.mark.gpu
def test_gpu_a_stream_of_images_videos_and_scans_compiles_and_captures_nothing_after_warmup():
    spec = StreamSpec("qwen2.5-vl-7b", steps=6, images_per_step=(1, 4), video_fraction=0.3, scan_fraction=0.2)
    distinct = _distinct(generate_stream(spec)).values()
    assert any(it.scan for it in distinct) and any(item_rows(spec, it)[1] > QWEN_BUCKETS.largest
                                                   for it in distinct if it.frames)
    settings = StreamSettings(device="cuda", dtype="bf16", impls=("vitkit",), cold_steps=1, steady_repeats=1,
                              cold_in_subprocess=False)
    data = run_stream(spec, settings, progress=False)
    (warm,) = data["warmups"]
    assert warm["large_buckets"] and warm["buckets"] == len(QWEN_BUCKETS.sizes) + len(warm["large_buckets"])
    for s in data["summaries"]:
        stats = s["encoder_stats"]
        assert s["compiles"] == s["captures"] == stats["compiles"] == stats["captures"] == 0, s
        assert stats["unbucketed"] == 0 and stats["large"] > 0 and stats["split_items"] > 0, s
