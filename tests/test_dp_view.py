"""Notebook 02's data-parallel scaling panel, from a fake merged results dict."""

from __future__ import annotations

import json

import pytest

from vitkit.bench.dp import PANELS, dp_scaling_figure, dp_table_rows, load_dp_results, scaling_series, stored_dp_results


def _row(n, encoder, mode, policy, step_ms, gather="all_gather_into_tensor", device="NVIDIA H100 80GB HBM3"):
    speedup = {1: 1.0, 2: 1.9, 4: 3.5}[n] * (1 if policy == "token-balanced" else 0.9)
    return {"world_size": n, "device_name": device, "encoder": encoder, "mode": mode, "policy": policy,
            "gather": gather, "images": 32, "step_ms_median": step_ms, "images_per_s": 32e3 / step_ms,
            "speedup": speedup, "efficiency": speedup / n, "load_balance": 1.0 + 0.01 * n,
            "gather_share": 0.01, "batched_over_per_request": 1.5 if mode == "batched" else None}


def fake_results(device="NVIDIA H100 80GB HBM3"):
    rows = []
    for encoder in ("qwen2.5-vl-7b", "clip-l-336"):
        for mode in ("batched", "per_request"):
            rows.append(_row(1, encoder, mode, "token-balanced", 100.0, device=device))
            for n in (2, 4):
                for policy in ("token-balanced", "round-robin"):
                    for gather in ("all_gather_into_tensor", "all_gather"):
                        rows.append(_row(n, encoder, mode, policy, 100.0 / n, gather, device))
    return {"schema": "vitkit.bench.dp/1", "kind": "merged", "rows": rows}


def test_series_start_at_one_gpu_and_use_one_gather():
    series = scaling_series(fake_results()["rows"], "qwen2.5-vl-7b")
    assert set(series) == {(p, m) for p in ("token-balanced", "round-robin") for m in ("batched", "per_request")}
    for group in series.values():
        assert [r["world_size"] for r in group] == [1, 2, 4]
        assert all(r["gather"] == "all_gather_into_tensor" for r in group if r["world_size"] > 1)


def test_figure_has_a_row_of_panels_per_tower_with_a_line_per_policy_and_mode():
    fig = dp_scaling_figure(fake_results())
    axes = fig.get_axes()
    assert len(axes) == 2 * len(PANELS)
    one = dp_scaling_figure(fake_results(), "clip-l-336")  # one tower: a 2x2 grid, named in the title
    assert len(one.get_axes()) == len(PANELS) == 4 and "clip-l-336" in one._suptitle.get_text()
    with pytest.raises(ValueError, match="no rows for encoder 'nope'"):
        dp_scaling_figure(fake_results(), "nope")
    speedup_axis = axes[0]
    assert len(speedup_axis.get_lines()) == 4 + 1  # 2 policies x 2 modes + the ideal line
    assert list(speedup_axis.get_lines()[0].get_xdata()) == [1, 2, 4]
    batched_over = axes[PANELS.index(next(p for p in PANELS if p[0] == "batched_over_per_request"))]
    assert len(batched_over.get_lines()) == 2  # per-request rows have no ratio
    assert "H100" in fig._suptitle.get_text() and "SMOKE" not in fig._suptitle.get_text()


def test_cpu_results_are_labelled_as_a_smoke_run():
    assert "CPU SMOKE" in dp_scaling_figure(fake_results(device="cpu"))._suptitle.get_text()


def test_empty_results_raise():
    with pytest.raises(ValueError, match="no rows"):
        dp_scaling_figure({"rows": []})


def test_load_and_table_rows(tmp_path):
    path = tmp_path / "dp.json"
    path.write_text(json.dumps(fake_results()))
    rows = dp_table_rows(load_dp_results(path))
    assert len(rows) == len(fake_results()["rows"]) and rows[0]["N"] == 1
    assert all(r["tower"] == "clip-l-336" for r in dp_table_rows(load_dp_results(path), "clip-l-336"))
    path.write_text("{}")
    with pytest.raises(ValueError, match="schema"):
        load_dp_results(path)


def test_stored_results_are_none_until_a_run_is_stored(tmp_path):
    assert stored_dp_results(tmp_path / "dp.json") is None
    (tmp_path / "dp.json").write_text(json.dumps(fake_results()))
    assert len(stored_dp_results(tmp_path / "dp.json")["rows"]) == len(fake_results()["rows"])
