"""The bucketed encoder's cost: ms per bucket graph plus a per-call ms, fitted to a stream file.

The bucketed encoder (impl "vitkit") runs a call as packs (``vitkit.encoders.buckets.pack``),
each pack replaying the CUDA graph of its bucket: a call costs what its packs' graphs cost plus a
little per call, a step function of the buckets. One line over rows per call
(``vitkit.sim.costmodel.CallCost``) cannot be that: on the H100 it modelled a single 448x448
image (256 rows, the 1024-patch graph) at ~9 ms where the stream's steps say ~7 ms, which made
batching look better than it is on small images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
import json
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.bench.stream import StreamSpec, generate_stream, step_miss_units
from vitkit.bench.stream_run import load_stream_results
from vitkit.checks import positive_int
from vitkit.encoders.buckets import Buckets, Pack, pack
from vitkit.encoders.build import default_buckets
from vitkit.encoders.presets import get_preset


@dataclass(frozen=True)
class BucketCost:
    """Modelled time of one call of the bucketed encoder (ms): ``per_call_ms`` plus, per pack
    ``pack(item_units, buckets)`` makes, ``bucket_ms`` of its bucket. A pack larger than every
    bucket (run eagerly, without a graph) costs the largest bucket's ms scaled by its size.

    ``unit``: bucket units per embedding row (Qwen2.5-VL: 4 patches a merged row), so a call
    given in rows packs as the encoder packs it. ``observed``: the buckets the fit saw; the others
    are filled in by ``_fill_unobserved`` (interpolated in size between observed neighbours).
    Where every call of the fitted steps is one pack (no call over the largest bucket), the
    per-call ms cannot be told from the buckets' ms; the fit then folds it into them (0 ms a call
    on the stored H100 stream): the sum per call is what is measured, not the split.
    """

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

    def __post_init__(self) -> None:
        if len(self.bucket_ms) != len(self.buckets.sizes):
            raise ValueError(f"bucket_ms has {len(self.bucket_ms)} entries for {len(self.buckets.sizes)} buckets {self.buckets.sizes}")
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
        return self.call_units_ms([r * self.unit for r in rows])

    def describe(self) -> str:
        seen = ", ".join(f"{s}:{ms:.2f}" for s, ms in zip(self.buckets.sizes, self.bucket_ms) if s in self.observed)
        host = f" + {self.per_pack_ms:.2f} ms/pack + {1e3 * self.per_unit_ms:.2f} us/unit" if self.per_pack_ms or self.per_unit_ms else ""
        if self.bucket_scales:
            scale = " (replays x " + ", ".join(f"{s}:{k:.3f}" for s, k in zip(self.buckets.sizes, self.bucket_scales)) + ")"
        else:
            scale = f" (replays x {self.graph_scale:.3f})" if self.graph_scale != 1.0 else ""
        return f"bucket model: {self.per_call_ms:.2f} ms/call{host} + graph ms per bucket{scale} (units:ms) {seen}"


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
    """Bucket ms for every size: the fitted ones as they are, the others interpolated in size
    between observed neighbours; below the smallest observed bucket its ms (small graphs are
    launch-bound, not cheaper in proportion), above the largest proportional to its ms."""
    xs = [s for s in sizes if s in observed]
    ys = [float(ms[sizes.index(s)]) for s in xs]
    if not xs:
        raise ValueError("bucket fit: no bucket was observed")
    out = []
    for s in sizes:
        if s in observed:
            out.append(float(ms[sizes.index(s)]))
        elif s < xs[0]:
            out.append(ys[0])
        elif s > xs[-1]:
            out.append(ys[-1] * s / xs[-1])
        else:
            out.append(float(np.interp(s, xs, ys)))
    return out


def fit_bucket_cost(calls: Sequence[Sequence[Sequence[int]]], targets_ms: Sequence[float], buckets: Buckets, *,
                    unit: int, encoder: str, impl: str, source: str) -> BucketCost:
    """A ``BucketCost`` fitted to steps: ``calls[k]`` lists step k's encoder calls, each the bucket
    units of its items; ``targets_ms[k]`` the step's measured encoder ms. Design matrix: per step,
    the count of each bucket's packs and the number of calls; non-negative least squares on the
    *relative* error (each row divided by its target), so a 6 ms single-image step counts as much
    as a 90 ms one, with bucket ms non-decreasing in size. Steps with no call are skipped."""
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
                row[len(sizes) - 1 if p.bucket is None else sizes.index(p.bucket)] += 1.0 if p.bucket else p.size / buckets.largest
            row[-1] += 1.0
        counts.append(row)
        ys.append(float(y))
    if not counts:
        raise ValueError("fit_bucket_cost: no step with an encoder call")
    a, y = np.array(counts), np.array(ys)
    # Unknowns are the increments between consecutive buckets (and the per-call ms), all >= 0, so
    # a larger graph never comes out cheaper than a smaller one: column j counts packs in bucket j
    # or larger. Rows divided by their targets: the fit minimises the relative error.
    cumulative = np.hstack([np.cumsum(a[:, -2::-1], axis=1)[:, ::-1], a[:, -1:]])
    x = nnls(cumulative / y[:, None], np.ones(len(y)))
    observed = tuple(s for k, s in enumerate(sizes) if a[:, k].any())
    cost = BucketCost(encoder, impl, buckets, tuple(_fill_unobserved(sizes, np.cumsum(x[:-1]), observed)), float(x[-1]),
                      unit, observed, len(y), source)
    errs = np.abs(a @ np.array([*cost.bucket_ms, cost.per_call_ms]) - y) / y
    return replace(cost, median_rel_err=float(np.median(errs)), max_rel_err=float(errs.max()))


def stream_step_calls(stream: Mapping[str, Any], mode: str) -> list[list[list[int]]]:
    """Per step of a stream file's stream (regenerated from its settings: ``generate_stream`` is
    seeded), the encoder calls ``embed_chunks`` made in ``mode`` with the file's cache (room for
    every image, never evicting): each call the bucket units of its items. Batched: one call of
    the step's new distinct images; per_request: one call per request with new images, in order."""
    spec = StreamSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in stream["settings"]["stream"].items()})
    return step_miss_units(spec, generate_stream(spec), mode)


