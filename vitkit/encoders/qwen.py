"""Qwen2.5-VL vision tower: a batch of images of different sizes is one packed forward.

All images' patches are concatenated (rows = patches); attention boundaries come from
``cu_seqlens`` (one segment per image, for the full-attention blocks 7/15/23/31) and
``cu_window_seqlens`` (one segment per 112x112-pixel window, for the other blocks), computed by
transformers' own ``get_vision_*`` helpers so the layout is exactly the model's.

``impl="vitkit"``: ``fused_qwen_block`` (vitkit.encoders.fused) runs each block over the block's
own weights with ``packed_attention``: on CUDA one varlen flash-attention call per layer for the
whole batch (every image, every window), where stock transformers (sdpa) calls SDPA once per
window from Python (hundreds of launches per layer for 16 images). The patch embedding (a Conv3d
whose stride equals its kernel) runs as the equivalent matmul over the same weight.

Its bucket unit is the patch. A call's images are packed into token buckets and padded: the
padding rows are one more sequence for full attention and 64-row sequences for window attention,
so no real row attends to them, and they are cut before the output is split. The layout (window
permutation and its inverse, rotary positions, both cu_seqlens) is written into static buffers
before each replay, so one CUDA graph per bucket serves every split of its rows into images
(see vitkit.encoders.graphs). ``max_seqlen`` for full attention is the bucket itself (the flash
kernel only sizes its grid by it; blocks past a sequence's end exit at once); for window
attention it is the window's size. ``qwen_block`` is the same block over the modules (kept as
the readable reference). ``impl="stock"`` calls the transformers model's forward.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from vitkit.encoders.attention import VARLEN_DTYPES, packed_attention
from vitkit.encoders.base import VisionEncoder
from vitkit.encoders.buckets import Buckets
from vitkit.encoders.fused import compile_layer, fused_qwen_block
from vitkit.item import MultimodalItem

LAYOUT_CACHE_SIZE = 64

# Patches (multiples of the 2x2 merge unit), chosen on a 400-step stream of 1-8 images a step,
# sides 224-1344 px drawn apart, 20% repeats (``python -m vitkit.bench.buckets``,
# results/cpu/bucket-choice.json). Steps of 1024 up to 16384 (4096 embedding rows, the steady-state
# 16 x 448 point) pad batched calls by 5.3% and single-image calls by 8.8% with 18 graphs;
# powers of two (7 graphs) waste 25% / 42%, steps of 2048 (11 graphs) 9.6% / 16.5%, geometric
# x1.25 (20 graphs) 8.5% / 11.6%. Each bucket costs one compile and capture in warm-up. 32 images
# a call bounds the full-attention sequence count baked into the graphs.
QWEN_BUCKETS = Buckets((256, 512, *range(1024, 16385, 1024)), max_items=32, multiple=4)
TINY_QWEN_BUCKETS = Buckets((16, 32, 64, 128, 256, 512, 1024), max_items=32, multiple=4)


@dataclass(frozen=True)
class PackedLayout:
    """Index tensors of one packed batch (rows = patches, in the model's window order).

    ``window_index`` / ``reverse_index``: merge-unit permutation into / out of window order.
    ``position_ids``: (rows, 2) rotary (h, w) positions, already in window order.
    ``cu_seqlens`` / ``cu_window_seqlens``: int32 boundaries for full / window attention.
    """

    window_index: torch.Tensor
    reverse_index: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cu_window_seqlens: torch.Tensor
    max_seqlen: int
    max_window_seqlen: int

    def to(self, device: torch.device) -> PackedLayout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return PackedLayout(**moved)


def packed_layout(grid_thw: torch.Tensor, config) -> PackedLayout:
    """Layout of a packed batch of images with grids ``grid_thw`` ((n, 3) patches), on the CPU."""
    grid_thw = grid_thw.to("cpu", torch.long)
    merge = config.spatial_merge_size
    unit = merge * merge
    window_index, cu_window = get_vision_window_index(
        grid_thw, spatial_merge_size=merge, window_size=config.window_size, patch_size=config.patch_size
    )
    cu_full = get_vision_cu_seqlens(grid_thw).to(torch.int32)
    position_ids = get_vision_position_ids(grid_thw, merge)
    rows = position_ids.shape[0]
    position_ids = position_ids.view(rows // unit, unit, 2)[window_index].reshape(rows, 2)
    return PackedLayout(
        window_index=window_index,
        reverse_index=torch.argsort(window_index),
        position_ids=position_ids,
        cu_seqlens=cu_full,
        cu_window_seqlens=cu_window.to(torch.int32),
        max_seqlen=int(torch.diff(cu_full).max()),
        max_window_seqlen=int(torch.diff(cu_window).max()),
    )


def qwen_block(
    block: nn.Module,
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> torch.Tensor:
    """One Qwen2.5-VL vision block on packed rows (rows, hidden); same math as the module's forward."""
    attn = block.attn
    rows = x.shape[0]
    qkv = attn.qkv(block.norm1(x)).view(rows, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.unbind(1)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # transformers' own (computes in fp32)
    o = packed_attention(q, k, v, cu_seqlens, max_seqlen)
    x = x + attn.proj(o.reshape(rows, -1))
    return x + block.mlp(block.norm2(x))


class QwenVisionEncoder(VisionEncoder):
    """Qwen2.5-VL tower. Item feature: flattened patches (grid_t*grid_h*grid_w, 3*2*14*14) as
    Qwen2VLImageProcessor emits them; ``item.meta["image_grid_thw"]`` holds (t, h, w) in patches."""

    def __init__(self, preset, model, impl, **kwargs) -> None:
        super().__init__(preset, model, impl, **kwargs)
        if self.accelerated and self.dtype not in VARLEN_DTYPES:
            # A CUDA graph cannot hold the float32 reference attention (it reads cu_seqlens on
            # the host); the varlen kernel needs fp16/bf16. Say so rather than change impl.
            raise ValueError(f"encoder {preset.name!r}: impl='vitkit' on CUDA needs fp16/bf16 (the varlen "
                             f"attention kernel), got {self.dtype}; use impl='vitkit-eager' for {self.dtype}")
        cfg = model.config
        self.unit = cfg.spatial_merge_size**2  # patches per embedding row
        self.window_rows = (cfg.window_size // cfg.patch_size) ** 2  # patches in a full window
        # One compiled graph per bucket and attention kind serves all 32 blocks (weights are arguments).
        variants = 2 * len(self.buckets.sizes) + 2 if self.buckets else 0
        self.block_fn = compile_layer(fused_qwen_block, variants) if self.accelerated else fused_qwen_block
        self._layouts: OrderedDict[tuple, PackedLayout] = OrderedDict()
        self._padded: OrderedDict[tuple, tuple[torch.Tensor, ...] | None] = OrderedDict()

    @staticmethod
    def buckets_for(preset) -> Buckets:
        return TINY_QWEN_BUCKETS if preset.tiny else QWEN_BUCKETS

    def units_to_rows(self, units: int) -> int:
        return units // self.unit

    def item_units(self, k: int, item: MultimodalItem) -> int:
        t, h, w = self._item_grid(k, item)
        return t * h * w

    def _batch_input(self, items: list[MultimodalItem]) -> tuple[torch.Tensor, torch.Tensor]:
        grids = [self._item_grid(k, item) for k, item in enumerate(items)]
        return self.gather_features(items, "cat"), torch.tensor(grids, dtype=torch.long)

    def _item_grid(self, k: int, item: MultimodalItem) -> tuple[int, int, int]:
        cfg = self.model.config
        grid = (item.meta or {}).get("image_grid_thw")
        if grid is None:
            raise ValueError(f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) has no meta['image_grid_thw']")
        t, h, w = (int(v) for v in torch.as_tensor(grid).reshape(-1).tolist())
        width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        merge = cfg.spatial_merge_size
        if tuple(item.feature.shape) != (t * h * w, width):
            raise ValueError(
                f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) has feature shape "
                f"{tuple(item.feature.shape)}, expected {(t * h * w, width)} for grid {(t, h, w)}"
            )
        if h % merge or w % merge or item.num_tokens != t * h * w // merge**2:
            raise ValueError(
                f"encoder {self.name!r}: item {k} (hash {item.hash[:12]}) grid {(t, h, w)} gives "
                f"{t * h * w // merge**2} rows (h, w must be multiples of {merge}), item says num_tokens={item.num_tokens}"
            )
        return t, h, w

    # --- unpadded paths (vitkit-eager, stock, and packs no bucket holds) -------------------------
    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (rows, 1176) on device, grid_thw (n, 3) -> (sum of t*h*w/4, out_hidden)."""
        if self.impl == "stock":
            return self.model(hidden_states=patches, grid_thw=grid_thw.to(self.device)).pooler_output
        return self.forward_eager(patches, grid_thw)

    def forward_eager(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.forward_packed(patches, self.layout(grid_thw), fused_qwen_block)

    def layout(self, grid_thw: torch.Tensor) -> PackedLayout:
        """Device layout for these grids, cached (least recently used) by the grid list."""
        key = tuple(map(tuple, grid_thw.tolist()))
        if key in self._layouts:
            self._layouts.move_to_end(key)
            return self._layouts[key]
        layout = packed_layout(grid_thw, self.model.config).to(self.device)
        self._layouts[key] = layout
        if len(self._layouts) > LAYOUT_CACHE_SIZE:
            self._layouts.popitem(last=False)
        return layout

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
            if i in full:
                x = block_fn(x, cu_full, max_full, cos, sin, heads, eps, *weights)
            else:
                x = block_fn(x, cu_window, max_window, cos, sin, heads, eps, *weights)
        return model.merger(x)[reverse_index]

    # --- the bucketed path ---------------------------------------------------------------------
    def window_capacity(self, bucket: int) -> int:
        """Window sequences a bucket's graph holds: real windows (a 224 px image has 4 of 64
        patches; edge windows are smaller) plus the padding's 64-patch windows. A pack whose
        layout has more runs unbucketed (counted in ``stats.unbucketed``)."""
        return bucket // 16 + bucket // self.window_rows + 2 * self.buckets.max_items + 2

    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        cfg, largest, dev = self.model.config, self.buckets.largest, self.device
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
        for name, values in zip(PADDED_LAYOUT_BUFFERS, layout):
            self.buffer(name)[: values.shape[0]].copy_(values)
        return True

    def _padded_layout(self, group: list[MultimodalItem], bucket: int) -> tuple[torch.Tensor, ...] | None:
        """Device layout of ``group`` padded to ``bucket`` (see ``padded_layout``), cached (least
        recently used) by grids and bucket; None if its windows overflow the bucket's capacity."""
        grids = tuple(self._item_grid(k, item) for k, item in enumerate(group))
        key = (grids, bucket)
        if key in self._padded:
            self._padded.move_to_end(key)
            return self._padded[key]
        layout = padded_layout(grids, bucket, self.model.config, self.buckets.max_items, self.window_capacity(bucket))
        if layout is not None:
            layout = tuple(t.to(self.device) for t in layout)
        self._padded[key] = layout
        if len(self._padded) > LAYOUT_CACHE_SIZE:
            self._padded.popitem(last=False)
        return layout


# Buffers ``padded_layout`` fills, in its order.
PADDED_LAYOUT_BUFFERS = ("window_index", "reverse_index", "position_ids", "cu_full", "cu_window")


def padded_layout(grids: tuple[tuple[int, int, int], ...], bucket: int, config, max_items: int,
                  window_capacity: int) -> tuple[torch.Tensor, ...] | None:
    """Host layout of images with ``grids`` packed and padded to ``bucket`` patches, as
    ``PADDED_LAYOUT_BUFFERS``: padding units map to themselves in both permutations, padding rows
    form one full-attention sequence and window sequences of at most a window's patches, and the
    cu_seqlens are filled up to their fixed lengths (``max_items + 2`` and ``window_capacity + 1``)
    with ``bucket`` (empty sequences). None if the windows need more than ``window_capacity``."""
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
    if real > bucket or len(grids) > max_items:
        raise ValueError(f"padded_layout: {len(grids)} images of {real} patches do not fit bucket {bucket} "
                         f"of at most {max_items} images")
    pad_windows = list(range(real + window, bucket, window)) + ([bucket] if real < bucket else [])
    cu_window = torch.cat([cu_window, torch.tensor(pad_windows, dtype=torch.int32)])
    if cu_window.shape[0] > window_capacity + 1:
        return None
    tail = torch.arange(real // unit, bucket // unit, dtype=torch.long)
    full = torch.full((max_items + 2,), bucket, dtype=torch.int32)
    full[: cu_full.shape[0]] = cu_full
    return (
        torch.cat([index, tail]),
        torch.cat([reverse, tail]),
        torch.cat([positions, torch.zeros(bucket - real, 2, dtype=torch.long)]),
        full,
        torch.cat([cu_window, torch.full((window_capacity + 1 - cu_window.shape[0],), bucket, dtype=torch.int32)]),
    )
