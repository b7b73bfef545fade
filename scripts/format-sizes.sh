#!/usr/bin/env bash
# File sizes and bits per weight of every export format on SmolLM2-135M, next to the originals (issue #21).
# Round-to-nearest is enough (sizes do not depend on the method): one 32-token calibration sequence, then
# each export. Bits per weight count the linear layers' tensors only (codes, scales, zero-points, block
# headers) over their weights; the file size includes everything (embedding, norms, tokenizer for GGUF).
# Writes under OUT (.yaqa-cache/format-sizes); prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
out=${OUT:-.yaqa-cache/format-sizes}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/yaqa}
fixture="$shared/fixtures/smollm2-135m"
model="$fixture/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$out"
q() { # name, quantize flags...
  local name=$1; shift
  [[ -f $out/$name.safetensors ]] || "$bin" quantize --model "$model" --tokenizer "$fixture/tokenizer.json" \
    --calib "$shared/data/austen/emma.txt" --n-seqs 1 --seq-len 32 --method rtn --no-eval \
    --out "$out/$name.safetensors" "$@" > "$out/$name.log" 2>&1
}
x() { # quantized name, format, out
  [[ -e $out/$3 ]] || "$bin" export --model "$model" --quantized "$out/$1.safetensors" --format "$2" \
    --out "$out/$3" > /dev/null 2>&1
}
[[ -d $out/f32 ]] || "$bin" convert --model "$model" --out "$out/f32" > /dev/null 2>&1
q int4-g64 --quantizer int4 --group 64 --no-incoherence
q int8-row --quantizer int8 --no-incoherence
q int4-inc --quantizer int4
q fp8-row --quantizer fp8-row --no-incoherence
q q4_0 --quantizer q4_0 --no-incoherence
q q8_0 --quantizer q8_0 --no-incoherence
q q4_k --quantizer q4_k --override '(self_attn|gate_proj|up_proj)=quantizer:q5_0' --no-incoherence
x int4-inc bf16 bf16
x int4-g64 gptq gptq-int4-g64
x int4-g64 compressed-tensors ct-int4-g64
x int8-row compressed-tensors ct-int8-row
x fp8-row compressed-tensors ct-fp8-row
x q4_0 gguf q4_0.gguf
x q8_0 gguf q8_0.gguf
x q4_k gguf q4_k_s.gguf
target-py/venv/bin/python - "$model" "$out" <<'PY'
import json, os, struct, sys
from gguf import GGUFReader

model, out = sys.argv[1:]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_LINEAR = ("attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down.")


def size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def st_linear(path):
    """(bytes, weights) of the linear layers in a safetensors file or folder."""
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")] \
        if os.path.isdir(path) else [path]
    nbytes = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__" and any(f".{l}." in name or name.endswith(f".{l}") for l in LINEAR):
                a, b = info["data_offsets"]
                nbytes += b - a
    return nbytes


def gguf_linear(path):
    r = GGUFReader(path)
    nbytes = weights = 0
    for t in r.tensors:
        if any(k in t.name for k in GGUF_LINEAR):
            nbytes += int(t.n_bytes)
            weights += int(t.n_elements)
    return nbytes, weights


orig_bytes, weights = gguf_linear(model)
rows = [("original GGUF (fixture, Q4_1 linear)", model, orig_bytes)]
rows.append(("f32 HF folder (`convert`)", f"{out}/f32", st_linear(f"{out}/f32")))
rows.append(("bf16 HF (`export`, dequantized)", f"{out}/bf16", st_linear(f"{out}/bf16")))
rows.append(("yaqa file, INT4 incoherent (`quantize`)", f"{out}/int4-inc.safetensors", st_linear(f"{out}/int4-inc.safetensors")))
rows.append(("GPTQ INT4 g64", f"{out}/gptq-int4-g64", st_linear(f"{out}/gptq-int4-g64")))
rows.append(("compressed-tensors INT4 g64", f"{out}/ct-int4-g64", st_linear(f"{out}/ct-int4-g64")))
rows.append(("compressed-tensors INT8 per row", f"{out}/ct-int8-row", st_linear(f"{out}/ct-int8-row")))
rows.append(("compressed-tensors FP8 per row", f"{out}/ct-fp8-row", st_linear(f"{out}/ct-fp8-row")))
for name, f in [("GGUF Q8_0", "q8_0.gguf"), ("GGUF Q4_0", "q4_0.gguf"), ("GGUF Q4_K (+ Q5_0 fallback)", "q4_k_s.gguf")]:
    rows.append((name, f"{out}/{f}", gguf_linear(f"{out}/{f}")[0]))
print(f"linear weights: {weights}")
print("| format | file size (MiB) | linear layers (MiB) | bits per linear weight |")
print("| --- | --- | --- | --- |")
for name, path, b in rows:
    print(f"| {name} | {size(path) / 2**20:.1f} | {b / 2**20:.1f} | {8 * b / weights:.3f} |")
PY