def fit_stream_bucket_cost(path: str | Path, encoder: str, impl: str = "vitkit") -> tuple[BucketCost, list[dict[str, Any]]]:
    """The ``BucketCost`` of a stream file's bucketed encoder, fitted to its step rows (both
    modes), each step's calls recomputed (``stream_step_calls``) and packed into the encoder's
    default buckets (or the file's ``buckets`` setting). A row whose ``encoded_items`` or
    ``encoder_calls`` differ from the recomputation is left out and flagged. (The sweeps' points
    are not mixed in: their items sit on the host and their layouts repeat, another regime.)
    Returns the model and, per step row used or flagged, ``{mode, step, calls, measured_ms, modelled_ms, rel_err, flagged}``."""
    data = load_stream_results(path)
    buckets = default_buckets(encoder)
    if data["settings"].get("buckets"):
        buckets = Buckets(tuple(data["settings"]["buckets"]), buckets.max_items, buckets.multiple)
    unit = 1 if not get_preset(encoder).variable_resolution else int(get_preset(encoder).config["spatial_merge_size"]) ** 2
    steps, calls, targets = [], [], []
    for mode in ("batched", "per_request"):
        recomputed = stream_step_calls(data, mode)
        for row in (r for r in data["steps"] if (r["encoder"], r["impl"], r["mode"]) == (encoder, impl, mode)):
            made = recomputed[row["step"]]
            ok = (len(made) == row["encoder_calls"] and sum(map(len, made)) == row["encoded_items"]
                  and sum(u // unit for c in made for u in c) == row["encoded_rows"])
            steps.append({"mode": mode, "step": row["step"], "calls": made, "measured_ms": row["encoder_ms"], "flagged": not ok})
            if ok and made:
                calls.append(made)
                targets.append(row["encoder_ms"])
    if not steps:
        raise ValueError(f"{path}: no step rows for encoder {encoder!r} impl {impl!r}")
    machine = data.get("machine", {}).get("device_name") or "?"
    cost = fit_bucket_cost(calls, targets, buckets, unit=unit, encoder=encoder, impl=impl, source=f"{Path(path).name} ({machine})")
    for s in steps:
        s["modelled_ms"] = sum(cost.call_units_ms(c) for c in s["calls"])
        s["rel_err"] = (s["modelled_ms"] - s["measured_ms"]) / s["measured_ms"] if s["measured_ms"] > 0 else None
    return cost, steps


ENCODER_COSTS_SCHEMA = "vitkit.encoder-costs/1"


def measured_bucket_cost(path: str | Path) -> tuple[BucketCost, list[dict[str, Any]]]:
    """The ``BucketCost`` of an ``encoder-costs-*.json`` (``python -m vitkit.bench.encoder_costs``).

    A call costs, per pack, its bucket's scale times the bucket graph's measured replay plus the
    host's share ``per_pack_ms + per_unit_ms * units``. ``per_unit_ms`` is the staging of host
    pixels, measured by the probes (host-pixel call minus device-pixel call, per patch). The
    scales and ``per_pack_ms`` are fitted (non-negative least squares on relative error) to the
    file's serving calls (the calls of a calibration serving replay) when it has them: a bucket
    with at least ``OWN_SCALE_PACKS`` packs among them gets a scale of its own, the others share
    ``graph_scale`` (``bucket_scales`` lists them all). Without serving calls ``per_pack_ms`` alone
    is fitted to the probe calls with host pixels, every scale 1.

    Why a scale per bucket: in the calibration replays on two H100s a one-image call (bucket
    1024) ran 1.12-1.13x its replay alone (after the staging), a large image's (bucket 7168)
    1.21-1.22x, and some buckets' replays alone were off their neighbours by 15-25% in one process
    and not in another. One shared scale then over-modelled every small call by 3-6% and
    under-modelled the large ones by 3-6%, and near the knee the queue about doubles a step-cost
    error at p99.
    Returns the model and per call fitted ``{kind, size or workload, images, measured_ms,
    modelled_ms, rel_err}`` (kind "serving" or "probe"; the probes are reported either way). Its
    median and largest error are over the calls it was fitted to."""
    data = json.loads(Path(path).read_text())
    if data.get("schema") != ENCODER_COSTS_SCHEMA:
        raise ValueError(f"{path}: schema must be {ENCODER_COSTS_SCHEMA!r}, got {data.get('schema')!r}")
    settings = data["settings"]
    default = default_buckets(settings["encoder"])
    buckets = Buckets(tuple(settings["buckets"]), settings["max_items"], default.multiple)
    replay = {r["bucket"]: float(r["ms"]) for r in data["buckets"]}
    if sorted(replay) != sorted(buckets.sizes):
        raise ValueError(f"{path}: replay times for buckets {sorted(replay)}, the settings list {list(buckets.sizes)}")
    unit = int(settings["unit"])
    graphs = BucketCost(settings["encoder"], settings["impl"], buckets, tuple(replay[b] for b in buckets.sizes), 0.0,
                        unit, tuple(buckets.sizes), 0)
    probes = [("probe", f"{c['size'][0]}x{c['size'][1]}", list(c["item_units"]), float(c["host_pixels_ms"])) for c in data["calls"]]
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
    """(scale per bucket, the shared scale, ms per pack) fitted to ``calls`` (their units and
    ms), the staging cost ``per_unit`` per unit taken as measured. Graph ms and units grow
    together, so fitting both per-unit terms at once is ill-conditioned (a fit could zero the
    graphs and keep only units). ``free_scale``: buckets with ``OWN_SCALE_PACKS`` packs among the
    calls get their own scale, the rest share one (the median of the own ones if no call has a
    pack of theirs); else every scale is 1."""
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
