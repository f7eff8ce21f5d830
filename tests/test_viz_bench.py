"""Notebook 02's views: stored results, sweep and source pickers, speedup table, labelled smoke run; the
crossover of CUDA graphs against batching (figure per tower, gains table beside SGLang's reference)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets", reason="widget tests need the notebooks extra: pip install -e '.[notebooks]'")

from conftest import fake_bench_results

import vitkit.viz.crossover_view as cv
from vitkit.bench import rows as stream_run
from vitkit.bench.crossover import crossover_figure, gains, summarize
from vitkit.bench.rows import write_results
from vitkit.costs import results as files
from vitkit.costs.results import schema
from vitkit.viz import bench_widget as bv
from vitkit.viz.bench_widget import SMOKE_LABEL, BenchView, bench_view, speedup_rows, stored_results


def test_speedup_rows_pair_the_modes():
    table = speedup_rows(fake_bench_results(), "clip-batch")
    assert [r["requests"] for r in table] == [1, 4, 16, 64]
    assert table[-1]["speedup"] == round(5.0 * 64 / (5.0 + 64), 2)
    assert table[-1]["peak MiB"] == 1024
    assert [r["resolution"] for r in speedup_rows(fake_bench_results(), "qwen-resolution")] == [224, 448, "mixed"]


def test_stored_results_reads_gpu_files_and_skips_the_rest(tmp_path):
    write_results(fake_bench_results(), tmp_path / "full-vitkit-bf16-20260101T000000Z.json")
    write_results(fake_bench_results(kind="cpu-smoke", device="cpu"), tmp_path / "cpu-smoke-vitkit-fp32-20260102T000000Z.json")
    (tmp_path / "notes.json").write_text(json.dumps({"not": "results"}))
    found = stored_results(tmp_path)
    assert len(found) == 1 and next(iter(found)).endswith("full-vitkit-bf16-20260101T000000Z.json")
    assert stored_results(tmp_path / "missing") == {}


def test_view_switches_sweep_and_source():
    view = BenchView({"h100.json": fake_bench_results(), "smoke": fake_bench_results(kind="cpu-smoke", device="cpu")})
    assert view.source.value == "h100.json"
    assert "GPU measurement</b> on NVIDIA H100" in view.header.value and SMOKE_LABEL not in view.header.value
    assert view.sweep.options == ("clip-batch", "qwen-resolution", "memory-model")
    png, table = view.figure.value, view.table.value
    assert bytes(png).startswith(b"\x89PNG") and "clip-l-336" in table
    view.sweep.value = "qwen-resolution"
    assert bytes(view.figure.value) != bytes(png) and "qwen2.5-vl-7b" in view.table.value and "clip-l-336" not in view.table.value
    view.sweep.value = "memory-model"
    assert "predicted_peak_bytes" in view.table.value
    view.source.value = "smoke"  # a smoke run has no memory model: back to its first sweep
    assert SMOKE_LABEL in view.header.value
    assert view.sweep.options == ("clip-batch", "qwen-resolution") and view.sweep.value == "clip-batch"


def test_no_gpu_and_nothing_stored_says_so(tmp_path):
    view = bench_view(run=False, folder=tmp_path)
    assert "No stored results" in view.note.value and view.results is None and view.figure.value == b""


def test_cpu_smoke_button_adds_a_labelled_run(tmp_path, monkeypatch):
    calls = []

    def fake_run(sweep=None, **kwargs):
        calls.append((sweep, kwargs))
        return fake_bench_results(kind="cpu-smoke", device="cpu")

    monkeypatch.setattr(bv, "run_benchmark", fake_run)
    view = bench_view(run=False, folder=tmp_path)
    view.smoke_button.click()
    assert calls == [("cpu-smoke", {"sweeps": bv.SMOKE_SWEEPS, "device": "cpu", "save": False})]
    assert "CPU smoke run" in view.source.value and SMOKE_LABEL in view.header.value
    assert bytes(view.figure.value).startswith(b"\x89PNG") and not view.smoke_button.disabled


def test_gpu_run_is_shown_first_next_to_stored_results(tmp_path, monkeypatch):
    write_results(fake_bench_results(), tmp_path / "full-vitkit-bf16-20260101T000000Z.json")
    monkeypatch.setattr(bv, "run_benchmark", lambda sweep=None: fake_bench_results(device="NVIDIA H200") | {"saved_to": "x.json"})
    view = bench_view("quick", run=True, folder=tmp_path)
    assert len(view.source.options) == 2
    assert view.source.value == view.source.options[0] and view.source.value.startswith("measured here: NVIDIA H200")


def test_unknown_sweep_names_are_an_error():
    with pytest.raises(ValueError, match="not in preset 'cpu-smoke'"):
        bv.run_benchmark("cpu-smoke", sweeps=["nope"], device="cpu")


# ---------------------------------------------------------------- what is shown by default


def _with_stock(results):
    """The same rows again as the eager "stock" implementation, with an 8x eager speedup."""
    def eager(row):
        k = 8 if row.mode == "per_request" else 1
        return replace(row, impl="stock", **{f: getattr(row, f) * k for f in ("step_ms_median", "step_ms_p10", "step_ms_p90")})

    stock = [eager(r) for r in results["rows"]]
    return results | {"rows": results["rows"] + stock}


def _stream(created, kind="gpu"):
    """A small valid ``vitkit.stream/1`` object: one impl, both modes, three steps."""
    steps = [{"encoder": "qwen2.5-vl-7b", "impl": "vitkit", "mode": mode, "step": k, "encoder_calls": 1,
              "encoded_items": 2, "encoded_rows": 512, "padded_rows": 0, "encoder_ms": ms, "step_ms": ms + 0.5}
             for mode, ms in (("batched", 5.0), ("per_request", 8.0)) for k in range(3)]
    summary = {"encoder": "qwen2.5-vl-7b", "impl": "vitkit", "steps": 3, "images_per_s": 400.0, "rows_per_s": 1e5,
               "step_ms_p50": 5.5, "step_ms_p99": 6.0}
    results = {"schema": bv.STREAM_SCHEMA, "kind": kind, "created": created,
               "machine": {"device_name": "NVIDIA H100 80GB HBM3"}, "versions": {},
               "settings": {"stream": {"encoder": "qwen2.5-vl-7b", "steps": 3, "images_per_step": [1, 8]}},
               "warmups": [], "cold": [], "steps": steps,
               "steady": [{"impl": "vitkit", "rows_per_s": 1.2e5}],
               "summaries": [summary | {"mode": "batched", "batched_speedup": 1.6},
                             summary | {"mode": "per_request", "batched_speedup": None}]}
    stream_run.validate_stream_results(results)
    return results


def test_the_stream_schema_is_the_stream_benchmarks():
    assert bv.STREAM_SCHEMA == schema("stream")


def test_stored_sources_put_a_stream_file_first_then_the_newest_sweep(tmp_path):
    for stamp in ("20260101T000000Z", "20260301T000000Z"):
        write_results(fake_bench_results(), tmp_path / f"full-vitkit-bf16-{stamp}.json")
    assert list(bv.stored_sources(tmp_path)) == [str(tmp_path / f"full-vitkit-bf16-{s}.json")
                                                 for s in ("20260301T000000Z", "20260101T000000Z")]
    (tmp_path / "stream-vitkit-20260201T000000Z.json").write_text(json.dumps(_stream("2026-02-01")))
    (tmp_path / "stream-vitkit-20260202T000000Z.json").write_text(json.dumps(_stream("2026-02-02")))
    (tmp_path / "stream-aaa-20260101T000000Z.json").write_text(json.dumps(_stream("2026-01-01")))  # older
    (tmp_path / "stream-broken-20260401T000000Z.json").write_text(json.dumps({"schema": "something/9"}))
    (tmp_path / "stream-notjson-20260401T000000Z.json").write_text("{")
    (tmp_path / "stream-smoke-20260401T000000Z.json").write_text(json.dumps(_stream("2026-04-01", kind="cpu-smoke")))
    names = [key.rsplit("/", 1)[-1] for key in bv.stored_sources(tmp_path)]
    assert names == ["stream-vitkit-20260202T000000Z.json", "stream-vitkit-20260201T000000Z.json",
                     "stream-aaa-20260101T000000Z.json",
                     "full-vitkit-bf16-20260301T000000Z.json", "full-vitkit-bf16-20260101T000000Z.json"]


def test_a_newer_named_stream_file_is_offered_after_the_plain_ones(tmp_path):
    """A named stream (scans, mixed) picks its items for another question: the view opens on the plain stream."""
    (tmp_path / "stream-vitkit-20260201T000000Z.json").write_text(json.dumps(_stream("2026-02-01")))
    named = _stream("2026-03-01")
    named["settings"]["stream"]["name"] = "scans"
    (tmp_path / "stream-scans-vitkit-20260301T000000Z.json").write_text(json.dumps(named))
    names = [key.rsplit("/", 1)[-1] for key in bv.stored_sources(tmp_path)]
    assert names == ["stream-vitkit-20260201T000000Z.json", "stream-scans-vitkit-20260301T000000Z.json"]
    assert bench_view(run=False, folder=tmp_path).source.value.endswith("stream-vitkit-20260201T000000Z.json")


def test_a_stream_file_is_selected_first_and_shown_with_its_own_figure(tmp_path):
    write_results(fake_bench_results(), tmp_path / "full-vitkit-bf16-20260101T000000Z.json")
    (tmp_path / "stream-vitkit-20260201T000000Z.json").write_text(json.dumps(_stream("2026-02-01")))
    view = bench_view(run=False, folder=tmp_path)
    assert view.source.value.endswith("stream-vitkit-20260201T000000Z.json")
    assert "GPU measurement</b> on NVIDIA H100" in view.header.value
    assert view.sweep.options == () and view.impl.options == ()
    assert bytes(view.figure.value).startswith(b"\x89PNG") and ">per_request<" in view.table.value
    assert ">1.6<" in view.table.value  # the batched speedup on the stream
    assert "the headline A/B" in view.table.value  # what the impl shown is
    view.source.value = view.source.options[1]  # the sweep file draws as before
    assert view.sweep.value == "clip-batch" and bytes(view.figure.value).startswith(b"\x89PNG")


def test_the_optimised_ab_is_the_default_and_the_eager_ab_says_what_it_overstates():
    view = BenchView({"h100.json": _with_stock(fake_bench_results())})
    assert view.impl.options == ("vitkit", "stock", "all") and view.impl.value == "vitkit"
    assert "the headline A/B" in view.table.value and ">stock<" not in view.table.value
    vitkit_png = bytes(view.figure.value)
    view.impl.value = "stock"
    assert "overstate what batching buys" in view.table.value and ">vitkit<" not in view.table.value
    assert bytes(view.figure.value) != vitkit_png
    view.impl.value = "all"
    assert ">vitkit<" in view.table.value and ">stock<" in view.table.value and "overstate" in view.table.value


def test_without_a_gpu_the_stored_h100_results_are_on_screen_and_nothing_runs(monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("no benchmark may run by default without a GPU")

    monkeypatch.setattr(bv, "gpu_available", lambda: False)
    monkeypatch.setattr(bv, "run_benchmark", no_run)
    view = bench_view("full")
    newest = list(bv.stored_sources())[0]
    assert view.source.value == newest and newest.startswith("results/h100/")
    assert "GPU measurement</b> on NVIDIA H100" in view.header.value and SMOKE_LABEL not in view.header.value
    assert bytes(view.figure.value).startswith(b"\x89PNG") and "clip-l-336" in view.table.value
    assert all("CPU smoke" not in label for label in view.source.options)
    streams = sorted(bv.STORED.glob("stream-*.json"))
    if streams:  # a stream file, when one is stored, comes first
        assert newest.rsplit("/", 1)[-1].startswith("stream-") and view.impl.options == ()
    else:
        assert view.impl.value == "vitkit"


def test_dp_panel_shows_the_stored_scaling_or_says_none_is_stored(tmp_path):
    from vitkit.viz import dp_panel
    from vitkit.bench.dp import STORED_DP

    missing = dp_panel(tmp_path / "dp.json")
    assert "No stored data-parallel results" in missing.value
    if STORED_DP.is_file():
        panel = dp_panel()
        tower, image, table = panel.children
        assert image.value[:4] == b"\x89PNG" and "token-balanced" in table.value and "<td" in table.value
        first = image.value
        tower.value = tower.options[-1]  # another tower: its own figure and rows
        assert image.value != first and tower.value in table.value and tower.options[0] not in table.value


def test_new_results_draw_once_and_a_stream_hides_the_sweep_pickers(monkeypatch):
    view = BenchView({"stream": _stream("2026-02-01"), "sweeps": fake_bench_results()})
    assert view.shown == "stream" and view.picks.layout.display == "none"  # a stream has no sweeps to pick
    view.source.value = "sweeps"
    assert view.picks.layout.display is None and view.sweep.options
    drawn = []
    monkeypatch.setattr(view, "_show_stream", lambda: drawn.append("stream"))
    monkeypatch.setattr(view, "draw", lambda: drawn.append("sweep"))
    view.add_results("smoke", fake_bench_results(kind="cpu-smoke"))
    assert view.shown == "smoke" and drawn == ["sweep"]  # not the first source's figure on the way
    view.add_results("later", fake_bench_results(), select=False)
    assert view.shown == "smoke" and drawn == ["sweep"]  # nothing redrawn, the choice kept


def test_a_gpu_without_results_of_its_own_gets_the_stored_ones_and_a_calibrate_hint(monkeypatch):
    from vitkit.costs import results as files

    monkeypatch.setattr(files, "attached_card", lambda: "h200")
    view = bench_view(run=False)
    assert view.sources and "make calibrate" in view.hint.value
    assert all(label.startswith("results/h100/") for label in view.sources)


def test_notebook_02_quotes_the_smoke_runs_own_settings():
    import nbformat

    from vitkit.bench.sweep import RunSettings

    cpu = RunSettings.for_device("cpu")
    text = " ".join(c.source for c in nbformat.read(bv.REPO / "notebooks" / "02_batched_vs_per_request.ipynb", 4).cells
                    if c.cell_type == "markdown").replace("\n", " ")
    assert f"warms up {cpu.warmup} steps and repeats {cpu.min_repeats} to {cpu.repeats}" in text


# ---------------------------------------------------------------- the crossover: graphs against batching (issue 21)

# A CPU smoke run of the two tiny towers at 360p/720p/1080p, 1-3 images a step, as the command wrote it:
# python -m vitkit.bench crossover --device cpu --resolutions 360p,720p,1080p --images 1-3 --repeats 1 --warmup 1
CROSSOVER = Path(__file__).parent / "fixtures" / "crossover-20261205T084120Z.json"
H100 = "NVIDIA H100 80GB HBM3"


def _crossover() -> dict:
    return json.loads(CROSSOVER.read_text())


def _as_gpu_file(folder: Path, stamp: str) -> Path:
    """The fixture relabelled as a GPU run (a test double: only where the view looks and what it labels change)."""
    data = _crossover() | {"kind": "gpu"}
    data["machine"] = data["machine"] | {"device_name": H100, "slug": "h100"}
    path = folder / f"crossover-{stamp}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_the_crossover_fixture_passes_the_readers():
    data = files.read("crossover", CROSSOVER)
    cv.check_crossover(data, CROSSOVER)
    assert cv.read_crossover(CROSSOVER) == data and data["kind"] == "cpu-smoke"


def test_the_crossover_view_draws_each_towers_figure_behind_a_drop_down():
    data = cv.read_crossover(CROSSOVER)
    towers = [t["preset"] for t in data["towers"]]
    for preset in towers:  # three resolutions: throughput above, gains below
        assert len(crossover_figure(data, preset).axes) == 6
    view = cv.crossover_panel(path=CROSSOVER)
    assert isinstance(view, cv.CrossoverView) and view.tower.options == tuple(towers) == ("qwen3-vl-tiny",
                                                                                          "qwen2.5-vl-tiny")
    assert view.tower.layout.display is None and SMOKE_LABEL in view.header.value
    first_png, first_table = bytes(view.figure.value), view.table.value
    assert first_png.startswith(b"\x89PNG") and ">360p<" in first_table
    view.tower.value = towers[1]
    assert bytes(view.figure.value).startswith(b"\x89PNG") and bytes(view.figure.value) != first_png
    assert view.table.value != first_table


def test_one_tower_needs_no_drop_down():
    data = cv.read_crossover(CROSSOVER)
    one = data | {"towers": data["towers"][:1]}
    view = cv.CrossoverView(one, "one tower")
    assert view.tower.layout.display == "none" and bytes(view.figure.value).startswith(b"\x89PNG")


def test_the_crossover_tables_gains_are_those_of_the_fixtures_steps():
    data = cv.read_crossover(CROSSOVER)
    expected = {(g["preset"], g["resolution"], g["images_per_step"]): g for g in gains(summarize(data["steps"]))}
    for preset in ("qwen3-vl-tiny", "qwen2.5-vl-tiny"):
        rows = cv.gain_rows(data, preset)
        assert [r["resolution"] for r in rows] == ["360p"] * 4 + ["720p"] * 4 + ["1080p"] * 4
        assert [r["images a step"] for r in rows[:4]] == [1, 2, 3, "all (whole stream)"]
        for row in rows:
            count = "all" if row["images a step"] == "all (whole stream)" else row["images a step"]
            g = expected[preset, row["resolution"], count]
            for key, column in cv.GAIN_COLUMNS.items():
                assert row[column] == round(100 * g[key], 1)
            reference = cv.SGLANG_H200_REFERENCE.gains(row["resolution"])
            shown = tuple(row[c] for c in cv.REFERENCE_COLUMNS)
            assert shown == (tuple(round(100 * v, 1) for v in reference) if count == "all" else ("", ""))
    with pytest.raises(ValueError, match="no tower 'qwen3-vl-8b'"):
        cv.gain_rows(data, "qwen3-vl-8b")


def test_the_reference_is_sglangs_h200_review_labelled_as_not_ours():
    ref = cv.SGLANG_H200_REFERENCE
    assert "sglang" in ref.source.lower() and "H200" in ref.setup and "Qwen3-VL-8B" in ref.setup
    graph, batching = zip(*(ref.gains(r) for r in ("360p", "720p", "1080p")))
    assert round(100 * graph[0]) == 29 and all(abs(g) < 0.03 for g in graph[1:])  # nothing at 720p and 1080p
    assert [round(100 * b) for b in batching] == [9, 5, 12]
    assert ref.gains("128x72") is None
    assert all(c.startswith("SGLang H200 reference") for c in cv.REFERENCE_COLUMNS)
    table = cv.crossover_panel(path=CROSSOVER).table.value
    assert "not measured here" in table and "sgl-project/sglang#24013" in table
    assert all(html_escaped in table for html_escaped in cv.REFERENCE_COLUMNS)


def test_without_a_crossover_file_one_line_names_the_card_and_the_command(tmp_path, monkeypatch):
    view = cv.crossover_panel(tmp_path / "h100")
    assert view.value.count("<p>") == 1 and "for h100" in view.value
    assert "<code>python -m vitkit.bench crossover</code>" in view.value and cv.CROSSOVER_COMMAND in view.value
    (tmp_path / "h100").mkdir()
    (tmp_path / "h100" / CROSSOVER.name).write_text(CROSSOVER.read_text())  # a CPU smoke run is no card's
    assert "No crossover results stored for h100" in cv.crossover_panel(tmp_path / "h100").value
    monkeypatch.setattr(files, "attached_card", lambda: None)
    if cv.newest_crossover(files.models_folder().folder) is None:  # today: none stored for the stored card
        assert f"for {files.STORED_CARD} (results/{files.STORED_CARD}/)" in cv.crossover_panel().value


def test_the_newest_gpu_crossover_file_of_the_folder_is_shown(tmp_path):
    folder = tmp_path / "h100"
    _as_gpu_file(folder, "20270101T000000Z")
    newest = _as_gpu_file(folder, "20270201T000000Z")
    (folder / "crossover-20270301T000000Z.json").write_text(CROSSOVER.read_text())  # newer, but a smoke run
    assert cv.newest_crossover(folder) == newest
    view = cv.crossover_panel(folder)
    assert f"GPU measurement</b> on {H100}" in view.header.value and newest.name in view.header.value
    assert SMOKE_LABEL not in view.header.value


def _drop_gain_key(data):
    data["gains"][0].pop("graphs_batched")
    return data


def _drop_stream_rows(data):
    data["gains"] = [g for g in data["gains"] if g["images_per_step"] != "all"]
    return data


@pytest.mark.parametrize("spoil, message", [
    (lambda data: data | {"schema": "vitkit.bench.crossover/0"}, "field 'schema' must be 'vitkit.bench.crossover/1'"),
    (lambda data: data | {"towers": {}}, "crossover field 'towers' must be a non-empty list of JSON objects, got dict"),
    (lambda data: {k: v for k, v in data.items() if k != "summary"}, "crossover field 'summary' must be .* NoneType"),
    (lambda data: data | {"settings": []}, "crossover field 'settings' must be a JSON object, got list"),
    (lambda data: data | {"machine": {}}, r"crossover machine lacks \['device_name'\]"),
    (_drop_gain_key, r"crossover gains\[0\] lacks \['graphs_batched'\]"),
    (_drop_stream_rows, "no whole-stream row .* tower 'qwen3-vl-tiny' at resolution '360p'"),
])
def test_a_malformed_crossover_file_is_a_clear_error(tmp_path, spoil, message):
    path = _as_gpu_file(tmp_path / "h100", "20270101T000000Z")
    path.write_text(json.dumps(spoil(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=message) as err:
        cv.crossover_panel(tmp_path / "h100")
    assert str(path) in str(err.value)


def test_a_crossover_file_that_is_not_json_is_a_clear_error(tmp_path):
    (tmp_path / "crossover-20270101T000000Z.json").write_text("{")
    with pytest.raises(ValueError, match="crossover-20270101T000000Z.json: not a JSON results file"):
        cv.crossover_panel(tmp_path)
