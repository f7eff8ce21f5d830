"""Cost model: fitted to a small synthetic bench results file (schema vitkit.bench/1)."""

import json
import math

import pytest
import torch

from vitkit.sim.costmodel import CallCost, ModelledEncoder, fit_call_cost, fit_cost_model, fit_cost_models, load_results
from vitkit.sim.fake import FakeEncoder, fake_item
from vitkit.sim.run import prepare, simulate

INTERCEPT_MS, MS_PER_TOKEN = 1.5, 0.004  # the "H100" line the synthetic file is drawn from


def row(encoder, mode, requests, images_per_request, tokens_per_image, ms_per_call, impl="vitkit"):
    images = requests * images_per_request
    calls = requests if mode == "per_request" else 1
    tokens = images * tokens_per_image
    ms = calls * ms_per_call(tokens / calls)
    return {
        "encoder": encoder, "mode": mode, "impl": impl, "requests": requests,
        "images_per_request": images_per_request, "images": images, "resolution": 448,
        "tokens": tokens, "encoder_calls": calls, "step_ms_median": ms + 0.2, "step_ms_p10": ms,
        "step_ms_p90": ms + 0.5, "encoder_ms_median": ms, "bookkeeping_ms_median": 0.2,
        "images_per_s": images / ms * 1e3, "tokens_per_s": tokens / ms * 1e3, "peak_mem_bytes": None,
        "model_flops": 0, "mfu": 0.0, "sweep": "synthetic",
    }


def results_file(tmp_path, rows):
    data = {"schema": "vitkit.bench/1", "kind": "gpu", "machine": {"device_name": "NVIDIA H100 80GB HBM3"},
            "versions": {}, "settings": {}, "rows": rows}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def exact(tokens):
    return INTERCEPT_MS + MS_PER_TOKEN * tokens


def noisy(tokens):
    return 3.0 + 0.01 * tokens + (0.3 if int(tokens) % 2 else -0.3)


@pytest.fixture
def h100_file(tmp_path):
    rows = []
    for mode in ("batched", "per_request"):
        for requests in (1, 4, 16):
            for per in (1, 3):
                rows.append(row("qwen2.5-vl-7b", mode, requests, per, 256, exact))
                rows.append(row("clip-l-336", mode, requests, per, 577, noisy))
    rows.append(row("clip-l-336", "batched", 4, 1, 577, noisy, impl="stock"))
    rows.append(row("clip-l-336", "batched", 8, 1, 577, noisy, impl="stock"))
    return results_file(tmp_path, rows)


def test_fit_recovers_the_line(h100_file):
    cost = fit_cost_model(h100_file, "qwen2.5-vl-7b")
    assert cost.intercept_ms == pytest.approx(INTERCEPT_MS)
    assert cost.ms_per_token == pytest.approx(MS_PER_TOKEN)
    assert cost.r2 == pytest.approx(1.0)
    assert cost.points == 12
    assert cost.call_ms(1000) == pytest.approx(INTERCEPT_MS + 1000 * MS_PER_TOKEN)
    assert "H100" in cost.source


def test_fit_per_encoder_and_impl(h100_file):
    models = fit_cost_models(h100_file)
    assert set(models) == {("qwen2.5-vl-7b", "vitkit"), ("clip-l-336", "vitkit"), ("clip-l-336", "stock")}
    clip = models[("clip-l-336", "vitkit")]
    assert 0.9 < clip.r2 < 1.0  # noisy rows: a real fit, not an exact one
    assert clip.ms_per_token == pytest.approx(0.01, rel=0.05)
    only_batched = fit_cost_models(h100_file, modes=["batched"])[("qwen2.5-vl-7b", "vitkit")]
    assert only_batched.points == 6


def test_bad_results_files(tmp_path, h100_file):
    with pytest.raises(ValueError, match="no rows for encoder 'siglip-so400m-384'"):
        fit_cost_model(h100_file, "siglip-so400m-384")
    bad = results_file(tmp_path, [{"encoder": "x", "mode": "batched"}])
    with pytest.raises(ValueError, match=r"row 0 lacks field\(s\)"):
        load_results(bad)
    one_size = results_file(tmp_path, [row("x", "batched", 2, 1, 100, exact), row("x", "batched", 2, 1, 100, exact)])
    with pytest.raises(ValueError, match="need 2"):
        fit_cost_models(one_size)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"schema": "other", "rows": []}))
    with pytest.raises(ValueError, match="'schema'"):
        load_results(wrong)


def test_modelled_encoder_reports_modelled_time_and_fake_embeddings():
    cost = CallCost("qwen", "vitkit", INTERCEPT_MS, MS_PER_TOKEN, 2, 1.0)
    encoder = ModelledEncoder(cost, hidden=8)
    items = [fake_item("a", 448, 448), fake_item("b", 896, 448)]
    out = encoder(items)
    encoder(items[:1])
    spent = encoder.take_time()
    assert spent.reported_ms == pytest.approx(exact(256 + 512) + exact(256))
    assert spent.measured_ms >= 0.0
    assert encoder.take_time().reported_ms == 0.0  # taking resets
    reference = FakeEncoder(hidden=8)(items)
    assert all(torch.equal(a, b) for a, b in zip(out, reference))


def test_simulated_encoder_time_follows_the_model(h100_file):
    cost = fit_cost_model(h100_file, "qwen2.5-vl-7b")
    stream = prepare("product-catalog", chunked_prefill_size=4096, long_prefill_token_threshold=1024)
    encoder = ModelledEncoder(cost, hidden=8)
    runs = {m: simulate(stream, 8192 * encoder.bytes_per_token, encoder=encoder, mode=m) for m in ("batched", "per_request")}
    for run in runs.values():
        for r in run.rows:
            assert r.encoder_ms == pytest.approx(sum(cost.call_ms(t) for t in r.call_tokens))
        assert run.summary.encoder_ms == pytest.approx(math.fsum(r.encoder_ms for r in run.rows))
    # both paths encode about the same tokens; batching saves the per-call intercept
    assert runs["batched"].summary.encoder_calls < runs["per_request"].summary.encoder_calls
    assert runs["batched"].summary.encoder_ms < runs["per_request"].summary.encoder_ms


def test_fit_never_models_a_call_as_taking_negative_time():
    # Convex data (quadratic attention at large images) pulls a free intercept below zero.
    from vitkit.sim.costmodel import _line_fit

    xs = [64.0, 256.0, 1024.0, 4096.0]
    ys = [x * 0.01 + (x / 1000.0) ** 2 for x in xs]
    a, b, _ = _line_fit(xs, ys)
    assert a == 0.0 and b > 0
    assert all(a + b * x > 0 for x in xs)


def test_fitted_models_name_the_measuring_device():
    import glob

    from vitkit.sim.costmodel import fit_cost_models

    paths = sorted(glob.glob("results/h100/full-*.json"))
    if not paths:
        pytest.skip("no stored H100 results")
    models = fit_cost_models(paths[0])
    assert all(m.intercept_ms >= 0 and m.ms_per_token > 0 for m in models.values())
    assert all("H100" in m.source for m in models.values())


def test_relative_fit_names_a_point_with_no_time():
    points = [(256, 5.0), (512, 0.0), (1024, 12.0)]
    with pytest.raises(ValueError, match=r"ms per call must be > 0.*\(512, 0\.0\)"):
        fit_call_cost(points, "enc", "test", "here", relative=True)
    assert fit_call_cost(points, "enc", "test", "here").ms_per_token > 0  # the absolute fit has no such limit
