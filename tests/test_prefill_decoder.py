"""The packed chunked prefill with a KV cache computes exactly what full causal attention does
(float64 on CPU, to 1e-10)."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.lm.decoder import (
    QWEN2_5_VL_7B_TEXT,
    TINY_DECODER,
    DecoderConfig,
    PrefillDecoder,
    check_windows,
    pack_kv,
    random_weights,
    step_layout,
)


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def reference_hidden(config: DecoderConfig, weights, token_ids: torch.Tensor) -> torch.Tensor:
    """One request's whole prompt at once, float32, written out from the Qwen2 equations
    (separate q/k/v, repeat_kv, a full causal mask): the last layer's hidden states (L, hidden)."""
    c, n = config, token_ids.shape[0]
    x = weights.embed[token_ids]
    pos = torch.arange(n, dtype=torch.float64)
    inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
    ang = torch.cat([pos[:, None] * inv[None]] * 2, dim=-1)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)

    def rope(t):  # (heads, n, dim)
        half = c.head_dim // 2
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for n1, qkv_w, qkv_b, o_w, n2, gu_w, down_w in weights.layers:
        h = _rms(x, n1, c.rms_eps)
        wq, wk, wv = qkv_w.split([c.q_width, c.kv_width, c.kv_width])
        bq, bk, bv = qkv_b.split([c.q_width, c.kv_width, c.kv_width])
        q = (h @ wq.T + bq).view(n, c.heads, c.head_dim).transpose(0, 1)
        k = (h @ wk.T + bk).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
        v = (h @ wv.T + bv).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
        group = c.heads // c.kv_heads
        k, v = rope(k).repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        s = (rope(q) @ k.transpose(1, 2)) / math.sqrt(c.head_dim)
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        x = x + a.transpose(0, 1).reshape(n, -1) @ o_w.T
        gate, up = (_rms(x, n2, c.rms_eps) @ gu_w.T).chunk(2, -1)
        x = x + (torch.nn.functional.silu(gate) * up) @ down_w.T
    return x


def chunked_prefill(model: PrefillDecoder, prompts: dict[str, torch.Tensor], steps: list[list[tuple[str, int]]]):
    """Run ``steps`` (each a list of (request, new tokens)) through the packed path, carrying each
    request's KV cache from step to step, on the prompts' device in the weights' dtype. Returns
    each request's hidden rows and the logits of its prompt's last token."""
    device, dtype = next(iter(prompts.values())).device, model.weights.embed.dtype
    kv_of: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {r: None for r in prompts}
    done = {r: 0 for r in prompts}
    hidden: dict[str, list[torch.Tensor]] = {r: [] for r in prompts}
    logits = {}
    for step in steps:
        finishing = [done[r] + n == len(prompts[r]) for r, n in step]
        layout = step_layout([(done[r], n) for r, n in step], finishing=finishing, device=device)
        kv = pack_kv([kv_of[r] for r, _ in step], layout, model.config, dtype=dtype)
        ids = torch.cat([prompts[r][done[r]:done[r] + n] for r, n in step])
        x, lg = model.forward(ids, layout, kv)
        bounds, kv_bounds = layout.cu_q.tolist(), layout.cu_k.tolist()
        for (r, n), a, b, ka, kb in zip(step, bounds, bounds[1:], kv_bounds, kv_bounds[1:]):
            hidden[r].append(x[a:b])
            kv_of[r] = (kv.k[:, ka:kb].clone(), kv.v[:, ka:kb].clone())
            done[r] += n
        logits |= dict(zip([r for (r, _), f in zip(step, finishing) if f], lg))
    return {r: torch.cat(h) for r, h in hidden.items()}, logits


def test_packed_chunked_prefill_matches_full_causal_reference():
    torch.manual_seed(0)
    cfg = TINY_DECODER
    # float64, so "equal" can mean 1e-10; std large enough that attention is far from uniform
    weights = random_weights(cfg, std=0.3, seed=1, dtype=torch.float64)
    prompts = {r: torch.randint(0, cfg.vocab, (n,)) for r, n in (("a", 13), ("b", 9), ("c", 4))}
    # windows of different sizes and contexts in one step; "c" joins late with no context
    steps = [[("a", 5), ("b", 4)], [("a", 6), ("b", 1), ("c", 4)], [("b", 4), ("a", 2)]]
    hidden, logits = chunked_prefill(PrefillDecoder(cfg, weights), prompts, steps)
    for r, ids in prompts.items():
        ref = reference_hidden(cfg, weights, ids)
        torch.testing.assert_close(hidden[r], ref, rtol=1e-10, atol=1e-10)
        ref_logits = _rms(ref[-1], weights.final_norm, cfg.rms_eps) @ weights.lm_head.T
        torch.testing.assert_close(logits[r], ref_logits, rtol=1e-10, atol=1e-10)


