"""What every vitkit encoder shares: item checks, bucketed padded calls, graphs, counters.

``impl`` is the one switch (nano-vllm's ``enforce_eager``): ``"vitkit"`` pads each call to a token bucket
(on CUDA compiled and replayed from one CUDA graph per bucket); ``"vitkit-eager"`` runs the same fused
layers unpadded, no compile, no graphs; ``"stock"`` is the transformers forward (sdpa), the baseline.
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
    """Counters over an encoder's calls (not its warm-up), in embedding rows; ``unbucketed``: runs without
    a bucket (too large, window overflow, unbucketed impl); ``compiles``/``captures``: zero after warmup."""

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
    """What ``warmup`` did; ``pool_bytes``: CUDA memory it reserved; ``bucket_seconds``: largest first."""

    seconds: float
    buckets: int
    compiles: int
    captures: int
    pool_bytes: int
    bucket_seconds: tuple[tuple[int, float], ...]


class VisionEncoder:
    """A vision tower as ``encoder(items) -> list[Tensor]``, each (item.num_tokens, hidden_size) on ``device``.
    ``model``'s q/k/v and gate/up parameters view the ``fused`` buffers: every impl reads the same memory."""

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
        """The same tower with another ``impl`` and/or ``dtype``: the same weights' memory when the dtype
        is unchanged, otherwise a cast copy fused anew."""
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
        return None if self.buckets is None else self.units_to_rows(self.buckets.largest)

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
            # No bucket holds it (or its layout overflows the buffers): unpadded and eager, never a compile.
            return self.forward_eager(*self._batch_input(group)), self._record(group, None)
        args, fn = self.bucket_args(p.bucket), self.bucket_fn(p.bucket)
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
        self.stats.unbucketed += bucket is None
        self.stats.packs += bucket is not None
        return PackRecord(len(group), real, padded, bucket, bucket is not None and self.graphs is not None)

    def warmup(self, progress: bool = True) -> WarmupReport:
        """Compile and capture every bucket now, largest first (smaller graphs reuse its pool memory)."""
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
        """The tower's default bucket set for ``preset`` (the one definition of it)."""
        raise NotImplementedError

    def units_to_rows(self, units: int) -> int:
        """Embedding rows that ``units`` bucket units produce."""
        raise NotImplementedError

    def item_units(self, k: int, item: MultimodalItem) -> int:
        """Check item ``k`` and return its size in bucket units."""
        raise NotImplementedError

    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fill(self, group: list[MultimodalItem], bucket: int) -> bool:
        """Write ``group`` (empty: warm-up) padded to ``bucket`` into the static buffers; False: no fit."""
        raise NotImplementedError

    def bucket_args(self, bucket: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def bucket_fn(self, bucket: int):
        raise NotImplementedError

    def _batch_input(self, items: list[MultimodalItem]) -> tuple:
        raise NotImplementedError

    def forward(self, *args) -> torch.Tensor:
        """The unpadded batched forward of ``impl`` on device tensors."""
        raise NotImplementedError

    def forward_eager(self, *args) -> torch.Tensor:
        """The unpadded fused forward without compile (for packs no bucket holds)."""
        raise NotImplementedError

    # --- shared helpers ------------------------------------------------------------------------
    def _bad_item(self, k: int, item: MultimodalItem, problem: str) -> ValueError:
        return ValueError(f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) {problem}")

    def _split_rows(self, items: list[MultimodalItem], out: torch.Tensor) -> list[torch.Tensor]:
        counts = [item.num_tokens for item in items]
        if out.shape[0] != sum(counts):
            raise ValueError(f"encoder {self.name!r}: produced {out.shape[0]} rows for {len(items)} items whose "
                             f"num_tokens sum to {sum(counts)} (per item: {counts})")
        return list(torch.split(out, counts))

    def gather_features(self, items: list[MultimodalItem], combine: str) -> torch.Tensor:
        """The items' features combined (``combine``: "stack" or "cat") on the device, in the encoder's dtype;
        host features are joined by one thread and moved in one copy per batch (``vitkit.encoders.staging``)."""
        if all(item.feature.device == self.device for item in items):
            join = torch.stack if combine == "stack" else torch.cat
            return join([item.feature for item in items]).to(self.dtype)
        parts = [item.cpu_feature if item.cpu_feature is not None else item.feature.cpu() for item in items]
        if self.device.type != "cuda":
            return join_host(parts, combine, pin=False).to(self.device, self.dtype)
        if self.staging is None:
            self.staging = HostStaging(self.device)
        return self.staging.stage(parts, combine).to(self.dtype)

