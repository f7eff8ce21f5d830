"""FLOP counting (vitkit.encoders.flops) against torch's FlopCounterMode on transformers towers.

FlopCounterMode counts matmuls, bmm and convolutions at 2 FLOPs per multiply-add, the same
terms as vitkit's count. With ``attn_implementation="eager"`` the attention scores are two
``bmm`` calls it sees, so the counts must match exactly. With SDPA on CPU the fused op
(``_scaled_dot_product_flash_attention_for_cpu``) has no entry in its registry, so it sees
everything except the attention-score term: that difference is checked too.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: towers come from configs

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel
from transformers.vision_utils import get_vision_window_index

from vitkit.encoders.flops import (item_flops, items_flops, qwen3_vision_flops, qwen_vision_flops, qwen_window_lengths,
                                   vit_flops)
from vitkit.encoders import PRESETS
from vitkit.item import MultimodalItem, frame_groups


def counted(model, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


def tiny_config(cls, preset: str, impl: str, **changes):
    return cls(**(dict(PRESETS[preset].config) | changes), attn_implementation=impl)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_clip_matches_flop_counter(impl):
    config = tiny_config(CLIPVisionConfig, "clip-tiny", impl)
    model = CLIPVisionModel(config).eval()
    ours = vit_flops(config)
    seen = counted(model, pixel_values=torch.randn(3, 3, config.image_size, config.image_size))
    expected = 3 * (ours.total if impl == "eager" else ours.total - ours.attn_scores)
    assert seen == expected
    assert ours.attn_scores > 0 and ours.merger == 0 and ours.head == 0


@pytest.mark.parametrize("use_head", [False, True])
def test_siglip_matches_flop_counter(use_head):
    config = tiny_config(SiglipVisionConfig, "siglip-tiny", "eager", vision_use_head=use_head)
    model = SiglipVisionModel(config).eval()
    ours = vit_flops(config, include_head=use_head)
    assert counted(model, pixel_values=torch.randn(2, 3, config.image_size, config.image_size)) == 2 * ours.total
    assert (ours.head > 0) == use_head


def test_clip_penultimate_layer_counts_one_layer_less():
    # LLaVA reads CLIP's penultimate layer: a model truncated to n-1 layers does that work.
    full = tiny_config(CLIPVisionConfig, "clip-tiny", "eager")
    cut = tiny_config(CLIPVisionConfig, "clip-tiny", "eager", num_hidden_layers=full.num_hidden_layers - 1)
    seen = counted(CLIPVisionModel(cut).eval(), pixel_values=torch.randn(1, 3, 56, 56))
    assert seen == vit_flops(full, num_layers=full.num_hidden_layers - 1).total
    with pytest.raises(ValueError, match="exceeds"):
        vit_flops(full, num_layers=full.num_hidden_layers + 1)


def test_clip_l_336_real_config_on_meta_device():
    # The published shapes, counted without memory or compute on the meta device.
    config = tiny_config(CLIPVisionConfig, "clip-l-336", "eager")
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    seen = counted(model, pixel_values=torch.empty(2, 3, 336, 336, device="meta"))
    assert seen == 2 * vit_flops(config).total
    # 577 tokens x 24 layers x ~12.6M params per layer x 2: about 0.38 TFLOP per image.
    assert 0.37e12 < vit_flops(config).total < 0.39e12


QWEN_GEOMETRY = dict(window_size=112, fullatt_block_indexes=[1, 3])  # real window size, tiny width


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_qwen_matches_flop_counter(impl):
    config = tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-tiny", impl, **QWEN_GEOMETRY)
    model = Qwen2_5_VisionTransformerPretrainedModel(config).eval()
    grids = [(1, 16, 20), (1, 10, 8), (1, 6, 30)]  # full windows, partial windows, a single row
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    seen = counted(model, pixels, grid_thw=torch.tensor(grids))
    ours = [qwen_vision_flops(config, g) for g in grids]
    total = sum(c.total for c in ours)
    expected = total if impl == "eager" else total - sum(c.attn_scores for c in ours)
    assert seen == expected
    assert all(c.merger > 0 for c in ours)


VIDEO_GRIDS = [(3, 16, 20), (2, 10, 8), (1, 6, 30), (4, 2, 2)]  # videos of 1-4 temporal patches


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_qwen_videos_match_flop_counter(impl):
    # a video's full attention is one sequence per temporal patch, its windows tile each temporal patch
    config = tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-tiny", impl, **QWEN_GEOMETRY)
    model = Qwen2_5_VisionTransformerPretrainedModel(config).eval()
    pixels = torch.randn(sum(t * h * w for t, h, w in VIDEO_GRIDS), 3 * 2 * 14 * 14)
    ours = [qwen_vision_flops(config, g) for g in VIDEO_GRIDS]
    seen = counted(model, pixels, grid_thw=torch.tensor(VIDEO_GRIDS))
    assert seen == sum(c.total - (0 if impl == "eager" else c.attn_scores) for c in ours)


QWEN3_GRIDS = [(1, 8, 6), (3, 4, 10), (2, 2, 2), (1, 16, 16)]  # images and videos; grids above and below the table's


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_qwen3_matches_flop_counter(impl):
    # every block attends per temporal patch; the resampled position table is a gather FlopCounterMode sees none of
    config = tiny_config(Qwen3VLVisionConfig, "qwen3-vl-tiny", impl)
    assert config.model_type == "qwen3_vl_vision"
    model = Qwen3VLVisionModel(config).eval()
    pixels = torch.randn(sum(t * h * w for t, h, w in QWEN3_GRIDS), 3 * 2 * 16 * 16)
    ours = [qwen3_vision_flops(config, g) for g in QWEN3_GRIDS]
    seen = counted(model, pixels, grid_thw=torch.tensor(QWEN3_GRIDS))
    assert seen == sum(c.total - (0 if impl == "eager" else c.attn_scores) for c in ours)
    one, plain = ours[0], qwen3_vision_flops(tiny_config(Qwen3VLVisionConfig, "qwen3-vl-tiny", impl,
                                                         deepstack_visual_indexes=[]), QWEN3_GRIDS[0])
    assert one.merger == 4 * plain.merger  # the patch merger and three deepstack mergers of its shape
    assert one.total - one.merger == plain.total - plain.merger


def test_qwen3_first_layers_count_only_their_deepstack_mergers():
    # a tower cut to 2 blocks runs the deepstack mergers after blocks 0 and 1, not the one after block 2
    full = tiny_config(Qwen3VLVisionConfig, "qwen3-vl-tiny", "eager")
    assert list(full.deepstack_visual_indexes) == [0, 1, 2] and full.depth == 4
    cut = tiny_config(Qwen3VLVisionConfig, "qwen3-vl-tiny", "eager", depth=2)
    pixels = torch.randn(2 * 32, 3 * 2 * 16 * 16)
    seen = counted(Qwen3VLVisionModel(cut).eval(), pixels, grid_thw=torch.tensor([[2, 4, 8]]))
    first_two = qwen3_vision_flops(full, (2, 4, 8), num_layers=2)
    assert seen == first_two.total
    assert first_two.merger == 3 * qwen3_vision_flops(full, (2, 4, 8)).merger // 4


def _video(grid, width=8):
    t, h, w = grid
    meta = {"video_grid_thw": grid}
    return MultimodalItem(torch.randn(t * h * w, width), t * h * w // 4, modality="video", meta=meta)


@pytest.mark.parametrize("tower", ["qwen2.5-vl-tiny", "qwen3-vl-tiny", "qwen2.5-vl-7b", "qwen3-vl-8b"])
@pytest.mark.parametrize("grid, group", [((5, 6, 10), 2), ((7, 16, 20), 3), ((4, 2, 2), 1), ((3, 12, 8), 4)])
def test_a_split_videos_flops_add_up_to_the_whole_videos(tower, grid, group):
    config_class = Qwen3VLVisionConfig if tower.startswith("qwen3") else Qwen2_5_VLVisionConfig
    config = tiny_config(config_class, tower, "sdpa")
    video = _video(grid)
    groups = frame_groups(video, group)
    whole = item_flops(config, video)
    tower_flops = qwen3_vision_flops if tower.startswith("qwen3") else qwen_vision_flops
    assert whole == tower_flops(config, grid) and whole.attn_scores > 0
    assert items_flops(config, groups) == whole.total
    for term in ("qkv", "attn_scores", "mlp", "merger"):  # term by term, not only in total
        assert sum(getattr(item_flops(config, g), term) for g in groups) == getattr(whole, term)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(1, 30), st.integers(1, 30), st.sampled_from([56, 112, 224]))
def test_qwen_windows_match_transformers(t, half_h, half_w, window_size):
    config = Qwen2_5_VLVisionConfig(window_size=window_size, spatial_merge_size=2, patch_size=14)
    grid = (t, 2 * half_h, 2 * half_w)
    _, cu = get_vision_window_index(torch.tensor([grid]), 2, window_size, 14)
    assert qwen_window_lengths(config, grid) == torch.diff(cu).tolist()
    assert sum(qwen_window_lengths(config, grid)) == t * grid[1] * grid[2]


def test_window_attention_is_cheaper_than_full_attention():
    config = tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-7b", "sdpa")
    grid = (1, 96, 96)  # 1344 x 1344 px
    windowed = qwen_vision_flops(config, grid)
    all_full = qwen_vision_flops(tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-7b", "sdpa",
                                             fullatt_block_indexes=list(range(32))), grid)
    assert windowed.attn_scores < all_full.attn_scores / 4
    assert windowed.qkv == all_full.qkv and windowed.mlp == all_full.mlp


def test_item_flops_reads_qwen_grid_from_meta():
    from vitkit.processing import synthetic_items

    config = tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-tiny", "sdpa")
    items = synthetic_items("qwen2.5-vl-tiny", [(56, 56), (112, 84)], seed=0)
    grids = [item.meta["image_grid_thw"] for item in items]
    assert items_flops(config, items) == sum(qwen_vision_flops(config, tuple(g)).total for g in grids)
    bare = type(items[0])(items[0].feature, items[0].num_tokens)
    with pytest.raises(ValueError, match="image_grid_thw"):
        item_flops(config, bare)
    video = _video((3, 4, 6))
    assert item_flops(config, video) == qwen_vision_flops(config, (3, 4, 6))  # a video's grid, by its own key
    mislabelled = MultimodalItem(video.feature, video.num_tokens, modality="video", meta={"image_grid_thw": (3, 4, 6)})
    with pytest.raises(ValueError, match=rf"item {mislabelled.hash[:12]} \(video\): Qwen FLOPs need "
                                         r"meta\['video_grid_thw'\], meta has \['image_grid_thw'\]"):
        item_flops(config, mislabelled)


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda clip, qwen: qwen_vision_flops(clip, (1, 4, 4)), "qwen2_5_vl_vision", id="wrong config"),
    pytest.param(lambda clip, qwen: qwen_window_lengths(qwen, (1, 3, 4)), "multiples of spatial_merge_size",
                 id="odd grid"),
    pytest.param(lambda clip, qwen: qwen_window_lengths(qwen, (1, 0, 4)),
                 r"grid_thw\[1\] must be a positive int, got 0",
                 id="empty grid"),
    pytest.param(lambda clip, qwen: qwen3_vision_flops(qwen, (1, 4, 4)), "qwen3_vl_vision", id="not Qwen3-VL"),
    pytest.param(lambda clip, qwen: qwen_vision_flops(qwen, (4, 4)),
                 r"grid_thw must be \(t, h, w\) patches, got \(4, 4\)", id="two numbers"),
    pytest.param(lambda clip, qwen: qwen_vision_flops(qwen, (1, 4, 6, 2)), r"\(t, h, w\)", id="four numbers"),
    pytest.param(lambda clip, qwen: vit_flops(clip, include_head=True), "SigLIP only", id="head on CLIP"),
    pytest.param(lambda clip, qwen: vit_flops(clip, num_layers=0), "num_layers must be a positive int, got 0",
                 id="no layers"),
])
def test_bad_inputs_raise(call, message):
    clip = tiny_config(CLIPVisionConfig, "clip-tiny", "eager")
    qwen = tiny_config(Qwen2_5_VLVisionConfig, "qwen2.5-vl-tiny", "eager")
    with pytest.raises(ValueError, match=message):
        call(clip, qwen)


# Qwen: 16 + 48 + 192 patches, exactly a bucket (256): padding rows would be work no item's count has
TINY_SIZES = {"clip-tiny": [(56, 56)] * 3, "siglip-tiny": [(70, 70)] * 2,
              "qwen2.5-vl-tiny": [(56, 56), (112, 84), (224, 168)], "qwen3-vl-tiny": [(64, 64), (128, 96), (256, 192)]}


@pytest.mark.parametrize("impl", ["vitkit", "stock"])
@pytest.mark.parametrize("name", sorted(TINY_SIZES))
def test_vitkit_encoders_do_the_counted_work(name, impl):
    # The encoders run SDPA, which FlopCounterMode cannot see on CPU: it must see exactly the
    # count minus the attention scores. MFU counts the layers the rows need (flop_layers):
    # CLIP's stock forward also runs the last layer, which LLaVA's rows do not use.
    from vitkit.bench.sweep import flop_layers
    from vitkit.encoders import build_encoder
    from vitkit.processing import synthetic_items

    encoder = build_encoder(name, impl=impl)
    items = synthetic_items(name, TINY_SIZES[name], seed=1)
    with FlopCounterMode(display=False) as counter:
        encoder(items)
    layers = flop_layers(encoder)
    assert layers == (2 if name == "clip-tiny" else None)
    run_layers = None if (impl == "stock" and name == "clip-tiny") else layers
    counts = [item_flops(encoder.config, item, num_layers=run_layers) for item in items]
    assert counter.get_total_flops() == sum(c.total - c.attn_scores for c in counts)
