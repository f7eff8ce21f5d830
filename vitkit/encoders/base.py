"""What every vitkit encoder shares: item checks, bucketed padded calls, graphs, counters.

``impl`` is the one switch (nano-vllm's ``enforce_eager``):
- ``"vitkit"``: fused layers over the tower's weights; each call is packed into token buckets
  (``vitkit.encoders.buckets``) and padded to one; on CUDA the bucket's forward is
  ``torch.compile``d and replayed from a CUDA graph captured once per bucket (``warmup()`` does
  them all up front). Elsewhere the same padded forward runs eagerly.
- ``"vitkit-eager"``: the same fused layers, unpadded, no compile, no graphs (the ablation).
- ``"stock"``: the transformers model's own forward (sdpa), the eager baseline.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch._dynamo.utils import counters
from tqdm.auto import tqdm

from vitkit.encoders.buckets import Buckets, Pack, pack
from vitkit.encoders.fused import fuse_tower
from vitkit.encoders.graphs import GraphCache
from vitkit.encoders.presets import EncoderPreset
from vitkit.encoders.staging import HostStaging, join_host
from vitkit.item import MultimodalItem

IMPLS = ("vitkit", "vitkit-eager", "stock")


def dynamo_compiles() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's own counter)."""
    return int(counters["stats"]["unique_graphs"])


@dataclass
class EncoderStats:
    """Counters over an encoder's calls (not its warm-up). Rows are embedding rows.

    ``packs``: bucketed runs (graph replays on CUDA); ``unbucketed``: runs without a bucket (an
    item larger than the largest bucket, a layout over a graph's window capacity, or an impl
    that does not bucket); ``padded_rows``: rows computed for padding and dropped;
    ``compiles`` / ``captures``: new compiled graphs / CUDA graphs made during calls (zero after
    ``warmup`` on any stream).
    """

    calls: int = 0
    packs: int = 0
    unbucketed: int = 0
    real_rows: int = 0
    padded_rows: int = 0
    compiles: int = 0
    captures: int = 0

    def copy(self) -> EncoderStats:
        return copy.copy(self)

    def __sub__(self, other: EncoderStats) -> EncoderStats:
        return EncoderStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class PackRecord:
    """One run inside a call: items, real and padded embedding rows, bucket (None: unbucketed)."""

    items: int
    real_rows: int
    padded_rows: int
    bucket: int | None
    graphed: bool


@dataclass(frozen=True)
class WarmupReport:
    """What ``warmup`` did: seconds, buckets readied, compiles and captures, graph-pool bytes
    (CUDA memory reserved by the warm-up), and seconds per bucket, largest first."""

    seconds: float
    buckets: int
    compiles: int
    captures: int
    pool_bytes: int
    bucket_seconds: tuple[tuple[int, float], ...]


