"""``python -m vitkit.bench errors [FILE ...]``: why the encoder model misjudges calls, on stored validations.

A GPU validation keeps every measured step: its encoder calls (items' rows, ms) and prefill step. Each
call is set against the model the validation was modelled with (named in its ``sources``), then grouped
by what could explain an error: the call's buckets, what ran just before it on the GPU (the previous
step's prefill, or another call of the same step), that prefill's size, the previous call's buckets,
whether the replay clock had jumped (the replay runs steps back to back, so the GPU did not idle) and
the replay's first or second half (drift).

The prefill steps are set against the prefill model likewise, by the CUDA-graph row bucket they pad to.

The models' stated uncertainty: ``p99_band`` replays the validation's trace on CPU with every modelled
call and prefill step multiplied by a ratio measured/modelled drawn from an ``ErrorModel`` (a bootstrap:
calls by their buckets, steps by their row bucket, rare classes with their neighbours in size, and one
replay-level offset a draw, as calls of one replay share its host and clock state), and gives the band of
TTFT p99 the measurement must fall in. Drawn from the calibration replay alone, the band holds one
replay's noise; the offsets of the card's other validation runs (``run_offsets``) add how far a replay
sits from models fitted minutes before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.bench.machine import parser, table
from vitkit.bench.validate import step_calls, stored_replay
from vitkit.costs import results
from vitkit.costs.clock import StepCosts
from vitkit.costs.encoder import BucketCost, EncoderCost, load_encoder_cost, stored_item_rows
from vitkit.costs.prefill import load_prefill_cost
from vitkit.encoders.buckets import Pack
from vitkit.sim.replay import prepare, replay_stream

DRAWS = 100  # bootstrap replays per band (each a CPU replay of the validation's trace)
LEVEL = 0.9  # the band's coverage: its 5th to 95th percentile
MIN_CLASS = 20  # ratios of one class (bucket, row bucket) needed to draw from it alone (else with its neighbours)
CLOCK_EPS_MS = 1e-6  # float rounding of the replay clock: a larger gap is a jump to the next arrival


class Timed:
    """A measured time against its model's (``measured_ms``, ``modelled_ms``, set by the dataclasses below)."""

    measured_ms: float
    modelled_ms: float

    @property
    def rel_err(self) -> float:
        return (self.modelled_ms - self.measured_ms) / self.measured_ms

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.modelled_ms


@dataclass(frozen=True)
class CallError(Timed):
    """One encoder call of a replay: what it encoded, what ran before it, its measured and modelled ms.
    ``step`` is -1 for a calibration replay's calls (stored without their steps)."""

    workload: str
    mode: str
    step: int
    index: int  # the call's place in its step
    rows: tuple[int, ...]  # embedding rows per item (a video's a VideoSize)
    buckets: str  # its packs' buckets, e.g. "1024" or "2048+1024"
    measured_ms: float
    modelled_ms: float
    before: str = "unknown"  # "prefill" (the previous step's), "encoder call" (of this step), "nothing"
    previous_prefill_rows: int = 0  # rows of the prefill step that ran just before (0 after a call)
    previous_buckets: str = "none"  # the previous call's buckets, in any step
    idle_ms: float = 0.0  # how far the replay clock jumped before the step (the GPU itself did not idle)
    half: str = "first"  # which half of the replay's steps


@dataclass(frozen=True)
class StepError(Timed):
    """One prefill step of a replay, measured and modelled (ms); ``label``: its class (``prefill_label``)."""

    workload: str
    mode: str
    rows: int
    label: str
    measured_ms: float
    modelled_ms: float


def bucket_label(rows: Sequence[int], cost: BucketCost) -> str:
    """The buckets a call of items of ``rows`` (a video's a ``VideoSize``) runs in, as the cost model packs it
    (a video over the largest bucket in its pieces), largest pack first: "18432 large" for a large bucket,
    "oversize" past every bucket (eager)."""
    return "+".join(_pack_label(p, cost) for p in cost.packs(list(rows)))


def _pack_label(p: Pack, cost: BucketCost) -> str:
    if p.bucket is not None:
        return str(p.bucket)
    large = cost.buckets.pick_large(p.size)
    return "oversize" if large is None else f"{large} large"


def prefill_label(rows: int, prefill: Any) -> str:
    """A prefill step's class: the CUDA-graph row bucket it is padded to (the model's error depends on the
    step's shape, and larger steps, the ones queues build, err otherwise than small ones)."""
    buckets = tuple(getattr(prefill, "graph_buckets", ()) or ())
    if not buckets:
        return "all"
    return next((f"{b} rows" for b in buckets if b >= rows), f"> {buckets[-1]} rows")


