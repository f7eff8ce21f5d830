"""The prefill cost model: recovers known coefficients, reports its error, validates windows."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.bench.prefill import grid_points
from vitkit.costs import results
from vitkit.costs.prefill import (
    PrefillCost,
    default_prefill_calibration,
    fit_prefill_cost,
    load_prefill_cost,
    step_features,
)

STORED = results.results_folder()

TERMS_TRUE = (0.9, 0.3, 0.1, 0.5)  # ms per 1e6 pairs, per window, per 1e3 keys, per 1e3 longest-window keys


def dense_true(rows: int) -> float:
    return max(7.0, 2.0 + 0.02 * rows)  # flat (weight-read bound), then linear: the graphed H100's shape


def synthetic_results(terms=TERMS_TRUE, noise=0.0, seed=0, dense=dense_true):
    """A ``vitkit.prefill/1`` dict over the real grid with times from a known model."""
    rng = random.Random(seed)
    rows = []
    for p in grid_points():
        n, *f = step_features(p["step_windows"])
        ms = (dense(n) + sum(c * x for c, x in zip(terms, f))) * (1 + noise * rng.uniform(-1, 1))
        rows.append({"tokens": n, "context": p["context"], "windows": p["windows"],
                     "step_windows": [list(w) for w in p["step_windows"]], "ms_median": ms})
    return {"schema": "vitkit.prefill/1", "machine": {"device_name": "synthetic"}, "rows": rows}


def _terms(cost):
    return (cost.ms_per_mega_pair, cost.ms_per_window, cost.ms_per_kilo_key, cost.ms_per_kilo_longest)


def test_fit_recovers_a_known_model():
    cost = fit_prefill_cost(synthetic_results())
    assert cost.knots == tuple(sorted({sum(n for _, n in p["step_windows"]) for p in grid_points()}))
    assert cost.knot_ms == pytest.approx([dense_true(k) for k in cost.knots], rel=1e-6)
    assert _terms(cost) == pytest.approx(TERMS_TRUE, rel=1e-6)
    assert cost.max_rel_error < 1e-9 and cost.points == len(grid_points())


def test_fit_reports_its_error_on_noisy_data():
    cost = fit_prefill_cost(synthetic_results(noise=0.05))
    assert 0.0 < cost.median_rel_error <= cost.max_rel_error < 0.1
    assert cost.ms_per_mega_pair == pytest.approx(TERMS_TRUE[0], rel=0.1)


def test_dense_part_never_falls_and_a_missing_term_stays_zero():
    # a dense part that dips (noise in a real grid) is fitted non-decreasing; absent terms are 0, not negative
    cost = fit_prefill_cost(synthetic_results(terms=(0.9, 0.0, 0.1, 0.0), dense=lambda n: 9.0 if n == 64 else dense_true(n)))
    assert all(b >= a for a, b in zip(cost.knot_ms, cost.knot_ms[1:]))
    assert min(_terms(cost)) >= 0.0


def test_dense_is_flat_below_the_first_knot_and_extends_the_last_segment():
    cost = PrefillCost((16, 64, 8192), (7.0, 8.0, 170.0), 0, 0, 0, 0, 3, 0, 0)
    assert cost.dense_ms(1) == cost.dense_ms(16) == 7.0
    assert cost.dense_ms(40) == pytest.approx(7.5)
    assert cost.dense_ms(16384) == pytest.approx(170.0 + 162.0 * 8192 / 8128)


def test_a_graphed_step_costs_its_bucket():
    cost = replace(fit_prefill_cost(synthetic_results()), graph_buckets=(256, 384, 512))
    # 300 new tokens run as 384 rows: the padding window adds rows, pairs, keys and one window
    assert step_features([(0, 300)], cost.graph_buckets) == (384, (300 * 150 + 84 * 42) / 1e6, 2.0, 0.384, 0.3)
    assert cost.step_ms([(0, 300)]) == pytest.approx(cost.dense_ms(384) + TERMS_TRUE[0] * (300 * 150 + 84 * 42) / 1e6
                                                     + 2 * TERMS_TRUE[1] + 0.384 * TERMS_TRUE[2] + 0.3 * TERMS_TRUE[3], rel=1e-6)
    # the padding costs what a real 84-token window without context would
    assert cost.step_ms([(0, 300)]) == pytest.approx(cost.step_ms([(0, 300), (0, 84)]), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40000), st.integers(1, 3000)), min_size=1, max_size=16),
       st.tuples(st.integers(0, 40000), st.integers(1, 3000)))
def test_adding_a_window_never_makes_a_step_cheaper(windows, extra):
    from vitkit.lm.graphs import PREFILL_GRAPH_BUCKETS

    cost = replace(fit_prefill_cost(synthetic_results()), graph_buckets=PREFILL_GRAPH_BUCKETS)
    one = cost.step_ms(windows)
    assert one > 0
    assert cost.step_ms([*windows, extra]) >= one - 1e-9


@pytest.mark.parametrize(("windows", "error", "match"), [
    ([], ValueError, "empty"), ([(0, 5), (3, 0)], ValueError, r"window 1 \(3, 0\)"),
    ([(-2, 5)], ValueError, r"window 0 \(-2, 5\)"), ([(0, 1.5)], TypeError, "new_tokens"),
    ([(0.5, 4)], TypeError, "window 0 .*context_tokens"), ([(1, 2, 3)], ValueError, r"window 0 is \(1, 2, 3\)"),
])
def test_bad_windows_raise(windows, error, match):
    with pytest.raises(error, match=match):
        PrefillCost((16,), (1.0,), 1, 1, 1, 1, 1, 0, 0).step_ms(windows)


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
    assert load_prefill_cost(path).ms_per_kilo_key == pytest.approx(TERMS_TRUE[2])
    assert results.newest("prefill", tmp_path) == path
    # the default file is the newest grid in the folder (by stamp), calibrated by nothing there
    older = synthetic_results(terms=(0.5, 0.3, 0.1, 0.5))
    (tmp_path / "prefill-20250101T000000Z.json").write_text(json.dumps(older))
    (tmp_path / "prefill-20260101T000000Z.png").write_bytes(b"")  # its figure is no grid
    assert load_prefill_cost(folder=tmp_path) == load_prefill_cost(path)
    with pytest.raises(FileNotFoundError, match=r"no prefill results .* in .*empty"):
        load_prefill_cost(folder=tmp_path / "empty")
    with pytest.raises(ValueError, match="prefill-20260101T000000Z.png: not a JSON results file"):
        load_prefill_cost(tmp_path / "prefill-20260101T000000Z.png")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "vitkit.bench/1", "rows": []}))
    with pytest.raises(ValueError, match="other.json: field 'schema' must be 'vitkit.prefill/1'"):
        load_prefill_cost(tmp_path / "other.json")


def test_stored_h100_fit_when_present():
    if not results.newest_first("prefill", STORED):
        pytest.skip("no stored H100 prefill results yet")
    cost = load_prefill_cost()
    assert cost.median_rel_error < 0.1 and cost.step_ms([(0, 2048)]) > 0
    assert cost.graph_buckets  # the stored runner graphs its small steps, and the model pads as it did


def _serving_steps(scale: float, n: int = 60, seed: int = 1):
    """Serving-like steps (2-4 windows of 200-400 new tokens, context 0) timed ``scale`` x the known model."""
    rng = random.Random(seed)
    steps = []
    for _ in range(n):
        windows = [(0, rng.randint(200, 400)) for _ in range(rng.randint(2, 4))]
        rows, *f = step_features(windows)
        steps.append({"windows": [list(w) for w in windows], "ms": scale * (dense_true(rows) + sum(c * x for c, x in zip(TERMS_TRUE, f)))})
    return steps


def test_serving_steps_calibrate_the_grid_where_the_replay_runs():
    grid = synthetic_results()
    base = fit_prefill_cost(grid)
    steps = _serving_steps(0.92)  # serving 8% faster than the grid's repeats of one step
    cal = fit_prefill_cost(grid, steps, "encoder-costs-x.json")
    assert cal.serving_steps == len(steps) and cal.points == base.points + len(steps)
    assert "60 serving steps of encoder-costs-x.json" in cal.source and base.serving_median_rel_error is None
    errs = [abs(cal.step_ms([tuple(w) for w in s["windows"]]) - s["ms"]) / s["ms"] for s in steps]
    base_errs = [abs(base.step_ms([tuple(w) for w in s["windows"]]) - s["ms"]) / s["ms"] for s in steps]
    assert max(base_errs) > 0.08 and sorted(errs)[len(errs) // 2] < 0.04  # the replay's shapes move to serving
    assert cal.serving_median_rel_error == pytest.approx(sorted(errs)[len(errs) // 2], abs=0.02)
    assert cal.step_ms([(16384, 4096)]) == pytest.approx(base.step_ms([(16384, 4096)]), rel=0.1)  # the grid still rules far away
    with pytest.raises(ValueError, match="serving step 1: ms must be > 0"):
        fit_prefill_cost(grid, [steps[0], steps[1] | {"ms": 0}])


def test_load_calibrates_with_the_newest_encoder_costs_file_that_has_serving_steps(tmp_path):
    path = tmp_path / "prefill-20260101T000000Z.json"
    path.write_text(json.dumps(synthetic_results()))
    assert load_prefill_cost(path).serving_steps == 0  # a grid file alone: no calibration
    costs = {"schema": results.schema("encoder-costs"), "kind": "gpu"}
    (tmp_path / "encoder-costs-20260101T000000Z.json").write_text(json.dumps(costs | {"serving_prefill_steps": _serving_steps(0.9)}))
    (tmp_path / "encoder-costs-20260102T000000Z.json").write_text(json.dumps(costs))  # newer, before the steps were kept
    found = default_prefill_calibration(tmp_path)
    assert found.name == "encoder-costs-20260101T000000Z.json"
    assert load_prefill_cost(path, found).serving_steps == 60
    with pytest.raises(ValueError, match="no serving_prefill_steps"):
        load_prefill_cost(path, tmp_path / "encoder-costs-20260102T000000Z.json")
    assert default_prefill_calibration(tmp_path / "nothing") is None
    # by default (no grid named) the newest grid of the folder with its newest calibration
    assert load_prefill_cost(folder=tmp_path) == load_prefill_cost(path, found)
