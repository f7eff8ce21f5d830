"""What the core costs besides the encoder: content hashing per MB, and ``embed_chunks``'
bookkeeping (lookups, de-duplication, planning, cache puts and pins, slicing and concatenation)
per item, on CPU.

    python -m vitkit.bench.bookkeeping [--out results/cpu/bookkeeping.json]

The encoder is a zero-cost stand-in that returns preallocated embeddings; its own time is
measured around each call and subtracted, so what is left is ``embed_chunks``' own work.
Items are built (and hashed) before the timed step, as an engine hashes at request arrival.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from vitkit.bench.machine import machine_info, versions
from vitkit.bench.timing import EventTimedEncoder, timing_stats
from vitkit.cache import EmbeddingCache
from vitkit.embed import embed_chunks
from vitkit.item import MultimodalItem, content_hash
from vitkit.request import Request

SCHEMA = "vitkit.bookkeeping/1"
MB = 1 << 20


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return timing_stats(samples).median_ms


def measure_hashing(sizes_mb: Sequence[float], repeats: int, spread_mb: float = 256) -> list[dict]:
    """Median ms of ``content_hash`` (xxh3-128) and of hashlib's SHA-256 on float32 features.

    "hot" hashes one feature over and over (it sits in the CPU caches); "cold" cycles through
    distinct features spanning ``spread_mb`` MB, so each is read from DRAM, as a fresh
    processor output larger than the caches would be.
    """
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
        rows.append({
            "size_mb": mb,
            "bytes": numel * 4,
            "content_hash_ms": cold,
            "content_hash_ms_per_mb": cold / mb,
            "content_hash_hot_ms": hot,
            "sha256_ms": sha,
            "sha256_ms_per_mb": sha / mb,
            "repeats": repeats,
        })
    return rows


def make_step(requests: int, images: int, tokens: int, hidden: int, text_tokens: int = 8):
    """``requests`` prompts of ``images`` distinct images each (text between them), one window
    per request covering its whole prompt, and a zero-cost encoder over preallocated outputs."""
    batch, outputs = [], {}
    for r in range(requests):
        segments: list = [text_tokens]
        for i in range(images):
            item = MultimodalItem(torch.tensor([float(r), float(i)]), tokens)
            outputs[item.hash] = torch.randn(tokens, hidden)
            segments += [item, text_tokens]
        request = Request.from_segments(f"req{r}", segments)
        batch.append((request, (0, request.prompt_len)))

    def encoder(items):
        return [outputs[item.hash] for item in items]

    capacity = sum(t.numel() * t.element_size() for t in outputs.values())
    return batch, encoder, capacity


def _time_step(batch, encoder, capacity: int, mode: str, warm: bool, repeats: int, max_seconds: float) -> dict:
    """Median step, encoder and bookkeeping ms over ``repeats`` steps (cold: a fresh cache each),
    fewer (at least 3) when the steps would take over ``max_seconds``."""
    timed = EventTimedEncoder(encoder, "cpu")
    steps, enc, calls = [], [], 0
    cache = EmbeddingCache(capacity)
    t0 = time.perf_counter()
    embed_chunks(batch, timed, cache, mode=mode, check_finite=False)  # warm-up, and fills the cache for warm runs
    repeats = max(min(3, repeats), min(repeats, int(max_seconds / (time.perf_counter() - t0))))
    for _ in range(repeats):
        if not warm:
            cache = EmbeddingCache(capacity)
        timed.reset()
        t0 = time.perf_counter()
        result = embed_chunks(batch, timed, cache, mode=mode, check_finite=False)
        steps.append((time.perf_counter() - t0) * 1e3)
        enc.append(timed.encoder_ms())
        calls = result.encoder_calls
    step, encoder_ms = timing_stats(steps).median_ms, timing_stats(enc).median_ms
    # the median of per-step differences, so one noisy step does not skew the result
    book = timing_stats([s - e for s, e in zip(steps, enc)]).median_ms
    items = sum(len(request.items) for request, _ in batch)
    return {
        "mode": mode,
        "cache": "warm" if warm else "cold",
        "items": items,
        "encoder_calls": calls,
        # the step's output rows: torch.cat copies them once, a cost that grows with the shape
        "assembled_bytes": sum(e.numel() * e.element_size() for e in result.embeddings if e is not None),
        "step_ms_median": step,
        "encoder_ms_median": encoder_ms,
        "bookkeeping_ms_median": book,
        "bookkeeping_us_per_item": book * 1e3 / items,
        "repeats": repeats,
    }


def measure_embed(
    requests: int, images: int, tokens: int, hidden: int, repeats: int, max_seconds: float = 15, progress: bool = True
) -> list[dict]:
    batch, encoder, capacity = make_step(requests, images, tokens, hidden)
    concat = _time_concat(batch, encoder, repeats)
    cases = [(mode, warm) for mode in ("batched", "per_request") for warm in (False, True)]
    rows = []
    for mode, warm in tqdm(cases, desc="embed_chunks", disable=not progress, leave=False):
        row = _time_step(batch, encoder, capacity, mode, warm, repeats, max_seconds)
        rows.append({"requests": requests, "images_per_request": images, "tokens_per_image": tokens,
                     "hidden": hidden} | row | {"concat_ms_median": concat})
    return rows


def _time_concat(batch, encoder, repeats: int) -> float:
    """Median ms of only the copies a step must make: one torch.cat per request of its
    items' embeddings. With large embeddings this floor (memory bandwidth and page faults of
    the fresh output) is most of the step; the rest is the Python bookkeeping."""
    pieces = [encoder(list(request.items)) for request, _ in batch]
    return _median_ms(lambda: [torch.cat(p) for p in pieces], repeats)


def run(
    *,
    hash_mb: Sequence[float] = (1, 4, 16),
    hash_repeats: int = 30,
    requests: int = 64,
    images: int = 4,
    shapes: Sequence[tuple[int, int]] = ((16, 8), (576, 1024)),
    repeats: int = 20,
    max_seconds: float = 15,
    progress: bool = True,
) -> dict:
    """All measurements as one JSON-ready dict. ``shapes`` are (tokens per image, hidden): a
    tiny embedding isolates Python overhead; 576 x 1024 (CLIP-L/336) adds the row copies."""
    embed_rows = []
    for tokens, hidden in shapes:
        embed_rows += measure_embed(requests, images, tokens, hidden, repeats, max_seconds, progress)
    return {
        "schema": SCHEMA,
        "kind": "cpu",
        "machine": machine_info("cpu"),
        "versions": versions(),
        "settings": {"hash_mb": list(hash_mb), "hash_repeats": hash_repeats, "requests": requests,
                     "images_per_request": images, "shapes": [list(s) for s in shapes], "repeats": repeats,
                     "max_seconds_per_case": max_seconds, "torch_threads": torch.get_num_threads()},
        "hashing": measure_hashing(hash_mb, hash_repeats),
        "embed_chunks": embed_rows,
    }


def format_table(results: dict) -> str:
    lines = ["content hash (xxh3-128) vs sha256, float32 features (cold: read from DRAM):",
             f"{'MB':>6} {'xxh3 ms':>9} {'ms/MB':>7} {'hot ms':>8} {'sha256 ms':>10} {'ms/MB':>7}"]
    for r in results["hashing"]:
        lines.append(f"{r['size_mb']:>6.2f} {r['content_hash_ms']:>9.3f} {r['content_hash_ms_per_mb']:>7.3f} "
                     f"{r['content_hash_hot_ms']:>8.3f} {r['sha256_ms']:>10.3f} {r['sha256_ms_per_mb']:>7.3f}")
    lines += ["", "embed_chunks bookkeeping (encoder time excluded), one step:",
              f"{'req x img':>9} {'tok x hid':>10} {'mode':>11} {'cache':>5} {'calls':>5} "
              f"{'step ms':>8} {'book ms':>8} {'us/item':>8} {'out MB':>7} {'cat ms':>7}"]
    for r in results["embed_chunks"]:
        lines.append(
            f"{r['requests']:>4} x {r['images_per_request']:<2} {r['tokens_per_image']:>4} x {r['hidden']:<4} "
            f"{r['mode']:>11} {r['cache']:>5} {r['encoder_calls']:>5} {r['step_ms_median']:>8.2f} "
            f"{r['bookkeeping_ms_median']:>8.2f} {r['bookkeeping_us_per_item']:>8.1f} "
            f"{r['assembled_bytes'] / MB:>7.1f} {r['concat_ms_median']:>7.2f}")
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int]:
    tokens, _, hidden = text.partition("x")
    return int(tokens), int(hidden)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitkit.bench.bookkeeping", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/cpu/bookkeeping.json"))
    parser.add_argument("--hash-mb", type=float, nargs="+", default=[1, 4, 16], help="feature sizes (MB)")
    parser.add_argument("--hash-repeats", type=int, default=30)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[(16, 8), (576, 1024)],
                        help="embedding shapes TOKENSxHIDDEN")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=15, help="cap per embed_chunks case (fewer repeats)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    results = run(hash_mb=args.hash_mb, hash_repeats=args.hash_repeats, requests=args.requests,
                  images=args.images, shapes=args.shapes, repeats=args.repeats, max_seconds=args.max_seconds,
                  progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