def call_errors(row: Mapping[str, Any], cost: BucketCost) -> list[CallError]:
    """Every encoder call of a stored validation row's measured steps, against ``cost``."""
    steps = row.get("measured_steps") or []
    if not steps or "call_ms" not in steps[0]:
        raise ValueError(f"{row['workload']}/{row['mode']}: the stored steps have no per-call ms (call_ms)")
    # the replay clock moves by encoder + prefill + a constant bookkeeping: the smallest gap is that constant
    gaps = [b["start_ms"] - a["start_ms"] - a["encoder_ms"] - a["prefill_ms"] for a, b in zip(steps, steps[1:])]
    busy = min(gaps, default=0.0)
    out, previous = [], "none"
    for k, step in enumerate(steps):
        prior = steps[k - 1] if k else None
        idle = gaps[k - 1] - busy if k and gaps[k - 1] - busy > CLOCK_EPS_MS else 0.0
        calls = step_calls(step, f"{row['workload']}/{row['mode']} step {step['step']}")
        for j, (rows, ms) in enumerate(zip(calls, step["call_ms"])):
            label = bucket_label(rows, cost)
            if j:
                before, prefill_rows = "encoder call", 0
            elif prior is not None and prior["windows"]:
                before, prefill_rows = "prefill", sum(new for _, new in prior["windows"])
            else:
                before, prefill_rows = "nothing", 0
            out.append(CallError(row["workload"], row["mode"], step["step"], j, tuple(rows), label, float(ms),
                                 cost.call_ms(list(rows)), before, prefill_rows, previous, idle,
                                 "first" if 2 * k < len(steps) else "second"))
            previous = label
    return out


def prefill_errors(row: Mapping[str, Any], prefill: Any) -> list[StepError]:
    """Every measured prefill step of a stored validation row, against the prefill model ``prefill``."""
    steps = [s for s in row.get("measured_steps") or [] if s["windows"] and s["prefill_ms"] > 0]
    return [_step_error(row["workload"], row["mode"], s["windows"], s["prefill_ms"], prefill) for s in steps]


def _step_error(workload: str, mode: str, windows: Sequence[Sequence[int]], ms: float, prefill: Any) -> StepError:
    rows = sum(new for _, new in windows)
    return StepError(workload, mode, rows, prefill_label(rows, prefill), float(ms),
                     prefill.step_ms([tuple(w) for w in windows]))


def serving_errors(data: Mapping[str, Any], cost: BucketCost,
                   prefill: Any = None) -> tuple[list[CallError], list[StepError]]:
    """The calibration replay's calls (and, with ``prefill``, its prefill steps) of an encoder-costs file."""
    calls = []
    for k, c in enumerate(data.get("serving_calls", [])):
        rows = stored_item_rows(c["item_rows"], c.get("item_temporal"), f"serving call {k}")
        calls.append(CallError(c["workload"], c["mode"], -1, 0, tuple(rows), bucket_label(rows, cost), float(c["ms"]),
                               cost.call_ms(rows)))
    steps = [] if prefill is None else [_step_error(s["workload"], s["mode"], s["windows"], s["ms"], prefill)
                                        for s in data.get("serving_prefill_steps", [])]
    return calls, steps


@dataclass(frozen=True)
class ErrorGroup:
    """Calls sharing a ``key``: their count, relative errors (modelled - measured) / measured, and ms totals."""

    key: str
    calls: int
    median_rel_err: float
    p10_rel_err: float
    p90_rel_err: float
    measured_ms: float  # sums over the calls
    modelled_ms: float

    @property
    def total_rel_err(self) -> float:
        """The error of the group's summed time: what the replay's clock accumulates."""
        return (self.modelled_ms - self.measured_ms) / self.measured_ms


def group_errors(errors: Sequence[CallError | StepError], key: Callable[[Any], str],
                 order: Sequence[str] = ()) -> list[ErrorGroup]:
    """One ``ErrorGroup`` per value of ``key``: those in ``order`` first, in it, then the most calls first."""
    groups: dict[str, list[CallError]] = {}
    for e in errors:
        groups.setdefault(key(e), []).append(e)
    rank = {name: k for k, name in enumerate(order)}
    out = []
    for name, members in sorted(groups.items(), key=lambda kv: (rank.get(kv[0], len(rank)), -len(kv[1]), kv[0])):
        rel = np.array([e.rel_err for e in members])
        p10, median, p90 = np.percentile(rel, [10, 50, 90])
        out.append(ErrorGroup(name, len(members), float(median), float(p10), float(p90),
                              sum(e.measured_ms for e in members), sum(e.modelled_ms for e in members)))
    return out


