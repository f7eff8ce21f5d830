"""Model FLOPs of a vision tower for one image or video, from the HF config and the item's geometry.

Every matrix multiply at 2 FLOPs per multiply-add (``torch.utils.flop_counter``'s convention): the
patch embedding, per layer Q/K/V (3 d^2 per token), output (d^2), ``Q @ K^T`` and ``P @ V``
(2 S^2 d per sequence) and the MLP (2 matrices; 3 for Qwen2.5-VL's SwiGLU), Qwen's patch merger (and
Qwen3-VL's deepstack mergers) and, when asked, SigLIP's pooling head. Attention is per image (Qwen:
per window in Qwen2.5-VL's window layers, per temporal patch in the full layers, every Qwen3-VL layer
being full), so batching changes nothing and a video's frame groups add up to the whole video.
Elementwise work (norms, activations, softmax, rotary, residual and bias adds, Qwen3-VL's resampled
position table, a gather: under 1%) is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from vitkit.checks import positive_int
from vitkit.item import GRID_KEYS

FIXED_RESOLUTION = ("clip_vision_model", "siglip_vision_model")
QWEN_VISION = ("qwen2_5_vl_vision",)
QWEN3_VISION = ("qwen3_vl_vision",)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs (2 per multiply-add) of one forward, by term."""

    patch_embed: int = 0
    qkv: int = 0
    attn_out: int = 0
    attn_scores: int = 0  # Q @ K^T and P @ V
    mlp: int = 0
    merger: int = 0
    head: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


def _layer_count(config: Any, num_layers: int | None) -> int:
    total = getattr(config, "num_hidden_layers", None) or getattr(config, "depth")
    if num_layers is None:
        return total
    positive_int("num_layers", num_layers)
    if num_layers > total:
        raise ValueError(f"num_layers={num_layers} exceeds the config's {total} layers")
    return num_layers


