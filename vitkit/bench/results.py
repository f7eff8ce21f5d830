"""The benchmark results file: one JSON per run, its schema, and checks on read and write.

Layout (``SCHEMA = "vitkit.bench/1"``)::

    {"schema", "kind": "gpu" | "cpu-smoke", "created", "machine", "versions", "settings",
     "matmul_peak", "rows": [row, ...], "memory_model": [...]}

Each row is one (sweep point, mode). Units: times in ms, memory in bytes, rates per second,
FLOPs as counted by ``vitkit.bench.flops`` (2 per multiply-add), ``mfu`` a fraction of the
matmul peak measured in the same run. ``images`` counts every image in the step (hits too) and
``images_per_s`` divides it by the step time; ``tokens`` counts the embedding rows the encoder
produced. ``step_ms_*`` time the whole ``embed_chunks`` call; ``encoder_ms_median`` the encoder's
calls inside it; ``bookkeeping_ms_median`` the rest (median of step minus encoder per repeat).
``peak_mem_bytes`` is ``torch.cuda.max_memory_allocated`` over the timed steps (weights, the
items' pixels and the cache included; ``base_mem_bytes`` is what was allocated as a step began),
null on CPU. Rows carry extras beyond the required fields (see ``vitkit.bench.run.make_row``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitkit.checks import non_negative_int
from vitkit.embed import MODES

SCHEMA = "vitkit.bench/1"
KINDS = ("gpu", "cpu-smoke")

_INT, _NUM, _STR = (int,), (int, float), (str,)
_OPT_INT, _OPT_NUM = (int, type(None)), (int, float, type(None))

# Required row fields and the JSON types each may take (schema contract; the sim reads them).
ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "encoder": _STR,
    "mode": _STR,
    "impl": _STR,
    "requests": _INT,
    "images_per_request": _INT,
    "images": _INT,
    "resolution": (int, str),
    "tokens": _INT,
    "encoder_calls": _INT,
    "step_ms_median": _NUM,
    "step_ms_p10": _NUM,
    "step_ms_p90": _NUM,
    "encoder_ms_median": _NUM,
    "bookkeeping_ms_median": _NUM,
    "images_per_s": _NUM,
    "tokens_per_s": _NUM,
    "peak_mem_bytes": _OPT_INT,  # None on CPU: torch tracks no host allocations
    "model_flops": _INT,
    "mfu": _NUM,
}
TOP_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": _STR,
    "kind": _STR,
    "machine": (dict,),
    "versions": (dict,),
    "settings": (dict,),
    "rows": (list,),
}


def _check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: field {key!r} is {value!r}, not a finite number")


def validate_row(row: Mapping[str, Any], index: int = 0) -> None:
    """Raise ValueError naming the row and field if a required field is missing or mistyped."""
    where = f"row {index} ({row.get('encoder')!r}, {row.get('mode')!r})"
    for key, types in ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"{where}: missing field {key!r}")
        _check_type(where, key, row[key], types)
    if row["mode"] not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {row['mode']!r}")
    for key in ("requests", "images_per_request", "images", "encoder_calls", "tokens", "model_flops"):
        non_negative_int(f"{where}: field {key!r}", row[key])


def validate_results(results: Mapping[str, Any]) -> None:
    """Check a whole results object against ``SCHEMA``; raises ValueError on the first problem."""
    for key, types in TOP_FIELDS.items():
        if key not in results:
            raise ValueError(f"results: missing top-level field {key!r}")
        _check_type("results", key, results[key], types)
    if results["schema"] != SCHEMA:
        raise ValueError(f"results: schema is {results['schema']!r}, this reader knows {SCHEMA!r}")
    if results["kind"] not in KINDS:
        raise ValueError(f"results: kind must be one of {KINDS}, got {results['kind']!r}")
    for k, row in enumerate(results["rows"]):
        validate_row(row, k)


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write ``results`` as indented JSON to ``path`` (parent folders created)."""
    validate_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return path


def find_results(folder: str | Path, kind: str | None = None) -> list[Path]:
    """Results files in ``folder`` (not recursive), oldest first by the timestamp in their names;
    only those of ``kind`` ("gpu" or "cpu-smoke") when given. Files that fail validation are skipped."""
    found = []
    for path in sorted(Path(folder).glob("*.json"), key=lambda p: (p.stem.rsplit("-", 1)[-1], p.name)):
        try:
            results = load_results(path)
        except ValueError:
            continue
        if kind is None or results["kind"] == kind:
            found.append(path)
    return found


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results file."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON results file ({err})") from None
    try:
        validate_results(results)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return results
