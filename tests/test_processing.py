"""vitkit.processing and vitkit.images: real processors on the sample photos, requests, synthetic items."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image

from vitkit.encoders import PRESETS
from vitkit.images import DATA_DIR, image_paths, load_images
from vitkit.item import MultimodalItem
from vitkit.processing import (
    count_text_tokens, make_items, make_processor, make_request, qwen_grid, synthetic_items,
)


@pytest.fixture(scope="module")
def images():
    return load_images()


# --- data/ -------------------------------------------------------------------------------------------

def test_data_holds_a_dozen_varied_photos_with_sources(images):
    paths = image_paths()
    assert len(paths) == len(images) == 12
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert all(im.mode == "RGB" for im in images)
    ratios = {round(im.width / im.height, 2) for im in images}
    assert len(ratios) >= 8 and min(ratios) < 0.7 and max(ratios) > 2.5  # portrait to panorama
    assert sum(p.stat().st_size for p in paths) < 3 * 2**20
    readme = (DATA_DIR / "README.md").read_text()
    for p in paths:
        assert p.name in readme


def test_image_paths_rejects_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_paths(tmp_path / "nope")
    with pytest.raises(ValueError, match="no .jpg"):
        image_paths(tmp_path)


# --- make_items through the real processors ------------------------------------------------------------

@pytest.mark.parametrize("name, side, rows", [("clip-l-336", 336, 576), ("siglip-so400m-384", 384, 729)])
def test_fixed_resolution_items(name, side, rows, images):
    items = make_items(images, name)
    assert len(items) == len(images)
    for item in items:
        assert item.feature.shape == (3, side, side) and item.feature.dtype == torch.float32
        assert item.num_tokens == rows == PRESETS[name].fixed_num_tokens
    assert len({item.hash for item in items}) == len(items)


def test_clip_items_match_the_processor_directly(images):
    item = make_items(images[:1], "clip-l-336")[0]
    direct = make_processor("clip-l-336")(images=images[:1], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(item.feature, direct)
    # OpenAI normalisation: a mid-grey image maps near (0.5 - mean) / std.
    grey = make_items([Image.new("RGB", (50, 80), (128, 128, 128))], "clip-l-336")[0]
    assert abs(grey.feature[0].mean().item() - (128 / 255 - 0.48145466) / 0.26862954) < 1e-3


def test_qwen_items_have_grid_meta_and_merged_row_count(images):
    items = make_items(images, "qwen2.5-vl-7b")
    direct = make_processor("qwen2.5-vl-7b")(images=images, return_tensors="pt")
    assert torch.equal(torch.cat([i.feature for i in items]), direct["pixel_values"])
    for item, image, grid in zip(items, images, direct["image_grid_thw"].tolist()):
        t, h, w = item.meta["image_grid_thw"]
        assert [t, h, w] == grid and t == 1 and h % 2 == 0 and w % 2 == 0
        assert item.feature.shape == (t * h * w, 3 * 2 * 14 * 14)
        assert item.num_tokens == t * h * w // 4
        assert (t, h, w) == qwen_grid(image.height, image.width)
        # The resize keeps the aspect ratio within one 28-px step.
        assert abs(h * 14 - image.height) <= 28 and abs(w * 14 - image.width) <= 28


def test_qwen_max_pixels_override_caps_tokens(images):
    max_pixels = 256 * 28 * 28
    items = make_items(images, "qwen2.5-vl-7b", max_pixels=max_pixels)
    default = make_items(images, "qwen2.5-vl-7b")
    assert all(i.num_tokens <= 256 for i in items)
    assert sum(i.num_tokens for i in items) < sum(i.num_tokens for i in default)
    hubble = images[[p.name for p in image_paths()].index("hubble_deep_field.jpg")]
    assert qwen_grid(hubble.height, hubble.width, max_pixels=max_pixels)[1:] == items[
        [p.name for p in image_paths()].index("hubble_deep_field.jpg")].meta["image_grid_thw"][1:]


@pytest.mark.parametrize("name", ["clip-tiny", "qwen2.5-vl-tiny"])
def test_each_item_owns_its_feature_storage(name):
    # regression: features were views into the processor's whole batch tensor, so one item kept
    # every image of the call alive (and moved or saved them along with it)
    images = [Image.new("RGB", (56, 56), (10, 20, 30)), Image.new("RGB", (56, 112), (200, 100, 0))]
    for item in make_items(images, name):
        assert item.feature.untyped_storage().nbytes() == item.feature.numel() * item.feature.element_size()


def test_make_items_rejects_non_images():
    with pytest.raises(TypeError, match="image 1 is ndarray"):
        import numpy as np
        make_items([Image.new("RGB", (30, 30)), np.zeros((30, 30, 3))], "clip-tiny")
    assert make_items([], "clip-tiny") == []


# --- synthetic items ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(448, 448), (224, 1344), (1000, 333), (60, 60)])
def test_synthetic_qwen_items_match_real_processor_layout(size):
    real = make_items([Image.new("RGB", (size[1], size[0]))], "qwen2.5-vl-7b")[0]
    fake = synthetic_items("qwen2.5-vl-7b", [size], seed=0)[0]
    assert fake.meta == real.meta and fake.num_tokens == real.num_tokens
    assert fake.feature.shape == real.feature.shape and fake.feature.dtype == real.feature.dtype


def test_synthetic_items_seeded_and_fixed_resolution():
    a = synthetic_items("clip-l-336", [(10, 20), (500, 300)], seed=1)
    b = synthetic_items("clip-l-336", [(10, 20), (500, 300)], seed=1)
    c = synthetic_items("clip-l-336", [(10, 20), (500, 300)], seed=2)
    assert [i.hash for i in a] == [i.hash for i in b] != [i.hash for i in c]
    assert all(i.feature.shape == (3, 336, 336) and i.num_tokens == 576 for i in a)
    assert a[0].hash != a[1].hash
    assert synthetic_items("qwen2.5-vl-7b", [(448, 448)])[0].num_tokens == 256


@pytest.mark.parametrize("bad", [(0, 10), (10,), (10.5, 10), (True, 4)])
def test_synthetic_items_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="size 0"):
        synthetic_items("qwen2.5-vl-tiny", [bad])


# --- requests -------------------------------------------------------------------------------------------

def test_count_text_tokens():
    assert count_text_tokens("") == 0
    assert count_text_tokens("abcd") == 1
    assert count_text_tokens("abcde") == 2
    assert count_text_tokens("é" * 4) == 2  # UTF-8 bytes, not characters


def test_make_request_lays_out_text_and_images(images):
    text = "Compare these two photographs:"  # 30 bytes -> 8 tokens
    r = make_request("r1", [text, images[0], 5, images[1], "?"], "qwen2.5-vl-7b")
    n0, n1 = r.items[0].num_tokens, r.items[1].num_tokens
    assert [(s.start, s.stop) for s in r.spans] == [(8, 8 + n0), (13 + n0, 13 + n0 + n1)]
    assert r.prompt_len == 13 + n0 + n1 + 1
    assert r.items[0].meta["image_grid_thw"] == make_items(images[:1], "qwen2.5-vl-7b")[0].meta["image_grid_thw"]


def test_make_request_passes_items_through_and_rejects_other_segments():
    item = synthetic_items("clip-tiny", [(5, 5)])[0]
    r = make_request("r2", [3, item], "clip-tiny")
    assert r.items[0] is item and r.spans[0].start == 3 and r.prompt_len == 3 + item.num_tokens
    with pytest.raises(TypeError, match="request 'r3' segment 1"):
        make_request("r3", ["hi", 2.5], "clip-tiny")
    assert isinstance(make_request("r4", ["text only"], "clip-tiny").prompt_len, int)


def test_requests_feed_the_encoder_end_to_end(images):
    from vitkit.encoders import build_encoder

    enc = build_encoder("qwen2.5-vl-tiny")
    r = make_request("r5", ["look", images[2], "and", images[5]], "qwen2.5-vl-tiny")
    out = enc(list(r.items))
    assert [o.shape[0] for o in out] == [len(s) for s in r.spans]
    assert all(isinstance(i, MultimodalItem) for i in r.items)


def test_processor_overrides_with_list_values(images):
    plain = make_items(images[:1], "clip-tiny", image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])[0]
    default = make_items(images[:1], "clip-tiny")[0]
    assert plain.feature.min() >= 0.0 and plain.feature.max() <= 1.0  # rescaled, not normalised
    assert plain.hash != default.hash


# --- Qwen3-VL: Qwen2-VL's processor class with its own settings -------------------------------------

def test_qwen3_processor_has_the_published_settings():
    processor = make_processor("qwen3-vl-8b")
    assert type(processor).__name__ == "Qwen2VLImageProcessorPil"
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (16, 2, 2)
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (65536, 16777216)
    assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("width, height, grid", [(640, 360, (1, 22, 40)), (1280, 720, (1, 44, 80)),
                                                 (1920, 1080, (1, 68, 120))])
def test_qwen3_token_counts_are_the_processors(width, height, grid):
    # 360p/720p/1080p, the crossover benchmark's sizes: factor 32 (patch 16, merge 2), no downscale.
    image = Image.new("RGB", (width, height), (90, 120, 150))
    direct = make_processor("qwen3-vl-8b")(images=[image], return_tensors="pt")
    item = make_items([image], "qwen3-vl-8b")[0]
    assert tuple(direct["image_grid_thw"][0].tolist()) == item.meta["image_grid_thw"] == grid
    assert torch.equal(item.feature, direct["pixel_values"])
    assert item.feature.shape == (grid[1] * grid[2], 3 * 2 * 16 * 16)
    assert item.num_tokens == grid[1] * grid[2] // 4 == qwen_grid(height, width, "qwen3-vl-8b")[1] * grid[2] // 4
    fake = synthetic_items("qwen3-vl-8b", [(height, width)])[0]
    assert fake.meta == item.meta and fake.feature.shape == item.feature.shape


def test_qwen3_tiny_items_match_the_processor(images):
    items = make_items(images, "qwen3-vl-tiny")
    direct = make_processor("qwen3-vl-tiny")(images=images, return_tensors="pt")
    assert torch.equal(torch.cat([i.feature for i in items]), direct["pixel_values"])
    for item, grid in zip(items, direct["image_grid_thw"].tolist()):
        assert list(item.meta["image_grid_thw"]) == grid
        assert item.num_tokens == grid[0] * grid[1] * grid[2] // 4 <= 64  # the tiny processor's max_pixels
