"""Model-free stand-ins: items whose content is an image id, and an encoder that fakes embeddings.

They let the simulator run on a laptop with no model: the same image id gives the same feature,
so the same content hash (the cache sees a repeated product photo as a repeat), and the fake
encoder's output depends only on that hash, so every path returns bit-identical embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import xxhash

from vitkit.cache import embedding_row_bytes
from vitkit.checks import positive_int
from vitkit.item import MultimodalItem

QWEN_MERGED_PATCH = 28  # Qwen2.5-VL: 14-pixel patches, 2x2 merged into one token


def qwen_like_tokens(height: int, width: int, patch: int = QWEN_MERGED_PATCH) -> int:
    """Placeholder tokens of an image of ``height`` x ``width`` pixels, Qwen2.5-VL style.

    Qwen's ``smart_resize`` rounds each side to a multiple of 28 pixels; each 28x28 block is one
    token after the 2x2 patch merge. Minimum/maximum pixel limits are not modelled.
    """
    positive_int("image height (px)", height)
    positive_int("image width (px)", width)
    return max(1, round(height / patch)) * max(1, round(width / patch))


def image_seed(image_id: str) -> int:
    """A stable 63-bit seed from an image id (same id, same seed, on every machine)."""
    return xxhash.xxh64_intdigest(image_id.encode()) >> 1


def fake_item(image_id: str, height: int, width: int) -> MultimodalItem:
    """An item standing for image ``image_id``: tiny feature, Qwen-like token count.

    The feature holds the id's seed and the size, so its content hash changes with either.
    """
    num_tokens = qwen_like_tokens(height, width)
    feature = torch.tensor([image_seed(image_id), height, width], dtype=torch.int64)
    return MultimodalItem(feature, num_tokens)


class FakeEncoder:
    """Deterministic encoder: item -> ``(num_tokens, hidden)`` rows drawn from its content hash.

    Costs what a random-number draw costs; use ``ModelledEncoder`` for an H100-like time.
    """

    def __init__(self, hidden: int = 32, dtype: torch.dtype = torch.float32) -> None:
        self.hidden_size = positive_int("FakeEncoder hidden", hidden)
        self.dtype = dtype
        self.name = "fake"

    @property
    def bytes_per_token(self) -> int:
        """Bytes one embedding row takes in the cache."""
        return embedding_row_bytes(self.hidden_size, self.dtype)

    def embed(self, item: MultimodalItem) -> torch.Tensor:
        # any str hash (an explicit one need not be hex), hashed to a stable seed
        generator = torch.Generator().manual_seed(image_seed(item.hash))
        return torch.randn(item.num_tokens, self.hidden_size, generator=generator).to(self.dtype)

    def __call__(self, items: Sequence[MultimodalItem]) -> list[torch.Tensor]:
        return [self.embed(item) for item in items]


def bytes_per_token(encoder: object) -> int | None:
    """Bytes one embedding row of ``encoder`` takes in the cache (its ``bytes_per_token``, or
    ``hidden_size`` x the dtype's size), or None when the encoder does not say."""
    if isinstance(getattr(encoder, "bytes_per_token", None), int):
        return encoder.bytes_per_token
    hidden, dtype = getattr(encoder, "hidden_size", None), getattr(encoder, "dtype", None)
    if isinstance(hidden, int) and isinstance(dtype, torch.dtype):
        return embedding_row_bytes(hidden, dtype)
    return None


def cache_bytes_for_tokens(tokens: int, per_token: int | object) -> int:
    """Capacity (bytes) that holds ``tokens`` embedding rows; ``per_token`` is the bytes of one
    row, or an encoder (see ``bytes_per_token``)."""
    row_bytes = per_token if isinstance(per_token, int) and not isinstance(per_token, bool) else bytes_per_token(per_token)
    if row_bytes is None:
        raise ValueError(f"encoder {getattr(per_token, 'name', per_token)!r} has no hidden_size/dtype: give the capacity in bytes")
    return positive_int("cache tokens", tokens) * positive_int("bytes per token", row_bytes)