def _prefill_bins(errors: Sequence[CallError]) -> tuple[Callable[[CallError], str], list[str]]:
    """A key putting calls after a prefill into thirds by that prefill's rows (edges from the data), and the
    thirds' names in order."""
    rows = [e.previous_prefill_rows for e in errors if e.before == "prefill"]
    edges = [int(x) for x in np.percentile(rows, [100 / 3, 200 / 3])] if rows else [0, 0]
    names = [f"prefill rows < {edges[0]}", f"prefill rows {edges[0]}-{edges[1]}", f"prefill rows >= {edges[1]}"]

    def key(e: CallError) -> str:
        if e.before != "prefill":
            return f"after {e.before}"
        return names[sum(e.previous_prefill_rows >= edge for edge in edges)]
    return key, names


def bucket_images(e: CallError) -> str:
    """A call's buckets and image count, e.g. "4096 x 4": a pack of several images costs otherwise than
    one image of the same size (attention stays within an image)."""
    return f"{e.buckets} x {len(e.rows)}"


def context_groups(errors: Sequence[CallError]) -> dict[str, list[ErrorGroup]]:
    """The calls grouped by each thing that might explain their error."""
    images = sorted({len(e.rows) for e in errors})
    return {
        "bucket": group_errors(errors, lambda e: e.buckets),
        "images": group_errors(errors, lambda e: f"{len(e.rows)} images", [f"{n} images" for n in images]),
        "bucket x images": group_errors(errors, bucket_images),
        "ran before": group_errors(errors, lambda e: e.before),
        "previous prefill": group_errors(errors, *_prefill_bins(errors)),
        "previous call": group_errors(errors, lambda e: e.previous_buckets),
        "replay clock": group_errors(errors, lambda e: "after an idle jump" if e.idle_ms > 0 else "back to back"),
        "half": group_errors(errors, lambda e: f"{e.half} half", ["first half", "second half"]),
    }


@dataclass(frozen=True)
class Pools:
    """Ratios to draw from by class, and each class's median size (rows). A class with fewer than
    ``MIN_CLASS`` ratios draws from it and the classes nearest in size: the rare large calls and
    steps that a queue's worst burst is made of keep their own bias, not the common small ones'."""

    by_class: Mapping[str, tuple[float, ...]]
    sizes: Mapping[str, float]
    _near: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False, compare=False)

    def pool(self, label: str, size: float) -> tuple[float, ...]:
        if label not in self._near:
            def distance(k: str) -> tuple[bool, float]:
                return k != label, abs(np.log(max(self.sizes[k], 1.0)) - np.log(max(size, 1.0)))
            out: list[float] = []
            for k in sorted(self.by_class, key=distance):
                out += self.by_class[k]
                if len(out) >= MIN_CLASS:
                    break
            self._near[label] = tuple(out)
        return self._near[label]

    def draw(self, label: str, size: float, rng: np.random.Generator) -> float:
        pool = self.pool(label, size)
        return float(pool[rng.integers(len(pool))]) if pool else 1.0


def _pools(items: Sequence[CallError | StepError], median_of: Mapping[tuple[str, str], float]) -> Pools:
    """Each item's ratio over its replay's median, by class (a call's buckets, a step's ``label``)."""
    by_class: dict[str, list[float]] = {}
    sizes: dict[str, list[int]] = {}
    for item in items:
        label, size = (item.buckets, sum(item.rows)) if isinstance(item, CallError) else (item.label, item.rows)
        by_class.setdefault(label, []).append(item.ratio / median_of[item.workload, item.mode])
        sizes.setdefault(label, []).append(size)
    return Pools({k: tuple(v) for k, v in by_class.items()}, {k: float(np.median(v)) for k, v in sizes.items()})


@dataclass(frozen=True)
class ErrorModel:
    """Ratios measured/modelled to draw from: per call by its buckets and per prefill step by its row bucket,
    each over its replay's median (so a class's own bias stays), and per replay those medians (the offsets:
    calls of one replay share its host and clock state)."""

    calls: Pools
    prefill: Pools  # empty: prefill steps taken as modelled
    offsets: tuple[tuple[float, float], ...]  # per replay: (encoder, prefill) median ratio
    source: str


