"""The step clock's parts: timing an encoder, the windows the prefill model reads, what timed a step."""

from __future__ import annotations

import pytest

from cost_doubles import LinearPrefill, line_costs
from vitkit.costs.clock import StepClock, StepTimes, TimedEncoder, as_timed, prefill_source, prefill_windows
from vitkit.sim.fake import FakeEncoder, fake_item


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
