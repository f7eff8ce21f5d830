"""Where measured files live, each format's schema string and file name, and which file is the newest.

Every measurement is one JSON file ``results/<card>/<kind>[-<what>]-<stamp>.json`` (UTC stamp) with a
``schema`` field; writers and readers alike go through this module, so each is decided once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "results"
STORED_CARD = "h100"  # the card whose measurements ship with vitkit

# kind -> (schema string, file name pattern); the pattern's stamp is the name's last "-" part
FORMATS: dict[str, tuple[str, str]] = {
    "bench": ("vitkit.bench/1", "*.json"),
    "stream": ("vitkit.stream/1", "stream-*.json"),
    "dp": ("vitkit.bench.dp/1", "dp-n*.json"),
    "prefill": ("vitkit.prefill/1", "prefill-[0-9]*.json"),
    "encoder-costs": ("vitkit.encoder-costs/1", "encoder-costs-[0-9]*.json"),
    "ttft": ("vitkit.ttft/1", "ttft-[0-9]*.json"),
    "ttft-validate": ("vitkit.ttft-validate/1", "ttft-validate-[0-9]*.json"),
    "bookkeeping": ("vitkit.bookkeeping/1", "bookkeeping*.json"),
    "trace": ("vitkit.sim.trace/1", "*.json"),
}


def schema(kind: str) -> str:
    """The schema string files of ``kind`` carry."""
    if kind not in FORMATS:
        raise ValueError(f"unknown results kind {kind!r}; known: {sorted(FORMATS)}")
    return FORMATS[kind][0]


def results_folder(card: str = STORED_CARD, root: str | Path = RESULTS) -> Path:
    """``root/<card>``: where one card's measurements are kept."""
    return Path(root) / card


def stamp(when: dt.datetime | None = None) -> str:
    """A UTC time as file names and ``created`` fields write it: ``YYYYmmddTHHMMSSZ``."""
    return (when or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def stamp_of(path: str | Path) -> str:
    """The stamp that ends a result file's name."""
    return Path(path).stem.rsplit("-", 1)[-1]


def newest_first(kind: str, folder: str | Path) -> list[Path]:
    """Files of ``kind`` in ``folder`` (by name), newest first by their stamps; [] for no folder."""
    schema(kind)
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(FORMATS[kind][1]), key=lambda p: (stamp_of(p), p.name), reverse=True)


def newest(kind: str, folder: str | Path) -> Path:
    """The newest file of ``kind`` in ``folder``; FileNotFoundError naming both when there is none."""
    found = newest_first(kind, folder)
    if not found:
        raise FileNotFoundError(f"no {kind} results ({FORMATS[kind][1]}) in {folder}")
    return found[0]


def check_schema(kind: str, data: Any, where: str | Path) -> Mapping[str, Any]:
    """``data`` when it is a JSON object with ``kind``'s schema; else ValueError naming ``where``."""
    want = schema(kind)
    got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
    if got != want:
        raise ValueError(f"{where}: field 'schema' must be {want!r}, got {got!r}")
    return data


def read(kind: str, path: str | Path) -> dict[str, Any]:
    """A results file of ``kind``, its schema checked; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON results file ({err})") from None
    return dict(check_schema(kind, data, path))


def write(kind: str, data: Mapping[str, Any], path: str | Path) -> Path:
    """``data`` with ``kind``'s schema as indented JSON at ``path`` (other values as their ``str``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": schema(kind), **data}, indent=1, default=str) + "\n")
    return path
