"""The encoder's measured cost parts: the bench's file, the model made from it, the loader's choice."""

from __future__ import annotations

import json
import shutil

import pytest

from vitkit.bench.encoder_costs import main as encoder_costs_main
from vitkit.bench.encoder_costs import serving_call
from vitkit.bench.errors import serving_errors
from vitkit.encoders import pack
from vitkit.costs import results
from vitkit.costs.encoder import (VideoSize, load_encoder_cost, measured_bucket_cost, serving_bookkeeping_ms,
                                  stream_bookkeeping_ms)

STORED = results.results_folder()


@pytest.fixture(scope="module")
def smoke_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder-costs")
    assert encoder_costs_main(["--smoke", "--out", str(out)]) == 0
    (path,) = out.glob("encoder-costs-*.json")
    return path


def test_smoke_file_times_every_bucket_and_every_call(smoke_file):
    data = json.loads(smoke_file.read_text())
    assert data["schema"] == "vitkit.encoder-costs/1" and data["kind"] == "cpu-smoke"
    assert [r["bucket"] for r in data["buckets"]] == data["settings"]["buckets"]
    assert all(r["ms"] > 0 and 0 < r["real_units"] <= r["bucket"] for r in data["buckets"])
    for call in data["calls"]:
        assert len(call["item_units"]) == call["images"] and call["host_pixels_ms"] > 0 and call["device_pixels_ms"] > 0
        assert sum(size for size, _ in call["packs"]) == sum(call["item_units"])
    assert data["compiles_after_warmup"] == 0 and data["captures_after_warmup"] == 0
    assert data["settings"]["serving"]["seed"] == 1 and data["settings"]["serving"]["prefill"] == "tiny-decoder"
    steps = data["serving_prefill_steps"]  # the calibration replay's prefill steps, for the prefill model's calibration
    assert steps and all(s["ms"] > 0 and s["windows"] and all(new > 0 for _, new in s["windows"]) for s in steps)
    # and the host's bookkeeping of each of those steps, measured in the same replay (no stream file needed)
    book = data["serving_bookkeeping_ms"]
    assert len(book) == len(steps) and all(ms >= 0 for ms in book) and serving_bookkeeping_ms(smoke_file) > 0


def test_measured_model_is_scaled_graph_replays_plus_a_host_share_fitted_to_serving_calls(smoke_file):
    data = json.loads(smoke_file.read_text())
    assert data["serving_calls"] and {c["workload"] for c in data["serving_calls"]} == {"small-images", "large-images"}
    cost, rows = measured_bucket_cost(smoke_file)
    assert len(cost.bucket_scales) == len(data["buckets"])
    measured = [k * r["ms"] for k, r in zip(cost.bucket_scales, data["buckets"])]
    assert cost.bucket_ms == pytest.approx(measured)  # the measured shape
    assert cost.graph_scale >= 0 and all(k >= 0 for k in cost.bucket_scales)
    assert cost.per_pack_ms >= 0 and cost.per_unit_ms >= 0
    assert "fitted to serving calls" in cost.source and cost.points == len(data["serving_calls"])
    serving = [r for r in rows if r["kind"] == "serving"]
    for call, row in zip(data["serving_calls"], serving):
        packs = pack([n * cost.unit for n in call["item_rows"]], cost.buckets)
        expected = sum(cost.pack_ms(p) for p in packs)
        assert row["modelled_ms"] == pytest.approx(expected) == cost.call_ms(call["item_rows"])
        assert row["rel_err"] == pytest.approx((expected - call["ms"]) / call["ms"])
    assert cost.max_rel_err == pytest.approx(max(abs(r["rel_err"]) for r in serving))
    assert len([r for r in rows if r["kind"] == "probe"]) == len(data["calls"])  # reported, not fitted


def test_without_serving_calls_the_host_share_is_fitted_to_the_probes(tmp_path, smoke_file):
    data = json.loads(smoke_file.read_text()) | {"serving_calls": []}
    path = tmp_path / "encoder-costs-x.json"
    path.write_text(json.dumps(data))
    cost, rows = measured_bucket_cost(path)
    assert cost.graph_scale == 1.0 and cost.bucket_ms == tuple(r["ms"] for r in data["buckets"])
    for call, row in zip(data["calls"], rows):
        packs = pack(call["item_units"], cost.buckets)
        expected = sum(cost.bucket_ms[cost.buckets.sizes.index(p.bucket)] + cost.per_pack_ms + cost.per_unit_ms * p.size
                       for p in packs)
        assert row["modelled_ms"] == pytest.approx(expected) == cost.call_ms(call["item_rows"])


