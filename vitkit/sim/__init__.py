"""Chunked-prefill step simulator: replay a request stream through a scheduler model and
``embed_chunks``, per step, for both embedding modes, cache sizes and pinning on/off.

Modules, in the order a step flows through them: ``scheduler`` (who runs which window),
``trace`` / ``workload`` (the request stream), ``fake`` / ``costmodel`` / ``bucketcost`` /
``timing`` (the encoder and its time), ``engine`` (the one step loop), ``run`` (the replay and its tables),
``plot`` (figures).

Time to first token under load: ``arrivals`` (Poisson, bursts, trace times), ``admission``
(today's policy, or vLLM's cache-aware one), ``stepcost`` (encoder + prefill + bookkeeping ms
of a step, from models fitted to H100 measurements), ``latency`` (queueing delay, TTFT,
percentiles), ``ttft`` (the timed replay on the step loop, load sweeps), ``load`` (workloads,
the sustainable-rate search), ``plot_ttft`` (figures), ``ttft_report`` / ``validate`` (CLIs).
Decode is not modelled.

The package exports what notebooks and users call; everything else is module-level
(``vitkit.sim.run.SimRun``, ``vitkit.sim.engine.run_steps``, ``vitkit.sim.trace.Trace``, ...).
"""

from vitkit.sim.costmodel import ModelledEncoder, fit_cost_model, fit_cost_models
from vitkit.sim.fake import FakeEncoder, cache_bytes_for_tokens
from vitkit.sim.prefill import load_prefill_cost
from vitkit.sim.run import compare, prepare, replay, simulate
from vitkit.sim.scheduler import Arrival, Scheduler
from vitkit.sim.stepcost import StepCosts, load_encoder_cost
from vitkit.sim.trace import example_traces, load_trace, save_trace
from vitkit.sim.ttft import ReplayConfig, load_sweep, sustainable_rate, timed_replay
from vitkit.sim.workload import WorkloadParams, generate_workload

__all__ = [
    # replay a request stream through the scheduler and the step loop (notebook 03, python -m vitkit.sim)
    "prepare", "simulate", "compare", "replay", "Scheduler", "Arrival",
    # request streams
    "load_trace", "save_trace", "example_traces", "generate_workload", "WorkloadParams",
    # encoders without a model: fake embeddings, optionally with a modelled H100 time
    "FakeEncoder", "ModelledEncoder", "cache_bytes_for_tokens",
    # cost models fitted to stored H100 results
    "fit_cost_model", "fit_cost_models", "load_encoder_cost", "load_prefill_cost", "StepCosts",
    # time to first token under load
    "timed_replay", "ReplayConfig", "load_sweep", "sustainable_rate",
]
