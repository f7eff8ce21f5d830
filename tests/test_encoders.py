"""vitkit.encoders: presets from published configs, batched == per-item, stock == vitkit, rows, errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import socket

import pytest
import torch
from hypothesis import given, settings, strategies as st

from vitkit.encoders import PRESETS, build_encoder, count_parameters, get_preset
from vitkit.encoders import attention as attention_mod
from vitkit.encoders.attention import packed_attention
from vitkit.encoders.qwen import packed_layout
from vitkit.images import load_images
from vitkit.item import MultimodalItem
from vitkit.processing import make_items, synthetic_items

TINY = ["clip-tiny", "siglip-tiny", "qwen2.5-vl-tiny"]
FULL = ["clip-l-336", "siglip-so400m-384", "qwen2.5-vl-7b"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def images():
    return load_images()


@pytest.fixture(scope="module")
def encoders():
    return {name: build_encoder(name, seed=0) for name in TINY}


@pytest.fixture(scope="module")
def real_items(images):
    return {name: make_items(images, name) for name in TINY}


# --- presets: the published shapes ---------------------------------------------------------------

def clip_params(d, inter, layers, patch, side, bias_patch=False):
    """Independent count for a CLIP vision tower (class token, pre/post LayerNorm)."""
    n_pos = (side // patch) ** 2 + 1
    embed = 3 * patch * patch * d + d + n_pos * d
    layer = 4 * (d * d + d) + 2 * 2 * d + (d * inter + inter) + (inter * d + d)
    return embed + 2 * d + layers * layer + 2 * d


def siglip_params(d, inter, layers, patch, side):
    n_pos = (side // patch) ** 2
    embed = 3 * patch * patch * d + d + n_pos * d  # patch conv has a bias in SigLIP
    layer = 4 * (d * d + d) + 2 * 2 * d + (d * inter + inter) + (inter * d + d)
    return embed + layers * layer + 2 * d


def qwen_params(d, inter, depth, out, merge=2):
    patch = 3 * 2 * 14 * 14 * d
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * inter + inter) + (inter * d + d)
    wide = d * merge * merge
    merger = d + (wide * wide + wide) + (wide * out + out)
    return patch + depth * block + merger


@pytest.mark.parametrize("name, expected, published_m", [
    ("clip-l-336", clip_params(1024, 4096, 24, 14, 336), 304),       # CLIP ViT-L/14 vision tower: ~304 M
    ("siglip-so400m-384", siglip_params(1152, 4304, 27, 14, 384), 413),  # so400m without its pooling head
    ("qwen2.5-vl-7b", qwen_params(1280, 3420, 32, 3584), 676),       # Qwen2.5-VL-7B "visual": ~676 M
])
def test_full_presets_build_with_published_shapes(name, expected, published_m):
    enc = build_encoder(name, device="meta")
    assert count_parameters(enc) == expected
    assert abs(expected / 1e6 - published_m) < 1.0
    assert enc.device.type == "meta"


def test_full_preset_config_values():
    clip, siglip, qwen = (build_encoder(n, device="meta") for n in FULL)
    assert (clip.config.hidden_size, clip.config.num_hidden_layers, clip.config.image_size, clip.patch_size) == (1024, 24, 336, 14)
    assert clip.hidden_size == 1024 and not clip.variable_resolution
    assert PRESETS["clip-l-336"].fixed_num_tokens == 576
    assert clip.num_layers == 23  # penultimate layer: the last is never run
    assert (siglip.config.hidden_size, siglip.config.intermediate_size, siglip.config.num_hidden_layers) == (1152, 4304, 27)
    assert PRESETS["siglip-so400m-384"].fixed_num_tokens == 729 and siglip.hidden_size == 1152
    assert not hasattr(siglip.model, "head")
    q = qwen.config
    assert (q.depth, q.hidden_size, q.num_heads, q.intermediate_size, q.out_hidden_size) == (32, 1280, 16, 3420, 3584)
    assert (q.window_size, list(q.fullatt_block_indexes), q.patch_size, q.spatial_merge_size, q.temporal_patch_size) == (
        112, [7, 15, 23, 31], 14, 2, 2)
    assert qwen.hidden_size == 3584 and qwen.variable_resolution


def test_unknown_preset_and_impl_raise():
    with pytest.raises(ValueError, match="unknown encoder preset"):
        get_preset("clip-huge")
    with pytest.raises(ValueError, match="impl must be one of"):
        build_encoder("clip-tiny", impl="fast")


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_encoder("clip-tiny", seed=7)
    after = torch.rand(1)
    b = build_encoder("clip-tiny", seed=7)
    c = build_encoder("clip-tiny", seed=8)
    assert torch.equal(after, expected_next)
    wa, wb, wc = (next(e.model.parameters()) for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# --- correctness: batched == per-item, vitkit == stock ---------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_batched_equals_per_item(name, encoders, real_items):
    enc, items = encoders[name], real_items[name]
    batched = enc(items)
    assert len(batched) == len(items)
    for item, out in zip(items, batched):
        alone = enc([item])[0]
        assert out.shape == (item.num_tokens, enc.hidden_size)
        assert rel(out, alone) <= 1e-5


@pytest.mark.parametrize("name", TINY)
def test_vitkit_equals_stock(name, encoders, real_items):
    enc, items = encoders[name], real_items[name]
    stock = enc.variant(impl="stock")
    assert stock.model is enc.model  # same parameters, not a copy
    for a, b in zip(enc(items), stock(items)):
        assert a.shape == b.shape
        assert rel(a, b) <= 1e-5


def test_clip_rows_are_penultimate_layer_without_class_token(encoders, real_items):
    enc, item = encoders["clip-tiny"], real_items["clip-tiny"][0]
    hidden = enc.model(pixel_values=item.feature[None], output_hidden_states=True).hidden_states
    expected = hidden[-2][0, 1:]
    assert torch.allclose(enc([item])[0], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(enc([item])[0], hidden[-1][0, 1:], atol=1e-3)


def test_siglip_rows_are_last_hidden_state(encoders, real_items):
    enc, item = encoders["siglip-tiny"], real_items["siglip-tiny"][0]
    expected = enc.model(pixel_values=item.feature[None]).last_hidden_state[0]
    # Fused QKV and residual-in-GEMM reorder float32 sums: compare as a relative error.
    got = enc([item])[0]
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5


def test_qwen_rows_are_merger_output_and_order_independent(encoders):
    enc = encoders["qwen2.5-vl-tiny"]
    items = synthetic_items("qwen2.5-vl-tiny", [(56, 56), (224, 112), (112, 336), (168, 168)], seed=3)
    forward = enc(items)
    backward = enc(items[::-1])[::-1]
    for item, a, b in zip(items, forward, backward):
        t, h, w = item.meta["image_grid_thw"]
        assert a.shape == (t * h * w // 4, 96) == (item.num_tokens, enc.hidden_size)
        assert rel(a, b) <= 1e-5
    grid = torch.tensor([items[1].meta["image_grid_thw"]])
    expected = enc.model(hidden_states=items[1].feature, grid_thw=grid).pooler_output
    assert rel(forward[1], expected) <= 1e-5


def test_qwen_layout_matches_model_windows():
    cfg = build_encoder("qwen2.5-vl-7b", device="meta").config
    layout = packed_layout(torch.tensor([[1, 32, 32], [1, 16, 48]]), cfg)
    # Windows of 112 px = 8x8 patches: 448x448 (32x32 patches) has 4x4 of them, 224x672 has 2x6.
    # Full attention spans each image.
    assert layout.cu_seqlens.tolist() == [0, 1024, 1792]
    assert torch.diff(layout.cu_window_seqlens).tolist() == [64] * (16 + 12)
    assert layout.max_seqlen == 1024 and layout.max_window_seqlen == 64
    assert sorted(layout.window_index.tolist()) == list(range(1792 // 4))


def test_features_come_from_cpu_copy_when_not_on_device(encoders):
    enc = encoders["clip-tiny"]
    item = synthetic_items("clip-tiny", [(10, 10)], seed=5)[0]
    expected = enc([item])[0]
    item.feature = torch.empty(item.feature.shape, device="meta")  # "on another device"
    assert torch.equal(enc([item])[0], expected)


def test_empty_batch_returns_empty_list(encoders):
    assert encoders["qwen2.5-vl-tiny"]([]) == []


# --- bad input ---------------------------------------------------------------------------------------

def test_wrong_inputs_raise_with_numbers(encoders):
    clip, qwen = encoders["clip-tiny"], encoders["qwen2.5-vl-tiny"]
    with pytest.raises(ValueError, match=r"feature shape \(3, 40, 40\)"):
        clip([MultimodalItem(torch.zeros(3, 40, 40), 16)])
    with pytest.raises(ValueError, match="num_tokens=9"):
        clip([MultimodalItem(torch.zeros(3, 56, 56), 9)])
    with pytest.raises(TypeError, match="not a MultimodalItem"):
        clip([torch.zeros(3, 56, 56)])
    with pytest.raises(ValueError, match="image_grid_thw"):
        qwen([MultimodalItem(torch.zeros(16, 1176), 4)])
    with pytest.raises(ValueError, match="num_tokens=5"):
        qwen([MultimodalItem(torch.zeros(16, 1176), 5, meta={"image_grid_thw": (1, 4, 4)})])
    with pytest.raises(ValueError, match=r"expected \(16, 1176\)"):
        qwen([MultimodalItem(torch.zeros(12, 1176), 4, meta={"image_grid_thw": (1, 4, 4)})])


# --- packed attention --------------------------------------------------------------------------------

def naive_packed(q, k, v, lengths):
    outs, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        w = torch.softmax(torch.einsum("qhd,khd->hqk", q[s], k[s]) / q.shape[-1] ** 0.5, dim=-1)
        outs.append(torch.einsum("hqk,khd->qhd", w, v[s]))
        start += n
    return torch.cat(outs)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6), use_mask=st.booleans())
def test_packed_attention_respects_boundaries(lengths, use_mask):
    gen = torch.Generator().manual_seed(sum(lengths))
    rows = sum(lengths)
    q, k, v = (torch.randn(rows, 2, 8, generator=gen) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    old = attention_mod.MASK_MAX_ROWS
    attention_mod.MASK_MAX_ROWS = 10**6 if use_mask else 0
    try:
        out = packed_attention(q, k, v, cu, max(lengths))
    finally:
        attention_mod.MASK_MAX_ROWS = old
    assert torch.allclose(out, naive_packed(q, k, v, lengths), atol=1e-5)


# --- checkpoints (local directories only) ------------------------------------------------------------

def test_checkpoint_of_tower_alone_roundtrips(tmp_path, encoders, real_items):
    enc = encoders["qwen2.5-vl-tiny"]
    enc.model.save_pretrained(tmp_path)
    loaded = build_encoder("qwen2.5-vl-tiny", checkpoint=tmp_path, seed=99)
    items = real_items["qwen2.5-vl-tiny"][:3]
    for a, b in zip(enc(items), loaded(items)):
        assert torch.equal(a, b)


def test_checkpoint_of_whole_model_takes_tower_weights(tmp_path, encoders, real_items):
    from safetensors.torch import save_file

    enc = encoders["clip-tiny"]
    state = {f"model.vision_model.{k}": v.contiguous() for k, v in enc.model.state_dict().items()}
    state["model.language_model.embed.weight"] = torch.zeros(4, 4)
    save_file(state, tmp_path / "model.safetensors")
    config = {"model_type": "llava", "vision_config": enc.config.to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = build_encoder("clip-tiny", checkpoint=tmp_path, seed=99)
    item = real_items["clip-tiny"][0]
    assert torch.equal(enc([item])[0], loaded([item])[0])


def test_checkpoint_that_disagrees_with_preset_raises(tmp_path):
    build_encoder("siglip-tiny").model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size"):
        build_encoder("clip-tiny", checkpoint=tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        build_encoder("clip-tiny", checkpoint=tmp_path / "missing")


def test_building_and_processing_never_touch_the_network(monkeypatch, images):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in TINY:
        enc = build_encoder(name)
        assert len(enc(make_items(images[:2], name))) == 2


# --- GPU: bf16 batched error no worse than bf16 per-item error ---------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", FULL)
def test_gpu_bf16_batched_error_within_per_item_error(name, images):
    torch.backends.cuda.matmul.allow_tf32 = False
    items = make_items(images[:6], name)
    ref_enc = build_encoder(name, device="cuda", dtype=torch.float32, impl="stock")
    ref = torch.cat([ref_enc([item])[0] for item in items])
    enc = ref_enc.variant(dtype=torch.bfloat16)
    del ref_enc
    per_item = torch.cat([enc([item])[0] for item in items])
    batched = torch.cat(enc(items))
    per_err, bat_err = rel(per_item, ref), rel(batched, ref)
    assert per_err < 0.1
    assert bat_err <= 1.5 * per_err


def test_checkpoint_missing_weights_raise_instead_of_random_init(tmp_path, encoders):
    from safetensors.torch import load_file, save_file

    encoders["siglip-tiny"].model.save_pretrained(tmp_path)
    (shard,) = tmp_path.glob("*.safetensors")
    state = load_file(shard)
    dropped = next(k for k in state if "layer_norm1.weight" in k)
    del state[dropped]
    save_file(state, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing or mismatched"):
        build_encoder("siglip-tiny", checkpoint=tmp_path)


@pytest.mark.parametrize("side", [56, 62, 384])
def test_patch_embed_gemm_matches_the_convolution_even_with_leftover_pixels(side):
    # SigLIP-384/14: 384 = 27 * 14 + 6, the convolution ignores the last 6 pixels of each side.
    from vitkit.encoders.fused import patch_embed_gemm

    conv = torch.nn.Conv2d(3, 16, kernel_size=14, stride=14, bias=True)
    pixels = torch.randn(2, 3, side, side)
    expected = conv(pixels).flatten(2).transpose(1, 2)
    got = patch_embed_gemm(pixels, conv.weight, conv.bias)
    assert got.shape == expected.shape == (2, (side // 14) ** 2, 16)
    assert torch.allclose(got, expected, atol=1e-5)


def test_impl_is_the_one_switch():
    enc = build_encoder("clip-tiny")
    assert not enc.compiled and not enc.cuda_graphs and enc.graphs is None  # off CUDA: never compiled
    assert enc.buckets is not None  # but padded to buckets, so the padded path is testable here
    eager = enc.variant(impl="vitkit-eager")
    assert eager.buckets is None and eager.graphs is None and eager.max_tokens_per_call is None
    with pytest.raises(TypeError):
        build_encoder("clip-tiny", compile=False)  # the old second switch is gone


def test_vitkit_eager_is_the_same_function_as_vitkit(encoders, real_items):
    enc = encoders["qwen2.5-vl-tiny"]
    items = synthetic_items("qwen2.5-vl-tiny", [(56, 84), (112, 112)], seed=5)
    eager = enc.variant(impl="vitkit-eager")
    assert eager.model is enc.model  # same weights, fused once
    for a, b in zip(enc(items), eager(items)):  # vitkit pads to a bucket: float32 rounding only
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fusing_keeps_the_transformers_model_working_outside_inference_mode(encoders):
    # The fused QKV buffer backs the modules' parameters; the stock forward must still run with
    # autograd enabled (fusing under a caller's inference_mode would make that fail).
    enc = encoders["clip-tiny"]
    with torch.inference_mode():
        enc.variant(impl="vitkit")
    pixels = torch.randn(1, 3, 56, 56)
    out = enc.model(pixel_values=pixels).last_hidden_state
    assert out.shape[0] == 1 and torch.isfinite(out).all()


def test_residual_linear_accumulates_in_place_and_matches_addmm():
    from vitkit.encoders.fused import addmm_into, residual_addmm, residual_linear

    x, a, w, b = torch.randn(6, 8), torch.randn(6, 4), torch.randn(8, 4), torch.randn(8)
    expected = residual_addmm(x, a, w, b)
    assert torch.allclose(residual_linear(x, a, w, b), expected, atol=1e-6)
    out = x.clone()
    before = out.data_ptr()
    addmm_into(out, a, w.t())
    assert out.data_ptr() == before and torch.allclose(out, x + a @ w.t(), atol=1e-6)
