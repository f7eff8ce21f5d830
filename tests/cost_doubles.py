"""Cost models small enough to check by hand, for replays whose clock a test works out itself, and the
schedule of a fixed-step clock alone (``plan_steps``).

Test modules import them (``from cost_doubles import line_cost``), as they import ``conftest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitkit.cache import EmbeddingCache
from vitkit.costs.clock import StepClock, StepCosts
from vitkit.costs.encoder import BucketCost, EncoderCost
from vitkit.encoders.buckets import Buckets
from vitkit.lm.decoder import check_windows
from vitkit.request import Request
from vitkit.sim.engine import ReplayConfig, run_steps
from vitkit.sim.fake import FakeEncoder

ONE_BUCKET = Buckets((1 << 20,), max_items=1 << 10)  # larger than any call: a call is one pack


def line_call(per_call_ms: float, ms_per_row: float) -> BucketCost:
    """A real ``BucketCost`` whose call of ``n`` rows costs ``per_call_ms + ms_per_row * n``: one
    bucket holding any call, no graph ms, only the per-call part and the host's share per unit
    (one unit a row)."""
    return BucketCost("enc", "test", ONE_BUCKET, (0.0,), per_call_ms, 1, ONE_BUCKET.sizes, 0, source="test line",
                      per_unit_ms=ms_per_row)


@dataclass(frozen=True)
class LinearPrefill:
    """Test double of the prefill model: ``ms_per_token`` per new token, nothing else."""

    ms_per_token: float = 0.1
    source: str = "test double"

    def step_ms(self, windows):
        return self.ms_per_token * sum(new for _, new in check_windows(windows))


def line_costs(per_call_ms: float = 2.0, ms_per_row: float = 0.01, bookkeeping_ms: float = 1.0,
               prefill_ms_per_token: float = 0.1) -> StepCosts:
    """Step costs of a line encoder, a constant bookkeeping per step and a per-token prefill."""
    encoder = EncoderCost(line_call(per_call_ms, ms_per_row), bookkeeping_ms=bookkeeping_ms, source="test")
    return StepCosts(encoder, LinearPrefill(prefill_ms_per_token))


def plan_steps(arrivals, scheduler, step_ms=50.0):
    """The scheduler's steps every ``step_ms``: the step loop over prompts without images (nothing to encode)."""
    clock = StepClock(step_ms=step_ms)
    requests, cache = {}, EmbeddingCache(1)
    policy = scheduler.build(requests, cache, 1)
    for arrival in arrivals:
        requests[arrival.rid] = Request(arrival.rid, (), (), prompt_len=arrival.prompt_len)
        policy.add(arrival)
    return [ran.step for ran in run_steps(requests, policy, FakeEncoder(), cache, ReplayConfig(scheduler), clock)]
