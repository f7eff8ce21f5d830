"""Images to items and requests, through each preset's real transformers image processor: the PIL/numpy
("slow") ones, which need no torchvision, built offline from the published settings in ``vitkit.encoders.presets``."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vitkit.checks import positive_int
from vitkit.encoders.presets import PRESETS, EncoderPreset, get_preset
from vitkit.item import MultimodalItem
from vitkit.request import Request

PROCESSOR_CLASSES = {
    "clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil, "qwen2_5_vl": Qwen2VLImageProcessorPil}
CHARS_PER_TOKEN = 4  # see count_text_tokens


def make_processor(preset_name: str | EncoderPreset, **overrides: Any):
    """The preset's image processor; ``overrides`` replace published settings (e.g. Qwen's
    ``min_pixels`` / ``max_pixels``, in pixels)."""
    preset = get_preset(preset_name)
    return PROCESSOR_CLASSES[preset.family](**{**preset.processor, **overrides})


@lru_cache(maxsize=32)
def _cached_processor(preset_name: str, overrides: tuple):
    return make_processor(preset_name, **dict(overrides))


def make_items(images: Sequence[Image.Image], preset_name: str, **processor_overrides: Any) -> list[MultimodalItem]:
    """One ``MultimodalItem`` per image, in order, with the feature and token count the preset's
    encoder expects: pixel values (3, S, S) for CLIP/SigLIP; for Qwen2.5-VL flattened patches
    (t*h*w, 1176) and ``meta["image_grid_thw"]`` = (t, h, w), num_tokens = t*h*w/4."""
    preset = get_preset(preset_name)
    if not images:
        return []
    for k, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"make_items: image {k} is {type(image).__name__}, not a PIL.Image")
    try:
        if PRESETS.get(preset.name) is not preset:
            raise TypeError("unregistered preset")
        processor = _cached_processor(preset.name, tuple(sorted(processor_overrides.items())))
    except TypeError:  # unhashable override values (e.g. a list of means) or a custom preset
        processor = make_processor(preset, **processor_overrides)
    out = processor(images=list(images), return_tensors="pt")
    if preset.variable_resolution:
        return _qwen_items(out["pixel_values"], out["image_grid_thw"], preset)
    rows = preset.fixed_num_tokens
    return [MultimodalItem(feature=pv.clone(), num_tokens=rows) for pv in out["pixel_values"]]  # own storage


def _qwen_item(feature: torch.Tensor, grid: Sequence[int], preset: EncoderPreset) -> MultimodalItem:
    merge = int(preset.config["spatial_merge_size"])
    return MultimodalItem(feature, math.prod(grid) // merge**2, meta={"image_grid_thw": tuple(grid)})


def _qwen_items(patches: torch.Tensor, grids: torch.Tensor, preset: EncoderPreset) -> list[MultimodalItem]:
    items, start = [], 0
    for grid in grids.tolist():
        n = math.prod(grid)
        # own storage (a row slice is already contiguous, so .contiguous() would keep a view):
        # an item must not hold every other image's patches alive
        items.append(_qwen_item(patches[start:start + n].clone(), grid, preset))
        start += n
    if start != patches.shape[0]:
        raise ValueError(f"processor returned {patches.shape[0]} patches but grids account for {start}")
    return items


def qwen_grid(height: int, width: int, preset_name: str = "qwen2.5-vl-7b", **overrides: Any) -> tuple[int, int, int]:
    """(t, h, w) patch grid Qwen2VLImageProcessor gives an image of ``height`` x ``width`` pixels."""
    settings = {**get_preset(preset_name).processor, **overrides}
    patch = settings["patch_size"]
    h, w = smart_resize(height, width, factor=patch * settings["merge_size"], min_pixels=settings["min_pixels"],
                        max_pixels=settings["max_pixels"])
    return 1, h // patch, w // patch


def synthetic_items(
    preset_name: str, sizes: Sequence[tuple[int, int]], seed: int = 0, **processor_overrides: Any
) -> list[MultimodalItem]:
    """Items for images of the given (height, width) pixel sizes, with random normalised pixels in
    the layout the real processor emits (no PIL, no resizing: fast enough for large benchmarks).
    Fixed-resolution presets resize every image to their square side, so only the count matters;
    for Qwen2.5-VL each size goes through the processor's own ``smart_resize`` for its grid."""
    preset = get_preset(preset_name)
    gen = torch.Generator().manual_seed(seed)
    items = []
    for k, size in enumerate(sizes):
        if len(size) != 2:
            raise ValueError(f"synthetic_items: size {k} must be (height, width) in pixels, got {size!r}")
        height = positive_int(f"synthetic_items: size {k} height (px)", size[0])
        width = positive_int(f"synthetic_items: size {k} width (px)", size[1])
        if preset.variable_resolution:
            grid = qwen_grid(height, width, preset, **processor_overrides)
            width_ = 3 * int(preset.config["temporal_patch_size"]) * preset.patch_size**2
            items.append(_qwen_item(torch.randn(math.prod(grid), width_, generator=gen), grid, preset))
        else:
            side = preset.image_size
            items.append(MultimodalItem(torch.randn(3, side, side, generator=gen), preset.fixed_num_tokens))
    return items


def count_text_tokens(text: str) -> int:
    """Approximate token count of ``text``: ceil(UTF-8 bytes / 4), the usual rule for English BPE
    vocabularies. No tokenizer is loaded (none can be downloaded): only text lengths are needed."""
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


def make_request(rid: Hashable, segments: Sequence[str | int | Image.Image | MultimodalItem], preset_name: str,
                 **processor_overrides: Any) -> Request:
    """A ``Request`` laid out from segments in order: ``str`` is text (counted with
    ``count_text_tokens``), ``int`` that many text tokens, a PIL image its run of placeholder tokens
    (one per embedding row), a ``MultimodalItem`` as it is. ``prompt_len`` is the total.
    All PIL images go through the processor in one call. No chat-template tokens are added."""
    images = [seg for seg in segments if isinstance(seg, Image.Image)]
    made = iter(make_items(images, preset_name, **processor_overrides))
    laid_out: list[int | MultimodalItem] = []
    for k, seg in enumerate(segments):
        if isinstance(seg, str):
            laid_out.append(count_text_tokens(seg))
        elif isinstance(seg, Image.Image):
            laid_out.append(next(made))
        elif isinstance(seg, MultimodalItem) or (isinstance(seg, int) and not isinstance(seg, bool)):
            laid_out.append(seg)
        else:
            raise TypeError(f"request {rid!r} segment {k}: expected str, int, PIL.Image or MultimodalItem, "
                            f"got {type(seg).__name__}")
    return Request.from_segments(rid, laid_out)
