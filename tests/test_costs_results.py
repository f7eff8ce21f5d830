"""The one reader and writer of measured files: folders, stamps, schemas, the newest file of a kind."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from vitkit.costs import results


def _touch(folder, name, data=None):
    path = folder / name
    path.write_text(json.dumps(data if data is not None else {}))
    return path


def test_schema_per_kind_and_unknown_kinds_are_named():
    assert results.schema("prefill") == "vitkit.prefill/1"
    assert results.schema("encoder-costs") == "vitkit.encoder-costs/1"
    assert results.schema("ttft-validate") == "vitkit.ttft-validate/1"
    assert set(results.FORMATS) >= {"prefill", "encoder-costs", "stream", "ttft", "ttft-validate"}
    with pytest.raises(ValueError, match="unknown results kind 'nope'"):
        results.schema("nope")
    with pytest.raises(ValueError, match="unknown results kind"):
        results.newest("nope", ".")


def test_stamps():
    when = dt.datetime(2026, 11, 27, 6, 20, 35, tzinfo=dt.timezone.utc)
    assert results.stamp(when) == "20261127T062035Z"
    later = dt.datetime(2026, 11, 27, 7, 20, 35, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # the same instant
    assert results.stamp(later) == "20261127T062035Z"
    assert len(results.stamp()) == len("20261127T062035Z") and results.stamp().endswith("Z")
    assert results.stamp_of("results/h100/ttft-validate-20261127T062035Z.json") == "20261127T062035Z"
    assert results.stamp_of("stream-qwen2.5-vl-7b-20261127T022821Z.json") == "20261127T022821Z"


def test_results_folder():
    assert results.results_folder("a100", "/tmp/r").as_posix() == "/tmp/r/a100"
    assert results.results_folder() == results.RESULTS / results.STORED_CARD


def test_newest_by_stamp_not_by_name(tmp_path):
    # names sort otherwise than stamps: the stream files' encoder names come before the stamp
    old = _touch(tmp_path, "stream-zz-encoder-20260101T000000Z.json")
    new = _touch(tmp_path, "stream-aa-encoder-20260202T000000Z.json")
    assert results.newest("stream", tmp_path) == new
    assert results.newest_first("stream", tmp_path) == [new, old]


def test_ttft_and_ttft_validate_are_not_confused(tmp_path):
    ttft = _touch(tmp_path, "ttft-20260101T000000Z.json")
    validate = _touch(tmp_path, "ttft-validate-20260202T000000Z.json")
    _touch(tmp_path, "ttft-20260101T000000Z-load.png")
    assert results.newest_first("ttft", tmp_path) == [ttft]
    assert results.newest_first("ttft-validate", tmp_path) == [validate]
    # the same for prefill grids and encoder costs: only their own files
    grid = _touch(tmp_path, "prefill-20260101T000000Z.json")
    costs = _touch(tmp_path, "encoder-costs-20260101T000000Z.json")
    assert results.newest_first("prefill", tmp_path) == [grid]
    assert results.newest_first("encoder-costs", tmp_path) == [costs]


def test_nothing_found_names_the_kind_and_the_folder(tmp_path):
    assert results.newest_first("prefill", tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError, match=r"no prefill results .* in .*missing"):
        results.newest("prefill", tmp_path / "missing")
    _touch(tmp_path, "ttft-20260101T000000Z.json")
    with pytest.raises(FileNotFoundError, match=f"no ttft-validate results .* in {tmp_path}"):
        results.newest("ttft-validate", tmp_path)


def test_write_then_read_round_trips_with_the_schema(tmp_path):
    path = results.write("prefill", {"rows": [1, 2], "when": dt.date(2026, 1, 1)}, tmp_path / "sub" / "prefill-x.json")
    assert path.exists()
    data = results.read("prefill", path)
    assert data == {"schema": "vitkit.prefill/1", "rows": [1, 2], "when": "2026-01-01"}  # unknown types as str


def test_schema_errors_name_the_file(tmp_path):
    other = results.write("stream", {"steps": []}, tmp_path / "stream-x.json")
    with pytest.raises(ValueError, match=f"{other}: field 'schema' must be 'vitkit.prefill/1', got 'vitkit.stream/1'"):
        results.read("prefill", other)
    listed = _touch(tmp_path, "list.json", [1, 2])
    with pytest.raises(ValueError, match=f"{listed}: field 'schema' must be .*got 'list'"):
        results.read("prefill", listed)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=f"{broken}: not a JSON results file"):
        results.read("prefill", broken)
    with pytest.raises(ValueError, match="where: field 'schema'"):
        results.check_schema("prefill", {"schema": "other"}, "where")
    assert results.check_schema("prefill", {"schema": "vitkit.prefill/1"}, "x") == {"schema": "vitkit.prefill/1"}


def test_every_stored_file_of_a_known_kind_reads():
    folder = results.results_folder()
    for kind in ("prefill", "encoder-costs", "stream", "ttft", "ttft-validate"):
        for path in results.newest_first(kind, folder):
            assert results.read(kind, path)["schema"] == results.schema(kind)


# ---------------------------------------------------------------- card names and whose models


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("cpu", "cpu"), ("Some Odd Card", "some-odd-card"),
])
def test_card_slug_is_the_benchmarks_device_slug(name, slug):
    from vitkit.bench.machine import device_slug

    assert results.card_slug(name) == slug == device_slug(name)


def test_cards_named_in_a_sources_text():
    text = ("encoder: measured buckets encoder-costs-20261127T061643Z.json, bookkeeping x (qwen2.5-vl-7b/vitkit), "
            "on NVIDIA H100 80GB HBM3; prefill: prefill-20261127T061302Z.json (NVIDIA H100 80GB HBM3)")
    assert results.cards_named(text) == ["h100"]
    assert results.cards_named("encoder: test; prefill: test double") == []
    assert results.cards_named("a (NVIDIA H200) and b (NVIDIA H100 80GB HBM3)") == ["h200", "h100"]


def _models(folder, device="NVIDIA H200"):
    """A folder holding what the models need (by name), each file naming ``device``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("encoder-costs-20990101T000000Z.json", "prefill-20990101T000000Z.json"):
        _touch(folder, name, {"kind": "gpu", "machine": {"device_name": device, "slug": results.card_slug(device)}})
    return folder


