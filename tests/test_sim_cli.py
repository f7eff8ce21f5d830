"""The simulator's command lines: the cache table, the TTFT report (built-in workloads or a user's trace), the
pointer to the GPU validation, and bad input ending in one line and exit status 2."""

import json
import shutil
import time

import pytest

from vitkit.costs import results
from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import load_encoder_cost
from vitkit.costs.prefill import load_prefill_cost
from vitkit.sim import ReplayConfig
from vitkit.sim.__main__ import COLUMNS, main
from vitkit.sim.replay import replay_at_rate, workload_trace
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest, load_trace, save_trace, trace_to_json
from vitkit.sim.workload import WorkloadParams, generate_workload

STORED = results.results_folder()


def user_trace(tmp_path, n=24, seed=9):
    """A user's own trace on disk: Poisson arrivals at 6/s, one or two photos a request, a few repeated."""
    params = WorkloadParams(num_requests=n, arrival_rate_per_s=6.0, text_tokens=(16, 200), images_per_request=(1, 2),
                            image_sizes=((448, 448), (896, 672)), repeat_share=0.3, seed=seed)
    return save_trace(generate_workload(params, "my-app"), tmp_path / "my-app.json")


def test_ttft_cli_replays_a_users_trace_at_its_own_times(tmp_path, capsys):
    path = user_trace(tmp_path)
    assert main(["ttft", "--trace", str(path), "--policies", "legacy", "cache-aware", "--admission-cache-tokens", "512",
                 "4096", "--time-requests", "0", "--out", str(tmp_path / "out")]) == 0
    (result,) = (tmp_path / "out").glob("ttft-*.json")
    data = json.loads(result.read_text())
    assert data["trace"] == {"name": "my-app", "file": str(path), "requests": 24, "arrivals": "trace times"}
    assert {r["workload"] for r in data["load"]} == {"my-app"} and len(data["load"]) == 2 * 2  # modes x policies
    assert {r["arrivals"] for r in data["load"]} == {"trace times"}
    assert {s["workload"] for s in data["sustainable"]} == {"my-app"} and len(data["sustainable"]) == 4
    assert all(s["rate_per_s"] > 0 for s in data["sustainable"])
    # the admission comparison runs on the user's trace alone, at the caches that hold its largest image (768 rows)
    assert {(r["trace"], r["cache_tokens"]) for r in data["admission"]} == {("my-app", 4096)}
    assert "caches of [512] rows cannot hold the largest image of trace 'my-app'" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{result.stem}-admission.png",
                                                                         f"{result.stem}-load.png"]


def test_ttft_cli_replays_a_video_trace_and_admits_videos_the_cache_holds(tmp_path):
    """Videos longer than a step: cache-aware admission gets an encoder budget of at least the cache (as vLLM
    raises its budget to the largest item), so a video the cache holds is admitted, never an error."""
    assert main(["ttft", "--trace", "video-qa", "--cache-tokens", "262144", "--admission-cache-tokens", "262144",
                 "--time-requests", "0", "--out", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("ttft-*.json")).read_text())
    assert {r["workload"] for r in data["load"]} == {"video-qa"}
    aware = [r for r in data["admission"] if r["policy"] == "cache-aware"]
    assert len(aware) == 2 and all(r["refused_requests"] == 0 and r["finished"] == 16 for r in aware)
    assert all(r["request_re_encodings"] == 0 and r["refused_puts"] == 0 for r in aware)


def test_ttft_cli_replays_a_users_trace_at_poisson_rates(tmp_path):
    path = user_trace(tmp_path)
    assert main(["ttft", "--trace", str(path), "--rates", "2", "8", "--time-requests", "0",
                 "--admission-cache-tokens", "4096", "--out", str(tmp_path)]) == 0
    data = json.loads(next(tmp_path.glob("ttft-*.json")).read_text())
    assert sorted({r["rate_per_s"] for r in data["load"]}) == [2.0, 8.0]
    assert {r["arrivals"] for r in data["load"]} == {"poisson 2/s", "poisson 8/s"}
    assert data["trace"]["arrivals"] == "poisson"


