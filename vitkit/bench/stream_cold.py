"""The cold pass of a stream, in a fresh process: what a new server pays before warm-up.

``vitkit.bench.stream_run`` starts this module as a subprocess (``python -m
vitkit.bench.stream_cold SPEC_JSON SETTINGS_JSON IMPL``) with empty compile caches of its own, so
the first steps pay every compile, capture and first-kernel cost, and the parent's own
``warmup()`` is cold too. It prints the step rows as JSON on its last line of output.
"""

from __future__ import annotations

import json
import sys

from vitkit.bench.stream import StreamSpec
from vitkit.bench.stream_run import StreamSettings, cold_rows


def main(argv: list[str]) -> int:
    spec, settings, impl = StreamSpec(**_tuples(json.loads(argv[0]))), json.loads(argv[1]), argv[2]
    settings = StreamSettings(**_tuples(settings))
    print(json.dumps(cold_rows(spec, settings, impl)))
    return 0


def _tuples(fields: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
