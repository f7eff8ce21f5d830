"""One image (or video) of a prompt: its processor output, token count and content hash."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xxhash

from vitkit.checks import positive_int

MODALITIES = ("image", "video")


def _hash_tensor(hasher: xxhash.xxh3_128, tensor: torch.Tensor) -> None:
    # dtype and shape go in too: the same bytes read as another dtype or shape are another input.
    hasher.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    flat = tensor.cpu().detach().contiguous().reshape(-1)  # no copy when already contiguous on the CPU
    hasher.update(memoryview(flat.view(torch.uint8).numpy()))


def content_hash(feature: torch.Tensor, meta: Mapping[str, Any] | None = None) -> str:
    """128-bit content hash (hex) of a feature tensor and its meta.

    Every meta entry is hashed, so meta must hold only what changes the embedding (e.g. grid).
    xxh3-128 runs at memory speed, many times faster than SHA-256 (results/README.md), but is not
    cryptographic: a cache shared by mutually untrusting tenants should pass ``hash=`` from one.
    """
    hasher = xxhash.xxh3_128()
    _hash_tensor(hasher, feature)
    for key in sorted(meta or {}):
        hasher.update(f"|{key}=".encode())
        _hash_value(hasher, meta[key])
    return hasher.hexdigest()


def _hash_value(hasher: xxhash.xxh3_128, value: Any) -> None:
    # Arrays and tensors go in as bytes, containers element by element: their repr elides
    # elements ("...") and rounds floats, so different grids could hash equal.
    if isinstance(value, torch.Tensor):
        _hash_tensor(hasher, value)
    elif isinstance(value, np.ndarray) and value.dtype != object:
        _hash_tensor(hasher, torch.from_numpy(np.ascontiguousarray(value)))
    elif isinstance(value, (list, tuple, Mapping)):
        mapping = not isinstance(value, (list, tuple))
        hasher.update(f"{'dict' if mapping else type(value).__name__}[{len(value)}](".encode())
        for key in sorted(value, key=repr) if mapping else range(len(value)):
            hasher.update(f"{key!r}:".encode() if mapping else b"")
            _hash_value(hasher, value[key])
            hasher.update(b",")
        hasher.update(b")")
    else:
        hasher.update(repr(value).encode())


@dataclass(eq=False)
class MultimodalItem:
    """One image or video: processor output ``feature`` that encodes to ``num_tokens`` rows.

    ``cpu_feature`` keeps the host tensor while ``feature`` lives on an accelerator, so that
    offloading is a pointer swap instead of a device-to-host copy (SGLang's ``_cpu_feature``,
    PR 25910). Items compare by identity; equal content is what ``hash`` is for.
    """

    feature: torch.Tensor
    num_tokens: int
    modality: str = "image"
    hash: str | None = None
    meta: Mapping[str, Any] | None = None
    cpu_feature: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.feature, torch.Tensor):
            raise TypeError(f"MultimodalItem feature must be a torch.Tensor, got {type(self.feature).__name__}")
        positive_int("MultimodalItem num_tokens", self.num_tokens)
        if self.modality not in MODALITIES:
            raise ValueError(f"MultimodalItem modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.meta is not None and not isinstance(self.meta, Mapping):
            raise TypeError(
                f"MultimodalItem meta must be a mapping (e.g. {{'image_grid_thw': grid}}), got {self.meta!r}")
        if self.feature.device.type == "cpu" and self.cpu_feature is None:
            self.cpu_feature = self.feature
        if self.hash is None:
            self.hash = content_hash(self.cpu_feature if self.cpu_feature is not None else self.feature, self.meta)
        elif not isinstance(self.hash, str) or not self.hash:
            raise TypeError(f"MultimodalItem hash must be a non-empty str (e.g. a hex digest), got {self.hash!r}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultimodalItem:
        """Move ``feature`` to ``device`` in place, keeping the CPU reference (returns self)."""
        device = torch.device(device)
        if self.feature.device.type == "cpu":
            self.cpu_feature = self.feature
        if device.type == "cpu" and self.cpu_feature is not None:
            return self.offload()  # back to the host: reuse the kept copy, no device-to-host copy
        self.feature = self.feature.to(device, non_blocking=non_blocking)
        return self

    def offload(self) -> MultimodalItem:
        """Point ``feature`` back at the CPU copy; copies device-to-host only if none was kept."""
        if self.cpu_feature is None:
            self.cpu_feature = self.feature.cpu()
        self.feature = self.cpu_feature
        return self


def move_items_to_device(items: Iterable[MultimodalItem], device: torch.device | str) -> None:
    """Mirror of SGLang's ``_move_items_to_device``: move each item, keeping its CPU feature."""
    for item in items:
        item.to(device, non_blocking=True)


