"""Chunked-prefill step simulator: replay a request stream through a scheduler and ``embed_chunks``, step
by step, for both embedding modes, cache sizes, pinning and admission. Step costs come from ``vitkit.costs``;
decode is not modelled.
"""

from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder
from vitkit.sim.replay import Run, compare, load_sweep, prepare, replay, replay_stream, sustainable_rate
from vitkit.sim.scheduler import Arrival, Scheduler, SchedulerConfig
from vitkit.sim.trace import example_traces, load_trace, save_trace
from vitkit.sim.workload import WorkloadParams, generate_workload

__all__ = [
    # replaying a request stream, the streams, embeddings without a model, time to first token under load
    "prepare", "replay", "replay_stream", "compare", "Run", "ReplayConfig", "SchedulerConfig", "Scheduler", "Arrival",
    "load_trace", "save_trace", "example_traces", "generate_workload", "WorkloadParams", "FakeEncoder",
    "load_sweep", "sustainable_rate",
]
