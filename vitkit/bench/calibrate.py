"""``python -m vitkit.bench calibrate`` (``make calibrate``): the cost models of the attached GPU, measured,
validated and summarised in one command.

Phases: the matmul peak and the prefill grid (the ``prefill`` job); the Qwen2.5-VL-7B tower and decoder
warmed up once; the encoder's bucket graphs, probe calls and calibration serving replay, which also
measures the host's bookkeeping per step (``encoder-costs``); the TTFT validation of both built-in
workloads in both modes against the models just measured (``validate``); a one-page summary,
``summary-<stamp>.md`` and ``.png``: what was measured, the models' errors per encoder call
(``vitkit.bench.errors``), the validation's errors and the p99 band the models' errors give. All of it,
and ``calibration-<stamp>.json`` with each phase's seconds (the next run's time estimate), goes to
``results/<card>/``.

It refuses (exit 2) without a GPU, and when ``--out`` holds files measured on another card. With
``--summary-only`` it writes the summary of the newest files in ``--out``, on CPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vitkit.bench import encoder_costs
from vitkit.bench.errors import Analysis, analyse, bucket_images, gpu_validations, measured_runs
from vitkit.bench.machine import free_memory, parser, versions
from vitkit.costs import results
from vitkit.costs.results import Refused, check_out
from vitkit.costs.encoder import bookkeeping_for, load_encoder_cost, measured_bucket_cost
from vitkit.costs.prefill import load_prefill_cost

TARGET_S = 9 * 60  # issue 21: a card never calibrated, H200, in at most 9 minutes
SUMMARY_DRAWS = 30  # bootstrap replays per validation row in the summary (CPU time: part of the target)
PHASES = {  # name -> what it measures (in run order)
    "prefill": "matmul peak, attention check, the 7B decoder's prefill grid",
    "warm-up": "the Qwen2.5-VL-7B tower's bucket graphs and the decoder's, once for the rest",
    "encoder-costs": "bucket graph replays, probe calls, the calibration serving replay (and bookkeeping)",
    "validate": "TTFT of both built-in workloads in both modes, measured against modelled",
    "summary": "per-call model errors, p99 bands (CPU replays), the markdown page and its figure",
}


def attached_card() -> str:
    """The attached GPU's card name; ``Refused`` without one."""
    card = results.attached_card()
    if card is None:
        raise Refused(f"no GPU: torch {torch.__version__} sees no CUDA device (CUDA build {torch.version.cuda}). "
                      "calibrate measures the attached card's own costs, and a CPU has none to measure; until a GPU "
                      f"is attached the models come from results/{results.STORED_CARD}/.")
    return card


@dataclass(frozen=True)
class Estimate:
    """Seconds per phase expected, and what the numbers come from."""

    seconds: Mapping[str, float]
    basis: str

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


def estimate(out: Path, card: str) -> Estimate:
    """From the newest calibration record of this card, else of any card, else a floor from the stored
    card's measurements (the timed work only: no compiles, image processing or host time)."""
    own = results.newest_first("calibration", out)
    folders = [f for f in results.RESULTS.iterdir() if f.is_dir()] if results.RESULTS.is_dir() else []
    others = sorted((p for f in folders for p in results.newest_first("calibration", f)), key=results.stamp_of,
                    reverse=True)
    for path, whose in [(p, "this card") for p in own[:1]] + [(p, "another card") for p in others[:1]]:
        record = results.read("calibration", path)
        seconds = {p["name"]: float(p["seconds"]) for p in record["phases"]}
        return Estimate(seconds, f"as the last calibration on {whose} ({record['card']}, {path.name}) took")
    stored = results.results_folder()
    try:
        seconds = work_seconds(stored)
    except FileNotFoundError as err:
        return Estimate({}, f"no estimate: no calibration record, and {err}")
    return Estimate(seconds, f"at least: the timed work of {stored.name}'s stored files "
                             "(compiles, image processing and host time not counted)")