def error_model(calls: Sequence[CallError], steps: Sequence[StepError] = (), source: str = "") -> ErrorModel:
    """An ``ErrorModel`` of the calls and prefill steps of one or more replays (a replay: workload x mode)."""
    if not calls:
        raise ValueError(f"error_model: no encoder calls to resample ({source or 'no source'})")
    replays = list(dict.fromkeys((c.workload, c.mode) for c in calls))
    enc = {r: float(np.median([c.ratio for c in calls if (c.workload, c.mode) == r])) for r in replays}
    pre = {r: float(np.median([s.ratio for s in steps if (s.workload, s.mode) == r] or [1.0])) for r in replays}
    steps = [s for s in steps if (s.workload, s.mode) in pre]
    return ErrorModel(_pools(calls, enc), _pools(steps, pre), tuple((enc[r], pre[r]) for r in replays), source)


@dataclass(frozen=True)
class _ResampledEncoder:
    """An ``EncoderCost`` whose every call costs the model's ms times a ratio drawn from ``errors``."""

    cost: EncoderCost
    errors: ErrorModel
    rng: np.random.Generator
    offset: float

    @property
    def bookkeeping_ms(self) -> float:
        return self.cost.bookkeeping_ms

    @property
    def source(self) -> str:
        return f"{self.cost.source}, resampled ({self.errors.source})"

    def step_ms(self, calls: Sequence[Sequence[int]]) -> float:
        call = self.cost.call
        return sum(call.call_ms(c) * self.offset * self.errors.calls.draw(bucket_label(c, call), sum(c), self.rng)
                   for c in calls if c)


@dataclass(frozen=True)
class _ResampledPrefill:
    prefill: Any
    errors: ErrorModel
    rng: np.random.Generator
    offset: float
    source: str = field(default="")

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        rows = sum(new for _, new in windows)
        ratio = self.errors.prefill.draw(prefill_label(rows, self.prefill), rows, self.rng)
        return self.prefill.step_ms(windows) * self.offset * ratio


@dataclass(frozen=True)
class Band:
    """The TTFT p99 (ms) the model predicts with its errors resampled: ``lo``-``hi`` holds ``level`` of the
    ``draws`` replays; ``inside``: whether the measured p99 falls in it."""

    workload: str
    mode: str
    measured_p99_ms: float
    modelled_p99_ms: float
    lo_ms: float
    hi_ms: float
    median_ms: float
    draws: int
    level: float
    errors: str  # what was resampled

    @property
    def inside(self) -> bool:
        return self.lo_ms <= self.measured_p99_ms <= self.hi_ms


def p99_band(row: Mapping[str, Any], settings: Mapping[str, Any], costs: StepCosts, errors: ErrorModel, *,
             draws: int = DRAWS, seed: int = 0, level: float = LEVEL) -> Band:
    """The band of TTFT p99 over ``draws`` CPU replays of a stored validation row's trace, each call and
    prefill step scaled by ratios drawn from ``errors`` (one replay offset per draw)."""
    if draws < 2 or not 0 < level < 1:
        raise ValueError(f"p99_band: draws must be >= 2 and level in (0, 1), got {draws} and {level}")
    trace, config, _ = stored_replay(dict(row), dict(settings))
    stream = prepare(trace)
    p99 = []
    for k in range(draws):
        rng = np.random.default_rng([seed, k])
        enc, pre = errors.offsets[rng.integers(len(errors.offsets))]
        drawn = StepCosts(_ResampledEncoder(costs.encoder, errors, rng, enc),
                          _ResampledPrefill(costs.prefill, errors, rng, pre))
        p99.append(replay_stream(stream, config, drawn).latency.ttft_p99_ms)
    lo, median, hi = np.percentile(p99, [50 * (1 - level), 50, 50 * (1 + level)])
    modelled = replay_stream(stream, config, costs).latency.ttft_p99_ms
    return Band(row["workload"], row["mode"], float(row["measured_p99_ms"]), modelled, float(lo), float(hi),
                float(median), draws, level, errors.source)


# the files a validation's modelled side names in its sources (``StepCosts.label``)
_NAMED = {"encoder": r"measured buckets (encoder-costs-\S+?\.json)", "prefill": r"prefill: (prefill-\S+?\.json)",
          "calibration": r"serving steps of (encoder-costs-\S+?\.json)"}


