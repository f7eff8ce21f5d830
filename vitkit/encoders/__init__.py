"""Real vision towers from transformers, as vitkit encoders (``encoder(items) -> list[Tensor]``).

Presets: ``clip-l-336`` (LLaVA-1.5's tower), ``siglip-so400m-384``, ``qwen2.5-vl-7b`` (variable
resolution, packed), and ``clip-tiny`` / ``siglip-tiny`` / ``qwen2.5-vl-tiny`` for CPU tests.
Which rows each returns: ``PRESETS[name].rows_note``. ``DataParallelEncoder`` spreads any of them
over the ranks of a ``torch.distributed`` group (``vitkit.encoders.dp``).
"""

from vitkit.encoders.assignment import POLICIES, Assignment, assign
from vitkit.encoders.attention import packed_attention, uses_varlen_kernel
from vitkit.encoders.base import IMPLS, EncoderStats, PackRecord, VisionEncoder, WarmupReport
from vitkit.encoders.buckets import Buckets, Pack, pack
from vitkit.encoders.build import build_encoder, count_parameters, default_buckets
from vitkit.encoders.dp import GATHERS, DataParallelEncoder
from vitkit.encoders.fixed import FIXED_BUCKETS, FixedResolutionEncoder, vit_embed
from vitkit.encoders.fused import fuse_tower, fused_qwen_block, fused_vit_layer
from vitkit.encoders.graphs import GraphCache
from vitkit.encoders.presets import PRESETS, EncoderPreset, get_preset
from vitkit.encoders.qwen import QWEN_BUCKETS, PackedLayout, QwenVisionEncoder, packed_layout, padded_layout, qwen_block

__all__ = [
    "GATHERS", "POLICIES", "Assignment", "DataParallelEncoder", "assign",
    "FIXED_BUCKETS", "IMPLS", "PRESETS", "QWEN_BUCKETS", "Buckets", "EncoderPreset", "EncoderStats",
    "FixedResolutionEncoder", "GraphCache", "Pack", "PackRecord", "PackedLayout", "QwenVisionEncoder", "VisionEncoder",
    "WarmupReport", "build_encoder", "count_parameters", "default_buckets", "fuse_tower", "fused_qwen_block", "fused_vit_layer",
    "get_preset", "pack", "packed_attention", "packed_layout", "padded_layout", "qwen_block", "uses_varlen_kernel",
    "vit_embed",
]
