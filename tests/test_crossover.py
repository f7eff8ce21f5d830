"""``python -m vitkit.bench crossover``: the whole code path on CPU with the tiny towers (JSON, figure,
table), its refusal without a GPU, and the throughput and gain arithmetic."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vitkit.bench import __main__ as bench_main
from vitkit.bench import crossover
from vitkit.bench.crossover import (IMPLS, CrossoverSettings, crossover_figure, gains, main, processed,
                                    resolution_size, summarize)
from vitkit.costs import results as files
from vitkit.embed import MODES

TOWERS = ("qwen3-vl-tiny", "qwen2.5-vl-tiny")
FIXTURE = Path(__file__).parent / "fixtures" / "crossover-20261205T084120Z.json"  # notebook 02's view tests read it


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("crossover")
    argv = ["--device", "cpu", "--preset", TOWERS[0], "--preset", TOWERS[1], "--resolutions", "128x72,160x96",
            "--images", "1-2", "--repeats", "1", "--warmup", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    path = files.newest("crossover", out)
    return out, path, files.read("crossover", path)


def test_cpu_run_writes_results_with_every_setting(run):
    _, path, data = run
    assert path.name.startswith("crossover-") and data["kind"] == "cpu-smoke"
    assert data["settings"]["presets"] == list(TOWERS) and data["machine"]["device_name"] == "cpu"
    steps = data["steps"]
    # per tower and resolution: 1 warm-up step + 2 image counts x 1 repeat, each in the four settings
    assert len(steps) == len(TOWERS) * 2 * 3 * len(IMPLS) * len(MODES)
    assert {(s["impl"], s["mode"]) for s in steps} == {(i, m) for i in IMPLS for m in MODES}
    assert sum(not s["timed"] for s in steps) == len(TOWERS) * 2 * len(IMPLS) * len(MODES)
    for s in steps:
        assert s["step_ms"] > 0 and s["encoder_ms"] > 0
        if s["mode"] == "per_request":  # one request per image: one encoder call each
            assert s["encoder_calls"] == s["images"]
        else:
            assert s["encoder_calls"] == 1
        assert (s["packs"] == 0) == (s["impl"] == "eager")  # eager runs unpadded, no bucket


def test_cpu_run_records_sizes_cold_pass_and_warmup(run):
    data = run[2]
    for tower in data["towers"]:
        assert [r["label"] for r in tower["resolutions"]] == ["128x72", "160x96"]
        for size in tower["resolutions"]:
            assert size == processed(tower["preset"], size["label"])  # through the tower's own processor
            t, h, w = size["grid"]
            assert size["rows"] == t * h * w // 4 and size["patches"] == t * h * w
        assert {(c["impl"], c["resolution"]) for c in tower["cold"]} == {(i, r) for i in IMPLS
                                                                         for r in ("128x72", "160x96")}
        assert tower["warmup"]["captures"] == 0 and not tower["cuda_graphs"]  # no graphs off CUDA
    assert data["towers"][0]["hidden_size"] == 96 * 4  # Qwen3-VL: merger + three deepstack rows


def test_summary_and_gains_follow_from_the_steps(run):
    data = run[2]
    timed = [s for s in data["steps"] if s["timed"]]
    for row in data["summary"]:
        members = [s for s in timed if (s["preset"], s["impl"], s["mode"], s["resolution"]) == (
            row["preset"], row["impl"], row["mode"], row["resolution"])
            and row["images_per_step"] in ("all", s["images"])]
        assert row["images"] == sum(s["images"] for s in members)
        assert row["images_per_s"] == pytest.approx(row["images"] / sum(s["step_ms"] for s in members) * 1e3)
    assert {g["images_per_step"] for g in data["gains"]} == {1, 2, "all"}
    assert len(data["gains"]) == len(TOWERS) * 2 * 3


def test_figure_has_a_panel_per_resolution_with_four_lines(run):
    out, path, data = run
    for preset in TOWERS:
        assert (out / f"{path.stem}-{preset}.png").stat().st_size > 0
        fig = crossover_figure(data, preset)
        axes = fig.axes
        assert len(axes) == 4  # two resolutions: throughput above, gains below
        throughput_axes = [ax for ax in axes if ax.get_ylabel().startswith("throughput (")]
        assert len(throughput_axes) == 2 and all(len(ax.lines) == 4 for ax in throughput_axes)
        assert "CPU SMOKE" in fig.get_suptitle()
    with pytest.raises(ValueError, match="no tower"):
        crossover_figure(data, "qwen3-vl-8b")


def test_the_stored_fixture_has_the_format_a_run_writes_today(run):
    data, fixture = run[2], files.read("crossover", FIXTURE)
    assert set(fixture) == set(data) and fixture["schema"] == data["schema"]
    for section in ("machine", "settings", "versions"):
        assert set(fixture[section]) == set(data[section]), section
    for section in ("towers", "steps", "summary", "gains"):
        assert {tuple(sorted(row)) for row in fixture[section]} == {tuple(sorted(row)) for row in data[section]}
    tower, run_tower = fixture["towers"][0], data["towers"][0]
    for key in ("resolutions", "cold"):
        assert set(tower[key][0]) == set(run_tower[key][0]), key
    assert set(tower["warmup"]) == set(run_tower["warmup"])
    # its summary and gains are what this module computes from its steps
    assert fixture["summary"] == summarize(fixture["steps"]) and fixture["gains"] == gains(fixture["summary"])


def test_gains_are_ratios_of_throughput():
    rows = [dict(preset="p", impl=impl, mode=mode, resolution="360p", images=2, timed=True, step_ms=ms,
                 encoder_ms=ms) for (impl, mode), ms in {("eager", "per_request"): 40.0, ("eager", "batched"): 20.0,
                                                         ("graphs", "per_request"): 25.0,
                                                         ("graphs", "batched"): 16.0}.items()]
    rows.append(dict(rows[0], timed=False, step_ms=1e6))  # a warm-up step does not count
    (all_counts,) = [g for g in gains(summarize(rows)) if g["images_per_step"] == "all"]
    assert all_counts["graphs_per_request"] == pytest.approx(40 / 25 - 1)
    assert all_counts["graphs_batched"] == pytest.approx(20 / 16 - 1)
    assert all_counts["batching_eager"] == pytest.approx(1.0)
    assert all_counts["batching_graphs"] == pytest.approx(25 / 16 - 1)
    assert all_counts["both"] == pytest.approx(40 / 16 - 1)


def test_stream_changes_image_count_every_step():
    settings = CrossoverSettings(device="cpu", dtype="fp32", presets=TOWERS, images=(1, 8), repeats=3,
                                 warmup_steps=2)
    counts = settings.counts(0)
    assert len(counts) == 2 + 8 * 3 and sorted(counts[2:]) == sorted(list(range(1, 9)) * 3)
    assert counts == settings.counts(0) != settings.counts(1)
    assert resolution_size("720p") == (1280, 720) and resolution_size("160x96") == (160, 96)


def test_refuses_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err
    assert bench_main.main(["crossover", "--device", "cuda"]) == 2  # the job is registered
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["--device", "cpu", "--preset", "qwen3-vl-8b"]) == 2
    assert "only tiny towers" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--preset", "clip-tiny"], "fixed input size"),
    (["--device", "cpu", "--resolutions", "big"], "expected one of"),
])
def test_bad_options_are_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_never_writes_into_another_cards_folder(tmp_path, monkeypatch, capsys):
    """Refused before anything runs: a folder holding another card's results, or named for another card."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "prefill-20990101T000000Z.json").write_text(json.dumps({"machine": {"slug": "h100"}}))
    monkeypatch.setattr(crossover, "run_crossover", lambda *a, **k: pytest.fail("must not run"))
    argv = ["--device", "cpu", "--resolutions", "128x72", "--images", "1-2", "--no-progress", "--no-plots"]
    assert main([*argv, "--out", str(theirs)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "holds results of another card" in err and "(h100)" in err
    monkeypatch.setattr(files, "RESULTS", tmp_path)
    assert main([*argv, "--out", str(tmp_path / "h200")]) == 2
    assert "is the results folder of card 'h200'; this is a cpu-smoke" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]
