"""The encoder's cost model: the bucketed encoder's ms per bucket graph + per call (fitted or
measured), and ``EncoderCost``, the one encoder model a replay's clock applies to a step's calls."""

import copy
import json
import pickle
import random
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.costs import results
from vitkit.costs.dp import DataParallelCallCost
from vitkit.costs.eager import LineCallCost
from vitkit.costs.encoder import (BucketCost, EncoderCost, VideoSize, call_packs, fit_bucket_cost, item_temporal,
                                  load_encoder_cost, measured_bucket_cost, nnls, stored_item_rows,
                                  stream_bookkeeping_ms)
from vitkit.encoders import QWEN_BUCKETS, Buckets, pack
from vitkit.encoders.buckets import Pack, video_pieces
from vitkit.encoders.build import MODEL_CLASSES
from vitkit.encoders.flops import qwen_vision_flops
from vitkit.encoders.presets import get_preset

STORED = results.results_folder()
TRUE_MS = {s: 4.0 + 3.5 * s / 1024 + (0.5 if s > 4096 else 0.0) for s in QWEN_BUCKETS.sizes}  # a step at 4096
PER_CALL_MS = 0.7


def _true_cost() -> BucketCost:
    ms = tuple(TRUE_MS[s] for s in QWEN_BUCKETS.sizes)
    return BucketCost("qwen2.5-vl-7b", "vitkit", QWEN_BUCKETS, ms, PER_CALL_MS, 4, tuple(TRUE_MS), 0)


def _synthetic_steps(n: int, seed: int = 0) -> list[list[list[int]]]:
    """Steps of 1-3 calls of 1-8 images of 64-9216 patches (multiples of 4): calls over the
    largest bucket make several packs, so the per-call ms is told apart from the graphs' ms."""
    rng = random.Random(seed)
    return [[[4 * rng.randint(16, 2304) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 3))]
            for _ in range(n)]


def test_nnls_matches_a_known_constrained_solution():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert nnls(a, np.array([1.0, 2.0, 3.0])) == pytest.approx([1.0, 2.0])
    assert nnls(a, np.array([-1.0, 2.0, 1.0])) == pytest.approx([0.0, 1.5])  # unconstrained: x0 < 0
    with pytest.raises(ValueError, match="nnls"):
        nnls(a, np.ones(2))


def test_fit_recovers_known_bucket_costs_from_synthetic_steps():
    truth = _true_cost()
    steps = _synthetic_steps(300)
    targets = [sum(truth.call_units_ms(c) for c in calls) for calls in steps]
    cost = fit_bucket_cost(steps, targets, QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="synthetic")
    assert len(cost.observed) >= 12
    for size in cost.observed:
        assert cost.bucket_ms[QWEN_BUCKETS.sizes.index(size)] == pytest.approx(TRUE_MS[size], rel=1e-6)
    assert cost.per_call_ms == pytest.approx(PER_CALL_MS, rel=1e-6)
    assert cost.max_rel_err == pytest.approx(0.0, abs=1e-9) and cost.points == 300
    # fitted on the small buckets only: the unseen ones are filled in, non-decreasing in size
    small = [[c for c in calls if sum(c) <= 1024] for calls in _synthetic_steps(300, seed=1)]
    small = [calls for calls in small if calls]
    part = fit_bucket_cost(small, [sum(truth.call_units_ms(c) for c in calls) for calls in small], QWEN_BUCKETS,
                           unit=4, encoder="e", impl="i", source="synthetic")
    assert max(part.observed) <= 1024 and list(part.bucket_ms) == sorted(part.bucket_ms)
    largest = max(part.observed)
    assert part.bucket_ms[-1] == pytest.approx(part.bucket_ms[QWEN_BUCKETS.sizes.index(largest)] * QWEN_BUCKETS.largest / largest)


