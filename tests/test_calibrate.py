"""``python -m vitkit.bench calibrate`` on CPU: its refusals, the folder it writes to, the time estimate,
and the summary written from stored files; the GPU phases are stood in for by copies of stored files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vitkit.bench import calibrate
from vitkit.bench.calibrate import CalibrationFiles, Refused, batching_gains, check_out, estimate, work_seconds
from vitkit.costs import results

STORED = results.results_folder()
# a GPU validation and the models it was measured with, in one session on one card
MEASURED = ("prefill-20261127T060646Z.json", "encoder-costs-20261127T061643Z.json",
            "ttft-validate-20261127T061731Z.json")


def stored_copy(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in MEASURED:
        shutil.copy(STORED / name, folder)
    return folder


def test_without_a_gpu_it_refuses_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(calibrate, "run_gpu_phases", lambda *a: pytest.fail("must not measure"))
    assert calibrate.main([]) == 2
    err = capsys.readouterr().err
    assert "calibrate: no GPU: torch" in err and "sees no CUDA device" in err and "results/h100/" in err


def test_it_never_writes_into_another_cards_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "attached_card", lambda: "h200")
    monkeypatch.setattr(calibrate, "run_gpu_phases", lambda *a: pytest.fail("must not measure"))
    out = stored_copy(tmp_path / "mine")
    assert calibrate.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds results of another card: " in err and "(h100)" in err and "this is a h200" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(MEASURED)  # nothing written


def test_which_folders_a_card_may_write_to(tmp_path, monkeypatch):
    check_out(tmp_path / "missing", "h200")  # a new folder
    check_out(stored_copy(tmp_path / "h100"), "h100")  # its own card's files
    smoke = tmp_path / "smoke"
    smoke.mkdir()
    (smoke / "encoder-costs-x.json").write_text(json.dumps({"kind": "cpu-smoke", "machine": {"slug": "cpu"}}))
    check_out(smoke, "h200")  # a CPU smoke run names no card
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    with pytest.raises(Refused, match="is the results folder of card 'a100'; this is a h200: use results/h200/"):
        check_out(tmp_path / "a100", "h200")  # empty, but named for another card under results/
    check_out(tmp_path / "h200", "h200")


def test_summary_only_needs_a_folder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        calibrate.main(["--summary-only"])
    assert exit_info.value.code == 2 and "--summary-only needs --out" in capsys.readouterr().err


def test_the_estimate_floor_comes_from_the_stored_files(tmp_path, monkeypatch):
    seconds = work_seconds(STORED)
    assert set(seconds) == set(calibrate.PHASES) and seconds["summary"] == 0.0
    assert all(seconds[p] > 0 for p in ("prefill", "warm-up", "encoder-costs", "validate"))
    monkeypatch.setattr(results, "RESULTS", tmp_path)  # no calibration record anywhere
    plan = estimate(tmp_path / "h200", "h200")
    assert plan.seconds == seconds and plan.basis.startswith("at least: the timed work of h100's stored files")
    assert plan.total_s == pytest.approx(sum(seconds.values()))


def test_summary_from_stored_files(tmp_path):
    out = stored_copy(tmp_path / "h100")
    files = CalibrationFiles.newest(out)
    assert (files.prefill.name, files.encoder_costs.name, files.validation.name) == MEASURED
    assert calibrate.main(["--summary-only", "--out", str(out), "--draws", "0"]) == 0
    (md,) = out.glob("summary-*.md")
    (png,) = out.glob("summary-*.png")
    assert results.stamp_of(md) == results.stamp_of(png) and png.stat().st_size > 10_000
    text = md.read_text()
    assert text.startswith("# Calibration of NVIDIA H100 80GB HBM3 (h100)") and f"]({png.name})" in text
    for heading in ("## What was measured", "## The models' errors per encoder call", "## Validation"):
        assert heading in text
    assert "- matmul peak: " in text and "TFLOP/s" in text and "calibration replay calls" in text
    assert "- bookkeeping: 0.46 ms a step, from stream-qwen2.5-vl-7b-" in text and "borrowed from h100/" in text
    assert "| small-images | batched | bucket x images: 1024 x 1 | 349 |" in text
    assert "| small-images | batched | poisson 40/s | 28.3 | 28.5 | +0.6% | 103.3 | 112.3 | +8.8% | - | yes |" in text
    assert "Batching's gain in p99, small-images: measured 14.3%, modelled 8.2% (-6.0 points" in text
    with pytest.raises(FileNotFoundError, match="no GPU-measured ttft-validate"):
        CalibrationFiles.newest(tmp_path / "missing")


def test_batching_gain_needs_both_modes():
    rows = [{"workload": "w", "mode": "batched", "measured_p99_ms": 80.0, "modelled_p99_ms": 90.0},
            {"workload": "w", "mode": "per_request", "measured_p99_ms": 100.0, "modelled_p99_ms": 100.0},
            {"workload": "v", "mode": "batched", "measured_p99_ms": 1.0, "modelled_p99_ms": 1.0}]
    assert batching_gains({"rows": rows}) == {"w": (pytest.approx(0.2), pytest.approx(0.1))}


def test_a_calibration_with_its_gpu_phases_stood_in(tmp_path, monkeypatch, capsys):
    """The run as a GPU session sees it: the estimate first, the phases under one bar, the summary with
    its p99 bands and times, and a record whose seconds the next run's estimate uses."""
    monkeypatch.setattr(results, "attached_card", lambda: "h100")
    monkeypatch.setattr(results, "RESULTS", tmp_path)  # no calibration record anywhere yet
    out = tmp_path / "h100"

    def stand_in(folder, args, plan, bar):
        assert folder == out and args.draws == 2
        stored_copy(folder)
        took = {}
        for name in ("prefill", "warm-up", "encoder-costs", "validate"):
            took[name] = calibrate.timed_phase(name, lambda: None, plan, took, bar)
        return CalibrationFiles.newest(folder), took

    monkeypatch.setattr(calibrate, "run_gpu_phases", stand_in)
    assert calibrate.main(["--out", str(out), "--draws", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"calibrating h100 into {out}/: about ") and "(at least: the timed work" in printed
    assert all(f"{name:>13}: ~" in printed for name in calibrate.PHASES)
    (record_path,) = out.glob("calibration-*.json")
    record = results.read("calibration", record_path)
    assert [p["name"] for p in record["phases"]] == list(calibrate.PHASES) and record["card"] == "h100"
    assert record["files"]["validation"] == MEASURED[2] and record["machine"]["slug"] == "h100"
    text = next(out.glob("summary-*.md")).read_text()
    assert "(inside)" in text or "(OUTSIDE)" in text  # the bands, 2 draws each
    assert "## Time" in text and "| prefill |" in text and "target 9 min" in text
    plan = estimate(out, "h100")  # the next run's estimate: this run's seconds
    assert plan.basis.startswith(f"as the last calibration on this card (h100, {record_path.name})")
    assert plan.seconds == {p["name"]: pytest.approx(p["seconds"]) for p in record["phases"]}
