"""Real vision towers from transformers, as vitkit encoders (``encoder(items) -> list[Tensor]``).

Presets: ``clip-l-336``, ``siglip-so400m-384``, ``qwen2.5-vl-7b``, ``qwen3-vl-8b`` and their ``*-tiny`` CPU variants;
which rows each returns: ``PRESETS[name].rows_note``. ``DataParallelEncoder`` spreads one over ranks.
"""

from vitkit.encoders.assignment import POLICIES, Assignment, assign
from vitkit.encoders.base import IMPLS, EncoderStats, PackRecord, VisionEncoder, WarmupReport
from vitkit.encoders.buckets import Buckets, Pack, pack
from vitkit.encoders.build import build_encoder, count_parameters, default_buckets
from vitkit.encoders.dp import GATHERS, DataParallelEncoder
from vitkit.encoders.fixed import FIXED_BUCKETS, FixedResolutionEncoder
from vitkit.encoders.presets import PRESETS, EncoderPreset, get_preset
from vitkit.encoders.qwen import QWEN_BUCKETS, QwenVisionEncoder
from vitkit.encoders.qwen3 import Qwen3VisionEncoder

# The towers' internals stay module-level: vitkit.encoders.{fused,attention,graphs,qwen,qwen3,fixed}.
__all__ = [
    "VisionEncoder", "FixedResolutionEncoder", "QwenVisionEncoder", "Qwen3VisionEncoder", "DataParallelEncoder",
    "build_encoder", "count_parameters", "default_buckets", "IMPLS", "EncoderStats", "PackRecord", "WarmupReport",
    "PRESETS", "EncoderPreset", "get_preset",
    "Buckets", "Pack", "pack", "FIXED_BUCKETS", "QWEN_BUCKETS",
    "Assignment", "assign", "POLICIES", "GATHERS",
]
