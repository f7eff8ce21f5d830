"""Qwen3-VL vision tower: a batch of images of different sizes is one packed forward, as Qwen2.5-VL's.

What differs from ``vitkit.encoders.qwen``: every block attends over a whole image (no windows, so rows
stay in the processor's 2x2-merge order and need no permutation); a learned square position table is
resampled bilinearly to each image's grid and added after the patch embedding (the layout holds the
taps and their weights, so the resampling is a gather inside the graph); LayerNorm and a GELU MLP
replace RMSNorm and SwiGLU; and deepstack mergers read the hidden states after a few blocks. The rows
returned are the merger's output and the deepstack mergers', side by side, as SGLang's and vLLM's
towers return and cache them (``PRESETS["qwen3-vl-8b"].rows_note``).

Buckets and graphs as Qwen2.5-VL's (units: patches; its large buckets too; videos split into frame
groups by the same code, exact here as well: attention and positions stay within a temporal patch). All
blocks attend over full sequences, so a bucket's padding is split (one padding sequence would cost as
much attention as an image of its size), but into few sequences: the varlen kernel launches a row of
blocks per cu_seqlens entry (bucket-long, as max_seqlen is the bucket), empty or not, in all 27 blocks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.vision_utils import (get_vision_cu_seqlens, get_vision_interpolation_indices_and_weights,
                                       get_vision_position_ids)

from vitkit.encoders.attention import packed_attention
from vitkit.encoders.buckets import Buckets
from vitkit.encoders.fused import activation, residual_addmm, rotary
from vitkit.encoders.qwen import QWEN_BUCKETS, TINY_QWEN_BUCKETS, QwenVisionEncoder, _lru

PAD_SEQUENCE = 256  # patches (64 embedding rows) a padding sequence holds at the least ...
PAD_SEQUENCES = 4  # ... and the most padding sequences: a call's padding (under 1024 patches) in 256s
PADDED_BUFFERS = ("interp_indices", "interp_weights", "position_ids", "cu_seqlens")  # host_padded_layout's


@dataclass(frozen=True)
class Qwen3Layout:
    """Index tensors of one packed batch, rows in the processor's order: ``interp_indices`` /
    ``interp_weights`` (rows, taps) resample the learned position table; ``position_ids`` (rows, 2) are
    the rotary (h, w); int32 ``cu_seqlens`` bound each frame (an image is one)."""

    interp_indices: torch.Tensor
    interp_weights: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    def to(self, device: torch.device) -> Qwen3Layout:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Qwen3Layout(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                              for k, v in values.items()})


def qwen3_layout(grid_thw: torch.Tensor, model: nn.Module) -> Qwen3Layout:
    """Layout of a packed batch of images with grids ``grid_thw`` ((n, 3) patches), on the CPU, from
    transformers' own helpers with the model's resampling settings (bilinear, corners aligned)."""
    grid_thw = grid_thw.to("cpu", torch.long)
    merge = model.config.spatial_merge_size
    indices, weights = get_vision_interpolation_indices_and_weights(
        grid_thw, model.num_grid_per_side, mode=model.interpolation_mode,
        align_corners=model.interpolation_align_corners, spatial_merge_size=merge)
    cu = get_vision_cu_seqlens(grid_thw).to(torch.int32)
    return Qwen3Layout(indices, weights, get_vision_position_ids(grid_thw, merge), cu, int(torch.diff(cu).max()))


def cu_capacity(max_items: int) -> int:
    """Entries of a bucket's cu_seqlens: the leading 0, one per full-attention sequence (``max_items``: an
    image has one, a video one per temporal patch), one per padding sequence; unused ones repeat the
    bucket (empty sequences)."""
    return 1 + max_items + PAD_SEQUENCES


def padding_bounds(real: int, bucket: int) -> list[int]:
    """cu_seqlens ends of the padding after ``real`` patches in ``bucket``: at most ``PAD_SEQUENCES``
    sequences, each ``PAD_SEQUENCE`` long unless that needs more (warm-up: all padding)."""
    pad = bucket - real
    if pad == 0:
        return []
    length = max(PAD_SEQUENCE, -(-pad // PAD_SEQUENCES))
    return [*range(real + length, bucket, length), bucket]


def padded_qwen3_layout(grids: tuple[tuple[int, int, int], ...], bucket: int, model: nn.Module,
                        max_items: int) -> tuple[torch.Tensor, ...]:
    """Host layout of images (videos) with ``grids`` padded to ``bucket`` patches, as ``PADDED_BUFFERS``:
    padding rows take position 0 with zero weights, in ``padding_bounds`` sequences; cu_seqlens filled to
    ``cu_capacity`` with ``bucket``."""
    if grids:
        layout = qwen3_layout(torch.tensor(grids, dtype=torch.long), model)
        indices, weights, positions = layout.interp_indices, layout.interp_weights, layout.position_ids
        cu = layout.cu_seqlens
    else:  # warm-up: nothing but padding
        taps = interp_taps(model)
        indices, weights = torch.zeros(0, taps, dtype=torch.long), torch.zeros(0, taps)
        positions, cu = torch.zeros(0, 2, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
    taps = indices.shape[1]
    real, sequences = int(cu[-1]), cu.shape[0] - 1
    if real > bucket or sequences > max_items:
        raise ValueError(f"padded_qwen3_layout: {len(grids)} items of {real} patches and {sequences} sequences do "
                         f"not fit bucket {bucket} of at most {max_items} sequences")
    pad = bucket - real
    cu = torch.cat([cu, torch.tensor(padding_bounds(real, bucket), dtype=torch.int32)])
    capacity = cu_capacity(max_items)
    return (torch.cat([indices, torch.zeros(pad, taps, dtype=torch.long)]),
            torch.cat([weights, torch.zeros(pad, taps, dtype=weights.dtype)]),
            torch.cat([positions, torch.zeros(pad, 2, dtype=torch.long)]),
            torch.cat([cu, torch.full((capacity - cu.shape[0],), bucket, dtype=torch.int32)]))


def interp_taps(model: nn.Module) -> int:
    """Position-table taps per patch of the model's resampling (4 for bilinear)."""
    merge = model.config.spatial_merge_size
    return qwen3_layout(torch.tensor([[1, merge, merge]]), model).interp_indices.shape[1]


