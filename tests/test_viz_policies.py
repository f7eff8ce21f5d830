"""Notebook 03's engine-policy view: its rows are compare_policies' rows, its smallest-cache line is
smallest_cache_without_re_encodes', its controls only select, and it says how TTFT was timed."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets", reason="widget tests need the notebooks extra: pip install -e '.[notebooks]'")

from cost_doubles import line_costs

from vitkit.costs.clock import StepCosts
from vitkit.sim.policies import ENGINE_POLICIES, compare_policies, smallest_cache_without_re_encodes
from vitkit.sim.scheduler import SchedulerConfig
from vitkit.sim.trace import example_traces, load_trace
from vitkit.viz.policy_widget import (
    FIRST_CHUNK_SIZE,
    FIXED_STEP_MS,
    POLICY_WORKLOADS,
    PolicyGrid,
    PolicyView,
    has_videos,
    load_costs,
    policy_figure,
    policy_table,
    policy_view,
    replay_grid,
    replay_policies,
    smallest_cache_line,
    smallest_caches,
)

SMALL = PolicyGrid(workloads=("mixed-chat", "doc-qa"), chunk_sizes=(2048, 4096), cache_tokens=(2048, 16384, 65536))


@pytest.fixture(scope="module")
def costs():
    models, where = load_costs()
    assert models is not None, where  # the stored card's models load
    return models, where


@pytest.fixture(scope="module")
def view():
    return policy_view(SMALL, progress=False)


def test_the_workloads_include_the_video_traces():
    assert {"video-qa", "mixed-chat", "doc-qa", "product-catalog"} <= set(POLICY_WORKLOADS) <= set(example_traces())
    assert POLICY_WORKLOADS[:2] == ("video-qa", "mixed-chat")  # the long-item traces first
    assert has_videos(load_trace("video-qa")) and has_videos(load_trace("mixed-chat"))
    assert not has_videos(load_trace("doc-qa"))
    assert list(PolicyGrid().workloads) == list(POLICY_WORKLOADS)


def test_the_views_rows_are_compare_policies_rows(view, costs):
    models, _ = costs
    for (workload, chunk), result in view.results.items():
        scheduler = SchedulerConfig(chunk, SMALL.long_prefill_token_threshold)
        assert result.modelled  # the stored models price every item, videos too
        assert list(result.rows) == compare_policies(workload, SMALL.cache_tokens, scheduler, models)
    for workload in SMALL.workloads:
        for chunk in SMALL.chunk_sizes:
            view.controls["workload"].value, view.controls["chunked_prefill_size"].value = workload, chunk
            assert view.rows == list(view.results[(workload, chunk)].rows)
            assert [r.policy for r in view.rows] == [p for p in ENGINE_POLICIES for _ in SMALL.cache_tokens]
            assert view.table.value.count("<tr>") == len(view.rows) + 1  # a header, then a row each


def test_the_smallest_cache_line_reads_the_rows_shown(view):
    view.controls["workload"].value, view.controls["chunked_prefill_size"].value = "doc-qa", 4096
    view.controls["cache_tokens"].value = SMALL.cache_tokens
    rows = view.rows
    assert smallest_caches(rows) == {p: smallest_cache_without_re_encodes(rows, p) for p in ENGINE_POLICIES}
    assert view.smallest.value == f"<b>{smallest_cache_line(rows)}</b>"
    view.controls["cache_tokens"].value = (2048,)  # one size shown: only its rows, only its answer
    assert {r.cache_tokens for r in view.rows} == {2048} and len(view.rows) == len(ENGINE_POLICIES)
    assert smallest_caches(view.rows) == {p: smallest_cache_without_re_encodes(view.rows, p) for p in ENGINE_POLICIES}
    assert view.smallest.value == f"<b>{smallest_cache_line(view.rows)}</b>"
    view.controls["cache_tokens"].value = ()  # none chosen: every size
    assert {r.cache_tokens for r in view.rows} == set(SMALL.cache_tokens)


def test_smallest_cache_line_says_none_when_no_size_shown_is_free_of_re_encodes():
    rows = compare_policies("doc-qa", [2048], SchedulerConfig(4096, 1024), step_ms=FIXED_STEP_MS)
    assert all(c is None for c in smallest_caches(rows).values())
    assert smallest_cache_line(rows).count("none of the sizes shown") == len(ENGINE_POLICIES)


def test_controls_only_select_and_redraw_in_under_a_second(view, monkeypatch):
    import vitkit.viz.policy_widget as module

    def no_replay(*args, **kwargs):
        raise AssertionError("a control replayed")

    monkeypatch.setattr(module, "compare_policies", no_replay)
    times = []
    for workload in SMALL.workloads:
        for chunk in SMALL.chunk_sizes:
            view.controls["workload"].value, view.controls["chunked_prefill_size"].value = workload, chunk
            times.append(view.redraw_ms)
    view.controls["workload"].value = "mixed-chat"  # seen before: its figure is kept
    assert view.redraw_ms < 1000, times


def test_the_status_and_the_figure_name_the_card_and_the_clock(view):
    view.controls["workload"].value = "mixed-chat"
    assert "TTFT modelled, models measured on h100" in view.status.value
    assert "Video calls are priced" in view.status.value and "with videos" in view.status.value
    assert "replays computed in" in view.status.value
    view.controls["workload"].value = "doc-qa"
    assert "Video calls" not in view.status.value and "no videos" in view.status.value
    fig = policy_figure(view.rows, "doc-qa; " + view.shown().clock)
    assert "models measured on h100" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes] == ["re-encodes (dashed: in a request)", "refused requests",
                                                   "TTFT p99 of the finished, ms"]
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == sorted(ENGINE_POLICIES)


def test_without_cost_models_ttft_is_in_fixed_steps_and_says_so(tmp_path):
    costs, where = load_costs(tmp_path)  # an empty folder: nothing to load
    assert costs is None and "no cost models load" in where
    result = replay_policies("doc-qa", 4096, SMALL, costs, where)
    assert not result.modelled and f"fixed {FIXED_STEP_MS:g} ms steps" in result.timing and where in result.timing
    scheduler = SchedulerConfig(4096, SMALL.long_prefill_token_threshold)
    assert list(result.rows) == compare_policies("doc-qa", SMALL.cache_tokens, scheduler, step_ms=FIXED_STEP_MS)


def test_costs_that_cannot_price_a_trace_fall_back_to_fixed_steps():
    class Unpriced:  # an encoder cost model that prices no call
        bookkeeping_ms, source = 0.0, "test double"

        def step_ms(self, calls):
            raise ValueError("cannot price a video of 8 temporal patches")

    costs = StepCosts(Unpriced(), line_costs().prefill)
    result = replay_policies("mixed-chat", 4096, SMALL, costs, "test models")
    assert not result.modelled and "cannot price this trace" in result.timing and "8 temporal patches" in result.timing
    assert result.clock == f"TTFT in fixed {FIXED_STEP_MS:g} ms steps, not modelled"
    view = PolicyView(SMALL, {(w, c): result for w in SMALL.workloads for c in SMALL.chunk_sizes})
    assert "cannot price this trace" in view.status.value
    modelled = replay_policies("doc-qa", 4096, SMALL, line_costs(), "test models")
    assert modelled.modelled and modelled.timing == "TTFT modelled, test models."


def test_table_rows_say_when_nothing_finished():
    (row,) = compare_policies("video-qa", [2048], SchedulerConfig(4096, 1024), policies=["vllm"], step_ms=50.0)
    assert row.refused_requests == len(load_trace("video-qa").requests) and row.finished == 0
    (cells,) = policy_table([row])
    assert cells["TTFT p99 ms"] == "none finished" and cells["refused requests"] == row.refused_requests
    assert list(cells) == ["policy", "cache (rows)", "encoder calls", "encodes", "re-encodes",
                           "re-encodes in a request", "refused requests", "refused puts", "preemptions", "finished",
                           "TTFT p99 ms"]


@pytest.mark.parametrize("kwargs, message", [
    ({"workloads": ("no-such-trace",)}, "must be stored traces; \\['no-such-trace'\\]"),
    ({"workloads": ()}, "none given"),
    ({"chunk_sizes": (0, 4096)}, "chunk_sizes must be positive integers, got \\[0, 4096\\]"),
    ({"cache_tokens": ()}, "cache_tokens must be positive integers, got \\[\\]"),
    ({"cache_tokens": (2048.5,)}, "cache_tokens must be positive integers"),
    ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold must be a positive int or None, got -1"),
])
def test_bad_grids_raise_naming_what_was_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyGrid(**kwargs)


def test_a_view_without_every_settings_replays_and_an_empty_figure_raise():
    with pytest.raises(ValueError, match=r"no replays for \(workload, tokens a step\) \[\('mixed-chat', 2048\)"):
        PolicyView(SMALL, {})
    with pytest.raises(ValueError, match="at least one row"):
        policy_figure([], "nothing")


def test_replay_grid_keys_every_setting():
    grid = PolicyGrid(workloads=("product-catalog",), chunk_sizes=(2048, 8192), cache_tokens=(65536,))
    results = replay_grid(grid, None, progress=False)
    assert sorted(results) == [("product-catalog", 2048), ("product-catalog", 8192)]
    assert all(r.requests == len(load_trace("product-catalog").requests) and not r.videos for r in results.values())


# ---------------------------------------------------------------- notebook 03's claims


@pytest.fixture(scope="module")
def default_tables(costs):
    """The view's first screen (video-qa) and mixed-chat and doc-qa, at the step budget shown first, every size."""
    models, where = costs
    return {w: replay_policies(w, FIRST_CHUNK_SIZE, PolicyGrid(), models, where)
            for w in ("video-qa", "mixed-chat", "doc-qa")}


