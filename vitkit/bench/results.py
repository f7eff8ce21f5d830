"""The benchmark results file: one JSON per run, its schema, and the one reader and writer.

Layout (``SCHEMA = "vitkit.bench/1"``)::

    {"schema", "kind": "gpu" | "cpu-smoke", "created", "machine", "versions", "settings",
     "matmul_peak", "rows": [row, ...], "memory_model": [...]}

In memory a results object is that dict with each row a ``vitkit.bench.rows.BenchRow``;
``write_results`` turns the rows into JSON objects and ``load_results`` back. Every reader of a
results file (the bench, the simulator's cost model, notebook 02's view) goes through
``load_results``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitkit.bench.rows import BenchRow, check_type

SCHEMA = "vitkit.bench/1"
KINDS = ("gpu", "cpu-smoke")

TOP_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "machine": (dict,),
    "versions": (dict,),
    "settings": (dict,),
    "rows": (list,),
}


def _typed_rows(rows: list) -> list[BenchRow]:
    return [row if isinstance(row, BenchRow) else BenchRow.from_dict(row, k) for k, row in enumerate(rows)]


def validate_results(results: Mapping[str, Any]) -> list[BenchRow]:
    """Check a results object against ``SCHEMA`` (its rows as ``BenchRow`` or as JSON objects);
    returns the rows typed. Raises ValueError on the first problem."""
    if results.get("schema") != SCHEMA:  # first: a file of another kind fails for that reason
        raise ValueError(f"results: field 'schema' is {results.get('schema')!r}, this reader knows {SCHEMA!r}")
    for key, types in TOP_FIELDS.items():
        if key not in results:
            raise ValueError(f"results: missing top-level field {key!r}")
        check_type("results", key, results[key], types)
    if results["kind"] not in KINDS:
        raise ValueError(f"results: kind must be one of {KINDS}, got {results['kind']!r}")
    return _typed_rows(results["rows"])


def write_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Validate and write ``results`` as indented JSON to ``path`` (parent folders created)."""
    rows = validate_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(results) | {"rows": [row.to_dict() for row in rows]}
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
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
    """Read and validate a results file; its rows come back as ``BenchRow``."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON results file ({err})") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path}: not a JSON results file (top level is {type(results).__name__})")
    try:
        rows = validate_results(results)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return results | {"rows": rows}
