"""The bookkeeping benchmark runs end to end at toy sizes and writes the promised fields."""

import json

import pytest

from vitkit.bench.bookkeeping import main, make_step
from vitkit import EmbeddingCache, embed_chunks


def test_main_writes_json_and_prints_table(tmp_path, capsys):
    out = tmp_path / "sub" / "bookkeeping.json"
    args = ["--out", str(out), "--hash-mb", "0.01", "0.02", "--hash-repeats", "2", "--requests", "3",
            "--images", "2", "--shapes", "4x2", "3x5", "--repeats", "2", "--no-progress"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "vitkit.bookkeeping/1" and data["kind"] == "cpu"
    assert {"machine", "versions", "settings"} <= data.keys()
    assert [round(r["size_mb"], 2) for r in data["hashing"]] == [0.01, 0.02]
    for r in data["hashing"]:
        keys = ("content_hash_ms", "content_hash_ms_per_mb", "content_hash_hot_ms", "sha256_ms", "sha256_ms_per_mb")
        for key in keys:
            assert r[key] > 0
    rows = data["embed_chunks"]
    assert len(rows) == 2 * 2 * 2  # shapes x modes x cold/warm
    assert {(r["mode"], r["cache"]) for r in rows} == {
        (m, c) for m in ("batched", "per_request") for c in ("cold", "warm")
    }
    for r in rows:
        assert r["requests"] == 3 and r["images_per_request"] == 2 and r["items"] == 6
        assert 0 < r["bookkeeping_ms_median"] <= r["step_ms_median"] + 1e-6
        assert r["bookkeeping_us_per_item"] == pytest.approx(r["bookkeeping_ms_median"] * 1e3 / 6)
        assert r["assembled_bytes"] == 6 * r["tokens_per_image"] * r["hidden"] * 4
        assert r["concat_ms_median"] > 0
        expected_calls = 0 if r["cache"] == "warm" else (1 if r["mode"] == "batched" else 3)
        assert r["encoder_calls"] == expected_calls
    printed = capsys.readouterr().out
    assert "bookkeeping" in printed and "per_request" in printed and str(out) in printed


def test_zero_cost_encoder_step_is_all_misses_then_all_hits():
    batch, encoder, capacity = make_step(requests=2, images=3, tokens=4, hidden=2)
    cache = EmbeddingCache(capacity)
    cold = embed_chunks(batch, encoder, cache)
    assert cold.encoded_items == 6 and cold.cache_hits == 0
    warm = embed_chunks(batch, encoder, cache)
    assert warm.encoder_calls == 0 and warm.cache_hits == 6
