#!/usr/bin/env bash
# The KL table of README.md at issue #23's protocol: SmolLM2-135M, calibration on the five calibration
# novels, evaluation on 64 windows of 512 tokens of prideprejudice.txt (KL ± standard error over the
# windows, and each model's KL as a multiple of LDLQ's with its paired standard error), INT2/3/4 with
# incoherence processing, RTN / GPTQ / LDLQ / YAQA-A / YAQA-B / YAQA-AB with shared scales; 512-token calibration
# sequences (the evaluation windows' length), Sketch A (2 passes) on 256 of them, Sketch B (and the
# Σ x xᵀ of RTN, GPTQ and LDLQ) on 1024. Then the LDLQ, YAQA-B and YAQA-AB rows again with 3 sweeps of
# coordinate descent after the rounding (`--refine 3`, rows `*-cd3-*`), in WORK-cd3 (its own folder, so
# that each table keeps its evaluations), reusing the factors and RTN's scales. Needs ../shared (the fixtures); about 5 hours on two CPU cores, so it is
# meant to be killed and rerun: a rerun continues where the killed one stopped (everything lands in
# WORK, default .yaqa-cache/kl-table-1024, checkpointed about every 30 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
work=${1:-.yaqa-cache/kl-table-1024}
data="$shared/data/austen"
fixture="$shared/fixtures/smollm2-135m"
for f in "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf" "$data/prideprejudice.txt"; do
  [[ -f $f ]] || { echo "missing $f (set SHARED=path/to/shared)" >&2; exit 1; }
done
yaqa() { cargo run --release -p yaqa-cli -- "$@"; }
common=(
  --model "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf"
  --tokenizer "$fixture/tokenizer.json"
  --calib "$data/emma.txt" "$data/mansfieldpark.txt" "$data/northangerabbey.txt"
          "$data/persuasion.txt" "$data/sensesensibility.txt"
  --n-seqs 256 --b-seqs 1024 --seq-len 512 --seed 0 --passes 2 --bits 2,3,4
  --text "$data/prideprejudice.txt" --window 512 --n-windows 64
)
yaqa compare "${common[@]}" --work "$work" --methods rtn,gptq,ldlq,yaqa-a,yaqa-b,yaqa-ab \
  --json "$work/table.json"
# The refined rows: the same factors (a link) and RTN's models (hard links: RTN chooses the scales).
mkdir -p "$work-cd3"
ln -sfn "$(realpath "$work/factors")" "$work-cd3/factors"
for b in 2 3 4; do ln -f "$work/rtn-int$b.safetensors" "$work-cd3/rtn-int$b.safetensors"; done
yaqa compare "${common[@]}" --work "$work-cd3" --methods rtn,ldlq,yaqa-b,yaqa-ab --refine 3 \
  --json "$work-cd3/table.json"
