#!/usr/bin/env bash
# Issue #20 at a budget two CPU cores afford: the trellis encodes 2·2^16 states per weight, so SmolLM2's
# 414k tiles take about three core-hours per run (docs/BENCHMARKS.md, "QTIP trellis"). Instead, one
# block (BLOCK, default 15) is quantized at 2 bits with each quantizer (int2, e8p, trellis2) and each of
# LDLQ and YAQA-B, every other layer kept at the original's precision (`--override`), from README's
# table factors; then one `yaqa eval` of all six on the same windows of prideprejudice.txt.
# BITS=3 runs int3 and trellis3 instead. BLOCK=all quantizes the whole model (about 1.5 hours per
# trellis run on two idle cores, resumable per layer) and evaluates on README's 64 windows. Finished runs
# are skipped and a killed quantize continues at its next layer, so rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
block=${BLOCK:-15}
bits=${BITS:-2}
if [[ $block == all ]]; then windows=${WINDOWS:-64}; else windows=${WINDOWS:-16}; fi
factors=${FACTORS:-.yaqa-cache/kl-table-1024/factors}
out=${OUT:-.yaqa-cache/trellis-block}/block$block-$bits
if [[ $block == all ]]; then
  only=()
else
  only=(--override "^model\\.layers\\.$block\\.=method:METHOD" --override ".=keep")
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/yaqa}
fixture="$shared/fixtures/smollm2-135m"
model=(--model "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf")
case $bits in
  2) quantizers="int2 e8p trellis2" ;;
  3) quantizers="int3 trellis3" ;;
  *) echo "BITS must be 2 or 3" >&2; exit 2 ;;
esac
mkdir -p "$out"
files=()
for q in $quantizers; do
  for method in ldlq yaqa; do
    name=$method-$q
    files+=("$out/$name.safetensors")
    [[ -f $out/$name.safetensors ]] && continue
    /usr/bin/time -f "$name: %e s wall, %M KB peak" "$bin" quantize "${model[@]}" \
      --factors "$factors" --method "$method" --quantizer "$q" "${only[@]/METHOD/$method}" \
      --no-eval --out "$out/$name.safetensors" --json "$out/$name.json" > "$out/$name.log" 2>&1
    tail -n 2 "$out/$name.log"
  done
done
[[ -f $out/eval.json ]] || "$bin" eval "${model[@]}" --tokenizer "$fixture/tokenizer.json" \
  --quantized "${files[@]}" --text "$shared/data/austen/prideprejudice.txt" --window 512 \
  --n-windows "$windows" --json "$out/eval.json" 2>&1 | grep -v '^\s*\['
