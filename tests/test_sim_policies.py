"""Long items: the engines' policies (SGLang, vLLM, vitkit frame groups), admission that never forces a
window nor refuses a put when every item fits, preemption accounted apart, and the video workloads."""

import json
from dataclasses import replace

import pytest

from conftest import OnlyAlone
from cost_doubles import line_costs
from vitkit.costs.clock import StepClock
from vitkit.embed import MODES
from vitkit.processing import qwen_video_grid
from vitkit.sim.engine import ReplayConfig
from vitkit.sim.fake import FakeEncoder, fake_video_items
from vitkit.sim.policies import (
    ENGINE_POLICIES,
    compare_policies,
    format_rows,
    main,
    smallest_cache_without_re_encodes,
)
from vitkit.sim.replay import FAKE_HIDDEN, prepare, replay, replay_stream
from vitkit.sim.scheduler import Scheduler, SchedulerConfig
from vitkit.sim.trace import (
    ImageSpec,
    Trace,
    TraceRequest,
    example_traces,
    format_trace,
    load_trace,
    trace_from_json,
    trace_to_json,
)
from vitkit.sim.workload import WorkloadParams, build_requests, generate_workload

ENCODER = FakeEncoder(hidden=2)
COSTS = line_costs()  # modelled times: the same on every run, so two replays' times compare exactly
STORED = SchedulerConfig(4096, 1024)  # the stored traces' replay settings: every page straddles a window
ONE_VIDEO = Trace("one-video", (TraceRequest("v", 0.0, (16, "clip", 16)),),
                  {"clip": ImageSpec(448, 448, 64)})  # 32 temporal patches of 16x16 merged tokens: 8,192 rows


def _aware(trace, cache_rows, mode, video_items="whole"):
    scheduler = SchedulerConfig(4096, 1024, policy="cache-aware", encoder_budget_tokens=max(4096, cache_rows))
    config = ReplayConfig(scheduler, mode=mode, cache_tokens=cache_rows)
    return replay_stream(prepare(trace, video_items=video_items), config, encoder=ENCODER).summary


# ---------------------------------------------------------------- the three policies on a video larger than the cache