def work_seconds(folder: Path) -> dict[str, float]:
    """Seconds each phase spent in timed work when ``folder``'s newest files were measured."""
    grid = results.read("prefill", results.newest("prefill", folder))
    costs = results.read("encoder-costs", results.newest("encoder-costs", folder))
    checks = [results.read("ttft-validate", p) for p in results.newest_first("ttft-validate", folder)]
    check = next((c for c in checks if not c["settings"].get("modelled_only")), None)
    settings = grid["settings"]
    serving_ms = (sum(c["ms"] for c in costs.get("serving_calls", []))
                  + sum(s["ms"] for s in costs.get("serving_prefill_steps", [])))
    # a warm pass, then a timed one, of each replay
    replays_s = 0.0 if check is None else sum(
        s["encoder_ms"] + s["prefill_ms"] for r in check["rows"] for s in r["measured_steps"]) * 2e-3
    return {"prefill": sum(r["ms_median"] for r in grid["rows"]) * (settings["warmup"] + settings["repeats"]) / 1e3,
            "warm-up": float(costs["settings"].get("warmup_s") or 0.0),
            "encoder-costs": encoder_costs.SUSTAIN_S * (len(costs["buckets"]) + 2 * len(costs["calls"]))
                             + 2 * serving_ms / 1e3,
            "validate": replays_s, "summary": 0.0}


@dataclass(frozen=True)
class CalibrationFiles:
    """The measured files one calibration wrote (or the newest of each in a folder)."""

    prefill: Path
    encoder_costs: Path
    validation: Path

    @classmethod
    def newest(cls, folder: Path) -> CalibrationFiles:
        checks = gpu_validations(folder)
        if not checks:
            raise FileNotFoundError(f"no GPU-measured ttft-validate-*.json in {folder}")
        return cls(results.newest("prefill", folder), results.newest("encoder-costs", folder), checks[0])


def run_gpu_phases(out: Path, args: Any, plan: Estimate, bar: Any) -> tuple[CalibrationFiles, dict[str, float]]:
    """The measuring phases, each timed; the files they wrote. The one path that needs the GPU."""
    from vitkit.bench import prefill
    from vitkit.bench.validate import _gpu_encoder, gpu_prefill_runner, parse_args, run_on_gpu

    took: dict[str, float] = {}
    state: dict[str, Any] = {}

    def warm_up() -> None:
        free_memory("cuda")  # the grid's decoder, graphs and KV pool
        state["encoder"], state["runner"] = _gpu_encoder(), gpu_prefill_runner()

    def costs() -> None:
        data = encoder_costs.measure(encoder_costs.PRESET, state["encoder"].device, torch.bfloat16,
                                     encoder_costs.CALLS, state["runner"], encoder_costs.SERVING,
                                     encoder=state["encoder"])
        print(encoder_costs.format_table(data))
        results.write("encoder-costs", data, out / f"encoder-costs-{data['created']}.json")

    def check() -> None:
        workloads = ["--workloads", *args.workloads] if args.workloads else []
        _, options = parse_args(["--out", str(out), "--results", str(out), "--timed-passes",
                                 str(args.timed_passes), *workloads])
        options.prefill_results = out  # the grid measured minutes ago, calibrated by the replay's steps
        data, _, _ = run_on_gpu(options, state["encoder"], state["runner"])
        results.write("ttft-validate", data, out / f"ttft-validate-{data['created']}.json")

    steps: dict[str, Callable[[], Any]] = {"prefill": lambda: prefill.main(["--out", str(out)]), "warm-up": warm_up,
                                           "encoder-costs": costs, "validate": check}
    for name, step in steps.items():
        took[name] = timed_phase(name, step, plan, took, bar)
    return CalibrationFiles.newest(out), took


