#!/usr/bin/env bash
# `yaqa export --format gguf` checked by an independent reader: SmolLM2-135M (the fixture) quantized by
# round-to-nearest onto llama.cpp's q4_0 grid, and onto q4_k with q5_0 for the layers whose rows are not
# whole super-blocks (one 32-token calibration sequence: RTN only needs the
# factors' shapes), exported as GGUF, and read with the PyPI package `gguf` (llama.cpp's gguf-py):
# scripts/gguf_check.py asserts that every linear layer dequantizes bit for bit to the quantized file's
# levels as docs/FORMAT.md defines them, and that every other tensor and the tokenizer are the original's.
# Uses the venv of scripts/python-tests.sh (target-py/venv, created if missing) with gguf and numpy
# pinned; the yaqa binary is the debug build `cargo test` made (YAQA=path overrides). Needs ../shared
# (SHARED=path overrides): with CI=true a missing fixture fails, else the check is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
fixture="$shared/fixtures/smollm2-135m"
model="$fixture/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f $model ]]; then
  if [[ ${CI:-} == true ]]; then echo "missing $model" >&2; exit 1; fi
  echo "== gguf check skipped: no $model (set SHARED=path/to/shared)"
  exit 0
fi
python=${PYTHON:-python3}
venv=target-py/venv
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0 \
  "numpy==2.4.6; python_version >= '3.11'" "numpy==1.26.4; python_version < '3.11'"
yaqa=${YAQA:-}
if [[ -z $yaqa ]]; then
  # The test profile: the binary `cargo test` already built for the CLI's tests, not a rebuild.
  cargo build -q --profile test -p yaqa-cli
  yaqa=${CARGO_TARGET_DIR:-target}/debug/yaqa
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Q4_0 everywhere; then Q4_K with llama.cpp's Q5_0 fallback for the 576-wide layers.
for grid in q4_0 q4_k; do
  extra=()
  [[ $grid == q4_k ]] && extra=(--override '(self_attn|gate_proj|up_proj)=quantizer:q5_0')
  "$yaqa" quantize --model "$model" --tokenizer "$fixture/tokenizer.json" \
    --calib "$shared/data/austen/emma.txt" --n-seqs 1 --seq-len 32 \
    --method rtn --quantizer "$grid" "${extra[@]}" --no-incoherence --no-eval \
    --out "$work/$grid.safetensors" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  "$yaqa" export --model "$model" --quantized "$work/$grid.safetensors" --format gguf \
    --out "$work/$grid.gguf"
  "$venv/bin/python" scripts/gguf_check.py "$work/$grid.gguf" "$work/$grid.safetensors" "$model"
done
