"""vitkit: cross-request vision-encoder batching under chunked prefill, after SGLang PR 25910."""

from vitkit.cache import CacheStats, EmbeddingCache
from vitkit.chunk import ChunkEntry, assemble_chunk, find_chunk_items
from vitkit.embed import EmbedResult, embed_chunks, plan_calls
from vitkit.item import MultimodalItem, content_hash, move_items_to_device, offload_items
from vitkit.request import Request
from vitkit.span import Span

__all__ = [
    "CacheStats", "ChunkEntry", "EmbedResult", "EmbeddingCache", "MultimodalItem", "Request", "Span",
    "assemble_chunk", "content_hash", "embed_chunks", "find_chunk_items", "move_items_to_device",
    "offload_items", "plan_calls",
]
