"""The rows the benchmarks write, typed, and the reader and writer of the sweep and stream files.

A sweep file holds ``kind``, ``created``, ``machine``, ``versions``, ``settings``, ``matmul_peak``,
``rows`` (a ``BenchRow`` per point and mode: ms, bytes, per second, FLOPs at 2 per multiply-add,
``mfu`` a fraction of the run's own matmul peak) and ``memory_model``. A stream file has the same
opening fields, ``warmups``, ``summaries``, ``cold``, ``steady`` and ``steps`` (``StreamRow``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vitkit.checks import non_negative_int
from vitkit.costs import results as files
from vitkit.embed import MODES

_NONE = type(None)
# The JSON types a row's field may take, by its annotation.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "int | str": (int, str), "int | None": (int, _NONE),
    "float | None": (int, float, _NONE), "str | None": (str, _NONE), "tuple[int, ...] | None": (list, tuple, _NONE),
}
_COUNTS = ("requests", "images_per_request", "images", "encoder_calls", "tokens", "model_flops")
TOP_FIELDS: dict[str, tuple[type, ...]] = {"kind": (str,), "machine": (dict,), "versions": (dict,),
                                           "settings": (dict,), "rows": (list,)}
KINDS = ("gpu", "cpu-smoke")


def check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    """ValueError naming ``where`` and ``key`` unless ``value`` is one of ``types`` (no bool, no NaN)."""
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is _NONE else t.__name__ for t in types)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: field {key!r} is {value!r}, not a finite number")


@dataclass(frozen=True)
class BenchRow:
    """One (sweep point, mode) of a run. Fields with a default may be missing from older files."""

    encoder: str
    mode: str
    impl: str
    requests: int
    images_per_request: int
    images: int
    resolution: int | str
    tokens: int
    encoder_calls: int
    step_ms_median: float
    step_ms_p10: float
    step_ms_p90: float
    encoder_ms_median: float
    bookkeeping_ms_median: float
    images_per_s: float
    tokens_per_s: float
    peak_mem_bytes: int | None
    model_flops: int
    mfu: float
    sweep: str
    hit_fraction: float = 0.0
    max_tokens_per_call: int | None = None
    encoded_items: int | None = None
    cache_hits: int | None = None
    call_tokens: tuple[int, ...] | None = None  # embedding rows of each encoder call, in order
    patches: int | None = None
    step_rows: int | None = None  # embedding rows the step assembles (hits included)
    step_ms_mean: float | None = None
    step_ms_min: float | None = None
    step_ms_max: float | None = None
    encoder_ms_p10: float | None = None
    encoder_ms_p90: float | None = None
    bookkeeping_ms_p10: float | None = None
    bookkeeping_ms_p90: float | None = None
    bookkeeping_share: float | None = None
    encoder_mfu: float | None = None
    step_wall_ms_median: float | None = None
    repeats: int | None = None
    base_mem_bytes: int | None = None
    out_bytes_per_token: int | None = None
    dtype: str | None = None
    modes_max_rel_diff: float | None = None  # largest relative difference of the two modes' chunks

    def __post_init__(self) -> None:
        where = f"row ({self.encoder!r}, {self.mode!r})"
        for key, types in (ROW_FIELDS | OPTIONAL_FIELDS).items():
            check_type(where, key, getattr(self, key), types)
        if self.mode not in MODES:
            raise ValueError(f"{where}: mode must be one of {MODES}, got {self.mode!r}")
        for key in _COUNTS:
            non_negative_int(f"{where}: field {key!r}", getattr(self, key))
        if self.call_tokens is not None:
            object.__setattr__(self, "call_tokens", tuple(self.call_tokens))

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], index: int = 0) -> BenchRow:
        """The row of a JSON object; ValueError naming row ``index`` and what is wrong."""
        which = f"({row.get('encoder')!r}, {row.get('mode')!r})"
        missing = [key for key in ROW_FIELDS if key not in row]
        if missing:
            raise ValueError(f"row {index} lacks field(s) {missing} {which}")
        unknown = sorted(set(row) - set(ROW_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"row {index} has unknown field(s) {unknown} {which}; "
                             f"known: {list(ROW_FIELDS | OPTIONAL_FIELDS)}")
        try:
            return cls(**row)
        except ValueError as err:
            raise ValueError(f"row {index} {str(err).removeprefix('row ')}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.call_tokens is not None:
            out["call_tokens"] = list(self.call_tokens)
        return out


# Fields every row of a sweep file has, and those it may leave out, with their JSON types (the
# schema the cost model and the views read).
ROW_FIELDS = {f.name: _JSON_TYPES[f.type] for f in fields(BenchRow) if f.default is MISSING}
OPTIONAL_FIELDS = {f.name: _JSON_TYPES[f.type] for f in fields(BenchRow) if f.default is not MISSING}


def validate_results(results: Mapping[str, Any]) -> list[BenchRow]:
    """The rows of a sweep results object, typed; ValueError on the first problem."""
    files.check_schema("bench", results, "results")  # first: a file of another kind fails for that reason
    for key, types in TOP_FIELDS.items():
        if key not in results:
            raise ValueError(f"results: missing top-level field {key!r}")
        check_type("results", key, results[key], types)
    if results["kind"] not in KINDS:
        raise ValueError(f"results: kind must be one of {KINDS}, got {results['kind']!r}")
    return [row if isinstance(row, BenchRow) else BenchRow.from_dict(row, k) for k, row in enumerate(results["rows"])]


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write ``results`` as indented JSON to ``path`` (parent folders created)."""
    rows = validate_results(results)
    return files.write("bench", dict(results) | {"rows": [row.to_dict() for row in rows]}, path)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a sweep results file; its rows come back as ``BenchRow``."""
    data = files.read("bench", path)
    try:
        return data | {"rows": validate_results(data)}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def find_results(folder: str | Path, kind: str | None = None) -> list[Path]:
    """The valid sweep results files in ``folder``, oldest first; only ``kind``'s when given."""
    found = []
    for path in reversed(files.newest_first("bench", folder)):
        try:
            data = load_results(path)
        except ValueError:
            continue
        if kind is None or data["kind"] == kind:
            found.append(path)
    return found


