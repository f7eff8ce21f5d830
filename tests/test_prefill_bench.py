"""The prefill bench: FLOP formula against torch's counter, the grid, the CPU smoke run end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit.lm.decoder import QWEN2_5_VL_7B_TEXT, TINY_DECODER, PrefillDecoder, pack_kv, random_weights, step_layout
from vitkit.bench.prefill import TOKENS, grid_points, main
from vitkit.lm.flops import prefill_flops


@pytest.mark.parametrize("windows", [[(0, 7)], [(3, 5), (0, 4), (7, 2)], [(20, 1), (0, 1)]])
def test_flop_formula_matches_torch_flop_counter(windows):
    cfg = TINY_DECODER
    model = PrefillDecoder(cfg, random_weights(cfg))
    finishing = [i % 2 == 0 for i in range(len(windows))]
    layout = step_layout(windows, finishing=finishing)
    kv = pack_kv([None if c == 0 else (torch.randn(cfg.layers, c, cfg.kv_heads, cfg.head_dim),) * 2
                  for c, _ in windows], layout, cfg)
    ids = torch.randint(0, cfg.vocab, (layout.rows,))
    with FlopCounterMode(display=False) as counter:
        model.forward(ids, layout, kv)
    # The CPU reference computes every score of each window's (new x context + new) block, masked.
    dense = prefill_flops(cfg, windows, causal=False, logits_rows=sum(finishing))
    assert counter.get_total_flops() == dense.total


def test_causal_flops_halve_the_window_block_and_keep_the_context():
    cfg = QWEN2_5_VL_7B_TEXT
    one = prefill_flops(cfg, [(0, 2048)])
    dense = prefill_flops(cfg, [(0, 2048)], causal=False)
    assert one.gemm == dense.gemm and one.attention * 2 == dense.attention
    # 4 H h n (c + n/2) per layer
    with_ctx = prefill_flops(cfg, [(8192, 2048)])
    assert with_ctx.attention == 4 * 28 * 128 * 2048 * (8192 + 1024) * 28
    # about 2 x 6.5e9 non-embedding parameters per token
    assert 12.9e9 < one.gemm / 2048 < 13.2e9
    assert one.lm_head == 2 * 3584 * 152064


def test_grid_is_uniform_windows_plus_mixed_steps():
    points = grid_points()
    assert len(points) == len(TOKENS) * 4 * 3 + 2  # every token count divides by 1, 4 and 16
    for p in points:
        tokens = sum(n for _, n in p["step_windows"])
        assert len(p["step_windows"]) == p["windows"]
        if p["context"] is not None:
            assert all(c == p["context"] for c, _ in p["step_windows"]) and tokens in TOKENS


def test_smoke_run_writes_json_png_and_table(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path), "--warmup", "0", "--repeats", "1"]) == 0
    (path,) = tmp_path.glob("prefill-*.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "vitkit.prefill/1" and data["settings"]["decode"] == "not included"
    assert path.with_suffix(".png").stat().st_size > 0
    row = data["rows"][0]
    assert row["flops"] == prefill_flops(TINY_DECODER, [tuple(w) for w in row["step_windows"]]).total
    assert "MFU" in capsys.readouterr().out


def test_attention_check_runs_on_cpu_and_is_small_in_bf16():
    from vitkit.bench.prefill import attention_check

    assert attention_check(TINY_DECODER, "cpu", torch.float32) == 0.0
    assert 0.0 < attention_check(TINY_DECODER, "cpu", torch.bfloat16) < 2e-2
