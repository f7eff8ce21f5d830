"""Notebook 01's model, figure and widget: chunk_plan, draw_token_lines, chunk_explorer."""

from __future__ import annotations

import math
import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
pytest.importorskip("ipywidgets", reason="widget tests need the notebooks extra: pip install -e '.[notebooks]'")

from matplotlib.figure import Figure

from vitkit.embed import MODES
from vitkit.span import Span
from vitkit.viz import PlanSettings, chunk_explorer, chunk_plan, draw_token_lines, html_table
from vitkit.viz.plan import photo_items

SMALL = dict(num_requests=2, images_per_request=2, image_size=336, chunk_size=128)  # 144-token images straddle


def test_windows_tile_each_prompt_in_chunk_size_steps():
    plan = chunk_plan(**SMALL)
    for request in plan.requests:
        for mode in MODES:
            windows = [w.window for w in plan.windows_of(mode) if w.request == request.rid]
            assert len(windows) == math.ceil(request.prompt_len / 128)
            assert windows[0].start == 0 and windows[-1].stop == request.prompt_len
            assert all(a.stop == b.start for a, b in zip(windows, windows[1:]))
            assert all(len(w) <= 128 for w in windows)


def test_requests_come_from_the_photos_through_the_real_processor():
    plan = chunk_plan(num_requests=2, images_per_request=3, image_size=448, distinct_images=12)
    assert plan.photos == (("astronaut", "brick", "camera"), ("chelsea", "clock_motion", "coffee"))
    # Qwen2.5-VL: a 448 x 448 photo is a 32 x 32 patch grid, merged 2 x 2 -> 256 tokens
    assert plan.requests[0].items[0].num_tokens == 256
    assert plan.requests[0].items[0].meta["image_grid_thw"] == (1, 32, 32)


def test_straddling_image_is_encoded_once_and_hit_by_the_next_window():
    plan = chunk_plan(num_requests=1, images_per_request=1, image_size=448, chunk_size=128, text_tokens=16)
    marks = [m for w in plan.windows_of("batched") for m in w.items]
    assert [m.status for m in marks] == ["encoded"] + ["hit"] * (len(marks) - 1)
    assert len(marks) > 2  # 256 tokens of image over 128-token windows
    assert plan.total("batched", "encoder_calls") == 1


def test_no_cache_means_no_hits_and_straddling_images_encoded_again():
    roomy = chunk_plan(**SMALL, cache_tokens=16384)
    none = chunk_plan(**SMALL, cache_tokens=0)
    for mode in MODES:
        assert roomy.total(mode, "cache_hits") > 0
        assert none.total(mode, "cache_hits") == 0
        assert roomy.total(mode, "reencoded_items") == 0
        assert none.total(mode, "reencoded_items") > 0
        assert none.total(mode, "encoded_tokens") > roomy.total(mode, "encoded_tokens")


def test_one_shared_photo_is_encoded_once_per_step_in_batched_mode():
    plan = chunk_plan(num_requests=4, images_per_request=1, distinct_images=1, image_size=224, chunk_size=4096)
    (step,) = plan.steps_of("batched")
    assert step.encoder_calls == 1 and step.encoded_items == 1
    assert [m.status for w in plan.windows_of("batched") for m in w.items] == ["encoded"] + ["shared"] * 3
    # per-request: the first request encodes and stores it, the other three find it in the cache
    (step,) = plan.steps_of("per_request")
    assert step.encoder_calls == 1
    assert [m.status for w in plan.windows_of("per_request") for m in w.items] == ["encoded"] + ["hit"] * 3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk=st.sampled_from([64, 100, 256, 700]),
    n=st.integers(1, 4),
    k=st.integers(1, 3),
    size=st.sampled_from([112, 224]),
    cache=st.sampled_from([0, 64, 512, 8192]),
    distinct=st.integers(1, 6),
)
def test_window_marks_agree_with_embed_chunks_counters(chunk, n, k, size, cache, distinct):
    plan = chunk_plan(
        chunk_size=chunk, num_requests=n, images_per_request=k, image_size=size, cache_tokens=cache, distinct_images=distinct
    )
    for mode in MODES:
        for step in plan.steps_of(mode):
            windows = [w for w in plan.windows_of(mode) if w.step == step.step]
            assert sum(w.count("hit") for w in windows) == step.cache_hits
            assert sum(w.count("encoded") + w.count("shared") for w in windows) == step.cache_misses
            assert sum(w.count("encoded") for w in windows) == step.encoded_items
        assert plan.total("batched", "encoder_calls") <= plan.total("per_request", "encoder_calls")
    # per-request mode de-duplicates only inside one request's window (one call per request)
    for w in plan.windows_of("per_request"):
        encoded_here = {m.photo for m in w.items if m.status == "encoded"}
        assert all(m.photo in encoded_here for m in w.items if m.status == "shared")


def test_table_has_one_row_per_window_and_html_escapes():
    plan = chunk_plan(**SMALL)
    rows = plan.table("batched")
    assert len(rows) == len(plan.windows_of("batched"))
    assert html_table(rows).count("<tr>") == len(rows) + 1
    assert "&lt;b&gt;" in html_table([{"a": "<b>"}])
    assert "1 more rows not shown" in html_table([{"a": 1}, {"a": 2}], max_rows=1)


