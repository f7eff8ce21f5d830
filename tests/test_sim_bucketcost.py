"""The bucketed encoder's cost model (ms per bucket graph + per call) and the CPU re-run of a
stored GPU validation's modelled side."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.encoders import QWEN_BUCKETS, pack
from vitkit.sim.bucketcost import BucketCost, fit_bucket_cost, fit_stream_bucket_cost, nnls
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.stepcost import STORED, FlopPrefillCost, StepCosts, load_encoder_cost
from vitkit.sim.prefill import default_prefill_calibration
from vitkit.sim.validate import modelled_only, remodel, stored_replay, validate

TRUE_MS = {s: 4.0 + 3.5 * s / 1024 + (0.5 if s > 4096 else 0.0) for s in QWEN_BUCKETS.sizes}  # a step at 4096
PER_CALL_MS = 0.7
VALIDATION = STORED / "ttft-validate-20261127T042212Z.json"  # measured on the H100, with trace digests


def _true_cost() -> BucketCost:
    ms = tuple(TRUE_MS[s] for s in QWEN_BUCKETS.sizes)
    return BucketCost("qwen2.5-vl-7b", "vitkit", QWEN_BUCKETS, ms, PER_CALL_MS, 4, tuple(TRUE_MS), 0)


def _synthetic_steps(n: int, seed: int = 0) -> list[list[list[int]]]:
    """Steps of 1-3 calls of 1-8 images of 64-9216 patches (multiples of 4): calls over the
    largest bucket make several packs, so the per-call ms is told apart from the graphs' ms."""
    rng = random.Random(seed)
    return [[[4 * rng.randint(16, 2304) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 3))]
            for _ in range(n)]


def test_nnls_matches_a_known_constrained_solution():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nnls(a, np.array([1.0, 2.0, 3.0])) == pytest.approx([1.0, 2.0])
    assert nnls(a, np.array([-1.0, 2.0, 1.0])) == pytest.approx([0.0, 1.5])  # unconstrained: x0 < 0
    with pytest.raises(ValueError, match="nnls"):
        nnls(a, np.ones(2))


def test_fit_recovers_known_bucket_costs_from_synthetic_steps():
    truth = _true_cost()
    steps = _synthetic_steps(300)
    targets = [sum(truth.call_units_ms(c) for c in calls) for calls in steps]
    cost = fit_bucket_cost(steps, targets, QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="synthetic")
    assert len(cost.observed) >= 12
    for size in cost.observed:
        assert cost.bucket_ms[QWEN_BUCKETS.sizes.index(size)] == pytest.approx(TRUE_MS[size], rel=1e-6)
    assert cost.per_call_ms == pytest.approx(PER_CALL_MS, rel=1e-6)
    assert cost.max_rel_err == pytest.approx(0.0, abs=1e-9) and cost.points == 300
    # fitted on the small buckets only: the unseen ones are filled in, non-decreasing in size
    small = [[c for c in calls if sum(c) <= 1024] for calls in _synthetic_steps(300, seed=1)]
    small = [calls for calls in small if calls]
    part = fit_bucket_cost(small, [sum(truth.call_units_ms(c) for c in calls) for calls in small], QWEN_BUCKETS,
                           unit=4, encoder="e", impl="i", source="synthetic")
    assert max(part.observed) <= 1024 and list(part.bucket_ms) == sorted(part.bucket_ms)
    largest = max(part.observed)
    assert part.bucket_ms[-1] == pytest.approx(part.bucket_ms[QWEN_BUCKETS.sizes.index(largest)] * QWEN_BUCKETS.largest / largest)