def _by_policy(result):
    rows = {}
    for r in result.rows:
        rows.setdefault(r.policy, []).append(r)
    return rows


def test_notebook_03_policy_claims_hold_for_the_table_under_them(default_tables):
    """Notebook 03's markdown above the policy view states these relations (no numbers)."""
    video = default_tables["video-qa"]
    assert video.modelled
    rows, largest = _by_policy(video), max(PolicyGrid().cache_tokens)
    # SGLang re-encodes videos within their request at every cache size shown
    assert all(r.request_re_encodings > 0 and r.refused_requests == 0 for r in rows["sglang"])
    # vLLM refuses requests at every size below the largest, serves all there: its smallest cache is the largest
    assert all(r.refused_requests > 0 for r in rows["vllm"] if r.cache_tokens < largest)
    assert smallest_cache_without_re_encodes(video.rows, "vllm") == largest
    # vitkit's frame groups: every request served, nothing re-encoded within a request, at every size, even the
    # smallest; what it re-encodes are videos a later request asks about again
    assert all(r.refused_requests == 0 and r.request_re_encodings == 0 for r in rows["vitkit"])
    assert any(r.re_encodings > 0 for r in rows["vitkit"])  # not in a request, nor after a preemption: another's
    assert all(r.preemptions == 0 and r.preemption_re_encodings == 0 for r in rows["vitkit"])
    # and its TTFT p99 is below SGLang's at every size
    assert all(v.ttft_p99_ms < s.ttft_p99_ms for v, s in zip(rows["vitkit"], rows["sglang"]))
    mixed = _by_policy(default_tables["mixed-chat"])
    # mixed chat: vLLM refuses requests at the smallest cache; vitkit refuses none and loses nothing in a request
    assert mixed["vllm"][0].refused_requests > 0
    assert all(r.refused_requests == 0 and r.request_re_encodings == 0 for r in mixed["vitkit"])
    # on doc-qa (no videos) vitkit encodes no more than vLLM at any cache size, and its TTFT p99 is no higher
    doc = _by_policy(default_tables["doc-qa"])
    assert [r.cache_tokens for r in doc["vllm"]] == [r.cache_tokens for r in doc["vitkit"]]
    assert all(v.encoded_items <= m.encoded_items and v.ttft_p99_ms <= m.ttft_p99_ms
               for v, m in zip(doc["vitkit"], doc["vllm"]))
