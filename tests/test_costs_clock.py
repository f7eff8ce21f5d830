"""The step clock's parts: timing an encoder, the windows the prefill model reads, what timed a step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cost_doubles import LinearPrefill, line_costs
from vitkit.costs.clock import (StepClock, StepTimes, TimedEncoder, as_timed, call_item_rows, item_cost_rows,
                                prefill_source, prefill_windows)
from vitkit.costs.encoder import VideoSize
from vitkit.embed import EmbedResult, ItemOutcome
from vitkit.item import MultimodalItem
from vitkit.sim.fake import FakeEncoder, fake_item, fake_video_items


def test_timed_encoder_keeps_each_calls_time_and_taking_resets():
    encoder = TimedEncoder(FakeEncoder(hidden=8))
    items = [fake_item("a", 448, 448), fake_item("b", 896, 448)]
    out = encoder(items)
    encoder(items[:1])
    assert [tuple(t.shape) for t in out] == [(256, 8), (512, 8)]
    assert len(encoder.calls_ms) == 2 and all(ms >= 0 for ms in encoder.calls_ms)
    spent = encoder.take_time()
    assert spent.reported_ms == spent.measured_ms == pytest.approx(sum(encoder.calls_ms))
    assert encoder.take_time().reported_ms == 0.0  # taking resets; the per-call list is kept
    assert len(encoder.calls_ms) == 2


def test_as_timed_wraps_only_an_encoder_that_keeps_no_time():
    timed = TimedEncoder(FakeEncoder(hidden=8))
    assert as_timed(timed) is timed
    wrapped = as_timed(FakeEncoder(hidden=8))
    assert isinstance(wrapped, TimedEncoder)


def test_prefill_windows_are_context_and_new_tokens():
    assert prefill_windows([("a", 0, 200), ("b", 30, 30), ("c", 100, 120)]) == [(0, 200), (100, 20)]  # empty ones dropped


def test_what_timed_the_prefill_is_named_without_folders():
    class Runner:
        """A GPU runner names nothing: its class is the name."""

    assert prefill_source(Runner()) == "Runner"
    assert prefill_source(LinearPrefill(source="/home/me/vitkit/results/h100/prefill-20261127T061302Z.json (H100)")) == \
        "prefill-20261127T061302Z.json (H100)"
    costs = line_costs()
    assert costs.label() == "encoder: test; prefill: test double"


def test_a_clock_needs_costs_or_a_fixed_step():
    with pytest.raises(ValueError, match="needs a fixed step_ms"):
        StepClock()
    with pytest.raises(ValueError, match="step_ms must be a finite number > 0"):
        StepClock(line_costs(), step_ms=-1.0)
    clock = StepClock(step_ms=20.0)
    assert clock.encoder_measured and clock.costs is None  # nothing modelled: the encoder's own time
    assert not StepClock(line_costs()).encoder_measured
    assert StepTimes(1.0, 2.0, 3.0, 6.0).duration_ms == 6.0


def _step(requests, encoded):
    """Step 7 of one window per request, where ``encoded`` lists (rid, item index, call) encodes."""
    windows = [SimpleNamespace(rid=rid) for rid in requests]
    outcomes = tuple(tuple(ItemOutcome(k, requests[rid].items[k].hash, "encoded", call)
                           for r, k, call in encoded if r == rid) for rid in requests)
    calls = max(call for *_, call in encoded) + 1
    tokens = tuple(sum(requests[r].items[k].num_tokens for r, k, c in encoded if c == call) for call in range(calls))
    result = EmbedResult([None] * len(windows), calls, len(encoded), sum(tokens), 0, len(encoded),
                         call_tokens=tokens, outcomes=outcomes)
    return SimpleNamespace(index=7, windows=windows), result


def test_call_item_rows_carry_a_videos_temporal_patches():
    image, (video,) = fake_item("p", 448, 448), fake_video_items("v", 16, 360, 640)
    groups = fake_video_items("v", 16, 360, 640, video_items="frame-groups:3")
    requests = {"a": SimpleNamespace(items=[image, video]), "b": SimpleNamespace(items=groups)}
    step, result = _step(requests, [("a", 0, 0), ("a", 1, 0), ("b", 2, 1), ("b", 0, 1)])
    calls = call_item_rows(step, result, requests)
    t = video.meta["video_grid_thw"][0]
    assert calls == [[256, video.num_tokens], [groups[2].num_tokens, groups[0].num_tokens]]
    assert type(calls[0][0]) is int  # an image stays a plain count
    assert [(type(r), r.temporal) for r in (calls[0][1], *calls[1])] == [(VideoSize, t), (VideoSize, t - 6),
                                                                         (VideoSize, 3)]


@pytest.mark.parametrize("meta, match", [
    (None, r"has no meta\['video_grid_thw'\]"), ({"image_grid_thw": (2, 4, 4)}, r"meta keys: \['image_grid_thw'\]"),
    ({"video_grid_thw": (2, 4)}, "three positive ints"), ({"video_grid_thw": (3, 4, 4)}, "not a whole number"),
])
def test_call_item_rows_name_a_bad_video(meta, match):
    bad = MultimodalItem(torch.zeros(3), 8, modality="video", meta=meta)
    requests = {"r1": SimpleNamespace(items=[fake_item("p", 448, 448), bad])}
    step, result = _step(requests, [("r1", 0, 0), ("r1", 1, 0)])
    with pytest.raises(ValueError, match=rf"step 7: request 'r1' item 1 \(video, hash {bad.hash[:12]}\).*{match}"):
        call_item_rows(step, result, requests)
    assert item_cost_rows(fake_item("p", 448, 448)) == 256


def test_call_item_rows_tensor_grids_read_as_ints():
    video = MultimodalItem(torch.zeros(3), 16, modality="video", meta={"video_grid_thw": torch.tensor([[4, 4, 4]])})
    assert item_cost_rows(video).temporal == 4


def test_a_replays_clock_models_a_video_split_over_the_buckets():
    # a 64-frame 360p video (32 temporal patches of 26 x 46 patches) and an image in one call, buckets up to 4096
    from vitkit.costs.clock import StepCosts
    from vitkit.costs.encoder import BucketCost, EncoderCost
    from vitkit.encoders import Buckets
    from vitkit.sim.engine import ReplayConfig
    from vitkit.sim.replay import prepare, replay
    from vitkit.sim.scheduler import SchedulerConfig
    from vitkit.sim.trace import ImageSpec, Trace, TraceRequest

    buckets = Buckets((1024, 2048, 4096), max_items=4, multiple=4)
    call = BucketCost("enc", "test", buckets, (1.0, 1.5, 2.5), 0.5, 4, buckets.sizes, 0)
    costs = StepCosts(EncoderCost(call, 1.0, "test"), LinearPrefill())
    trace = Trace("v", (TraceRequest("a", 0.0, (10, "v", "p", 10)),),
                  {"v": ImageSpec(360, 640, frames=64), "p": ImageSpec(448, 448)})
    stream = prepare(trace)
    run = replay(stream.requests, stream.arrivals, ReplayConfig(SchedulerConfig(16384)), StepClock(costs, shadow=costs))
    (video_rows, image_rows), = run.shadow[0][2]
    video = stream.requests["a"].items[0]
    assert isinstance(video_rows, VideoSize) and video_rows.temporal == video.meta["video_grid_thw"][0] == 32
    assert image_rows == 256 and len(call.packs([video_rows, image_rows])) == 11  # groups of 3 temporal patches
    assert run.rows[0].encoder_ms == pytest.approx(call.call_ms([video_rows, image_rows]))
    assert run.rows[0].encoder_ms > call.call_ms([int(video_rows), image_rows])  # more than one oversize pack