def test_draw_token_lines_has_one_line_per_request_and_a_calls_panel():
    plan = chunk_plan(**{**SMALL, "num_requests": 3})
    fig = draw_token_lines(plan)
    assert isinstance(fig, Figure)
    top, bottom = fig.axes
    assert [t.get_text() for t in top.get_yticklabels()] == ["request 2", "request 1", "request 0"]
    assert bottom.get_ylabel() == "encoder calls"
    labels = [t.get_text() for t in bottom.get_legend().get_texts()]
    assert labels[0].startswith(f"batched: {plan.total('batched', 'encoder_calls')} calls")
    with pytest.raises(ValueError, match="mode must be one of"):
        draw_token_lines(plan, "sideways")


def test_bad_settings_raise_with_the_name_and_value():
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        PlanSettings(chunk_size=0)
    with pytest.raises(ValueError, match="cache_tokens must be a non-negative int, got -1"):
        PlanSettings(cache_tokens=-1)
    with pytest.raises(ValueError, match="asked for 13 photos"):
        photo_items(224, 13)
    with pytest.raises(TypeError, match="unknown settings"):
        chunk_explorer(chunk=3)


@pytest.fixture
def explorer():
    return chunk_explorer(**SMALL)


def test_moving_chunk_size_changes_windows_figure_and_table(explorer):
    windows, png, table = len(explorer.plan.windows_of("batched")), explorer.figure.value, explorer.table.value
    explorer.controls["chunk_size"].value = 512
    assert explorer.plan.settings.chunk_size == 512
    assert len(explorer.plan.windows_of("batched")) < windows
    assert explorer.figure.value != png and explorer.figure.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.table.value.count("<tr>") < table.count("<tr>")
    assert f"{len(explorer.plan.windows_of('batched'))} windows" in explorer.summary.value


def test_cache_slider_to_zero_removes_hits(explorer):
    assert explorer.plan.total("batched", "cache_hits") > 0
    explorer.controls["cache_tokens"].value = 0
    assert explorer.plan.total("batched", "cache_hits") == 0
    assert explorer.summary.value.count(" 0 cache hits") == 2  # both modes


def test_mode_toggle_switches_marks_and_table(explorer):
    explorer.controls["num_requests"].value = 3
    explorer.controls["distinct_images"].value = 1  # every request shows the same photo
    plan, png = explorer.plan, explorer.figure.value
    # batched: the first request encodes it and the others share that call; per-request: they hit
    assert sum(row["shared (S)"] for row in plan.table("batched")) > 0
    assert sum(row["shared (S)"] for row in plan.table("per_request")) == 0
    assert explorer.table.value == html_table(plan.table("batched"), max_rows=60)
    explorer.controls["mode"].value = "per_request"
    assert explorer.table.value == html_table(explorer.plan.table("per_request"), max_rows=60)
    assert explorer.figure.value != png


def test_redraw_is_well_under_a_second(explorer):
    explorer.controls["num_requests"].value = 4
    explorer.controls["images_per_request"].value = 3
    timings = []
    for chunk in (256, 128, 384, 192, 64):
        explorer.controls["chunk_size"].value = chunk
        timings.append(explorer.redraw_ms)
    assert statistics.median(timings) < 600, timings
    start = time.perf_counter()
    explorer.controls["image_size"].value = 336  # a size not seen yet: runs the processor again
    assert (time.perf_counter() - start) * 1e3 < 1500


def test_per_request_steps_match_one_per_request_embed_chunks_call_per_step():
    # chunk_plan observes per-request mode one request at a time; that must be the same as
    # handing the whole step to embed_chunks(mode="per_request") in one call
    from vitkit.cache import EmbeddingCache
    from vitkit.embed import embed_chunks
    from vitkit.viz.plan import TOY_BYTES_PER_TOKEN, toy_encoder

    plan = chunk_plan(num_requests=4, images_per_request=2, image_size=336, chunk_size=96, cache_tokens=300, distinct_images=3)
    cache = EmbeddingCache(300 * TOY_BYTES_PER_TOKEN)
    requests = {r.rid: r for r in plan.requests}
    for step in plan.steps_of("per_request"):
        batch = [(requests[w.request], w.window) for w in plan.windows_of("per_request") if w.step == step.step]
        assert batch == [(r, Span(96 * step.step, min(96 * (step.step + 1), r.prompt_len)))
                         for r in plan.requests if 96 * step.step < r.prompt_len]  # chunk_size tokens a step
        result = embed_chunks(batch, toy_encoder, cache, mode="per_request")
        assert (result.encoder_calls, result.encoded_items, result.cache_hits, result.cache_misses) == (
            step.encoder_calls, step.encoded_items, step.cache_hits, step.cache_misses
        )
        assert cache.bytes == step.cache_bytes
    assert plan.total("per_request", "reencoded_items") > 0  # the small cache does lose items here


def test_table_lists_first_encodes_and_re_encodes_in_their_own_columns():
    plan = chunk_plan(**SMALL, cache_tokens=0)  # nothing is kept: every later window's miss is a re-encode
    rows = plan.table("batched")
    again = [(w, i.item) for w in plan.windows_of("batched") for i in w.items if i.status == "encoded" and i.again]
    assert again, "a cache of 0 tokens must re-encode something here"
    listed = {(r["step"], r["request"]): r["encoded again (R)"] for r in rows}
    for window, item in again:
        assert str(item) in listed[(window.step, window.request)].split(", ")
    assert all("*" not in str(r["encoded here (E)"]) for r in rows)


def test_photo_names_are_white_on_dark_colours_and_black_on_light_ones():
    from vitkit.viz.chunk_widget import label_color

    assert label_color((0.12, 0.47, 0.71, 1.0)) == "white"  # tab:blue
    assert label_color((0.68, 0.78, 0.91, 1.0)) == "black"  # tab20's light blue
