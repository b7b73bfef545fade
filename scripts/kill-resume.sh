#!/usr/bin/env bash
# The kill-and-resume loop of issue #28: runs hessian (Sketch B and Sketch A), quantize, compare,
# export, round and hessian merge on the fixture model, kills each at random points with SIGKILL or
# SIGTERM (signals, not the hidden test flags), reruns the same command until it finishes, and checks
# that what it wrote is byte-identical to an uninterrupted run. Prints one line per kill and a summary;
# exits 1 on any difference.
#
#   bash scripts/kill-resume.sh [WORK_DIR] [KILLS_PER_STAGE]
#   STAGES="export round merge" bash scripts/kill-resume.sh   # kill only these (the others run once)
#
# Needs the release binary (cargo build --release -p yaqa-cli) and ../shared/fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/yaqa-kill-resume}
PER_STAGE=${2:-6}
Y=$PWD/target/release/yaqa
M=$PWD/../shared/fixtures/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
T=$PWD/../shared/data/austen
[ -x "$Y" ] || { echo "build first: cargo build --release -p yaqa-cli" >&2; exit 2; }
[ -f "$M" ] || { echo "no fixture model at $M" >&2; exit 2; }
rm -rf "$W"; mkdir -p "$W"
RANDOM=7   # the kill times are reproducible up to the machine's speed
kills=0; stages=0; failures=0

# stage NAME OUTPUT MAX_SECONDS ARGS... (ARGS use @OUT@ for the output path)
stage() {
  local name=$1 out=$2 max=$3; shift 3
  local ref="$W/$name-ref/$out" kill="$W/$name-kill/$out"
  mkdir -p "$W/$name-ref" "$W/$name-kill"
  "$Y" "${@/@OUT@/$ref}" > "$W/$name-ref.log" 2>&1
  # A stage left out of $STAGES only makes its output, which later stages read.
  if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return; fi
  local n=0 done=0
  while [ $n -lt "$PER_STAGE" ]; do
    "$Y" "${@/@OUT@/$kill}" >> "$W/$name-kill.log" 2>&1 &
    local pid=$!
    # A random point in (0.5, max) seconds, at tenths.
    local at; at=$(awk -v r=$RANDOM -v m="$max" 'BEGIN { printf "%.1f", 0.5 + (m - 0.5) * r / 32767 }')
    local sig=KILL; [ $((RANDOM % 3)) -eq 0 ] && sig=TERM
    sleep "$at"
    if kill -s "$sig" "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      n=$((n + 1)); kills=$((kills + 1))
      echo "$name: SIG$sig after $at s"
    else
      wait "$pid" || true
      done=1; break
    fi
  done
  [ $done -eq 1 ] || "$Y" "${@/@OUT@/$kill}" >> "$W/$name-kill.log" 2>&1
  stages=$((stages + 1))
  if diff -r "$ref" "$kill" > /dev/null; then
    echo "$name: $n kills, output byte-identical to the uninterrupted run"
  else
    echo "$name: $n kills, OUTPUT DIFFERS from the uninterrupted run"; failures=$((failures + 1))
  fi
}

stage hessian-b factors 12 hessian --model "$M" --sketch b --n-seqs 12 --seq-len 64 \
  --calib "$T/emma.txt" --checkpoint-every 2 --out @OUT@
stage hessian-a factors 12 hessian --model "$M" --sketch a --passes 2 --n-seqs 6 --seq-len 64 \
  --checkpoint-every 1 --out @OUT@
stage quantize q.safetensors 25 quantize --model "$M" --factors "$W/hessian-b-ref/factors" \
  --method yaqa --quantizer int4 --eval-windows 2 --eval-window 64 --out @OUT@
stage quantize-own q.safetensors 25 quantize --model "$M" --method ldlq --quantizer int3 \
  --n-seqs 6 --seq-len 64 --checkpoint-every 1 --no-eval --out @OUT@
stage compare work 40 compare --model "$M" --n-seqs 4 --seq-len 64 --bits 3 --methods rtn,ldlq,yaqa-b \
  --n-windows 1 --window 64 --checkpoint-every 1 --work @OUT@

# The short writers: a kill lands before, inside or after their write-then-rename.
"$Y" convert --model "$M" --out "$W/hf" > "$W/convert.log" 2>&1
stage export q-hf 2.4 export --model "$M" --quantized "$W/quantize-ref/q.safetensors" --out @OUT@
down=$(ls "$W/hessian-b-ref/factors" | grep -F 'model.layers.3.mlp.down_proj.')
# 8 sweeps of coordinate descent make one matrix's rounding last long enough (about 4 s) to be killed.
stage round r.safetensors 3.8 round --weights "$W/hf/model.safetensors" --refine 8 \
  --tensor model.layers.3.mlp.down_proj.weight --factors "$W/hessian-b-ref/factors/$down" --out @OUT@
for i in 0 1; do
  "$Y" hessian --model "$M" --sketch b --n-seqs 4 --seq-len 64 --shard $i/2 --out "$W/shard$i" \
    > "$W/shard$i.log" 2>&1
done
stage merge factors 3.8 hessian merge --out @OUT@ "$W/shard0" "$W/shard1"

echo "kill-resume: $kills kills over $stages stages, $failures stages with a different output"
[ $failures -eq 0 ]
