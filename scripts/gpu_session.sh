#!/usr/bin/env bash
# One stage of the planned GPU session, for the device machine (`run`): each stage fits one 10-minute command,
# writes its results under $OUT/work/<card>/ and packs them into $OUT/<stage>-<card>.tar.gz, with its log beside
# it, because a run brings back at most 8 files. Unpack here with `tar -xzf FILE -C results/`.
#
#   bash scripts/gpu_session.sh tests       # every GPU test (-m gpu), torchvision's real-processor checks too
#   bash scripts/gpu_session.sh video       # python -m vitkit.bench video (issue 19)
#   bash scripts/gpu_session.sh streams     # the "scans" and "mixed" streams (issue 19)
#   bash scripts/gpu_session.sh calibrate   # make calibrate's job (issue 21)
#   bash scripts/gpu_session.sh crossover   # graphs against batching, both towers (issue 21)
#   bash scripts/gpu_session.sh advise      # advise on a new trace, then validate --trace its first setting (issue 21)
set -euo pipefail

stage=${1:?"which stage: tests, video, streams, calibrate, crossover or advise"}
: "${OUT:?OUT must name the folder whose files come back}"
python=${PYTHON:-python}
card=$($python -c "from vitkit.costs.results import attached_card; print(attached_card() or '')")
[ -n "$card" ] || { echo "no GPU: torch sees no CUDA device" >&2; exit 2; }
work=$OUT/work/$card
mkdir -p "$work"
log=$OUT/$stage-$card.log

run_stage() {
    case $stage in
    tests)
        $python -m pytest -m gpu -o addopts="" -p no:cacheprovider -q -rs tests/ ;;
    video)
        $python -m vitkit.bench video --out "$work" ;;
    streams)
        $python -m vitkit.bench stream --stream scans --out "$work"
        $python -m vitkit.bench stream --stream mixed --out "$work" ;;
    calibrate)
        $python -m vitkit.bench calibrate --out "$work" ;;
    crossover)
        $python -m vitkit.bench crossover --out "$work" ;;
    advise)
        # a trace none of the built-in workloads is (another seed; product-catalog's mix of sizes and repeats);
        # advise prints, last, the `validate --trace` line of its first setting the GPU replay can run
        $python -m vitkit.sim generate --like product-catalog --seed 41 --requests 400 --rate 8 \
            --out "$work/trace-advise.json"
        $python -m vitkit.sim advise --trace "$work/trace-advise.json" --p99-ms "${P99_MS:-1500}" \
            --json "$work/advise.json" | tee "$work/advise.txt"
        command=$($python -c "import json, sys; print(json.load(open(sys.argv[1]))['validate']['command'])" \
            "$work/advise.json")
        eval "${command//results\/<card>/$work}" ;;
    *)
        echo "unknown stage $stage" >&2; return 2 ;;
    esac
}

status=0
run_stage 2>&1 | tee "$log" || status=$?
tar -czf "$OUT/$stage-$card.tar.gz" -C "$OUT/work" "$card"
rm -rf "$OUT/work"
exit "$status"