def qwen3_block_weights(block: nn.Module) -> tuple[torch.Tensor, ...]:
    """A Qwen3-VL vision block's weights in ``fused_qwen3_block``'s order: its own parameters (Q/K/V are
    one linear already, the MLP has no gate), so nothing is copied or fused."""
    attn, mlp = block.attn, block.mlp
    return (block.norm1.weight, block.norm1.bias, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias,
            block.norm2.weight, block.norm2.bias, mlp.linear_fc1.weight, mlp.linear_fc1.bias,
            mlp.linear_fc2.weight, mlp.linear_fc2.bias)


def qwen3_tower_weights(model: nn.Module) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per-block weight tuples of a Qwen3-VL tower (the ``fused`` argument of its encoder)."""
    return tuple(qwen3_block_weights(block) for block in model.blocks)


def fused_qwen3_block(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, cos: torch.Tensor,
                      sin: torch.Tensor, heads: int, eps: float, act: str, *w: torch.Tensor) -> torch.Tensor:
    """One Qwen3-VL vision block on packed rows (rows, D): LayerNorm, QKV, one varlen attention, GELU MLP."""
    n1_w, n1_b, qkv_w, qkv_b, o_w, o_b, n2_w, n2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
    rows, d = x.shape
    h = F.layer_norm(x, (d,), n1_w, n1_b, eps)
    q, k, v = F.linear(h, qkv_w, qkv_b).view(rows, 3, heads, d // heads).unbind(1)
    a = packed_attention(rotary(q, cos, sin), rotary(k, cos, sin), v, cu_seqlens, max_seqlen)
    x = residual_addmm(x, a.reshape(rows, d), o_w, o_b)
    h = activation(F.linear(F.layer_norm(x, (d,), n2_w, n2_b, eps), fc1_w, fc1_b), act)
    return residual_addmm(x, h, fc2_w, fc2_b)


class Qwen3VisionEncoder(QwenVisionEncoder):
    """Qwen3-VL tower. Items as Qwen2.5-VL's (flattened patches, 3*2*16*16 wide here, and
    ``meta["image_grid_thw"]``), checked and sized in buckets by the same code; its own layout and blocks."""

    block = staticmethod(fused_qwen3_block)
    attention_kinds = 1  # every block attends over whole images (frames)

    @staticmethod
    def buckets_for(preset) -> Buckets:
        # The large buckets too: the buffers below are sized by ``buffer_units`` (the processors' pixel caps
        # give both towers images of up to 65536 patches).
        return TINY_QWEN_BUCKETS if preset.tiny else QWEN_BUCKETS

    def variant(self, *, impl: str | None = None, dtype: torch.dtype | None = None) -> Qwen3VisionEncoder:
        if dtype is None or dtype == self.dtype:
            return super().variant(impl=impl)
        # The base re-fuses a cast copy with fused.fuse_tower, which knows Qwen2.5-VL's blocks; these need none.
        model = copy.deepcopy(self.model).to(dtype)
        return type(self)(self.preset, model, impl or self.impl, fused=qwen3_tower_weights(model),
                          buckets=self.buckets if impl in (None, "vitkit") else None)

    # --- unpadded paths (vitkit-eager, stock, and packs no bucket holds) -------------------------
    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (rows, 1536) on device, grid_thw (n, 3) -> (sum of t*h*w/4, hidden_size)."""
        if self.impl == "stock":
            out = self.model(hidden_states=patches, grid_thw=grid_thw.to(self.device))
            return torch.cat([out.pooler_output, *out.deepstack_features], dim=1)
        return self.forward_eager(patches, grid_thw)

    def layout(self, grid_thw: torch.Tensor) -> Qwen3Layout:
        """Device layout for these grids, cached (least recently used) by the grid list."""
        return _lru(self._layouts, tuple(map(tuple, grid_thw.tolist())),
                    lambda: qwen3_layout(grid_thw, self.model).to(self.device))

    def forward_packed(self, patches: torch.Tensor, layout: Qwen3Layout, block_fn=None) -> torch.Tensor:
        """The tower on packed patches with a precomputed layout (no host sync inside)."""
        return self._tower(patches, layout.interp_indices, layout.interp_weights, layout.position_ids,
                           layout.cu_seqlens, layout.max_seqlen, block_fn or fused_qwen3_block)

    def _tower(self, patches, interp_indices, interp_weights, position_ids, cu_seqlens, max_seqlen,
               block_fn) -> torch.Tensor:
        model = self.model
        weight, bias = model.patch_embed.proj.weight, model.patch_embed.proj.bias
        # Conv3d with stride == kernel over (C, T, P, P) patches is this matmul, same weights.
        x = F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1), bias)
        # transformers sums the taps wide (float32 weights) and adds them in the tower's dtype
        positions = (F.embedding(interp_indices, model.pos_embed.weight) * interp_weights[:, :, None]).sum(1)
        x = x + positions.to(x.dtype)
        cos, sin = model.rotary_pos_emb(x, position_ids)
        cfg, eps = model.config, model.blocks[0].norm1.eps
        deepstack, taps = list(model.deepstack_visual_indexes), []
        for i, weights in enumerate(self.fused):
            x = block_fn(x, cu_seqlens, max_seqlen, cos, sin, cfg.num_heads, eps, cfg.hidden_act, *weights)
            if i in deepstack:
                taps.append(model.deepstack_merger_list[deepstack.index(i)](x))
        return torch.cat([model.merger(x), *taps], dim=1)

    # --- the bucketed path ---------------------------------------------------------------------
    def allocate_buffers(self) -> dict[str, torch.Tensor]:
        cfg, largest, dev = self.model.config, self.buffer_units, self.device
        width, taps = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2, interp_taps(self.model)
        return {
            "patches": torch.zeros(largest, width, device=dev, dtype=self.dtype),
            "interp_indices": torch.zeros(largest, taps, device=dev, dtype=torch.long),
            "interp_weights": torch.zeros(largest, taps, device=dev, dtype=torch.float32),
            "position_ids": torch.zeros(largest, 2, device=dev, dtype=torch.long),
            "cu_seqlens": torch.zeros(cu_capacity(self.buckets.max_items), device=dev, dtype=torch.int32),
        }

    def bucket_args(self, bucket: int) -> tuple[torch.Tensor, ...]:
        b = self.buffer
        return (b("patches")[:bucket], b("interp_indices")[:bucket], b("interp_weights")[:bucket],
                b("position_ids")[:bucket], b("cu_seqlens"))

    def bucket_fn(self, bucket: int):
        def run(patches, interp_indices, interp_weights, position_ids, cu_seqlens):
            # max_seqlen: the bucket, a bound the flash kernel only sizes its grid by
            return self._tower(patches, interp_indices, interp_weights, position_ids, cu_seqlens, bucket,
                               self.block_fn)
        return run

    def host_padded_layout(self, grids: tuple[tuple[int, int, int], ...], bucket: int) -> dict[str, torch.Tensor]:
        return dict(zip(PADDED_BUFFERS, padded_qwen3_layout(grids, bucket, self.model, self.buckets.max_items)))
