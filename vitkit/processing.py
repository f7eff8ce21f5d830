"""Images and videos to items and requests, through each preset's real transformers image processor: the
PIL/numpy ("slow") ones, which need no torchvision, built offline from the published settings in
``vitkit.encoders.presets``. Videos take the video processor's steps (``make_video_item``)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import SizeDict
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from vitkit.checks import positive_int
from vitkit.encoders.presets import PRESETS, EncoderPreset, get_preset
from vitkit.item import MultimodalItem, parse_video_items, split_video_items
from vitkit.request import Request

# Qwen3-VL ships Qwen2-VL's image processor class (its own settings: patch 16, mean = std = 0.5).
PROCESSOR_CLASSES = {
    "clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil, "qwen2_5_vl": Qwen2VLImageProcessorPil,
    "qwen3_vl": Qwen2VLImageProcessorPil}
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


# --- videos ---------------------------------------------------------------------------------------
# Qwen2VLVideoProcessor's own bounds (transformers video_processing_qwen2_vl.py, ``size``), which are
# qwen-vl-utils' VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS: 128 to 768 merged tokens per frame, in units of
# (patch_size * merge_size)^2 px. Tiny presets keep their image bounds, so tiny videos stay tiny.
VIDEO_MIN_TOKENS, VIDEO_MAX_TOKENS = 128, 768
VIDEO_FAMILIES = ("qwen2_5_vl",)  # towers whose video processor is Qwen2VLVideoProcessor (Qwen2-VL, Qwen2.5-VL)
# Resolutions of the synthetic video workloads, (height, width) px.
VIDEO_RESOLUTIONS = {"360p": (360, 640), "480p": (480, 854), "720p": (720, 1280)}
Frames = np.ndarray | Sequence[Image.Image]  # (T, H, W, 3) uint8, or T PIL images of one size


def video_settings(preset_name: str | EncoderPreset, **overrides: Any) -> dict[str, Any]:
    """The video processor settings of a variable-resolution preset: its image settings with the video
    pixel bounds; ``cap_pixels_per_frame`` (False, the processor's default in transformers 5.x) and
    ``max_video_tokens`` as the processor defines them. ``overrides`` replace any of them."""
    preset = get_preset(preset_name)
    if not preset.variable_resolution:
        raise ValueError(f"preset {preset.name!r} has a fixed-resolution tower, which takes no video")
    if preset.family not in VIDEO_FAMILIES:
        # Qwen3-VL's video processor bounds the whole clip's pixels (its smart_resize takes the frame count)
        # and samples frames by default: not this rule.
        raise ValueError(f"preset {preset.name!r}: vitkit builds videos as Qwen2VLVideoProcessor does, for "
                         f"families {VIDEO_FAMILIES}; {preset.family!r} has a video processor of its own")
    settings = {**preset.processor, "cap_pixels_per_frame": False, "max_video_tokens": 128000}
    if not preset.tiny:
        factor = settings["patch_size"] * settings["merge_size"]
        settings.update(min_pixels=VIDEO_MIN_TOKENS * factor**2, max_pixels=VIDEO_MAX_TOKENS * factor**2)
    return {**settings, **overrides}


def video_frame_size(num_frames: int, height: int, width: int, settings: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) px every frame is resized to: ``Qwen2VLVideoProcessor.resize``'s rule (smart_resize;
    with ``cap_pixels_per_frame`` each frame's bound is also an even share of the video's pixel budget)."""
    factor = settings["patch_size"] * settings["merge_size"]
    max_pixels = settings["max_pixels"]
    if settings.get("cap_pixels_per_frame"):
        total = int(settings["max_video_tokens"] * factor * factor * 0.9)
        share = total * settings["temporal_patch_size"] // num_frames
        max_pixels = max(min(max_pixels, share), int(settings["min_pixels"] * 1.05))
    return smart_resize(height, width, factor=factor, min_pixels=settings["min_pixels"], max_pixels=max_pixels)


def qwen_video_grid(num_frames: int, height: int, width: int, preset_name: str | EncoderPreset = "qwen2.5-vl-7b",
                    **overrides: Any) -> tuple[int, int, int]:
    """(t, h, w) patch grid of a video of ``num_frames`` frames of ``height`` x ``width`` px: t temporal
    patches (an odd frame count is padded with its last frame), h x w patches per frame."""
    settings = video_settings(preset_name, **overrides)
    positive_int("qwen_video_grid: num_frames", num_frames)
    h, w = video_frame_size(num_frames, height, width, settings)
    temporal, patch = settings["temporal_patch_size"], settings["patch_size"]
    return -(-num_frames // temporal), h // patch, w // patch


def make_video_item(frames: Frames, preset_name: str | EncoderPreset, *, name: str = "video",
                    **overrides: Any) -> MultimodalItem:
    """One video item: the patches Qwen2VLVideoProcessor emits, (t*h*w, 3*2*14*14) float32 with
    ``meta["video_grid_thw"]`` = (t, h, w), num_tokens = t*h*w/4; ``name`` heads error messages.

    Built without torchvision, from the PIL image processor's own steps: resize each frame (PIL bicubic)
    to the video processor's ``smart_resize`` size, rescale, normalise, then ``patchify`` as the video
    processor does (its last frame repeated to fill the last temporal patch). Pixel values agree with the
    video processor's to its resize (torchvision's antialiased bicubic against PIL's); token counts and
    grids exactly (tests/test_video.py)."""
    settings = video_settings(preset_name, **overrides)
    array = _frames_array(frames, name)
    num_frames, height, width = array.shape[:3]
    size = video_frame_size(num_frames, height, width, settings) if settings["do_resize"] else (height, width)
    factor = settings["patch_size"] * settings["merge_size"]
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"{name}: frames of {width}x{height} px are not whole {factor}-px merge blocks and "
                         f"do_resize is off")
    processor = _image_processor(preset_name)
    pixels = np.empty((num_frames, 3, *size), dtype=np.float32)  # one copy of the frames, written in place
    for k, frame in enumerate(array):
        pixels[k] = _frame_pixels(processor, frame, size, settings)
    patches, grid = _patchify(torch.from_numpy(pixels), settings)
    merge = settings["merge_size"]
    return MultimodalItem(patches, math.prod(grid) // merge**2, modality="video", meta={"video_grid_thw": grid})


def make_video_items(videos: Sequence[Frames], preset_name: str | EncoderPreset,
                     **overrides: Any) -> list[MultimodalItem]:
    """One item per video (see ``make_video_item``), in order."""
    return [make_video_item(v, preset_name, name=f"video {k}", **overrides) for k, v in enumerate(videos)]


def _frames_array(frames: Frames, name: str) -> np.ndarray:
    """(T, H, W, 3) uint8 frames; ValueError naming ``name`` for no frames or frames of different sizes."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{name}: frames array must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        if frames.shape[0] == 0 or 0 in frames.shape[1:3]:
            raise ValueError(f"{name} has no frames (or empty frames): array of shape {frames.shape}")
        return frames
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise TypeError(f"{name}: frames must be a (T, H, W, 3) uint8 array or a list of PIL images, "
                        f"got {type(frames).__name__}")
    if not frames:
        raise ValueError(f"{name} has no frames")
    for k, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            raise TypeError(f"{name}: frame {k} is {type(frame).__name__}, not a PIL.Image")
        if frame.size != frames[0].size:
            raise ValueError(f"{name}: frame {k} is {frame.width}x{frame.height} px but frame 0 is "
                             f"{frames[0].width}x{frames[0].height}; a video's frames must share one size")
    return np.stack([np.asarray(frame.convert("RGB")) for frame in frames])


def _frame_pixels(processor, frame: np.ndarray, size: tuple[int, int], settings: Mapping[str, Any]) -> np.ndarray:
    """One (H, W, 3) uint8 frame resized to ``size``, rescaled and normalised by the PIL image
    ``processor``'s own methods: (3, *size) float32."""
    image = np.moveaxis(frame, -1, 0)  # channel-first uint8, as the processor holds a PIL image
    if settings["do_resize"]:
        # The size is the video's (its frame count may cap it), so skip the image processor's own
        # smart_resize and make the call its resize then makes (PIL, through numpy), with that size.
        image = super(type(processor), processor).resize(image=image, size=SizeDict(height=size[0], width=size[1]),
                                                         resample=settings["resample"])
    if settings["do_rescale"]:
        image = processor.rescale(image, settings["rescale_factor"])
    if settings["do_normalize"]:
        image = processor.normalize(image, settings["image_mean"], settings["image_std"])
    return np.asarray(image, dtype=np.float32)


def _image_processor(preset_name: str | EncoderPreset):
    preset = get_preset(preset_name)
    return _cached_processor(preset.name, ()) if PRESETS.get(preset.name) is preset else make_processor(preset)


def _patchify(videos: torch.Tensor, settings: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) pixels -> (t*h*w, C*temporal*patch*patch) patches and (t, h, w): the view and permute
    of ``Qwen2VLVideoProcessor.patchify`` for one video, last frame repeated to a whole temporal patch."""
    temporal, patch, merge = settings["temporal_patch_size"], settings["patch_size"], settings["merge_size"]
    frames, channel, height, width = videos.shape
    if pad := -frames % temporal:
        videos = torch.cat((videos, videos[-1:].expand(pad, -1, -1, -1)))
        frames += pad
    t, h, w = frames // temporal, height // patch, width // patch
    patches = videos.view(t, temporal, channel, h // merge, merge, patch, w // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # the processor's (0, 1, 4, 7, 5, 8, 3, 2, 6, 9) less batch
    return patches.reshape(t * h * w, channel * temporal * patch * patch), (t, h, w)


def random_video_shapes(count: int, seed: int = 0, frames: tuple[int, int] = (16, 512),
                        resolutions: Sequence[str] = tuple(VIDEO_RESOLUTIONS)) -> list[tuple[int, int, int]]:
    """``count`` (frames, height, width) video shapes: frames uniform in ``frames`` (inclusive), a
    resolution drawn from ``resolutions`` (keys of ``VIDEO_RESOLUTIONS``); the video QA workload's mix."""
    positive_int("random_video_shapes: count", count)
    unknown = [r for r in resolutions if r not in VIDEO_RESOLUTIONS]
    if unknown or not resolutions:
        raise ValueError(f"random_video_shapes: resolutions must be among {sorted(VIDEO_RESOLUTIONS)}, "
                         f"got {resolutions}")
    lo, hi = (positive_int(f"random_video_shapes: frames[{k}]", f) for k, f in enumerate(frames))
    if lo > hi:
        raise ValueError(f"random_video_shapes: frames range {frames} is empty")
    gen = np.random.default_rng(seed)
    return [(int(gen.integers(lo, hi + 1)), *VIDEO_RESOLUTIONS[resolutions[int(gen.integers(len(resolutions)))]])
            for _ in range(count)]


def synthetic_video_items(preset_name: str, shapes: Sequence[tuple[int, int, int]], seed: int = 0,
                          dtype: torch.dtype = torch.float32, **overrides: Any) -> list[MultimodalItem]:
    """Video items for (frames, height, width) shapes with random normalised pixels in the video
    processor's layout and grid (no PIL, no resizing), like ``synthetic_items``. A 512-frame 720p video is
    737,280 patches (3.5 GB in float32): ``dtype=torch.bfloat16`` halves it."""
    settings = video_settings(preset_name, **overrides)
    width = 3 * settings["temporal_patch_size"] * settings["patch_size"] ** 2
    gen = torch.Generator().manual_seed(seed)
    items = []
    for k, shape in enumerate(shapes):
        if len(shape) != 3:
            raise ValueError(f"synthetic_video_items: shape {k} must be (frames, height, width), got {shape!r}")
        frames, height, width_px = (positive_int(f"synthetic_video_items: shape {k} {what}", v)
                                    for what, v in zip(("frames", "height (px)", "width (px)"), shape))
        grid = qwen_video_grid(frames, height, width_px, preset_name, **overrides)
        feature = torch.randn(math.prod(grid), width, generator=gen).to(dtype)
        items.append(MultimodalItem(feature, math.prod(grid) // settings["merge_size"] ** 2, modality="video",
                                    meta={"video_grid_thw": grid}))
    return items


def count_text_tokens(text: str) -> int:
    """Approximate token count of ``text``: ceil(UTF-8 bytes / 4), the usual rule for English BPE
    vocabularies. No tokenizer is loaded (none can be downloaded): only text lengths are needed."""
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


def make_request(rid: Hashable, segments: Sequence[str | int | Image.Image | Frames | MultimodalItem],
                 preset_name: str, *, video_items: str = "whole", video_overrides: Mapping[str, Any] | None = None,
                 **processor_overrides: Any) -> Request:
    """A ``Request`` laid out from segments in order: ``str`` is text (counted with
    ``count_text_tokens``), ``int`` that many text tokens, a PIL image its run of placeholder tokens
    (one per embedding row), a video (a (T, H, W, 3) uint8 array or a list of PIL frames, see
    ``make_video_item``; ``video_overrides`` replace its processor settings) its run, a ``MultimodalItem``
    as it is. ``prompt_len`` is the total. All PIL images go through the processor in one call. No
    chat-template tokens are added.

    ``video_items``: ``"whole"``, one item and span per video (vLLM, SGLang), or ``"frame-groups:g"``,
    one item and span per g temporal patches (the last group holds the rest), spans back to back.
    """
    parse_video_items(video_items)  # a bad spec fails before any processing
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
        elif isinstance(seg, (np.ndarray, list, tuple)):
            laid_out.append(make_video_item(seg, preset_name, name=f"request {rid!r} segment {k} (video)",
                                            **(video_overrides or {})))
        else:
            raise TypeError(f"request {rid!r} segment {k}: expected str, int, PIL.Image, video frames or "
                            f"MultimodalItem, got {type(seg).__name__}")
    return Request.from_segments(rid, _split_videos(rid, laid_out, video_items))


def _split_videos(rid: Hashable, laid_out: list[int | MultimodalItem], video_items: str) -> list[int | MultimodalItem]:
    out: list[int | MultimodalItem] = []
    for k, seg in enumerate(laid_out):
        try:
            out.extend(split_video_items([seg], video_items) if isinstance(seg, MultimodalItem) else [seg])
        except ValueError as err:
            raise ValueError(f"request {rid!r} segment {k}: {err}") from None
    return out