def test_a_video_larger_than_the_cache_under_each_engines_policy():
    (video,) = build_requests(ONE_VIDEO)["v"].items
    assert video.num_tokens == 8192 and video.modality == "video"
    rows = {r.policy: r for r in compare_policies(ONE_VIDEO, [4096], SchedulerConfig(2048), encoder=ENCODER)}
    # SGLang: not stored (larger than the cache), so encoded again in each later window it spans
    span = build_requests(ONE_VIDEO)["v"].spans[0]
    windows = len(range(span.start // 2048, (span.stop - 1) // 2048 + 1))  # 2,048-token windows over its tokens
    sglang = rows["sglang"]
    assert windows == 5 and sglang.encoded_items == windows and sglang.request_re_encodings == windows - 1 == 4
    assert sglang.refused_puts == windows and sglang.finished == 1
    # vLLM: refused when it arrives, with the reason; nothing hangs, nothing runs
    vllm = rows["vllm"]
    assert (vllm.refused_requests, vllm.encoded_items, vllm.finished) == (1, 0, 0)
    run = replay_stream(ONE_VIDEO, ENGINE_POLICIES["vllm"].replay_config(SchedulerConfig(2048), 4096), encoder=ENCODER)
    assert "request 'v' item 0: its 8192 embedding rows (video)" in run.refused["v"]
    assert "more than the whole cache" in run.refused["v"]
    # vitkit: frame groups of 2 temporal patches (512 rows), each encoded once
    vitkit = rows["vitkit"]
    assert (vitkit.encoded_items, vitkit.encoded_rows, vitkit.re_encodings, vitkit.refused_puts) == (16, 8192, 0, 0)
    assert vitkit.finished == 1 and vitkit.encoder_calls < vitkit.encoded_items  # several groups a call
    assert smallest_cache_without_re_encodes(list(rows.values()), "vitkit") == 4096
    assert smallest_cache_without_re_encodes(list(rows.values()), "vllm") is None  # refused is not served


def test_the_policy_table_finds_the_smallest_cache_without_re_encodes(capsys):
    rows = compare_policies(ONE_VIDEO, [8192, 4096, 16384], SchedulerConfig(2048), encoder=ENCODER)
    assert [(r.policy, r.cache_tokens) for r in rows][:3] == [("sglang", 4096), ("sglang", 8192), ("sglang", 16384)]
    assert smallest_cache_without_re_encodes(rows, "sglang") == 8192  # stored whole once it fits
    assert smallest_cache_without_re_encodes(rows, "vllm") == 8192
    assert "vitkit: smallest cache without re-encodes: 4096" in format_rows(rows)
    with pytest.raises(ValueError, match="unknown engine policies"):
        compare_policies(ONE_VIDEO, [4096], SchedulerConfig(2048), policies=["trtllm"])


def test_policies_cli_prints_the_table(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(format_trace(ONE_VIDEO))
    assert main([str(path), "--cache-tokens", "4096", "--chunked-prefill-size", "2048"]) == 0
    out = capsys.readouterr().out
    assert "refused_requests" in out and "sglang: smallest cache without re-encodes: None" in out


def test_engine_policies_as_replay_settings():
    sglang, vllm, vitkit = (ENGINE_POLICIES[n].replay_config(STORED, 2048) for n in ("sglang", "vllm", "vitkit"))
    assert (sglang.grouping, sglang.per_request_modalities, sglang.pin, sglang.scheduler.policy) == (
        "modality", ("video",), False, "legacy")
    assert (vllm.grouping, vllm.pin_recurring, vllm.scheduler.refuse_oversized) == ("consecutive", False, True)
    assert vllm.scheduler.encoder_budget_tokens == 4096  # never below the step budget, nor below the cache
    assert ENGINE_POLICIES["vllm"].replay_config(STORED, 65536).scheduler.encoder_budget_tokens == 65536
    assert (vitkit.grouping, vitkit.pin_recurring, vitkit.scheduler.policy) == ("tower", True, "cache-aware")
    assert ENGINE_POLICIES["vitkit"].video_items.startswith("frame-groups:")


def test_sglang_on_video_qa_counts_its_re_encodings_once_each():
    # issue 19: a video the cache cannot store is encoded by every request of the step that shows it (SGLang's
    # per-request path), and each encode is counted once, so request re-encodings are a part of re-encodings
    (row,) = compare_policies("video-qa", [16384], STORED, policies=["sglang"], step_ms=50.0)
    assert row.request_re_encodings <= row.re_encodings <= row.encoded_items
    assert row.encoded_items - row.re_encodings == 9  # the trace's 9 videos, each encoded first once
    assert row.refused_puts >= row.encoded_items - 1  # nothing but the 13,260-row clip fits 16,384 rows


def test_vitkit_keeps_the_groups_ahead_of_a_second_viewer_that_plain_lru_evicts():
    # issue 19: video-qa's 9 videos take 829,832 rows, 3.2 times this cache, and the ones running together
    # (clips 0-4, 453,302 rows) do not fit it either, so unpinned groups are evicted. c2t0 shows clip-1 about
    # 80 steps behind c1t0, and a group is pinned only while a window is inside it (vLLM's rule, per item):
    # under plain LRU, clip-1's groups ahead of c2t0 are the least recently used and go first.
    engine = ENGINE_POLICIES["vitkit"]
    assert engine.protect_ahead
    stream = prepare("video-qa", video_items=engine.video_items)
    config = engine.replay_config(STORED, 262144)
    lru = replay_stream(stream, replace(config, protect_ahead=False), step_ms=50.0)
    s = lru.summary
    assert sum({it.hash: it.num_tokens for r in stream.requests.values() for it in r.items}.values()) == 829832
    assert (s.re_encodings, s.request_re_encodings, s.refused_puts, s.preemptions) == (23, 0, 0, 0)
    assert s.evictions > 0 and s.peak_pinned_bytes < s.peak_cache_bytes // 50  # the full cache is unpinned
    again = [(w.step, w.rid, stream.requests[w.rid].items[k].hash)
             for w in lru.window_rows for k, a in zip(w.items, w.again) if a]
    clip_1 = {it.hash for it in stream.requests["c1t0"].items}
    assert {rid for _, rid, _ in again} == {"c2t0"} and {key for _, _, key in again} <= clip_1
    assert len(set(again)) == len({(step, key) for step, _, key in again})  # no group twice in one step
    # evicting what no running request reads again first keeps them: no re-encodes, the same evictions'
    # pressure, and a p99 TTFT no worse; vLLM holds a whole video from a viewer's first window (no re-encodes
    # either, at a p99 TTFT more than 1.5 times vitkit's)
    kept = replay_stream(stream, config, step_ms=50.0)
    assert (kept.summary.re_encodings, kept.summary.refused_puts, kept.summary.preemptions) == (0, 0, 0)
    assert kept.summary.evictions > 0 and kept.latency.ttft_p99_ms <= lru.latency.ttft_p99_ms
    rows = compare_policies(stream.trace, [262144], STORED, policies=["vllm"], step_ms=50.0)
    assert rows[0].re_encodings == 0 and rows[0].ttft_p99_ms > 1.5 * kept.latency.ttft_p99_ms


# ---------------------------------------------------------------- counts-only replays: the same counts and times


@pytest.mark.parametrize("policy", sorted(ENGINE_POLICIES))
@pytest.mark.parametrize("trace", example_traces())
def test_a_counts_only_replay_has_every_count_and_time_of_the_full_one(trace, policy):
    # a counts-only encoder makes no rows; one of the same width that makes them all (one column: video-qa
    # under SGLang's policy encodes 200M rows) must give the same run, step for step
    engine = ENGINE_POLICIES[policy]
    stream = prepare(trace, video_items=engine.video_items)
    config = engine.replay_config(STORED, 4096)
    full = replay_stream(stream, config, COSTS, encoder=FakeEncoder(1))
    fast = replay_stream(stream, config, COSTS, encoder=FakeEncoder(1, counts_only=True))
    assert repr(fast.summary) == repr(full.summary) and repr(fast.latency) == repr(full.latency)  # NaN == NaN
    assert fast.rows == full.rows and fast.window_rows == full.window_rows and fast.requests == full.requests
    assert fast.cache_stats == full.cache_stats and fast.refused == full.refused


def test_a_counts_only_encoder_gives_rows_of_the_shape_and_bytes_of_real_ones():
    (video,) = build_requests(ONE_VIDEO)["v"].items
    fast, full = FakeEncoder(8, counts_only=True), FakeEncoder(8)
    (rows,), (real,) = fast([video]), full([video])
    assert rows.shape == real.shape == (8192, 8) and rows.dtype == real.dtype
    assert rows.numel() * rows.element_size() == real.numel() * real.element_size()  # what the cache counts
    assert rows.untyped_storage().nbytes() == 8 * 4  # one row, expanded: nothing made per item
    assert fast.bytes_per_token == full.bytes_per_token and fast.name != full.name
    default = replay_stream(ONE_VIDEO, ReplayConfig(SchedulerConfig(2048)), COSTS)  # replay's own encoder
    explicit = replay_stream(ONE_VIDEO, ReplayConfig(SchedulerConfig(2048)), COSTS,
                             encoder=FakeEncoder(FAKE_HIDDEN, counts_only=True))
    assert default.rows == explicit.rows and default.capacity_bytes == explicit.capacity_bytes
    run = replay_stream(ONE_VIDEO, ReplayConfig(SchedulerConfig(2048)), keep_embeddings=True)
    assert run.embeddings and all(e.untyped_storage().nbytes() == e.numel() * e.element_size()  # real rows kept
                                  for e in run.embeddings.values() if e is not None)


# ---------------------------------------------------------------- admission: nothing forced, nothing refused


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cache_rows", [1344, 2048, 4096, 16384])
def test_doc_qa_never_forces_nor_refuses_a_put(mode, cache_rows):
    # 3-8 pages of 1,344 rows per request, half of them shared, a burst; every page straddles a window
    s = _aware("doc-qa", cache_rows, mode)
    assert (s.forced_grants, s.refused_puts, s.preemptions, s.refused_requests) == (0, 0, 0, 0)
    assert s.request_re_encodings == 0 and s.released_holds == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cache_rows, lost", [(2048, "some"), (4096, "none")])
def test_doc_qa_with_pages_repeated_within_a_request(mode, cache_rows, lost):
    # The stored stream's parameters with a page free to come back in its own request: the holds of such
    # pages are what deadlocked the old admission (119 forced grants at 2,048 rows, 14 at 4,096). Now a
    # hold is let go instead; under two pages of cache the repeat must be encoded again (it cannot stay
    # beside the page between), at 4,096 rows it stays.
    from dataclasses import replace

    from vitkit.sim.workload import EXAMPLES

    params = replace(EXAMPLES["doc-qa"][0], distinct_in_request=False)
    s = _aware(generate_workload(params, "doc-qa-repeats"), cache_rows, mode)
    assert (s.forced_grants, s.refused_puts, s.preemptions, s.refused_requests) == (0, 0, 0, 0)
    assert s.request_re_encodings <= s.released_holds
    assert (s.request_re_encodings > 0) == (lost == "some")


@pytest.mark.parametrize("mode", MODES)
def test_doc_qa_stresses_todays_admission(mode):
    legacy = replay_stream("doc-qa", ReplayConfig(STORED, mode=mode, cache_tokens=2048), encoder=ENCODER).summary
    assert legacy.refused_puts > 0 and legacy.request_re_encodings > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trace, video_items, cache_rows", [
    ("video-qa", "frame-groups:2", None),  # the smallest cache every item fits: a 720p group of 1,440 rows
    ("video-qa", "frame-groups:2", 8192),
    ("video-qa", "whole", None),  # the longest video, whole: 180,000 rows
    ("mixed-chat", "frame-groups:1", None),
    ("mixed-chat", "frame-groups:2", 4096),
    ("mixed-chat", "whole", None),
])
def test_video_workloads_never_force_nor_refuse_a_put(mode, trace, video_items, cache_rows):
    largest = max(it.num_tokens for r in prepare(trace, video_items=video_items).requests.values() for it in r.items)
    s = _aware(trace, cache_rows or largest, mode, video_items)
    assert (s.forced_grants, s.refused_puts, s.preemptions, s.refused_requests) == (0, 0, 0, 0)
    assert s.request_re_encodings == 0


@pytest.mark.parametrize("mode", MODES)
def test_product_catalog_at_a_tight_cache(mode):
    # an image shown twice in one request that the cache cannot keep beside the next one is let go and
    # encoded again: the only re-encodings within a request left, and no window forced, no put refused
    s = _aware("product-catalog", 2048, mode)
    assert (s.forced_grants, s.refused_puts, s.preemptions) == (0, 0, 0)
    assert 0 < s.request_re_encodings <= s.released_holds


# ---------------------------------------------------------------- preemption, accounted apart


def test_preemption_redoes_the_prompt_and_its_re_encodings_are_counted_apart():
    images = {k: ImageSpec(448, 448) for k in "xyz"}  # 256 rows each
    trace = Trace("p", (TraceRequest("a", 0.0, (8, "x", 8, "y", 8)), TraceRequest("b", 0.0, (8, "z", 8))), images)
    stream = prepare(trace)
    config = ReplayConfig(SchedulerConfig(512, 100), cache_tokens=600)  # two images: y's put evicts z, unpinned

    def make_policy(requests, cache, row_bytes):
        return Scheduler(512, long_prefill_token_threshold=100, admission=OnlyAlone())

    run = replay(stream.requests, stream.arrivals, config, StepClock(step_ms=50.0), ENCODER, make_policy=make_policy)
    s = run.summary
    assert run.rows[1].preempted == (("b", 0, 100),) and run.rows[1].pinned_bytes == 256 * ENCODER.bytes_per_token
    assert (s.preemptions, s.redone_tokens, s.preemption_re_encodings) == (1, 100, 1)  # b encodes z again
    assert s.request_re_encodings == 0 and s.refused_puts == 0  # not a loss between windows of one run of b
    assert run.latency.finished == 2 and run.cache_stats.pinned_bytes == 0
    b = next(r for r in run.requests if r.rid == "b")
    assert (b.prompt_tokens, b.redone_tokens) == (stream.requests["b"].prompt_len, 100)  # the prompt, redone apart


# ---------------------------------------------------------------- videos in traces, items and workloads


def test_trace_files_describe_videos_by_frames_and_size_and_read_old_files_unchanged(tmp_path):
    trace = Trace("mixed", (TraceRequest("q", 0.0, (4, "clip", 2, "photo", 3)),),
                  {"clip": ImageSpec(360, 640, 48), "photo": ImageSpec(448, 448)})
    data = trace_to_json(trace)
    assert data["images"] == {"clip": {"height": 360, "width": 640, "frames": 48},
                              "photo": {"height": 448, "width": 448}}
    segments = data["requests"][0]["segments"]
    assert segments[1] == {"video": "clip"} and segments[3] == {"image": "photo"}
    assert trace_from_json(json.loads(json.dumps(data))) == trace
    as_image = json.loads(json.dumps(data).replace('{"video": "clip"}', '{"image": "clip"}'))
    assert trace_from_json(as_image) == trace  # the table says which an id is
    catalog = load_trace("product-catalog")  # a file without videos: read and written as before
    assert "frames" not in format_trace(catalog) and all(spec.frames is None for spec in catalog.images.values())
    bad = json.loads(json.dumps(data))
    bad["images"]["clip"]["frames"] = 0
    with pytest.raises(ValueError, match="image 'clip' frames"):
        trace_from_json(bad)
    bad["images"]["clip"] = {"height": 360, "width": 640, "fps": 2}
    with pytest.raises(ValueError, match="'frames': int"):
        trace_from_json(bad)


def test_fake_videos_have_the_processors_grid_and_frame_groups_add_up():
    for frames, height, width in [(16, 360, 640), (63, 480, 854), (512, 720, 1280), (3, 224, 224)]:
        t, h, w = qwen_video_grid(frames, height, width)
        (whole,) = fake_video_items("v", frames, height, width)
        assert whole.num_tokens == t * h * w // 4 and whole.meta["video_grid_thw"] == (t, h, w)
        groups = fake_video_items("v", frames, height, width, "frame-groups:3")
        assert [g.meta["video_grid_thw"][0] for g in groups] == [3] * (t // 3) + ([t % 3] if t % 3 else [])
        assert sum(g.num_tokens for g in groups) == whole.num_tokens
        assert len({g.hash for g in groups}) == len(groups)  # each group its own cache entry
        again = fake_video_items("v", frames, height, width, "frame-groups:3")
        assert [g.hash for g in groups] == [g.hash for g in again]  # the same video: the same entries
    with pytest.raises(ValueError, match="video_items"):
        fake_video_items("v", 16, 360, 640, "frame-groups:0")


def test_build_requests_lays_a_videos_frame_groups_back_to_back():
    trace = Trace("t", (TraceRequest("q", 0.0, (5, "clip", 7)),), {"clip": ImageSpec(448, 448, 9)})
    whole = build_requests(trace)["q"]
    split = build_requests(trace, video_items="frame-groups:2")["q"]
    assert whole.prompt_len == split.prompt_len and len(whole.items) == 1 and len(split.items) == 3
    assert split.spans[0].start == whole.spans[0].start and split.spans[-1].stop == whole.spans[0].stop
    assert all(a.stop == b.start for a, b in zip(split.spans, split.spans[1:]))


def test_generated_workloads_with_videos_and_documents():
    docs = generate_workload(WorkloadParams(num_requests=30, images_per_request=(3, 8), repeat_share=0.5,
                                            distinct_in_request=True, seed=4))
    shown = [[s for s in r.segments if isinstance(s, str)] for r in docs.requests]
    assert all(len(ids) == len(set(ids)) for ids in shown)  # no page twice in a request
    assert len({i for ids in shown for i in ids}) < sum(map(len, shown))  # pages shared between requests
    chat = generate_workload(WorkloadParams(num_requests=12, turns=3, video_share=0.4, video_frames=(16, 48), seed=5))
    videos = [spec for spec in chat.images.values() if spec.frames is not None]
    assert videos and all(16 <= v.frames <= 48 for v in videos) and len(videos) < len(chat.images)
    with pytest.raises(ValueError, match="video_frames"):
        WorkloadParams(video_frames=(0, 4))
    with pytest.raises(ValueError, match="video_share"):
        WorkloadParams(video_share=1.5)


def test_stored_video_workloads_are_what_the_issue_describes():
    video_qa = load_trace("video-qa")
    specs = [video_qa.images[s] for r in video_qa.requests for s in r.segments if isinstance(s, str)]
    assert all(spec.frames is not None and 16 <= spec.frames <= 512 for spec in specs) and len(specs) == 16
    assert {(spec.height, spec.width) for spec in specs} <= {(360, 640), (480, 854), (720, 1280)}
    assert len(video_qa.images) < len(specs)  # some videos are asked about again
    mixed = load_trace("mixed-chat")
    kinds = {spec.frames is None for spec in mixed.images.values()}
    assert kinds == {True, False}  # photos and clips in one conversation