def test_a_wrong_mask_would_be_caught():
    # The reference must be sensitive to the context: dropping the KV cache changes the output.
    cfg = TINY_DECODER
    weights = random_weights(cfg, std=0.3, seed=1)
    ids = torch.randint(0, cfg.vocab, (8,))
    ref = reference_hidden(cfg, weights, ids)
    no_context = reference_hidden(cfg, weights, ids[4:])
    assert (ref[4:] - no_context).abs().max() > 1e-2


def test_qwen_text_config_numbers():
    c = QWEN2_5_VL_7B_TEXT
    assert (c.hidden, c.intermediate, c.layers, c.heads, c.kv_heads, c.head_dim) == (3584, 18944, 28, 28, 4, 128)
    assert (c.vocab, c.rope_theta, c.rms_eps, c.qkv_bias) == (152064, 1e6, 1e-6, True)
    assert c.heads * c.head_dim == c.hidden


@pytest.mark.parametrize(
    ("windows", "error", "match"),
    [
        ([], ValueError, "empty"),
        ([(0, 4), (-1, 3)], ValueError, r"window 1 \(-1, 3\)"),
        ([(0, 0)], ValueError, r"window 0 \(0, 0\)"),
        ([(0, 4), (2.0, 3)], TypeError, "window 1"),
        ([(0, 4, 1)], ValueError, "window 0"),
        ([(True, 4)], TypeError, "context_tokens"),
        ("ab", TypeError, "windows"),
    ],
)
def test_bad_windows_raise_naming_the_window(windows, error, match):
    with pytest.raises(error, match=match):
        check_windows(windows)


def test_layout_and_finishing_flags():
    layout = step_layout([(3, 2), (0, 4)], finishing=[False, True])
    assert layout.cu_q.tolist() == [0, 2, 6] and layout.cu_k.tolist() == [0, 5, 9]
    assert layout.slots.tolist() == [3, 4, 5, 6, 7, 8] and layout.positions.tolist() == [3, 4, 0, 1, 2, 3]
    assert layout.last_rows.tolist() == [5] and (layout.max_q, layout.max_k) == (4, 5)
    with pytest.raises(ValueError, match="finishing has 1 flags for 2 windows"):
        step_layout([(3, 2), (0, 4)], finishing=[True])


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_bf16_varlen_path_matches_float32_reference(compile):
    from vitkit.lm.decoder import DecoderWeights, uses_varlen_kernel

    torch.manual_seed(0)
    cfg = DecoderConfig(name="gpu-small", hidden=256, intermediate=512, layers=2, heads=8, kv_heads=2, head_dim=32,
                        vocab=300, rope_theta=1e6, rms_eps=1e-6)
    w = random_weights(cfg, std=0.05, seed=2)

    def convert(fn):
        return DecoderWeights(fn(w.embed), tuple(tuple(fn(t) for t in layer) for layer in w.layers),
                              fn(w.final_norm), fn(w.lm_head))

    gpu_w = convert(lambda t: t.to("cuda", torch.bfloat16))
    ref_w = convert(lambda t: t.to(torch.bfloat16).float())  # the same bf16 values, in float32
    prompts = {r: torch.randint(0, cfg.vocab, (n,)) for r, n in (("a", 300), ("b", 150), ("c", 64))}
    steps = [[("a", 128), ("b", 100)], [("a", 172), ("b", 50), ("c", 64)]]
    model = PrefillDecoder(cfg, gpu_w, compile=compile)
    assert uses_varlen_kernel(torch.empty(1, device="cuda", dtype=torch.bfloat16))
    hidden, _ = chunked_prefill(model, {r: p.cuda() for r, p in prompts.items()}, steps)
    for r, ids in prompts.items():
        ref = reference_hidden(cfg, ref_w, ids)
        err = ((hidden[r].float().cpu() - ref).norm() / ref.norm()).item()
        assert err < 2e-2, f"request {r}: relative error {err:.3g} (compile={compile})"


def test_compiled_layers_match_eager_and_share_one_graph_across_row_counts():
    # Compile in this process: a pool of compile workers left running slows later timing tests.
    with torch._inductor.config.patch(compile_threads=1):
        _compiled_layers_match_eager()


