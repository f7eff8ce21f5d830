"""The Qwen3-VL vision tower: published shapes, rows (merger + deepstack), batched == per item == stock,
bucketed == unbucketed, padding layout, checkpoints; on CPU with the tiny variant."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from vitkit.encoders import PRESETS, Buckets, Qwen3VisionEncoder, build_encoder, count_parameters, default_buckets
from vitkit.encoders.qwen import QWEN_BUCKETS
from vitkit.encoders.qwen3 import PAD_SEQUENCE, PAD_SEQUENCES, cu_capacity, padded_qwen3_layout, qwen3_layout
from vitkit.images import load_images
from vitkit.item import MultimodalItem
from vitkit.processing import make_items, synthetic_items

TINY = "qwen3-vl-tiny"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def enc():
    return build_encoder(TINY, seed=0)


@pytest.fixture(scope="module")
def items():
    return make_items(load_images(), TINY)


def qwen3_params(d, inter, depth, out, positions, deepstack, merge=2, patch=16):
    """Independent count: patch conv (with bias), position table, blocks (LayerNorms, QKV, proj, GELU MLP),
    the merger (LayerNorm over d) and the deepstack mergers (LayerNorm over the merged width)."""
    embed = 3 * 2 * patch * patch * d + d + positions * d
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * inter + inter) + (inter * d + d)
    wide = d * merge * merge
    mlp = (wide * wide + wide) + (wide * out + out)
    return embed + depth * block + (2 * d + mlp) + deepstack * (2 * wide + mlp)


def test_full_preset_has_the_published_shapes():
    full = build_encoder("qwen3-vl-8b", device="meta")
    c = full.config
    assert (c.depth, c.hidden_size, c.num_heads, c.intermediate_size, c.out_hidden_size) == (27, 1152, 16, 4304, 4096)
    assert (c.patch_size, c.spatial_merge_size, c.temporal_patch_size, c.num_position_embeddings) == (16, 2, 2, 2304)
    assert list(c.deepstack_visual_indexes) == [8, 16, 24] and c.hidden_act == "gelu_pytorch_tanh"
    assert c.rope_parameters["rope_theta"] == 10000.0
    assert count_parameters(full) == qwen3_params(1152, 4304, 27, 4096, 2304, 3)
    assert abs(count_parameters(full) / 1e6 - 576) < 1.0  # the 8B model's "visual": ~576 M
    # rows: the merger's 4096 and three deepstack mergers' 4096, side by side
    assert full.hidden_size == 4 * 4096 and full.variable_resolution and isinstance(full, Qwen3VisionEncoder)
    assert "deepstack" in PRESETS["qwen3-vl-8b"].rows_note
    assert default_buckets("qwen3-vl-8b") == QWEN_BUCKETS  # units: patches, large buckets too, as Qwen2.5-VL


def test_batched_equals_per_item_with_merged_row_counts(enc, items):
    batched = enc(items)
    assert len(batched) == len(items)
    for item, out in zip(items, batched):
        t, h, w = item.meta["image_grid_thw"]
        assert out.shape == (t * h * w // 4, 96 * 4) == (item.num_tokens, enc.hidden_size)
        assert rel(out, enc([item])[0]) <= 1e-5
    assert rel(torch.cat(enc(items[::-1])[::-1]), torch.cat(batched)) <= 1e-5  # order does not matter


def test_rows_are_the_merger_then_the_deepstack_mergers(enc, items):
    item = items[2]
    grid = torch.tensor([item.meta["image_grid_thw"]])
    out = enc.model(hidden_states=item.feature, grid_thw=grid)
    got = enc([item])[0]
    parts = [out.pooler_output, *out.deepstack_features]
    assert len(parts) == 4
    for k, expected in enumerate(parts):
        assert rel(got[:, 96 * k: 96 * (k + 1)], expected) <= 1e-5


def test_vitkit_equals_stock(enc, items):
    stock = enc.variant(impl="stock")
    assert stock.model is enc.model
    for a, b in zip(enc(items), stock(items)):
        assert a.shape == b.shape and rel(a, b) <= 1e-5


def test_bucketed_equals_unbucketed(enc):
    sizes = [(64, 64), (96, 160), (288, 160), (32, 32), (200, 300), (160, 96)]
    items = synthetic_items(TINY, sizes, seed=4)
    eager = enc.variant(impl="vitkit-eager")
    assert eager.buckets is None and eager.model is enc.model
    bucketed, unbucketed = enc(items), eager(items)
    assert all(r.bucket is not None for r in enc.last_call)
    assert sum(r.padded_rows for r in enc.last_call) > 0  # padding was there and was cut
    for a, b in zip(bucketed, unbucketed):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_large_buckets_and_packs_no_bucket_holds_agree_with_eager():
    small = build_encoder(TINY, buckets=Buckets((16, 64), max_items=2, multiple=4, large=(128,)))
    items = synthetic_items(TINY, [(64, 64), (32, 32), (32, 64), (160, 160), (256, 256)], seed=6)
    out = small(items)
    buckets = sorted((r.bucket or 0) for r in small.last_call)
    assert buckets[0] == 0 and buckets[-1] == 128  # 256 patches: no bucket; 100 patches: the large one
    assert small.buffer("patches").shape[0] == 128  # buffers sized for the large bucket
    for a, b in zip(out, small.variant(impl="vitkit-eager")(items)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_video_over_the_largest_bucket_splits_into_frame_groups_row_for_row():
    # attention and learned positions stay within a temporal patch, so frame groups are exact here too
    enc = build_encoder(TINY, buckets=Buckets((16, 64, 128), max_items=8, multiple=4))
    gen = torch.Generator().manual_seed(2)
    t, h, w = 6, 4, 8
    video = MultimodalItem(torch.randn(t * h * w, 1536, generator=gen), t * h * w // 4, modality="video",
                           meta={"video_grid_thw": (t, h, w)})
    split = enc([video])[0]
    assert len(enc.last_call) == 2 and split.shape == (t * h * w // 4, enc.hidden_size)
    assert rel(split, enc.variant(impl="stock")([video])[0]) <= 1e-5


def test_padded_layout_splits_padding_into_short_sequences():
    model = build_encoder(TINY).model
    bucket = 1024
    grids = ((1, 4, 4), (1, 8, 6))
    indices, weights, positions, cu = padded_qwen3_layout(grids, bucket, model, max_items=4)
    real = 16 + 48
    assert indices.shape == (bucket, 4) and weights.shape == (bucket, 4) and positions.shape == (bucket, 2)
    assert cu.shape == (cu_capacity(4),) == (1 + 4 + PAD_SEQUENCES,) and cu.dtype == torch.int32
    lengths = torch.diff(cu).tolist()
    assert lengths[:2] == [16, 48]  # the images, whole
    assert lengths[2:] == [256, 256, 256, 960 - 3 * 256, 0, 0]  # padding in short sequences; two slots unused
    # all padding (warm-up): still at most PAD_SEQUENCES sequences, longer ones
    warm = padded_qwen3_layout((), 16384, model, max_items=4)[3]
    assert torch.diff(warm).tolist() == [4096] * 4 + [0] * 4 and PAD_SEQUENCE <= 4096
    assert cu[-1] == bucket and not weights[real:].any() and not positions[real:].any()
    layout = qwen3_layout(torch.tensor(grids), model)
    assert torch.equal(indices[:real], layout.interp_indices) and torch.equal(positions[:real], layout.position_ids)
    assert torch.allclose(weights[:real].sum(1), torch.ones(real))  # bilinear taps sum to one
    with pytest.raises(ValueError, match="3 sequences"):  # a video: one sequence per temporal patch
        padded_qwen3_layout(((3, 2, 2),), 16, model, max_items=2)


def test_cast_variant_and_checkpoint_roundtrip(tmp_path, enc, items):
    wide = enc.variant(dtype=torch.float64)
    assert wide.dtype == torch.float64 and wide.model is not enc.model
    for a, b in zip(enc(items[:3]), wide(items[:3])):
        assert rel(a, b) <= 1e-5
    enc.model.save_pretrained(tmp_path)
    loaded = build_encoder(TINY, checkpoint=tmp_path, seed=99)
    for a, b in zip(enc(items[:3]), loaded(items[:3])):
        assert torch.equal(a, b)


def test_wrong_items_raise_with_numbers(enc):
    with pytest.raises(ValueError, match="image_grid_thw"):
        enc([MultimodalItem(torch.zeros(16, 1536), 4)])
    with pytest.raises(ValueError, match=r"expected \(16, 1536\)"):
        enc([MultimodalItem(torch.zeros(16, 1176), 4, meta={"image_grid_thw": (1, 4, 4)})])
    with pytest.raises(ValueError, match="num_tokens=5"):
        enc([MultimodalItem(torch.zeros(16, 1536), 5, meta={"image_grid_thw": (1, 4, 4)})])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graphs_match_eager_and_bf16_batched_error_within_per_item_error():
    torch.backends.cuda.matmul.allow_tf32 = False
    items = make_items(load_images()[:6], "qwen3-vl-8b")
    ref_enc = build_encoder("qwen3-vl-8b", device="cuda", dtype=torch.float32, impl="stock")
    ref = torch.cat([ref_enc([item])[0] for item in items])
    enc = ref_enc.variant(impl="vitkit", dtype=torch.bfloat16)
    del ref_enc
    per_item = torch.cat([enc([item])[0] for item in items])
    batched = torch.cat(enc(items))
    assert enc.cuda_graphs and all(r.graphed for r in enc.last_call)
    eager = torch.cat(enc.variant(impl="vitkit-eager")(items))
    per_err, bat_err = rel(per_item, ref), rel(batched, ref)
    assert per_err < 0.1 and rel(eager, ref) < 0.1
    assert bat_err <= 1.5 * per_err
