"""The encoder's cost: what one call of the bucketed encoder takes, in ms.

A call runs as packs (``vitkit.encoders.buckets.pack``), each replaying its bucket's CUDA graph, so its
cost is a step function of the buckets, which one line over rows cannot follow: hence ``BucketCost``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.checks import positive_int
from vitkit.costs import results
from vitkit.encoders.buckets import Buckets, Pack, pack
from vitkit.encoders.build import default_buckets


@dataclass(frozen=True)
class BucketCost:
    """Modelled ms of one call: ``per_call_ms`` plus, per pack, its bucket's ``bucket_ms`` (a pack over every
    bucket: the largest's, scaled by size) and the host's share. ``unit``: bucket units per embedding row;
    ``observed``: the buckets a fit saw. A fit of one-pack calls cannot split per-call from bucket ms."""

    encoder: str
    impl: str
    buckets: Buckets
    bucket_ms: tuple[float, ...]  # aligned with buckets.sizes
    per_call_ms: float
    unit: int
    observed: tuple[int, ...]
    points: int  # step rows fitted
    source: str = ""
    median_rel_err: float | None = None  # per step, |modelled - measured| / measured
    max_rel_err: float | None = None
    # the host's share of a pack (measured models only): checks, layout, staging host pixels
    per_pack_ms: float = 0.0
    per_unit_ms: float = 0.0  # per real unit (patch) in the pack
    graph_scale: float = 1.0  # measured models: the replays' factor where no bucket has its own
    bucket_scales: tuple[float, ...] = ()  # measured models: each bucket's factor (aligned with sizes)
    rows_per_unit: int = 1  # fixed-resolution towers: embedding rows of one bucket unit (one image)

    def __post_init__(self) -> None:
        if len(self.bucket_ms) != len(self.buckets.sizes):
            raise ValueError(f"bucket_ms has {len(self.bucket_ms)} entries for {len(self.buckets.sizes)} buckets "
                             f"{self.buckets.sizes}")
        positive_int("BucketCost: unit", self.unit)

    def pack_ms(self, p: Pack) -> float:
        """Modelled ms of one pack: its bucket's graph replay plus the host's share."""
        host = self.per_pack_ms + self.per_unit_ms * p.size
        if p.bucket is None:
            return self.bucket_ms[-1] * p.size / self.buckets.largest + host
        return self.bucket_ms[self.buckets.sizes.index(p.bucket)] + host

    def call_units_ms(self, units: Sequence[int]) -> float:
        """Modelled ms of one call of items of ``units`` bucket units each (0 for no items)."""
        if not units:
            return 0.0
        return self.per_call_ms + sum(self.pack_ms(p) for p in pack(list(units), self.buckets))

    def call_ms(self, item_rows: int | Sequence[int]) -> float:
        """Modelled ms of one call of items of ``item_rows`` embedding rows each (an int: one item)."""
        rows = [item_rows] if isinstance(item_rows, int) else list(item_rows)
        return self.call_units_ms([r * self.unit // self.rows_per_unit for r in rows])


def nnls(a: np.ndarray, b: np.ndarray, *, max_iter: int | None = None) -> np.ndarray:
    """``argmin ||a x - b||`` subject to ``x >= 0`` (Lawson and Hanson's active-set method)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"nnls: a must be (m, n) and b (m,), got {a.shape} and {b.shape}")
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, bool)
    tol = 1e-10 * max(1.0, float(np.abs(a).max(initial=0.0)) * n)
    for _ in range(max_iter or 3 * n + 10):
        w = a.T @ (b - a @ x)
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol:
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            bad = passive & (z <= 0)
            alpha = np.min(x[bad] / (x[bad] - z[bad]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def _fill_unobserved(sizes: Sequence[int], ms: np.ndarray, observed: Sequence[int]) -> list[float]:
    """Bucket ms for every size: observed ones as fitted, others interpolated between observed neighbours;
    below the smallest its ms (small graphs are launch-bound), above the largest proportional to it."""
    xs = [s for s in sizes if s in observed]
    ys = [float(ms[sizes.index(s)]) for s in xs]
    if not xs:
        raise ValueError("bucket fit: no bucket was observed")
    return [ys[-1] * s / xs[-1] if s > xs[-1] else float(np.interp(s, xs, ys)) for s in sizes]


def fit_bucket_cost(calls: Sequence[Sequence[Sequence[int]]], targets_ms: Sequence[float], buckets: Buckets, *,
                    unit: int, encoder: str, impl: str, source: str) -> BucketCost:
    """A ``BucketCost`` fitted to steps: ``calls[k]``, step k's calls as their items' bucket units;
    ``targets_ms[k]``, its measured encoder ms. Non-negative least squares on relative error (a small
    step counts as much as a large one) over packs per bucket and calls; steps without calls skipped."""
    if len(calls) != len(targets_ms):
        raise ValueError(f"fit_bucket_cost: {len(calls)} steps of calls but {len(targets_ms)} targets")
    sizes = list(buckets.sizes)
    counts, ys = [], []
    for step_calls, y in zip(calls, targets_ms):
        step_calls = [c for c in step_calls if c]
        if not step_calls:
            continue
        if not y > 0:
            raise ValueError(f"fit_bucket_cost: a step with calls has target {y!r} ms; must be > 0")
        row = np.zeros(len(sizes) + 1)  # packs per bucket, then calls
        for c in step_calls:
            for p in pack(list(c), buckets):
                # an unbucketed pack counts as its share of the largest graph (see BucketCost.pack_ms)
                column = len(sizes) - 1 if p.bucket is None else sizes.index(p.bucket)
                row[column] += 1.0 if p.bucket else p.size / buckets.largest
            row[-1] += 1.0
        counts.append(row)
        ys.append(float(y))
    if not counts:
        raise ValueError("fit_bucket_cost: no step with an encoder call")
    a, y = np.array(counts), np.array(ys)
    # unknowns: the increments between consecutive buckets (>= 0: a larger graph is never cheaper) and the
    # per-call ms; column j counts packs in bucket j or larger
    cumulative = np.hstack([np.cumsum(a[:, -2::-1], axis=1)[:, ::-1], a[:, -1:]])
    x = nnls(cumulative / y[:, None], np.ones(len(y)))
    observed = tuple(s for k, s in enumerate(sizes) if a[:, k].any())
    bucket_ms = tuple(_fill_unobserved(sizes, np.cumsum(x[:-1]), observed))
    cost = BucketCost(encoder, impl, buckets, bucket_ms, float(x[-1]), unit, observed, len(y), source)
    errs = np.abs(a @ np.array([*cost.bucket_ms, cost.per_call_ms]) - y) / y
    return replace(cost, median_rel_err=float(np.median(errs)), max_rel_err=float(errs.max()))


def measured_bucket_cost(path: str | Path) -> tuple[BucketCost, list[dict[str, Any]]]:
    """The ``BucketCost`` of an encoder-costs file, and per call ``{kind ("probe" or "serving"), what, images,
    measured_ms, modelled_ms, rel_err}``. A pack costs its bucket's scale times the graph's measured replay
    plus ``per_pack_ms + per_unit_ms * units`` (staging host pixels, from the probes). The scales and
    ``per_pack_ms`` are fitted to the serving calls of a calibration replay if the file has them, else
    ``per_pack_ms`` alone to the probes; a scale per bucket, as small and large graphs slow down apart."""
    data = results.read("encoder-costs", path)
    settings = data["settings"]
    default = default_buckets(settings["encoder"])
    buckets = Buckets(tuple(settings["buckets"]), settings["max_items"], default.multiple)
    replay = {r["bucket"]: float(r["ms"]) for r in data["buckets"]}
    if sorted(replay) != sorted(buckets.sizes):
        raise ValueError(f"{path}: replay times for buckets {sorted(replay)}, the settings list "
                         f"{list(buckets.sizes)}")
    unit = int(settings["unit"])
    graphs = BucketCost(settings["encoder"], settings["impl"], buckets, tuple(replay[b] for b in buckets.sizes), 0.0,
                        unit, tuple(buckets.sizes), 0)
    probes = [("probe", f"{c['size'][0]}x{c['size'][1]}", list(c["item_units"]), float(c["host_pixels_ms"]))
              for c in data["calls"]]
    serving = [("serving", f"{c['workload']} {c['mode']}", [r * unit for r in c["item_rows"]], float(c["ms"]))
               for c in data.get("serving_calls", [])]
    if not data["calls"]:
        raise ValueError(f"{path}: no probe calls to measure the host's staging cost with")
    # staging host pixels, per patch: what a call with host pixels costs over the same call with device pixels
    units = np.array([sum(c["item_units"]) for c in data["calls"]], float)
    extra = np.array([c["host_pixels_ms"] - c["device_pixels_ms"] for c in data["calls"]])
    per_unit = float(nnls(units[:, None], extra)[0])
    fitted = serving or probes
    scales, pooled, per_pack = _fit_call_parts(graphs, fitted, per_unit, free_scale=bool(serving))
    machine = data.get("machine", {}).get("device_name") or "?"
    cost = replace(graphs, bucket_ms=tuple(k * ms for k, ms in zip(scales, graphs.bucket_ms)), per_pack_ms=per_pack,
                   per_unit_ms=per_unit, graph_scale=pooled, bucket_scales=scales if serving else (),
                   points=len(fitted), source=f"{Path(path).name} ({machine}; fitted to {fitted[0][0]} calls)")
    rows = []
    for kind, what, units, y in probes + serving:
        modelled = cost.call_units_ms(units)
        rows.append({"kind": kind, "what": what, "images": len(units), "measured_ms": y, "modelled_ms": modelled,
                     "rel_err": float((modelled - y) / y)})
    errs = sorted(abs(r["rel_err"]) for r in rows if r["kind"] == fitted[0][0])
    return replace(cost, median_rel_err=float(np.median(errs)), max_rel_err=float(errs[-1])), rows


OWN_SCALE_PACKS = 8  # packs of a bucket among the serving calls for it to get a scale of its own


def _fit_call_parts(graphs: BucketCost, calls: Sequence[tuple[str, str, list[int], float]], per_unit: float, *,
                    free_scale: bool) -> tuple[tuple[float, ...], float, float]:
    """(scale per bucket, the shared scale, ms per pack) fitted to ``calls``, ``per_unit`` ms a unit taken
    as measured (graph ms and units grow together: fitting both is ill-conditioned). ``free_scale``:
    buckets with ``OWN_SCALE_PACKS`` packs get their own scale, the rest share one; else every scale is 1."""
    sizes = list(graphs.buckets.sizes)
    packs = [pack(units, graphs.buckets) for _, _, units, _ in calls]
    ms = np.array([m for *_, m in calls])
    y = ms - per_unit * np.array([sum(p.size for p in ps) for ps in packs])
    count = np.array([len(ps) for ps in packs], float)
    if not free_scale:
        graph_ms = np.array([sum(graphs.pack_ms(p) for p in ps) for ps in packs])
        return (1.0,) * len(sizes), 1.0, float(nnls(count[:, None] / ms[:, None], (y - graph_ms) / ms)[0])
    # graph ms of each call's packs, one column per bucket (unbucketed packs go to the largest's)
    per_bucket = np.zeros((len(calls), len(sizes)))
    for i, ps in enumerate(packs):
        for p in ps:
            per_bucket[i, len(sizes) - 1 if p.bucket is None else sizes.index(p.bucket)] += graphs.pack_ms(p)
    seen = np.array([sum(p.bucket == b for ps in packs for p in ps) for b in sizes])
    own = [j for j in range(len(sizes)) if seen[j] >= OWN_SCALE_PACKS]
    shared = [j for j in range(len(sizes)) if j not in own]
    columns = [per_bucket[:, j] for j in own] + [per_bucket[:, shared].sum(axis=1), count]
    x = nnls(np.column_stack(columns) / ms[:, None], y / ms)
    own_scales = dict(zip(own, x[: len(own)]))
    pooled = float(x[len(own)]) if per_bucket[:, shared].any() else float(np.median(list(own_scales.values())))
    return tuple(float(own_scales.get(j, pooled)) for j in range(len(sizes))), pooled, float(x[-1])


DEFAULT_ENCODER = "qwen2.5-vl-7b"
DEFAULT_IMPL = "vitkit"  # compiled, bucketed: what a server runs


@dataclass(frozen=True)
class EncoderCost:
    """An encoder's per-call cost and the host's bookkeeping ms per step (lookups, puts, assembly)."""

    call: BucketCost
    bookkeeping_ms: float
    source: str  # which files it was measured in

    def step_ms(self, calls: Sequence[Sequence[int]]) -> float:
        """Encoder ms of a step's calls, each given as its items' embedding rows."""
        return sum(self.call.call_ms(c) for c in calls)


def _is_costs_file(path: Path, encoder: str, impl: str) -> bool:
    data = results.read("encoder-costs", path)
    return data.get("kind") == "gpu" and (data["settings"]["encoder"], data["settings"]["impl"]) == (encoder, impl)


def stream_bookkeeping_ms(folder: str | Path, encoder: str, impl: str = DEFAULT_IMPL) -> tuple[float, str] | None:
    """Median host ms a step around the encoder, and the name of the newest GPU stream file giving it."""
    for path in results.newest_first("stream", folder):
        data = results.read("stream", path)
        rows = [r for r in data["steps"] if (r["encoder"], r["impl"]) == (encoder, impl)]
        if data.get("kind", "gpu") == "gpu" and rows:
            return float(np.median([max(0.0, r["step_ms"] - r["encoder_ms"]) for r in rows])), path.name
    return None


def serving_bookkeeping_ms(path: str | Path) -> float | None:
    """Median host ms a step around the encoder in an encoder-costs file's calibration replay (its
    ``serving_bookkeeping_ms``, one per step with windows), or None for a file from before it kept them."""
    steps = results.read("encoder-costs", path).get("serving_bookkeeping_ms") or []
    return float(np.median(steps)) if steps else None


def bookkeeping_for(path: Path, folder: Path, encoder: str, impl: str) -> tuple[float, str]:
    """(ms, where from) of the host's bookkeeping per step, first found of: the encoder-costs file's own
    calibration replay (the card and process it models), ``folder``'s newest GPU stream file, the stored
    card's (borrowed, and said so: host time, so another card's is a stand-in, not a measurement)."""
    own = serving_bookkeeping_ms(path)
    if own is not None:
        return own, f"{path.name}'s calibration replay"
    stream = stream_bookkeeping_ms(folder, encoder, impl)
    if stream is not None:
        return stream
    stored = results.results_folder()
    borrowed = stream_bookkeeping_ms(stored, encoder, impl)
    if borrowed is None:
        raise ValueError(f"no GPU stream file of encoder {encoder!r} impl {impl!r} in {folder} or the stored results "
                         f"gives the bookkeeping ms, nor does {path.name}: run `python -m vitkit.bench stream`, or "
                         f"{results.CALIBRATE_COMMAND} which measures it in its calibration replay")
    return borrowed[0], f"{borrowed[1]} borrowed from {stored.name}/"


def load_encoder_cost(folder: str | Path | None = None, encoder: str = DEFAULT_ENCODER, impl: str = DEFAULT_IMPL,
                      costs_file: str | Path | None = None) -> EncoderCost:
    """``measured_bucket_cost`` of ``costs_file`` or of the newest GPU encoder-costs file of ``encoder``/
    ``impl`` in ``folder`` (default: the stored card's), with the bookkeeping ms ``bookkeeping_for`` finds."""
    folder = results.results_folder() if folder is None else Path(folder)
    if costs_file is not None:
        path = Path(costs_file)
        if not _is_costs_file(path, encoder, impl):
            raise ValueError(f"{costs_file}: not a GPU encoder-costs file of encoder {encoder!r} impl {impl!r}")
    else:
        candidates = results.newest_first("encoder-costs", folder)
        path = next((p for p in candidates if _is_costs_file(p, encoder, impl)), None)
        if path is None:
            raise ValueError(f"no GPU encoder-costs file of encoder {encoder!r} impl {impl!r} in {folder}: "
                             f"measure one with `python -m vitkit.bench encoder-costs`, or every model of the card "
                             f"with {results.CALIBRATE_COMMAND}")
    book_ms, book_source = bookkeeping_for(path, folder, encoder, impl)
    cost = measured_bucket_cost(path)[0]
    device = results.read("encoder-costs", path).get("machine", {}).get("device_name", "?")
    return EncoderCost(cost, book_ms, f"measured buckets {path.name}, bookkeeping {book_source} ({encoder}/{impl}), "
                                      f"on {device}")
