"""Command lines of ``python -m vitkit.bench sweep`` and ``stream``: parsing, overrides, defaults, bad input."""

from __future__ import annotations

import re

import pytest

from conftest import fake_bench_results
from vitkit.bench import stream
from vitkit.bench.sweep import (SWEEPS, RunSettings, Sweep, build_parser, format_table, get_sweeps, main,
                                settings_from_args)


def parse(*argv):
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_cpu_defaults_to_the_labelled_smoke_sweep():
    sweep, overrides, settings = parse("--device", "cpu")
    assert sweep == "cpu-smoke" and settings.kind == "cpu-smoke"
    assert settings.dtype == "fp32" and (settings.warmup, settings.min_repeats, settings.repeats) == (5, 11, 21) and settings.impls == ("vitkit",)
    assert all(v is None for v in overrides.values())


def test_overrides_replace_axes_in_every_sweep_of_a_group():
    sweep, overrides, settings = parse("--device", "cpu", "--sweep", "full", "--requests", "1,2,4",
                                       "--impl", "vitkit,stock",
                                       "--max-tokens-per-call", "512,none", "--resolution", "224,mixed",
                                       "--hit-fraction", "0,0.9", "--images-per-request", "2", "--repeats", "5")
    sweeps = get_sweeps(sweep, overrides)
    assert len(sweeps) == len(SWEEPS["full"])
    for s in sweeps:
        assert s.requests == (1, 2, 4) and s.images_per_request == (2,)
        assert s.max_tokens_per_call == (512, None) and s.resolutions == (224, "mixed")
        assert s.hit_fractions == (0.0, 0.9)
    assert settings.impls == ("vitkit", "stock") and settings.repeats == 5 and settings.seconds_per_mode == 2.0
    (clip,) = get_sweeps("clip-batch", {"encoder": "clip-tiny"})
    assert clip.encoder == "clip-tiny" and clip.requests == SWEEPS["clip-batch"][0].requests


def test_list_sweeps(capsys):
    assert main(["--list-sweeps"], run=lambda *a, **k: pytest.fail("must not run")) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SWEEPS) and "7 sweeps" in out


def test_cli_defaults_are_run_settings_for_the_device():
    assert parse("--device", "cpu")[2] == RunSettings.for_device("cpu")
    assert parse("--device", "cpu", "--quick")[2] == RunSettings.for_device("cpu", quick=True)
    assert RunSettings.for_device("cpu", repeats=None, dtype="bf16").dtype == "bf16"  # None keeps the default


