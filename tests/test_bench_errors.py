"""Per-call model errors against a validation replay's own calls, by what might explain them, and the p99
band that resampling them gives: on small hand-made rows, and on the stored H100 validations."""

from __future__ import annotations

import numpy as np
import pytest

from vitkit.bench import errors
from vitkit.bench.errors import (CallError, ErrorModel, Pools, StepError, analyse, bucket_label, call_errors,
                                 context_groups, error_model, group_errors, named_files, p99_band, prefill_errors,
                                 prefill_label)
from vitkit.costs import results
from vitkit.costs.encoder import BucketCost, VideoSize
from vitkit.encoders.buckets import Buckets

STORED = results.results_folder()
# a GPU validation of both small-image modes with per-call ms, and the encoder-costs file it was modelled with
VALIDATION = STORED / "ttft-validate-20261127T061731Z.json"


def toy_cost() -> BucketCost:
    """Buckets of 4 and 8 units (one unit a row): 1 ms and 2 ms a pack, 0.5 ms a call."""
    return BucketCost("toy", "vitkit", Buckets((4, 8), max_items=4), (1.0, 2.0), 0.5, 1, (4, 8), 0)


def step(index, start_ms, calls, call_ms, windows, encoder_ms=None, prefill_ms=3.0):
    return {"step": index, "start_ms": start_ms, "encoder_ms": sum(call_ms) if encoder_ms is None else encoder_ms,
            "prefill_ms": prefill_ms if windows else 0.0, "windows": windows, "call_item_rows": calls,
            "call_ms": call_ms}


def toy_row():
    # step 0: one call; step 1 starts right after step 0 (+ 0.5 ms bookkeeping): two calls;
    # step 2 starts after an idle jump of the clock: one call of two items in two packs
    s0 = step(0, 0.0, [[3]], [1.5], [[0, 100]])
    s1 = step(1, 0.0 + 1.5 + 3.0 + 0.5, [[4], [6]], [1.0, 3.0], [[100, 200]])
    s2 = step(2, s1["start_ms"] + 4.0 + 3.0 + 0.5 + 10.0, [[8, 4]], [4.0], [[0, 50]])
    return {"workload": "w", "mode": "batched", "measured_steps": [s0, s1, s2]}


def test_each_call_against_the_model_with_what_ran_before_it():
    calls = call_errors(toy_row(), toy_cost())
    assert [(c.step, c.index, c.rows, c.buckets) for c in calls] == [
        (0, 0, (3,), "4"), (1, 0, (4,), "4"), (1, 1, (6,), "8"), (2, 0, (8, 4), "8+4")]
    assert [c.modelled_ms for c in calls] == [1.5, 1.5, 2.5, 3.5]
    assert calls[0].rel_err == pytest.approx(0.0) and calls[2].rel_err == pytest.approx((2.5 - 3.0) / 3.0)
    assert [c.before for c in calls] == ["nothing", "prefill", "encoder call", "prefill"]
    assert [c.previous_prefill_rows for c in calls] == [0, 100, 0, 200]  # the new rows of the step that ran before
    assert [c.previous_buckets for c in calls] == ["none", "4", "4", "8"]
    assert [c.idle_ms for c in calls] == [0.0, 0.0, 0.0, pytest.approx(10.0)]  # the clock's jump, less bookkeeping
    assert [c.half for c in calls] == ["first", "first", "first", "second"]  # by step: steps 0-1 of 3
    with pytest.raises(ValueError, match="no per-call ms"):
        call_errors({"workload": "w", "mode": "m", "measured_steps": [{"step": 0}]}, toy_cost())


def test_a_videos_call_is_labelled_and_modelled_by_the_pieces_the_encoder_runs():
    cost = toy_cost()
    video = VideoSize(3 * 6, 3)  # 3 temporal patches of 6 units: two would overflow bucket 8, so one a piece
    assert bucket_label([video, 2], cost) == "8+8+8" and bucket_label([18, 2], cost) == "oversize+4"
    # as stored: the rows, and the temporal patches beside them (JSON keeps a VideoSize as its rows)
    stored = step(0, 0.0, [[18, 2]], [6.0], [[0, 10]]) | {"call_item_temporal": [[3, 0]]}
    (call,) = call_errors({"workload": "w", "mode": "batched", "measured_steps": [stored]}, cost)
    assert call.buckets == "8+8+8" and call.modelled_ms == pytest.approx(0.5 + 3 * 2.0) and call.rows[0].temporal == 3
    (image,) = call_errors({"workload": "w", "mode": "batched", "measured_steps": [step(0, 0.0, [[18, 2]], [6.0],
                                                                                        [[0, 10]])]}, cost)
    assert image.buckets == "oversize+4" and image.modelled_ms == pytest.approx(0.5 + 2.0 * 18 / 8 + 1.0)


