"""The prefill cost model: recovers known coefficients, reports its error, validates windows."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.bench.prefill import grid_points
from vitkit.sim.prefill import (
    DEFAULT_FOLDER,
    PrefillCost,
    default_prefill_results,
    fit_prefill_cost,
    load_prefill_cost,
    step_features,
)

TRUE = (1.5, 0.02, 0.9, 0.3)  # intercept ms, ms/token, ms per 1e6 pairs, ms/window


def synthetic_results(coef=TRUE, noise=0.0, seed=0):
    """A ``vitkit.prefill/1`` dict over the real grid with times from known coefficients."""
    rng = random.Random(seed)
    rows = []
    for p in grid_points():
        f = step_features(p["step_windows"])
        ms = sum(c * x for c, x in zip(coef, f)) * (1 + noise * rng.uniform(-1, 1))
        rows.append({"tokens": int(f[1]), "context": p["context"], "windows": p["windows"],
                     "step_windows": [list(w) for w in p["step_windows"]], "ms_median": ms})
    return {"schema": "vitkit.prefill/1", "machine": {"device_name": "synthetic"}, "rows": rows}


def test_fit_recovers_known_coefficients():
    cost = fit_prefill_cost(synthetic_results())
    got = (cost.intercept_ms, cost.ms_per_token, cost.ms_per_mega_pair, cost.ms_per_window)
    assert got == pytest.approx(TRUE, rel=1e-6)
    assert cost.max_rel_error < 1e-9 and cost.points == len(grid_points())


def test_fit_reports_its_error_on_noisy_data():
    cost = fit_prefill_cost(synthetic_results(noise=0.05))
    assert 0.0 < cost.median_rel_error <= cost.max_rel_error < 0.1
    assert cost.ms_per_mega_pair == pytest.approx(TRUE[2], rel=0.1)


def test_a_term_that_would_be_negative_is_dropped():
    cost = fit_prefill_cost(synthetic_results(coef=(0.0, 0.02, 0.9, 0.0)))
    assert min(cost.intercept_ms, cost.ms_per_window) >= 0.0
    assert cost.max_rel_error < 1e-6


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40000), st.integers(1, 9000)), min_size=1, max_size=32))
def test_step_ms_is_additive_and_positive(windows):
    cost = fit_prefill_cost(synthetic_results())
    one = cost.step_ms(windows)
    assert one > 0
    # the model is linear: a step costs its intercept plus each window's share
    shares = sum(cost.step_ms([w]) - cost.intercept_ms for w in windows)
    assert one == pytest.approx(cost.intercept_ms + shares, rel=1e-9)


@pytest.mark.parametrize(("windows", "error", "match"), [
    ([], ValueError, "empty"), ([(0, 5), (3, 0)], ValueError, r"window 1 \(3, 0\)"),
    ([(-2, 5)], ValueError, r"window 0 \(-2, 5\)"), ([(0, 1.5)], TypeError, "new_tokens"),
])
def test_bad_windows_raise(windows, error, match):
    with pytest.raises(error, match=match):
        PrefillCost(1, 1, 1, 1, 1, 0, 0).step_ms(windows)


def test_bad_results_raise_naming_the_field():
    with pytest.raises(ValueError, match="schema"):
        fit_prefill_cost({"schema": "vitkit.bench/1", "rows": []})
    data = synthetic_results()
    data["rows"][3]["ms_median"] = 0
    with pytest.raises(ValueError, match="row 3"):
        fit_prefill_cost(data)


def test_load_from_a_file_and_the_default(tmp_path):
    path = tmp_path / "prefill-20260101T000000Z.json"
    path.write_text(json.dumps(synthetic_results()))
    assert load_prefill_cost(path).ms_per_token == pytest.approx(TRUE[1])
    assert default_prefill_results(tmp_path) == path
    with pytest.raises(FileNotFoundError, match="vitkit.bench.prefill"):
        default_prefill_results(tmp_path / "empty")


def test_stored_h100_fit_when_present():
    if not list(DEFAULT_FOLDER.glob("prefill-*.json")):
        pytest.skip("no stored H100 prefill results yet")
    cost = load_prefill_cost()
    assert cost.median_rel_error < 0.1 and cost.step_ms([(0, 2048)]) > 0


def test_fit_finds_a_launch_bound_floor_and_the_kv_read_term():
    # Steps that cannot run faster than 20 ms, and a cost per key read from the cache: the H100's shape.
    coef = (2.0, 0.02, 0.9, 0.0, 0.1)
    data = synthetic_results(coef)
    for row in data["rows"]:
        row["ms_median"] = max(20.0, row["ms_median"])
    cost = fit_prefill_cost(data)
    assert cost.floor_ms == pytest.approx(20.0)
    assert cost.ms_per_kilo_key == pytest.approx(0.1, rel=1e-6) and cost.max_rel_error < 1e-6
    assert cost.step_ms([(0, 1)]) == pytest.approx(20.0)  # nothing modelled below the floor
