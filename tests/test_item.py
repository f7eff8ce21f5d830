"""MultimodalItem: content hash, validation, device moves that keep the CPU feature."""

import hashlib
import re

import pytest
import torch

from vitkit import MultimodalItem, content_hash, move_items_to_device, offload_items


def _feature(seed=0, shape=(3, 8, 8), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(dtype)


def test_same_content_in_two_items_same_hash():
    a = MultimodalItem(_feature(1), num_tokens=4)
    b = MultimodalItem(_feature(1).clone(), num_tokens=4)
    assert a.hash == b.hash
    assert a != b  # items compare by identity; equal content is what the hash is for


def test_hash_is_a_128_bit_hex_string_and_deterministic():
    h = content_hash(_feature(2))
    assert isinstance(h, str) and len(h) == 32 and int(h, 16) >= 0
    assert content_hash(_feature(2)) == h


def test_different_content_different_hash():
    f = _feature(3)
    g = f.clone()
    g.view(-1)[17] += 1e-6  # one element, one ulp-ish change
    assert content_hash(f) != content_hash(g)


def test_dtype_changes_hash_even_with_same_bytes():
    f = torch.arange(16, dtype=torch.int32)
    as_float = f.view(torch.float32)  # the same bytes read as another dtype
    assert bytes(f.numpy().tobytes()) == bytes(as_float.numpy().tobytes())
    assert content_hash(f) != content_hash(as_float)


def test_shape_changes_hash_even_with_same_bytes():
    f = _feature(4, shape=(4, 6))
    assert content_hash(f) != content_hash(f.reshape(6, 4))
    assert content_hash(f) != content_hash(f.reshape(-1))


def test_meta_grid_changes_hash():
    f = _feature(5)
    plain = content_hash(f)
    grid_a = content_hash(f, {"image_grid_thw": torch.tensor([[1, 4, 4]])})
    grid_b = content_hash(f, {"image_grid_thw": torch.tensor([[1, 2, 8]])})
    grid_list = content_hash(f, {"image_grid_thw": (1, 4, 4)})
    assert len({plain, grid_a, grid_b, grid_list}) == 4
    assert content_hash(f, {"image_grid_thw": torch.tensor([[1, 4, 4]])}) == grid_a


def test_meta_key_order_does_not_matter():
    f = _feature(6)
    assert content_hash(f, {"a": 1, "b": 2}) == content_hash(f, {"b": 2, "a": 1})
    assert content_hash(f, {"a": 1, "b": 2}) != content_hash(f, {"a": 2, "b": 1})


def test_item_hash_uses_meta():
    f = _feature(7)
    a = MultimodalItem(f, 4, meta={"image_grid_thw": (1, 2, 2)})
    b = MultimodalItem(f, 4, meta={"image_grid_thw": (1, 1, 4)})
    assert a.hash != b.hash


def test_non_contiguous_feature_hashes_like_its_contiguous_copy():
    f = _feature(8, shape=(8, 8)).t()
    assert not f.is_contiguous()
    assert content_hash(f) == content_hash(f.contiguous())


def test_bfloat16_and_grad_features_hash():
    f = _feature(9).to(torch.bfloat16)
    assert content_hash(f) != content_hash(f.float())
    w = _feature(9).requires_grad_()
    assert content_hash(w) == content_hash(_feature(9))


def test_explicit_hash_is_kept():
    item = MultimodalItem(_feature(), 4, hash=hashlib.sha256(b"x").hexdigest())
    assert item.hash == hashlib.sha256(b"x").hexdigest()


def test_video_modality_accepted():
    assert MultimodalItem(_feature(), 2, modality="video").modality == "video"


def test_cpu_feature_is_the_feature_on_cpu():
    f = _feature()
    item = MultimodalItem(f, 4)
    assert item.cpu_feature is f


def test_device_move_keeps_cpu_feature_and_offload_reuses_it():
    # "meta" stands in for an accelerator: any copy back from it would fail.
    f = _feature()
    item = MultimodalItem(f, 4)
    h = item.hash
    assert item.to("meta") is item
    assert item.feature.device.type == "meta"
    assert item.cpu_feature is f
    item.offload()
    assert item.feature is f  # the same object: no device-to-host copy
    assert item.hash == h


def test_item_created_on_device_with_cpu_reference_hashes_the_cpu_copy():
    f = _feature(11)
    item = MultimodalItem(f.to("meta"), 4, cpu_feature=f)
    assert item.hash == content_hash(f)
    item.offload()
    assert item.feature is f


def test_move_and_offload_items_helpers():
    feats = [_feature(i) for i in range(3)]
    items = [MultimodalItem(f, 2) for f in feats]
    move_items_to_device(items, "meta")
    assert all(it.feature.device.type == "meta" for it in items)
    offload_items(items)
    assert all(it.feature is f for it, f in zip(items, feats))


def test_moving_twice_keeps_the_original_cpu_feature():
    f = _feature(12)
    item = MultimodalItem(f, 4).to("meta").to("meta")
    assert item.cpu_feature is f
    assert item.offload().feature is f


def test_offload_without_cpu_reference_copies_back():
    item = MultimodalItem(_feature(13), 4)
    item.cpu_feature = None  # as if the item had been built on the device without one
    item.offload()
    assert item.feature.device.type == "cpu" and item.cpu_feature is item.feature


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_move_keeps_cpu_feature_and_hash():
    f = _feature(14)
    item = MultimodalItem(f, 4)
    h = item.hash
    item.to("cuda")
    assert item.feature.is_cuda and item.cpu_feature is f
    assert MultimodalItem(item.feature, 4).hash == h  # hashing a GPU feature gives the same hash
    assert item.offload().feature is f


def test_meta_arrays_and_nested_tensors_hash_by_content_not_repr():
    # regression: meta values were hashed by repr, which elides long arrays ("...") and rounds
    # floats, so different grids could share a hash and be served each other's embedding
    import numpy as np

    f = _feature(15)
    long_a = np.arange(5000)
    long_b = long_a.copy()
    long_b[2500] = -1
    assert content_hash(f, {"g": long_a}) != content_hash(f, {"g": long_b})
    assert content_hash(f, {"s": np.array([0.1234567891])}) != content_hash(f, {"s": np.array([0.1234567892])})
    assert content_hash(f, {"s": [torch.tensor(0.123451)]}) != content_hash(f, {"s": [torch.tensor(0.123452)]})
    assert content_hash(f, {"s": {"x": torch.tensor(0.123451)}}) != content_hash(f, {"s": {"x": torch.tensor(0.123452)}})
    assert content_hash(f, {"g": (1, 2, 3)}) != content_hash(f, {"g": [1, 2, 3]})
    assert content_hash(f, {"g": ((1, 2), 3)}) != content_hash(f, {"g": (1, (2, 3))})
    assert content_hash(f, {"g": np.arange(6)}) == content_hash(f, {"g": np.arange(6)})
    assert content_hash(f, {"g": np.arange(6)[::2]}) == content_hash(f, {"g": np.array([0, 2, 4])})


def test_to_cpu_reuses_the_kept_cpu_feature():
    # regression: item.to("cpu") copied the device tensor back although the CPU copy was kept
    f = _feature(16)
    item = MultimodalItem(f, 4).to("meta")
    assert item.to("cpu") is item
    assert item.feature is f and item.cpu_feature is f
    assert MultimodalItem(f, 4).to("cpu").feature is f  # already on the host: unchanged


BAD_ITEMS = [  # (constructor arguments, error, message)
    *[({"num_tokens": bad}, ValueError, f"num_tokens must be a positive int, got {bad!r}") for bad in (0, -3, 2.0, True, "4")],
    ({"feature": [1.0, 2.0]}, TypeError, "feature must be a torch.Tensor, got list"),
    ({"modality": "audio"}, ValueError, "modality must be one of .* got 'audio'"),
    # the cache is keyed by str and error messages print hash[:12]
    *[({"hash": bad}, TypeError, f"hash must be a non-empty str .* got {bad!r}") for bad in (123, b"ab", "")],
    # regression: a list/tuple/str meta died in the hash with a bare IndexError/TypeError
    *[({"meta": bad}, TypeError, "MultimodalItem meta must be a mapping .*" + re.escape(f"got {bad!r}"))
      for bad in ([1, 2], (1, 16, 16), "grid")],
]


@pytest.mark.parametrize("arguments, error, message", BAD_ITEMS, ids=[repr(a) for a, _, _ in BAD_ITEMS])
def test_bad_items_name_the_field_and_value(arguments, error, message):
    with pytest.raises(error, match=message):
        MultimodalItem(**{"feature": _feature(), "num_tokens": 4} | arguments)


# --- videos: grid checks and frame groups (the encoder and request tests are in test_video.py) -----------

def _video(t=5, h=2, w=4, seed=20):
    return MultimodalItem(_feature(seed, shape=(t * h * w, 6)), t * h * w // 4, modality="video",
                          meta={"video_grid_thw": (t, h, w), "fps": 2})


def test_video_grid_reads_and_checks_the_meta():
    from vitkit import video_grid

    assert video_grid(_video()) == (5, 2, 4)
    tensor_grid = MultimodalItem(_feature(20, shape=(40, 6)), 10, modality="video",
                                 meta={"video_grid_thw": torch.tensor([[5, 2, 4]])})
    assert video_grid(tensor_grid) == (5, 2, 4)
    odd_tokens = MultimodalItem(_feature(20, shape=(40, 6)), 7, modality="video", meta={"video_grid_thw": (5, 2, 4)})
    with pytest.raises(ValueError, match="num_tokens=7 is not a whole number per temporal patch"):
        video_grid(odd_tokens)


def test_frame_groups_keep_other_meta_and_hash_like_items_made_from_their_slices():
    from vitkit import frame_groups

    video = _video()
    groups = frame_groups(video, 2)
    assert [g.meta for g in groups] == [{"video_grid_thw": (n, 2, 4), "fps": 2} for n in (2, 2, 1)]
    made = MultimodalItem(video.feature[16:32].clone(), 4, modality="video",
                          meta={"video_grid_thw": (2, 2, 4), "fps": 2})
    assert groups[1].hash == made.hash


def test_frame_groups_of_a_device_item_slice_its_cpu_feature_too():
    # "meta" stands in for an accelerator: the groups hash their CPU slices, no device-to-host copy
    from vitkit import frame_groups

    video = _video(seed=21)
    on_host = frame_groups(video, 2)
    video.to("meta")
    groups = frame_groups(video, 2)
    assert all(g.feature.device.type == "meta" and g.cpu_feature.device.type == "cpu" for g in groups)
    assert [g.hash for g in groups] == [g.hash for g in on_host]
    assert groups[2].offload().feature.data_ptr() == video.cpu_feature[32:].data_ptr()