def test_an_image_over_the_largest_bucket_is_labelled_by_its_large_bucket():
    large = BucketCost("toy", "vitkit", Buckets((4, 8), max_items=4, large=(12, 16)), (1.0, 2.0), 0.5, 1, (4, 8), 0)
    assert bucket_label([10, 3], large) == "12 large+4" and bucket_label([17], large) == "oversize"


def test_groups_sum_what_the_replay_clock_adds():
    calls = call_errors(toy_row(), toy_cost())
    by_before = {g.key: g for g in group_errors(calls, lambda c: c.before)}
    assert by_before["prefill"].calls == 2
    assert by_before["prefill"].measured_ms == 5.0 and by_before["prefill"].modelled_ms == 5.0
    assert by_before["prefill"].total_rel_err == pytest.approx(0.0)
    half = group_errors(calls, lambda c: f"{c.half} half", ["first half", "second half"])
    assert [g.key for g in half] == ["first half", "second half"]  # the order asked for, not by size
    groups = context_groups(calls)
    assert {"bucket", "images", "bucket x images", "ran before", "previous prefill", "previous call", "replay clock",
            "half"} <= set(groups)
    assert sum(g.calls for g in groups["previous prefill"]) == len(calls)
    assert {g.key for g in groups["replay clock"]} == {"back to back", "after an idle jump"}


def test_prefill_steps_are_classed_by_their_graph_bucket():
    class Prefill:
        graph_buckets = (128, 256)

        def step_ms(self, windows):
            return 2.0 * sum(new for _, new in windows) / 100

    assert [prefill_label(n, Prefill()) for n in (100, 128, 200, 300)] == ["128 rows", "128 rows", "256 rows",
                                                                           "> 256 rows"]
    assert prefill_label(5, object()) == "all"
    (first, second, third) = prefill_errors(toy_row(), Prefill())
    assert (first.rows, first.label, first.measured_ms, first.modelled_ms) == (100, "128 rows", 3.0, 2.0)
    assert (second.rows, second.modelled_ms) == (200, 4.0) and second.rel_err == pytest.approx(1 / 3)  # [context, new]


def test_error_model_keeps_replay_offsets_and_class_bias():
    def call(mode, label, rows, ratio):
        return CallError("w", mode, 0, 0, (rows,), label, ratio * 10.0, 10.0)

    calls = [call("batched", "4", 4, 1.1)] * 30 + [call("batched", "8", 8, 1.3)] * 5
    calls += [call("per_request", "4", 4, 0.9)]
    steps = [StepError("w", "batched", 100, "128 rows", 2.0, 1.0)] * 3
    model = error_model(calls, steps, "toy")
    assert model.offsets == ((pytest.approx(1.1), pytest.approx(2.0)), (pytest.approx(0.9), 1.0))
    assert model.calls.by_class["4"] == (pytest.approx(1.0),) * 31  # each over its replay's median
    assert model.calls.by_class["8"] == (pytest.approx(1.3 / 1.1),) * 5
    rng = np.random.default_rng(0)
    # a class with too few ratios draws from itself and the classes nearest in size, not from all
    assert len(model.calls.pool("8", 8)) == 5 + 31
    assert model.calls.draw("4", 4, rng) == pytest.approx(1.0)
    assert model.prefill.draw("128 rows", 100, rng) == pytest.approx(1.0)
    assert Pools({}, {}).draw("x", 1, rng) == 1.0  # nothing to draw: taken as modelled
    with pytest.raises(ValueError, match="no encoder calls"):
        error_model([], steps, "empty")


def test_bucket_label_of_a_stored_call():
    cost = toy_cost()
    assert bucket_label([3, 3], cost) == "8" and bucket_label([9], cost) == "oversize"


def test_named_files_of_a_stored_validation_and_a_missing_one():
    validation = results.read("ttft-validate", VALIDATION)
    files = named_files(validation, STORED)
    assert files["encoder"].name == "encoder-costs-20261127T061643Z.json"
    assert files["prefill"].name.startswith("prefill-") and files["calibration"] is None
    older = results.read("ttft-validate", STORED / "ttft-validate-20261127T055439Z.json")
    with pytest.raises(FileNotFoundError, match="encoder-costs-20261127T045531Z.json, not in"):
        named_files(older, STORED)


@pytest.fixture(scope="module")
def stored():
    return analyse(VALIDATION, draws=0)


