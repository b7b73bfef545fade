#!/usr/bin/env python3
"""Checks a GGUF file written by `yaqa export --format gguf` with an independent reader.

    gguf_check.py EXPORTED.gguf QUANTIZED.safetensors ORIGINAL.gguf

The PyPI package `gguf` (llama.cpp's own Python reader, `gguf.quants.dequantize`) dequantizes every
tensor of EXPORTED.gguf. Each quantized linear layer must equal, bit for bit, the dequantization of
QUANTIZED.safetensors (yaqa's quantized file) computed here with numpy straight from docs/FORMAT.md
(codes bit-packed per row, least significant bits first; `ggml` layers: level `d·q` for q8_0 with `q`
the code as a signed byte, `d·(c − 8)` for q4_0, `d·(c − 16)` for q5_0, `c·d + m` for q4_1, scales and
minimums per row and 32 columns; for q4_k `(d·sc)·c − dmin·m` with `d`, `dmin` per 256 columns and the
6-bit `sc`, `m` per 32), after undoing llama.cpp's Q/K row permutation. Every other tensor must hold the same bytes as
in ORIGINAL.gguf, and the tokenizer metadata must be the original's. Exits non-zero on any difference.
"""

import json
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

BLOCK = 32
MODULES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def read_safetensors(path):
    """Tensors (as raw dtype/shape/bytes) and the `yaqa` JSON header of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["yaqa"])
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], body[start:end])
    return tensors, meta


def array(tensors, name, dtype):
    kind, shape, raw = tensors[name]
    want = {"U8": np.uint8, "F32": np.float32}[kind]
    assert want == dtype, f"{name}: dtype {kind}"
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def yaqa_dequantize(tensors, layers, name):
    """A `ggml` layer of the quantized file, from FORMAT.md, in f32 with the same operations."""
    entry = layers[name]
    m, n = entry["m"], entry["n"]
    q = entry["quantizer"]
    assert q["kind"] == "ggml", f"{name}: quantizer {q}"
    assert not entry["incoherence"], f"{name}: rotated"
    fmt, bits = q["format"], entry["code_bits"]
    packed = array(tensors, f"{name}.codes", np.uint8)
    # Row-wise bit-packing, least significant bit first.
    bitrows = np.unpackbits(packed, axis=1, bitorder="little")[:, : n * bits].reshape(m, n, bits)
    codes = (bitrows.astype(np.int32) << np.arange(bits, dtype=np.int32)).sum(axis=2)
    if fmt == "q4_k":
        d = np.repeat(array(tensors, f"{name}.scales", np.float32), 8, axis=1)
        dmin = np.repeat(array(tensors, f"{name}.mins", np.float32), 8, axis=1)
        step = np.repeat(d * array(tensors, f"{name}.sub_scales", np.float32), BLOCK, axis=1)
        offset = np.repeat(dmin * array(tensors, f"{name}.sub_mins", np.float32), BLOCK, axis=1)
        return step * codes.astype(np.float32) - offset
    d = np.repeat(array(tensors, f"{name}.scales", np.float32), BLOCK, axis=1)
    if fmt == "q8_0":
        return d * codes.astype(np.uint8).view(np.int8).astype(np.float32)
    if fmt == "q4_0":
        return (codes - 8).astype(np.float32) * d
    if fmt == "q5_0":
        return (codes - 16).astype(np.float32) * d
    mins = np.repeat(array(tensors, f"{name}.mins", np.float32), BLOCK, axis=1)
    return codes.astype(np.float32) * d + mins


def unpermute(w, n_head):
    """llama.cpp's Q/K rows back to Hugging Face order: GGUF row h·hd + 2i + k is HF row h·hd + k·hd/2 + i."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]].tolist()[0]


def main(exported, quantized, original):
    out = GGUFReader(exported)
    src = GGUFReader(original)
    tensors, meta = read_safetensors(quantized)
    layers = meta["layers"]
    heads = {
        "attn_q": field(out, "llama.attention.head_count"),
        "attn_k": field(out, "llama.attention.head_count_kv"),
    }
    for key in src.fields:
        if key.startswith("tokenizer.") or key.startswith("llama."):
            a, b = out.fields[key], src.fields[key]
            same = len(a.data) == len(b.data) and all(
                np.array_equal(a.parts[i], b.parts[j]) for i, j in zip(a.data, b.data)
            )
            assert same, f"metadata {key} differs from the original's"
    src_tensors = {t.name: t for t in src.tensors}
    counts = {}
    for t in out.tensors:
        kind = t.tensor_type.name
        parts = t.name.split(".")
        if parts[0] == "blk" and parts[2] in MODULES:
            name = f"model.layers.{parts[1]}.{MODULES[parts[2]]}"
            w = dequantize(t.data, t.tensor_type).reshape(list(reversed(t.shape.tolist())))
            w = np.ascontiguousarray(w, dtype=np.float32)
            if parts[2] in heads:
                w = unpermute(w, heads[parts[2]])
            want = yaqa_dequantize(tensors, layers, name)
            if not np.array_equal(w.view(np.uint32), want.view(np.uint32)):
                bad = np.argwhere(w.view(np.uint32) != want.view(np.uint32))[0]
                sys.exit(f"{t.name} ({kind}): differs at {bad.tolist()}: gguf {w[tuple(bad)]!r}, yaqa {want[tuple(bad)]!r}")
            counts[f"linear {kind}"] = counts.get(f"linear {kind}", 0) + 1
        else:
            s = src_tensors[t.name]
            assert s.tensor_type == t.tensor_type and bytes(s.data) == bytes(t.data), f"{t.name} differs"
            counts[f"copied {kind}"] = counts.get(f"copied {kind}", 0) + 1
    linear = sum(v for k, v in counts.items() if k.startswith("linear"))
    assert linear == len(layers), f"{linear} linear tensors, {len(layers)} layers in the quantized file"
    print(f"{exported}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + " — identical")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
