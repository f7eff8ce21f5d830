"""The encoder's cost: what one call of the bucketed encoder takes, in ms.

A call runs as packs (``vitkit.encoders.buckets.pack``), each replaying its bucket's CUDA graph, so its
cost is a step function of the buckets, which one line over rows cannot follow: hence ``BucketCost``.
A call's items are given as their sizes (embedding rows, or bucket units): an image's a plain int, a
video's a ``VideoSize``, which also says its temporal patches, so that the model splits it over the
buckets and counts its sequences as the encoder does (``call_packs``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import numpy as np

from vitkit.checks import positive_int
from vitkit.costs import results
from vitkit.encoders.buckets import Buckets, Pack, pack, video_pieces
from vitkit.encoders.build import MODEL_CLASSES, default_buckets
from vitkit.encoders.flops import QWEN_FLOPS
from vitkit.encoders.presets import get_preset


class VideoSize(int):
    """A video item's size in a call (embedding rows; bucket units in a list of units) that also carries its
    ``temporal`` patches: the bucketed encoder splits a video by them (``video_pieces``) and counts one
    full-attention sequence each against ``max_items``. An int, and equal to its size, so that sums, JSON
    and every consumer of plain sizes (the line and data-parallel models, stored steps) read it as one."""

    def __new__(cls, size: int, temporal: int) -> Self:
        positive_int("VideoSize: size", size)
        positive_int("VideoSize: temporal patches", temporal)
        if size % temporal:
            raise ValueError(f"VideoSize: size {size} is not a whole number per temporal patch ({temporal} of them)")
        video = super().__new__(cls, size)
        video.temporal = temporal
        return video

    def __getnewargs__(self) -> tuple[int, int]:  # pickle and copy rebuild it through __new__
        return int(self), self.temporal

    def __repr__(self) -> str:
        return f"VideoSize({int(self)}, temporal={self.temporal})"

    def resized(self, size: int) -> VideoSize:
        """The same video counted in other units (``size`` of them)."""
        return VideoSize(size, self.temporal)


def item_temporal(rows: Sequence[int]) -> list[int] | None:
    """What a results file keeps beside a call's item rows so that its videos read back as videos: per item,
    its temporal patches (0: an image); None for a call of images only, which keeps nothing (as every file
    from before videos)."""
    temporal = [r.temporal if isinstance(r, VideoSize) else 0 for r in rows]
    return temporal if any(temporal) else None


def stored_item_rows(rows: Sequence[int], temporal: Sequence[int] | None = None, where: str = "call") -> list[int]:
    """A stored call's item rows as the cost model reads them: each video (``temporal`` > 0, as
    ``item_temporal`` wrote it) a ``VideoSize`` again, images plain ints. ``where`` names the call in errors."""
    rows = [int(r) for r in rows]
    if temporal is None:
        return rows
    if len(temporal) != len(rows):
        raise ValueError(f"{where}: {len(rows)} item rows {rows} but {len(temporal)} temporal patch counts "
                         f"{list(temporal)}")
    return [VideoSize(r, int(t)) if t else r for r, t in zip(rows, temporal)]


def over_largest(p: Pack, buckets: Buckets, large_scale: Sequence[tuple[int, float]] = ()) -> float:
    """The graph time of a pack no regular bucket holds (one image over the largest), as a multiple of the
    largest regular graph's. In a large bucket (``Buckets.pick_large``) it runs padded to that bucket, whose
    full attention over one long sequence costs more a row than the largest graph's many short ones: the
    bucket's scale in ``large_scale`` ((bucket, scale) pairs: FLOPs, ``large_flop_scale``), else its size over
    the largest's (units, padding included, so attention's growth left out). Over the large buckets' cap it
    runs eager, unpadded: its own units over the largest's, as before large buckets. Neither is a measured
    large-graph replay."""
    large = buckets.pick_large(p.size) if p.bucket is None else None
    if large is None:
        return p.size / buckets.largest
    return dict(large_scale).get(large, large / buckets.largest)


def call_packs(units: Sequence[int], buckets: Buckets) -> list[Pack]:
    """The packs the bucketed encoder runs one call of items of ``units`` bucket units as: each video
    (``VideoSize``) split into ``video_pieces``, then every piece ``pack``ed with its sequences (a video's
    temporal patches, an image's one). Pack indices point into the pieces: items in order, each video's
    pieces in order."""
    pieces: list[tuple[int, int]] = []
    for size in units:
        if isinstance(size, VideoSize):
            pieces += video_pieces(size.temporal, size // size.temporal, buckets)
        else:
            pieces.append((size, 1))
    return pack([u for u, _ in pieces], buckets, [n for _, n in pieces])


@dataclass(frozen=True)
class BucketCost:
    """Modelled ms of one call: ``per_call_ms`` plus, per pack, its bucket's ``bucket_ms`` (a pack over every
    regular bucket: the largest's, scaled by ``over_largest``) and the host's share. ``unit``: bucket units per
    embedding row; ``observed``: the buckets a fit saw. A fit of one-pack calls cannot split per-call from
    bucket ms."""

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
    # (large bucket, its graph's ms over the largest regular graph's) pairs: FLOPs (``large_flop_scale``);
    # a large bucket without one (no tower config at hand) scales by units, its size over the largest
    large_scale: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if len(self.bucket_ms) != len(self.buckets.sizes):
            raise ValueError(f"bucket_ms has {len(self.bucket_ms)} entries for {len(self.buckets.sizes)} buckets "
                             f"{self.buckets.sizes}")
        positive_int("BucketCost: unit", self.unit)

    def pack_ms(self, p: Pack) -> float:
        """Modelled ms of one pack: its bucket's graph replay plus the host's share; a pack no regular bucket
        holds, the largest regular graph's ms times ``over_largest``."""
        host = self.per_pack_ms + self.per_unit_ms * p.size
        if p.bucket is None:
            return self.bucket_ms[-1] * self.over_largest(p) + host
        return self.bucket_ms[self.buckets.sizes.index(p.bucket)] + host

    def over_largest(self, p: Pack) -> float:
        """A pack no regular bucket holds, as a multiple of the largest regular graph's ms (``over_largest``)."""
        return over_largest(p, self.buckets, self.large_scale)

    def call_units_ms(self, units: Sequence[int]) -> float:
        """Modelled ms of one call of items of ``units`` bucket units each, a video's a ``VideoSize`` (0 for
        no items)."""
        if not units:
            return 0.0
        return self.per_call_ms + sum(self.pack_ms(p) for p in call_packs(units, self.buckets))

    def call_ms(self, item_rows: int | Sequence[int]) -> float:
        """Modelled ms of one call of items of ``item_rows`` embedding rows each, a video's a ``VideoSize``
        (an int: one item)."""
        return self.call_units_ms(self.item_units(item_rows))

    def packs(self, item_rows: int | Sequence[int]) -> list[Pack]:
        """The packs of one call of items of ``item_rows`` embedding rows each, as the encoder runs them."""
        return call_packs(self.item_units(item_rows), self.buckets)

    def item_units(self, item_rows: int | Sequence[int]) -> list[int]:
        """Bucket units of items of ``item_rows`` embedding rows each (an int: one item), videos still
        ``VideoSize``s. Fixed-resolution towers (``rows_per_unit`` > 1) take no videos."""
        rows = [item_rows] if isinstance(item_rows, int) else list(item_rows)
        units = []
        for k, r in enumerate(rows):
            size = r * self.unit // self.rows_per_unit
            if isinstance(r, VideoSize):
                if self.rows_per_unit != 1:
                    raise ValueError(f"{self.encoder}: item {k} is a video ({r!r}), but this cost is of a "
                                     f"fixed-resolution tower ({self.rows_per_unit} rows a unit), which takes no video")
                size = r.resized(size)
            units.append(size)
        return units


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
    """A ``BucketCost`` fitted to steps: ``calls[k]``, step k's calls as their items' bucket units (a video's a
    ``VideoSize``, packed as ``call_packs`` does);
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
            for p in call_packs(c, buckets):
                # an unbucketed pack counts as its share of the largest graph (see BucketCost.pack_ms)
                column = len(sizes) - 1 if p.bucket is None else sizes.index(p.bucket)
                row[column] += 1.0 if p.bucket else over_largest(p, buckets)
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


def _square_grid(patches: int, merge: int) -> tuple[int, int, int]:
    """(1, h, w): an image of ``patches`` patches as near square as whole ``merge`` blocks a side allow."""
    side = math.isqrt(patches) // merge * merge
    h = next((d for d in range(side, 0, -merge) if patches % d == 0 and patches // d % merge == 0), None)
    if h is None:
        raise ValueError(f"{patches} patches make no image of whole {merge}x{merge} merge blocks")
    return 1, h, patches // h


def large_flop_scale(encoder: str, buckets: Buckets, fill: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    """(large bucket, the FLOPs of its graph over the largest regular graph's as its replay was filled) pairs
    (``fill``: the replay's row, ``images`` images of ``real_units`` patches in all, the rest padding). A
    large graph runs one image: counted as a near-square image of the whole bucket, its padding (a
    full-attention sequence of its own) taken as part of it, an upper bound. () for no large buckets or a
    tower without a FLOP model (``vitkit.encoders.flops``)."""
    if not buckets.large:
        return ()
    preset = get_preset(encoder)
    config = MODEL_CLASSES[preset.family][0](**preset.config)
    flops = QWEN_FLOPS.get(config.model_type)
    if flops is None:
        return ()
    merge = config.spatial_merge_size

    def image(patches: int) -> int:
        return flops(config, _square_grid(patches, merge)).total if patches else 0

    images, real = int(fill["images"]), int(fill["real_units"])
    largest = images * image(real // images) + image(buckets.largest - real)
    return tuple((size, image(size) / largest) for size in buckets.large)


def measured_bucket_cost(path: str | Path) -> tuple[BucketCost, list[dict[str, Any]]]:
    """The ``BucketCost`` of an encoder-costs file, and per call ``{kind ("probe" or "serving"), what, images,
    measured_ms, modelled_ms, rel_err}``. A pack costs its bucket's scale times the graph's measured replay
    plus ``per_pack_ms + per_unit_ms * units`` (staging host pixels, from the probes). The scales and
    ``per_pack_ms`` are fitted to the serving calls of a calibration replay if the file has them, else
    ``per_pack_ms`` alone to the probes; a scale per bucket, as small and large graphs slow down apart.
    Large buckets (no replay of theirs is measured) cost the largest graph's ms times their ``large_flop_scale``;
    a file from before it kept ``large_buckets`` gets the encoder's default ones above its largest bucket."""
    data = results.read("encoder-costs", path)
    settings = data["settings"]
    default = default_buckets(settings["encoder"])
    large = settings.get("large_buckets", [s for s in default.large if s > max(settings["buckets"])])
    buckets = Buckets(tuple(settings["buckets"]), settings["max_items"], default.multiple, tuple(large))
    replay = {r["bucket"]: float(r["ms"]) for r in data["buckets"]}
    if sorted(replay) != sorted(buckets.sizes):
        raise ValueError(f"{path}: replay times for buckets {sorted(replay)}, the settings list "
                         f"{list(buckets.sizes)}")
    unit = int(settings["unit"])
    fill = next(r for r in data["buckets"] if r["bucket"] == buckets.largest)
    graphs = BucketCost(settings["encoder"], settings["impl"], buckets, tuple(replay[b] for b in buckets.sizes), 0.0,
                        unit, tuple(buckets.sizes), 0, large_scale=large_flop_scale(settings["encoder"], buckets, fill))
    probes = [("probe", f"{c['size'][0]}x{c['size'][1]}", list(c["item_units"]), float(c["host_pixels_ms"]))
              for c in data["calls"]]
    serving = []
    for k, c in enumerate(data.get("serving_calls", [])):  # a video's temporal patches kept beside its rows
        rows = stored_item_rows(c["item_rows"], c.get("item_temporal"), f"{path} serving call {k}")
        serving.append(("serving", f"{c['workload']} {c['mode']}", graphs.item_units(rows), float(c["ms"])))
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
    packs = [call_packs(units, graphs.buckets) for _, _, units, _ in calls]
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
        """Encoder ms of a step's calls, each given as its items' embedding rows (a video's a ``VideoSize``,
        as ``vitkit.costs.clock.call_item_rows`` gives them)."""
        return sum(self.call.call_ms(c) for c in calls)


def _is_costs_file(path: Path, encoder: str, impl: str) -> bool:
    data = results.read("encoder-costs", path)
    return data.get("kind") == "gpu" and (data["settings"]["encoder"], data["settings"]["impl"]) == (encoder, impl)


def stream_bookkeeping_ms(folder: str | Path, encoder: str, impl: str = DEFAULT_IMPL) -> tuple[float, str] | None:
    """Median host ms a step around the encoder, and the name of the newest plain GPU stream file giving it
    (``results.plain_streams``)."""
    for path in results.plain_streams(folder):
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
