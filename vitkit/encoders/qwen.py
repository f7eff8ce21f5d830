"""Qwen2.5-VL vision tower: a batch of images of different sizes is one packed forward.

All images' patches are concatenated (rows = patches); attention boundaries come from
``cu_seqlens`` (one segment per image, for the full-attention blocks 7/15/23/31) and
``cu_window_seqlens`` (one segment per 112x112-pixel window, for the other blocks), computed by
transformers' own ``get_vision_*`` helpers so the layout is exactly the model's.

``impl="vitkit"``: ``fused_qwen_block`` (vitkit.encoders.fused) runs each block over the block's
own weights with ``packed_attention``: on CUDA one varlen flash-attention call per layer for the
whole batch (every image, every window), where stock transformers (sdpa) calls SDPA once per
window from Python (hundreds of launches per layer for 16 images). On CUDA the block function is
``torch.compile``d once for all blocks, and each distinct batch layout is replayed from a CUDA
graph. The patch embedding (a Conv3d whose stride equals its kernel) runs as the equivalent
matmul over the same weight. The layout is computed once per distinct list of grids and cached
on the device. ``qwen_block`` is the same block over the modules (kept as the readable
reference). ``impl="stock"`` calls the transformers model's forward.
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
from vitkit.encoders.fused import compile_layer, fused_qwen_block, qwen_block_weights
from vitkit.item import MultimodalItem

LAYOUT_CACHE_SIZE = 64


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

    def __init__(self, preset, model, impl, **flags) -> None:
        # A CUDA graph cannot hold the reference attention (float32), which reads cu_seqlens on
        # the host; the varlen kernel (fp16/bf16) keeps everything on the device.
        graphable = next(model.parameters()).dtype in VARLEN_DTYPES
        if flags.get("cuda_graphs") and not graphable:
            raise ValueError(f"encoder {preset.name!r}: cuda_graphs needs fp16/bf16 (the varlen attention kernel)")
        if flags.get("cuda_graphs") is None and not graphable:
            flags["cuda_graphs"] = False
        super().__init__(preset, model, impl, **flags)
        # One compiled graph serves all 32 blocks: the weights are arguments, not modules.
        self.block_fn = compile_layer(fused_qwen_block) if self.compiled else fused_qwen_block
        self._layouts: OrderedDict[tuple, PackedLayout] = OrderedDict()
        if impl != "stock":
            self.fused_weights(self._fuse)  # fuse now, outside any inference_mode of a caller

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

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (rows, 1176) on device, grid_thw (n, 3) -> (sum of t*h*w/4, out_hidden)."""
        if self.impl == "stock":
            return self.model(hidden_states=patches, grid_thw=grid_thw.to(self.device)).pooler_output
        return self.forward_packed(patches, self.layout(grid_thw))

    def _forward_graphed(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        # The layout's index tensors are baked into the graph: key on the grids, keep the layout.
        layout = self.layout(grid_thw)
        key = tuple(map(tuple, grid_thw.tolist()))
        return self.graphs.run(key, lambda p: self.forward_packed(p, layout), (patches,), keep=layout)

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

    def forward_packed(self, patches: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """The tower on packed patches with a precomputed layout (no host sync inside)."""
        model = self.model
        unit = model.spatial_merge_unit
        weight = model.patch_embed.proj.weight
        # Conv3d with stride == kernel over (C, T, P, P) patches is this matmul, same weights.
        x = F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1))
        rows = x.shape[0]
        x = x.view(rows // unit, unit, -1)[layout.window_index].reshape(rows, -1)
        cos, sin = model.rotary_pos_emb(x, layout.position_ids)
        full = set(model.fullatt_block_indexes)
        heads, eps = model.config.num_heads, model.blocks[0].norm1.variance_epsilon
        for i, weights in enumerate(self.fused_weights(self._fuse)):
            if i in full:
                x = self.block_fn(x, layout.cu_seqlens, layout.max_seqlen, cos, sin, heads, eps, *weights)
            else:
                x = self.block_fn(x, layout.cu_window_seqlens, layout.max_window_seqlen, cos, sin, heads, eps, *weights)
        return model.merger(x)[layout.reverse_index]

    @staticmethod
    def _fuse(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        return [qwen_block_weights(block) for block in model.blocks]
