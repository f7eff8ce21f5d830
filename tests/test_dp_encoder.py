"""DataParallelEncoder on CPU: 2 gloo processes give the single-process encoder's rows, in order."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vitkit.encoders import build_encoder
from vitkit.encoders.assignment import POLICIES
from vitkit.encoders.dp import GATHERS, DataParallelEncoder
from vitkit.item import MultimodalItem, move_items_to_device
from vitkit.processing import synthetic_items
from vitkit.sim.fake import FakeEncoder

TOWERS = ("clip-tiny", "qwen2.5-vl-tiny")
# Qwen tiny sizes: 4..16 rows each, so the policies split them differently.
SIZES = [(112, 112), (56, 56), (84, 56), (56, 112), (112, 84), (56, 56), (112, 112)]
TIMEOUT_S = 90


def _cases(items: list[MultimodalItem]) -> dict[str, list[int]]:
    """Item index lists to call with: all, fewer than ranks (one, zero), a reordered subset."""
    return {"all": list(range(len(items))), "one": [3], "zero": [], "reordered": [4, 0, 6, 1]}


def _worker(rank: int, world: int, init_file: str, backend: str = "gloo") -> None:
    """Every policy x gather x call shape on this rank, against the local encoder's own rows.
    gloo: float32 CPU, equal to 1e-5. nccl: bf16 on cuda:rank (impl vitkit-eager: no compile
    time), where a share batched apart from the rest may round differently: close to 2e-2."""
    gpu = backend == "nccl"
    if gpu:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    tol = dict(rtol=2e-2, atol=2e-2) if gpu else dict(rtol=1e-5, atol=1e-5)
    try:
        for name in TOWERS:
            # seed 0: the same weights on every rank
            encoder = (build_encoder(name, device=f"cuda:{rank}", dtype=torch.bfloat16, impl="vitkit-eager")
                       if gpu else build_encoder(name))
            items = synthetic_items(name, SIZES, seed=1)
            if gpu:
                move_items_to_device(items, f"cuda:{rank}")
            for policy in POLICIES:
                for gather in GATHERS:
                    dp = DataParallelEncoder(encoder, policy=policy, gather=gather, check_items=True, timed=True)
                    assert dp.world_size == world and dp.rank == rank
                    for case, index in _cases(items).items():
                        call = [items[i] for i in index]
                        got, want = dp(call), encoder(call)
                        where = f"{name} {policy} {gather} {case} rank {rank}"
                        assert len(got) == len(want), where
                        for k, (g, w) in enumerate(zip(got, want)):
                            assert g.shape == (call[k].num_tokens, encoder.hidden_size), where
                            torch.testing.assert_close(g, w, **tol, msg=f"{where} item {k}")
                    # one DPCall per non-empty call, each with the whole plan
                    assert len(dp.calls) == 3, (where, len(dp.calls))
                    assert all(t >= 0 for c in dp.calls for t in c.times_ms().values())
            plain = DataParallelEncoder(encoder)  # defaults, untimed: records nothing
            for g, w in zip(plain(items), encoder(items)):
                torch.testing.assert_close(g, w, **tol)
            assert plain.calls == [] and plain.policy == "token-balanced"
        if not gpu:
            _check_mismatch_raises(rank)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def _check_mismatch_raises(rank: int) -> None:
    """``check_items`` turns ranks called with different items into a ValueError, not a hang."""
    dp = DataParallelEncoder(FakeEncoder(hidden=8), device="cpu", check_items=True)
    items = [MultimodalItem(torch.full((2,), float(rank)), 3)]  # different content per rank
    try:
        dp(items)
    except ValueError as err:
        assert "different items" in str(err), err
    else:
        raise AssertionError("a call with different items per rank did not raise")


def _spawn(fn, world: int, tmp_path: Path, *args: object) -> None:
    """Run ``fn(rank, world, init_file, *args)`` in ``world`` processes; fail after TIMEOUT_S."""
    ctx = mp.spawn(fn, args=(world, str(tmp_path / "store"), *args), nprocs=world, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} gloo processes did not finish within {TIMEOUT_S} s")


def test_two_ranks_equal_single_process_for_every_policy_and_gather(tmp_path):
    """Also: fewer items than ranks (one, zero), and check_items catching different items."""
    _spawn(_worker, 2, tmp_path)


@pytest.mark.gpu
def test_two_gpus_with_nccl_match_the_single_gpu_encoder(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, torch sees {torch.cuda.device_count()}")
    _spawn(_worker, 2, tmp_path, "nccl")


def test_one_process_is_the_wrapped_encoder():
    encoder = build_encoder("clip-tiny")
    items = synthetic_items("clip-tiny", [(56, 56)] * 3, seed=2)
    dp = DataParallelEncoder(encoder, policy="round-robin", timed=True)
    assert (dp.rank, dp.world_size) == (0, 1)
    for got, want in zip(dp(items), encoder(items)):
        assert torch.equal(got, want)
    assert dp(()) == [] and dp.calls == []  # no collective, nothing to time
    assert dp.name == encoder.name and dp.hidden_size == encoder.hidden_size  # attributes pass through


def test_fake_encoder_needs_an_explicit_device():
    with pytest.raises(TypeError, match="device"):
        DataParallelEncoder(FakeEncoder(hidden=8))
    dp = DataParallelEncoder(FakeEncoder(hidden=8), device="cpu")
    assert dp.device == torch.device("cpu")


@pytest.mark.parametrize("kwargs, match", [(dict(policy="lpt"), "policy"), (dict(gather="reduce"), "gather")])
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataParallelEncoder(build_encoder("clip-tiny"), **kwargs)


def test_items_must_be_multimodal_items():
    dp = DataParallelEncoder(FakeEncoder(hidden=8), device="cpu")
    with pytest.raises(TypeError, match="item 1"):
        dp([MultimodalItem(torch.zeros(2), 1), "not an item"])
