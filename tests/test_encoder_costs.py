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
    steps = data["serving_prefill_steps"]  # the calibration replay's prefill steps, for the prefill model's calibration
    assert steps and all(s["ms"] > 0 and s["windows"] and all(new > 0 for _, new in s["windows"]) for s in steps)


def test_measured_model_is_scaled_graph_replays_plus_a_host_share_fitted_to_serving_calls(smoke_file):
    data = json.loads(smoke_file.read_text())
    assert data["serving_calls"] and {c["workload"] for c in data["serving_calls"]} == {"small-images", "large-images"}
    cost, rows = measured_bucket_cost(smoke_file)
    assert len(cost.bucket_scales) == len(data["buckets"])
    assert cost.bucket_ms == pytest.approx([k * r["ms"] for k, r in zip(cost.bucket_scales, data["buckets"])])  # measured shape
    assert cost.graph_scale >= 0 and all(k >= 0 for k in cost.bucket_scales) and cost.per_pack_ms >= 0 and cost.per_unit_ms >= 0
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
    assert chosen.call.bucket_ms == pytest.approx([k * r["ms"] for k, r in zip(chosen.call.bucket_scales, data["buckets"])])
    assert load_encoder_cost(tmp_path, costs_file=tmp_path / "encoder-costs-20990101T000000Z.json").call == chosen.call
    with pytest.raises(ValueError, match="not a GPU encoder-costs file"):
        load_encoder_cost(tmp_path, costs_file=smoke_file)  # the smoke file is a CPU one
    with pytest.raises(ValueError, match="model must be 'measured'"):
        load_encoder_cost(tmp_path, model="bucket", costs_file=smoke_file)


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
    calls = ([{"workload": "w", "mode": "batched", "item_rows": [rows_small], "ms": 1.1 * replay[small["bucket"]] + per_unit * small["real_units"]}] * 20
             + [{"workload": "w", "mode": "batched", "item_rows": [rows_large], "ms": 1.3 * replay[large["bucket"]] + per_unit * large["real_units"]}] * 20)
    path = tmp_path / "encoder-costs-y.json"
    path.write_text(json.dumps(data | {"serving_calls": calls}))
    fitted, _ = measured_bucket_cost(path)
    scales = dict(zip(fitted.buckets.sizes, fitted.bucket_scales))
    assert scales[small["bucket"]] == pytest.approx(1.1, rel=1e-6) and scales[large["bucket"]] == pytest.approx(1.3, rel=1e-6)
    assert fitted.per_pack_ms == pytest.approx(0.0, abs=1e-9)
    others = [k for b, k in scales.items() if b not in (small["bucket"], large["bucket"])]
    assert others and all(k == fitted.graph_scale == pytest.approx(1.2) for k in others)  # median of the own scales
