"""Trace files and generated workloads: round trips, shipped examples, clear errors."""

import json

import pytest
import torch

from vitkit.sim.fake import fake_item, qwen_like_tokens
from vitkit.sim.trace import (
    ImageSpec,
    Trace,
    TraceRequest,
    example_traces,
    format_trace,
    load_trace,
    save_trace,
    trace_from_json,
    trace_to_json,
)
from vitkit.sim.workload import EXAMPLES, WorkloadParams, build_requests, example_trace, generate_workload


def small_trace():
    images = {"shoe": ImageSpec(448, 448), "bag": ImageSpec(672, 448)}
    requests = (
        TraceRequest("q0", 0.0, (12, "shoe", 30)),
        TraceRequest("q1", 25.5, ("bag", 4, "shoe"), abort_ms=80.0),
    )
    return Trace("tiny", requests, images, "two shoppers")


def test_save_load_round_trip(tmp_path):
    trace = small_trace()
    path = save_trace(trace, tmp_path / "t.json")
    assert load_trace(path) == trace
    assert trace_from_json(json.loads(json.dumps(trace_to_json(trace)))) == trace


def test_generated_round_trip_and_determinism(tmp_path):
    params = WorkloadParams(num_requests=10, arrival_rate_per_s=20, turns=2, repeat_share=0.5, abort_share=0.3, seed=5)
    trace = generate_workload(params)
    assert generate_workload(params) == trace
    assert generate_workload(WorkloadParams(num_requests=10, seed=6)) != generate_workload(WorkloadParams(num_requests=10, seed=5))
    assert load_trace(save_trace(trace, tmp_path / "g.json")) == trace
    assert len(trace.requests) == 10
    arrivals = [r.arrival_ms for r in trace.requests]
    assert arrivals == sorted(arrivals)


def test_multi_turn_resends_earlier_turns():
    trace = generate_workload(WorkloadParams(num_requests=3, turns=3, seed=1))
    first, second, third = (r.segments for r in trace.requests)
    assert second[: len(first)] == first and third[: len(second)] == second
    assert len(third) > len(second) > len(first)


def test_shipped_examples_match_their_generators():
    assert example_traces() == sorted(EXAMPLES)
    for name in EXAMPLES:
        shipped = load_trace(name)
        assert shipped == example_trace(name)
        assert shipped.name == name


def test_product_catalog_repeats_images_and_chat_has_aborts():
    catalog = load_trace("product-catalog")
    uses = [s for r in catalog.requests for s in r.segments if isinstance(s, str)]
    assert len(set(uses)) < len(uses)  # some product photos are shown to several shoppers
    chat = load_trace("chat-multiturn")
    assert any(r.abort_ms is not None for r in chat.requests)


def test_repeated_image_is_identical_content():
    trace = small_trace()
    requests = build_requests(trace, fake_item)
    shoe0 = requests["q0"].items[0]
    shoe1 = requests["q1"].items[1]
    assert shoe0.hash == shoe1.hash
    assert requests["q1"].items[0].hash != shoe0.hash
    assert fake_item("shoe", 448, 448).hash == shoe0.hash  # built fresh: same content, same hash
    assert fake_item("shoe", 448, 672).hash != shoe0.hash
    assert shoe0.num_tokens == qwen_like_tokens(448, 448) == 256
    assert requests["q0"].prompt_len == 12 + 256 + 30


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="other/1"), "field 'schema'"),
        (lambda d: d.update(requests={}), "field 'requests' must be a list"),
        (lambda d: d["requests"][1].pop("arrival_ms"), r"request 1 \('q1'\): missing field 'arrival_ms'"),
        (lambda d: d["requests"][1].update(arrival_ms=-3), r"request 1 \('q1'\): arrival_ms must be a finite number >= 0"),
        (lambda d: d["requests"][1].update(abort_ms=10.0), r"request 1 \('q1'\): abort_ms must be a number >= arrival_ms"),
        (lambda d: d["requests"][1].update(rid="q0"), r"request 1 \('q0'\): rid is used twice"),
        (lambda d: d["requests"][0]["segments"].append({"image": "hat"}), r"request 0 \('q0'\): segments\[3\] names unknown image 'hat'"),
        (lambda d: d["requests"][0]["segments"].append({"text": -1}), r"request 0 \('q0'\): segments\[3\] \(a text token count, or an image id\) must be a non-negative int, got -1"),
        (lambda d: d["requests"][0]["segments"].append({"video": "x"}), r"request 0 \('q0'\): segments\[3\] must be"),
        (lambda d: d["requests"][0].update(segments=[{"text": 0}]), r"request 0 \('q0'\): the prompt is empty"),
        (lambda d: d["requests"][0].update(priority=1), r"request 0 \('q0'\): unknown fields \['priority'\]"),
        (lambda d: d["images"].update(hat={"height": 0, "width": 4}), "image 'hat' height must be a positive int"),
        (lambda d: d["images"].update(hat={"h": 4}), r"images\['hat'\] must be"),
    ],
)
def test_bad_trace_names_the_field_and_request(tmp_path, mutate, message):
    data = trace_to_json(small_trace())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_trace(path)


def test_invalid_json_is_a_value_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trace(path)


def test_format_is_one_line_per_request():
    text = format_trace(small_trace())
    assert sum('"rid"' in line for line in text.splitlines()) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_requests": 0}, "num_requests"),
        ({"repeat_share": 1.5}, "repeat_share"),
        ({"text_tokens": (5, 2)}, "text_tokens"),
        ({"text_tokens": (0, 2), "images_per_request": (0, 1)}, "empty"),
        ({"arrival_rate_per_s": 0.0}, "arrival_rate_per_s"),
    ],
)
def test_bad_workload_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkloadParams(**kwargs)


def test_bytes_per_token():
    # a replay sizes its cache as cache_tokens rows of this width (tests/test_sim_replay.py)
    from vitkit.sim.fake import FakeEncoder, bytes_per_token

    encoder = FakeEncoder(hidden=8)
    assert bytes_per_token(encoder) == 32 == encoder.bytes_per_token

    class Wide:
        hidden_size, dtype = 3584, torch.bfloat16

    assert bytes_per_token(Wide()) == 7168
    assert bytes_per_token(object()) is None


def test_fake_encoder_takes_any_str_hash():
    # regression: the seed was int(hash[:15], 16), so an explicit non-hex hash raised a bare ValueError
    from vitkit import MultimodalItem
    from vitkit.sim.fake import FakeEncoder

    encoder = FakeEncoder(hidden=4)
    sku, again, other = (MultimodalItem(torch.zeros(2), 3, hash=h) for h in ("sku-17", "sku-17", "sku-18"))
    out = encoder([sku, again, other])
    assert [tuple(t.shape) for t in out] == [(3, 4)] * 3
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
