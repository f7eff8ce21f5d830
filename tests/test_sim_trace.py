"""Trace files and generated workloads: round trips, shipped examples, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.sim.fake import fake_item, qwen_like_tokens
from vitkit.sim.trace import (
    ImageSpec,
    Trace,
    TraceRequest,
    check_cache_sizes,
    example_traces,
    format_trace,
    load_trace,
    mean_rate_per_s,
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
        (lambda d: d["requests"][1].update(rid="q0"), r"request 1 \('q0'\): rid is used twice \(request 0 has it too\)"),
        (lambda d: d["requests"][1].update(arrival_ms=-0.5), r"request 1 \('q1'\): arrival_ms must be a finite number >= 0, got -0.5"),
        (lambda d: d["requests"][1].update(arrival_ms=float("nan")), r"request 1 \('q1'\): arrival_ms must be a finite number"),
        (lambda d: d["requests"][0].update(arrival_ms=30.0), r"request 1 \('q1'\): arrival_ms 25.5 is before request 0 \('q0'\) at 30.0; requests must be in arrival order"),
        (lambda d: d["requests"][1].update(arrival_ms="25"), r"request 1 \('q1'\): arrival_ms must be a finite number >= 0, got '25'"),
        (lambda d: d["requests"][1].update(rid=7), r"request 1: rid must be a non-empty string, got 7"),
        (lambda d: d.update(requests=[]), r"trace 'tiny': field 'requests' is empty"),
        (lambda d: d.update(request=[]), r"trace: unknown fields \['request'\]"),
        (lambda d: d.update(name=3), r"trace field 'name' must be a string, got 3"),
        (lambda d: d["requests"][0]["segments"].append({"image": "hat"}), r"request 0 \('q0'\): segments\[3\] names unknown image 'hat'"),
        (lambda d: d["requests"][0]["segments"].append({"text": -1}), r"request 0 \('q0'\): segments\[3\] \(a text token count, or an image id\) must be a non-negative int, got -1"),
        (lambda d: d["requests"][0]["segments"].append({"audio": "x"}), r"request 0 \('q0'\): segments\[3\] must be"),
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
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trace(tmp_path / "binary.json")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        trace_from_json([])


def test_a_missing_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"trace file .*nowhere.json does not exist \(give a path, or an example"):
        load_trace(tmp_path / "nowhere.json")


def test_the_trace_value_checks_order_as_the_file_does():
    with pytest.raises(ValueError, match=r"request 1 \('b'\): arrival_ms 1.0 is before request 0 \('a'\) at 2.0"):
        Trace("t", (TraceRequest("a", 2.0, (5,)), TraceRequest("b", 1.0, (5,))))
    Trace("t", (TraceRequest("a", 2.0, (5,)), TraceRequest("b", 2.0, (5,))))  # ties arrive in file order


def test_mean_rate_of_a_trace():
    assert mean_rate_per_s(small_trace()) == pytest.approx(1 / 0.0255)  # two requests 25.5 ms apart
    at_once = Trace("t", (TraceRequest("a", 5.0, (5,)), TraceRequest("b", 5.0, (5,))))
    assert mean_rate_per_s(at_once) is None


def test_cache_sizes_that_hold_the_largest_image_and_the_message_when_none_does():
    def rows(spec):
        return qwen_like_tokens(spec.height, spec.width)

    trace = small_trace()  # shoe 256 rows, bag 24 x 16 = 384 rows
    assert check_cache_sizes(trace, rows, [128, 384, 1024]) == [384, 1024]
    with pytest.raises(ValueError, match=r"trace 'tiny' request 1 \('q1'\): image 'bag' \(672x448 px\) has 384 "
                                         r"embedding rows, more than the largest cache asked for \(383 rows\)"):
        check_cache_sizes(trace, rows, [128, 383])
    unused = Trace("t", trace.requests, {**trace.images, "poster": ImageSpec(4000, 4000)})
    assert check_cache_sizes(unused, rows, [384]) == [384]  # an image no request shows takes no space


# Valid traces drawn at random: the file format round-trips them, and the checks refuse their broken copies.
_ids = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=8)


@st.composite
def traces(draw):
    images = draw(st.dictionaries(_ids, st.builds(ImageSpec, st.integers(28, 2000), st.integers(28, 2000)),
                                  max_size=4))
    rids = draw(st.lists(_ids, min_size=1, max_size=8, unique=True))
    gaps = draw(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=len(rids), max_size=len(rids)))
    segment = st.one_of(st.integers(1, 500), st.sampled_from(sorted(images))) if images else st.integers(1, 500)
    requests, now = [], 0.0
    for rid, gap in zip(rids, gaps):
        now += gap
        requests.append(TraceRequest(rid, now, tuple(draw(st.lists(segment, min_size=1, max_size=5)))))
    return Trace("drawn", tuple(requests), images)


@settings(max_examples=40, deadline=None)
@given(traces())
def test_any_valid_trace_round_trips_through_its_file(tmp_path_factory, trace):
    path = tmp_path_factory.mktemp("t") / "t.json"
    assert load_trace(save_trace(trace, path)) == trace


@settings(max_examples=40, deadline=None)
@given(traces().filter(lambda t: len(t.requests) > 1), st.data())
def test_a_trace_broken_anywhere_names_the_request(trace, data):
    k = data.draw(st.integers(1, len(trace.requests) - 1))
    raw = trace_to_json(trace)
    broken = data.draw(st.sampled_from(["earlier", "duplicate", "unknown image"]))
    if broken == "earlier":
        raw["requests"][k]["arrival_ms"] = raw["requests"][k - 1]["arrival_ms"] - 1.0
        message = rf"request {k} .*: arrival_ms .* is before request {k - 1}|request {k} .*: arrival_ms must be"
    elif broken == "duplicate":
        raw["requests"][k]["rid"] = raw["requests"][0]["rid"]
        message = rf"request {k} .*: rid is used twice \(request 0 has it too\)"
    else:
        raw["requests"][k]["segments"].append({"image": "not-an-image-id"})
        message = rf"request {k} .*: segments\[\d+\] names unknown image 'not-an-image-id'"
    with pytest.raises(ValueError, match=message):
        trace_from_json(raw)


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


def test_the_readme_example_is_a_valid_trace(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your own trace"):]
    example = section[section.index("```json") + len("```json"):section.index("```", section.index("```json") + 7)]
    assert len(example.strip().splitlines()) == 5
    (tmp_path / "my-app.json").write_text(example)
    trace = load_trace(tmp_path / "my-app.json")
    assert [r.rid for r in trace.requests] == ["q0", "q1"] and trace.requests[1].segments[-1] == "shoe"
