"""Encoder presets: published vision-tower configurations, written out (nothing is downloaded), plus
tiny variants. Values come from the named Hugging Face repositories' config and preprocessor files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

FAMILIES = ("clip", "siglip", "qwen2_5_vl", "qwen3_vl")
VARIABLE_RESOLUTION = ("qwen2_5_vl", "qwen3_vl")  # packed patches of any grid, rows from a patch merger

# OpenAI CLIP normalisation, also used by Qwen2-VL / Qwen2.5-VL's image processor.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


@dataclass(frozen=True)
class EncoderPreset:
    """One vision tower: family, HF vision config, image-processor settings and output rows. ``feature_layer``:
    ``-1`` the final output, ``-2`` the penultimate layer's (LLaVA-1.5's CLIP); ``drop_cls``: no class token."""

    name: str
    family: str
    source: str
    config: Mapping[str, Any]
    processor: Mapping[str, Any]
    feature_layer: int = -1
    drop_cls: bool = False
    tiny: bool = False
    rows_note: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"preset {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.feature_layer not in (-1, -2):
            raise ValueError(f"preset {self.name!r}: feature_layer must be -1 or -2, got {self.feature_layer}")
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "processor", MappingProxyType(dict(self.processor)))

    @property
    def variable_resolution(self) -> bool:
        return self.family in VARIABLE_RESOLUTION

    @property
    def image_size(self) -> int | None:
        """Square input side (pixels) for fixed-resolution towers; ``None`` for the Qwen-VL towers."""
        return None if self.variable_resolution else int(self.config["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])

    @property
    def hidden_size(self) -> int:
        """Width of the returned embedding rows (Qwen3-VL: the merger's and each deepstack merger's, side by side)."""
        if self.family == "qwen3_vl":
            return int(self.config["out_hidden_size"]) * (1 + len(self.config["deepstack_visual_indexes"]))
        return int(self.config["out_hidden_size" if self.variable_resolution else "hidden_size"])

    @property
    def fixed_num_tokens(self) -> int | None:
        """Rows (patches) per image for fixed-resolution towers; ``None`` for the Qwen-VL towers."""
        return None if self.variable_resolution else (self.image_size // self.patch_size) ** 2


def _clip_processor(side: int) -> dict[str, Any]:
    # openai/clip-vit-large-patch14-336: resize the shortest edge, centre-crop, bicubic, OpenAI mean/std.
    return dict(
        do_resize=True, size={"shortest_edge": side}, resample=BICUBIC,
        do_center_crop=True, crop_size={"height": side, "width": side},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True,
    )


def _siglip_processor(side: int) -> dict[str, Any]:
    # google/siglip-so400m-patch14-384: squash to a square (no crop), bicubic, mean = std = 0.5.
    return dict(
        do_resize=True, size={"height": side, "width": side}, resample=BICUBIC,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )


def _qwen_processor(min_pixels: int, max_pixels: int, patch_size: int = 14, mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
                    std: tuple[float, ...] = OPENAI_CLIP_STD) -> dict[str, Any]:
    # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json (Qwen2VLImageProcessor); Qwen3-VL's uses the
    # same class with patch 16 and mean = std = 0.5 (``_qwen3_processor``).
    return dict(
        do_resize=True, resample=BICUBIC, min_pixels=min_pixels, max_pixels=max_pixels,
        patch_size=patch_size, temporal_patch_size=2, merge_size=2,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(mean), image_std=list(std), do_convert_rgb=True,
    )


def _qwen3_processor(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    # Qwen/Qwen3-VL-8B-Instruct preprocessor_config.json: Qwen2VLImageProcessor(Fast), size {shortest_edge:
    # 65536, longest_edge: 16777216} (min/max pixels), patch 16, merge 2 (factor 32), temporal 2, mean = std = 0.5.
    return _qwen_processor(min_pixels, max_pixels, patch_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


CLIP_ROWS = ("penultimate encoder layer (hidden_states[-2]), class token dropped: "
             "(image_size/patch_size)^2 rows, as LLaVA-1.5 feeds its projector")
SIGLIP_ROWS = ("last_hidden_state (after post_layernorm), no attention-pooling head: "
               "(image_size/patch_size)^2 rows, as PaliGemma / LLaVA-style models use SigLIP")
QWEN_ROWS = ("patch merger output (2x2 patches -> one row): grid_t*grid_h*grid_w/4 rows, "
             "as Qwen2.5-VL's get_image_features")
QWEN3_ROWS = ("grid_t*grid_h*grid_w/4 rows (2x2 patches -> one row), each the patch merger's output (out_hidden_size) "
              "followed by one deepstack merger's output per deepstack_visual_indexes layer (the multi-level "
              "features Qwen3-VL adds to its first LM layers' hidden states at the image tokens): "
              "out_hidden_size * (1 + len(deepstack_visual_indexes)) wide, what SGLang's and vLLM's Qwen3-VL towers "
              "return, cache and split in front of the LM")

PRESETS: dict[str, EncoderPreset] = {
    "clip-l-336": EncoderPreset(
        name="clip-l-336", family="clip", source="openai/clip-vit-large-patch14-336 (vision_config)",
        config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            num_channels=3, image_size=336, patch_size=14, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02,
            initializer_factor=1.0, projection_dim=768,
        ),
        processor=_clip_processor(336), feature_layer=-2, drop_cls=True, rows_note=CLIP_ROWS,
    ),
    "siglip-so400m-384": EncoderPreset(
        name="siglip-so400m-384", family="siglip", source="google/siglip-so400m-patch14-384 (vision_config)",
        config=dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
            num_channels=3, image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=False,
        ),
        processor=_siglip_processor(384), rows_note=SIGLIP_ROWS,
    ),
    "qwen2.5-vl-7b": EncoderPreset(
        name="qwen2.5-vl-7b", family="qwen2_5_vl", source="Qwen/Qwen2.5-VL-7B-Instruct (vision_config)",
        config=dict(
            depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16,
            in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            tokens_per_second=2, window_size=112, out_hidden_size=3584,
            fullatt_block_indexes=[7, 15, 23, 31], initializer_range=0.02,
        ),
        processor=_qwen_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384), rows_note=QWEN_ROWS,
    ),
    # Qwen/Qwen3-VL-8B-Instruct config.json "vision_config" (transformers' Qwen3VLVisionModel); read from the
    # checkpoint's mirrors and ports (the 8B tower: depth 27, width 1152, 16 heads, MLP 4304, 48x48 learned
    # positions, deepstack after blocks 8/16/24, out 4096 = the 8B LM's width); rotary: axial, theta 10000
    # (transformers' default, as published). Its processor: ``_qwen3_processor``.
    "qwen3-vl-8b": EncoderPreset(
        name="qwen3-vl-8b", family="qwen3_vl", source="Qwen/Qwen3-VL-8B-Instruct (vision_config)",
        config=dict(
            depth=27, hidden_size=1152, hidden_act="gelu_pytorch_tanh", intermediate_size=4304, num_heads=16,
            in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096,
            num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24], initializer_range=0.02,
        ),
        processor=_qwen3_processor(min_pixels=65536, max_pixels=16777216), rows_note=QWEN3_ROWS,
    ),
}


def _tiny(name: str, full: str, processor: dict[str, Any], **config: Any) -> EncoderPreset:
    base = PRESETS[full]
    return replace(base, name=name, source=f"tiny variant of {full}", config={**base.config, **config},
                   processor=processor, tiny=True)


# Tiny variants: the same classes and code paths, a few layers and a small width, for CPU tests.
PRESETS.update({p.name: p for p in (
    _tiny("clip-tiny", "clip-l-336", _clip_processor(56), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
          num_attention_heads=4, image_size=56, projection_dim=32),
    _tiny("siglip-tiny", "siglip-so400m-384", _siglip_processor(70), hidden_size=72, intermediate_size=144,
          num_hidden_layers=2, num_attention_heads=4, image_size=70),
    # window_size 56 px = 2x2 merged units per window: images of a few windows, some partial.
    _tiny("qwen2.5-vl-tiny", "qwen2.5-vl-7b", _qwen_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 64), depth=4,
          hidden_size=64, intermediate_size=128, num_heads=4, window_size=56, out_hidden_size=96,
          fullatt_block_indexes=[1, 3]),
    # 8x8 learned positions: tiny images' grids (2..16 patches a side) interpolate up and down from them;
    # three deepstack layers as in the 8B tower. Images of up to 64 rows (256 patches).
    _tiny("qwen3-vl-tiny", "qwen3-vl-8b", _qwen3_processor(min_pixels=32 * 32, max_pixels=32 * 32 * 64), depth=4,
          hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=96, num_position_embeddings=64,
          deepstack_visual_indexes=[0, 1, 2]),
)})


def get_preset(name: str | EncoderPreset) -> EncoderPreset:
    """The preset called ``name`` (an ``EncoderPreset`` passes through)."""
    if isinstance(name, EncoderPreset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown encoder preset {name!r}; known: {sorted(PRESETS)}") from None
