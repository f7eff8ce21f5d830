"""The encoder's measured costs and the TTFT validation in one process, on one card.

The validation is only meaningful against cost models measured on the card that runs it (H100s
differed by up to 15% on small encoder calls), and a fresh machine may be another card. So this
warms the encoder and the 7B prefill once, then runs ``python -m vitkit.bench.encoder_costs``'s
measurement, stores its file where the validation's model loader finds it (``--results``), runs
``python -m vitkit.sim validate`` against it, and last, the one-image probes of
``slow_calls.py`` (calls after nothing / after a 2048-token prefill step; ``--no-probes`` skips them).

    PYTHONPATH=. python results/scripts/costs_and_validate.py --out DIR     # one GPU, about 8 minutes

Writes ``encoder-costs-<stamp>.json``, ``ttft-validate-<stamp>.json`` and
``slow-calls-<stamp>.json`` into ``--out``. The prefill model stays the stored one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from slow_calls import Nvml, Phases, print_summary, probes  # noqa: E402

from vitkit.bench import encoder_costs  # noqa: E402
from vitkit.bench.machine import machine_info, versions  # noqa: E402
from vitkit.sim.ttft_report import write_json  # noqa: E402
from vitkit.sim.validate import PRESET, _gpu_encoder, gpu_prefill_runner, parse_args, run_on_gpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=Path("results/h100"), help="where the model loader looks")
    parser.add_argument("--timed-passes", type=int, default=1, help="the validation's timed passes per workload and mode")
    parser.add_argument("--no-probes", action="store_true", help="skip the one-image probes at the end")
    parser.add_argument("--workloads", nargs="+", default=None, help="the validation's workloads (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    encoder, runner = _gpu_encoder(), gpu_prefill_runner()
    print(f"warm-up: encoder {encoder.warmup_report.seconds:.1f} s, prefill {runner.warmup_s:.1f} s", flush=True)

    costs = encoder_costs.measure(PRESET, encoder.device, torch.bfloat16, encoder_costs.CALLS, runner,
                                  encoder_costs.SERVING, encoder=encoder)
    path = args.out / f"encoder-costs-{costs['created']}.json"
    path.write_text(json.dumps(costs, indent=1, allow_nan=False) + "\n")
    shutil.copy(path, args.results / path.name)  # the newest encoder-costs file: the validation's model
    print(encoder_costs.format_table(costs), flush=True)

    _, validate_args = parse_args(["--out", str(args.out), "--results", str(args.results), "--timed-passes", str(args.timed_passes),
                                   *(["--workloads", *args.workloads] if args.workloads else [])])
    data, _, _ = run_on_gpu(validate_args, encoder, runner)
    print(write_json(args.out / f"ttft-validate-{data['created']}.json", data), flush=True)

    if args.no_probes:
        return
    nvml, log = Nvml(), []
    probes(encoder, runner, Phases(encoder), nvml, log)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"slow-calls-{stamp}.json").write_text(json.dumps(
        {"schema": "vitkit.slow-calls/1", "created": stamp, "machine": machine_info(), "versions": versions(),
         "nvml": nvml.handle is not None, "warmup": data["warmup"], "rows": [], "calls": log, "prefill_steps": []}))
    print_summary(log)


if __name__ == "__main__":
    main()