def test_attached_card_from_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert results.attached_card() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert results.attached_card() == "h200"


def test_models_follow_the_attached_card_when_it_has_results(tmp_path):
    stored = _models(tmp_path / results.STORED_CARD, "NVIDIA H100 80GB HBM3")
    # a new card: the stored models, and a one-line hint with the calibrate command
    new = results.models_folder(attached="h200", root=tmp_path)
    assert (new.folder, new.card, new.attached) == (stored, "h100", "h200")
    assert "h200" in new.hint and "make calibrate" in new.hint and "\n" not in new.hint
    assert new.label() == "models measured on h100, from h100/"
    # once calibrated, its own
    own = results.models_folder(attached="h200", root=_models(tmp_path / "h200").parent)
    assert (own.folder, own.card, own.hint) == (tmp_path / "h200", "h200", None)
    assert "the attached card's" in own.label()
    # half a calibration (a grid, no encoder costs) is not models
    (tmp_path / "h200" / "encoder-costs-20990101T000000Z.json").unlink()
    assert results.models_folder(attached="h200", root=tmp_path).card == "h100"
    # the stored card itself attached, or no GPU: the stored models, no hint
    assert results.models_folder(attached="h100", root=tmp_path).hint is None


def test_models_without_a_gpu_are_the_stored_ones(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    models = results.models_folder()
    assert (models.folder, models.card, models.attached, models.hint) == (results.results_folder(), "h100", None, None)
    assert results.has_models(models.folder)


def test_a_folder_given_is_used_and_named_by_its_files(tmp_path):
    given = _models(tmp_path / "mine", "NVIDIA A100-SXM4-40GB")
    models = results.models_folder(given, attached="h200")
    assert (models.folder, models.card, models.hint) == (given, "a100", None)
    assert results.models_folder(tmp_path / "empty").card == "empty"  # no file names a card: the folder's name


def test_cards_in_a_folder_skip_files_that_name_none(tmp_path):
    _touch(tmp_path, "prefill-20990101T000000Z.json", {"kind": "gpu", "machine": {"device_name": "NVIDIA H200"}})
    _touch(tmp_path, "encoder-costs-x.json", {"kind": "cpu-smoke", "machine": {"slug": "cpu"}})  # a smoke run
    _touch(tmp_path, "ttft-20990101T000000Z.json", {"rows": []})  # simulated: no machine
    (tmp_path / "broken.json").write_text("{not json")
    assert results.cards_in(tmp_path) == {"prefill-20990101T000000Z.json": "h200"}
    assert results.cards_in(tmp_path / "missing") == {}
    assert set(results.cards_in(results.results_folder()).values()) == {"h100"}  # the stored folder is one card's


def test_figures_of_modelled_results_name_the_card():
    from vitkit.sim.plot import models_card

    assert models_card("encoder: measured buckets e.json, bookkeeping s.json (q/v), on NVIDIA H200; prefill: "
                       "p.json (NVIDIA H200)") == "models measured on H200"
    assert models_card("encoder: test; prefill: test double") is None and models_card(None) is None


def test_ttft_and_admission_figures_say_whose_models():
    from vitkit.costs import StepCosts, load_encoder_cost, load_prefill_cost
    from vitkit.sim.engine import ReplayConfig
    from vitkit.sim.plot import plot_admission, plot_over_steps, plot_ttft_vs_load
    from vitkit.sim.replay import load_sweep, workload_trace

    costs = StepCosts(load_encoder_cost(), load_prefill_cost())
    (point,) = load_sweep(workload_trace("small-images", 10), [10.0], costs, [ReplayConfig()], progress=False)
    assert "models measured on H100" in plot_ttft_vs_load([point])._suptitle.get_text()
    assert "models measured on H100" in plot_over_steps([point.run])._suptitle.get_text()
    rows = [{"trace": "t", **point.run.record()}]
    assert "TTFT models measured on H100" in plot_admission(rows, sources=point.run.sources)._suptitle.get_text()
    assert "measured on" not in plot_admission(rows)._suptitle.get_text()