class VisionEncoder:
    """A vision tower as vitkit's encoder contract: ``encoder(items) -> list[Tensor]``.

    Each returned tensor is (item.num_tokens, hidden_size) on ``device``; which rows they are is
    the preset's ``rows_note``. ``model`` holds the weights (its q/k/v and gate/up parameters are
    views of the ``fused`` per-layer buffers, built where the weights were loaded); every impl
    reads the same memory. Subclasses define the tower's bucket units, buffers and forwards.
    """

    def __init__(self, preset: EncoderPreset, model: nn.Module, impl: str, *,
                 fused: Sequence[tuple[torch.Tensor, ...]], buckets: Buckets | None = None) -> None:
        if impl not in IMPLS:
            raise ValueError(f"encoder {preset.name!r}: impl must be one of {IMPLS}, got {impl!r}")
        self.preset = preset
        self.model = model.eval()
        self.impl = impl
        self.fused = tuple(fused)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.accelerated = impl == "vitkit" and self.device.type == "cuda"
        self.buckets = (buckets or self.buckets_for(preset)) if impl == "vitkit" else None
        self.graphs = GraphCache() if self.accelerated else None
        self.stats = EncoderStats()
        self.last_call: tuple[PackRecord, ...] = ()
        self._buffers: dict[str, torch.Tensor] | None = None
        self.staging: HostStaging | None = None  # made by the first call that stages host features

    name = property(lambda self: self.preset.name)
    config = property(lambda self: self.model.config, doc="The transformers vision config.")
    hidden_size = property(lambda self: self.preset.hidden_size, doc="Width of each embedding row.")
    variable_resolution = property(lambda self: self.preset.variable_resolution)
    patch_size = property(lambda self: self.preset.patch_size)
    compiled = property(lambda self: self.accelerated, doc="Bucket forwards are torch.compile'd.")
    cuda_graphs = property(lambda self: self.accelerated, doc="Bucket forwards replay CUDA graphs.")

    def variant(self, *, impl: str | None = None, dtype: torch.dtype | None = None) -> VisionEncoder:
        """The same tower with another ``impl`` and/or ``dtype``: shares this one's weights when the
        dtype is unchanged (an A/B of stock vs vitkit over the very same memory), otherwise a cast
        copy fused anew (e.g. a float32 reference and its bf16 twin with equal weights)."""
        model, fused = self.model, self.fused
        if dtype is not None and dtype != self.dtype:
            model = copy.deepcopy(model).to(dtype)
            fused = fuse_tower(self.preset, model)
        buckets = self.buckets if impl in (None, "vitkit") else None
        return type(self)(self.preset, model, impl or self.impl, fused=fused, buckets=buckets)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, impl={self.impl!r}, device={self.device}, "
                f"dtype={self.dtype}, hidden_size={self.hidden_size}, buckets={self.buckets and self.buckets.sizes}, "
                f"graphs={self.accelerated})")

    @property
    def max_tokens_per_call(self) -> int | None:
        """Embedding rows of the largest bucket: no bucketed run computes more (None: unbucketed)."""
        if self.buckets is None:
            return None
        return self.units_to_rows(self.buckets.largest)

    @torch.inference_mode()
    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        items = list(items)
        if not items:
            return []
        for k, item in enumerate(items):
            if not isinstance(item, MultimodalItem):
                raise TypeError(f"encoder {self.name!r}: item {k} is {type(item).__name__}, not a MultimodalItem")
        units = [self.item_units(k, item) for k, item in enumerate(items)]
        compiles, captures = dynamo_compiles(), self.graphs.captures if self.graphs else 0
        if self.buckets is None:
            out, records = self._split_rows(items, self.forward(*self._batch_input(items))), [self._record(items, None)]
        else:
            out, records = self._call_bucketed(items, units)
        self.stats.calls += 1
        self.stats.compiles += dynamo_compiles() - compiles
        self.stats.captures += (self.graphs.captures if self.graphs else 0) - captures
        self.last_call = tuple(records)
        return out

    def _call_bucketed(self, items: list[MultimodalItem], units: list[int]):
        out: list[torch.Tensor | None] = [None] * len(items)
        records = []
        for p in pack(units, self.buckets):
            group = [items[k] for k in p.indices]
            rows, record = self._run_pack(group, p)
            records.append(record)
            for k, t in zip(p.indices, self._split_rows(group, rows)):
                out[k] = t
        return out, records

    def _run_pack(self, group: list[MultimodalItem], p: Pack) -> tuple[torch.Tensor, PackRecord]:
        real_rows = sum(item.num_tokens for item in group)
        if p.bucket is None or not self.fill(group, p.bucket):
            # No bucket holds it (or its layout overflows the bucket's buffers): unpadded, eager,
            # uncompiled, so it never triggers a compile. Exact, just slower.
            return self.forward_eager(*self._batch_input(group)), self._record(group, None)
        args = self.bucket_args(p.bucket)
        fn = self.bucket_fn(p.bucket)
        if self.graphs is not None:
            rows = self.graphs.run(p.bucket, fn, args)[:real_rows].clone()  # next replay overwrites it
        else:
            rows = fn(*args)[:real_rows]
        return rows, self._record(group, p.bucket)

    def _record(self, group: list[MultimodalItem], bucket: int | None) -> PackRecord:
        real = sum(item.num_tokens for item in group)
        padded = 0 if bucket is None else self.units_to_rows(bucket) - real
        self.stats.real_rows += real
        self.stats.padded_rows += padded
        if bucket is None:
            self.stats.unbucketed += 1
        else:
            self.stats.packs += 1
        return PackRecord(len(group), real, padded, bucket, bucket is not None and self.graphs is not None)

    def warmup(self, progress: bool = True) -> WarmupReport:
        """Compile and capture every bucket now (largest first, so smaller graphs reuse its pool
        memory): after this, a stream of any length causes no compile and no capture."""
        if self.graphs is None:  # eager or off CUDA: nothing to compile or capture
            return WarmupReport(0.0, 0, 0, 0, 0, ())
        torch.cuda.synchronize(self.device)
        reserved = torch.cuda.memory_reserved(self.device)
        compiles, captures, start, per_bucket = dynamo_compiles(), self.graphs.captures, time.perf_counter(), []
        for bucket in tqdm(sorted(self.buckets.sizes, reverse=True), desc=f"warm-up {self.name}", disable=not progress):
            t0 = time.perf_counter()
            with torch.inference_mode():
                self.fill([], bucket)
                self.graphs.capture(bucket, self.bucket_fn(bucket), self.bucket_args(bucket))
            torch.cuda.synchronize(self.device)
            per_bucket.append((bucket, time.perf_counter() - t0))
        pool = torch.cuda.memory_reserved(self.device) - reserved
        # captures made now, not graphs held: buckets captured by earlier calls cost nothing here
        return WarmupReport(time.perf_counter() - start, len(self.buckets.sizes), dynamo_compiles() - compiles,
                            self.graphs.captures - captures, pool, tuple(per_bucket))

    def buffer(self, name: str) -> torch.Tensor:
        """A static input buffer sized for the largest bucket (allocated on first use)."""
        if self._buffers is None:
            self._buffers = self.allocate_buffers()
        return self._buffers[name]

    # --- what a tower defines ------------------------------------------------------------------
    @staticmethod
    def buckets_for(preset: EncoderPreset) -> Buckets:
        """The tower's measured default bucket set for ``preset`` (the one definition of it)."""
        raise NotImplementedError

    def units_to_rows(self, units: int) -> int:
        """Embedding rows that ``units`` bucket units produce (patches / 4, or images x rows)."""
        raise NotImplementedError

    def item_units(self, k: int, item: MultimodalItem) -> int:
        """Check item ``k`` and return its size in bucket units."""
        raise NotImplementedError

    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fill(self, group: list[MultimodalItem], bucket: int) -> bool:
        """Write ``group`` (possibly empty: warm-up) padded to ``bucket`` into the static buffers;
        False if the group's layout does not fit them (then the pack runs unbucketed)."""
        raise NotImplementedError

    def bucket_args(self, bucket: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def bucket_fn(self, bucket: int):
        raise NotImplementedError

    def _batch_input(self, items: list[MultimodalItem]) -> tuple:
        raise NotImplementedError

    def forward(self, *args) -> torch.Tensor:
        """The unpadded batched forward of ``impl`` on device tensors (subclasses document shapes)."""
        raise NotImplementedError

    def forward_eager(self, *args) -> torch.Tensor:
        """The unpadded fused forward without compile (for packs no bucket holds)."""
        raise NotImplementedError

    # --- shared helpers ------------------------------------------------------------------------
    def _split_rows(self, items: list[MultimodalItem], out: torch.Tensor) -> list[torch.Tensor]:
        """Split the packed (sum rows, hidden) output per item, checking each count."""
        counts = [item.num_tokens for item in items]
        if out.shape[0] != sum(counts):
            raise ValueError(
                f"encoder {self.name!r}: produced {out.shape[0]} rows for {len(items)} items whose "
                f"num_tokens sum to {sum(counts)} (per item: {counts})"
            )
        return list(torch.split(out, counts))

    def gather_features(self, items: list[MultimodalItem], combine: str) -> torch.Tensor:
        """The items' features combined on the encoder's device (``combine``: "stack" or "cat").

        Features already on the device are combined there. Otherwise the CPU copies
        (``item.cpu_feature``) are combined on the host by one thread and, on CUDA, into the
        encoder's page-locked staging buffer, then moved in one non-blocking copy: one transfer
        per batch instead of one per item (``vitkit.encoders.staging`` says why one thread and
        one buffer). The result is cast to the encoder's dtype on the device (the host copy stays
        float32).
        """
        if all(item.feature.device == self.device for item in items):
            join = torch.stack if combine == "stack" else torch.cat
            return join([item.feature for item in items]).to(self.dtype)
        parts = [item.cpu_feature if item.cpu_feature is not None else item.feature.cpu() for item in items]
        if self.device.type != "cuda":
            return join_host(parts, combine, pin=False).to(self.device, self.dtype)
        if self.staging is None:
            self.staging = HostStaging(self.device)
        return self.staging.stage(parts, combine).to(self.dtype)