def timed_phase(name: str, step: Callable[[], Any], plan: Estimate, took: Mapping[str, float], bar: Any) -> float:
    """Run one phase under the outer progress bar; its seconds."""
    left = sum(s for phase, s in plan.seconds.items() if phase not in took)
    bar.set_postfix_str(f"{name}: {PHASES[name]}; ~{left / 60:.1f} min left")
    start = time.perf_counter()
    step()
    bar.update(1)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("calibrate", __doc__, "out", out=dict(help="the card's results folder (default results/<card>/)"))
    p.add_argument("--timed-passes", type=int, default=1, help="the validation's timed passes per workload and mode")
    p.add_argument("--workloads", nargs="+", help="the validation's workloads (default: both built-in ones)")
    p.add_argument("--draws", type=int, default=SUMMARY_DRAWS, help="bootstrap replays per p99 band (0: none)")
    p.add_argument("--summary-only", action="store_true", help="no GPU: summarise the newest files in --out")
    args = p.parse_args(argv)
    try:
        if args.summary_only:
            if args.out is None:
                p.error("--summary-only needs --out FOLDER")
            md, png = write_summary(args.out, CalibrationFiles.newest(args.out), draws=args.draws)
            print(f"wrote {md} and {png.name}")
            return 0
        card = attached_card()
        out = args.out or results.results_folder(card)
        check_out(out, card)
    except (Refused, FileNotFoundError) as err:
        print(f"calibrate: {err}", file=sys.stderr)
        return 2
    plan = estimate(out, card)
    print(f"calibrating {card} into {out}/: about {plan.total_s / 60:.1f} min ({plan.basis}; target "
          f"{TARGET_S / 60:.0f} min)\n" + "\n".join(f"  {name:>13}: ~{plan.seconds.get(name, 0.0):5.0f} s  {what}"
                                                    for name, what in PHASES.items()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(PHASES), desc="calibrate", unit="phase") as bar:
        files, took = run_gpu_phases(out, args, plan, bar)
        paths: list[Path] = []
        took["summary"] = timed_phase("summary", lambda: paths.extend(write_summary(out, files, took, args.draws)),
                                      plan, took, bar)
    record = write_record(out, card, files, took, plan, paths)
    print(f"calibrated {card} in {sum(took.values()) / 60:.1f} min; wrote {paths[0]}, {paths[1].name}, {record.name}")
    return 0


def write_record(out: Path, card: str, files: CalibrationFiles, took: Mapping[str, float], plan: Estimate,
                 paths: Sequence[Path]) -> Path:
    """``calibration-<stamp>.json``: each phase's seconds (against the estimate) and the files written."""
    stamp = results.stamp()
    machine = results.read("ttft-validate", files.validation)["machine"]  # the card that just measured
    data = {"kind": "gpu", "created": stamp, "machine": machine, "versions": versions(), "card": card,
            "target_s": TARGET_S,
            "phases": [{"name": n, "seconds": s, "estimate_s": plan.seconds.get(n)} for n, s in took.items()],
            "estimate_basis": plan.basis,
            "files": {"prefill": files.prefill.name, "encoder_costs": files.encoder_costs.name,
                      "validation": files.validation.name, "summary": [p.name for p in paths]}}
    return results.write("calibration", data, out / f"calibration-{stamp}.json")


# ---- the summary: from the files alone, so it is the same on CPU and can be redone ----

def write_summary(out: Path, files: CalibrationFiles, took: Mapping[str, float] | None = None,
                  draws: int = SUMMARY_DRAWS) -> tuple[Path, Path]:
    """``summary-<stamp>.md`` and ``.png`` in ``out`` from ``files`` (and the phases' seconds)."""
    # the replay offsets of this card's other runs, else (said in the summary) of the stored card's
    runs = [p for p in measured_runs(files.validation.parent) if p != files.validation]
    runs = runs or measured_runs(results.results_folder())
    analysis = analyse(files.validation, files.validation.parent, draws=draws, runs=runs,
                       bands=("calibration + runs",))
    stamp = results.stamp()
    md, png = out / f"summary-{stamp}.md", out / f"summary-{stamp}.png"
    out.mkdir(parents=True, exist_ok=True)
    md.write_text(summary_markdown(files, analysis, took, png.name))
    summary_figure(files, analysis).savefig(png, dpi=110)
    return md, png


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def measured_lines(files: CalibrationFiles) -> list[str]:
    """What was measured: the matmul peak, the prefill grid and its model, the encoder and its model."""
    grid = results.read("prefill", files.prefill)
    costs = results.read("encoder-costs", files.encoder_costs)
    prefill = load_prefill_cost(files.prefill, files.encoder_costs if costs.get("serving_prefill_steps") else None)
    encoder = load_encoder_cost(files.encoder_costs.parent, costs_file=files.encoder_costs)
    fit = encoder.call
    _, book_source = bookkeeping_for(files.encoder_costs, files.encoder_costs.parent, costs["settings"]["encoder"],
                                     costs["settings"]["impl"])
    mfu = [r["mfu"] for r in grid["rows"]]
    scales = fit.bucket_scales or (fit.graph_scale,)
    return [
        f"- matmul peak: {grid['matmul_peak']['tflops']:.0f} TFLOP/s ({grid['matmul_peak']['label']}, "
        f"n={grid['matmul_peak']['n']}), in `{files.prefill.name}`",
        f"- prefill grid: {len(grid['rows'])} steps of {grid['settings']['config']['name']}, MFU "
        f"{min(mfu):.0%}-{max(mfu):.0%}; the fitted model's error on the grid: median {prefill.median_rel_error:.1%}, "
        f"max {prefill.max_rel_error:.1%}; on {prefill.serving_steps} calibration replay steps: median "
        f"{'-' if prefill.serving_median_rel_error is None else format(prefill.serving_median_rel_error, '.1%')}",
        f"- encoder ({costs['settings']['encoder']}, {costs['settings']['impl']}): {len(costs['buckets'])} bucket "
        f"graphs, {len(costs['calls'])} probe calls, {len(costs.get('serving_calls', []))} calibration replay calls "
        f"(`{files.encoder_costs.name}`); per-bucket scales {min(scales):.2f}-{max(scales):.2f}; the model's error "
        f"per fitted call: median {fit.median_rel_err:.1%}, max {fit.max_rel_err:.1%}",
        f"- bookkeeping: {encoder.bookkeeping_ms:.2f} ms a step, from {book_source}",
    ]


def error_lines(analysis: Analysis, contexts: Sequence[str] = ("bucket x images", "ran before")) -> list[str]:
    """Markdown tables of the validation's per-call errors, by the ``contexts`` that matter most."""
    lines = ["| workload | mode | group | calls | median | p10 | p90 | summed ms |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in analysis.rows:
        for context in contexts:
            lines += [f"| {row.workload} | {row.mode} | {context}: {g.key} | {g.calls} | {_pct(g.median_rel_err)} "
                      f"| {_pct(g.p10_rel_err)} | {_pct(g.p90_rel_err)} | {_pct(g.total_rel_err)} |"
                      for g in row.groups[context][:6]]
    return lines


def validation_lines(validation: Mapping[str, Any], analysis: Analysis) -> list[str]:
    """The TTFT table (target: within 10%), the p99 bands, and batching's gain in p99 measured and modelled."""
    bands = {(r.workload, r.mode): r.stated_band for r in analysis.rows}
    lines = ["| workload | mode | arrivals | p50 measured | modelled | error | p99 measured | modelled | error "
             "| p99 band (errors resampled) | within 10% |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in validation["rows"]:
        b = bands.get((r["workload"], r["mode"]))
        band = "-" if b is None else f"{b.lo_ms:.1f}-{b.hi_ms:.1f} ({'inside' if b.inside else 'OUTSIDE'})"
        ok = abs(r["p50_rel_err"]) <= 0.1 and abs(r["p99_rel_err"]) <= 0.1
        lines.append(f"| {r['workload']} | {r['mode']} | {r['arrivals']} | {r['measured_p50_ms']:.1f} | "
                     f"{r['modelled_p50_ms']:.1f} | {_pct(r['p50_rel_err'])} | {r['measured_p99_ms']:.1f} | "
                     f"{r['modelled_p99_ms']:.1f} | {_pct(r['p99_rel_err'])} | {band} | {'yes' if ok else 'NO'} |")
    for workload, gain in batching_gains(validation).items():
        lines.append(f"\nBatching's gain in p99, {workload}: measured {gain[0]:.1%}, modelled {gain[1]:.1%} "
                     f"({100 * (gain[1] - gain[0]):+.1f} points; target within 5).")
    return lines


def batching_gains(validation: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Per workload with both modes: (measured, modelled) p99 drop of batched against per-request."""
    rows = {(r["workload"], r["mode"]): r for r in validation["rows"]}
    gains = {}
    for workload in dict.fromkeys(w for w, _ in rows):
        if (workload, "batched") in rows and (workload, "per_request") in rows:
            b, p = rows[workload, "batched"], rows[workload, "per_request"]
            gains[workload] = tuple(1 - b[f"{side}_p99_ms"] / p[f"{side}_p99_ms"] for side in ("measured", "modelled"))
    return gains


def summary_markdown(files: CalibrationFiles, analysis: Analysis, took: Mapping[str, float] | None,
                     figure: str) -> str:
    """The one page: what was measured, the models' errors, the validation's errors, the time it took."""
    validation = results.read("ttft-validate", files.validation)
    device = validation["machine"]["device_name"]
    lines = [f"# Calibration of {device} ({results.card_slug(device)})", "",
             f"Files in `{files.validation.parent}/`; models: `{files.encoder_costs.name}` and `{files.prefill.name}`, "
             f"validation `{files.validation.name}`. ![summary]({figure})", "", "## What was measured", "",
             *measured_lines(files), "", "## The models' errors per encoder call of the validation", "",
             "(modelled - measured) / measured; 'summed ms': the error of the group's total, what the replay's "
             "clock adds up.", "", *error_lines(analysis), "", "## Validation: time to first token", "",
             *validation_lines(validation, analysis)]
    band = next((b for r in analysis.rows for b in r.bands.values()), None)
    if band is not None:
        lines += ["", f"The p99 band: {band.draws} CPU replays of each trace with every modelled call and prefill step "
                      f"scaled by a ratio drawn from {band.errors}: by bucket and by prefill row bucket, each "
                      f"draw with one replay's offset; {band.level:.0%} of them fall inside it. The measurement "
                      f"must fall inside too."]
    if took:
        total = sum(took.values())
        lines += ["", "## Time", "", "| phase | seconds |", "|---|---:|",
                  *(f"| {n} | {s:.0f} |" for n, s in took.items()), f"| total | {total:.0f} ({total / 60:.1f} min; target {TARGET_S / 60:.0f} min) |", "",
                  "The summary's own seconds are in the run's `calibration-<stamp>.json`."]
    return "\n".join(lines) + "\n"


def summary_figure(files: CalibrationFiles, analysis: Analysis) -> Figure:
    """Three panels: the models against what they were fitted to, per-call errors by bucket, TTFT p50/p99."""
    validation = results.read("ttft-validate", files.validation)
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    fit_ax, err_ax, ttft_ax = fig.subplots(1, 3)
    _fit_panel(fit_ax, files)
    _error_panel(err_ax, analysis)
    _ttft_panel(ttft_ax, validation, analysis)
    fig.suptitle(f"calibration on {validation['machine']['device_name']}: models ({files.encoder_costs.name}, "
                 f"{files.prefill.name}) and their validation ({files.validation.name})", fontsize="medium")
    return fig


def _fit_panel(ax: Any, files: CalibrationFiles) -> None:
    _, rows = measured_bucket_cost(files.encoder_costs)
    grid = results.read("prefill", files.prefill)
    costs = results.read("encoder-costs", files.encoder_costs)
    prefill = load_prefill_cost(files.prefill, files.encoder_costs if costs.get("serving_prefill_steps") else None)
    grid_ms = [(r["ms_median"], prefill.step_ms([tuple(w) for w in r["step_windows"]])) for r in grid["rows"]]
    for label, pairs, marker in (("prefill grid steps", grid_ms, "o"),
                                 ("encoder calls (calibration replay)",
                                  [(r["measured_ms"], r["modelled_ms"]) for r in rows if r["kind"] == "serving"], "."),
                                 ("encoder probe calls", [(r["measured_ms"], r["modelled_ms"]) for r in rows
                                                          if r["kind"] == "probe"], "x")):
        if pairs:
            x, y = np.array(pairs).T
            ax.plot(x, y, marker, linestyle="none", markersize=4, label=label, alpha=0.7)
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="gray", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="measured ms", ylabel="modelled ms", title="the models on their data")
    ax.legend(fontsize="x-small")


def _error_panel(ax: Any, analysis: Analysis) -> None:
    groups = [(f"{r.mode[:5]} {g.key}", [c.rel_err * 100 for c in r.calls if bucket_images(c) == g.key])
              for r in analysis.rows for g in r.groups["bucket x images"][:4]]
    ax.boxplot([v for _, v in groups], showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1), [k for k, _ in groups], rotation=60, ha="right", fontsize="x-small")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(ylabel="(modelled - measured) / measured, %", title="per encoder call of the validation (bucket x images)")


def _ttft_panel(ax: Any, validation: Mapping[str, Any], analysis: Analysis) -> None:
    """Each row's p50 and p99 error, the 10% target, and where the p99 band puts the measurement."""
    bands = {(r.workload, r.mode): r.stated_band for r in analysis.rows}
    for k, r in enumerate(validation["rows"]):
        ax.bar(3 * k, 100 * r["p50_rel_err"], color="tab:gray", label="p50" if k == 0 else None)
        ax.bar(3 * k + 1, 100 * r["p99_rel_err"], color="tab:blue", label="p99" if k == 0 else None)
        b = bands.get((r["workload"], r["mode"]))
        if b is not None:  # the band's p99s as errors against the measurement: inside when it spans 0
            lo, hi = (100 * (ms - b.measured_p99_ms) / b.measured_p99_ms for ms in (b.lo_ms, b.hi_ms))
            ax.plot([3 * k + 1.4] * 2, [lo, hi], color="k", linewidth=3, solid_capstyle="butt",
                    label=f"p99 band ({b.level:.0%})" if k == 0 else None)
    for y in (-10, 10):
        ax.axhline(y, color="tab:red", linestyle=":", linewidth=0.8)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks([3 * k + 0.5 for k in range(len(validation["rows"]))],
                  [f"{r['workload']}\n{r['mode']}" for r in validation["rows"]], fontsize="x-small")
    ax.set(ylabel="TTFT (modelled - measured) / measured, %", title="validation errors (target: within 10%)")
    ax.legend(fontsize="x-small")