def test_fit_checks_its_inputs():
    with pytest.raises(ValueError, match="2 steps of calls but 1 targets"):
        fit_bucket_cost([[[4]], [[8]]], [1.0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")
    with pytest.raises(ValueError, match="no step with an encoder call"):
        fit_bucket_cost([[], [[]]], [1.0, 2.0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")
    with pytest.raises(ValueError, match="target 0"):
        fit_bucket_cost([[[4]]], [0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40))
def test_a_call_costs_its_packs_plus_one_call(rows):
    cost = _true_cost()
    units = [4 * r for r in rows]
    packs = pack(units, QWEN_BUCKETS)
    assert cost.call_ms(rows) == pytest.approx(PER_CALL_MS + sum(cost.pack_ms(p) for p in packs))
    by_hand = sum(cost.bucket_ms[QWEN_BUCKETS.sizes.index(p.bucket)] if p.bucket else cost.bucket_ms[-1] * p.size / QWEN_BUCKETS.largest
                  for p in packs)
    assert cost.call_ms(rows) == pytest.approx(PER_CALL_MS + by_hand)
    assert cost.call_ms([]) == 0.0


def test_stored_stream_calls_recomputed_and_fitted():
    (path,) = sorted(STORED.glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    cost, steps = fit_stream_bucket_cost(path, "qwen2.5-vl-7b")
    rows = [r for r in json.loads(path.read_text())["steps"] if r["impl"] == "vitkit"]
    assert len(steps) == len(rows) and not any(s["flagged"] for s in steps)  # every row's calls recomputed exactly
    assert cost.median_rel_err < 0.05 and cost.per_call_ms >= 0
    assert list(cost.bucket_ms) == sorted(cost.bucket_ms)
    # the step-level error the module reports equals the model applied to the recomputed calls
    s = steps[0]
    assert s["modelled_ms"] == pytest.approx(sum(cost.call_units_ms(c) for c in s["calls"]))


def test_encoder_cost_step_ms_reads_items_per_call():
    enc = load_encoder_cost()
    assert isinstance(enc.call, BucketCost)
    assert enc.step_ms([[256, 256], [256]]) == pytest.approx(enc.call.call_ms([256, 256]) + enc.call.call_ms([256]))
    assert enc.step_ms([256]) == pytest.approx(enc.call.call_ms([256]))  # an int: one item


def test_modelled_only_rebuilds_the_stored_replays():
    stored = json.loads(VALIDATION.read_text())
    trace, config, process = stored_replay(stored["rows"][0], stored["settings"])
    assert (process.rate_per_s, process.seed, len(trace.requests)) == (40.0, 0, 200)
    assert (config.mode, config.chunked_prefill_size, config.cache_tokens) == ("batched", 2048, 16384)
    data = modelled_only(VALIDATION)  # each rebuilt trace checked against the row's digest
    assert "trace digests checked" in data["note"] and "measured buckets" in data["sources"]["modelled"]
    for old, new in zip(stored["rows"], data["rows"]):
        assert new["measured_p99_ms"] == old["measured_p99_ms"] and new["trace_digest"] == old["trace_digest"]
        assert new["previous_modelled_p99_ms"] == old["modelled_p99_ms"]
    # by default the newest stored models, the prefill grid calibrated by the newest serving steps
    assert data["settings"]["prefill_calibration_file"] == default_prefill_calibration().name
    assert "serving steps of encoder-costs-" in data["sources"]["modelled"]
    # a named card's files: its encoder costs calibrate its prefill grid, unless another calibration is named
    card = {"encoder_costs": STORED / "encoder-costs-20261127T054800Z.json", "prefill": STORED / "prefill-20261127T055154Z.json"}
    same = modelled_only(VALIDATION, **card)  # that file predates the kept prefill steps: no calibration
    assert same["settings"]["encoder_costs_file"] == "encoder-costs-20261127T054800Z.json"
    assert same["settings"]["prefill_calibration_file"] is None and "serving steps" not in same["sources"]["modelled"]
    calibrated = modelled_only(VALIDATION, **card, prefill_calibration=default_prefill_calibration())
    assert "serving steps of" in calibrated["sources"]["modelled"]
    assert calibrated["rows"][0]["modelled_p99_ms"] != same["rows"][0]["modelled_p99_ms"]
    costs = StepCosts(load_encoder_cost(), FlopPrefillCost())
    tampered = stored | {"rows": [stored["rows"][0] | {"trace_digest": "0" * 16}]}
    with pytest.raises(ValueError, match="rebuilt trace's digest"):
        remodel(tampered, costs)
    unproven = stored | {"rows": [{k: v for k, v in stored["rows"][0].items() if k != "trace_digest"}]}
    with pytest.raises(ValueError, match="no trace_digest"):
        remodel(unproven, costs)


def test_validate_stores_each_measured_step_with_the_models_view_of_it():
    costs = StepCosts(load_encoder_cost(), FlopPrefillCost())
    (row,) = validate(FakeEncoder(8), FlopPrefillCost(), costs, workloads=["small-images"], modes=["batched"],
                      sizes={"small-images": (40.0, 12)}, warm_passes=0)
    steps = row["measured_steps"]
    assert len(steps) == row["measured"]["steps"]
    assert sum(s["prefill_ms"] for s in steps) == pytest.approx(row["measured_prefill_ms"])
    assert all(s["modelled_prefill_ms"] == pytest.approx(s["prefill_ms"]) for s in steps)  # same prefill model
    assert sum(len(c) for s in steps for c in s["call_item_rows"]) == row["measured"]["encoded_items"]
    # each step's calls timed one by one: as many as it made, adding up to its encoder ms
    assert all(len(s["call_ms"]) == len(s["call_item_rows"]) for s in steps)
    assert all(sum(s["call_ms"]) == pytest.approx(s["encoder_ms"]) for s in steps)
    assert row["measured_pass_encoder_stats"] is None  # the fake encoder keeps no counters
    assert row["open_loop_prefill_ms"] == pytest.approx(row["measured_prefill_ms"]) and row["measured_pass_compiles"] == 0
    stored = {"rows": [row], "settings": {"chunked_prefill_size": 2048, "cache_tokens": 16384}}
    (again,) = remodel(stored, costs)
    assert again["open_loop_prefill_ms"] == pytest.approx(row["measured_prefill_ms"])
    assert again["open_loop_encoder_ms"] == pytest.approx(sum(s["modelled_encoder_ms"] for s in steps))
