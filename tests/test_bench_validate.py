"""The GPU validation's comparison logic, run on CPU with stand-ins (a fake encoder, a modelled
prefill as the "measured" runner), and the CPU re-run of a stored validation's modelled side."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cost_doubles import LinearPrefill
from vitkit.bench import validate as validate_module
from vitkit.bench.validate import main as validate_main
from vitkit.bench.validate import (measured_steps, modelled_only, open_loop, remodel, step_calls, stored_replay,
                                   validate)
from vitkit.costs import results
from vitkit.costs.clock import StepCosts, TimedEncoder
from vitkit.costs.encoder import VideoSize, load_encoder_cost
from vitkit.costs.prefill import default_prefill_calibration, load_prefill_cost
from vitkit.sim.fake import FakeEncoder

STORED = results.results_folder()
# a GPU validation with trace digests (pinned: a fixture, not a stored result)
VALIDATION = Path(__file__).parent / "fixtures" / "ttft-validate-20261127T042212Z.json"


@pytest.fixture(scope="module")
def prefill():
    """The stored card's prefill model: the "measured" runner and the modelled one alike."""
    return load_prefill_cost()


@pytest.fixture(scope="module")
def costs(prefill):
    return StepCosts(load_encoder_cost(), prefill)


def test_modelled_only_rebuilds_the_stored_replays():
    stored = json.loads(VALIDATION.read_text())
    trace, config, process = stored_replay(stored["rows"][0], stored["settings"])
    assert (process.rate_per_s, process.seed, len(trace.requests)) == (40.0, 0, 200)
    assert (config.mode, config.scheduler.chunked_prefill_size, config.cache_tokens) == ("batched", 2048, 16384)
    data = modelled_only(VALIDATION)  # each rebuilt trace checked against the row's digest
    assert "trace digests checked" in data["note"] and "measured buckets" in data["sources"]["modelled"]
    for old, new in zip(stored["rows"], data["rows"]):
        assert new["measured_p99_ms"] == old["measured_p99_ms"] and new["trace_digest"] == old["trace_digest"]
        assert new["previous_modelled_p99_ms"] == old["modelled_p99_ms"]
    # by default the newest stored models, the prefill grid calibrated by the newest serving steps
    assert data["settings"]["prefill_calibration_file"] == default_prefill_calibration().name
    assert data["settings"]["prefill_file"] == results.newest("prefill", STORED).name
    assert "serving steps of encoder-costs-" in data["sources"]["modelled"]
    # a named card's files: its encoder costs calibrate its prefill grid, unless another calibration is named
    card = {"encoder_costs": STORED / "encoder-costs-20261127T054800Z.json",
            "prefill": STORED / "prefill-20261127T055154Z.json"}
    same = modelled_only(VALIDATION, **card)  # that file predates the kept prefill steps: no calibration
    assert same["settings"]["encoder_costs_file"] == "encoder-costs-20261127T054800Z.json"
    assert same["settings"]["prefill_calibration_file"] is None and "serving steps" not in same["sources"]["modelled"]
    calibrated = modelled_only(VALIDATION, **card, prefill_calibration=default_prefill_calibration())
    assert "serving steps of" in calibrated["sources"]["modelled"]
    assert calibrated["rows"][0]["modelled_p99_ms"] != same["rows"][0]["modelled_p99_ms"]
    # the results folder is an argument: the same models from it by name
    assert modelled_only(VALIDATION, STORED)["rows"] == data["rows"]
    costs = StepCosts(load_encoder_cost(), LinearPrefill())
    tampered = stored | {"rows": [stored["rows"][0] | {"trace_digest": "0" * 16}]}
    with pytest.raises(ValueError, match="rebuilt trace's digest"):
        remodel(tampered, costs)
    unproven = stored | {"rows": [{k: v for k, v in stored["rows"][0].items() if k != "trace_digest"}]}
    with pytest.raises(ValueError, match="no trace_digest"):
        remodel(unproven, costs)


def test_modelled_only_refuses_a_file_that_is_not_a_validation(tmp_path):
    other = results.write("ttft", {"rows": []}, tmp_path / "ttft-20260101T000000Z.json")
    with pytest.raises(ValueError, match="field 'schema' must be 'vitkit.ttft-validate/1'"):
        modelled_only(other)


def test_modelled_only_cli_writes_a_new_validation_file(tmp_path, capsys):
    validate_main(["--modelled-only", "--measured", str(VALIDATION), "--out", str(tmp_path)])
    (path,) = tmp_path.glob("ttft-validate-*.json")
    data = results.read("ttft-validate", path)
    assert data["settings"]["modelled_only"] and data["settings"]["measured_file"] == VALIDATION.name
    assert data["created"] == results.stamp_of(path)
    assert "small-images" in capsys.readouterr().out


