"""The encoder's measured cost parts: the bench's file, the model made from it, the loader's choice."""

from __future__ import annotations

import json
import shutil

import pytest

from vitkit.bench.encoder_costs import main as encoder_costs_main
from vitkit.encoders import pack
from vitkit.sim.bucketcost import measured_bucket_cost
from vitkit.sim.stepcost import STORED, load_encoder_cost


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


def test_measured_model_is_scaled_graph_replays_plus_a_host_share_fitted_to_serving_calls(smoke_file):
    data = json.loads(smoke_file.read_text())
    assert data["serving_calls"] and {c["workload"] for c in data["serving_calls"]} == {"small-images", "large-images"}
    cost, rows = measured_bucket_cost(smoke_file)
    assert cost.bucket_ms == pytest.approx([cost.graph_scale * r["ms"] for r in data["buckets"]])  # measured shape
    assert cost.graph_scale > 0 and cost.per_pack_ms >= 0 and cost.per_unit_ms >= 0
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
        expected = sum(cost.bucket_ms[cost.buckets.sizes.index(p.bucket)] + cost.per_pack_ms + cost.per_unit_ms * p.size for p in packs)
        assert row["modelled_ms"] == pytest.approx(expected) == cost.call_ms(call["item_rows"])


def test_measured_model_refuses_a_file_that_is_not_one(tmp_path, smoke_file):
    data = json.loads(smoke_file.read_text())
    bad = tmp_path / "encoder-costs-x.json"
    bad.write_text(json.dumps(data | {"schema": "vitkit.stream/1"}))
    with pytest.raises(ValueError, match="schema must be 'vitkit.encoder-costs/1'"):
        measured_bucket_cost(bad)
    bad.write_text(json.dumps(data | {"buckets": data["buckets"][:-1]}))
    with pytest.raises(ValueError, match="replay times for buckets"):
        measured_bucket_cost(bad)


def test_loader_prefers_a_gpu_encoder_costs_file_and_says_which(tmp_path, smoke_file):
    for path in STORED.glob("stream-*.json"):
        shutil.copy(path, tmp_path)
    fallback = load_encoder_cost(tmp_path)
    assert "no encoder-costs file" in fallback.source and "stream bucket fit" in fallback.source
    data = json.loads(smoke_file.read_text())
    gpu = data | {"kind": "gpu", "settings": data["settings"] | {"encoder": "qwen2.5-vl-7b"}}
    gpu["settings"]["buckets"] = [r["bucket"] for r in gpu["buckets"]]
    (tmp_path / "encoder-costs-20990101T000000Z.json").write_text(json.dumps(gpu))
    chosen = load_encoder_cost(tmp_path)
    assert chosen.source.startswith("measured buckets encoder-costs-20990101T000000Z.json")
    assert chosen.bookkeeping_ms == fallback.bookkeeping_ms  # bookkeeping still from the stream
    assert chosen.call.bucket_ms == pytest.approx([chosen.call.graph_scale * r["ms"] for r in data["buckets"]])