def test_measured_model_refuses_a_file_that_is_not_one(tmp_path, smoke_file):
    data = json.loads(smoke_file.read_text())
    bad = tmp_path / "encoder-costs-x.json"
    bad.write_text(json.dumps(data | {"schema": "vitkit.stream/1"}))
    with pytest.raises(ValueError, match="field 'schema' must be 'vitkit.encoder-costs/1'"):
        measured_bucket_cost(bad)
    bad.write_text(json.dumps(data | {"buckets": data["buckets"][:-1]}))
    with pytest.raises(ValueError, match="replay times for buckets"):
        measured_bucket_cost(bad)


def _gpu_copy(smoke_file, bookkeeping=False):
    """The smoke file as if measured on a GPU for the stored Qwen2.5-VL encoder (without its calibration
    replay's bookkeeping, as files from before it was kept, unless ``bookkeeping``)."""
    data = json.loads(smoke_file.read_text())
    gpu = data | {"kind": "gpu", "settings": data["settings"] | {"encoder": "qwen2.5-vl-7b"}}
    if not bookkeeping:
        gpu.pop("serving_bookkeeping_ms")
    gpu["settings"]["buckets"] = [r["bucket"] for r in gpu["buckets"]]
    return data, gpu


def test_loader_takes_the_newest_gpu_encoder_costs_file_and_says_which(tmp_path, smoke_file):
    for path in STORED.glob("stream-*.json"):
        shutil.copy(path, tmp_path)
    # the measured model only: no encoder-costs file, no model (no fallback to the stream file)
    with pytest.raises(ValueError, match="no GPU encoder-costs file of encoder 'qwen2.5-vl-7b' impl 'vitkit'"):
        load_encoder_cost(tmp_path)
    shutil.copy(smoke_file, tmp_path / "encoder-costs-20990102T000000Z.json")  # newer, but a CPU one: never chosen
    data, gpu = _gpu_copy(smoke_file)
    (tmp_path / "encoder-costs-20990101T000000Z.json").write_text(json.dumps(gpu))
    chosen = load_encoder_cost(tmp_path)
    assert chosen.source.startswith("measured buckets encoder-costs-20990101T000000Z.json")
    book, stream = stream_bookkeeping_ms(tmp_path, "qwen2.5-vl-7b")
    assert chosen.bookkeeping_ms == book and stream in chosen.source  # bookkeeping still from the stream
    scaled = [k * r["ms"] for k, r in zip(chosen.call.bucket_scales, data["buckets"])]
    assert chosen.call.bucket_ms == pytest.approx(scaled)
    assert load_encoder_cost(tmp_path, costs_file=tmp_path / "encoder-costs-20990101T000000Z.json").call == chosen.call
    with pytest.raises(ValueError, match="not a GPU encoder-costs file"):
        load_encoder_cost(tmp_path, costs_file=smoke_file)  # the smoke file is a CPU one
    with pytest.raises(ValueError, match="not a GPU encoder-costs file of encoder 'clip-l-336'"):
        load_encoder_cost(tmp_path, "clip-l-336", costs_file=tmp_path / "encoder-costs-20990101T000000Z.json")


