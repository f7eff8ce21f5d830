"""The simulator's command lines: the cache table, the TTFT report, and the pointer to the GPU validation."""

import json
import time

from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import load_encoder_cost
from vitkit.costs.prefill import load_prefill_cost
from vitkit.sim import ReplayConfig
from vitkit.sim.__main__ import COLUMNS, main
from vitkit.sim.replay import replay_at_rate, workload_trace


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
    costs = StepCosts(load_encoder_cost(), load_prefill_cost())
    trace = workload_trace("small-images", 10_000)
    start = time.perf_counter()
    run = replay_at_rate(trace, 40.0, costs, ReplayConfig())
    assert run.latency.finished == 10_000
    assert time.perf_counter() - start < 60


def test_cache_table_for_both_modes_pinning_and_cache_sizes(capsys):
    assert main(["product-catalog", "--cache-tokens", "4096", "12288"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(COLUMNS)
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 2 * 2 * 2  # modes x cache sizes x pin on/off
    assert {(r[0], r[1], r[2]) for r in rows} == {(m, p, t) for m in ("batched", "per_request") for p in ("True", "False")
                                                  for t in ("4096", "12288")}
    # a cache that holds the pinned set: no re-encoding within a request with pins on
    assert all(r[7] == "0" for r in rows if r[1] == "True" and r[2] == "12288")


def test_validate_points_to_the_bench(capsys):
    assert main(["validate", "--modelled-only"]) == 2
    assert "python -m vitkit.bench validate --modelled-only" in capsys.readouterr().err
