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
"""

from vitkit.sim.admission import CacheAwareAdmission
from vitkit.sim.arrivals import ArrivalProcess
from vitkit.sim.bucketcost import BucketCost, fit_bucket_cost, fit_stream_bucket_cost
from vitkit.sim.costmodel import CallCost, ModelledEncoder, fit_cost_model, fit_cost_models, load_results
from vitkit.sim.engine import fixed_step, plan_steps, run_steps
from vitkit.sim.fake import FakeEncoder, bytes_per_token, cache_bytes_for_tokens, fake_item, qwen_like_tokens
from vitkit.sim.run import (
    RunSummary,
    SimRun,
    StepRow,
    Stream,
    WindowRow,
    compare,
    prepare,
    replay,
    simulate,
    summarize,
    summary_records,
    to_records,
)
from vitkit.sim.scheduler import Arrival, Scheduler, Step, Window
from vitkit.sim.stepcost import StepCosts, load_encoder_cost
from vitkit.sim.timing import EncoderTime, TimedEncoder
from vitkit.sim.trace import ImageSpec, Trace, TraceRequest, example_traces, load_trace, save_trace, trace_from_json, trace_to_json
from vitkit.sim.ttft import ReplayConfig, TimedRun, load_sweep, sustainable_rate, timed_replay
from vitkit.sim.workload import WorkloadParams, build_requests, generate_workload, processing_items

__all__ = [
    "Arrival", "CallCost", "EncoderTime", "FakeEncoder", "ImageSpec", "ModelledEncoder", "RunSummary",
    "Scheduler", "SimRun", "Step", "StepRow", "Stream", "TimedEncoder", "Trace", "TraceRequest", "Window",
    "WindowRow", "WorkloadParams", "build_requests", "bytes_per_token", "cache_bytes_for_tokens", "compare", "example_traces",
    "fake_item", "fit_cost_model", "fixed_step", "fit_cost_models", "generate_workload", "load_results", "load_trace",
    "plan_steps", "prepare", "processing_items", "qwen_like_tokens", "replay", "run_steps", "save_trace", "simulate",
    "summarize", "summary_records", "to_records", "trace_from_json", "trace_to_json",
    # time to first token under load
    "ArrivalProcess", "CacheAwareAdmission", "ReplayConfig", "StepCosts", "TimedRun", "load_encoder_cost",
    "load_sweep", "sustainable_rate", "timed_replay",
    # the bucketed encoder's cost: ms per bucket graph + per call
    "BucketCost", "fit_bucket_cost", "fit_stream_bucket_cost",
]