def vit_flops(config: Any, *, num_layers: int | None = None, include_head: bool = False) -> FlopCount:
    """FLOPs of one image through a CLIP or SigLIP tower; ``num_layers``: only the first layers."""
    if config.model_type not in FIXED_RESOLUTION:
        raise ValueError(f"vit_flops expects one of {FIXED_RESOLUTION}, got model_type {config.model_type!r}")
    d, inter, p = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (config.image_size // p) ** 2
    seq = patches + (1 if config.model_type == "clip_vision_model" else 0)
    layers = _layer_count(config, num_layers)
    head = _siglip_head_flops(config, patches) if include_head else 0
    return FlopCount(patch_embed=2 * patches * config.num_channels * p * p * d, qkv=layers * 2 * seq * d * 3 * d,
                     attn_out=layers * 2 * seq * d * d, attn_scores=layers * 4 * seq * seq * d,
                     mlp=layers * 2 * seq * d * inter * 2, head=head)


def _siglip_head_flops(config: Any, patches: int) -> int:
    """SigLIP's multihead attention pooling: one probe query over all patches, then an MLP."""
    if config.model_type != "siglip_vision_model":
        raise ValueError(f"include_head applies to SigLIP only, got model_type {config.model_type!r}")
    d, inter = config.hidden_size, config.intermediate_size
    q, kv = 2 * d * d, 2 * patches * d * 2 * d  # probe projection; K and V of every patch
    scores = 4 * patches * d
    return q + kv + scores + 2 * d * d + 2 * d * inter * 2  # + out projection + MLP on one token


def qwen_grid(config: Any, grid_thw: Sequence[int]) -> tuple[int, int, int]:
    """``grid_thw`` as (t, h, w) positive ints, h and w whole merge blocks of the Qwen tower ``config``."""
    values = list(grid_thw)
    if len(values) != 3:
        raise ValueError(f"grid_thw must be (t, h, w) patches, got {tuple(values)}")
    t, h, w = (positive_int(f"grid_thw[{k}]", int(v)) for k, v in enumerate(values))
    merge = config.spatial_merge_size
    if h % merge or w % merge:
        raise ValueError(f"grid_thw {(t, h, w)}: height and width must be multiples of spatial_merge_size={merge}")
    return t, h, w


def qwen_window_lengths(config: Any, grid_thw: tuple[int, int, int]) -> list[int]:
    """Patch counts of Qwen2.5-VL's attention windows for one image of ``grid_thw`` patches, as
    ``transformers.vision_utils.get_vision_window_index`` tiles them (edge windows cut short)."""
    t, h, w = qwen_grid(config, grid_thw)
    merge = config.spatial_merge_size
    cells = config.window_size // merge // config.patch_size  # window side in merged cells
    rows, cols = ([min(cells, n - start) for start in range(0, n, cells)] for n in (h // merge, w // merge))
    return [r * c * merge * merge for _ in range(t) for r in rows for c in cols]


def _qwen_tower_flops(config: Any, grid: tuple[int, int, int], layers: int, attn_sq: int, mlp_matrices: int,
                      mergers: int) -> FlopCount:
    """The terms Qwen's towers share, for ``layers`` blocks; ``attn_sq``: sequence lengths squared, summed
    over those blocks' sequences; ``mergers``: patch mergers run (each merged row through two matrices)."""
    t, h, w = grid
    d, inter, out = config.hidden_size, config.intermediate_size, config.out_hidden_size
    seq = t * h * w
    pixels = config.in_channels * config.temporal_patch_size * config.patch_size**2
    merged, wide = seq // config.spatial_merge_size**2, d * config.spatial_merge_size**2
    return FlopCount(patch_embed=2 * seq * pixels * d, qkv=layers * 2 * seq * d * 3 * d,
                     attn_out=layers * 2 * seq * d * d, attn_scores=4 * d * attn_sq,
                     mlp=layers * 2 * seq * d * inter * mlp_matrices, merger=mergers * 2 * merged * wide * (wide + out))


def qwen_vision_flops(config: Any, grid_thw: tuple[int, int, int], *, num_layers: int | None = None) -> FlopCount:
    """FLOPs of one image (or video) of ``grid_thw = (t, h, w)`` patches through a Qwen2.5-VL tower."""
    if config.model_type not in QWEN_VISION:
        raise ValueError(f"qwen_vision_flops expects {QWEN_VISION}, got model_type {config.model_type!r}")
    t, h, w = qwen_grid(config, grid_thw)
    layers = _layer_count(config, num_layers)
    full = [k for k in config.fullatt_block_indexes if k < layers]
    window_sq = sum(n * n for n in qwen_window_lengths(config, (t, h, w)))
    frame_sq = t * (h * w) ** 2  # full attention is per temporal patch (transformers' cu_seqlens)
    attn_sq = len(full) * frame_sq + (layers - len(full)) * window_sq
    return _qwen_tower_flops(config, (t, h, w), layers, attn_sq, mlp_matrices=3, mergers=1)


def qwen3_vision_flops(config: Any, grid_thw: tuple[int, int, int], *, num_layers: int | None = None) -> FlopCount:
    """FLOPs of one image (or video) of ``grid_thw = (t, h, w)`` patches through a Qwen3-VL tower: every block
    attends over a whole temporal patch, a GELU MLP of two matrices, the patch merger and one deepstack merger
    per ``deepstack_visual_indexes`` block among the first ``num_layers``."""
    if config.model_type not in QWEN3_VISION:
        raise ValueError(f"qwen3_vision_flops expects {QWEN3_VISION}, got model_type {config.model_type!r}")
    t, h, w = qwen_grid(config, grid_thw)
    layers = _layer_count(config, num_layers)
    deepstack = [k for k in config.deepstack_visual_indexes if k < layers]
    attn_sq = layers * t * (h * w) ** 2  # cu_seqlens: one sequence per temporal patch, in every block
    return _qwen_tower_flops(config, (t, h, w), layers, attn_sq, mlp_matrices=2, mergers=1 + len(deepstack))


QWEN_FLOPS = {**dict.fromkeys(QWEN_VISION, qwen_vision_flops), **dict.fromkeys(QWEN3_VISION, qwen3_vision_flops)}


def _item_grid(item: Any) -> tuple[int, ...]:
    """(t, h, w) of an image or video item, from ``meta["image_grid_thw"]`` or ``meta["video_grid_thw"]``."""
    key = GRID_KEYS.get(item.modality)
    meta = item.meta or {}
    if key not in meta:
        raise ValueError(f"item {item.hash[:12]} ({item.modality}): Qwen FLOPs need meta[{key!r}], "
                         f"meta has {sorted(meta)}")
    grid = meta[key]
    return tuple(grid.reshape(-1).tolist() if hasattr(grid, "reshape") else list(grid))


def item_flops(config: Any, item: Any, *, num_layers: int | None = None) -> FlopCount:
    """FLOPs to encode one ``MultimodalItem``: Qwen's towers read its grid, an image's or a video's."""
    if config.model_type in FIXED_RESOLUTION:
        return vit_flops(config, num_layers=num_layers)
    if config.model_type in QWEN_FLOPS:
        return QWEN_FLOPS[config.model_type](config, _item_grid(item), num_layers=num_layers)
    raise ValueError(f"no FLOP model for model_type {config.model_type!r}")


def items_flops(config: Any, items: Iterable[Any], *, num_layers: int | None = None) -> int:
    """Total FLOPs to encode ``items`` (attention is per image or temporal patch: batching changes nothing)."""
    return sum(item_flops(config, item, num_layers=num_layers).total for item in items)