def _broken(tmp_path, mutate):
    data = trace_to_json(Trace("mine", (TraceRequest("q0", 0.0, (12, "shoe", 30)), TraceRequest("q1", 25.5, ("shoe", 4))),
                               {"shoe": ImageSpec(448, 448)}))
    mutate(data)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data) if isinstance(data, dict) else data)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(requests="oops"), "field 'requests' must be a list"),
    (lambda d: d["requests"][1]["segments"].append({"image": "hat"}), "request 1 ('q1'): segments[2] names unknown image 'hat'"),
    (lambda d: d["requests"][0].update(arrival_ms=-1), "request 0 ('q0'): arrival_ms must be a finite number >= 0"),
    (lambda d: d["requests"][0].update(arrival_ms=99.0), "request 1 ('q1'): arrival_ms 25.5 is before request 0"),
    (lambda d: d["requests"][1].update(rid="q0"), "request 1 ('q0'): rid is used twice (request 0 has it too)"),
    (lambda d: d.update(images={"shoe": {"height": 4480, "width": 4480}}),
     "image 'shoe' (4480x4480 px) has 25600 embedding rows, more than the largest cache asked for (16384 rows)"),
])
@pytest.mark.parametrize("command", ["ttft", "advise"])
def test_a_bad_trace_is_one_line_and_exit_2(tmp_path, capsys, mutate, message, command):
    path = _broken(tmp_path, mutate)
    extra = ["--time-requests", "0", "--out", str(tmp_path)] if command == "ttft" else ["--p99-ms", "500",
                                                                                       "--cache-tokens", "16384"]
    assert main([command, "--trace", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("ttft-*.json"))


def test_a_file_that_is_not_json_or_not_there(tmp_path, capsys):
    (tmp_path / "t.json").write_text("{ not json")
    assert main(["ttft", "--trace", str(tmp_path / "t.json"), "--time-requests", "0"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["advise", "--trace", str(tmp_path / "gone.json"), "--p99-ms", "100"]) == 2
    assert "gone.json does not exist" in capsys.readouterr().err


def test_a_results_folder_from_another_card_is_refused(tmp_path, capsys):
    h200 = tmp_path / "h200"  # named for an H200, holding the stored H100 measurements
    h200.mkdir()
    for name in ("encoder-costs-20261127T061643Z.json", "prefill-20261127T061302Z.json"):
        shutil.copy(STORED / name, h200 / name)
    path = user_trace(tmp_path)
    for command in (["ttft", "--time-requests", "0"], ["advise", "--p99-ms", "500"]):
        assert main([*command, "--trace", str(path), "--results", str(h200)]) == 2
        err = capsys.readouterr().err
        assert f"results folder {h200} is named for card h200, but encoder-costs-20261127T061643Z.json was " \
               "measured on h100" in err and len(err.strip().splitlines()) == 1


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


def test_generate_draws_a_new_trace_like_a_stock_workload(tmp_path, capsys):
    out = tmp_path / "mine.json"
    assert main(["generate", "--like", "product-catalog", "--seed", "41", "--requests", "30", "--rate", "12",
                 "--out", str(out)]) == 0
    mine = load_trace(out)
    stock = load_trace("product-catalog")
    assert len(mine.requests) == 30 and "seed 41" in mine.description and "Poisson at 12/s" in mine.description
    assert [r.segments for r in mine.requests] != [r.segments for r in stock.requests[:30]]  # another draw
    sizes = {(s.height, s.width) for s in stock.images.values()}
    assert {(s.height, s.width) for s in mine.images.values()} <= sizes  # the same mix of sizes
    again = tmp_path / "again.json"
    main(["generate", "--like", "product-catalog", "--seed", "41", "--requests", "30", "--rate", "12",
          "--out", str(again)])
    assert again.read_text() == out.read_text()  # seeded


@pytest.mark.parametrize("argv, message", [
    (["--like", "nope", "--seed", "1"], "unknown workload 'nope' to draw a trace like; known: ["),
    (["--like", "doc-qa", "--seed", "1", "--requests", "0"], "num_requests must be a positive int, got 0"),
    (["--like", "doc-qa", "--seed", "1", "--rate", "-2"], "arrival_rate_per_s must be"),
])
def test_generate_names_bad_input(tmp_path, capsys, argv, message):
    assert main(["generate", *argv, "--out", str(tmp_path / "t.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_generate_never_overwrites(tmp_path, capsys):
    out = tmp_path / "t.json"
    out.write_text("mine")
    assert main(["generate", "--like", "doc-qa", "--seed", "1", "--out", str(out)]) == 2
    assert "exists; it is not overwritten" in capsys.readouterr().err and out.read_text() == "mine"
