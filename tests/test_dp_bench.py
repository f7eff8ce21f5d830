"""``python -m vitkit.bench dp``: combining rank samples, merging per-N runs, the CLI, and a 2-process CPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.bench.__main__ import main as bench_main
from vitkit.bench.dp import DPSettings, build_parser, combine, format_table, merge, merge_folder, settings_from_args
from vitkit.costs.results import schema, write

REPO = Path(__file__).resolve().parents[1]


def _row(n, mode, policy, step_ms, *, encoder="qwen2.5-vl-7b", gather="all_gather_into_tensor", balance=1.01,
         share=0.02):
    return {"world_size": n, "device_name": "NVIDIA H100 80GB HBM3", "encoder": encoder, "impl": "vitkit",
            "mode": mode, "policy": policy, "gather": gather, "images": 32, "images_per_request": 4, "requests": 8,
            "dtype": "bf16", "step_ms_median": step_ms, "images_per_s": 32e3 / step_ms, "load_balance": balance,
            "encode_time_balance": balance, "gather_ms_median": share * step_ms, "gather_share": share}


def _run(n, rows):
    return {"schema": schema("dp"), "world_size": n, "machine": {"device_name": "NVIDIA H100 80GB HBM3"}, "rows": rows}


def fake_runs():
    return [
        _run(2, [_row(2, "batched", "token-balanced", 52.0), _row(2, "batched", "round-robin", 60.0),
                 _row(2, "per_request", "token-balanced", 80.0)]),
        _run(1, [_row(1, "batched", "token-balanced", 100.0), _row(1, "per_request", "token-balanced", 120.0)]),
        _run(4, [_row(4, "batched", "token-balanced", 31.0, balance=1.08, share=0.07)]),
    ]


def test_merge_computes_speedup_efficiency_and_ratios():
    merged = merge(fake_runs())
    by = {(r["world_size"], r["mode"], r["policy"]): r for r in merged["rows"]}
    assert [r["world_size"] for r in merged["rows"]] == [1, 1, 2, 2, 2, 4]  # sorted by N
    two = by[(2, "batched", "token-balanced")]
    assert two["speedup"] == pytest.approx(100 / 52) and two["efficiency"] == pytest.approx(100 / 52 / 2)
    assert two["batched_over_per_request"] == pytest.approx(80 / 52)
    assert two["balanced_over_round_robin"] == pytest.approx(60 / 52)
    assert by[(2, "per_request", "token-balanced")]["speedup"] == pytest.approx(120 / 80)
    assert by[(1, "batched", "token-balanced")]["balanced_over_round_robin"] is None
    assert by[(4, "batched", "token-balanced")]["batched_over_per_request"] is None  # no per-request row at N=4


def test_targets_are_checked_on_the_qwen_token_balanced_rows():
    checks = {(c["where"].split()[0], c["what"]): c["met"] for c in merge(fake_runs())["targets"]}
    assert checks[("N=2", "speedup")] is True  # 1.92 >= 1.85
    assert checks[("N=4", "speedup")] is False  # 3.23 < 3.4
    assert checks[("N=4", "load_balance")] is False and checks[("N=4", "gather_share")] is False
    assert checks[("N=2", "load_balance")] is True and checks[("N=2", "gather_share")] is True


def test_without_a_one_gpu_run_speedup_is_none_and_the_table_says_so():
    merged = merge([fake_runs()[0]])
    assert all(r["speedup"] is None for r in merged["rows"])
    table = format_table(merged)
    assert "no N=1 run" in table and "token-balanced" in table


def test_table_warns_when_dp_rows_differ_from_single_gpu_rows():
    runs = fake_runs()
    runs[0]["rows"][0]["max_rel_diff_vs_single"] = 0.9
    runs[0]["rows"][1]["max_rel_diff_vs_single"] = 0.03
    runs[0]["rows"][1]["captures_during_timing"] = 2
    warnings = [line for line in format_table(merge(runs)).splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2 and "0.9" in warnings[0] and "round-robin" in warnings[1] and "2 captures" in warnings[1]


def test_merge_rejects_another_schema():
    with pytest.raises(ValueError, match="schema"):
        merge([{"schema": "vitkit.bench/1", "world_size": 1, "rows": []}])


def test_combine_takes_the_slowest_step_and_the_least_waiting_gather():
    rank0 = [{"step": 10.0, "encode": 8.0, "gather": 1.0, "reorder": 0.1, "critical_rows": 100, "mean_rows": 90,
              "calls": 1}]
    rank1 = [{"step": 11.0, "encode": 6.0, "gather": 3.0, "reorder": 0.1, "critical_rows": 100, "mean_rows": 90,
              "calls": 1}]
    out = combine([rank0, rank1])
    assert out["step_ms_median"] == 11.0 and out["gather_ms_median"] == 1.0 and out["gather_wait_ms_median"] == 3.0
    assert out["gather_share"] == pytest.approx(1 / 11)
    assert out["load_balance"] == pytest.approx(100 / 90)
    assert out["encode_time_balance"] == pytest.approx(8 / 7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(images=30, images_per_request=4), "images"), (dict(policies=("lpt",)), "policies"),
    (dict(gathers=()), "gathers"), (dict(repeats=0), "repeats"), (dict(impl="fast"), "impl"),
])
def test_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPSettings(**kwargs)


@pytest.mark.parametrize("option", ["--images", "--steps", "--repeats"])
def test_cli_zero_is_refused_not_replaced_by_the_default(option):
    with pytest.raises(ValueError, match=option.lstrip("-")):
        settings_from_args(build_parser().parse_args(["--device", "cpu", option, "0"]))
    assert settings_from_args(build_parser().parse_args(["--device", "cpu"])).images == 8


def test_bench_cli_sweep_dp_delegates_to_the_dp_merge(tmp_path, capsys):
    for run in fake_runs():
        write("dp", run, tmp_path / f"dp-n{run['world_size']}.json")
    assert bench_main(["--sweep", "dp", "--merge", str(tmp_path), "--no-plots"]) == 0
    assert "speedup" in capsys.readouterr().out
    assert json.loads((tmp_path / "dp.json").read_text())["kind"] == "merged"
    assert not (tmp_path / "dp.png").exists()
    merge_folder(tmp_path)
    assert (tmp_path / "dp.png").stat().st_size > 0


def test_merge_folder_without_files_raises(tmp_path):
    with pytest.raises(ValueError, match="no dp-n"):
        merge_folder(tmp_path)


def test_torchrun_two_cpu_processes_write_rows_and_the_merge(tmp_path):
    """The real entry point under torchrun (gloo, tiny towers), as the lead runs it on GPUs."""
    out = tmp_path / "dp"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "vitkit.bench", "--sweep", "dp", "--device", "cpu", "--out", str(out), "--images", "4",
               "--images-per-request", "2", "--steps", "1", "--repeats", "1", "--no-progress",
               "--policies", "token-balanced,contiguous", "--encoders", "qwen2.5-vl-tiny"]
        cmd += ["--no-encoder-warmup"] if n == 2 else []
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = json.loads((out / "dp.json").read_text())
    rows = merged["rows"]
    # N=1: one row per mode; N=2: x 2 policies x 2 gathers
    assert len(rows) == 2 + 2 * 2 * 2
    for r in rows:
        assert r["device_name"] == "cpu" and r["world_size"] in (1, 2) and r["speedup"] > 0
        assert r["max_rel_diff_vs_single"] < 1e-4  # float32: the DP rows are the single-process rows
        assert 1.0 <= r["load_balance"] and r["images_per_s"] > 0
        assert r["compiles_during_timing"] == 0 and r["captures_during_timing"] == 0  # CPU: eager, padded
        assert r["padding_waste"] is not None and r["padding_waste"] >= 0
    assert (out / "dp.png").stat().st_size > 0 and (out / "dp-n1.json").exists() and (out / "dp-n2.json").exists()
