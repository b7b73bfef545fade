#!/usr/bin/env bash
# Issue #23 item 4, where YAQA's gain goes: every layer type of SmolLM2-135M quantized alone (the other
# six kept at the original's precision with `--override`), with LDLQ and with YAQA-B, from README's
# table factors (WORK/factors: 256 × 512 tokens of the five calibration novels, Sketch B and Σ x xᵀ),
# plus both methods on every layer; then one `yaqa eval` of all of them on the same windows of
# prideprejudice.txt. Each quantize report (per-layer proxy errors) is OUT/<method>-<type>.json.
# BITS (default 3), WINDOWS (default 16 × 512 tokens). Finished runs are skipped, so rerunning resumes.
# Needs ../shared and a release build; FACTORS defaults to the KL table's folder.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
bits=${BITS:-3}
windows=${WINDOWS:-16}
factors=${FACTORS:-.yaqa-cache/kl-table-1024/factors}
out=${OUT:-.yaqa-cache/layer-contribution}/int$bits
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/yaqa}
fixture="$shared/fixtures/smollm2-135m"
model=(--model "$fixture/SmolLM2-135M-Instruct.Q4_1.gguf")
mkdir -p "$out"
files=()
for method in ldlq yaqa; do
  for type in q_proj k_proj v_proj o_proj gate_proj up_proj down_proj all; do
    name=$method-$type
    files+=("$out/$name.safetensors")
    [[ -f $out/$name.safetensors ]] && continue
    only=()
    [[ $type != all ]] && only=(--override "$type=method:$method" --override ".=keep")
    "$bin" quantize "${model[@]}" --factors "$factors" --method "$method" --quantizer "int$bits" \
      "${only[@]}" --no-eval --out "$out/$name.safetensors" --json "$out/$name.json" \
      > "$out/$name.log" 2>&1
    tail -n 1 "$out/$name.log" | sed "s/^/$name: /"
  done
done
[[ -f $out/eval.json ]] || "$bin" eval "${model[@]}" --tokenizer "$fixture/tokenizer.json" \
  --quantized "${files[@]}" --text "$shared/data/austen/prideprejudice.txt" --window 512 \
  --n-windows "$windows" --json "$out/eval.json" 2>&1 | grep -v '^\s*\['
