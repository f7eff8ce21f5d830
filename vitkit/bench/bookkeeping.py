"""``python -m vitkit.bench bookkeeping``: content hashing per MB and ``embed_chunks``' bookkeeping per
item, on CPU, with a zero-cost encoder whose own time is subtracted; items are hashed before the
timed step, as an engine hashes at arrival. Writes ``results/cpu/bookkeeping.json`` and a table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from vitkit.bench.machine import (EventTimedEncoder, layout_batch, parser, provenance, table, time_callable, timed_step,
                                  timing_stats)
from vitkit.cache import EmbeddingCache
from vitkit.costs import results as files
from vitkit.item import MultimodalItem, content_hash
from vitkit.request import Request
from vitkit.span import Span

MB = 1 << 20


def _median_ms(fn, repeats: int) -> float:
    return time_callable(fn, device="cpu", warmup=2, repeats=repeats).median_ms


def measure_hashing(sizes_mb: Sequence[float], repeats: int, spread_mb: float = 256) -> list[dict]:
    """Median ms of xxh3-128 (``content_hash``) and SHA-256 on float32 features, "hot" (one feature, in
    cache) and "cold" (cycling through ``spread_mb`` MB: from DRAM, as a fresh processor output is)."""
    rows = []
    for size_mb in sizes_mb:
        numel = max(1, int(size_mb * MB) // 4)
        features = [torch.rand(numel) for _ in range(min(1024, max(2, int(spread_mb / size_mb))))]
        views = [memoryview(f.numpy()).cast("B") for f in features]  # the same bytes, no copy
        turn = iter(range(1 << 62))
        hot = _median_ms(lambda: content_hash(features[0]), repeats)
        cold = _median_ms(lambda: content_hash(features[next(turn) % len(features)]), repeats)
        sha = _median_ms(lambda: hashlib.sha256(views[next(turn) % len(views)]).digest(), repeats)
        mb = numel * 4 / MB
        rows.append({"size_mb": mb, "bytes": numel * 4, "content_hash_ms": cold, "content_hash_ms_per_mb": cold / mb,
                     "content_hash_hot_ms": hot, "sha256_ms": sha, "sha256_ms_per_mb": sha / mb,
                     "repeats": repeats})
    return rows


def make_step(requests: int, images: int, tokens: int, hidden: int,
              text_tokens: int = 8) -> tuple[list[tuple[Request, Span]], Callable[[list], list], int]:
    """Whole prompts of ``images`` distinct items each, a zero-cost encoder, the bytes of all outputs."""
    groups = [[MultimodalItem(torch.tensor([float(r), float(i)]), tokens) for i in range(images)]
              for r in range(requests)]
    outputs = {item.hash: torch.randn(tokens, hidden) for group in groups for item in group}

    def encoder(items):
        return [outputs[item.hash] for item in items]

    capacity = sum(t.numel() * t.element_size() for t in outputs.values())
    return layout_batch(groups, text_tokens), encoder, capacity


def _time_step(batch, encoder, capacity: int, mode: str, warm: bool, repeats: int, max_seconds: float) -> dict:
    """Median step, encoder and bookkeeping ms (cold: a fresh cache a step), repeats capped by ``max_seconds``."""
    timed = EventTimedEncoder(encoder, "cpu")
    cache = EmbeddingCache(capacity)
    _, first = timed_step(batch, timed, cache, mode, "cpu")  # warm-up, and fills the cache for warm runs
    repeats = max(min(3, repeats), min(repeats, int(max_seconds * 1e3 / max(first.elapsed_ms(), 1e-6))))
    steps, enc = [], []
    for _ in range(repeats):
        cache = cache if warm else EmbeddingCache(capacity)
        timed.reset()
        result, watch = timed_step(batch, timed, cache, mode, "cpu")
        steps.append(watch.elapsed_ms())
        enc.append(timed.encoder_ms())
    # the median of per-step differences: one noisy step does not skew it
    book = timing_stats([s - e for s, e in zip(steps, enc)]).median_ms
    items = sum(len(request.items) for request, _ in batch)
    return {
        "mode": mode, "cache": "warm" if warm else "cold", "items": items, "encoder_calls": result.encoder_calls,
        # the step's output rows: torch.cat copies them once, a cost that grows with the shape
        "assembled_bytes": sum(e.numel() * e.element_size() for e in result.embeddings if e is not None),
        "step_ms_median": timing_stats(steps).median_ms, "encoder_ms_median": timing_stats(enc).median_ms,
        "bookkeeping_ms_median": book, "bookkeeping_us_per_item": book * 1e3 / items, "repeats": repeats,
    }


def measure_embed(requests: int, images: int, tokens: int, hidden: int, repeats: int, max_seconds: float = 15,
                  progress: bool = True) -> list[dict]:
    batch, encoder, capacity = make_step(requests, images, tokens, hidden)
    # The copies a step must make (one torch.cat per request): with large embeddings this floor
    # (memory bandwidth, page faults of the fresh output) is most of the step.
    pieces = [encoder(list(request.items)) for request, _ in batch]
    concat = _median_ms(lambda: [torch.cat(p) for p in pieces], repeats)
    cases = [(mode, warm) for mode in ("batched", "per_request") for warm in (False, True)]
    head = {"requests": requests, "images_per_request": images, "tokens_per_image": tokens, "hidden": hidden}
    timed = (_time_step(batch, encoder, capacity, mode, warm, repeats, max_seconds)
             for mode, warm in tqdm(cases, desc="embed_chunks", disable=not progress, leave=False))
    return [head | row | {"concat_ms_median": concat} for row in timed]


def format_table(results: dict) -> str:
    lines = ["content hash (xxh3-128) vs sha256, float32 features (cold: read from DRAM):"]
    lines += table([("MB", ">6.2f", "size_mb"), ("xxh3 ms", ">9.3f", "content_hash_ms"),
                    ("ms/MB", ">7.3f", "content_hash_ms_per_mb"), ("hot ms", ">8.3f", "content_hash_hot_ms"),
                    ("sha256 ms", ">10.3f", "sha256_ms"), ("ms/MB", ">7.3f", "sha256_ms_per_mb")], results["hashing"])
    lines += ["", "embed_chunks bookkeeping (encoder time excluded), one step:"]
    lines += table([("req x img", ">9", lambda r: f"{r['requests']:>4} x {r['images_per_request']:<2}"),
                    ("tok x hid", ">10", lambda r: f"{r['tokens_per_image']:>4} x {r['hidden']:<4}"),
                    ("mode", ">11", "mode"), ("cache", ">5", "cache"), ("calls", ">5", "encoder_calls"),
                    ("step ms", ">8.2f", "step_ms_median"), ("book ms", ">8.2f", "bookkeeping_ms_median"),
                    ("us/item", ">8.1f", "bookkeeping_us_per_item"),
                    ("out MB", ">7.1f", lambda r: r["assembled_bytes"] / MB), ("cat ms", ">7.2f", "concat_ms_median")],
                   results["embed_chunks"])
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int]:
    tokens, _, hidden = text.partition("x")
    return int(tokens), int(hidden)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("bookkeeping", __doc__, "out", "repeats", "no-progress", repeats=dict(default=20),
               out=dict(default=files.results_folder("cpu") / "bookkeeping.json", help="the JSON to write"))
    p.add_argument("--hash-mb", type=float, nargs="+", default=[1, 4, 16], help="feature sizes (MB)")
    p.add_argument("--hash-repeats", type=int, default=30)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--images", type=int, default=4, help="images per request")
    p.add_argument("--shapes", type=_shape, nargs="+", default=[(16, 8), (576, 1024)],
                   help="embedding shapes TOKENSxHIDDEN (tiny: Python overhead alone; CLIP-L/336: plus copies)")
    p.add_argument("--max-seconds", type=float, default=15, help="cap per embed_chunks case (fewer repeats)")
    args = p.parse_args(argv)
    embed_rows = [row for tokens, hidden in args.shapes for row in measure_embed(
        args.requests, args.images, tokens, hidden, args.repeats, args.max_seconds, not args.no_progress)]
    settings = {"hash_mb": list(args.hash_mb), "hash_repeats": args.hash_repeats, "requests": args.requests,
                "images_per_request": args.images, "shapes": [list(s) for s in args.shapes], "repeats": args.repeats,
                "max_seconds_per_case": args.max_seconds, "torch_threads": torch.get_num_threads()}
    results = {"schema": files.schema("bookkeeping"), **provenance("cpu", "cpu"), "settings": settings,
               "hashing": measure_hashing(args.hash_mb, args.hash_repeats), "embed_chunks": embed_rows}
    files.write("bookkeeping", results, args.out)
    print(format_table(results))
    print(f"\nwrote {args.out}")
    return 0
