"""The encoder's cost model: the bucketed encoder's ms per bucket graph + per call (fitted or
measured), and ``EncoderCost``, the one encoder model a replay's clock applies to a step's calls."""

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.costs import results
from vitkit.costs.encoder import BucketCost, EncoderCost, fit_bucket_cost, load_encoder_cost, measured_bucket_cost, nnls
from vitkit.encoders import QWEN_BUCKETS, pack

STORED = results.results_folder()
TRUE_MS = {s: 4.0 + 3.5 * s / 1024 + (0.5 if s > 4096 else 0.0) for s in QWEN_BUCKETS.sizes}  # a step at 4096
PER_CALL_MS = 0.7


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


def test_encoder_cost_step_ms_reads_items_per_call():
    enc = load_encoder_cost()
    assert isinstance(enc.call, BucketCost)
    assert enc.step_ms([[256, 256], [256]]) == pytest.approx(enc.call.call_ms([256, 256]) + enc.call.call_ms([256]))
    assert enc.step_ms([256]) == pytest.approx(enc.call.call_ms([256]))  # an int: one item
    assert enc.step_ms([]) == 0.0 and enc.step_ms([[]]) == 0.0  # a step without an encode costs no encoder time


def test_stored_h100_encoder_cost_is_named_and_close():
    cost = load_encoder_cost()  # measured: graph replays and a host share fitted to serving calls
    assert cost.source.startswith("measured buckets encoder-costs-") and "qwen2.5-vl-7b" in cost.source
    # the bookkeeping is the host time around the encoder in the stored GPU stream file
    assert "bookkeeping stream-qwen2.5-vl-7b-" in cost.source and cost.bookkeeping_ms > 0
    # single serving calls jitter (H100: median error 12%); their sum is what the replay's clock adds
    assert cost.call.median_rel_err < 0.15
    measured = re.match(r"measured buckets (encoder-costs-\S+\.json),", cost.source).group(1)
    _, rows = measured_bucket_cost(STORED / measured)
    served = [r for r in rows if r["kind"] == "serving"]
    assert sum(r["modelled_ms"] for r in served) == pytest.approx(sum(r["measured_ms"] for r in served), rel=0.05)
    assert cost.call.call_ms([256]) < cost.call.call_ms([256, 256]) < 2 * cost.call.call_ms([256])
    # the folder named is the stored one by default; the newest GPU file of the encoder is chosen
    assert load_encoder_cost(STORED) == cost
    newest = next(p for p in results.newest_first("encoder-costs", STORED)
                  if results.read("encoder-costs", p).get("kind") == "gpu")
    assert measured == newest.name


def test_encoder_cost_sums_its_calls():
    call = _true_cost()
    cost = EncoderCost(call, bookkeeping_ms=1.5, source="test")
    assert cost.step_ms([[256], [64, 64, 64]]) == pytest.approx(call.call_ms([256]) + call.call_ms([64, 64, 64]))


def test_loader_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"no GPU encoder-costs file of encoder 'qwen2.5-vl-7b' impl 'vitkit' in .*"
                                         r"python -m vitkit.bench encoder-costs"):
        load_encoder_cost(tmp_path)
    with pytest.raises(ValueError, match="no GPU encoder-costs file of encoder 'siglip-so400m-384'"):
        load_encoder_cost(STORED, "siglip-so400m-384")
