"""One benchmark results row: a (sweep point, mode) measurement, typed.

``BenchRow`` is what the runner builds (``vitkit.bench.run.make_row``) and what the reader
returns (``vitkit.bench.results.load_results``); it becomes a dict only when written. Units:
times in ms, memory in bytes, rates per second, FLOPs as counted by ``vitkit.bench.flops``
(2 per multiply-add), ``mfu`` a fraction of the matmul peak measured in the same run.
``images`` counts every image in the step (hits too) and ``images_per_s`` divides it by the step
time; ``tokens`` counts the embedding rows the encoder produced. ``step_ms_*`` time the whole
``embed_chunks`` call; ``encoder_ms_*`` the encoder's calls inside it; ``bookkeeping_ms_*`` the
rest (per repeat: step minus encoder). ``peak_mem_bytes`` is ``torch.cuda.max_memory_allocated``
over the timed steps (weights, the items' pixels and the cache included; ``base_mem_bytes`` is
what was allocated as a step began), None on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vitkit.checks import non_negative_int
from vitkit.embed import MODES

_INT, _NUM, _STR = (int,), (int, float), (str,)
_OPT_INT, _OPT_NUM, _OPT_STR = (int, type(None)), (int, float, type(None)), (str, type(None))

# Fields every row of a "vitkit.bench/1" file has, and the JSON types each may take (the schema
# contract: the cost model and the views read them).
ROW_FIELDS: dict[str, tuple[type, ...]] = {
    "encoder": _STR, "mode": _STR, "impl": _STR,
    "requests": _INT, "images_per_request": _INT, "images": _INT, "resolution": (int, str),
    "tokens": _INT, "encoder_calls": _INT,
    "step_ms_median": _NUM, "step_ms_p10": _NUM, "step_ms_p90": _NUM,
    "encoder_ms_median": _NUM, "bookkeeping_ms_median": _NUM, "images_per_s": _NUM, "tokens_per_s": _NUM,
    "peak_mem_bytes": _OPT_INT,  # None on CPU: torch tracks no host allocations
    "model_flops": _INT, "mfu": _NUM,
    "sweep": _STR,
}
# Fields a row may leave out (hand-made files, older runs): the point's hit fraction and budget
# default to the sweep's defaults; a missing measurement is None ("not recorded").
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "hit_fraction": _NUM, "max_tokens_per_call": _OPT_INT,
    "encoded_items": _OPT_INT, "cache_hits": _OPT_INT, "call_tokens": (list, tuple, type(None)),
    "patches": _OPT_INT, "step_rows": _OPT_INT,
    "step_ms_mean": _OPT_NUM, "step_ms_min": _OPT_NUM, "step_ms_max": _OPT_NUM,
    "encoder_ms_p10": _OPT_NUM, "encoder_ms_p90": _OPT_NUM,
    "bookkeeping_ms_p10": _OPT_NUM, "bookkeeping_ms_p90": _OPT_NUM,
    "bookkeeping_share": _OPT_NUM, "encoder_mfu": _OPT_NUM, "step_wall_ms_median": _OPT_NUM,
    "repeats": _OPT_INT, "base_mem_bytes": _OPT_INT, "out_bytes_per_token": _OPT_INT, "dtype": _OPT_STR,
    "modes_max_rel_diff": _OPT_NUM,
}
_COUNTS = ("requests", "images_per_request", "images", "encoder_calls", "tokens", "model_flops")


def check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    """ValueError naming ``where`` and ``key`` unless ``value`` is one of ``types`` (never a bool)
    and, if a float, finite (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: field {key!r} is {value!r}, not a finite number")


@dataclass(frozen=True)
class BenchRow:
    """One (sweep point, mode) of a run; see the module docstring for units."""

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
        """The row of a JSON object; ValueError naming row ``index`` and the missing, unknown or
        mistyped fields."""
        which = f"({row.get('encoder')!r}, {row.get('mode')!r})"
        missing = [key for key in ROW_FIELDS if key not in row]
        if missing:
            raise ValueError(f"row {index} lacks field(s) {missing} {which}")
        unknown = sorted(set(row) - set(ROW_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"row {index} has unknown field(s) {unknown} {which}; known: {list(ROW_FIELDS | OPTIONAL_FIELDS)}")
        try:
            return cls(**row)
        except ValueError as err:
            raise ValueError(f"row {index} {str(err).removeprefix('row ')}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this row (fields in declaration order)."""
        out = asdict(self)
        if self.call_tokens is not None:
            out["call_tokens"] = list(self.call_tokens)
        return out

