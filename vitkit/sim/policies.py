"""The serving engines' policies for long items (videos, document scans), as replay settings, and the table
that compares them per cache size.

- ``"sglang"`` (``python/sglang/srt/managers/mm_utils.py``, ``schedule_batch.py``): a video is one item;
  items with a single placeholder span (images) are batched across the step's requests (PR 25910), a
  multi-span item (a video) takes the per-request path and is encoded whole in its request's own call;
  one call per modality (``embed_mm_inputs`` loops over ``Modality.all()``); admission by the token
  budget alone; the ``MultiModalStaticCache`` pins nothing, and an embedding larger than it is not stored
  ("Multimodal embedding cache is full"), so such a video is encoded again in every window it spans, and by
  every request of a step that shows it (the per-request path runs one request after another).
- ``"vllm"`` (``vllm/v1/core/sched/scheduler.py`` ``_try_schedule_encoder_inputs``,
  ``vllm/v1/core/encoder_cache_manager.py``, ``gpu_model_runner._execute_mm_encoder``): a video is one
  item, encoded whole at the first window that overlaps it; the window is cut before an item that does not
  fit the step's encoder budget or the free cache; an item larger than the cache is refused when the request
  arrives, with the reason (#33110; it used to hang, #26223); the rest of the stream runs. A request holds
  an item until its tokens pass it, and nothing for a repeat; one call per run of consecutive same-modality
  items (``group_mm_kwargs_by_modality``). The encoder budget is raised to the largest item the cache
  takes, as ``compute_mm_encoder_budget`` raises it to the largest item.
- ``"vitkit"``: a video as frame-group items (``"frame-groups:g"``: g temporal patches an item, each its own
  span, hash and cache entry; for the Qwen2-VL towers the rows equal the whole video's), batched across
  requests in one call per tower, under cache-aware admission that also holds a request's repeated images
  (``vitkit.sim.admission``). A group is pinned only while a window is inside it (vLLM's rule, per item);
  the groups ahead of a running request are kept by eviction order instead (``protect_ahead``): the cache
  evicts what no running request will read again first, then what is read farthest ahead. Pinning them
  would hold a whole video, as vLLM does, and stall admission; plain LRU evicts the groups just ahead of a
  second viewer of a video first (the least recently used) and it encodes them again. What no running
  request has asked for yet (a later request's video) is still lost to a small cache (the counts on
  video-qa: ``results/README.md``).

``compare_policies`` replays a trace under each policy and cache size; ``smallest_cache_without_re_encodes``
reads the answer off its rows. ``python -m vitkit.sim.policies TRACE`` prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from vitkit.costs.clock import StepCosts
from vitkit.embed import Encoder
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.replay import Run, prepare, replay_stream
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import Trace

VITKIT_FRAME_GROUP = 2  # temporal patches (4 frames) an item: 720p groups of 1,440 rows fit a 2,048-row cache


@dataclass(frozen=True)
class EnginePolicy:
    """How an engine takes long items: the items a video becomes, admission, calls, and what it pins."""

    name: str
    video_items: str  # "whole" or "frame-groups:g"
    admission: str  # SchedulerConfig.policy
    grouping: str  # embed_chunks' grouping
    per_request_modalities: tuple[str, ...] = ()
    pin: bool = True
    pin_recurring: bool = True
    refuse_oversized: bool = False
    protect_ahead: bool = False  # ReplayConfig.protect_ahead: evict what no running request reads again first

    def replay_config(self, scheduler: SchedulerConfig, cache_tokens: int) -> ReplayConfig:
        """This policy on ``scheduler``'s steps with a cache of ``cache_tokens`` rows; under cache-aware
        admission the encoder budget is at least the cache, so an item the cache takes is never refused
        for the budget (vLLM raises both to its largest item)."""
        settings = replace(scheduler, policy=self.admission,
                           refuse_oversized=self.refuse_oversized).budget_for_cache(cache_tokens)
        return ReplayConfig(settings, mode="batched", pin=self.pin, cache_tokens=cache_tokens,
                            pin_recurring=self.pin_recurring, grouping=self.grouping,
                            per_request_modalities=self.per_request_modalities, protect_ahead=self.protect_ahead)


ENGINE_POLICIES: dict[str, EnginePolicy] = {
    "sglang": EnginePolicy("sglang", "whole", "legacy", "modality", per_request_modalities=("video",), pin=False),
    "vllm": EnginePolicy("vllm", "whole", "cache-aware", "consecutive", pin_recurring=False, refuse_oversized=True),
    "vitkit": EnginePolicy("vitkit", f"frame-groups:{VITKIT_FRAME_GROUP}", "cache-aware", "tower",
                           refuse_oversized=True, protect_ahead=True),
}


@dataclass(frozen=True)
class PolicyRow:
    """One policy at one cache size (rows): what the encoder did, what was refused or redone, and TTFT."""

    policy: str
    cache_tokens: int
    encoded_items: int
    encoded_rows: int
    encoder_calls: int
    re_encodings: int  # encodes of content the run had encoded before
    request_re_encodings: int  # of those, content its own request had lost between windows
    refused_requests: int
    refused_puts: int
    preemptions: int
    redone_tokens: int
    preemption_re_encodings: int
    finished: int
    ttft_p99_ms: float

    @classmethod
    def of(cls, policy: str, run: Run) -> PolicyRow:
        s = run.summary
        return cls(policy, run.config.cache_tokens, s.encoded_items, s.encoded_tokens, s.encoder_calls, s.re_encodings,
                   s.request_re_encodings, s.refused_requests, s.refused_puts, s.preemptions, s.redone_tokens,
                   s.preemption_re_encodings, run.latency.finished, run.latency.ttft_p99_ms)


def compare_policies(trace: Trace | str | Path, cache_tokens: Sequence[int], scheduler: SchedulerConfig,
                     costs: StepCosts | None = None, *, policies: Sequence[str] = tuple(ENGINE_POLICIES),
                     step_ms: float | None = None, encoder: Encoder | None = None) -> list[PolicyRow]:
    """Every policy at every cache size on ``trace`` (a fresh cache and scheduler each), timed by ``costs``
    or a fixed ``step_ms``; rows by policy, then cache size ascending."""
    unknown = [p for p in policies if p not in ENGINE_POLICIES]
    if unknown:
        raise ValueError(f"unknown engine policies {unknown}; known: {sorted(ENGINE_POLICIES)}")
    rows = []
    for name in policies:
        policy = ENGINE_POLICIES[name]
        stream = prepare(trace, video_items=policy.video_items)
        for tokens in sorted(cache_tokens):
            config = policy.replay_config(scheduler, tokens)
            rows.append(PolicyRow.of(name, replay_stream(stream, config, costs, step_ms=step_ms, encoder=encoder)))
    return rows


def smallest_cache_without_re_encodes(rows: Sequence[PolicyRow], policy: str) -> int | None:
    """The smallest cache (rows) of ``rows`` at which ``policy`` served every request (none refused) and
    encoded nothing twice; None when no cache size tried does."""
    sizes = [r.cache_tokens for r in rows if r.policy == policy and r.re_encodings == 0 and r.refused_requests == 0]
    return min(sizes, default=None)


def format_rows(rows: Sequence[PolicyRow]) -> str:
    """``rows`` as a plain-text table, then each policy's smallest cache without re-encodes."""
    names = [f.name for f in fields(PolicyRow)]
    cells = [[_cell(getattr(r, name)) for name in names] for r in rows]
    widths = [max(len(n), *(len(c[k]) for c in cells)) for k, n in enumerate(names)]
    lines = [" ".join(f"{v:>{w}}" for v, w in zip(line, widths)) for line in (names, *cells)]
    for policy in dict.fromkeys(r.policy for r in rows):
        lines.append(f"{policy}: smallest cache without re-encodes: {smallest_cache_without_re_encodes(rows, policy)}")
    return "\n".join(lines)


def _cell(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitkit.sim.policies", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", help="trace file or example name (e.g. video-qa, doc-qa, mixed-chat)")
    parser.add_argument("--cache-tokens", type=int, nargs="+", default=[2048, 4096, 16384, 65536, 262144])
    parser.add_argument("--chunked-prefill-size", type=int, default=4096)
    parser.add_argument("--long-prefill-token-threshold", type=int, default=1024)
    parser.add_argument("--policies", nargs="+", default=list(ENGINE_POLICIES), choices=sorted(ENGINE_POLICIES))
    parser.add_argument("--step-ms", type=float, default=50.0, help="fixed step time (ms): TTFT in steps, not a model")
    args = parser.parse_args(argv)
    scheduler = SchedulerConfig(args.chunked_prefill_size, args.long_prefill_token_threshold)
    print(format_rows(compare_policies(args.trace, args.cache_tokens, scheduler, policies=args.policies,
                                       step_ms=args.step_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
