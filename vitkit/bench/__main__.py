"""Entry point of ``python -m vitkit.bench`` (and ``make bench``); see ``vitkit.bench.cli``."""

from vitkit.bench.cli import main

raise SystemExit(main())
