"""What the serving engines call a deployment setting, and what they run when told nothing.

A ``Setting`` is what ``vitkit.sim.advise`` searches: the embedding path, the step budget, the embedding cache,
admission, the encoder budget, graphs or eager and GPUs for the encoder. ``sglang_flags`` and ``vllm_flags``
write it in each engine's own words, or say that the engine has no equivalent. Sources (read for this
module; flags change between releases, so each line names where it comes from):

- SGLang: ``python/sglang/srt/server_args.py`` (``--chunked-prefill-size``, default 8192 on an H100 or H200;
  ``--mm-enable-dp-encoder``: "the dp size will be set to the tp size"), ``python/sglang/srt/environ.py``
  (``SGLANG_VLM_CACHE_SIZE_MB``, default 100; ``SGLANG_VIT_ENABLE_CUDA_GRAPH``, default off); PR 24013
  (a step's cache misses batched across requests, de-duplicated by hash: the only path since); open PR 38368
  (``--mm-max-encoder-input-tokens-per-batch``, not released).
- vLLM: ``vllm/config/scheduler.py`` (``max_num_encoder_input_tokens`` and ``encoder_cache_size`` are set to
  ``max_num_batched_tokens``, "not currently configurable"), ``vllm/engine/arg_utils.py`` (``vllm serve`` on
  a card of 70 GB or more, not an A100: ``--max-num-batched-tokens`` 8192), ``vllm/config/multimodal.py``
  (``--mm-encoder-tp-mode data``), ``vllm/config/compilation.py`` (``cudagraph_mm_encoder``, default False),
  ``vllm/v1/worker/gpu_model_runner.py`` (``_execute_mm_encoder``: a step's encoder inputs batched by modality).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vitkit.sim.engine import ReplayConfig
from vitkit.sim.scheduler import SchedulerConfig

ENCODER_IMPLS = ("graphs", "eager")
SGLANG_CACHE_MB = 100  # SGLANG_VLM_CACHE_SIZE_MB's default
DEFAULT_STEP_TOKENS = 8192  # both engines' step budget on an 80-141 GB card (H100, H200)
MIB = 1 << 20


@dataclass(frozen=True)
class Setting:
    """One deployment choice: ``mode`` of embedding, the step budget (tokens), the embedding cache (rows),
    admission ``policy`` with ``encoder_budget_tokens`` rows a step (cache-aware only; None: the step
    budget), the ``encoder`` run as CUDA ``"graphs"`` or ``"eager"``, and the GPUs it spreads over."""

    mode: str = "batched"
    chunked_prefill_size: int = DEFAULT_STEP_TOKENS
    cache_tokens: int = 16384
    policy: str = "legacy"
    encoder_budget_tokens: int | None = None
    encoder: str = "graphs"
    gpus: int = 1

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_IMPLS:
            raise ValueError(f"encoder must be one of {ENCODER_IMPLS}, got {self.encoder!r}")
        self.replay_config()  # the scheduler and replay check the rest

    def normalised(self) -> Setting:
        """The same setting written one way: an encoder budget only under cache-aware admission, and not
        when it equals the step budget (so equal settings compare equal)."""
        budget = self.encoder_budget_tokens
        if self.policy != "cache-aware" or budget == self.chunked_prefill_size:
            budget = None
        return replace(self, encoder_budget_tokens=budget)

    def replay_config(self) -> ReplayConfig:
        scheduler = SchedulerConfig(self.chunked_prefill_size, policy=self.policy,
                                    encoder_budget_tokens=self.encoder_budget_tokens if self.policy == "cache-aware"
                                    else None)
        return ReplayConfig(scheduler, mode=self.mode, cache_tokens=self.cache_tokens)

    def label(self) -> str:
        budget = ""
        if self.policy == "cache-aware":
            budget = f" (encoder budget {self.encoder_budget_tokens or self.chunked_prefill_size})"
        return (f"{self.mode}, {self.encoder} encoder, chunk {self.chunked_prefill_size}, cache {self.cache_tokens} "
                f"rows, {self.policy}{budget}, {self.gpus} GPU{'s' if self.gpus > 1 else ''}")


def cache_mb(rows: int, row_bytes: int) -> int:
    """MiB (rounded up) that ``rows`` embedding rows of ``row_bytes`` take: SGLang sizes its cache in MB."""
    return -(-rows * row_bytes // MIB)


def sglang_default(row_bytes: int) -> Setting:
    """What SGLang runs untold on an 80-141 GB card: 8192-token steps, a 100 MB cache, batched misses,
    admission by tokens, the ViT eager, one GPU for it."""
    return Setting("batched", DEFAULT_STEP_TOKENS, SGLANG_CACHE_MB * MIB // row_bytes, "legacy", None, "eager", 1)


def vllm_default(largest_item_rows: int) -> Setting:
    """What ``vllm serve`` runs untold on a 70 GB+ card (not an A100): 8192-token steps, an encoder cache and
    an encoder budget of as many rows (at least the largest item), cache-aware admission, the encoder eager."""
    rows = max(DEFAULT_STEP_TOKENS, largest_item_rows)
    return Setting("batched", DEFAULT_STEP_TOKENS, rows, "cache-aware", rows, "eager", 1).normalised()


def sglang_flags(s: Setting, row_bytes: int) -> list[str]:
    """``s`` as SGLang flags and environment variables; what it cannot set, said as such."""
    out = [f"--chunked-prefill-size {s.chunked_prefill_size}",
           f"SGLANG_VLM_CACHE_SIZE_MB={cache_mb(s.cache_tokens, row_bytes)} ({s.cache_tokens} rows of {row_bytes} B)"]
    if s.mode == "per_request":
        out.append("no equivalent for per-request encoding: SGLang batches a step's misses across requests since "
                   "PR 24013")
    if s.policy == "cache-aware":
        out.append("no equivalent for cache-aware admission: SGLang admits by the token budget alone")
        if s.encoder_budget_tokens is not None:
            out.append(f"no equivalent for an encoder budget of {s.encoder_budget_tokens} rows a step (open PR 38368's "
                       "--mm-max-encoder-input-tokens-per-batch would split a call, not hold a window back)")
    out.append("SGLANG_VIT_ENABLE_CUDA_GRAPH=1" if s.encoder == "graphs" else "ViT eager (the default)")
    if s.gpus > 1:
        out.append(f"--tp {s.gpus} --mm-enable-dp-encoder (encoder data-parallel over the TP ranks)")
    return out


def vllm_flags(s: Setting, largest_item_rows: int) -> list[str]:
    """``s`` as ``vllm serve`` flags; what it cannot set, said as such."""
    out = [f"--max-num-batched-tokens {s.chunked_prefill_size}"]
    ties = max(s.chunked_prefill_size, largest_item_rows)  # vLLM's encoder cache and budget, in rows
    if s.cache_tokens != ties:
        out.append(f"no equivalent for a {s.cache_tokens}-row encoder cache: vLLM sizes it to "
                   f"--max-num-batched-tokens ({ties} rows here; SchedulerConfig.encoder_cache_size)")
    if s.mode == "per_request":
        out.append("no equivalent for per-request encoding: vLLM batches a step's encoder inputs by modality")
    if s.policy == "legacy":
        out.append("no equivalent for legacy admission: vLLM's scheduler always checks the encoder cache and budget")
    elif (s.encoder_budget_tokens or s.chunked_prefill_size) != ties:
        out.append(f"no equivalent for an encoder budget of {s.encoder_budget_tokens} rows a step: vLLM sets it to "
                   "--max-num-batched-tokens (SchedulerConfig.max_num_encoder_input_tokens)")
    if s.encoder == "graphs":
        out.append("--compilation-config '{\"cudagraph_mm_encoder\": true}'")
    else:
        out.append("encoder eager (the default)")
    if s.gpus > 1:
        out.append(f"--tensor-parallel-size {s.gpus} --mm-encoder-tp-mode data")
    return out


@dataclass(frozen=True)
class EngineDefault:
    """An engine's untold setting for a trace, and the words that say which defaults it is."""

    engine: str
    setting: Setting
    says: str


def engine_defaults(row_bytes: int, largest_item_rows: int) -> list[EngineDefault]:
    sglang, vllm = sglang_default(row_bytes), vllm_default(largest_item_rows)
    return [
        EngineDefault("SGLang", sglang, f"--chunked-prefill-size {DEFAULT_STEP_TOKENS}, SGLANG_VLM_CACHE_SIZE_MB="
                      f"{SGLANG_CACHE_MB} ({sglang.cache_tokens} rows), misses batched across requests, admission by "
                      "tokens, ViT eager, 1 GPU"),
        EngineDefault("vLLM", vllm, f"--max-num-batched-tokens {DEFAULT_STEP_TOKENS}, encoder cache and budget "
                      f"{vllm.cache_tokens} rows, inputs batched across requests, cache-aware scheduling, encoder "
                      "eager, 1 GPU"),
    ]
