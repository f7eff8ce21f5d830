"""The shared argument checks and the one definition of an embedding row's size."""

import pytest
import torch

from vitkit.cache import embedding_row_bytes
from vitkit.checks import non_negative_int, positive_int


@pytest.mark.parametrize("check, good, bad", [
    (positive_int, [1, 7, 2**40], [0, -1, 1.0, True, None, "3"]),
    (non_negative_int, [0, 1, 2**40], [-1, 0.0, False, None, "0"]),
])
def test_checks_return_good_values_and_name_bad_ones(check, good, bad):
    assert [check("n", v) for v in good] == good
    for value in bad:
        with pytest.raises(ValueError, match=rf"^request 'r': n must be a (positive|non-negative) int, got {value!r}$"):
            check("request 'r': n", value)


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2), (torch.float64, 8)])
def test_embedding_row_bytes_is_hidden_times_element_size(dtype, size):
    assert embedding_row_bytes(1024, dtype) == 1024 * size == torch.empty(1, 1024, dtype=dtype).nbytes
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        embedding_row_bytes(0, dtype)
