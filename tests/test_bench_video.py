"""``python -m vitkit.bench video``: the whole code path on CPU with the tiny towers (JSON with every grid point and
path, the rows check, the figure, the table), its refusals, bad flags, the results folder, the time estimate;
on a GPU, the issue's memory target (a 512-frame 448x448 video in frame groups within the largest bucket's call)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil

import pytest
import torch

from vitkit.bench import __main__ as bench_main
from vitkit.bench import video
from vitkit.bench.video import PATHS, VideoSettings, item_rows, main, planned_calls, run_video, summarize, video_shape
from vitkit.bench.video_report import format_table, video_figure
from vitkit.costs import results as files
from vitkit.costs.results import check_out
from vitkit.embed import MODES

STORED_H100 = files.results_folder() / "prefill-20261127T060646Z.json"  # a file measured on an H100


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    assert main(["--smoke", "--warmup", "1", "--out", str(out), "--no-progress"]) == 0
    path = files.newest("video", out)
    return out, path, files.read("video", path)


def test_smoke_run_writes_every_grid_point_and_path(run):
    _, path, data = run
    s = data["settings"]
    assert path.name.startswith("video-") and data["kind"] == "cpu-smoke" and data["machine"]["device_name"] == "cpu"
    assert s["presets"] == ["qwen2.5-vl-tiny"] and s["paths"] == list(PATHS) and s["video_items"] == "frame-groups:2"
    frames = {(r, f, p) for r in s["resolutions"] for f in s["frames"] for p in PATHS}
    batching = {(r, v, p, m) for r in s["resolutions"] for v in s["videos"] for p in PATHS for m in MODES}
    summary = data["summary"]
    assert {(x["resolution"], x["frames"], x["path"]) for x in summary if x["grid"] == "frames"} == frames
    got = {(x["resolution"], x["videos"], x["path"], x["mode"]) for x in summary if x["grid"] == "batching"}
    assert got == batching
    assert len(data["steps"]) == (len(frames) + len(batching)) * (1 + s["repeats"])  # one untimed step a point
    assert sum(not x["timed"] for x in data["steps"]) == len(frames) + len(batching)
    for x in summary:
        assert x["steps"] == s["repeats"] and x["frames_per_s"] > 0 and x["step_ms_p90"] >= x["step_ms_median"]
        assert x["call_peak_bytes"] is None and x["compiles"] == 0  # no CUDA: no memory, no compiles
    assert "not measured" in data["memory"]


def test_paths_run_as_named(run):
    data = run[2]
    for x in data["summary"]:
        if x["path"] == "whole-eager":
            assert x["unbucketed"] > 0 and x["packs"] == 0
        else:
            assert x["packs"] > 0 and x["unbucketed"] == 0
        if x["path"] == "frame-groups":  # calls of at most the largest bucket's rows (256 for the tiny tower)
            assert x["items"] == x["videos"] * -(-video_shape("qwen2.5-vl-tiny", x["resolution"], x["frames"])
                                                 ["grid"][0] // 2)
        else:
            assert x["items"] == x["videos"]
        if x["grid"] == "batching" and x["mode"] == "per_request":
            assert x["encoder_calls"] >= x["videos"]
    sixteen = [x for x in data["summary"] if x["frames"] == 16 and x["path"] == "whole-bucketed"]
    assert sixteen and all(x["split_items"] == 1 for x in sixteen)  # over the tiny tower's largest bucket


def test_frame_group_rows_equal_the_whole_videos(run):
    data = run[2]
    checks = data["rows_check"]
    s = data["settings"]
    assert {(c["resolution"], c["frames"]) for c in checks} == {(r, f) for r in s["resolutions"] for f in s["frames"]}
    for c in checks:
        assert c["equal"] is True and c["tolerance"] == video.FP32_TOLERANCE
        assert c["rel_err_vs_whole-bucketed"] <= 1e-5 and c["rel_err_vs_whole-eager"] <= 1e-5


def test_tower_record_cold_pass_and_reference(run):
    (tower,) = run[2]["towers"]
    assert [c["path"] for c in tower["cold"]] == list(PATHS)
    assert tower["warmup"]["captures"] == 0 and not tower["cuda_graphs"] and tower["graph_pool_bytes"] is None
    assert tower["largest_bucket"]["patches"] == tower["buckets"][-1] == 1024
    assert tower["largest_bucket"]["rows"] == tower["largest_bucket_rows"] == 256
    assert tower["largest_bucket"]["bucketed_call_peak_bytes"] is None
    assert [f["label"] for f in tower["frame_sizes"]] == run[2]["settings"]["resolutions"]


def test_figure_and_table(run):
    out, path, data = run
    assert (out / f"{path.stem}-qwen2.5-vl-tiny.png").stat().st_size > 0
    fig = video_figure(data, "qwen2.5-vl-tiny")
    columns = len(data["settings"]["resolutions"])
    assert len(fig.axes) == 3 * columns
    speed = [ax for ax in fig.axes
             if ax.get_ylabel() == "throughput (frames/s)" and ax.get_xlabel() == "frames a video"]
    batching = [ax for ax in fig.axes if ax.get_xlabel() == "videos a step"]
    assert len(speed) == len(batching) == columns
    assert all(len(ax.lines) == len(PATHS) for ax in speed)
    assert all(len(ax.lines) == len(PATHS) * len(MODES) for ax in batching)
    assert "CPU SMOKE" in fig.get_suptitle()
    with pytest.raises(ValueError, match="no tower"):
        video_figure(data, "qwen3-vl-8b")
    text = format_table(data)
    assert "frame-group rows equal the whole video's at 4 of 4 points" in text and text.endswith(
        f"elapsed={data['elapsed_s']:.0f} s")


def test_qwen3_tower_smoke(tmp_path):
    argv = ["--smoke", "--towers", "qwen3-vl-8b", "--frames", "16", "--resolutions", "448x448", "--videos", "2",
            "--paths", "whole-bucketed,frame-groups", "--repeats", "1", "--out", str(tmp_path), "--no-progress",
            "--no-plots"]
    assert main(argv) == 0
    data = files.read("video", files.newest("video", tmp_path))
    (tower,) = data["towers"]
    assert tower["preset"] == "qwen3-vl-tiny" and "per-frame" in tower["frame_rule"]
    (check,) = data["rows_check"]
    assert check["equal"] is True and "rel_err_vs_whole-eager" not in check
    assert {x["path"] for x in data["summary"]} == {"whole-bucketed", "frame-groups"}


def test_summary_arithmetic():
    row = dict(preset="p", grid="batching", resolution="360p", frames=32, videos=2, path="frame-groups",
               mode="batched", video_rows=1000, encoder_calls=1, items=4, packs=1, unbucketed=0, split_items=0,
               compiles=0, captures=0, call_peak_bytes=10, step_peak_bytes=20, encoder_ms=1.0)
    steps = [row | {"timed": True, "step_ms": ms, "call_peak_bytes": peak}
             for ms, peak in ((100.0, 10), (200.0, 30), (300.0, 20))]
    steps.append(row | {"timed": False, "step_ms": 1e6, "call_peak_bytes": 1000})  # untimed: not counted
    (s,) = summarize(steps)
    assert s["step_ms_median"] == 200.0 and s["frames_per_s"] == pytest.approx(64 / 0.2)
    assert s["rows_per_s"] == pytest.approx(2000 / 0.2) and s["call_peak_bytes"] == 30 and s["steps"] == 3


def test_planned_calls_follow_the_paths():
    shape = video_shape("qwen2.5-vl-7b", "448x448", 512)
    assert shape["grid"] == [256, 32, 32] and shape["rows"] == 65536
    groups = item_rows(shape, "frame-groups", 2)
    assert len(groups) == 128 and set(groups) == {512} and item_rows(shape, "whole-eager", 2) == [65536]
    assert item_rows(video_shape("qwen2.5-vl-7b", "448x448", 6), "frame-groups", 2) == [512, 256]  # t=3: 2 + 1
    assert planned_calls([groups], "batched", 4096) == [[512] * 8] * 16  # the largest bucket's rows a call
    assert planned_calls([[100], [200]], "batched", None) == [[100, 200]]
    assert planned_calls([[100], [200]], "per_request", None) == [[100], [200]]


def test_plan_prints_the_estimate_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(video, "run_video", lambda *a, **k: pytest.fail("must not run"))
    assert main(["--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-vl-7b" in out and "54 frames x resolution x path" in out and "estimate: about " in out
    assert "cost models" in out and not any(tmp_path.iterdir())


def test_refuses_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--smoke" in err
    assert bench_main.main(["video", "--device", "cuda"]) == 2  # the job is registered
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["--device", "cpu", "--towers", "qwen2.5-vl-7b"]) == 2
    assert "only the tiny towers" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--frames", "16,0"], "argument --frames: each value must be a positive int, got 0"),
    (["--resolutions", "big"], "argument --resolutions: resolution 'big'"),
    (["--paths", "whole,frame-groups"], "argument --paths: unknown path 'whole'"),
    (["--towers", "clip-tiny"], "argument --towers: tower 'clip-tiny' takes no video"),
    (["--videos", "x"], "argument --videos: expected comma-separated integers"),
    (["--smoke", "--frame-group", "0"], "frame_group (temporal patches) must be a positive int, got 0"),
    (["--smoke", "--batch-frames", "0"], "batch_frames must be a positive int, got 0"),
    (["--smoke", "--repeats", "0"], "repeats must be a positive int, got 0"),
    (["--smoke", "--device", "cuda"], "--smoke runs on the CPU"),
])
def test_bad_flags_name_themselves(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_never_writes_into_another_cards_folder(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(STORED_H100, mine)
    monkeypatch.setattr(video, "run_video", lambda *a, **k: pytest.fail("must not run"))
    assert main(["--smoke", "--out", str(mine), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds results of another card" in err and "(h100)" in err and "this is a cpu-smoke" in err
    assert [p.name for p in mine.iterdir()] == [STORED_H100.name]  # nothing written
    monkeypatch.setattr(files, "RESULTS", tmp_path)
    assert main(["--smoke", "--out", str(tmp_path / "h100"), "--no-progress"]) == 2
    assert "is the results folder of card 'h100'; this is a cpu-smoke" in capsys.readouterr().err
    assert not (tmp_path / "h100").exists()
    check_out(tmp_path / "h200", "h200")  # a card's own (new) folder
    smoke = tmp_path / "cpu-smoke"
    smoke.mkdir()
    (smoke / "video-20990101T000000Z.json").write_text(json.dumps({"kind": "cpu-smoke", "machine": {"slug": "cpu"}}))
    check_out(smoke, "cpu-smoke")  # smoke files name no card
    with pytest.raises(video.Refused, match="is the results folder of card 'cpu-smoke'; this is a h200"):
        check_out(smoke, "h200")


@pytest.mark.gpu
def test_gpu_512_frames_448_in_frame_groups_stay_within_the_largest_bucket(tmp_path):
    """Issue 19's memory target: a 512-frame 448x448 video's peak call memory in frame groups within the largest
    bucket's call, while the whole video eager grows past a largest-bucket forward."""
    settings = VideoSettings(device="cuda", dtype="bf16", resolutions=("448x448",), frames=(512,),
                             videos=(1,), batch_frames=16, repeats=2)
    data = run_video(settings, progress=False)
    (tower,) = data["towers"]
    ref = tower["largest_bucket"]
    peak = {x["path"]: x["call_peak_bytes"] for x in data["summary"] if x["grid"] == "frames"}
    assert peak["frame-groups"] <= 1.05 * ref["bucketed_call_peak_bytes"]
    assert peak["whole-eager"] > ref["eager_call_peak_bytes"]
    assert all(x["compiles"] == 0 and x["captures"] == 0 for x in data["summary"])  # warm-up caught them all
    (check,) = data["rows_check"]
    assert check["equal"] is True