def test_quick_means_few_repeats_and_the_smoke_sweep_on_cpu():
    sweep, _, settings = parse("--device", "cpu", "--quick")
    assert sweep == "cpu-smoke" and settings.repeats == 3
    assert parse("--device", "cpu", "--quick", "--sweep", "quick")[0] == "quick"


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "nope"], "invalid choice: 'nope'"),
    (["--requests", "1,-2"], "must be a positive int, got -2"),
    (["--requests", "1,x"], "comma-separated integers"),
    (["--images-per-request", "0"], "must be a positive int, got 0"),
    (["--hit-fraction", "1.0"], r"\[0, 1\)"),
    (["--resolution", "huge"], "comma-separated integers"),
    (["--impl", "fast"], "impl must be one of"),
    (["--dtype", "int8"], "invalid choice"),
    (["--repeats", "0"], "must be a positive int, got 0"),
    (["--repeats", "2,3"], "got .2,3."),  # one value: not silently the first of a list
    (["--warmup", "-1", "--device", "cpu"], "warmup must be a non-negative int, got -1"),
    (["--seconds-per-mode", "0", "--device", "cpu"], "seconds.per.mode must be a finite number > 0"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv, run=lambda *a, **k: pytest.fail("must not run"))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda: get_sweeps("nope"), "unknown sweep 'nope'", id="unknown sweep"),
    pytest.param(lambda: get_sweeps("clip-batch", {"batch": [1]}), "cannot override 'batch'", id="unknown axis"),
    pytest.param(lambda: Sweep("x", "clip-tiny", requests=(1, -1)),
                 "sweep 'x': requests must be a positive int, got -1",
                 id="negative requests"),
    pytest.param(lambda: Sweep("x", "clip-tiny", hit_fractions=(1.5,)), "hit fraction must be in", id="hit fraction"),
    pytest.param(lambda: Sweep("x", "clip-tiny", resolutions=("big",)), "resolution 'big'", id="resolution label"),
    pytest.param(lambda: Sweep("x", "clip-tiny", resolutions=(0,)),
                 r"resolution \(px side\) must be a positive int, got 0",
                 id="resolution 0"),
    pytest.param(lambda: Sweep("x", "clip-tiny", images_per_request=()), "images_per_request is empty",
                 id="empty axis"),
])
def test_unknown_sweep_and_bad_axes_raise_value_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_gpu_defaults(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sweep, _, settings = parse()
    assert (sweep, settings.device, settings.dtype, settings.kind) == ("full", "cuda", "bf16", "gpu")
    assert settings.repeats == 10 and settings.warmup == 3 and settings.check
    sweep, _, settings = parse("--quick", "--no-check")
    assert sweep == "quick" and settings.repeats == 3 and not settings.check


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        parse("--device", "cuda")


def test_sweep_points_are_the_product_of_axes():
    s = Sweep("x", "clip-tiny", requests=(1, 2), images_per_request=(1, 4), hit_fractions=(0.0, 0.5))
    points = s.points()
    assert len(points) == 8 and points[0].requests == 1 and points[-1].images == 8
    assert all(p.sweep == "x" for p in points)


def test_main_runs_writes_and_prints_a_table(tmp_path, capsys):
    def fake_run(sweeps, settings, progress):
        return fake_bench_results(kind=settings.kind)

    assert main(["--device", "cpu", "--out", str(tmp_path), "--no-progress"], run=fake_run) == 0
    out = capsys.readouterr().out
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.png"))) >= 1
    assert "step ms" in out and "wrote" in out
    assert "kind=cpu-smoke" in out.splitlines()[-1]


def test_format_table_has_a_line_per_row():
    results = fake_bench_results()
    table = format_table(results)
    lines = table.splitlines()
    rows = [line for line in lines if line.startswith(("clip-batch ", "qwen-resolution "))]
    assert len(rows) == len(results["rows"]) and "per_request" in rows[1]
    (clip,) = [line for line in lines if line.startswith("clip-batch:")]
    assert "at 64 x 1" in clip and "speedup 4.64x" in clip  # 320 ms per request vs 69 ms batched
    assert sum(line.startswith("memory model") for line in lines) == len(results["memory_model"])


def parse_stream(*argv):
    return stream.settings_from_args(stream.build_parser().parse_args(list(argv)))


def test_stream_cli_takes_the_bench_device_defaults(monkeypatch):
    import torch

    specs, settings = parse_stream("--device", "cpu", "--buckets", "4,16", "--images-per-step", "2-5")
    assert (settings.device, settings.dtype, settings.kind, settings.buckets) == ("cpu", "fp32", "cpu-smoke", (4, 16))
    assert [s.encoder for s in specs] == list(stream.CPU_STREAMS) and all(s.images_per_step == (2, 5) for s in specs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    specs, settings = parse_stream()
    assert (settings.device, settings.dtype, settings.kind) == ("cuda", "bf16", "gpu")
    assert [s.encoder for s in specs] == list(stream.GPU_STREAMS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        parse_stream("--device", "cuda")


@pytest.mark.parametrize("argv, message", [
    (["--buckets", "4,0"], "each value must be a positive int, got 0"),
    (["--buckets", "4,x"], "expected comma-separated integers, got 'x'"),
    (["--sides", "300-200"], "expected 0 < LOW <= HIGH, got '300-200'"),
])
def test_stream_cli_bad_lists_name_the_value(argv, message, capsys):
    with pytest.raises(SystemExit):
        stream.build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_every_job_is_reachable_from_the_one_entry(capsys):
    from vitkit.bench.__main__ import JOBS
    from vitkit.bench.__main__ import main as bench_main

    for job in JOBS:  # calibrate included: README documents it
        with pytest.raises(SystemExit) as exit_info:
            bench_main([job, "-h"])
        assert exit_info.value.code == 0 and f"python -m vitkit.bench {job}" in capsys.readouterr().out


def test_calibrate_and_errors_are_jobs_of_their_own():
    from vitkit.bench.__main__ import JOBS

    assert JOBS["calibrate"][:2] == ("vitkit.bench.calibrate", "main")
    assert JOBS["errors"][:2] == ("vitkit.bench.errors", "main")
    assert not hasattr(__import__("vitkit.bench.encoder_costs", fromlist=["x"]), "calibrate_main")
