"""Videos (issue 19): items through the video processor's steps, frame-group items, the encoder on videos.

The real ``Qwen2VLVideoProcessor`` needs torchvision, which this CPU machine cannot load; the tests that
compare against it skip without it (the GPU machine has it). Everything else runs on the CPU.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit import Request, frame_groups, parse_video_items, split_video_items, video_grid
from vitkit.encoders import PRESETS, Buckets, build_encoder
from vitkit.images import CLIP_PATH, DATA_DIR, load_clip, pan_zoom_frames
from vitkit.item import MultimodalItem
from vitkit.processing import (
    VIDEO_RESOLUTIONS, make_request, make_video_item, make_video_items, qwen_grid, qwen_video_grid,
    random_video_shapes, synthetic_items, synthetic_video_items, video_frame_size, video_settings,
)

TINY = "qwen2.5-vl-tiny"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
NEEDS_TORCHVISION = pytest.mark.skipif(
    not HAS_TORCHVISION, reason="the real Qwen2VLVideoProcessor needs torchvision, which is not importable here "
                                "(CPU machine: only CUDA torchvision wheels, whose C ops fail against CPU torch)")


def frames_array(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: smooth gradients plus noise, different in every frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for k in range(frames):
        base = np.stack([(x * 3 + k * 11) % 256, (y * 2 + k * 7) % 256, ((x + y) + k * 5) % 256], axis=-1)
        out[k] = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


# --- settings and grids ----------------------------------------------------------------------------------

def test_video_settings_are_the_video_processors_bounds():
    settings = video_settings("qwen2.5-vl-7b")
    # Qwen2VLVideoProcessor.size: shortest_edge 128*28*28, longest_edge 28*28*768 (qwen-vl-utils' video bounds)
    assert (settings["min_pixels"], settings["max_pixels"]) == (128 * 28 * 28, 768 * 28 * 28)
    assert settings["temporal_patch_size"] == 2 and settings["cap_pixels_per_frame"] is False
    assert video_settings(TINY)["max_pixels"] == 28 * 28 * 64  # tiny presets keep their image bounds
    assert video_settings("qwen2.5-vl-7b", max_pixels=1000)["max_pixels"] == 1000
    with pytest.raises(ValueError, match="fixed-resolution tower, which takes no video"):
        video_settings("clip-tiny")
    if "qwen3-vl-tiny" in PRESETS:  # Qwen3-VL's video processor resizes by the whole clip: not this rule
        with pytest.raises(ValueError, match="'qwen3_vl' has a video processor of its own"):
            video_settings("qwen3-vl-tiny")


@pytest.mark.parametrize("frames, height, width", [(1, 360, 640), (7, 360, 640), (16, 720, 1280), (33, 99, 501)])
def test_video_grid_pads_odd_frame_counts_and_resizes_each_frame(frames, height, width):
    t, h, w = qwen_video_grid(frames, height, width)
    assert t == math.ceil(frames / 2)
    assert 128 <= h * w // 4 <= 768 and h % 2 == 0 and w % 2 == 0  # the video bounds, in merged tokens
    assert qwen_grid(720, 1280)[1:] == (52, 92)  # the image processor's bounds would keep 720p at full size


def test_cap_pixels_per_frame_shares_the_video_budget():
    settings = video_settings("qwen2.5-vl-7b", cap_pixels_per_frame=True, max_video_tokens=20000)
    few, many = (video_frame_size(n, 720, 1280, settings) for n in (16, 512))
    assert few == video_frame_size(16, 720, 1280, video_settings("qwen2.5-vl-7b"))  # under budget: uncapped
    budget = int(20000 * 28 * 28 * 0.9) * 2 // 512
    assert many[0] * many[1] <= max(budget, int(settings["min_pixels"] * 1.05))
    assert many[0] * many[1] < few[0] * few[1]


# --- make_video_item: layout, pixels, token counts ---------------------------------------------------------

def reference_patches(pixels: np.ndarray, temporal: int = 2, patch: int = 14, merge: int = 2) -> torch.Tensor:
    """Patches by loops, from the layout's definition: rows run over temporal patches, then 2x2 merge blocks
    (row-major), then the patches inside a block; a row holds (channel, frame, y, x). Odd frame counts
    repeat the last frame."""
    frames = list(pixels)
    frames += [frames[-1]] * (-len(frames) % temporal)
    video = np.stack(frames)  # (T, C, H, W)
    t, h, w = len(frames) // temporal, video.shape[2] // patch, video.shape[3] // patch
    rows = []
    for ti in range(t):
        for bh in range(h // merge):
            for bw in range(w // merge):
                for mh in range(merge):
                    for mw in range(merge):
                        y, x = (bh * merge + mh) * patch, (bw * merge + mw) * patch
                        block = video[ti * temporal:(ti + 1) * temporal, :, y:y + patch, x:x + patch]  # (T, C, p, p)
                        rows.append(block.transpose(1, 0, 2, 3).reshape(-1))
    return torch.from_numpy(np.stack(rows))


def normalised(frames: np.ndarray, preset: str = TINY) -> np.ndarray:
    """(T, C, H, W) float32 pixels as the processor rescales and normalises them (no resize)."""
    s = video_settings(preset)
    mean, std = np.array(s["image_mean"])[:, None, None], np.array(s["image_std"])[:, None, None]
    return ((frames.transpose(0, 3, 1, 2) * s["rescale_factor"] - mean) / std).astype(np.float32)


@pytest.mark.parametrize("frames", [1, 2, 5, 6])
def test_patches_follow_the_video_processors_layout_and_repeat_the_last_frame(frames):
    video = frames_array(frames, 56, 112, seed=frames)  # 56 x 112 is its own smart_resize size: no resize
    item = make_video_item(video, TINY)
    assert item.modality == "video" and item.meta == {"video_grid_thw": (math.ceil(frames / 2), 4, 8)}
    assert item.num_tokens == math.ceil(frames / 2) * 8 and item.feature.dtype == torch.float32
    assert torch.allclose(item.feature, reference_patches(normalised(video)), atol=1e-5)


@pytest.mark.parametrize("frames, height, width", [(3, 61, 97), (4, 100, 75), (9, 37, 200)])
def test_odd_sizes_are_resized_to_the_video_grid(frames, height, width):
    item = make_video_item(frames_array(frames, height, width), TINY)
    t, h, w = qwen_video_grid(frames, height, width, TINY)
    assert item.meta["video_grid_thw"] == (t, h, w) and item.feature.shape == (t * h * w, 1176)
    assert item.num_tokens == t * h * w // 4
    assert video_grid(item) == (t, h, w)


def test_pil_frames_and_arrays_give_the_same_item():
    video = frames_array(5, 61, 97, seed=3)
    a = make_video_item(video, TINY)
    b = make_video_item([Image.fromarray(f) for f in video], TINY)
    assert a.hash == b.hash and torch.equal(a.feature, b.feature)
    gray = [Image.fromarray(f).convert("L") for f in video]  # converted to RGB, as the processor does
    assert make_video_item(gray, TINY).feature.shape == a.feature.shape


def test_a_video_item_differs_from_the_same_pixels_as_images():
    video = frames_array(2, 56, 56)
    item = make_video_item(video, TINY)
    frame = synthetic_items(TINY, [(56, 56)])[0]
    assert item.feature.shape == frame.feature.shape and item.hash != frame.hash  # meta key differs


@pytest.mark.parametrize("bad, error, match", [
    ([], ValueError, "video 1 has no frames"),
    (np.zeros((0, 56, 56, 3), np.uint8), ValueError, "video 1 has no frames"),
    ([Image.new("RGB", (56, 56)), Image.new("RGB", (56, 60))], ValueError,
     "video 1: frame 1 is 56x60 px but frame 0 is 56x56"),
    (np.zeros((2, 56, 56, 3), np.float32), ValueError, r"must be \(T, H, W, 3\) uint8"),
    (np.zeros((56, 56, 3), np.uint8), ValueError, r"must be \(T, H, W, 3\) uint8"),
    ([Image.new("RGB", (56, 56)), np.zeros((56, 56, 3))], TypeError, "video 1: frame 1 is ndarray"),
    ("clip.mp4", TypeError, "frames must be"),
])
def test_bad_videos_raise_naming_the_video(bad, error, match):
    with pytest.raises(error, match=match):
        make_video_items([frames_array(2, 56, 56), bad], TINY)


def test_without_resize_frames_must_be_whole_merge_blocks():
    assert make_video_item(frames_array(3, 56, 84), TINY, do_resize=False).meta["video_grid_thw"] == (2, 4, 6)
    with pytest.raises(ValueError, match="clip: frames of 60x50 px are not whole 28-px merge blocks"):
        make_video_item(frames_array(3, 50, 60), TINY, name="clip", do_resize=False)


def test_bad_video_in_a_request_names_the_request_and_segment():
    with pytest.raises(ValueError, match=r"request 'r7' segment 2 \(video\) has no frames"):
        make_request("r7", ["look", 3, []], TINY)
    with pytest.raises(ValueError, match=r"request 'r8' segment 1 \(video\): frame 2 is"):
        make_request("r8", ["a", [Image.new("RGB", (56, 56))] * 2 + [Image.new("RGB", (60, 56))]], TINY)


# --- against the real Qwen2VLVideoProcessor (torchvision) ------------------------------------------------
# Grids and token counts must be equal. Pixel values: exactly (float32 rounding) where the frames are
# already the grid's size; otherwise they differ by the resize only, torchvision's antialiased bicubic
# on uint8 against PIL's: at most 2 uint8 levels anywhere, under 0.5 level on average (in normalised
# units, levels / 255 / std).

def real_video_processor(preset: str):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(**video_settings(preset))


VIDEO_CASES = [(TINY, 1, 56, 112), (TINY, 5, 61, 97), (TINY, 8, 100, 75), ("qwen2.5-vl-7b", 3, 240, 427),
               ("qwen2.5-vl-7b", 7, 361, 641), ("qwen2.5-vl-7b", 4, 720, 1280), ("qwen2.5-vl-7b", 2, 28, 900)]


@NEEDS_TORCHVISION
@pytest.mark.parametrize("preset, frames, height, width", VIDEO_CASES)
def test_grids_and_token_counts_equal_the_real_video_processor(preset, frames, height, width):
    video = frames_array(frames, height, width, seed=frames)
    out = real_video_processor(preset)(videos=[video], return_tensors="pt")
    item = make_video_item(video, preset)
    assert [list(item.meta["video_grid_thw"])] == out["video_grid_thw"].tolist()
    assert item.feature.shape == out["pixel_values_videos"].shape
    assert item.num_tokens == out["video_grid_thw"].prod().item() // 4
    assert qwen_video_grid(frames, height, width, preset) == tuple(out["video_grid_thw"][0].tolist())


@NEEDS_TORCHVISION
@pytest.mark.parametrize("preset, frames, height, width", VIDEO_CASES)
def test_pixel_values_equal_the_real_video_processor_within_its_resize(preset, frames, height, width):
    video = frames_array(frames, height, width, seed=frames)
    real = real_video_processor(preset)(videos=[video], return_tensors="pt")["pixel_values_videos"]
    ours = make_video_item(video, preset).feature
    size = video_frame_size(frames, height, width, video_settings(preset))
    if size == (height, width):  # no resize on either side
        assert torch.allclose(ours, real, atol=1e-5)
        return
    level = 1 / 255 / min(video_settings(preset)["image_std"])  # one uint8 level, normalised
    diff = (ours - real).abs()
    assert diff.max() <= 2 * level + 1e-5, float(diff.max() / level)
    assert diff.mean() <= 0.5 * level, float(diff.mean() / level)


@NEEDS_TORCHVISION
def test_the_sample_clip_equals_the_real_video_processor():
    frames = load_clip()
    video = np.stack([np.asarray(f) for f in frames])
    out = real_video_processor("qwen2.5-vl-7b")(videos=[video], return_tensors="pt")
    assert [list(make_video_item(frames, "qwen2.5-vl-7b").meta["video_grid_thw"])] == out["video_grid_thw"].tolist()


# --- the sample clip and synthetic videos ----------------------------------------------------------------

def test_the_sample_clip_is_a_small_real_zoom_with_provenance():
    frames = load_clip()
    assert 16 <= len(frames) <= 24 and {f.size for f in frames} == {(336, 224)}
    assert all(f.mode == "RGB" for f in frames)
    assert CLIP_PATH.stat().st_size < 256 * 2**10
    assert CLIP_PATH.name in (DATA_DIR / "README.md").read_text()
    first, last = (np.asarray(f, dtype=np.float32) for f in (frames[0], frames[-1]))
    assert np.abs(first - last).mean() > 10  # it moves
    item = make_video_item(frames, "qwen2.5-vl-7b")
    assert item.meta["video_grid_thw"][0] == len(frames) // 2


def test_pan_zoom_frames_start_on_the_whole_image():
    with Image.open(DATA_DIR / "coffee.jpg") as src:
        image = src.convert("RGB")
    frames = pan_zoom_frames(image, 3, (60, 40), zoom=2.0)
    assert [f.size for f in frames] == [(60, 40)] * 3
    assert np.abs(np.asarray(frames[0], float) - np.asarray(image.resize((60, 40), Image.Resampling.BICUBIC),
                                                             float)).max() <= 1
    with pytest.raises(ValueError, match="zoom >= 1"):
        pan_zoom_frames(image, 3, (60, 40), zoom=0.5)


def test_synthetic_videos_match_the_real_layout_and_are_seeded():
    shapes = [(7, 100, 75), (16, 360, 640)]
    fake = synthetic_video_items(TINY, shapes, seed=1)
    for item, (frames, height, width) in zip(fake, shapes):
        real = make_video_item(frames_array(frames, height, width), TINY)
        assert item.meta == real.meta and item.num_tokens == real.num_tokens
        assert item.feature.shape == real.feature.shape and item.modality == "video"
    again = synthetic_video_items(TINY, shapes, seed=1)
    assert [i.hash for i in again] == [i.hash for i in fake] != [i.hash for i in synthetic_video_items(TINY, shapes, 2)]
    assert synthetic_video_items(TINY, shapes[:1], dtype=torch.bfloat16)[0].feature.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shape 0 frames must be a positive int"):
        synthetic_video_items(TINY, [(0, 100, 100)])


def test_random_video_shapes_span_the_workload():
    shapes = random_video_shapes(200, seed=3)
    assert all(16 <= f <= 512 for f, _, _ in shapes)
    assert {(h, w) for _, h, w in shapes} == set(VIDEO_RESOLUTIONS.values())
    assert shapes == random_video_shapes(200, seed=3)
    with pytest.raises(ValueError, match="resolutions must be among"):
        random_video_shapes(2, resolutions=("4k",))
    big = synthetic_video_items("qwen2.5-vl-7b", [(16, *VIDEO_RESOLUTIONS["720p"])], dtype=torch.bfloat16)[0]
    assert big.meta["video_grid_thw"] == qwen_video_grid(16, 720, 1280) == (8, 40, 72)


# --- frame groups ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video():
    """A tiny video of 9 frames (5 temporal patches) of 6 x 10 patches: windows at the edges."""
    return make_video_item(frames_array(9, 84, 140, seed=9), TINY)


def test_frame_groups_split_rows_tokens_and_grids(video):
    assert video.meta["video_grid_thw"] == (5, 6, 10)
    groups = frame_groups(video, 2)
    assert [g.meta["video_grid_thw"] for g in groups] == [(2, 6, 10), (2, 6, 10), (1, 6, 10)]  # the last is short
    assert [g.num_tokens for g in groups] == [30, 30, 15] and sum(g.num_tokens for g in groups) == video.num_tokens
    assert torch.equal(torch.cat([g.feature for g in groups]), video.feature)
    assert all(g.modality == "video" for g in groups) and len({g.hash for g in groups}) == 3
    assert groups[0].feature.untyped_storage().data_ptr() == video.feature.untyped_storage().data_ptr()  # views
    assert frame_groups(video, 5) == [video] and frame_groups(video, 50) == [video]


def test_frame_group_hashes_are_content_hashes(video):
    a, b = frame_groups(video, 2), frame_groups(make_video_item(frames_array(9, 84, 140, seed=9), TINY), 2)
    assert [g.hash for g in a] == [g.hash for g in b]  # equal content, equal hash
    single = frame_groups(video, 1)
    assert single[0].hash != a[0].hash
    # the same two temporal patches, cut from another video, are the same item
    shifted = MultimodalItem(video.feature[120:], 45, modality="video", meta={"video_grid_thw": (3, 6, 10)})
    assert frame_groups(shifted, 2)[0].hash == a[1].hash
    named = frame_groups(video, 2, hash_content=False)
    assert named[1].hash == f"{video.hash}[t2:4]"


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "2"])
def test_frame_group_size_must_be_a_positive_int_of_temporal_patches(video, size):
    with pytest.raises(ValueError, match=f"hash {video.hash[:12]}.*group_size .temporal patches. must be a positive"):
        frame_groups(video, size)


def test_frame_groups_refuse_a_grid_that_disagrees_with_the_feature(video):
    wrong = MultimodalItem(video.feature, video.num_tokens, modality="video", meta={"video_grid_thw": (4, 6, 10)})
    with pytest.raises(ValueError, match=rf"video item \(hash {wrong.hash[:12]}\): grid \(4, 6, 10\) needs 240 patch "
                                         r"rows but the feature has shape \(300, 1176\)"):
        frame_groups(wrong, 2)
    with pytest.raises(ValueError, match="has no meta\\['video_grid_thw'\\]"):
        frame_groups(MultimodalItem(video.feature, 75, modality="video"), 2)
    with pytest.raises(ValueError, match="has modality 'image', not 'video'"):
        frame_groups(MultimodalItem(video.feature, 75, meta={"image_grid_thw": (5, 6, 10)}), 2)
    with pytest.raises(ValueError, match="three positive ints"):
        frame_groups(MultimodalItem(video.feature, 75, modality="video", meta={"video_grid_thw": (5, 60)}), 2)


@pytest.mark.parametrize("spec, size", [("whole", None), ("frame-groups:1", 1), ("frame-groups:16", 16)])
def test_video_item_specs(spec, size):
    assert parse_video_items(spec) == size


@pytest.mark.parametrize("spec", ["frame-groups:0", "frame-groups:-2", "frame-groups:2.5", "frame-groups", "groups:2",
                                  "Whole", "frame-groups:x", "frame-groups:\u00b2", ""])
def test_bad_video_item_specs_raise(spec):
    with pytest.raises(ValueError, match="video_items must be 'whole' or 'frame-groups:<g>'"):
        parse_video_items(spec)
    with pytest.raises(TypeError, match="video_items must be a str"):
        parse_video_items(2)


def test_requests_lay_out_frame_groups_back_to_back(video):
    frames = frames_array(9, 84, 140, seed=9)
    image = Image.new("RGB", (56, 56), (10, 200, 30))
    whole = make_request("w", ["what happens?", frames, image, 2], TINY)
    groups = make_request("g", ["what happens?", frames, image, 2], TINY, video_items="frame-groups:2")
    assert [i.modality for i in whole.items] == ["video", "image"]
    assert [i.modality for i in groups.items] == ["video"] * 3 + ["image"]
    assert whole.items[0].hash == video.hash and whole.prompt_len == groups.prompt_len
    assert groups.spans[0].start == whole.spans[0].start and groups.spans[2].stop == whole.spans[0].stop
    assert all(a.stop == b.start for a, b in zip(groups.spans[:2], groups.spans[1:3]))  # no tokens between groups
    assert groups.items[3].hash == whole.items[1].hash
    passed = make_request("p", [video], TINY, video_items="frame-groups:4")  # an item passed in is split too
    assert [len(s) for s in passed.spans] == [60, 15]
    with pytest.raises(ValueError, match="video_items must be"):
        make_request("bad", [video], TINY, video_items="frame-groups:0")
    assert split_video_items([video], "whole") == [video]


def test_a_split_video_with_a_bad_grid_names_the_request(video):
    wrong = MultimodalItem(video.feature, 60, modality="video", meta={"video_grid_thw": (4, 6, 10)})
    with pytest.raises(ValueError, match="request 'r9' segment 1: video item .* needs 240 patch rows"):
        make_request("r9", [3, wrong], TINY, video_items="frame-groups:2")


# --- the encoder: frame groups equal the whole video (CPU, float32, window and full attention) ------------

@pytest.fixture(scope="module")
def tiny():
    enc = build_encoder(TINY, seed=0)
    return enc, enc.variant(impl="vitkit-eager"), enc.variant(impl="stock")


def test_tiny_tower_has_window_and_full_attention_layers(tiny):
    cfg = tiny[0].config
    assert set(cfg.fullatt_block_indexes) < set(range(cfg.depth))  # the other layers attend within windows
    assert cfg.window_size // cfg.patch_size < 10  # windows smaller than a frame of the test videos


@pytest.mark.parametrize("group_size", [1, 2, 3])
def test_frame_group_rows_equal_the_whole_videos(tiny, video, group_size):
    enc, eager, stock = tiny
    whole = stock([video])[0]  # transformers' own tower on video_grid_thw
    grid = torch.tensor([video.meta["video_grid_thw"]])
    assert rel(whole, enc.model(hidden_states=video.feature, grid_thw=grid).pooler_output) <= 1e-6
    groups = frame_groups(video, group_size)
    for impl in (enc, eager, stock):
        rows = torch.cat(impl(groups))
        assert rows.shape == whole.shape and rel(rows, whole) <= 1e-5
    together = torch.cat(enc([*groups, video]))  # groups and the whole video in one packed call
    assert torch.allclose(together[: whole.shape[0]], together[whole.shape[0]:], atol=1e-5)


def test_videos_and_images_share_one_bucketed_call(tiny, video):
    enc, eager, stock = tiny
    items = [synthetic_items(TINY, [(112, 84)], seed=1)[0], video, *synthetic_video_items(TINY, [(4, 56, 56)], seed=2)]
    out = enc(items)
    assert len(enc.last_call) == 1 and enc.last_call[0].bucket is not None  # one pack, one bucket
    for a, b, c in zip(out, eager(items), stock(items)):
        assert a.shape == c.shape and rel(a, b) <= 1e-5 and rel(a, c) <= 1e-5


def test_a_video_over_the_largest_bucket_is_split_over_packs(tiny, video):
    eager = tiny[1]
    small = build_encoder(TINY, seed=0, buckets=Buckets((16, 32, 64, 128), max_items=8, multiple=4))
    image = synthetic_items(TINY, [(56, 56)], seed=4)[0]
    items = [video, image]  # 300 patches, 60 a temporal patch: two a pack at most
    out = small(items)
    assert [o.shape[0] for o in out] == [video.num_tokens, image.num_tokens]  # one tensor per item
    assert all(r.bucket is not None and r.bucket <= 128 for r in small.last_call)
    assert small.stats.unbucketed == 0 and small.stats.split_items == 1
    assert sum(r.real_rows for r in small.last_call) == video.num_tokens + image.num_tokens
    for a, b in zip(out, eager(items)):
        assert rel(a, b) <= 1e-5


def test_a_video_of_more_temporal_patches_than_max_items_is_split(tiny):
    eager = tiny[1]
    long = synthetic_video_items(TINY, [(20, 56, 56)], seed=5)[0]  # 10 temporal patches of 16 patches
    few = build_encoder(TINY, seed=0, buckets=Buckets((64, 512), max_items=4, multiple=4))
    out = few([long])[0]
    assert few.stats.split_items == 1 and len(few.last_call) == 3  # 4 + 4 + 2 temporal patches
    assert [r.real_rows for r in few.last_call] == [16, 16, 8]
    assert rel(out, eager([long])[0]) <= 1e-5


SPLIT_BUCKETS = Buckets((16, 32, 64, 128), max_items=4, multiple=4, large=(192, 256))
VIDEO_CALLS = {  # (frames, height, width) of videos, (height, width) of images beside them, videos split
    "below the largest bucket": ([(4, 56, 56), (2, 56, 112)], [(56, 56)], 0),
    "above it": ([(9, 84, 140)], [(56, 56), (112, 84)], 1),  # 5 x 60 patches: groups of 2
    "more temporal patches than max_items": ([(12, 56, 56), (20, 56, 56)], [(56, 56)], 2),  # 96 and 160 patches
    "a temporal patch over it": ([(4, 224, 168), (4, 112, 224)], [(224, 224)], 2),  # 192 and 128 a temporal patch
}


@pytest.mark.parametrize("videos, images, splits", list(VIDEO_CALLS.values()), ids=list(VIDEO_CALLS))
def test_the_cost_model_packs_a_call_as_the_encoder_runs_it(videos, images, splits):
    from vitkit.costs.clock import item_cost_rows
    from vitkit.costs.encoder import BucketCost

    enc = build_encoder(TINY, seed=0, buckets=SPLIT_BUCKETS)
    items = [*synthetic_video_items(TINY, videos, seed=6), *synthetic_items(TINY, images, seed=7)]
    cost = BucketCost(TINY, "vitkit", SPLIT_BUCKETS, (1.0, 1.0, 1.0, 1.0), 0.0, 4, SPLIT_BUCKETS.sizes, 0)
    for order in (items, items[::-1]):
        before = enc.stats.copy()
        enc(order)
        assert (enc.stats - before).split_items == splits
        ran = [(r.items, r.real_rows, r.bucket) for r in enc.last_call]
        # an unbucketed pack of the model is one piece over the largest bucket: the encoder takes a large one
        packs = cost.packs([item_cost_rows(item) for item in order])
        assert [(len(p.indices), p.size // 4, p.bucket or SPLIT_BUCKETS.pick_large(p.size)) for p in packs] == ran


def test_the_cost_model_packs_a_random_stream_as_the_encoder_runs_it():
    import random

    from vitkit.costs.clock import item_cost_rows
    from vitkit.costs.encoder import BucketCost

    enc = build_encoder(TINY, seed=0, buckets=SPLIT_BUCKETS)
    cost = BucketCost(TINY, "vitkit", SPLIT_BUCKETS, (1.0, 1.0, 1.0, 1.0), 0.0, 4, SPLIT_BUCKETS.sizes, 0)
    rng = random.Random(1)
    for step in range(6):
        images = [(rng.randint(56, 224), rng.randint(56, 224)) for _ in range(rng.randint(0, 3))]
        videos = [(rng.randint(1, 24), rng.randint(56, 224), rng.randint(56, 224)) for _ in range(rng.randint(1, 3))]
        items = synthetic_items(TINY, images, seed=step) + synthetic_video_items(TINY, videos, seed=step)
        rng.shuffle(items)
        enc(items)
        packs = cost.packs([item_cost_rows(item) for item in items])
        assert ([(len(p.indices), p.size // 4, p.bucket or SPLIT_BUCKETS.pick_large(p.size)) for p in packs]
                == [(r.items, r.real_rows, r.bucket) for r in enc.last_call])


def test_bad_video_items_raise_in_the_encoder(tiny, video):
    enc = tiny[0]
    with pytest.raises(ValueError, match=r"item 0 .*\(video\) has no meta\['video_grid_thw'\]"):
        enc([MultimodalItem(video.feature, 75, modality="video", meta={"image_grid_thw": (5, 6, 10)})])
    with pytest.raises(ValueError, match=r"item 1 .*feature shape \(300, 1176\), expected \(240, 1176\)"):
        enc([video, MultimodalItem(video.feature, 60, modality="video", meta={"video_grid_thw": (4, 6, 10)})])


def test_a_request_of_frame_groups_encodes_to_the_whole_videos_rows(tiny):
    enc = tiny[0]
    frames = load_clip()[:7]
    whole = make_request("w", ["q", frames], TINY)
    groups = make_request("g", ["q", frames], TINY, video_items="frame-groups:1")
    assert isinstance(groups, Request) and len(groups.items) == math.ceil(7 / 2)
    assert rel(torch.cat(enc(list(groups.items))), enc(list(whole.items))[0]) <= 1e-5


# --- GPU: frame groups against a float32 reference, peak memory of a long video -------------------------

@pytest.mark.gpu
def test_gpu_frame_groups_are_no_further_from_float32_than_the_whole_video():
    ref = build_encoder("qwen2.5-vl-7b", device="cuda", dtype=torch.float32, impl="vitkit-eager")
    enc = ref.variant(impl="vitkit", dtype=torch.bfloat16)
    enc.warmup(progress=False)
    video = synthetic_video_items("qwen2.5-vl-7b", [(32, 448, 448)], seed=1)[0]
    expected = ref([video])[0]
    whole_err = rel(enc([video])[0], expected)
    for size in (1, 4, 16):
        err = rel(torch.cat(enc(frame_groups(video, size))), expected)
        assert err <= 1.5 * whole_err + 1e-3, (size, err, whole_err)


@pytest.mark.gpu
def test_gpu_a_512_frame_video_peaks_within_the_largest_buckets_memory():
    enc = build_encoder("qwen2.5-vl-7b", device="cuda", dtype=torch.bfloat16)
    enc.warmup(progress=False)
    largest = synthetic_items("qwen2.5-vl-7b", [(1792, 1792)], seed=0)[0]  # 128 x 128 = 16384 patches
    video = synthetic_video_items("qwen2.5-vl-7b", [(512, 448, 448)], seed=0, dtype=torch.bfloat16)[0]

    def peak(items):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = enc(items)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, sum(o.numel() * o.element_size() for o in out)

    bucket_peak, _ = peak([largest])
    video_peak, out_bytes = peak([video])
    assert enc.stats.captures == 0 and enc.stats.unbucketed == 0
    assert max(r.real_rows + r.padded_rows for r in enc.last_call) <= enc.max_tokens_per_call
    # the packs' pieces and the joined output are the only rows that grow with the video
    assert video_peak <= bucket_peak + 2 * out_bytes + 64 * 2**20, (video_peak, bucket_peak, out_bytes)
