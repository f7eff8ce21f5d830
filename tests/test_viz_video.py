"""Notebook 01's video view (issue 19): video_plan's counts per engine policy, its figure and its widget."""

from __future__ import annotations

import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("ipywidgets", reason="widget tests need the notebooks extra: pip install -e '.[notebooks]'")

from matplotlib.figure import Figure

from vitkit.cache import EmbeddingCache
from vitkit.embed import ENCODING_FATES, embed_chunks
from vitkit.sim.policies import ENGINE_POLICIES
from vitkit.viz.video_widget import draw_video_windows, video_explorer
from vitkit.sim.fake import FakeEncoder
from vitkit.viz.plan import TOY_BYTES_PER_TOKEN, TOY_HIDDEN
from vitkit.viz.video_plan import (VideoSettings, _run_engine, clip_frame_indices, clip_frames,
                                   video_plan, video_request)

# the case: an 8,192-row video (32 frames of 896x448 px: 16 temporal patches of 32x64 patches, 4 to a
# token), a 4,096-row cache, 2,048-token windows
TARGET = {"frames": 32, "height": 448, "width": 896, "chunk_size": 2048, "cache_tokens": 4096}


@pytest.fixture(scope="module")
def target():
    return video_plan(**TARGET)


def video_windows(run):
    """The windows of ``run`` that touch the video."""
    return [w for w in run.windows if w.marks]


def test_the_target_video_has_8192_rows_and_is_synthetic(target):
    assert target.video_rows == 8192 and target.grid == (16, 32, 64)
    assert target.source == "synthetic" and "synthetic" in target.describe()
    assert len(target.video_span) == 8192


def test_sglang_re_encodes_the_video_whole_in_every_later_window_it_spans(target):
    run = target.run("sglang")
    assert run.video_items == "whole" and len(run.request.items) == 1 and run.refused is None
    spans = video_windows(run)
    assert len(spans) == 5  # 11 text tokens, then 8,192 video tokens: 2,048-token windows, the last one short
    assert [m.letter for w in spans for m in w.marks] == ["E"] + ["R"] * 4
    assert [w.encoded_rows for w in spans] == [8192] * 5
    assert run.total("re_encoded_rows") == 4 * 8192
    assert all(w.cache_rows == 0 for w in run.windows)  # larger than the cache: never stored


def test_vllm_refuses_the_video_at_admission_with_a_reason(target):
    run = target.run("vllm")
    assert run.video_items == "whole" and run.windows == ()
    assert "8192 embedding rows" in run.refused and "more than the whole cache" in run.refused
    assert "4096 rows" in run.refused
    assert target.summary()[1]["refused"] == run.refused


def test_vitkit_encodes_each_frame_group_once(target):
    run = target.run("vitkit")
    assert run.video_items == "frame-groups:2" and run.refused is None
    assert [item.num_tokens for item in run.request.items] == [1024] * 8
    assert len({item.hash for item in run.request.items}) == 8
    assert [run.encodes(k) for k in range(8)] == [1] * 8
    assert run.total("encoded_rows") == 8192 and run.total("re_encoded_rows") == 0
    assert max(w.cache_rows for w in run.windows) <= 4096


def test_window_rows_are_what_embed_chunks_returns_for_those_windows(target):
    # the plan's windows, handed to embed_chunks by hand with SGLang's options, encode the same rows
    run, policy = target.run("sglang"), ENGINE_POLICIES["sglang"]
    cache = EmbeddingCache(4096 * TOY_BYTES_PER_TOKEN)
    for w in run.windows:
        encoder = FakeEncoder(TOY_HIDDEN, counts_only=True)
        result = embed_chunks([(run.request, w.window)], encoder, cache, pin=policy.pin,
                              grouping=policy.grouping, per_request_modalities=policy.per_request_modalities)
        assert result.encoded_tokens == w.encoded_rows
        assert cache.bytes // TOY_BYTES_PER_TOKEN == w.cache_rows


