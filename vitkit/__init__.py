"""vitkit: cross-request vision-encoder batching under chunked prefill, after SGLang PR 25910."""

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.chunk import ChunkEntry, assemble_chunk, find_chunk_items
from vitkit.embed import EmbedResult, embed_chunks, plan_calls
from vitkit.item import (MultimodalItem, content_hash, frame_groups, move_items_to_device, offload_items,
                         parse_video_items, split_video_items, video_grid)
from vitkit.request import Request
from vitkit.span import Span

__all__ = [
    "CacheStats", "ChunkEntry", "EmbedResult", "EmbeddingCache", "MultimodalItem", "Request", "Span",
    "assemble_chunk", "content_hash", "embed_chunks", "find_chunk_items", "frame_groups", "move_items_to_device",
    "offload_items", "parse_video_items", "plan_calls", "split_video_items", "video_grid",
]