def named_files(validation: Mapping[str, Any], folder: str | Path) -> dict[str, Path | None]:
    """The encoder-costs, prefill and prefill-calibration files a validation was modelled with, in ``folder``;
    FileNotFoundError naming a file it names that is not there."""
    text = validation["sources"]["modelled"]
    found = {kind: re.search(pattern, text) for kind, pattern in _NAMED.items()}
    paths = {kind: Path(folder) / m.group(1) if m else None for kind, m in found.items()}
    for kind in ("encoder", "prefill"):
        if paths[kind] is None:
            raise ValueError(f"the validation's sources name no {kind} file: {text!r}")
    missing = [p.name for p in paths.values() if p is not None and not p.exists()]
    if missing:
        raise FileNotFoundError(f"the validation was modelled with {', '.join(missing)}, not in {folder}")
    return paths


@dataclass(frozen=True)
class RowAnalysis:
    """One workload x mode of a validation: its calls' errors grouped, and the p99 bands."""

    workload: str
    mode: str
    calls: tuple[CallError, ...]
    groups: Mapping[str, list[ErrorGroup]]
    bands: Mapping[str, Band]  # by what was resampled (``BANDS``)

    @property
    def stated_band(self) -> Band | None:
        """The models' stated uncertainty: the widest band drawn without this replay's own errors."""
        return self.bands.get("calibration + runs") or self.bands.get("calibration replay")


@dataclass(frozen=True)
class Analysis:
    file: str
    card: str
    models: str  # the encoder-costs file the calls are set against
    rows: tuple[RowAnalysis, ...]


def validation_costs(validation: Mapping[str, Any], folder: str | Path) -> tuple[StepCosts, dict[str, Path | None]]:
    """The cost models a validation was modelled with (``named_files`` in ``folder``), and the files."""
    files = named_files(validation, folder)
    costs = StepCosts(load_encoder_cost(files["encoder"].parent, costs_file=files["encoder"]),
                      load_prefill_cost(files["prefill"], files["calibration"]))
    return costs, files


def run_offsets(paths: Sequence[str | Path]) -> tuple[list[tuple[float, float]], list[str]]:
    """Per replay of each GPU validation at ``paths``: its (encoder, prefill) median ratio measured/modelled
    against the models it names, i.e. how far one replay sat from the models fitted minutes before it;
    and the names of the files used (those whose models are beside them)."""
    offsets, used = [], []
    for path in paths:
        validation = results.read("ttft-validate", path)
        try:
            costs, _ = validation_costs(validation, Path(path).parent)
        except (FileNotFoundError, ValueError):
            continue
        for row in validation["rows"]:
            model = error_model(call_errors(row, costs.encoder.call), prefill_errors(row, costs.prefill))
            offsets += model.offsets
        used.append(f"{Path(path).parent.name}/{Path(path).name}")
    return offsets, used


BANDS = ("calibration replay", "calibration + runs", "this replay")


def analyse(path: str | Path, folder: str | Path | None = None, *, draws: int = DRAWS, seed: int = 0,
            level: float = LEVEL, bands: Sequence[str] = BANDS, runs: Sequence[str | Path] = ()) -> Analysis:
    """Per-call errors of a stored GPU validation against the models it names (found in ``folder``, default
    the file's own), and with ``draws`` > 0 the p99 ``bands``, each resampling other errors:
    "calibration replay": the calls and steps the models were fitted to (in sample for the fit, so only
    the noise within one replay); "calibration + runs": those, with the replay offsets of the other GPU
    validations ``runs`` (``run_offsets``: how far a replay sits from models fitted minutes before, which
    one calibration replay cannot show): the models' stated uncertainty; "this replay": the validation's
    own calls and steps (in sample: whether its errors explain its miss)."""
    path = Path(path)
    validation = results.read("ttft-validate", path)
    costs, files = validation_costs(validation, folder or path.parent)
    calibration = serving_errors(results.read("encoder-costs", files["encoder"]), costs.encoder.call, costs.prefill)
    prior = error_model(*calibration, source=f"the calibration replay of {files['encoder'].name}")
    offsets, used = run_offsets([r for r in runs if measured_run(r) != measured_run(path)])
    wider = ErrorModel(prior.calls, prior.prefill, prior.offsets + tuple(offsets),
                       f"{prior.source}, with the replay offsets of {len(used)} other runs ({', '.join(used)})")
    rows = []
    for row in validation["rows"]:
        calls, steps = call_errors(row, costs.encoder.call), prefill_errors(row, costs.prefill)
        own = error_model(calls, steps, source="this replay's own calls and steps")
        models = {"calibration replay": prior, "calibration + runs": wider, "this replay": own}
        # without other runs, "calibration + runs" is the calibration replay alone
        names = dict.fromkeys(n if n != "calibration + runs" or used else "calibration replay" for n in bands)
        drawn = {} if draws == 0 else {name: p99_band(row, validation["settings"], costs, models[name], draws=draws,
                                                      seed=seed, level=level) for name in names}
        by_size = list(dict.fromkeys(s.label for s in sorted(steps, key=lambda s: s.rows)))
        groups = context_groups(calls) | {"prefill steps": group_errors(steps, lambda s: s.label, by_size)}
        rows.append(RowAnalysis(row["workload"], row["mode"], tuple(calls), groups, drawn))
    card = validation.get("machine", {}).get("device_name", "?")
    return Analysis(path.name, card, files["encoder"].name, tuple(rows))