def test_the_default_view_is_the_real_clip_through_the_video_processor():
    plan = video_plan()
    assert plan.source == "clip" and plan.settings.frames == len(clip_frames())
    (item,) = plan.run("sglang").request.items
    assert item.meta["video_grid_thw"] == plan.grid and item.num_tokens == plan.video_rows
    assert item.feature.shape[0] == plan.grid[0] * plan.grid[1] * plan.grid[2]  # real patches, not a stand-in
    groups = plan.run("vitkit").request.items
    assert sum(g.num_tokens for g in groups) == plan.video_rows
    assert len(groups) == -(-plan.grid[0] // 2) and item.hash not in {g.hash for g in groups}


def test_fewer_frames_sample_the_clip_evenly_and_more_are_synthetic():
    last = len(clip_frames()) - 1
    assert clip_frame_indices(1) == [0]
    picked = clip_frame_indices(4)
    assert picked[0] == 0 and picked[-1] == last and picked == sorted(set(picked))
    assert video_plan(frames=4).source == "clip"
    assert video_plan(frames=len(clip_frames()) + 2).source == "synthetic"
    assert video_plan(frames=4, height=360, width=640).source == "synthetic"  # another frame size
    with pytest.raises(ValueError, match="has 20 frames; asked for 21"):
        clip_frame_indices(21)


def test_thumbnails_sit_over_their_temporal_patch(target):
    thumbs = target.thumbnails(6)
    assert thumbs[0].frame == 0 and thumbs[-1].frame == 31
    for t in thumbs:
        patch = t.frame // 2
        assert target.video_span.start + patch * 512 < t.x < target.video_span.start + (patch + 1) * 512
        assert t.clip_frame == t.frame % len(clip_frames())  # synthetic: the clip, looped


def test_item_policy_overrides_every_engine():
    whole = VideoSettings(items="whole")
    groups = VideoSettings(items="frame-groups", group_size=3)
    own = VideoSettings(group_size=3)
    assert [whole.video_items(e) for e in ENGINE_POLICIES] == ["whole"] * 3
    assert [groups.video_items(e) for e in ENGINE_POLICIES] == ["frame-groups:3"] * 3
    assert [own.video_items(e) for e in ENGINE_POLICIES] == ["whole", "whole", "frame-groups:3"]
    assert len(video_request(groups, "sglang").items) == 4  # 10 temporal patches in groups of 3


def test_bad_settings_raise_and_name_what_was_wrong():
    message = r"group_size \(temporal patches per frame group\) must be a positive int, got 0"
    with pytest.raises(ValueError, match=message):
        VideoSettings(group_size=0)
    with pytest.raises(ValueError, match="items must be one of"):
        VideoSettings(items="tiles")
    with pytest.raises(ValueError, match="give both height and width"):
        VideoSettings(height=360)
    with pytest.raises(ValueError, match="frames must be a positive int, got 0"):
        VideoSettings(frames=0)
    with pytest.raises(ValueError, match="cache_tokens .* must be a non-negative int, got -1"):
        VideoSettings(cache_tokens=-1)
    with pytest.raises(ValueError, match="engines must be among"):
        VideoSettings(engines=("trt-llm",))
    with pytest.raises(ValueError, match="engine 'vllm' is not in this plan"):
        video_plan(engines=("sglang",), frames=4).run("vllm")
    with pytest.raises(TypeError, match="unknown settings"):
        video_explorer(group=2)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.integers(4, 96), chunk=st.sampled_from([256, 1024, 4096]), cache=st.sampled_from([0, 1024, 8192]),
       group=st.integers(1, 6), items=st.sampled_from(["per engine", "whole", "frame-groups"]))
def test_marks_add_up_to_the_step_counters(frames, chunk, cache, group, items):
    plan = video_plan(frames=frames, height=360, width=640, chunk_size=chunk, cache_tokens=cache,
                      group_size=group, items=items)
    for run in plan.runs:
        rows = {k: item.num_tokens for k, item in enumerate(run.request.items)}
        for w in run.windows:
            assert w.encoded_rows == sum(rows[m.item] for m in w.marks if m.fate in ENCODING_FATES)
            assert w.re_encoded_rows == sum(rows[m.item] for m in w.marks if m.again)
            assert w.cache_rows <= cache and all(len(m.part) > 0 for m in w.marks)
        too_big = max(rows.values()) > cache
        if run.engine in ("vllm", "vitkit"):  # cache-aware admission: refused, or nothing encoded twice
            assert (run.refused is not None) == too_big
            assert run.total("re_encoded_rows") == 0
        if run.refused is None:
            touched = {m.item for w in run.windows for m in w.marks}
            assert touched == set(rows)  # every item is reached


