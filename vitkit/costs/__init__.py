"""Cost models of an encoder call and a prefill step, the step clock, and the one reader of measured files."""

from vitkit.costs.clock import StepClock, StepCosts, StepTimes, TimedEncoder
from vitkit.costs.dp import DataParallelCallCost, DPScaling, data_parallel, load_dp_scaling
from vitkit.costs.eager import LineCallCost, load_eager_cost
from vitkit.costs.encoder import BucketCost, EncoderCost, load_encoder_cost, measured_bucket_cost
from vitkit.costs.prefill import PrefillCost, load_prefill_cost

__all__ = ["BucketCost", "EncoderCost", "PrefillCost", "StepClock", "StepCosts", "StepTimes", "TimedEncoder",
           "load_encoder_cost", "load_prefill_cost", "measured_bucket_cost",
           # the eager encoder's line, and a call spread over N GPUs from the measured data-parallel scaling
           "LineCallCost", "load_eager_cost", "DPScaling", "DataParallelCallCost", "data_parallel", "load_dp_scaling"]