def test_bookkeeping_falls_back_to_the_stored_stream_and_never_to_a_cpu_one(tmp_path, smoke_file, monkeypatch):
    _, gpu = _gpu_copy(smoke_file)
    (tmp_path / "encoder-costs-20990101T000000Z.json").write_text(json.dumps(gpu))
    stored_book, stored_stream = stream_bookkeeping_ms(STORED, "qwen2.5-vl-7b")
    # a folder without a stream file: the stored card's (the bookkeeping is host time)
    assert load_encoder_cost(tmp_path).bookkeeping_ms == stored_book
    # a CPU stream file in the folder times no GPU's host: still the stored one
    (path,) = sorted(STORED.glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    cpu = json.loads(path.read_text()) | {"kind": "cpu-smoke"}
    for row in cpu["steps"]:
        row["step_ms"] += 100.0
    (tmp_path / path.name).write_text(json.dumps(cpu))
    assert stream_bookkeeping_ms(tmp_path, "qwen2.5-vl-7b") is None
    cost = load_encoder_cost(tmp_path)
    assert cost.bookkeeping_ms == stored_book and stored_stream in cost.source
    assert f"{stored_stream} borrowed from h100/" in cost.source  # the borrowing is said, not hidden
    # nowhere a GPU stream file: the loader says what to run
    monkeypatch.setattr(results, "results_folder", lambda *args, **kwargs: tmp_path / "no-card")
    message = "no GPU stream file of encoder 'qwen2.5-vl-7b' .*python -m vitkit.bench stream.*make calibrate"
    with pytest.raises(ValueError, match=message):
        load_encoder_cost(tmp_path)


def test_bookkeeping_measured_in_the_calibration_replay_comes_first(tmp_path, smoke_file, monkeypatch):
    """A card calibrated by ``calibrate`` has no stream file: its encoder-costs file's own replay gives the
    bookkeeping, before any stream file, and nothing is borrowed from another card."""
    _, gpu = _gpu_copy(smoke_file, bookkeeping=True)
    gpu["machine"] = gpu["machine"] | {"device_name": "NVIDIA H200", "slug": "h200"}
    path = tmp_path / "encoder-costs-20990101T000000Z.json"
    path.write_text(json.dumps(gpu))
    for stream in STORED.glob("stream-*.json"):
        shutil.copy(stream, tmp_path)  # present, and still not used
    monkeypatch.setattr(results, "results_folder", lambda *args, **kwargs: tmp_path / "no-card")  # no stored card
    cost = load_encoder_cost(tmp_path)
    assert cost.bookkeeping_ms == pytest.approx(serving_bookkeeping_ms(path))
    assert "bookkeeping encoder-costs-20990101T000000Z.json's calibration replay" in cost.source
    assert "stream" not in cost.source and cost.source.endswith("on NVIDIA H200")


def test_buckets_with_enough_serving_packs_get_their_own_scale(tmp_path, smoke_file):
    """Serving calls that ran 1.1x their graph in one bucket and 1.3x in another (plus the
    staging): each of those buckets recovers its factor; a bucket seen in too few packs shares
    the pooled one; buckets never seen take it too."""
    data = json.loads(smoke_file.read_text())
    replay = {r["bucket"]: r["ms"] for r in data["buckets"]}
    cost, _ = measured_bucket_cost(smoke_file)
    per_unit = cost.per_unit_ms
    small, large = data["buckets"][0], data["buckets"][-1]
    rows_small, rows_large = small["real_units"] // cost.unit, large["real_units"] // cost.unit
    def call(rows, bucket, factor):
        ms = factor * replay[bucket["bucket"]] + per_unit * bucket["real_units"]
        return {"workload": "w", "mode": "batched", "item_rows": [rows], "ms": ms}

    calls = [call(rows_small, small, 1.1)] * 20 + [call(rows_large, large, 1.3)] * 20
    path = tmp_path / "encoder-costs-y.json"
    path.write_text(json.dumps(data | {"serving_calls": calls}))
    fitted, _ = measured_bucket_cost(path)
    scales = dict(zip(fitted.buckets.sizes, fitted.bucket_scales))
    assert scales[small["bucket"]] == pytest.approx(1.1, rel=1e-6)
    assert scales[large["bucket"]] == pytest.approx(1.3, rel=1e-6)
    assert fitted.per_pack_ms == pytest.approx(0.0, abs=1e-9)
    others = [k for b, k in scales.items() if b not in (small["bucket"], large["bucket"])]
    assert others and all(k == fitted.graph_scale == pytest.approx(1.2) for k in others)  # median of the own scales


def test_a_serving_call_with_a_video_round_trips_with_its_pieces(tmp_path, smoke_file):
    """The file keeps a video's temporal patches beside its rows; the model and the error tables read it back
    as the video the encoder split over the buckets, not as one image over the largest."""
    data = json.loads(smoke_file.read_text())
    assert data["settings"]["large_buckets"] == []  # the tiny tower has none; the file says so
    assert all("item_temporal" not in c for c in data["serving_calls"])  # images only: stored as before
    video = VideoSize(4 * 100, 4)  # 4 temporal patches of 400 units (100 rows): over the largest bucket (1024), in pairs
    calls = [serving_call("w", "batched", [64, video], 9.0), serving_call("w", "batched", [64, 400], 9.0)]
    assert calls[0]["item_temporal"] == [0, 4] and "item_temporal" not in calls[1]
    path = tmp_path / "encoder-costs-v.json"
    path.write_text(json.dumps(data | {"serving_calls": data["serving_calls"] + calls}))
    cost, rows = measured_bucket_cost(path)
    as_video, as_image = [r for r in rows if r["kind"] == "serving"][-2:]
    assert as_video["modelled_ms"] == pytest.approx(cost.call_ms([64, video]))
    # (the two may cost the same: a smoke fit on a loaded CPU can zero the graph scales; the packs differ below)
    assert as_image["modelled_ms"] == pytest.approx(cost.call_ms([64, 400]))
    errors, _ = serving_errors(json.loads(path.read_text()), cost)
    assert [p.size for p in cost.packs([64, video])] == [800, 800, 256]
    assert errors[-2].buckets == "1024+1024+256" and errors[-1].buckets == "oversize+256"
