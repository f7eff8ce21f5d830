"""Model-free stand-ins: items whose content is an image or video id, and an encoder that fakes embeddings.

The same image id gives the same content hash (the cache sees a repeated photo as a repeat), and the fake
encoder's output depends only on that hash, so every path returns bit-identical embeddings. A fake video is
one item (``"whole"``, as vLLM and SGLang take a video) or one item per group of temporal patches
(``"frame-groups:g"``), each group with its own hash, as ``vitkit.item.frame_groups`` splits a real one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xxhash

from vitkit.cache import embedding_row_bytes
from vitkit.checks import positive_int
from vitkit.item import MultimodalItem, parse_video_items
from vitkit.processing import qwen_video_grid

QWEN_MERGED_PATCH = 28  # Qwen2.5-VL: 14-pixel patches, 2x2 merged into one token


def qwen_like_tokens(height: int, width: int, patch: int = QWEN_MERGED_PATCH) -> int:
    """Placeholder tokens of a ``height`` x ``width`` px image: one a 28x28 block, as Qwen2.5-VL's ``smart_resize``."""
    positive_int("image height (px)", height)
    positive_int("image width (px)", width)
    return max(1, round(height / patch)) * max(1, round(width / patch))


def image_seed(image_id: str) -> int:
    """A stable 63-bit seed from an image id (same id, same seed, on every machine)."""
    return xxhash.xxh64_intdigest(image_id.encode()) >> 1


def fake_item(image_id: str, height: int, width: int) -> MultimodalItem:
    """An item for image ``image_id``: a Qwen-like token count and a feature (hash) of the id and the size."""
    num_tokens = qwen_like_tokens(height, width)
    feature = torch.tensor([image_seed(image_id), height, width], dtype=torch.int64)
    return MultimodalItem(feature, num_tokens)


def fake_video_items(video_id: str, frames: int, height: int, width: int,
                     video_items: str = "whole") -> list[MultimodalItem]:
    """Video ``video_id`` of ``frames`` frames of ``height`` x ``width`` px as items with Qwen2.5-VL's grid
    (``vitkit.processing.qwen_video_grid``: two frames a temporal patch, 128-768 tokens a frame), t*h*w/4
    rows and ``meta["video_grid_thw"]``. ``video_items``: ``"whole"`` (one item) or ``"frame-groups:g"`` (g
    temporal patches an item, the last one holding the rest); the groups' rows add up to the whole video's."""
    group = parse_video_items(video_items)
    patches, grid_h, grid_w = qwen_video_grid(frames, height, width)
    group = patches if group is None else group
    items = []
    for start in range(0, patches, group):
        stop = min(start + group, patches)
        # the group's place in the video is content: two groups of one video never share a hash
        feature = torch.tensor([image_seed(video_id), frames, height, width, start, stop], dtype=torch.int64)
        items.append(MultimodalItem(feature, (stop - start) * grid_h * grid_w // 4, modality="video",
                                    meta={"video_grid_thw": (stop - start, grid_h, grid_w)}))
    return items


FAKE_BLOCK_ROWS = 4096  # rows drawn at random; a longer item repeats them, shifted (a video's 100k rows stay cheap)


class FakeEncoder:
    """Deterministic encoder: item -> ``(num_tokens, hidden)`` rows drawn from its content hash. Rows past the
    first ``FAKE_BLOCK_ROWS`` repeat those, shifted by the block's number, so every row still differs.

    ``counts_only``: for replays that keep counts and times but no embedding content. Each item's rows are
    then one zero row expanded (a stride-0 view: no memory, no work), of the same shape, dtype and counted
    bytes, so every cache decision, count and time is the same as with real rows; the content is not (making
    a video's 100k random rows, again at each re-encode, was most of a video replay's time)."""

    def __init__(self, hidden: int = 32, dtype: torch.dtype = torch.float32, *, counts_only: bool = False) -> None:
        self.hidden_size = positive_int("FakeEncoder hidden", hidden)
        self.dtype = dtype
        self.counts_only = counts_only
        self.name = "fake (counts only)" if counts_only else "fake"
        self._zero_row = torch.zeros(1, self.hidden_size, dtype=dtype)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one embedding row takes in the cache."""
        return embedding_row_bytes(self.hidden_size, self.dtype)

    def embed(self, item: MultimodalItem) -> torch.Tensor:
        if self.counts_only:
            return self._zero_row.expand(item.num_tokens, self.hidden_size)
        # any str hash (an explicit one need not be hex), hashed to a stable seed
        generator = torch.Generator().manual_seed(image_seed(item.hash))
        block = torch.randn(min(item.num_tokens, FAKE_BLOCK_ROWS), self.hidden_size, generator=generator)
        if item.num_tokens <= FAKE_BLOCK_ROWS:
            return block.to(self.dtype)
        out = torch.empty(item.num_tokens, self.hidden_size, dtype=block.dtype)
        for start in range(0, item.num_tokens, FAKE_BLOCK_ROWS):  # block k: the first block's rows + k
            rows = min(FAKE_BLOCK_ROWS, item.num_tokens - start)
            torch.add(block[:rows], float(start // FAKE_BLOCK_ROWS), out=out[start : start + rows])
        return out.to(self.dtype)

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        return [self.embed(item) for item in items]


def bytes_per_token(encoder: object) -> int | None:
    """Bytes of one embedding row of ``encoder`` (``bytes_per_token``, or ``hidden_size`` x dtype size), or None."""
    if isinstance(getattr(encoder, "bytes_per_token", None), int):
        return encoder.bytes_per_token
    hidden, dtype = getattr(encoder, "hidden_size", None), getattr(encoder, "dtype", None)
    if isinstance(hidden, int) and isinstance(dtype, torch.dtype):
        return embedding_row_bytes(hidden, dtype)
    return None