def gpu_validations(folder: str | Path) -> list[Path]:
    """The GPU-measured validations in ``folder`` (not the CPU re-models of their modelled side), newest first."""
    return [f for f in results.newest_first("ttft-validate", folder)
            if not results.read("ttft-validate", f)["settings"].get("modelled_only")]


def measured_run(path: str | Path) -> str:
    """The GPU-measured file a validation's measured side is: its own name, or a re-model's ``--measured``."""
    settings = results.read("ttft-validate", path)["settings"]
    return settings.get("measured_file") or Path(path).name if settings.get("modelled_only") else Path(path).name


def measured_runs(folder: str | Path) -> list[Path]:
    """Each GPU-measured validation in ``folder`` once, with its newest models: the newest CPU re-model of its
    modelled side (``validate --modelled-only``, e.g. with its own card's grid) where there is one."""
    chosen: dict[str, Path] = {}
    for path in results.newest_first("ttft-validate", folder):
        chosen.setdefault(measured_run(path), path)
    return list(chosen.values())


def format_analysis(analysis: Analysis, contexts: Sequence[str] = ("bucket x images", "ran before", "previous prefill",
                                                                   "replay clock", "half", "prefill steps")) -> str:
    """Tables of a validation's per-call errors by context, and its bands."""
    lines = [f"{analysis.file} ({analysis.card}): calls against {analysis.models}"]
    columns = [("calls", ">6", "calls"), ("median", ">+8.1%", "median_rel_err"), ("p10", ">+7.1%", "p10_rel_err"),
               ("p90", ">+7.1%", "p90_rel_err"), ("sum", ">+7.1%", lambda g: g.total_rel_err)]
    for row in analysis.rows:
        lines.append(f"\n{row.workload} {row.mode}: {len(row.calls)} calls, error = (modelled - measured) / measured")
        for context in contexts:
            lines += [f"  by {context}:"] + [f"    {line}" for line in table(
                [(context, "<26", "key"), *columns], row.groups[context][:8])]
        for name, b in row.bands.items():
            lines.append(f"  p99 band, {name} resampled ({b.draws} replays, {b.level:.0%}): "
                         f"{b.lo_ms:.1f}-{b.hi_ms:.1f} ms (modelled {b.modelled_p99_ms:.1f}); measured {b.measured_p99_ms:.1f} ms: "
                         f"{'inside' if b.inside else 'OUTSIDE'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("errors", __doc__)
    p.add_argument("files", nargs="*", type=Path, help="ttft-validate-*.json measured on a GPU, or re-modelled "
                                                       "(default: each GPU run in --results, with its newest models)")
    p.add_argument("--results", type=Path, default=results.results_folder(), help="folder of the models named")
    p.add_argument("--draws", type=int, default=DRAWS, help="bootstrap replays per band (0: no bands)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", nargs="+", choices=BANDS, default=list(BANDS), help="which errors to resample")
    args = p.parse_args(argv)
    runs = measured_runs(args.results)  # each file's band takes the other runs' replay offsets
    files = args.files or runs
    if not files:
        p.error(f"no GPU-measured ttft-validate-*.json in {args.results}")
    for path in files:
        try:
            analysis = analyse(path, args.results, draws=args.draws, seed=args.seed, runs=runs, bands=args.bands)
            print(format_analysis(analysis) + "\n")
        except (FileNotFoundError, ValueError) as err:
            print(f"{path.name}: skipped: {err}\n")
    return 0