def test_stored_h100_calls_per_bucket(stored):
    """What the stored H100 run shows: one-image calls are modelled within 1% at the median (the bucket
    scales were fitted minutes before, in the same process); the rare four-image packs of the 4096-row
    bucket are modelled high, in batched mode only (per-request calls hold one image each)."""
    assert [(r.workload, r.mode) for r in stored.rows] == [("small-images", "batched"), ("small-images", "per_request")]
    calls = sum(len(s["call_ms"]) for row in results.read("ttft-validate", VALIDATION)["rows"]
                for s in row["measured_steps"])
    assert sum(len(r.calls) for r in stored.rows) == calls
    for row in stored.rows:
        groups = {g.key: g for g in row.groups["bucket x images"]}
        assert abs(groups["1024 x 1"].median_rel_err) < 0.01
        assert set(groups) == {"1024 x 1"} or groups["4096 x 4"].median_rel_err > 0.05
    assert stored.rows[0].bands == {}


def test_the_band_of_exact_errors_is_the_models_own_p99(stored):
    """Ratios of 1 everywhere: every draw replays the model itself, so the band is one point."""
    validation = results.read("ttft-validate", VALIDATION)
    row = validation["rows"][0]
    files = named_files(validation, STORED)
    from vitkit.costs.clock import StepCosts
    from vitkit.costs.encoder import load_encoder_cost
    from vitkit.costs.prefill import load_prefill_cost

    costs = StepCosts(load_encoder_cost(STORED, costs_file=files["encoder"]), load_prefill_cost(files["prefill"]))
    exact = ErrorModel(Pools({"any": (1.0,)}, {"any": 1.0}), Pools({}, {}), ((1.0, 1.0),), "exact")
    band = p99_band(row, validation["settings"], costs, exact, draws=2)
    assert band.lo_ms == pytest.approx(band.hi_ms) == pytest.approx(band.modelled_p99_ms)
    assert band.modelled_p99_ms == pytest.approx(row["modelled_p99_ms"])  # the validation's own modelled side
    assert band.inside == (band.lo_ms <= row["measured_p99_ms"] <= band.hi_ms)
    slower = ErrorModel(Pools({"any": (1.0,)}, {"any": 1.0}), Pools({}, {}), ((1.2, 1.2),), "20% slower")
    assert p99_band(row, validation["settings"], costs, slower, draws=2).lo_ms > band.hi_ms
    with pytest.raises(ValueError, match="draws must be >= 2"):
        p99_band(row, validation["settings"], costs, exact, draws=1)


def test_cli_prints_tables_and_skips_what_it_cannot_model(capsys, monkeypatch):
    monkeypatch.setattr(errors, "DRAWS", 0)
    assert errors.main([str(VALIDATION), str(STORED / "ttft-validate-20261127T055439Z.json"), "--draws", "0"]) == 0
    out = capsys.readouterr().out
    assert "small-images batched: 432 calls" in out and "by bucket x images:" in out and "1024 x 1" in out
    assert "ttft-validate-20261127T055439Z.json: skipped: the validation was modelled with" in out


def test_each_gpu_run_once_with_its_newest_models():
    gpu = errors.gpu_validations(STORED)
    assert VALIDATION in gpu and all(not results.read("ttft-validate", r)["settings"].get("modelled_only") for r in gpu)
    runs = errors.measured_runs(STORED)
    assert len(runs) == len(gpu) and {errors.measured_run(r) for r in runs} == {g.name for g in gpu}
    remodel = STORED / "ttft-validate-20261127T061856Z.json"  # VALIDATION's modelled side, re-modelled on CPU
    assert remodel in runs and VALIDATION not in runs and errors.measured_run(remodel) == VALIDATION.name


def test_other_runs_give_the_replay_offsets_one_calibration_cannot():
    """How far each stored replay sat from models fitted minutes before it: the offsets the stated band adds."""
    runs = errors.gpu_validations(STORED)
    offsets, used = errors.run_offsets(runs)
    assert "h100/ttft-validate-20261127T055439Z.json" not in used  # its models are not stored
    assert f"h100/{VALIDATION.name}" in used and len(offsets) >= 2 * len(used)
    assert all(0.8 < enc < 1.2 and 0.8 < pre < 1.2 for enc, pre in offsets)
    alone = analyse(VALIDATION, draws=2, runs=[VALIDATION], bands=("calibration + runs",))
    assert all(set(r.bands) == {"calibration replay"} for r in alone.rows)  # no other run: the calibration alone
    wider = analyse(VALIDATION, draws=2, runs=runs, bands=("calibration + runs", "calibration replay"))
    row = wider.rows[0]
    assert row.stated_band is row.bands["calibration + runs"] and "replay offsets of" in row.stated_band.errors
