"""The eager encoder's line model: fitted to the plain stream file only, never to a named stream's."""

from __future__ import annotations

import json
import shutil

from vitkit.costs import results
from vitkit.costs.eager import load_eager_cost

STORED = results.results_folder()
ENCODER = "qwen2.5-vl-7b"


def test_a_newer_named_stream_file_does_not_change_the_eager_model(tmp_path):
    (stored,) = sorted(STORED.glob(f"stream-{ENCODER}-*.json"))[-1:]
    shutil.copy(stored, tmp_path)
    before = load_eager_cost(tmp_path, ENCODER)
    assert before is not None and stored.name in before.source
    data = json.loads(stored.read_text())
    data["settings"]["stream"]["name"] = "scans"  # a scans stream, newer, its eager steps three times as slow
    for row in data["steps"]:
        row["encoder_ms"], row["step_ms"] = 3 * row["encoder_ms"], 3 * row["step_ms"]
    (tmp_path / f"stream-scans-{ENCODER}-20991231T000000Z.json").write_text(json.dumps(data))
    assert load_eager_cost(tmp_path, ENCODER) == before
    (tmp_path / stored.name).unlink()
    assert load_eager_cost(tmp_path, ENCODER) is None  # a named stream alone: no eager model, none made up
