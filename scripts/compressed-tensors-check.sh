#!/usr/bin/env bash
# An independent reader for `yaqa export --format compressed-tensors`: the compressed-tensors package
# itself (pinned below, the release whose layout docs/FORMAT.md follows) decompresses the exported
# checkpoint, and every dense weight it returns must equal yaqa's own dequantization exactly.
#
#   scripts/compressed-tensors-check.sh MODEL QUANTIZED [WORK]
#
# MODEL is the original checkpoint (GGUF file or Hugging Face folder), QUANTIZED a file made by
# `yaqa quantize --no-incoherence` (int4/int8, --group G or per row; or fp8, fp8-row, fp8-tensor). The
# script exports QUANTIZED twice into WORK (default target/ct-check): as compressed-tensors, and as the
# dequantized bf16 checkpoint (`--format bf16`, yaqa's Ŵ rounded to bf16 to nearest-even). The package
# decompresses every quantized layer to float32 (the scales are f32, so that is the file's Ŵ if the
# layout is right); rounded to bf16 it must equal the bf16 export bit for bit, and every other tensor
# must be identical. One wrong bit, field order or zero-point fails the comparison.
#
# Environment: YAQA (a yaqa binary; default: `cargo build --release` into target/), PYTHON (python3 ≥
# 3.10), CT_VENV (default target-py/ct-venv), TORCH_INDEX_URL (an index with CPU-only torch wheels,
# for example PyTorch's own CPU index; default: PyPI, whose Linux x86-64 torch wheel (539 MB for 2.15.0)
# does not import without its CUDA wheels, well over 1 GB more; nothing is installed when the pinned versions
# already import). Run it niced: once the environment exists, decompressing and comparing SmolLM2-135M
# took 13–35 s per export on a shared 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

ct_version=0.20.1
torch_version=2.15.0

if [[ $# -lt 2 || $# -gt 3 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
model=$1
quantized=$2
work=${3:-target/ct-check}
python=${PYTHON:-python3}
venv=${CT_VENV:-target-py/ct-venv}

if [[ -n ${YAQA:-} ]]; then
  yaqa=$YAQA
else
  echo "== cargo build --release -p yaqa-cli"
  cargo build --release --locked -p yaqa-cli
  yaqa=${CARGO_TARGET_DIR:-target}/release/yaqa
fi

if [[ ! -x $venv/bin/python ]]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
# Installed only when the pinned versions do not import already (so a prepared environment needs no
# network).
if ! "$venv/bin/python" -c "
import sys, torch, compressed_tensors
sys.exit(not (torch.__version__.split('+')[0] == '$torch_version'
              and compressed_tensors.__version__ == '$ct_version'))" 2>/dev/null; then
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  echo "== pip install torch==$torch_version ${TORCH_INDEX_URL:+(from $TORCH_INDEX_URL)}"
  if [[ -n ${TORCH_INDEX_URL:-} ]]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==$torch_version"
  else
    "${pip[@]}" "torch==$torch_version"
  fi
  echo "== pip install compressed-tensors==$ct_version"
  "${pip[@]}" "compressed-tensors==$ct_version"
fi

rm -rf "$work/ct" "$work/bf16"
mkdir -p "$work"
echo "== yaqa export --format compressed-tensors → $work/ct"
"$yaqa" export --format compressed-tensors --model "$model" --quantized "$quantized" --out "$work/ct"
echo "== yaqa export --format bf16 → $work/bf16"
"$yaqa" export --format bf16 --model "$model" --quantized "$quantized" --out "$work/bf16"

echo "== decompressing with compressed-tensors $ct_version"
"$venv/bin/python" - "$work/ct" "$work/bf16" "$ct_version" <<'EOF'
import json
import sys
import time

import compressed_tensors
import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file

ct_dir, ref_dir, pinned = sys.argv[1:4]
assert compressed_tensors.__version__ == pinned, compressed_tensors.__version__
start = time.time()
config = json.load(open(f"{ct_dir}/config.json"))
assert config["torch_dtype"] == config["dtype"] == "bfloat16", config
# The package's own validation of the quantization_config (strategies, group sizes, block structure).
qc = QuantizationConfig.model_validate(config["quantization_config"])
(scheme,) = qc.config_groups.values()
compressor = BaseCompressor.get_value_from_registry(qc.format)
params = compressor.compression_param_names(scheme)
print(f"format {qc.format}, compressor {compressor.__name__}, weights {scheme.weights}")

ct = load_file(f"{ct_dir}/model.safetensors")
ref = load_file(f"{ref_dir}/model.safetensors")
modules = sorted({k.rsplit(".", 1)[0] for k in ct if k.endswith(".weight_scale")})
assert modules, "no quantized layer found"
bad = 0
for module in modules:
    state = {p: ct[f"{module}.{p}"] for p in params if f"{module}.{p}" in ct}
    dense = compressor.decompress(state, scheme)["weight"]
    expected = ref[f"{module}.weight"]
    if dense.dtype != torch.float32 or dense.shape != expected.shape:
        print(f"{module}: decompressed {dense.dtype} {tuple(dense.shape)}, bf16 export {tuple(expected.shape)}")
        bad += 1
        continue
    differ = (dense.to(torch.bfloat16) != expected).sum().item()
    if differ:
        print(f"{module}: {differ} of {dense.numel()} weights differ from yaqa's dequantization")
        bad += 1
quantized = {f"{m}.weight" for m in modules}
others = [k for k in ref if k not in quantized]
for name in others:
    if name not in ct or not torch.equal(ct[name], ref[name]):
        print(f"{name}: differs from the bf16 export")
        bad += 1
print(
    f"{len(modules)} quantized layers decompressed and compared, {len(others)} other tensors compared, "
    f"{bad} mismatches ({time.time() - start:.1f} s)"
)
sys.exit(1 if bad else 0)
EOF
