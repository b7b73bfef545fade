#!/usr/bin/env bash
# Issue #18's sequential measurements on SmolLM2-135M (docs/BENCHMARKS.md, "Sequential pipeline and
# Qronos"): at each bit width given (default 4 3), from one calibration (64 × 256 tokens of emma.txt,
# seed 0) and evaluated on the same 16 windows of 256 tokens of prideprejudice.txt:
#   rtn, gptq, gptq-seq (GPTQ --sequential), gptq-sto (GPTQ --stochastic, seed 0), qronos, ldlq, and
#   yaqa-b (from one Sketch B folder OUT/factors-b collected on the same calibration by `yaqa hessian`).
# LAYOUT=incoherent (default): randomized Hadamard incoherence and the searched symmetric per-matrix scale;
# LAYOUT=gG (g64, g128, …): no incoherence, asymmetric grid with one scale and zero-point per G columns
# (the GPTQ checkpoint layout; SmolLM2's hidden width 576 is 4.5 × 128, so it takes g64 or g32). Each run's report is OUT/<layout>/<run>-int<k>.json and its /usr/bin/time -v output
# beside it. Needs ../shared and a release build (cargo build --release -p yaqa-cli); 5–25 minutes per run
# on two CPU cores. RUNS picks some of the runs (default: all), so lanes can run side by side; finished
# runs are skipped, so rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
root=${OUT:-.yaqa-cache/sequential}
layout=${LAYOUT:-incoherent}
bits=${*:-4 3}
data="$shared/data/austen"
fixture="$shared/fixtures/smollm2-135m"
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/yaqa}
case $layout in
  incoherent) out=$root; grid=() ;;
  g[0-9]*) out=$root/$layout; grid=(--group "${layout#g}" --no-incoherence) ;;
  *) echo "LAYOUT must be incoherent or gG (g64, g128, …), not $layout" >&2; exit 2 ;;
esac
mkdir -p "$out"
model=(--model "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf" --tokenizer "$fixture/tokenizer.json")
calib=(--calib "$data/emma.txt" --n-seqs 64 --seq-len 256 --seed 0)
evaluation=(--eval-text "$data/prideprejudice.txt" --eval-windows 16 --eval-window 256)
for k in $bits; do
  for run in ${RUNS:-rtn gptq gptq-seq gptq-sto qronos ldlq yaqa-b}; do
    source=("${calib[@]}")
    case $run in
      gptq-seq) flags=(--method gptq --sequential) ;;
      gptq-sto) flags=(--method gptq --stochastic) ;;
      yaqa-b)
        factors=$root/factors-b
        if [[ ! -d $factors ]]; then
          "$bin" hessian "${model[@]}" "${calib[@]}" --sketch b --out "$factors" > "$root/factors-b.log" 2>&1
        fi
        flags=(--method yaqa --factors "$factors")
        source=()
        ;;
      *) flags=(--method "$run") ;;
    esac
    name="$run-int$k"
    [[ -f $out/$name.json ]] && continue
    /usr/bin/time -v -o "$out/$name.time" "$bin" quantize "${model[@]}" "${source[@]}" "${evaluation[@]}" "${flags[@]}" "${grid[@]}" \
      --quantizer "int$k" --out "$out/$name.safetensors" --json "$out/$name.json" \
      > "$out/$name.log" 2>&1
    grep -E "KL|OPTQ|sequential" "$out/$name.log" | sed "s/^/$layout $name: /"
    grep -E "Elapsed|Maximum resident" "$out/$name.time" | sed "s/^/$layout $name: /"
  done
done
