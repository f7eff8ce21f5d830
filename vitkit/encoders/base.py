"""What every vitkit encoder shares: item checks, bucketed padded calls, graphs, counters.

A bucketed call splits what no bucket holds where the tower allows it (a video, at frame-group boundaries:
``split_for_buckets``), packs the pieces, and joins each item's rows back: one tensor per item, and no
pack larger than the largest bucket. An item that cannot split (an image) over the largest bucket takes a
large bucket (``Buckets.large``), captured on first use.

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
    a bucket (too large, window overflow, unbucketed impl); ``large``: packs in a large bucket (also
    counted in ``packs``); ``split_items``: items split over packs (videos over the largest bucket);
    ``compiles``/``captures``: zero after warmup (large buckets: after ``warmup(large=True)``)."""

    calls: int = 0
    packs: int = 0
    unbucketed: int = 0
    large: int = 0
    split_items: int = 0
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
    """One run inside a call: items (each frame group of a split video counts one), real and padded
    embedding rows, bucket (a regular or large one; None: unbucketed)."""

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
        self._buffers: dict[str, torch.Tensor] | None = None  # static inputs, for ``buffer_units``
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
        """Embedding rows of the largest bucket: no bucketed pack of several items computes more, and a
        video is split to fit it (None: unbucketed). One image over it runs alone in a large bucket."""
        return None if self.buckets is None else self.units_to_rows(self.buckets.largest)

    @property
    def buffer_units(self) -> int:
        """Units the static input buffers hold: the largest large bucket, else the largest bucket."""
        return (self.buckets.large or self.buckets.sizes)[-1]

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
        pieces, owners = [], []
        for k, item in enumerate(items):
            parts = self.split_for_buckets(k, item, units[k])
            self.stats.split_items += len(parts) > 1
            pieces += parts
            owners += [k] * len(parts)
        piece_units = [self.item_units(owners[j], piece) for j, piece in enumerate(pieces)]
        sequences = [self.item_sequences(owners[j], piece) for j, piece in enumerate(pieces)]
        rows_of: list[torch.Tensor | None] = [None] * len(pieces)
        records = []
        for p in pack(piece_units, self.buckets, sequences):
            group = [pieces[j] for j in p.indices]
            rows, record = self._run_pack(group, p)
            records.append(record)
            for j, t in zip(p.indices, self._split_rows(group, rows)):
                rows_of[j] = t
        return _join(rows_of, owners, len(items)), records

    def _run_pack(self, group: list[MultimodalItem], p: Pack) -> tuple[torch.Tensor, PackRecord]:
        real_rows = sum(item.num_tokens for item in group)
        bucket = p.bucket
        if bucket is None and self.item_sequences(0, group[0]) <= self.buckets.max_items:
            bucket = self.buckets.pick_large(p.size)  # one item over the largest bucket: a large one, if any
        if bucket is None or not self.fill(group, bucket):
            # No bucket holds it (over the large buckets' cap, or its layout overflows the buffers):
            # unpadded and eager, never a compile.
            return self.forward_eager(*self._batch_input(group)), self._record(group, None)
        args, fn = self.bucket_args(bucket), self.bucket_fn(bucket)
        if self.graphs is not None:
            rows = self.graphs.run(bucket, fn, args)[:real_rows].clone()  # next replay overwrites it
        else:
            rows = fn(*args)[:real_rows]
        return rows, self._record(group, bucket)

    def _record(self, group: list[MultimodalItem], bucket: int | None) -> PackRecord:
        real = sum(item.num_tokens for item in group)
        padded = 0 if bucket is None else self.units_to_rows(bucket) - real
        self.stats.real_rows += real
        self.stats.padded_rows += padded
        self.stats.unbucketed += bucket is None
        self.stats.packs += bucket is not None
        self.stats.large += bucket is not None and bucket > self.buckets.largest
        return PackRecord(len(group), real, padded, bucket, bucket is not None and self.graphs is not None)

    def warmup(self, progress: bool = True, large: bool = False) -> WarmupReport:
        """Compile and capture every bucket now, largest first (smaller graphs reuse its pool memory);
        ``large``: the large buckets too (otherwise each is captured by the first item that needs it, and
        the graph pool grows to its size then)."""
        if self.graphs is None:  # eager or off CUDA: nothing to compile or capture
            return WarmupReport(0.0, 0, 0, 0, 0, ())
        torch.cuda.synchronize(self.device)
        reserved = torch.cuda.memory_reserved(self.device)
        compiles, captures, start, per_bucket = dynamo_compiles(), self.graphs.captures, time.perf_counter(), []
        sizes = sorted((*self.buckets.sizes, *(self.buckets.large if large else ())), reverse=True)
        for bucket in tqdm(sizes, desc=f"warm-up {self.name}", disable=not progress):
            t0 = time.perf_counter()
            with torch.inference_mode():
                self.fill([], bucket)
                self.graphs.capture(bucket, self.bucket_fn(bucket), self.bucket_args(bucket))
            torch.cuda.synchronize(self.device)
            per_bucket.append((bucket, time.perf_counter() - t0))
        pool = torch.cuda.memory_reserved(self.device) - reserved
        # captures made now, not graphs held: buckets captured by earlier calls cost nothing here
        return WarmupReport(time.perf_counter() - start, len(sizes), dynamo_compiles() - compiles,
                            self.graphs.captures - captures, pool, tuple(per_bucket))

    def buffer(self, name: str) -> torch.Tensor:
        """A static input buffer sized for ``buffer_units`` (allocated on first use)."""
        if self._buffers is None:
            buffers = self.allocate_buffers()
            held = next(iter(buffers.values())).shape[0]
            if self.buckets.large and held < self.buffer_units:  # a tower that sizes by the largest bucket only
                raise ValueError(f"encoder {self.name!r}: its buffers hold {held} units but the large buckets need "
                                 f"{self.buffer_units}; size them by buffer_units, or pass buckets.capped(0)")
            self._buffers = buffers
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

    def item_sequences(self, k: int, item: MultimodalItem) -> int:
        """What item ``k`` counts against ``buckets.max_items``: one (Qwen: its full-attention sequences)."""
        return 1

    def split_for_buckets(self, k: int, item: MultimodalItem, units: int) -> list[MultimodalItem]:
        """Item ``k`` (of ``units``) as pieces that each fit a bucket, whose rows concatenate to the item's;
        ``[item]`` where the tower cannot split it."""
        return [item]

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


def _join(rows: list[torch.Tensor], owners: list[int], count: int) -> list[torch.Tensor]:
    """Per item, the rows of its pieces in order (``owners[j]``: the item piece ``j`` came from)."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(count)]
    for owner, t in zip(owners, rows):
        parts[owner].append(t)
    return [p[0] if len(p) == 1 else torch.cat(p) for p in parts]