def _compiled_layers_match_eager():
    # One dynamic-rows graph per layer function serves every step size (a 1-row step compiles its own).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = TINY_DECODER
    weights = random_weights(cfg)
    compiled, eager = PrefillDecoder(cfg, weights, compile=True), PrefillDecoder(cfg, weights)
    for windows in ([(0, 40)], [(10, 6), (0, 9)], [(5, 17)]):
        layout = step_layout(windows)
        kv = [pack_kv([None if c == 0 else (torch.randn(cfg.layers, c, cfg.kv_heads, cfg.head_dim),) * 2
                       for c, _ in windows], layout, cfg)]
        kv.append(type(kv[0])(kv[0].k.clone(), kv[0].v.clone()))
        ids = torch.randint(0, cfg.vocab, (layout.rows,))
        (a, la), (b, lb) = compiled.forward(ids, layout, kv[0]), eager.forward(ids, layout, kv[1])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kv[0].k, kv[1].k, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2


def test_matches_transformers_qwen2_5_vl_text_model():
    # The same weights in transformers' own Qwen2.5-VL language model (eager attention, float32):
    # checks the layout conventions (q/k/v order, biases, gate before up, rotate-half rotary).
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from vitkit.lm.decoder import rms_norm

    c = TINY_DECODER
    hf_config = Qwen2_5_VLTextConfig(
        hidden_size=c.hidden, intermediate_size=c.intermediate, num_hidden_layers=c.layers,
        num_attention_heads=c.heads, num_key_value_heads=c.kv_heads, vocab_size=c.vocab, rms_norm_eps=c.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta, "mrope_section": [2, 3, 3]},
        bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    model = Qwen2_5_VLTextModel(hf_config).eval()
    w = random_weights(c, std=0.3, seed=1)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(w.embed)
        model.norm.weight.copy_(w.final_norm)
        for layer, (n1, qkv_w, qkv_b, o_w, n2, gu_w, down_w) in zip(model.layers, w.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for proj, weight, bias in zip((attn.q_proj, attn.k_proj, attn.v_proj),
                                          qkv_w.split([c.q_width, c.kv_width, c.kv_width]),
                                          qkv_b.split([c.q_width, c.kv_width, c.kv_width])):
                proj.weight.copy_(weight)
                proj.bias.copy_(bias)
            attn.o_proj.weight.copy_(o_w)
            gate, up = gu_w.chunk(2)
            mlp.gate_proj.weight.copy_(gate)
            mlp.up_proj.weight.copy_(up)
            mlp.down_proj.weight.copy_(down_w)
            layer.input_layernorm.weight.copy_(n1)
            layer.post_attention_layernorm.weight.copy_(n2)
        ids = torch.randint(0, c.vocab, (11,))
        expected = model(input_ids=ids[None]).last_hidden_state[0]
    # ours in two chunked steps through the KV cache
    hidden, _ = chunked_prefill(PrefillDecoder(c, w), {"r": ids}, [[("r", 6)], [("r", 5)]])
    torch.testing.assert_close(rms_norm(hidden["r"], w.final_norm, c.rms_eps), expected, rtol=1e-5, atol=1e-5)


def _padded_step(model: PrefillDecoder, windows, contexts, ids, buckets):
    """One step padded to its bucket as the runner pads it, through ``model``: hidden rows and
    logits of the real windows, and the KV cache."""
    from vitkit.lm.graphs import pad_to_bucket

    padded, finishing = pad_to_bucket(windows, None, buckets)
    layout = step_layout(padded, finishing=finishing)
    kv = pack_kv(list(contexts) + [None] * (len(padded) - len(windows)), layout, model.config, dtype=model.weights.embed.dtype)
    pad_ids = torch.zeros(layout.rows - ids.shape[0], dtype=ids.dtype)
    x, logits = model.forward(torch.cat([ids, pad_ids]), layout, kv)
    return layout, x, logits, kv


@pytest.mark.parametrize("windows", [[(0, 5)], [(7, 3), (0, 9)], [(4, 16)], [(2, 20), (11, 1), (0, 3)]])
def test_segmented_padded_step_computes_what_the_plain_step_does(windows):
    # The graphed runner's path (segments over static buffers, step padded with a window of its
    # own) must leave every real row, logit and cache row exactly as the plain forward has them.
    cfg = TINY_DECODER
    weights = random_weights(cfg, std=0.3, seed=3, dtype=torch.float64)
    buckets = (8, 16, 32)
    gen = torch.Generator().manual_seed(0)
    contexts = [None if c == 0 else (torch.randn(cfg.layers, c, cfg.kv_heads, cfg.head_dim, generator=gen, dtype=torch.float64),) * 2
                for c, _ in windows]
    rows = sum(n for _, n in windows)
    ids = torch.randint(0, cfg.vocab, (rows,), generator=gen)
    plain_layout = step_layout(windows)
    plain_kv = pack_kv(contexts, plain_layout, cfg, dtype=torch.float64)
    x, logits = PrefillDecoder(cfg, weights).forward(ids, plain_layout, plain_kv)
    segmented = PrefillDecoder(cfg, weights, graph_buckets=buckets)
    layout, px, plogits, pkv = _padded_step(segmented, windows, contexts, ids, buckets)
    assert layout.rows in buckets and layout.rows >= rows
    torch.testing.assert_close(px[:rows], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plogits, logits, rtol=1e-12, atol=1e-12)
    real_kv = plain_layout.kv_rows  # the padding window's cache rows come after every real window's
    torch.testing.assert_close(pkv.k[:, :real_kv], plain_kv.k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pkv.v[:, :real_kv], plain_kv.v, rtol=1e-12, atol=1e-12)
    # a second step of another size reuses the same buffers without stale rows leaking in
    layout2, px2, _, _ = _padded_step(segmented, [(0, 3)], [None], ids[:3], buckets)
    x2, _ = PrefillDecoder(cfg, weights).forward(ids[:3], step_layout([(0, 3)]), pack_kv([None], step_layout([(0, 3)]), cfg, dtype=torch.float64))
    torch.testing.assert_close(px2[:3], x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("windows, buckets, padded", [
    ([(0, 5)], (8, 16), [(0, 5), (0, 3)]),
    ([(3, 8)], (8, 16), [(3, 8)]),  # already a bucket: unchanged
    ([(0, 10), (4, 7)], (8, 16), [(0, 10), (4, 7)]),  # larger than every bucket: unchanged (ungraphed)
    ([(0, 10), (4, 2)], (8, 16), [(0, 10), (4, 2), (0, 4)]),
])
def test_pad_to_bucket_adds_one_non_finishing_window(windows, buckets, padded):
    from vitkit.lm.graphs import pad_to_bucket

    got, finishing = pad_to_bucket(windows, None, buckets)
    assert got == padded
    assert finishing == [True] * len(windows) + [False] * (len(padded) - len(windows))
    with pytest.raises(ValueError, match="finishing has 1 flags for 2 windows"):
        pad_to_bucket([(0, 1), (0, 2)], [True], buckets)


@pytest.mark.gpu
def test_graphed_prefill_matches_ungraphed_and_never_recaptures():
    from vitkit.bench.prefill import PrefillRunner

    cfg = DecoderConfig(name="gpu-small", hidden=256, intermediate=512, layers=3, heads=8, kv_heads=2, head_dim=32,
                        vocab=300, rope_theta=1e6, rms_eps=1e-6)
    buckets = (16, 64, 256)
    graphed = PrefillRunner(cfg, device="cuda", graph_buckets=buckets, seed=4)
    plain = PrefillRunner(cfg, device="cuda", graph_buckets=(), seed=4)
    graphed.warmup(progress=False)
    captures = graphed.model.segments.graphs.captures
    assert captures == len(buckets) * (cfg.layers + 1)
    gen = torch.Generator().manual_seed(5)
    for _ in range(12):  # steps of changing sizes and window counts, graphed and over the largest bucket
        windows = [(int(torch.randint(0, 300, (1,), generator=gen)), int(torch.randint(1, 90, (1,), generator=gen)))
                   for _ in range(int(torch.randint(1, 5, (1,), generator=gen)))]
        rows = sum(n for _, n in windows)
        ids = torch.randint(0, cfg.vocab, (rows,), generator=gen).cuda()
        out = []
        for runner in (graphed, plain):
            padded_ids, layout, kv = runner.prepare(windows)
            padded_ids[:rows] = ids
            kv.k.zero_()  # the same cache contents for both
            kv.v.zero_()
            x, logits = runner.model.forward(padded_ids, layout, kv)
            out.append((x[:rows].float(), logits.float()))
        (gx, gl), (px, pl) = out
        assert ((gx - px).norm() / px.norm()).item() < 2e-2, windows
        assert ((gl - pl).norm() / pl.norm()).item() < 2e-2, windows
    assert graphed.model.segments.graphs.captures == captures
