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
