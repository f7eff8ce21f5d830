"""Scheduler model: hand-checked windows on small streams, and invariants on random ones."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_doubles import plan_steps
from vitkit.sim.scheduler import Arrival, Scheduler, SchedulerConfig, Window


def windows(steps):
    return [[(w.rid, w.start, w.stop) for w in s.windows] for s in steps]


def test_budget_shared_in_arrival_order_and_late_arrival_joins_later():
    arrivals = [Arrival("A", 10, 0.0), Arrival("B", 3, 0.0), Arrival("C", 5, 60.0)]
    steps = plan_steps(arrivals, SchedulerConfig(8), step_ms=50.0)
    # step 0: A takes the whole budget; step 1: A's last 2 tokens, then B joins with 3 of the 6 left;
    # C arrives at 60 ms, so it first runs in the step at 100 ms.
    assert windows(steps) == [[("A", 0, 8)], [("A", 8, 10), ("B", 0, 3)], [("C", 0, 5)]]
    assert [s.time_ms for s in steps] == [0.0, 50.0, 100.0]
    assert [s.admitted for s in steps] == [("A",), ("B",), ("C",)]
    assert [s.finished for s in steps] == [(), ("A", "B"), ("C",)]


def test_per_request_cap_and_max_running():
    arrivals = [Arrival("A", 7), Arrival("B", 4), Arrival("C", 2)]
    steps = plan_steps(arrivals, SchedulerConfig(8, max_running=2, long_prefill_token_threshold=3))
    # C waits for a free slot; B's slot frees only after the step in which B finishes.
    assert windows(steps) == [
        [("A", 0, 3), ("B", 0, 3)],
        [("A", 3, 6), ("B", 3, 4)],
        [("A", 6, 7), ("C", 0, 2)],
    ]
    assert steps[1].finished == ("B",)
    assert steps[2].finished == ("A", "C")


def test_abort_mid_prompt_drops_the_request_before_the_next_step():
    arrivals = [Arrival("A", 10, 0.0, abort_ms=60.0), Arrival("B", 3, 0.0)]
    steps = plan_steps(arrivals, SchedulerConfig(4), step_ms=50.0)
    assert windows(steps) == [[("A", 0, 4)], [("A", 4, 8)], [("B", 0, 3)]]
    assert steps[2].aborted == ("A",)
    assert all(s.aborted == () for s in steps[:2])


def test_abort_before_arrival_and_idle_gap():
    arrivals = [Arrival("A", 2, 0.0), Arrival("D", 4, 500.0, abort_ms=500.0), Arrival("E", 1, 1000.0)]
    steps = plan_steps(arrivals, SchedulerConfig(8), step_ms=50.0)
    assert windows(steps) == [[("A", 0, 2)], [], [("E", 0, 1)]]
    assert steps[1].aborted == ("D",) and steps[1].time_ms == 500.0
    assert steps[2].time_ms == 1000.0  # the clock jumps over idle time


def test_bad_input_is_rejected_with_names():
    with pytest.raises(ValueError, match="chunked_prefill_size"):
        Scheduler(0)
    s = Scheduler(8)
    s.add(Arrival("A", 3))
    with pytest.raises(ValueError, match="'A' was already added"):
        s.add(Arrival("A", 5))
    with pytest.raises(ValueError, match="request 'Z': prompt_len"):
        s.add(Arrival("Z", 0))
    with pytest.raises(ValueError, match="step_ms"):
        plan_steps([Arrival("A", 3)], SchedulerConfig(8), step_ms=0)
    with pytest.raises(ValueError, match="max_running must be a positive int, got 0"):
        SchedulerConfig(8, max_running=0)
    with pytest.raises(ValueError, match="policy must be one of"):
        SchedulerConfig(8, policy="greedy")
    with pytest.raises(ValueError, match="needs a step budget"):
        SchedulerConfig(None)


@pytest.mark.parametrize("field, value", [("arrival_ms", float("nan")), ("arrival_ms", "0"), ("abort_ms", float("nan")),
                                          ("abort_ms", float("inf")), ("arrival_ms", True)])
def test_bad_times_are_rejected_not_looped_on_or_dropped(field, value):
    # regression: a NaN arrival made plan_steps loop for ever; a NaN abort was silently never applied
    scheduler = Scheduler(8)
    with pytest.raises(ValueError, match=f"request 'A': {field} must be a finite number \\(ms\\), got {value!r}"):
        scheduler.add(Arrival("A", 3, **{field: value}))  # plan_steps adds each arrival first
    assert scheduler.idle
    scheduler.add(Arrival("A", 3))  # nothing of the refused one was kept


def test_window_span():
    w = Window("A", 2, 5)
    assert len(w) == 3 and (w.span.start, w.span.stop) == (2, 5)


streams = st.lists(
    st.tuples(st.integers(1, 40), st.integers(0, 6)),  # (prompt_len, arrival step)
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(streams, st.integers(1, 32), st.one_of(st.none(), st.integers(1, 4)), st.one_of(st.none(), st.integers(1, 16)))
def test_schedule_invariants(stream, budget, max_running, cap):
    arrivals = [Arrival(f"r{k}", n, 10.0 * t) for k, (n, t) in enumerate(stream)]
    steps = plan_steps(arrivals, SchedulerConfig(budget, long_prefill_token_threshold=cap, max_running=max_running), step_ms=10.0)
    progress = {a.rid: 0 for a in arrivals}
    arrival_of = {a.rid: a.arrival_ms for a in arrivals}
    order = [a.rid for a in sorted(arrivals, key=lambda a: a.arrival_ms)]  # stable: ties keep input order
    prompt_len = {a.rid: a.prompt_len for a in arrivals}
    for step in steps:
        assert 0 < step.tokens <= budget
        assert len({w.rid for w in step.windows}) == len(step.windows)
        if max_running is not None:
            assert len(step.windows) <= max_running
        ranks = [order.index(w.rid) for w in step.windows]
        assert ranks == sorted(ranks)  # arrival order
        for w in step.windows:
            assert w.start == progress[w.rid]  # contiguous: each window starts where the last stopped
            assert arrival_of[w.rid] <= step.time_ms
            if cap is not None:
                assert len(w) <= cap
            progress[w.rid] = w.stop
        if cap is None:  # only the last window of a step may leave its request part-way
            partial = [w for w in step.windows if w.stop < prompt_len[w.rid]]
            assert all(w is step.windows[-1] for w in partial)
    assert progress == prompt_len  # every prompt runs to its end


def test_a_cap_without_a_budget_advances_every_unfinished_request_by_the_chunk():
    scheduler = Scheduler(None, long_prefill_token_threshold=4)  # notebook 01's scheduler
    for rid, n in (("A", 10), ("B", 3), ("C", 8)):
        scheduler.add(Arrival(rid, n))
    steps = []
    while (step := scheduler.schedule(50.0 * len(steps))) is not None:
        steps.append(step)
    assert windows(steps) == [[("A", 0, 4), ("B", 0, 3), ("C", 0, 4)], [("A", 4, 8), ("C", 4, 8)], [("A", 8, 10)]]
    assert [s.finished for s in steps] == [("B",), ("C",), ("A",)] and scheduler.idle
    with pytest.raises(ValueError, match="long_prefill_token_threshold must be a positive int, got 0"):
        Scheduler(None, long_prefill_token_threshold=0)


def test_nothing_to_run_is_no_step_unless_an_abort_is_recorded():
    scheduler = Scheduler(8)
    scheduler.add(Arrival("A", 3, 100.0))
    scheduler.add(Arrival("B", 3, 200.0, abort_ms=50.0))
    assert scheduler.schedule(0.0) is None  # nobody has arrived
    step = scheduler.schedule(60.0)  # B's abort is due: recorded in a step without windows
    assert step.windows == () and step.aborted == ("B",) and step.index == 0
    assert scheduler.next_arrival_ms() == 100.0


class _Coin:
    """Admission double: a running request's window is refused whenever the next coin says so, so steps
    deadlock at random; a waiting request is let in only while nothing runs."""

    def __init__(self, coins):
        self.coins, self.running = iter(coins), {}

    def check(self, rid):
        pass

    def begin_step(self, aborted=(), progress=None):
        self.running = dict(progress or {})

    def grant(self, rid, start, stop):
        if rid not in self.running:
            return start if self.running else stop
        return stop if next(self.coins, True) else start

    def unblock(self):
        return False

    def preempt(self, rid):
        pass


@settings(max_examples=150, deadline=None)
@given(streams, st.integers(1, 32), st.one_of(st.none(), st.integers(1, 16)), st.lists(st.booleans(), max_size=60))
def test_preemption_invariants(stream, budget, cap, coins):
    arrivals = [Arrival(f"r{k}", n, 10.0 * t) for k, (n, t) in enumerate(stream)]
    scheduler = Scheduler(budget, long_prefill_token_threshold=cap, admission=_Coin(coins))
    for arrival in arrivals:
        scheduler.add(arrival)
    progress = {a.rid: 0 for a in arrivals}
    prompt_len = {a.rid: a.prompt_len for a in arrivals}
    now = 0.0
    while not scheduler.idle:
        running = {rid for rid, done in progress.items() if 0 < done < prompt_len[rid]}
        step = scheduler.schedule(now)
        now = now + 10.0 if step is None or step.windows else now
        if step is None:
            continue
        assert step.windows or not step.preempted  # a step that preempts runs something: it never spins
        assert 0 < step.tokens <= budget or not step.windows
        for w in step.preempted:  # the newest first, back to the start, having done what it had done
            assert w.start == 0 and w.stop == progress[w.rid] and w.rid in running
            progress[w.rid] = 0
        if step.preempted and step.admitted:  # nobody is let in while preempting, unless nothing is left running
            assert running <= {w.rid for w in step.preempted} | set(step.admitted)
        for w in step.windows:
            assert w.start == progress[w.rid]  # contiguous, or from 0 after a preemption
            progress[w.rid] = w.stop
    assert progress == prompt_len  # every prompt runs to its end


def test_without_admission_nothing_is_preempted():
    arrivals = [Arrival(f"r{k}", 7 * k + 3, 5.0 * k) for k in range(6)]
    steps = plan_steps(arrivals, SchedulerConfig(8, long_prefill_token_threshold=3))
    assert all(s.preempted == () for s in steps)


def test_budget_for_cache_raises_a_cache_aware_budget_to_the_cache_only():
    aware = SchedulerConfig(4096, policy="cache-aware")
    assert aware.budget_for_cache(2048).encoder_budget_tokens == 4096  # the step budget already covers it
    assert aware.budget_for_cache(262144).encoder_budget_tokens == 262144  # a video the cache holds
    assert SchedulerConfig(4096, policy="cache-aware", encoder_budget_tokens=9000).budget_for_cache(
        2048).encoder_budget_tokens == 9000
    legacy = SchedulerConfig(4096)
    assert legacy.budget_for_cache(262144) is legacy  # legacy admission has no encoder budget
