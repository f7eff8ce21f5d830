"""The TTFT command line and the GPU validation's comparison logic (run on CPU with stand-ins)."""

import json
import time

import pytest

from vitkit.sim import ReplayConfig, StepCosts, load_encoder_cost
from vitkit.sim.__main__ import main
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.stepcost import FlopPrefillCost
from vitkit.sim.timing import TimedEncoder
from vitkit.sim.ttft import replay_at_rate, workload_trace
from vitkit.sim.validate import main as validate_main
from vitkit.sim.validate import validate


def test_ttft_cli_writes_results_and_figures(tmp_path, capsys):
    main(["ttft", "--workloads", "large-images", "--requests", "12", "--rates", "2", "20", "--policies", "legacy", "cache-aware",
          "--admission-cache-tokens", "4096", "--time-requests", "0", "--out", str(tmp_path)])
    (result,) = tmp_path.glob("ttft-*.json")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{result.stem}-admission.png", f"{result.stem}-load.png"]
    data = json.loads(result.read_text())
    assert data["schema"] == "vitkit.ttft/1" and "decode is not modelled" in data["note"]
    assert "qwen2.5-vl-7b" in data["sources"]["encoder"]
    assert len(data["load"]) == 2 * 2 * 2  # modes x policies x rates
    assert {(s["mode"], s["policy"]) for s in data["sustainable"]} == {
        (m, p) for m in ("batched", "per_request") for p in ("legacy", "cache-aware")}
    traces = {r["trace"] for r in data["admission"]}
    assert {"product-catalog", "chat-multiturn", "large-images"} <= traces
    assert all(r["request_re_encodings"] == 0 for r in data["admission"]
               if r["policy"] == "cache-aware" and r["trace"] in ("product-catalog", "chat-multiturn"))
    assert "decode is not modelled" in capsys.readouterr().out


def test_ten_thousand_requests_replay_in_under_a_minute():
    costs = StepCosts(load_encoder_cost(), FlopPrefillCost())
    trace = workload_trace("small-images", 10_000)
    start = time.perf_counter()
    run = replay_at_rate(trace, 40.0, costs, ReplayConfig())
    assert run.summary.finished == 10_000
    assert time.perf_counter() - start < 60


def test_validate_compares_measured_and_modelled_runs():
    costs = StepCosts(load_encoder_cost(), FlopPrefillCost())
    rows = validate(FakeEncoder(8), FlopPrefillCost(), costs, workloads=["small-images"], modes=["batched"],
                    sizes={"small-images": (40.0, 20)}, warm_passes=0)
    (row,) = rows
    assert row["workload"] == "small-images" and row["mode"] == "batched"
    # the same prefill both sides; the encoder side differs (CPU wall time of a fake vs the H100 model)
    assert row["measured_prefill_ms"] == pytest.approx(row["modelled_prefill_ms"], rel=0.5)
    assert row["p99_rel_err"] == pytest.approx((row["modelled_p99_ms"] - row["measured_p99_ms"]) / row["measured_p99_ms"])


class JitteryPrefill:
    """A prefill whose steps cost more on each replay of the trace: passes differ, in a known order."""

    def __init__(self) -> None:
        self.inner, self.scale = FlopPrefillCost(), 1.0

    def step_ms(self, windows):
        return self.scale * self.inner.step_ms(windows)


def test_validate_shows_the_timed_pass_with_the_median_p99_and_keeps_them_all():
    costs = StepCosts(load_encoder_cost(), FlopPrefillCost())
    prefill, made = JitteryPrefill(), []

    def timer(encoder):  # one per pass: each pass's prefill 20% slower than the last
        prefill.scale = 1.0 + 0.2 * len(made)
        made.append(TimedEncoder(encoder))
        return made[-1]

    (row,) = validate(FakeEncoder(8), prefill, costs, workloads=["small-images"], modes=["batched"],
                      sizes={"small-images": (40.0, 20)}, warm_passes=1, timed_passes=3, timer=timer)
    passes = row["measured_passes"]
    assert len(made) == 4 and len(passes) == 3  # one warm pass, not kept
    p99s = [p["p99_ms"] for p in passes]
    assert p99s == sorted(p99s) and p99s[0] < p99s[2]  # slower prefill, later pass
    assert row["measured_pass"] == 1 and row["measured_p99_ms"] == p99s[1] and row["measured_p50_ms"] == passes[1]["p50_ms"]
    assert row["measured_prefill_ms"] == pytest.approx(passes[1]["prefill_ms"])
    assert all(p["encoder_calls"] == passes[0]["encoder_calls"] > 0 for p in passes)
    with pytest.raises(ValueError, match="timed_passes must be >= 1, got 0"):
        validate(FakeEncoder(8), prefill, costs, workloads=["small-images"], timed_passes=0)


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
