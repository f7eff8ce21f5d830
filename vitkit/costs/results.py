"""Where measured files live, each format's schema string and file name, and which file is the newest.

Every measurement is one JSON file ``results/<card>/<kind>[-<what>]-<stamp>.json`` (UTC stamp) with a
``schema`` field; writers and readers alike go through this module, so each is decided once. So is which
card's folder the cost models come from (``models_folder``: the attached card's when it has been
calibrated, else the stored one's) and a card's name (``card_slug``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
    "calibration": ("vitkit.calibration/1", "calibration-[0-9]*.json"),
    "crossover": ("vitkit.bench.crossover/1", "crossover-[0-9]*.json"),
    "video": ("vitkit.bench.video/1", "video-[0-9]*.json"),
}
CALIBRATE_COMMAND = "make calibrate (python -m vitkit.bench calibrate)"


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


def stream_name(path: str | Path) -> str:
    """The named stream a stream file ran (its spec's ``name``: "mixed", "scans", ...); "" for a plain stream,
    and for a file that does not read (its reader says why)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    settings = data.get("settings") if isinstance(data, Mapping) else None
    spec = settings.get("stream") if isinstance(settings, Mapping) else None
    return str(spec.get("name") or "") if isinstance(spec, Mapping) else ""


def plain_streams(folder: str | Path) -> list[Path]:
    """The plain stream files in ``folder``, newest first: the only ones cost models are fitted to (a named
    stream, ``stream-<name>-*``, holds other items on purpose: scans, videos)."""
    return [path for path in newest_first("stream", folder) if not stream_name(path)]


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


# A card's short name in a device name: "NVIDIA A100-SXM4-40GB" -> "a100" (data-centre letters, GH/GB, RTX).
_CARD = re.compile(r"\b([AHBL]\d{2,3}|GH\d{3}|GB\d{3}|RTX\s?\d{4})\b", re.IGNORECASE)


def card_slug(device_name: str) -> str:
    """Folder-safe short name of a device, as ``results/<card>/`` names it: "NVIDIA H100 80GB HBM3" -> "h100",
    "NVIDIA GeForce RTX 4090" -> "rtx4090", "cpu" -> "cpu", anything else slugified."""
    match = _CARD.search(device_name)
    if match:
        return match.group(1).replace(" ", "").lower()
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"


def cards_named(text: str) -> list[str]:
    """The cards (slugs) a sources text names, in order of first mention: "... (NVIDIA H100 80GB HBM3)" -> ["h100"]."""
    return list(dict.fromkeys(m.group(1).replace(" ", "").lower() for m in _CARD.finditer(text)))


def attached_card() -> str | None:
    """The slug of the GPU torch sees (device 0), or None without one."""
    if not torch.cuda.is_available():
        return None
    return card_slug(torch.cuda.get_device_name(0))


def has_models(folder: str | Path) -> bool:
    """Whether ``folder`` holds what the cost models are made from: encoder costs and a prefill grid."""
    return bool(newest_first("encoder-costs", folder)) and bool(newest_first("prefill", folder))


def file_card(path: str | Path) -> str | None:
    """The card a results file was measured on (its ``machine``), or None for a file that names none."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    machine = data.get("machine") if isinstance(data, Mapping) else None
    if not isinstance(machine, Mapping) or data.get("kind") == "cpu-smoke":
        return None
    name = machine.get("slug") or machine.get("device_name")
    return card_slug(str(name)) if name else None


def cards_in(folder: str | Path) -> dict[str, str]:
    """File name -> card of every JSON file directly in ``folder`` that names the card it was measured on."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {path.name: file_card(path) for path in sorted(folder.glob("*.json"))}
    return {name: card for name, card in found.items() if card is not None}


@dataclass(frozen=True)
class ModelsFolder:
    """Where the cost models come from: ``folder`` (``results/<card>``), its ``card``, the ``attached`` card
    (None without a GPU) and, when the attached card has no results of its own, a one-line ``hint``."""

    folder: Path
    card: str
    attached: str | None
    hint: str | None = None

    def label(self) -> str:
        """One line for a figure or a table: which card's models these are."""
        own = " (the attached card's)" if self.attached == self.card else ""
        return f"models measured on {self.card}{own}, from {self.folder.name}/"


def models_folder(results: str | Path | None = None, *, attached: str | None = None,
                  root: str | Path = RESULTS) -> ModelsFolder:
    """The one decision of which results folder the cost models come from: ``results`` when given; else the
    attached card's folder when it has models (``has_models``), else the stored card's, with a hint to run
    calibrate when a GPU without results is attached. ``attached``: the card's slug (default: asked of torch)."""
    card = attached or attached_card()
    if results is not None:
        folder = Path(results)
        named = set(cards_in(folder).values())
        return ModelsFolder(folder, named.pop() if len(named) == 1 else folder.name, card)
    own = results_folder(card, root) if card else None
    if own is not None and has_models(own):
        return ModelsFolder(own, card, card)
    hint = None
    if card is not None and card != STORED_CARD:
        hint = (f"no cost models measured on this {card} yet (results/{card}/ has none): using the stored "
                f"{STORED_CARD} ones; measure yours with {CALIBRATE_COMMAND}")
    return ModelsFolder(results_folder(STORED_CARD, root), STORED_CARD, card, hint)


def check_results_card(folder: str | Path) -> None:
    """ValueError when ``folder`` mixes cards' result files, or is named for a card (``results/<card>``) and
    holds a file measured on another: cost models come from the card they were measured on."""
    folder = Path(folder)
    cards = cards_in(folder)
    named = cards_named(folder.name)
    for name, card in cards.items():
        other = next((n for n, c in cards.items() if c != card), None)
        if other is not None:
            raise ValueError(f"results folder {folder} mixes cards: {name} was measured on {card}, {other} on "
                             f"{cards[other]}; keep each card's files in results/<card>/")
        if named and card not in named:
            raise ValueError(f"results folder {folder} is named for card {named[0]}, but {name} was measured on "
                             f"{card}: use results/{card}/ for its models, or measure this card's with "
                             f"{CALIBRATE_COMMAND}")


class Refused(Exception):
    """A benchmark that must not run here, with the reason: no GPU, or a folder of another card's results."""


def check_out(out: str | Path, card: str) -> None:
    """``Refused`` when ``out`` holds files measured on a card other than ``card``, or is another card's
    folder under ``results/``: a run never mixes into (or overwrites) another card's results."""
    out = Path(out)
    foreign = {name: other for name, other in cards_in(out).items() if other != card}
    if foreign:
        named = ", ".join(f"{name} ({other})" for name, other in list(foreign.items())[:3])
        raise Refused(f"{out} holds results of another card: {named}{' ...' if len(foreign) > 3 else ''}; this is "
                      f"a {card}. Leave --out out (results/{card}/) or name an empty folder.")
    if out.resolve().parent == RESULTS.resolve() and out.name != card:
        raise Refused(f"{out} is the results folder of card {out.name!r}; this is a {card}: use results/{card}/")
