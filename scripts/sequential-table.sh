#!/usr/bin/env bash
# Issue #18's sequential measurements on SmolLM2-135M (docs/BENCHMARKS.md, "Sequential pipeline and
# Qronos"): GPTQ (parallel and --sequential), Qronos and LDLQ at each bit width given (default 4 3), from
# one calibration (64 × 256 tokens of emma.txt, seed 0) and evaluated on the same 16 windows of 256 tokens
# of prideprejudice.txt; incoherence processing with the searched symmetric scale. Each run's report is
# OUT/<method>-int<k>.json and its /usr/bin/time -v output OUT/<method>-int<k>.time. Needs ../shared and a
# release build (cargo build --release -p yaqa-cli); about 20 minutes per bit width on two CPU cores.
# RUNS picks some of the four runs (default: all), so lanes can run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
out=${OUT:-.yaqa-cache/sequential}
bits=${*:-4 3}
data="$shared/data/austen"
fixture="$shared/fixtures/smollm2-135m"
bin=${CARGO_TARGET_DIR:-target}/release/yaqa
mkdir -p "$out"
common=(
  --model "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf" --tokenizer "$fixture/tokenizer.json"
  --calib "$data/emma.txt" --n-seqs 64 --seq-len 256 --seed 0
  --eval-text "$data/prideprejudice.txt" --eval-windows 16 --eval-window 256
)
for k in $bits; do
  for run in ${RUNS:-gptq gptq-seq qronos ldlq}; do
    case $run in
      gptq-seq) flags=(--method gptq --sequential) ;;
      *) flags=(--method "$run") ;;
    esac
    name="$run-int$k"
    [[ -f $out/$name.json ]] && continue
    /usr/bin/time -v -o "$out/$name.time" "$bin" quantize "${common[@]}" "${flags[@]}" \
      --quantizer "int$k" --out "$out/$name.safetensors" --json "$out/$name.json" \
      > "$out/$name.log" 2>&1
    grep -E "KL|OPTQ|sequential" "$out/$name.log" | sed "s/^/$name: /"
    grep -E "Elapsed|Maximum resident" "$out/$name.time" | sed "s/^/$name: /"
  done
done
