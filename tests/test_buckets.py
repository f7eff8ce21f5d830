"""Token buckets: packing properties, padded == unpadded, no layout baked into a graph."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.encoders import FIXED_BUCKETS, QWEN_BUCKETS, Buckets, build_encoder, pack
from vitkit.encoders.buckets import padding_waste
from vitkit.encoders.qwen import padded_layout
from vitkit.processing import synthetic_items

bucket_sets = st.lists(st.integers(1, 64), min_size=1, max_size=8, unique=True).map(sorted).flatmap(
    lambda sizes: st.builds(Buckets, st.just(tuple(sizes)), st.integers(1, 8)))


@settings(max_examples=300, deadline=None)
@given(buckets=bucket_sets, sizes=st.lists(st.integers(1, 80), max_size=40))
def test_pack_encodes_every_item_once_within_the_largest_bucket(buckets, sizes):
    packs = pack(sizes, buckets)
    indices = [k for p in packs for k in p.indices]
    assert sorted(indices) == list(range(len(sizes)))  # every item exactly once: order is restorable
    for p in packs:
        assert p.size == sum(sizes[k] for k in p.indices)
        if p.bucket is None:  # only a lone item larger than every bucket runs unbucketed
            assert p.indices and len(p.indices) == 1 and p.size > buckets.largest
        else:
            assert len(p.indices) <= buckets.max_items
            assert p.size <= p.bucket <= buckets.largest
            assert p.bucket == min(s for s in buckets.sizes if s >= p.size)  # the smallest that fits
    real, pad = padding_waste([sizes], buckets)
    assert real == sum(sizes) and pad == sum(p.padding for p in packs) >= 0


@pytest.mark.parametrize("bad, match", [
    (dict(sizes=()), "sizes is empty"), (dict(sizes=(4, 2)), "strictly ascending"),
    (dict(sizes=(0, 2)), "size in .* must be a positive int"), (dict(sizes=(2, 4), max_items=0), "max_items"),
    (dict(sizes=(2, 6), multiple=4), "not a multiple of 4"),
])
def test_bad_buckets_raise_naming_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        Buckets(**({"max_items": 4} | bad))


def test_pack_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="item 1's size must be a positive int, got 0"):
        pack([3, 0], Buckets((4,), 2))


def test_default_buckets_are_padded_units_of_their_towers():
    assert QWEN_BUCKETS.largest == 16 * 1024 and all(s % 4 == 0 for s in QWEN_BUCKETS.sizes)
    assert FIXED_BUCKETS.largest == 64 and FIXED_BUCKETS.sizes[:4] == (1, 2, 3, 4)


def _qwen_items(sizes, seed=0):
    return synthetic_items("qwen2.5-vl-tiny", sizes, seed=seed)


@pytest.mark.parametrize("splits", [
    [(56, 56), (112, 112), (56, 112)],  # three images
    [(224, 84)],  # one image, windows at the edges
    [(56, 56)] * 6,  # many small images
])
def test_padded_qwen_equals_unpadded_in_float32(splits):
    enc = build_encoder("qwen2.5-vl-tiny")
    eager = enc.variant(impl="vitkit-eager")
    items = _qwen_items(splits)
    padded, plain = enc(items), eager(items)
    assert enc.last_call and all(r.bucket is not None for r in enc.last_call)
    assert sum(r.padded_rows for r in enc.last_call) > 0
    for a, b in zip(padded, plain):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_same_bucket_different_splits_are_each_exact():
    # Same total patches, same bucket, different images: the layout must come from the call.
    enc = build_encoder("qwen2.5-vl-tiny")
    eager = enc.variant(impl="vitkit-eager")
    layouts = [[(112, 112)], [(56, 112), (56, 112)], [(56, 56)] * 4]
    buckets = set()
    for k, sizes in enumerate(layouts):
        items = _qwen_items(sizes, seed=k)
        for a, b in zip(enc(items), eager(items)):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        buckets.add(enc.last_call[0].bucket)
    assert len(buckets) == 1


def test_padding_never_reaches_outputs_or_counts():
    enc = build_encoder("clip-tiny")
    items = synthetic_items("clip-tiny", [(56, 56)] * 5, seed=3)
    out = enc(items)
    (record,) = enc.last_call
    assert record.bucket == 8 and record.real_rows == 5 * 16 and record.padded_rows == 3 * 16
    assert [o.shape[0] for o in out] == [16] * 5
    assert enc.stats.real_rows == 80 and enc.stats.padded_rows == 48 and enc.stats.packs == 1


def test_items_larger_than_the_largest_bucket_still_encode_exactly():
    enc = build_encoder("qwen2.5-vl-tiny", buckets=Buckets((16, 32), max_items=4, multiple=4))
    eager = enc.variant(impl="vitkit-eager")
    items = _qwen_items([(56, 56), (112, 112), (56, 112)])  # 16, 64 (over 32) and 32 patches
    for a, b in zip(enc(items), eager(items)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert enc.stats.unbucketed == 1 and enc.stats.packs == 2
    assert enc.max_tokens_per_call == 32 // 4


def test_calls_split_over_max_items_restore_item_order():
    enc = build_encoder("clip-tiny", buckets=Buckets((1, 2), max_items=2))
    eager = enc.variant(impl="vitkit-eager")
    items = synthetic_items("clip-tiny", [(56, 56)] * 5, seed=9)
    for a, b in zip(enc(items), eager(items)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert [r.items for r in enc.last_call] == [2, 2, 1]


class _CountingGraphs:
    """Stands in for GraphCache off CUDA: records captures, runs the forward eagerly."""

    def __init__(self):
        self.keys, self.captures = set(), 0

    def __len__(self):
        return len(self.keys)

    def capture(self, key, fn, args):
        if key not in self.keys:
            self.keys.add(key)
            self.captures += 1

    def run(self, key, fn, args):
        self.capture(key, fn, args)
        return fn(*args)


def test_warmup_reports_the_captures_it_made_not_the_graphs_held(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    enc = build_encoder("clip-tiny", buckets=Buckets((1, 2, 4), max_items=4))
    enc.graphs = _CountingGraphs()
    enc(synthetic_items("clip-tiny", [(56, 56)] * 2, seed=1))  # a call captures bucket 2 first
    report = enc.warmup(progress=False)
    assert (report.buckets, report.captures, len(enc.graphs)) == (3, 2, 3)
    assert enc.warmup(progress=False).captures == 0


def test_padded_layout_marks_padding_as_its_own_sequences():
    enc = build_encoder("qwen2.5-vl-tiny")
    cfg = enc.model.config
    index, reverse, positions, cu_full, cu_window = padded_layout(((1, 4, 4), (1, 4, 8)), 64, cfg, 4, 40)
    assert cu_full.tolist() == [0, 16, 48, 64, 64, 64]  # two images, the padding, empty slots
    assert cu_window.tolist()[-1] == 64 and cu_window.shape[0] == 41
    assert index[12:].tolist() == list(range(12, 16)) and reverse[12:].tolist() == list(range(12, 16))
    assert positions.shape == (64, 2) and positions[48:].abs().sum() == 0
    windows = torch.diff(cu_window)
    assert windows.max() <= (cfg.window_size // cfg.patch_size) ** 2 and windows.min() >= 0


# --- GPU: the graphs take the layout as input; a warmed-up stream compiles and captures nothing ---
# bf16 towers of 32 random layers differ by ~2e-2 between any two kernel orders, so "equal to
# eager" is judged against a float32 reference: the bucketed graph's error may not exceed the
# eager path's by more than bf16 noise. Attending across images would add O(1) errors.

def _gpu_encoders(name):
    enc = build_encoder(name, device="cuda", dtype=torch.bfloat16)
    return enc, enc.variant(impl="vitkit-eager"), enc.variant(impl="vitkit-eager", dtype=torch.float32)


def _rel(out, ref):
    return max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(out, ref))


def _as_exact_as_eager(items, enc, eager, ref32):
    ref = ref32(items)
    err, eager_err = _rel(enc(items), ref), _rel(eager(items), ref)
    assert err <= 1.5 * eager_err + 1e-3, (err, eager_err)
    return err, eager_err


@pytest.mark.gpu
def test_gpu_same_bucket_different_splits_each_equal_eager():
    enc, eager, ref32 = _gpu_encoders("qwen2.5-vl-7b")
    enc.warmup(progress=False)
    # 4096 patches each: the 4096 bucket, split into 1, 2, 4 and 3 images.
    layouts = [[(896, 896)], [(448, 896), (896, 448)], [(448, 448)] * 4, [(448, 896), (448, 448), (448, 448)]]
    for k, sizes in enumerate(layouts):
        items = synthetic_items("qwen2.5-vl-7b", sizes, seed=k)
        _as_exact_as_eager(items, enc, eager, ref32)
        assert {r.bucket for r in enc.last_call} == {4096} and enc.stats.captures == 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["qwen2.5-vl-7b", "clip-l-336"])
def test_gpu_no_compile_or_capture_after_warmup_on_a_random_stream(name):
    enc, eager, ref32 = _gpu_encoders(name)
    report = enc.warmup(progress=False)
    assert report.captures == len(enc.buckets.sizes)
    assert enc.warmup(progress=False).captures == 0  # what this warm-up captured, not the graphs held
    rng = random.Random(0)
    before = enc.stats.copy()
    for step in range(12):
        n = rng.randint(1, 8 if name.startswith("qwen") else 40)
        sizes = [(rng.randint(224, 1344), rng.randint(224, 1344)) for _ in range(n)]
        items = synthetic_items(name, sizes, seed=100 + step)
        if step % 4 == 0:
            _as_exact_as_eager(items, enc, eager, ref32)
        else:
            enc(items)
    spent = enc.stats - before
    assert spent.compiles == 0 and spent.captures == 0 and spent.calls == 12


@pytest.mark.parametrize("name", ["clip-tiny", "qwen2.5-vl-tiny"])
def test_default_buckets_are_the_towers_own(name):
    from vitkit.encoders import default_buckets

    assert build_encoder(name).buckets == default_buckets(name)  # one definition, the tower class's
