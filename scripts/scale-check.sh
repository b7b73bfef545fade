#!/usr/bin/env bash
# The realistic-size check of issue #24 (docs/BENCHMARKS.md, "Memory"): a synthetic checkpoint with
# Llama-3.1-8B's shapes and a few blocks (bf16 shards), its Sketch B factors collected and the model
# quantized with YAQA end to end and evaluated, each stage under --max-memory and /usr/bin/time -v.
#
#   bash scripts/scale-check.sh [WORK] [BLOCKS]
#
# WORK (default .yaqa-cache/scale-check) holds the checkpoint (about 2 GiB + 0.4 GiB per block), the
# factors (about 3 GiB per block) and the result. Every stage is skipped when its output exists, and
# hessian and quantize resume where a killed run stopped, so rerunning the script continues. Needs
# ../shared (the SmolLM2 tokenizer for the evaluation text; its ids fit the 128256-token vocabulary).
set -euo pipefail
cd "$(dirname "$0")/.."

work=${1:-.yaqa-cache/scale-check}
blocks=${2:-2}
shared=../shared
mkdir -p "$work"

cargo build --release -q -p yaqa-cli --bin yaqa --example synth_checkpoint
bin=$work/bin
mkdir -p "$bin"
# Copies, so a rebuild during a long run does not change the binary under it.
cp target/release/yaqa "$bin/yaqa"
cp target/release/examples/synth_checkpoint "$bin/synth_checkpoint"

timed() { # NAME CMD...: runs CMD, its peak RSS and wall time into WORK/NAME.time
    local name=$1
    shift
    echo "== $name: $*"
    /usr/bin/time -v -o "$work/$name.time" "$@"
    grep -E "Maximum resident|Elapsed" "$work/$name.time"
}

ckpt=$work/checkpoint
if [ ! -f "$ckpt/model.safetensors.index.json" ]; then
    rm -rf "$ckpt"
    timed synth "$bin/synth_checkpoint" "$ckpt" "$blocks"
fi
cp "$shared/fixtures/smollm2-135m/tokenizer.json" "$ckpt/tokenizer.json"

factors=$work/factors
if [ ! -f "$factors/calibration.safetensors" ] || [ -d "$factors.partial" ] || [ -d "$factors.groups" ]; then
    timed hessian "$bin/yaqa" hessian --model "$ckpt" --sketch b --n-seqs 2 --seq-len 256 \
        --max-memory 12G --out "$factors"
fi

out=$work/yaqa-int4.safetensors
if [ ! -f "$out" ]; then
    timed quantize "$bin/yaqa" quantize --model "$ckpt" --method yaqa --quantizer int4 \
        --factors "$factors" --max-memory 14G \
        --eval-text "$shared/data/austen/prideprejudice.txt" --eval-window 256 --eval-windows 4 \
        --out "$out"
fi
echo "== done: $out"
