"""Qwen2.5-VL vision tower: a batch of images of different sizes is one packed forward.

Rows are all images' patches; ``cu_seqlens`` (per image) and ``cu_window_seqlens`` (per window) come from
transformers' ``get_vision_*`` helpers. ``impl="vitkit"`` runs one varlen attention per layer for the whole
batch (stock sdpa loops per window). Bucket unit: the patch; padding rows are sequences of their own and
the layout lives in static buffers, so one CUDA graph per bucket serves every split. Full attention's
``max_seqlen`` is the bucket (the flash kernel only sizes its grid by it).

Videos go through the same call: ``get_vision_*`` repeat a frame's h*w full-attention sequence and its
windows over the t temporal patches (as transformers' tower does for ``video_grid_thw``), so attention
never crosses a temporal patch. A video over the largest bucket is therefore split into frame groups
(``vitkit.item.frame_groups``) over several packs, row for row equal to the whole video. An image over
the largest bucket runs alone in a large bucket (``QWEN_LARGE_BUCKETS``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from vitkit.encoders.attention import VARLEN_DTYPES
from vitkit.encoders.base import VisionEncoder
from vitkit.encoders.buckets import Buckets, geometric_sizes, video_pieces
from vitkit.encoders.fused import compile_layer, fused_qwen_block
from vitkit.item import GRID_KEYS, MultimodalItem, frame_groups

LAYOUT_CACHE_SIZE = 64

# Patches: 256, 512, then steps of 1024 up to 16384 (4096 rows, 16 x 448 px): low padding with few
# graphs against powers of two, steps of 2048 and x1.25 (figures in results/README.md). 32 images a
# call bounds the full-attention sequence count baked into the graphs.
# Large buckets, one image each, above 16384 patches up to the processor's max_pixels (28*28*16384 px =
# 65536 patches, 12.8 MP): every image it allows. Steps of at most 1/8, so an image pads by under 12.5%
# (a per-row cost within 1.15x of the largest regular graph's needs little padding; full attention's
# quadratic share grows on its own). 65536 is the memory cap: the graph pool grows to the largest one
# captured and the static buffers hold 65536 patches. ``build_encoder(..., buckets=default_buckets(name)
# .capped(cap))`` lowers it (``capped(0)``: none, images over 16384 patches run eager).
QWEN_LARGE_BUCKETS = geometric_sizes(16384, 65536, 1 / 8, multiple=1024)
QWEN_BUCKETS = Buckets((256, 512, *range(1024, 16385, 1024)), max_items=32, multiple=4, large=QWEN_LARGE_BUCKETS)
TINY_QWEN_BUCKETS = Buckets((16, 32, 64, 128, 256, 512, 1024), max_items=32, multiple=4)


@dataclass(frozen=True)
class PackedLayout:
    """Index tensors of one packed batch, rows in window order: ``window_index`` / ``reverse_index``
    permute merge units into / out of it; ``position_ids``: (rows, 2) rotary (h, w); int32 cu_seqlens."""

    window_index: torch.Tensor
    reverse_index: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cu_window_seqlens: torch.Tensor
    max_seqlen: int
    max_window_seqlen: int

    def to(self, device: torch.device) -> PackedLayout:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedLayout(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                               for k, v in values.items()})


def packed_layout(grid_thw: torch.Tensor, config) -> PackedLayout:
    """Layout of a packed batch of images with grids ``grid_thw`` ((n, 3) patches), on the CPU."""
    grid_thw = grid_thw.to("cpu", torch.long)
    merge = config.spatial_merge_size
    unit = merge * merge
    window_index, cu_window = get_vision_window_index(grid_thw, spatial_merge_size=merge,
                                                      window_size=config.window_size, patch_size=config.patch_size)
    cu_full = get_vision_cu_seqlens(grid_thw).to(torch.int32)
    position_ids = get_vision_position_ids(grid_thw, merge)
    rows = position_ids.shape[0]
    position_ids = position_ids.view(rows // unit, unit, 2)[window_index].reshape(rows, 2)
    return PackedLayout(window_index=window_index, reverse_index=torch.argsort(window_index), position_ids=position_ids,
                        cu_seqlens=cu_full, cu_window_seqlens=cu_window.to(torch.int32),
                        max_seqlen=int(torch.diff(cu_full).max()), max_window_seqlen=int(torch.diff(cu_window).max()))


class QwenVisionEncoder(VisionEncoder):
    """Qwen2.5-VL tower. Item feature: flattened patches (grid_t*grid_h*grid_w, 3*2*14*14) as
    Qwen2VLImageProcessor (or its video processor) emits them; ``item.meta["image_grid_thw"]`` (a video's
    ``"video_grid_thw"``) holds (t, h, w) in patches. ``buckets.max_items`` counts full-attention
    sequences: one per image, one per temporal patch of a video."""

    # The block function and its attention kinds (window, full); Qwen3-VL's tower subclasses with its own.
    block = staticmethod(fused_qwen_block)
    attention_kinds = 2

    def __init__(self, preset, model, impl, **kwargs) -> None:
        super().__init__(preset, model, impl, **kwargs)
        if self.accelerated and self.dtype not in VARLEN_DTYPES:
            # A graph cannot hold the float32 reference attention (it reads cu_seqlens on the host).
            raise ValueError(f"encoder {preset.name!r}: impl='vitkit' on CUDA needs fp16/bf16 (the varlen "
                             f"attention kernel), got {self.dtype}; use impl='vitkit-eager' for {self.dtype}")
        cfg = model.config
        self.unit = cfg.spatial_merge_size**2  # patches per embedding row
        # One compiled graph per bucket and attention kind serves all 32 blocks (weights are arguments).
        variants = self.attention_kinds * (len(self.buckets.sizes) + len(self.buckets.large)) + 2 if self.buckets else 0
        self.block_fn = compile_layer(self.block, variants) if self.accelerated else self.block
        self._layouts: OrderedDict[tuple, PackedLayout] = OrderedDict()
        self._padded: OrderedDict[tuple, dict[str, torch.Tensor] | None] = OrderedDict()

    @property
    def window_rows(self) -> int:
        """Patches in a full attention window."""
        cfg = self.model.config
        return (cfg.window_size // cfg.patch_size) ** 2

    @staticmethod
    def buckets_for(preset) -> Buckets:
        return TINY_QWEN_BUCKETS if preset.tiny else QWEN_BUCKETS

    def units_to_rows(self, units: int) -> int:
        return units // self.unit

    def item_units(self, k: int, item: MultimodalItem) -> int:
        t, h, w = self._item_grid(k, item)
        return t * h * w

    def item_sequences(self, k: int, item: MultimodalItem) -> int:
        return self._item_grid(k, item)[0]  # cu_seqlens holds one full-attention sequence per temporal patch

    def split_for_buckets(self, k: int, item: MultimodalItem, units: int) -> list[MultimodalItem]:
        """A video over the largest bucket (or over ``max_items`` temporal patches) as frame groups that each
        fit it, by ``video_pieces`` (the cost model splits by it too); other items whole."""
        t, h, w = self._item_grid(k, item)
        if item.modality != "video":
            return [item]
        pieces = video_pieces(t, h * w, self.buckets)
        if len(pieces) == 1:
            return [item]
        return frame_groups(item, pieces[0][1], hash_content=False)  # pieces never reach a cache: no hashing

    def _batch_input(self, items: list[MultimodalItem]) -> tuple[torch.Tensor, torch.Tensor]:
        grids = [self._item_grid(k, item) for k, item in enumerate(items)]
        return self.gather_features(items, "cat"), torch.tensor(grids, dtype=torch.long)

    def _item_grid(self, k: int, item: MultimodalItem) -> tuple[int, int, int]:
        cfg = self.model.config
        key = GRID_KEYS[item.modality]
        grid = (item.meta or {}).get(key)
        if grid is None:
            raise self._bad_item(k, item, f"({item.modality}) has no meta[{key!r}]")
        t, h, w = (int(v) for v in torch.as_tensor(grid).reshape(-1).tolist())
        width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        merge = cfg.spatial_merge_size
        if tuple(item.feature.shape) != (t * h * w, width):
            raise self._bad_item(k, item, f"has feature shape {tuple(item.feature.shape)}, "
                                          f"expected {(t * h * w, width)} for grid {(t, h, w)}")
        if h % merge or w % merge or item.num_tokens != t * h * w // merge**2:
            raise self._bad_item(k, item, f"grid {(t, h, w)} gives {t * h * w // merge**2} rows (h, w must be "
                                          f"multiples of {merge}), item says num_tokens={item.num_tokens}")
        return t, h, w

    # --- unpadded paths (vitkit-eager, stock, and packs no bucket holds) -------------------------
    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (rows, 1176) on device, grid_thw (n, 3) -> (sum of t*h*w/4, out_hidden)."""
        if self.impl == "stock":
            return self.model(hidden_states=patches, grid_thw=grid_thw.to(self.device)).pooler_output
        return self.forward_eager(patches, grid_thw)

    def forward_eager(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.forward_packed(patches, self.layout(grid_thw), self.block)

    def layout(self, grid_thw: torch.Tensor) -> PackedLayout:
        """Device layout for these grids, cached (least recently used) by the grid list."""
        return _lru(self._layouts, tuple(map(tuple, grid_thw.tolist())),
                    lambda: packed_layout(grid_thw, self.model.config).to(self.device))

    def forward_packed(self, patches: torch.Tensor, layout: PackedLayout, block_fn=None) -> torch.Tensor:
        """The tower on packed patches with a precomputed layout (no host sync inside)."""
        return self._tower(patches, layout.window_index, layout.reverse_index, layout.position_ids,
                           layout.cu_seqlens, layout.max_seqlen, layout.cu_window_seqlens, layout.max_window_seqlen,
                           block_fn or fused_qwen_block)

    def _tower(self, patches, window_index, reverse_index, position_ids, cu_full, max_full, cu_window,
               max_window, block_fn) -> torch.Tensor:
        model = self.model
        weight = model.patch_embed.proj.weight
        # Conv3d with stride == kernel over (C, T, P, P) patches is this matmul, same weights.
        x = F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1))
        rows = x.shape[0]
        x = x.view(rows // self.unit, self.unit, -1)[window_index].reshape(rows, -1)
        cos, sin = model.rotary_pos_emb(x, position_ids)
        full = set(model.fullatt_block_indexes)
        heads, eps = model.config.num_heads, model.blocks[0].norm1.variance_epsilon
        for i, weights in enumerate(self.fused):
            cu, max_len = (cu_full, max_full) if i in full else (cu_window, max_window)
            x = block_fn(x, cu, max_len, cos, sin, heads, eps, *weights)
        return model.merger(x)[reverse_index]

    # --- the bucketed path ---------------------------------------------------------------------
    def window_capacity(self, bucket: int) -> int:
        """Window sequences a bucket's graph holds (real windows plus the padding's); more runs unbucketed."""
        return bucket // 16 + bucket // self.window_rows + 2 * self.buckets.max_items + 2

    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        cfg, largest, dev = self.model.config, self.buffer_units, self.device
        width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        return {
            "patches": torch.zeros(largest, width, device=dev, dtype=self.dtype),
            "window_index": torch.zeros(largest // self.unit, device=dev, dtype=torch.long),
            "reverse_index": torch.zeros(largest // self.unit, device=dev, dtype=torch.long),
            "position_ids": torch.zeros(largest, 2, device=dev, dtype=torch.long),
            "cu_full": torch.zeros(self.buckets.max_items + 2, device=dev, dtype=torch.int32),
            "cu_window": torch.zeros(self.window_capacity(largest) + 1, device=dev, dtype=torch.int32),
        }

    def bucket_args(self, bucket: int) -> tuple[torch.Tensor, ...]:
        units, b = bucket // self.unit, self.buffer
        return (b("patches")[:bucket], b("window_index")[:units], b("reverse_index")[:units],
                b("position_ids")[:bucket], b("cu_full"), b("cu_window")[: self.window_capacity(bucket) + 1])

    def bucket_fn(self, bucket: int):
        def run(patches, window_index, reverse_index, position_ids, cu_full, cu_window):
            return self._tower(patches, window_index, reverse_index, position_ids, cu_full, bucket,
                               cu_window, self.window_rows, self.block_fn)
        return run

    def fill(self, group: list[MultimodalItem], bucket: int) -> bool:
        layout = self._padded_layout(group, bucket)
        if layout is None:
            return False
        patches, real = self.buffer("patches"), sum(item.feature.shape[0] for item in group)
        if group:
            patches[:real].copy_(self.gather_features(group, "cat"))
        patches[real:bucket].zero_()  # finite padding; its rows are cut
        for name, values in layout.items():
            self.buffer(name)[: values.shape[0]].copy_(values)
        return True

    def _padded_layout(self, group: list[MultimodalItem], bucket: int) -> dict[str, torch.Tensor] | None:
        """Device ``host_padded_layout`` of ``group`` in ``bucket``, LRU-cached; None if it overflows."""
        grids = tuple(self._item_grid(k, item) for k, item in enumerate(group))

        def make() -> dict[str, torch.Tensor] | None:
            layout = self.host_padded_layout(grids, bucket)
            return None if layout is None else {name: t.to(self.device) for name, t in layout.items()}
        return _lru(self._padded, (grids, bucket), make)

    def host_padded_layout(self, grids: tuple[tuple[int, int, int], ...],
                           bucket: int) -> dict[str, torch.Tensor] | None:
        """The bucket buffers' contents for images of ``grids``, by buffer name, on the host; None if the
        windows overflow the buffers."""
        layout = padded_layout(grids, bucket, self.model.config, self.buckets.max_items, self.window_capacity(bucket))
        return None if layout is None else dict(zip(PADDED_LAYOUT_BUFFERS, layout))


def _lru(cache: OrderedDict, key: tuple, make):
    """``cache[key]``, made by ``make()`` when missing; keeps the ``LAYOUT_CACHE_SIZE`` most recently used."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = make()
    if len(cache) > LAYOUT_CACHE_SIZE:
        cache.popitem(last=False)
    return value


# Buffers ``padded_layout`` fills, in its order.
PADDED_LAYOUT_BUFFERS = ("window_index", "reverse_index", "position_ids", "cu_full", "cu_window")


def padded_layout(grids: tuple[tuple[int, int, int], ...], bucket: int, config, max_items: int,
                  window_capacity: int) -> tuple[torch.Tensor, ...] | None:
    """Host layout of images (videos) with ``grids`` padded to ``bucket`` patches, as ``PADDED_LAYOUT_BUFFERS``:
    padding maps to itself, forms one full sequence and window-sized windows; cu_seqlens are filled to
    ``max_items + 2`` / ``window_capacity + 1`` with ``bucket``. None if the windows need more."""
    unit = config.spatial_merge_size**2
    window = (config.window_size // config.patch_size) ** 2
    if grids:
        layout = packed_layout(torch.tensor(grids, dtype=torch.long), config)
        index, reverse, positions = layout.window_index, layout.reverse_index, layout.position_ids
        cu_full, cu_window = layout.cu_seqlens, layout.cu_window_seqlens
    else:  # warm-up: nothing but padding
        index = reverse = torch.zeros(0, dtype=torch.long)
        positions = torch.zeros(0, 2, dtype=torch.long)
        cu_full = cu_window = torch.zeros(1, dtype=torch.int32)
    real = int(cu_full[-1])
    sequences = sum(t for t, _, _ in grids)  # full-attention sequences: one per image or temporal patch
    if real > bucket or sequences > max_items:
        raise ValueError(f"padded_layout: {len(grids)} items of {real} patches and {sequences} sequences do not "
                         f"fit bucket {bucket} of at most {max_items} sequences")
    pad_windows = list(range(real + window, bucket, window)) + ([bucket] if real < bucket else [])
    cu_window = torch.cat([cu_window, torch.tensor(pad_windows, dtype=torch.int32)])
    if cu_window.shape[0] > window_capacity + 1:
        return None
    tail = torch.arange(real // unit, bucket // unit, dtype=torch.long)
    full = torch.full((max_items + 2,), bucket, dtype=torch.int32)
    full[: cu_full.shape[0]] = cu_full
    return (torch.cat([index, tail]), torch.cat([reverse, tail]),
            torch.cat([positions, torch.zeros(bucket - real, 2, dtype=torch.long)]), full,
            torch.cat([cu_window, torch.full((window_capacity + 1 - cu_window.shape[0],), bucket, dtype=torch.int32)]))