def test_validate_stores_each_measured_step_with_the_models_view_of_it(costs, prefill):
    (row,) = validate(FakeEncoder(8), prefill, costs, workloads=["small-images"], modes=["batched"],
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
    assert row["open_loop_prefill_ms"] == pytest.approx(row["measured_prefill_ms"])
    assert row["measured_pass_compiles"] == 0
    stored = {"rows": [row], "settings": {"chunked_prefill_size": 2048, "cache_tokens": 16384}}
    (again,) = remodel(stored, costs)
    assert again["open_loop_prefill_ms"] == pytest.approx(row["measured_prefill_ms"])
    assert again["open_loop_encoder_ms"] == pytest.approx(sum(s["modelled_encoder_ms"] for s in steps))


def test_validate_compares_measured_and_modelled_runs(costs, prefill):
    rows = validate(FakeEncoder(8), prefill, costs, workloads=["small-images"], modes=["batched"],
                    sizes={"small-images": (40.0, 20)}, warm_passes=0)
    (row,) = rows
    assert row["workload"] == "small-images" and row["mode"] == "batched"
    # the same prefill both sides; the encoder side differs (CPU wall time of a fake vs the stored model)
    assert row["measured_prefill_ms"] == pytest.approx(row["modelled_prefill_ms"], rel=0.5)
    measured = row["measured_p99_ms"]
    assert row["p99_rel_err"] == pytest.approx((row["modelled_p99_ms"] - measured) / measured)


class JitteryPrefill:
    """A prefill whose steps cost more on each replay of the trace: passes differ, in a known order."""

    def __init__(self, inner) -> None:
        self.inner, self.scale = inner, 1.0

    def step_ms(self, windows):
        return self.scale * self.inner.step_ms(windows)


def test_validate_shows_the_timed_pass_with_the_median_p99_and_keeps_them_all(costs, prefill, monkeypatch):
    jittery, made = JitteryPrefill(prefill), []

    def timer(encoder):  # one per pass: each pass's prefill 20% slower than the last
        jittery.scale = 1.0 + 0.2 * len(made)
        made.append(TimedEncoder(encoder))
        return made[-1]

    monkeypatch.setattr(validate_module, "TimedEncoder", timer)
    (row,) = validate(FakeEncoder(8), jittery, costs, workloads=["small-images"], modes=["batched"],
                      sizes={"small-images": (40.0, 20)}, warm_passes=1, timed_passes=3)
    passes = row["measured_passes"]
    assert len(made) == 4 and len(passes) == 3  # one warm pass, not kept
    p99s = [p["p99_ms"] for p in passes]
    assert p99s == sorted(p99s) and p99s[0] < p99s[2]  # slower prefill, later pass
    assert row["measured_pass"] == 1 and row["measured_p99_ms"] == p99s[1]
    assert row["measured_p50_ms"] == passes[1]["p50_ms"]
    assert row["measured_prefill_ms"] == pytest.approx(passes[1]["prefill_ms"])
    assert all(p["encoder_calls"] == passes[0]["encoder_calls"] > 0 for p in passes)
    with pytest.raises(ValueError, match="timed_passes must be a positive int, got 0"):
        validate(FakeEncoder(8), jittery, costs, workloads=["small-images"], timed_passes=0)


def test_validate_refuses_an_unknown_mode_before_building_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate_main(["--out", str(tmp_path), "--modes", "batched", "per-request"])
    assert exit_info.value.code == 2 and "'per-request'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
def test_validate_on_the_gpu_runs_the_real_encoder_and_prefill(tmp_path):
    validate_main(["--out", str(tmp_path), "--workloads", "small-images", "--modes", "batched"])
    (path,) = tmp_path.glob("ttft-validate-*.json")
    row = json.loads(path.read_text())["rows"][0]
    assert row["measured_p99_ms"] > 0 and row["measured_encoder_ms"] > 0 and row["measured_prefill_ms"] > 0


# ------------------------------------------------------------------ a user's trace (``--trace``), on CPU


def _user_trace_file(tmp_path, n=16):
    from vitkit.sim.trace import save_trace
    from vitkit.sim.workload import WorkloadParams, generate_workload

    params = WorkloadParams(num_requests=n, arrival_rate_per_s=8.0, text_tokens=(16, 128), images_per_request=(1, 2),
                            image_sizes=((448, 448), (672, 672)), repeat_share=0.3, seed=21)
    return save_trace(generate_workload(params, "my-app"), tmp_path / "my-app.json")


def test_validate_replays_a_users_trace_with_the_advised_settings(costs, prefill, tmp_path):
    from vitkit.bench.validate import parse_args, replay_config, user_replayed, user_traces

    path = _user_trace_file(tmp_path)
    _, args = parse_args(["--trace", str(path), "--policy", "cache-aware", "--encoder-budget-tokens", "2048",
                          "--chunked-prefill-size", "4096", "--cache-tokens", "8192", "--modes", "batched",
                          "--out", str(tmp_path)])
    config = replay_config(args)
    assert (config.scheduler.chunked_prefill_size, config.scheduler.policy, config.scheduler.encoder_budget_tokens,
            config.cache_tokens) == (4096, "cache-aware", 2048, 8192)
    (job,) = user_traces(args)
    assert (job.name, job.arrivals, job.origin) == ("my-app", "trace times", {"trace_file": str(path), "trace_rate": None})
    (row,) = validate(FakeEncoder(8), prefill, costs, modes=args.modes, config=config, traces=[job], warm_passes=0)
    assert (row["workload"], row["arrivals"], row["trace_file"]) == ("my-app", "trace times", str(path))
    assert row["measured"]["requests"] == 16 and row["modelled"]["finished"] == 16
    # the stored row names its trace file: --modelled-only rebuilds it, with the same digest and settings
    settings = {"chunked_prefill_size": 4096, "cache_tokens": 8192, "policy": "cache-aware", "encoder_budget_tokens": 2048}
    (again,) = remodel({"rows": [row], "settings": settings}, costs)
    assert again["trace_digest"] == row["trace_digest"] and again["trace_file"] == str(path)
    assert again["modelled_p99_ms"] == pytest.approx(row["modelled_p99_ms"])
    # at a Poisson rate instead of its own times
    poisson = user_replayed(path, 4.0)
    assert poisson.arrivals == "poisson 4/s" and poisson.trace.requests[-1].arrival_ms != job.trace.requests[-1].arrival_ms


@pytest.mark.parametrize("case, message", [
    ("malformed", "request 1 ('c1t0'): arrival_ms"),
    ("small cache", "more than the largest cache asked for (256 rows)"),
    ("another card", "is named for card h200, but encoder-costs-20261127T061643Z.json was measured on h100"),
])
def test_bad_input_to_validate_ends_in_one_line_before_any_gpu_work(tmp_path, capsys, monkeypatch, case, message):
    import shutil

    monkeypatch.setattr(validate_module, "_gpu_encoder", lambda *a, **k: pytest.fail("the GPU was reached"))
    monkeypatch.setattr(validate_module, "gpu_prefill_runner", lambda *a, **k: pytest.fail("the GPU was reached"))
    path = _user_trace_file(tmp_path)
    argv = ["--trace", str(path), "--out", str(tmp_path / "out")]
    if case == "malformed":
        data = json.loads(path.read_text())
        data["requests"][0]["arrival_ms"] = 1e9  # after the second request
        path.write_text(json.dumps(data))
    elif case == "small cache":
        argv += ["--cache-tokens", "256"]
    else:
        h200 = tmp_path / "h200"
        h200.mkdir()
        for name in ("encoder-costs-20261127T061643Z.json", "prefill-20261127T061302Z.json"):
            shutil.copy(STORED / name, h200 / name)
        argv += ["--results", str(h200)]
    assert validate_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_stored_step_keeps_its_videos_temporal_patches(costs):
    """JSON writes a VideoSize as its rows: the step keeps the temporal patches beside them, and reads back
    the packs the encoder ran (a video over the largest bucket in frame groups), not one oversize image."""
    video = VideoSize(5 * 1200, 5)  # 5 temporal patches of 4800 units: over the largest bucket, split
    times = [SimpleNamespace(step=k, time_ms=10.0 * k, encoder_ms=5.0, prefill_ms=1.0, windows=[("r", 0, 8)])
             for k in range(2)]
    calls = [[[256, video], [64]], [[64, 32]]]
    run = SimpleNamespace(rows=times, shadow=[(4.0, 1.0, c) for c in calls])
    steps = json.loads(json.dumps(measured_steps(run, [3.0, 2.0, 5.0])))
    assert steps[0]["call_item_rows"] == [[256, 6000], [64]] and steps[0]["call_item_temporal"] == [[0, 5], [0]]
    assert "call_item_temporal" not in steps[1]  # a step of images only is stored as before
    back = step_calls(steps[0])
    assert back == [[256, 6000], [64]] and back[0][1].temporal == 5 and type(back[0][0]) is int
    cost = costs.encoder.call
    assert cost.packs(back[0]) == cost.packs([256, video]) != cost.packs([256, 6000])
    assert step_calls(steps[1]) == [[64, 32]]
    assert open_loop(steps, costs)["open_loop_encoder_ms"] == pytest.approx(
        sum(costs.encoder.step_ms(c) for c in calls))
    with pytest.raises(ValueError, match="step 0: 2 calls but 1 lists of temporal patches"):
        step_calls(steps[0] | {"call_item_temporal": [[0, 5]]}, "step 0")


def test_every_stored_step_reads_back_as_the_images_it_stored():
    """Files from before videos keep no temporal patches: their calls read as the plain rows they hold."""
    for path in [VALIDATION, *results.newest_first("ttft-validate", STORED)]:
        for row in results.read("ttft-validate", path)["rows"]:
            for step in row.get("measured_steps") or []:
                if "call_item_rows" in step:
                    calls = step_calls(step)
                    assert calls == step["call_item_rows"]
                    assert not any(isinstance(r, VideoSize) for c in calls for r in c)
