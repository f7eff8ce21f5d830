"""Assignment policies of the data-parallel encoder: every item once, loads as computed, LPT bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.encoders.assignment import POLICIES, assign

costs_st = st.lists(st.integers(min_value=0, max_value=5000), max_size=40)
world_st = st.integers(min_value=1, max_value=9)


@settings(max_examples=200, deadline=None)
@given(costs=costs_st, world=world_st, policy=st.sampled_from(POLICIES))
def test_every_item_exactly_once_and_loads_as_computed(costs, world, policy):
    plan = assign(costs, world, policy)
    assert plan.world_size == world
    flat = [i for share in plan.items for i in share]
    assert sorted(flat) == list(range(len(costs)))
    for share, load in zip(plan.items, plan.loads):
        assert list(share) == sorted(share)
        assert load == sum(costs[i] for i in share)


@settings(max_examples=200, deadline=None)
@given(costs=costs_st, world=world_st)
def test_token_balanced_max_load_within_lpt_bound(costs, world):
    plan = assign(costs, world, "token-balanced")
    if costs:
        # Greedy list scheduling: the rank that got the last item on the max-loaded rank was the
        # least loaded then, so max load <= mean + largest item.
        assert max(plan.loads) <= sum(costs) / world + max(costs)


@settings(max_examples=100, deadline=None)
@given(costs=costs_st, world=world_st)
def test_count_policies_balance_the_item_count(costs, world):
    for policy in ("round-robin", "contiguous"):
        sizes = [len(share) for share in assign(costs, world, policy).items]
        assert max(sizes) - min(sizes) <= 1


def test_policies_on_a_known_case():
    costs = [100, 10, 10, 10, 80, 10]
    assert assign(costs, 2, "round-robin").items == ((0, 2, 4), (1, 3, 5))
    assert assign(costs, 2, "contiguous").items == ((0, 1, 2), (3, 4, 5))
    balanced = assign(costs, 2, "token-balanced")
    assert balanced.items == ((0, 3), (1, 2, 4, 5))  # 100 + 10 vs 80 + 3 x 10 (ties: lowest rank)
    assert balanced.loads == (110, 110) and balanced.balance == 1.0
    assert assign(costs, 2, "round-robin").balance == pytest.approx(190 / 110)


def test_more_ranks_than_items_leaves_ranks_empty():
    plan = assign([5], 4, "token-balanced")
    assert plan.items == ((0,), (), (), ()) and plan.loads == (5, 0, 0, 0)
    assert assign([], 3, "contiguous").items == ((), (), ()) and assign([], 3).balance == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(costs=[1], world_size=0), "world_size"),
    (dict(costs=[1], world_size=True), "world_size"),
    (dict(costs=[1, -2], world_size=2), r"costs\[1\]"),
    (dict(costs=[1.5], world_size=2), r"costs\[0\]"),
    (dict(costs=[1], world_size=2, policy="random"), "policy"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        assign(**kwargs)