def test_the_figure_has_frames_lanes_and_rows(target):
    fig = draw_video_windows(target)
    assert isinstance(fig, Figure)
    strip, lanes, rows = fig.axes
    assert len(strip.images) == 6
    assert [t.get_text() for t in lanes.get_yticklabels()] == ["vitkit\nframe-groups:2", "vllm\nwhole", "sglang\nwhole"]
    texts = [t.get_text() for t in lanes.texts]
    assert texts.count("R") == 3  # the short last window's sliver has no room for its letter
    assert any(t.startswith("refused at admission: an item of 8,192 rows") for t in texts)
    assert rows.get_ylabel() == "rows encoded so far"
    legend = [t.get_text() for t in rows.get_legend().get_texts()]
    assert legend[0] == "sglang: 40,960 rows encoded (32,768 again)"
    assert legend[1] == "vllm: refused, nothing encoded"


def test_the_table_lists_each_window_with_its_rows(target):
    rows = target.run("vitkit").table()
    assert len(rows) == len(target.run("vitkit").windows)
    assert rows[1]["items"] == "g1 H, g2 E, g3 E"
    assert sum(r["encoded rows"] for r in rows) == 8192
    assert {r["engine"]: r["re-encoded rows"] for r in target.summary()} == {"sglang": 32768, "vllm": 0, "vitkit": 0}


@pytest.fixture
def explorer():
    return video_explorer()


def test_the_widget_redraws_when_a_control_moves(explorer):
    png = explorer.figure.value
    assert "the sample clip" in explorer.summary.value and png[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.controls["frames"].value = 64
    assert explorer.plan.source == "synthetic" and "synthetic" in explorer.summary.value
    assert explorer.figure.value != png
    explorer.controls["items"].value = "whole"
    assert [r.video_items for r in explorer.plan.runs] == ["whole"] * 3
    explorer.controls["table"].value = "vllm"
    assert "vllm</b> refused the request" in explorer.table.value


def test_the_widget_answers_in_under_a_second_at_the_extremes(explorer):
    # the slowest corners: 512 frames at 720p (184,320 rows), one temporal patch a group (256 items), the
    # shortest windows the widget offers, every engine in frame groups, a cache that holds everything or nothing
    shortest = min(explorer.controls["chunk_size"].options)
    assert explorer.controls["chunk_size"].value == shortest  # the default
    moves = [("frames", 512), ("size", (720, 1280)), ("items", "frame-groups"), ("group_size", 1),
             ("cache_tokens", 262144), ("cache_tokens", 0), ("cache_tokens", 4096), ("chunk_size", 2 * shortest),
             ("chunk_size", shortest), ("items", "per engine"), ("group_size", 16)]
    _run_engine.cache_clear()  # first visits: nothing memoised by earlier tests
    wall, cpu = [], []
    for name, value in moves:
        start = time.process_time()
        explorer.controls[name].value = value
        cpu.append((time.process_time() - start) * 1e3)
        wall.append(explorer.redraw_ms)
    print(f"video explorer redraws: wall {[round(t) for t in wall]} ms, cpu {[round(t) for t in cpu]} ms")
    assert explorer.plan.video_rows == 184320
    # medians, as test_viz_chunks: on 2 shared cores one redraw can wait on another process
    assert statistics.median(wall) < 1000, wall
    assert statistics.median(cpu) < 1000, cpu


def test_the_frame_size_control_shows_the_clip_choice():
    # a Dropdown shows a None value as no choice at all: the clip's own size needs a value of its own
    explorer = video_explorer()
    size = explorer.controls["size"]
    assert size.index == 0 and size.label.startswith("the clip's")
    size.value = (720, 1280)
    assert explorer.current_settings().height == 720
    size.index = 0
    assert explorer.current_settings().height is None and explorer.plan.source == "clip"