def test_fit_checks_its_inputs():
    with pytest.raises(ValueError, match="2 steps of calls but 1 targets"):
        fit_bucket_cost([[[4]], [[8]]], [1.0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")
    with pytest.raises(ValueError, match="no step with an encoder call"):
        fit_bucket_cost([[], [[]]], [1.0, 2.0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")
    with pytest.raises(ValueError, match="target 0"):
        fit_bucket_cost([[[4]]], [0], QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="s")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40))
def test_a_call_costs_its_packs_plus_one_call(rows):
    cost = _true_cost()
    units = [4 * r for r in rows]
    packs = pack(units, QWEN_BUCKETS)
    assert cost.call_ms(rows) == pytest.approx(PER_CALL_MS + sum(cost.pack_ms(p) for p in packs))
    # an image over the largest bucket runs padded to its large bucket: this cost has no tower config, so units
    by_hand = sum(cost.bucket_ms[QWEN_BUCKETS.sizes.index(p.bucket)] if p.bucket
                  else cost.bucket_ms[-1] * QWEN_BUCKETS.pick_large(p.size) / QWEN_BUCKETS.largest for p in packs)
    assert cost.call_ms(rows) == pytest.approx(PER_CALL_MS + by_hand)
    assert cost.call_ms([]) == 0.0


def test_encoder_cost_step_ms_reads_items_per_call():
    enc = load_encoder_cost()
    assert isinstance(enc.call, BucketCost)
    assert enc.step_ms([[256, 256], [256]]) == pytest.approx(enc.call.call_ms([256, 256]) + enc.call.call_ms([256]))
    assert enc.step_ms([256]) == pytest.approx(enc.call.call_ms([256]))  # an int: one item
    assert enc.step_ms([]) == 0.0 and enc.step_ms([[]]) == 0.0  # a step without an encode costs no encoder time


def test_stored_h100_encoder_cost_is_named_and_close():
    cost = load_encoder_cost()  # measured: graph replays and a host share fitted to serving calls
    assert cost.source.startswith("measured buckets encoder-costs-") and "qwen2.5-vl-7b" in cost.source
    # the bookkeeping is the host time around the encoder in the stored GPU stream file
    assert "bookkeeping stream-qwen2.5-vl-7b-" in cost.source and cost.bookkeeping_ms > 0
    # single serving calls jitter (H100: median error 12%); their sum is what the replay's clock adds
    assert cost.call.median_rel_err < 0.15
    measured = re.match(r"measured buckets (encoder-costs-\S+\.json),", cost.source).group(1)
    _, rows = measured_bucket_cost(STORED / measured)
    served = [r for r in rows if r["kind"] == "serving"]
    assert sum(r["modelled_ms"] for r in served) == pytest.approx(sum(r["measured_ms"] for r in served), rel=0.05)
    assert cost.call.call_ms([256]) < cost.call.call_ms([256, 256]) < 2 * cost.call.call_ms([256])
    # the folder named is the stored one by default; the newest GPU file of the encoder is chosen
    assert load_encoder_cost(STORED) == cost
    newest = next(p for p in results.newest_first("encoder-costs", STORED)
                  if results.read("encoder-costs", p).get("kind") == "gpu")
    assert measured == newest.name


def test_encoder_cost_sums_its_calls():
    call = _true_cost()
    cost = EncoderCost(call, bookkeeping_ms=1.5, source="test")
    assert cost.step_ms([[256], [64, 64, 64]]) == pytest.approx(call.call_ms([256]) + call.call_ms([64, 64, 64]))


def test_loader_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"no GPU encoder-costs file of encoder 'qwen2.5-vl-7b' impl 'vitkit' in .*"
                                         r"python -m vitkit.bench encoder-costs"):
        load_encoder_cost(tmp_path)
    with pytest.raises(ValueError, match="no GPU encoder-costs file of encoder 'siglip-so400m-384'"):
        load_encoder_cost(STORED, "siglip-so400m-384")


# --- videos: split over the buckets and counted in sequences, as the encoder runs them ------------------

def test_a_video_size_is_its_size_with_its_temporal_patches():
    video = VideoSize(1200, temporal=8)
    assert video == 1200 and sum([video, 56]) == 1256 and isinstance(video, int)
    assert json.dumps([video, 56]) == "[1200, 56]"  # stored steps read it as its rows
    for again in (pickle.loads(pickle.dumps(video)), copy.deepcopy(video)):
        assert isinstance(again, VideoSize) and (again, again.temporal) == (1200, 8)
    assert repr(video) == "VideoSize(1200, temporal=8)" and video.resized(4800).temporal == 8


@pytest.mark.parametrize("size, temporal, match", [
    (0, 1, "VideoSize: size must be a positive int, got 0"), (12, 0, "temporal patches must be a positive int"),
    (10, 4, r"size 10 is not a whole number per temporal patch \(4 of them\)"), (8, True, "temporal patches"),
])
def test_bad_video_sizes_raise(size, temporal, match):
    with pytest.raises(ValueError, match=match):
        VideoSize(size, temporal)


CALL_BUCKETS = Buckets((256, 512, 1024), max_items=4, multiple=4)


@pytest.mark.parametrize("video, pieces", [
    (VideoSize(4 * 64, 4), [(256, 4)]),  # within the largest bucket and max_items: whole
    (VideoSize(12 * 128, 12), [(512, 4)] * 3),  # 1536 units: groups of max_items temporal patches
    (VideoSize(3 * 600, 3), [(600, 1)] * 3),  # two temporal patches overflow the largest: one a piece
    (VideoSize(2 * 1200, 2), [(1200, 1)] * 2),  # one temporal patch over the largest: alone, unbucketed
    (VideoSize(6 * 16, 6), [(64, 4), (32, 2)]),  # small, but more sequences than max_items
])
def test_a_call_packs_videos_split_into_their_pieces(video, pieces):
    assert video_pieces(video.temporal, video // video.temporal, CALL_BUCKETS) == pieces
    images = [300, 100]
    packs = call_packs([*images, video], CALL_BUCKETS)
    assert packs == pack([*images, *(u for u, _ in pieces)], CALL_BUCKETS, [1, 1, *(n for _, n in pieces)])
    assert call_packs(images, CALL_BUCKETS) == pack(images, CALL_BUCKETS)  # images: as before


def test_a_calls_cost_reads_videos_in_rows():
    cost = BucketCost("e", "i", CALL_BUCKETS, (1.0, 2.0, 4.0), 0.5, 4, CALL_BUCKETS.sizes, 0, per_pack_ms=0.1)
    video = VideoSize(3 * 128, 3)  # 3 temporal patches of 512 units, over the largest bucket: one a piece
    assert cost.item_units([64, video]) == [256, VideoSize(1536, 3)] and cost.item_units(video)[0].temporal == 3
    assert cost.packs([64, video]) == call_packs([256, VideoSize(1536, 3)], CALL_BUCKETS)
    assert [p.bucket for p in cost.packs([video])] == [1024, 512]  # two pieces share the largest bucket
    assert cost.call_ms([video]) == pytest.approx(0.5 + (4.0 + 0.1) + (2.0 + 0.1))
    assert cost.call_ms([384]) == pytest.approx(0.5 + 4.0 * 1536 / 1024 + 0.1)  # the same rows as one image
    many = VideoSize(6 * 4, 6)  # 6 temporal patches of 16 units: two packs of at most 4 sequences
    assert [p.size for p in cost.packs(many)] == [64, 32] and cost.call_ms(many) == pytest.approx(0.5 + 2 * 1.1)
    fixed = BucketCost("clip", "i", CALL_BUCKETS, (1.0, 2.0, 4.0), 0.5, 1, CALL_BUCKETS.sizes, 0, rows_per_unit=576)
    with pytest.raises(ValueError, match=r"clip: item 1 is a video \(VideoSize\(1152, temporal=2\)\).*fixed-res"):
        fixed.call_ms([576, VideoSize(1152, 2)])


def test_the_line_and_data_parallel_models_read_a_video_as_its_rows():
    video = VideoSize(3 * 128, 3)
    line = LineCallCost("e", "i", 1.0, 0.5, 2.0, 1, 0.0, 0.0)
    assert line.call_ms([video, 64]) == line.call_ms([384, 64])
    graphs = BucketCost("e", "i", CALL_BUCKETS, (1.0, 2.0, 4.0), 0.5, 4, CALL_BUCKETS.sizes, 0)
    two = DataParallelCallCost(graphs, world_size=2, overhead=1.0)
    assert two.call_ms([video, 64]) == max(graphs.call_ms([video]), graphs.call_ms([64]))  # the video split on its rank


def test_fit_recovers_known_bucket_costs_from_steps_with_videos():
    truth = _true_cost()
    rng = random.Random(3)
    steps = _synthetic_steps(200, seed=2)
    for calls in steps:  # a video in some calls: 1-60 temporal patches of 64-4096 patches
        if rng.random() < 0.5:
            t, frame = rng.randint(1, 60), 4 * rng.randint(16, 1024)
            calls[0].append(VideoSize(t * frame, t))
    targets = [sum(truth.call_units_ms(c) for c in calls) for calls in steps]
    cost = fit_bucket_cost(steps, targets, QWEN_BUCKETS, unit=4, encoder="e", impl="i", source="synthetic")
    assert cost.max_rel_err == pytest.approx(0.0, abs=1e-9) and cost.per_call_ms == pytest.approx(PER_CALL_MS, rel=1e-6)
    for size in cost.observed:
        assert cost.bucket_ms[QWEN_BUCKETS.sizes.index(size)] == pytest.approx(TRUE_MS[size], rel=1e-6)


def test_stored_item_rows_bring_a_videos_temporal_patches_back():
    video = VideoSize(3 * 128, 3)
    assert item_temporal([64, 32]) is None  # images only: nothing stored beside the rows
    temporal = item_temporal([64, video])
    assert temporal == [0, 3] and json.loads(json.dumps([64, video])) == [64, 384]
    back = stored_item_rows(json.loads(json.dumps([64, video])), temporal)
    assert back == [64, 384] and type(back[0]) is int and isinstance(back[1], VideoSize) and back[1].temporal == 3
    cost = BucketCost("e", "i", CALL_BUCKETS, (1.0, 2.0, 4.0), 0.5, 4, CALL_BUCKETS.sizes, 0)
    assert cost.packs(back) == cost.packs([64, video]) != cost.packs([64, 384])  # a video, not one image
    assert stored_item_rows([64, 384]) == [64, 384]  # files of images only read as before
    with pytest.raises(ValueError, match=r"step 4 call 1: 2 item rows \[64, 384\] but 1 temporal patch counts"):
        stored_item_rows([64, 384], [3], "step 4 call 1")


# --- images over the largest bucket: a padded large bucket, its full attention growing with the image ----

def test_a_pack_in_a_large_bucket_costs_its_padded_size_or_its_flop_scale():
    cost = _true_cost()  # no tower config at hand: units
    largest = QWEN_BUCKETS.largest
    image = Pack((0,), largest + 4, None)  # runs in the first large bucket, 18432
    assert cost.pack_ms(image) == pytest.approx(cost.bucket_ms[-1] * QWEN_BUCKETS.large[0] / largest)
    over_cap = Pack((0,), QWEN_BUCKETS.large[-1] + 1024, None)  # past the cap: eager, unpadded, as before
    assert cost.pack_ms(over_cap) == pytest.approx(cost.bucket_ms[-1] * over_cap.size / largest)
    eager = replace(cost, buckets=QWEN_BUCKETS.capped(0))  # no large buckets: eager, as before
    assert eager.pack_ms(image) == pytest.approx(cost.bucket_ms[-1] * image.size / largest)
    flops = replace(cost, large_scale=((QWEN_BUCKETS.large[0], 2.0),))  # with a tower's FLOP scale: the bucket's
    assert flops.pack_ms(image) == pytest.approx(cost.bucket_ms[-1] * 2.0)
    assert flops.pack_ms(over_cap) == pytest.approx(cost.pack_ms(over_cap))
    next_one = Pack((0,), QWEN_BUCKETS.large[0] + 4, None)  # a bucket without a scale: units
    assert flops.pack_ms(next_one) == pytest.approx(cost.bucket_ms[-1] * QWEN_BUCKETS.large[1] / largest)
    capped = replace(flops, buckets=QWEN_BUCKETS.capped(QWEN_BUCKETS.large[0]))  # a lower cap: eager above it
    assert capped.pack_ms(image) == flops.pack_ms(image) and capped.pack_ms(next_one) == eager.pack_ms(next_one)


def test_the_measured_model_scales_large_buckets_by_flops(tmp_path):
    (path,) = sorted(STORED.glob("encoder-costs-*.json"))[-1:]
    cost, _ = measured_bucket_cost(path)
    # a file from before large buckets were kept: the encoder's default ones above its largest bucket
    assert cost.buckets.large == QWEN_BUCKETS.large == tuple(b for b, _ in cost.large_scale)
    scales = [k for _, k in cost.large_scale]
    preset = get_preset("qwen2.5-vl-7b")
    config = MODEL_CLASSES[preset.family][0](**preset.config)
    fill = json.loads(path.read_text())["buckets"][-1]  # the largest graph's replay: 16 images of 1024 patches
    assert (fill["images"], fill["real_units"]) == (16, QWEN_BUCKETS.largest)
    largest = 16 * qwen_vision_flops(config, (1, 32, 32)).total
    assert scales[-1] == pytest.approx(qwen_vision_flops(config, (1, 256, 256)).total / largest)
    units = [size / QWEN_BUCKETS.largest for size in QWEN_BUCKETS.large]
    # full attention over one long sequence: each large bucket costs more a row than units say, more so the larger
    assert all(s > u for s, u in zip(scales, units)) and scales == sorted(scales)
    data = json.loads(path.read_text())
    data["settings"]["large_buckets"] = []  # a file whose encoder had none: images over the largest ran eager
    (tmp_path / path.name).write_text(json.dumps(data))
    eager, _ = measured_bucket_cost(tmp_path / path.name)
    image = Pack((0,), QWEN_BUCKETS.largest + 4, None)
    assert eager.buckets.large == () and eager.pack_ms(image) == pytest.approx(
        eager.bucket_ms[-1] * image.size / QWEN_BUCKETS.largest + eager.per_pack_ms + eager.per_unit_ms * image.size)
    assert cost.pack_ms(image) > eager.pack_ms(image) and eager.bucket_ms == cost.bucket_ms


# --- cost models fit the plain stream only, never a named one -------------------------------------------

def named_copy(source, folder, name: str, stamp: str = "20991231T000000Z"):
    """A copy of the stored stream file as a newer named stream (``name``), every step twice as slow."""
    data = json.loads(source.read_text())
    data["settings"]["stream"]["name"] = name
    for row in data["steps"]:
        row["step_ms"], row["encoder_ms"] = 2 * row["step_ms"] + 5.0, 2 * row["encoder_ms"]
    path = folder / f"stream-{name}-{data['settings']['stream']['encoder']}-{stamp}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_newer_named_stream_file_does_not_change_the_models(tmp_path):
    for path in STORED.glob("*.json"):
        shutil.copy(path, tmp_path)
    before = stream_bookkeeping_ms(tmp_path, "qwen2.5-vl-7b")
    (stored,) = sorted(STORED.glob("stream-qwen2.5-vl-7b-*.json"))[-1:]
    named = [named_copy(stored, tmp_path, name) for name in ("scans", "mixed")]
    assert results.newest_first("stream", tmp_path)[0] in named  # newest, and still not used
    assert results.stream_name(named[0]) == "scans" and results.stream_name(stored) == ""
    assert named[0] not in results.plain_streams(tmp_path) and tmp_path / stored.name in results.plain_streams(tmp_path)
    assert stream_bookkeeping_ms(tmp_path, "qwen2.5-vl-7b") == before
    for path in STORED.glob("encoder-costs-*.json"):  # a folder whose models come from the stream file alone
        (tmp_path / path.name).unlink()
    for path in tmp_path.glob("stream-qwen2.5-vl-7b-*.json"):
        path.unlink()
    assert stream_bookkeeping_ms(tmp_path, "qwen2.5-vl-7b") is None  # only named streams left: none
