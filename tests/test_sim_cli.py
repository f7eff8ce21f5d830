"""The TTFT command line and the GPU validation's comparison logic (run on CPU with stand-ins)."""

import json
import time

import pytest

from vitkit.sim import ReplayConfig, StepCosts, load_encoder_cost
from vitkit.sim.__main__ import main
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.stepcost import FlopPrefillCost
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