@dataclass(frozen=True)
class StreamRow:
    """One step of the stream in one impl and mode, with the bucketed encoder's counters over it."""

    encoder: str
    impl: str
    mode: str
    step: int
    images: int
    requests: int
    encoder_calls: int
    encoded_items: int
    encoded_rows: int
    padded_rows: int
    cache_hits: int
    unbucketed: int
    compiles: int
    captures: int
    step_ms: float
    encoder_ms: float


# What a stream file must hold (its step rows at least the fields the cost fit and the views read).
STREAM_TOP = ("kind", "machine", "versions", "settings", "warmups", "summaries", "steady", "steps", "cold")
STREAM_STEP_FIELDS = ("encoder", "impl", "mode", "encoder_calls", "encoded_items", "encoded_rows", "padded_rows",
                      "encoder_ms", "step_ms")


def validate_stream_results(data: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is missing from a stream results object."""
    files.check_schema("stream", data, "stream results")
    missing = [key for key in STREAM_TOP if key not in data]
    if missing:
        raise ValueError(f"stream results: missing top-level field(s) {missing}")
    for k, row in enumerate(data["steps"]):
        row = asdict(row) if isinstance(row, StreamRow) else row
        missing = [f for f in STREAM_STEP_FIELDS if f not in row]
        if missing:
            raise ValueError(f"stream results: step row {k} lacks {missing}")


def write_stream_results(data: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write a stream results object (its steps ``StreamRow`` or JSON objects)."""
    validate_stream_results(data)
    steps = [asdict(s) if isinstance(s, StreamRow) else s for s in data["steps"]]
    return files.write("stream", dict(data) | {"steps": steps}, path)


def load_stream_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a stream results file (its rows as JSON objects)."""
    data = files.read("stream", path)
    try:
        validate_stream_results(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return data
