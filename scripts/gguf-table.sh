#!/usr/bin/env bash
# Issue #21's must-show: YAQA-rounded GGUF files against llama.cpp's own quantization of SmolLM2-135M to
# the same block types, every KL measured by llama.cpp itself (scripts/gguf-llamacpp.sh).
#
# Two types: Q4_0 everywhere, and Q4_K as llama-quantize writes it for this model (its rows of 576 are
# not whole super-blocks of 256, so every layer but ffn_down falls back to Q5_0: 30 Q4_K and 180 Q5_0
# tensors; yaqa gets the same split with `--quantizer q4_k --override '(self_attn|gate_proj|up_proj)=
# quantizer:q5_0'`). llama.cpp's own files come from scripts/llamacpp_quantize.py (`llama_model_quantize`,
# pure, no importance matrix, token embedding kept at Q8_0 as yaqa's export copies it); yaqa's from
# `quantize --method rtn|ldlq|yaqa --no-incoherence` with README's table factors (FACTORS), exported
# with `export --format gguf`. Then llama.cpp evaluates the original and every file on the first
# N_WINDOWS (16) of README's windows. Files already made are kept, so rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
factors=${FACTORS:-.yaqa-cache/kl-table-1024/factors}
out=${OUT:-.yaqa-cache/gguf-table}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/yaqa}
fixture="$shared/fixtures/smollm2-135m"
original="$fixture/SmolLM2-135M-Instruct.Q4_1.gguf"
venv=target-py/llama-venv
mkdir -p "$out"
# The llama.cpp venv (built by gguf-llamacpp.sh on its first run) also needs gguf for the type counts.
[[ -x $venv/bin/python ]] || N_WINDOWS=1 bash scripts/gguf-llamacpp.sh "$original" "$original" >/dev/null
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0
files=()
for t in q4_0 q4_k_s; do
  f="$out/llamacpp-$t.gguf"
  [[ -f $f ]] || "$venv/bin/python" scripts/llamacpp_quantize.py "$original" "$f" "$t" 2>&1 | tail -n 1
  files+=("$f")
  case $t in
    q4_0) grid=(--quantizer q4_0) ;;
    q4_k_s) grid=(--quantizer q4_k --override '(self_attn|gate_proj|up_proj)=quantizer:q5_0') ;;
  esac
  for method in rtn ldlq yaqa; do
    name=$method-$t
    if [[ ! -f $out/$name.gguf ]]; then
      [[ -f $out/$name.safetensors ]] || /usr/bin/time -f "$name: %e s wall" "$bin" quantize \
        --model "$original" --factors "$factors" --method "$method" "${grid[@]}" --no-incoherence \
        --no-eval --out "$out/$name.safetensors" > "$out/$name.log" 2>&1
      "$bin" export --model "$original" --quantized "$out/$name.safetensors" --format gguf \
        --out "$out/$name.gguf" 2>&1 | head -n 1
    fi
    files+=("$out/$name.gguf")
  done
done
ls -l "$original" "${files[@]}"
N_WINDOWS=${N_WINDOWS:-16} bash scripts/gguf-llamacpp.sh "$original" "${files[@]}" | tee "$out/kl.txt"
