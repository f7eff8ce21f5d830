"""vitkit.encoders.staging: host features joined by one thread, staged through one pinned buffer."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from vitkit.encoders.staging import HostStaging, copy_parts, join_host, joined_shape

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def torch_join(parts, combine):
    return torch.stack(parts) if combine == "stack" else torch.cat(parts)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["stack", "cat"]), st.lists(st.integers(1, 7), min_size=1, max_size=6), st.integers(1, 5),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]))
def test_join_host_equals_torch_join(combine, rows, width, dtype):
    parts = [(torch.randn(r if combine == "cat" else rows[0], width) * 100).to(dtype) for r in rows]
    joined = join_host(parts, combine, pin=False)
    assert joined.dtype == dtype and torch.equal(joined, torch_join(parts, combine))


def test_copy_parts_writes_into_a_view_of_a_larger_buffer():
    parts = [torch.arange(6.0).view(2, 3), torch.arange(6.0, 15.0).view(3, 3)]
    buffer = torch.full((20,), -1.0)
    copy_parts(parts, buffer[:15].view(5, 3), "cat")
    assert buffer[:15].tolist() == list(range(15)) and buffer[15:].eq(-1).all()


def test_bad_parts_are_named():
    with pytest.raises(ValueError, match=r"part 1 is \(2, 4\) torch.float32.*cannot stack"):
        joined_shape([torch.zeros(3, 4), torch.zeros(2, 4)], "stack")
    with pytest.raises(ValueError, match=r"part 1 is \(2, 5\)"):
        joined_shape([torch.zeros(3, 4), torch.zeros(2, 5)], "cat")
    with pytest.raises(ValueError, match=r"part 1 .*torch.float64"):
        joined_shape([torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.float64)], "cat")
    with pytest.raises(ValueError, match="combine must be one of"):
        joined_shape([torch.zeros(1)], "concat")
    with pytest.raises(ValueError, match="no parts"):
        joined_shape([], "cat")


def test_staging_is_for_cuda_only():
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        HostStaging("cpu")


@needs_cuda
def test_staging_reuses_one_pinned_buffer_and_never_overwrites_a_pending_copy():
    staging = HostStaging("cuda")
    big = [torch.randn(4096, 1176) for _ in range(4)]
    out_big = staging.stage(big, "cat")
    buffer = staging.buffer
    assert buffer.is_pinned() and buffer.numel() == out_big.numel()
    # a long GPU queue in front of the next copy: the staging must wait before overwriting
    a = torch.randn(8192, 8192, device="cuda")
    for _ in range(20):
        a = a @ a / 8192
    small = [torch.randn(1024, 1176)]
    out_small = staging.stage(small, "cat")
    out_other = staging.stage([torch.randn(1024, 1176)], "cat")
    torch.cuda.synchronize()
    assert staging.buffer is buffer  # smaller calls reuse it
    assert torch.equal(out_big.cpu(), torch.cat(big)) and torch.equal(out_small.cpu(), small[0])
    assert not torch.equal(out_small.cpu(), out_other.cpu())
    larger = [torch.randn(20000, 1176)]
    assert torch.equal(staging.stage(larger, "cat").cpu(), larger[0]) and staging.buffer.numel() == larger[0].numel()