def offload_items(items: Iterable[MultimodalItem]) -> None:
    for item in items:
        item.offload()


# --- videos: the grid and frame groups ------------------------------------------------------------
GRID_KEYS = {"image": "image_grid_thw", "video": "video_grid_thw"}  # the processors' names for (t, h, w)
VIDEO_ITEMS = ("whole", "frame-groups:<g>")


def video_grid(item: MultimodalItem) -> tuple[int, int, int]:
    """(t, h, w) of a video item: temporal patches and patch rows and columns, from
    ``meta["video_grid_thw"]``, checked against the feature ((t*h*w, ...) patches) and token count."""
    who = f"video item (hash {item.hash[:12]})"
    if item.modality != "video":
        raise ValueError(f"item (hash {item.hash[:12]}) has modality {item.modality!r}, not 'video'")
    grid = (item.meta or {}).get("video_grid_thw")
    if grid is None:
        raise ValueError(f"{who} has no meta['video_grid_thw'] (meta keys: {sorted(item.meta or {})})")
    values = grid.reshape(-1).tolist() if hasattr(grid, "reshape") else list(grid)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{who}: video_grid_thw must be three positive ints (t, h, w), got {grid!r}")
    t, h, w = (int(v) for v in values)
    if item.feature.dim() == 0 or item.feature.shape[0] != t * h * w:
        raise ValueError(f"{who}: grid {(t, h, w)} needs {t * h * w} patch rows but the feature has shape "
                         f"{tuple(item.feature.shape)}")
    if item.num_tokens % t:
        raise ValueError(f"{who}: num_tokens={item.num_tokens} is not a whole number per temporal patch (t={t})")
    return t, h, w


def frame_groups(item: MultimodalItem, group_size: int, *, hash_content: bool = True) -> list[MultimodalItem]:
    """A video item as items of ``group_size`` temporal patches each (2 frames a patch for Qwen), in order;
    the last group holds the rest (t % group_size) when ``group_size`` does not divide t. Each group has
    its own rows, meta grid (g_i, h, w), token count and hash; a video of at most ``group_size`` patches
    comes back whole, as itself.

    For towers whose attention stays within a temporal patch (Qwen2-VL family) the groups' rows,
    concatenated, equal the whole video's. ``hash_content=False`` names each group by the video's hash
    and its patch range instead of hashing its bytes: for splits that never reach a cache.
    """
    positive_int(f"frame groups of video item (hash {item.hash[:12]}): group_size (temporal patches)", group_size)
    t, h, w = video_grid(item)
    if t <= group_size:
        return [item]
    rows, tokens = h * w, item.num_tokens // t  # per temporal patch
    on_host = item.feature.device.type == "cpu"
    groups = []
    for start in range(0, t, group_size):
        stop = min(start + group_size, t)
        rows_slice = slice(start * rows, stop * rows)  # a view: the groups share the video's storage
        cpu = None if on_host or item.cpu_feature is None else item.cpu_feature[rows_slice]
        groups.append(MultimodalItem(
            item.feature[rows_slice], (stop - start) * tokens, modality="video",
            hash=None if hash_content else f"{item.hash}[t{start}:{stop}]",
            meta={**(item.meta or {}), "video_grid_thw": (stop - start, h, w)}, cpu_feature=cpu))
    return groups


def parse_video_items(spec: str) -> int | None:
    """The frame-group size (temporal patches) of an item-granularity spec: ``"whole"`` -> None (one item
    per video, as vLLM and SGLang do), ``"frame-groups:g"`` -> g (a positive int)."""
    if not isinstance(spec, str):
        raise TypeError(f"video_items must be a str, one of {VIDEO_ITEMS}, got {type(spec).__name__} {spec!r}")
    if spec == "whole":
        return None
    kind, _, size = spec.partition(":")
    if kind != "frame-groups" or not (size.isascii() and size.isdigit()) or int(size) <= 0:
        raise ValueError(f"video_items must be 'whole' or 'frame-groups:<g>' with g a positive int number of "
                         f"temporal patches per item, got {spec!r}")
    return int(size)


def split_video_items(items: Iterable[MultimodalItem], video_items: str = "whole") -> list[MultimodalItem]:
    """``items`` with each video replaced by its frame groups under ``video_items`` (see
    ``parse_video_items``); images, and everything under ``"whole"``, pass through."""
    group_size = parse_video_items(video_items)
    out: list[MultimodalItem] = []
    for item in items:
        if group_size is None or item.modality != "video":
            out.append(item)
        else:
            out.extend(frame_groups(item, group_size))
    return out
