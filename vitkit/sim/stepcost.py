"""What a scheduler step costs on the replay clock: encoder + language-model prefill + bookkeeping.

A serving engine's prefill step runs the vision encoder on the step's misses, then the language
model over every token of the step's windows (text and image placeholders alike); the next step
starts when both are done. The replay advances its clock by that sum, so a slow step delays
every request in it and every request queued behind it.

- **Encoder**: a cost per call from stored GPU results. For the bucketed encoder (impl
  ``vitkit``): a ``BucketCost`` applied to the packs each call makes, by default measured part
  by part (``encoder-costs-*.json``: each bucket graph's replay, the host's staging of pixels,
  scaled and offset to a calibration serving replay's calls), else fitted to a stream benchmark
  file's steps (``model="bucket"``). Otherwise (``model="line"``, other impls, or only a sweep
  ``full-*.json``) a ``CallCost`` line over rows per call, fitted by relative error. Or
  measured: the real encoder, timed (``vitkit.sim.timing.TimedEncoder``).
- **Prefill**: anything with ``step_ms(windows) -> ms``, windows as ``(context_tokens_before,
  new_tokens)``: the fitted H100 model ``vitkit.sim.prefill.load_prefill_cost()``, the GPU
  runner that really runs the decoder, or ``FlopPrefillCost`` (an estimate from FLOPs at an
  assumed utilisation, labelled so, for when no measurement is stored).
- **Bookkeeping**: the host time ``embed_chunks`` spends around the encoder (lookups, puts,
  assembly), a constant per step taken from the same results file.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from vitkit.bench.decoder import check_windows
from vitkit.bench.results import find_results, load_results
from vitkit.bench.stream_run import load_stream_results
from vitkit.embed import ENCODING_FATES, EmbedResult
from vitkit.sim.bucketcost import BucketCost, fit_stream_bucket_cost, measured_bucket_cost
from vitkit.sim.costmodel import CallCost, fit_cost_models, fit_stream_cost_models
from vitkit.sim.latency import StepTime
from vitkit.sim.prefill import load_prefill_cost
from vitkit.sim.timing import TimedEncoderLike

STORED = Path(__file__).resolve().parents[2] / "results" / "h100"
DEFAULT_ENCODER = "qwen2.5-vl-7b"
DEFAULT_IMPL = "vitkit"  # compiled, bucketed: what a server runs
# measured: BucketCost from an encoder-costs file (graph replays + host share, each measured);
# bucket: BucketCost fitted to a stream's steps; line: CallCost over rows per call
ENCODER_MODELS = ("measured", "bucket", "line")


class PrefillModel(Protocol):
    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float: ...


@dataclass(frozen=True)
class FlopPrefillCost:
    """Prefill time estimated from FLOPs at an assumed fraction of a peak (not measured).

    Per new token ``2 * params`` FLOPs (the GEMMs); per (query, key) pair of causal attention
    ``4 * layers * heads * head_dim``. Defaults: Qwen2.5-VL-7B's decoder (6.5e9 non-embedding
    parameters, 28 layers x 28 heads x 128) at 50% of an H100's 989 TFLOP/s dense bf16.
    """

    params: float = 6.5e9
    attn_flops_per_pair: float = 4 * 28 * 28 * 128
    peak_flops: float = 989e12
    utilisation: float = 0.5
    intercept_ms: float = 1.0  # launches, norms, small kernels per step
    source: str = "estimate: Qwen2.5-VL-7B decoder FLOPs at 50% of 989 TFLOP/s (not measured)"

    def step_ms(self, windows: Sequence[tuple[int, int]]) -> float:
        if not windows:
            return 0.0
        checked = check_windows(windows)
        gemm = sum(2 * self.params * new for _, new in checked)
        attn = sum(self.attn_flops_per_pair * new * (ctx + (new + 1) / 2) for ctx, new in checked)
        return self.intercept_ms + (gemm + attn) / (self.peak_flops * self.utilisation) * 1e3


def default_prefill() -> PrefillModel:
    """The stored H100 prefill fit (``vitkit.sim.prefill``) when it is there, else the labelled
    ``FlopPrefillCost`` estimate."""
    try:
        return load_prefill_cost()
    except FileNotFoundError:
        return FlopPrefillCost()


def prefill_source(prefill: object) -> str:
    """What timed the prefill (or any model with a ``source``): its source with folders dropped
    (they name this machine's checkout, not the measurement), or the runner's class name."""
    source = str(getattr(prefill, "source", None) or type(prefill).__name__)
    return re.sub(r"\S*/([^/\s]+\.json)", r"\1", source)


def _newest(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern``, newest first by the UTC stamp that ends their names."""
    return sorted(folder.glob(pattern), key=lambda p: (p.stem.rsplit("-", 1)[-1], p.name), reverse=True)


@dataclass(frozen=True)
class EncoderCost:
    """An encoder's per-call cost model and the bookkeeping ms per step from the same file."""

    call: CallCost | BucketCost
    bookkeeping_ms: float
    source: str  # which file, regime (stream or sweep) and model (bucket or line) it was fitted to

    def step_ms(self, calls: Sequence[int | Sequence[int]]) -> float:
        """Encoder ms of a step's calls, each given as its items' embedding rows (a list) or, for
        the line model, as its total rows (an int; the bucket model reads an int as one item)."""
        if isinstance(self.call, BucketCost):
            return sum(self.call.call_ms(c) for c in calls)
        return sum(self.call.call_ms(c if isinstance(c, int) else sum(c)) for c in calls)


def _pick_impl(impls: Sequence[str], impl: str | None) -> str | None:
    """``impl`` when given and present; else vitkit's compiled path, else any."""
    if impl is not None:
        return impl if impl in impls else None
    return DEFAULT_IMPL if DEFAULT_IMPL in impls else (sorted(impls)[0] if impls else None)


def _from_stream(path: Path, encoder: str, impl: str | None, model: str) -> EncoderCost | None:
    data = load_stream_results(path)
    if data.get("kind", "gpu") != "gpu":
        return None  # a CPU smoke stream times no GPU
    models = fit_stream_cost_models(path)
    chosen = _pick_impl([k[1] for k in models if k[0] == encoder], impl)
    if chosen is None:
        return None
    key = (encoder, chosen)
    rows = [r for r in data["steps"] if (r["encoder"], r["impl"]) == key]
    book = statistics.median(max(0.0, r["step_ms"] - r["encoder_ms"]) for r in rows)
    # only that impl packs calls into bucket graphs; the calls are recomputed from the stream's spec
    if model == "bucket" and chosen == DEFAULT_IMPL and "stream" in data["settings"]:
        cost, _ = fit_stream_bucket_cost(path, encoder, chosen)
        return EncoderCost(cost, book, f"stream bucket fit {path.name} ({key[0]}/{key[1]})")
    return EncoderCost(models[key], book, f"stream fit {path.name} ({key[0]}/{key[1]})")


def _from_sweep(path: Path, encoder: str, impl: str | None) -> EncoderCost | None:
    data = load_results(path)
    impl = _pick_impl(sorted({r.impl for r in data["rows"] if r.encoder == encoder}), impl)
    if impl is None or data.get("kind", "gpu") != "gpu":
        return None
    call = replace(fit_cost_models(data, relative=True)[(encoder, impl)], source=f"{path} ({data['machine'].get('device_name', '?')})")
    rows = [r for r in data["rows"] if r.encoder == encoder and r.impl == impl]
    book = statistics.median(r.bookkeeping_ms_median for r in rows)
    return EncoderCost(call, book, f"sweep fit {path.name} ({encoder}/{impl})")


def _from_encoder_costs(folder: Path, encoder: str, impl: str | None) -> tuple[BucketCost, Path] | None:
    for path in _newest(folder, "encoder-costs-*.json"):
        found = _from_encoder_costs_file(path, encoder, impl)
        if found is not None:
            return found
    return None


def _from_encoder_costs_file(path: Path, encoder: str, impl: str | None) -> tuple[BucketCost, Path] | None:
    data = json.loads(path.read_text())
    settings = data.get("settings", {})
    if data.get("kind") == "gpu" and settings.get("encoder") == encoder and settings.get("impl") == (impl or DEFAULT_IMPL):
        return measured_bucket_cost(path)[0], path
    return None


def load_encoder_cost(folder: str | Path = STORED, encoder: str = DEFAULT_ENCODER, impl: str | None = None,
                      model: str = "measured", costs_file: str | Path | None = None) -> EncoderCost:
    """The encoder cost from the newest stored results in ``folder``.

    ``model``: ``"measured"`` (default) is the bucketed impl's ``BucketCost`` measured part by part
    (``encoder-costs-*.json``: each bucket graph's replay, the host's share of a call with host
    pixels), with the stream file's bookkeeping; without such a file it falls back, saying so in
    the source, to ``"bucket"``: the ``BucketCost`` fitted to a stream file's steps
    (``stream-*.json``); ``"line"`` the older ``CallCost`` line (always used for other impls and
    for GPU sweeps, ``vitkit.bench/1``, when no stream file has the encoder). ``costs_file``: this
    ``encoder-costs-*.json`` instead of the newest (e.g. the one measured on the card a
    validation ran on; ``model`` must be "measured").
    ValueError when no file has it."""
    if model not in ENCODER_MODELS:
        raise ValueError(f"model must be one of {ENCODER_MODELS}, got {model!r}")
    folder = Path(folder)
    if costs_file is not None and model != "measured":
        raise ValueError(f"costs_file {costs_file} is an encoder-costs file: model must be 'measured', got {model!r}")
    if model == "measured":
        base = load_encoder_cost(folder, encoder, impl, "bucket")
        if costs_file is not None:
            found = _from_encoder_costs_file(Path(costs_file), encoder, impl)
            if found is None:
                raise ValueError(f"{costs_file}: not a GPU encoder-costs file of encoder {encoder!r} impl {impl or DEFAULT_IMPL!r}")
        else:
            found = _from_encoder_costs(folder, encoder, impl) if folder.is_dir() else None
        if found is None:
            return replace(base, source=f"{base.source} (no encoder-costs file for {encoder}: stream fit)")
        cost, path = found
        return EncoderCost(cost, base.bookkeeping_ms, f"measured buckets {path.name} ({encoder}/{cost.impl})")
    for path in _newest(folder, "stream-*.json"):
        found = _from_stream(path, encoder, impl, model)
        if found is not None:
            return found
    for path in reversed(find_results(folder, kind="gpu") if folder.is_dir() else []):  # newest first
        found = _from_sweep(path, encoder, impl)
        if found is not None:
            return found
    raise ValueError(f"no stream-*.json or GPU bench results in {folder} has rows for encoder {encoder!r} impl {impl or 'any'!r}")


@dataclass(frozen=True)
class StepCosts:
    """The modelled parts of a step: encoder calls, language-model prefill, bookkeeping."""

    encoder: EncoderCost
    prefill: PrefillModel = field(default_factory=default_prefill)

    def label(self) -> str:
        return f"encoder: {self.encoder.source}; prefill: {prefill_source(self.prefill)}"


def prefill_windows(windows: Sequence[tuple[Any, int, int]]) -> list[tuple[int, int]]:
    """``(rid, start, stop)`` windows as the prefill model's ``(context_before, new_tokens)``."""
    return [(start, stop - start) for _, start, stop in windows if stop > start]


def call_item_rows(step: Any, result: EmbedResult, requests: Mapping[Hashable, Any]) -> list[list[int]]:
    """Per encoder call of the step, in call order, the embedding rows of each item it encoded
    (the lookups whose fate made the encode happen), read from ``result.outcomes``."""
    calls: list[list[int]] = [[] for _ in result.call_tokens]
    for window, outcomes in zip(step.windows, result.outcomes):
        items = requests[window.rid].items
        for o in outcomes:
            if o.fate in ENCODING_FATES:
                calls[o.call].append(items[o.index].num_tokens)
    if [sum(c) for c in calls] != list(result.call_tokens):
        raise ValueError(f"step {step.index}: items per call {calls} do not add up to the calls' rows {result.call_tokens}")
    return calls


class StepClock:
    """The replay's ``step_duration(step, result) -> ms``: each step's cost, also kept as
    ``StepTime`` rows (``times``) for the latency tables.

    Encoder ms come from ``encoder_timer`` when given (a real encoder's measured time, through
    its ``take_time()``), else from the cost model applied to the step's calls: each call's
    items' rows (from ``result.outcomes`` and ``requests``, what the bucket model packs), or
    without ``requests`` each call's total rows (``result.call_tokens``). Prefill ms from
    ``costs.prefill`` (model or GPU runner).

    ``shadow``: other costs applied to the very same steps (the GPU validation's open-loop check:
    what the models say of each measured step), kept per step in ``shadow_ms`` as
    ``(encoder_ms, prefill_ms, encoder item rows per call)``.
    """

    def __init__(self, costs: StepCosts, encoder_timer: TimedEncoderLike | None = None,
                 requests: Mapping[Hashable, Any] | None = None, shadow: StepCosts | None = None) -> None:
        self.costs = costs
        self.encoder_timer = encoder_timer
        self.requests = requests
        self.shadow = shadow
        self.times: list[StepTime] = []
        self.shadow_ms: list[tuple[float, float, list]] = []

    def _calls(self, step: Any, result: EmbedResult) -> list[int] | list[list[int]]:
        if self.requests is None:
            return list(result.call_tokens)
        return call_item_rows(step, result, self.requests)

    def __call__(self, step: Any, result: EmbedResult) -> float:
        windows = tuple((w.rid, w.start, w.stop) for w in step.windows)
        # the step's calls are read from its outcomes once, for the model and the shadow alike
        calls = self._calls(step, result) if self.encoder_timer is None or self.shadow is not None else None
        if self.encoder_timer is not None:
            encoder_ms = self.encoder_timer.take_time().reported_ms
        else:
            encoder_ms = self.costs.encoder.step_ms(calls)
        pairs = prefill_windows(windows)
        prefill_ms = self.costs.prefill.step_ms(pairs) if pairs else 0.0
        if self.shadow is not None:
            self.shadow_ms.append((self.shadow.encoder.step_ms(calls), self.shadow.prefill.step_ms(pairs) if pairs else 0.0, calls))
        book = self.costs.encoder.bookkeeping_ms if windows else 0.0
        st = StepTime(step.index, step.time_ms, encoder_ms, prefill_ms, book, windows, tuple(step.finished))
        self.times.append(st)
        return st.duration_ms
