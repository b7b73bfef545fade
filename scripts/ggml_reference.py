"""Writes crates/yaqa-model/tests/data/ggml_reference.safetensors: llama.cpp's own quantization of a
fixed f32 matrix, the bytes that tests/ggml_reference.rs checks `GgmlBlocks` + round-to-nearest +
`encode_blocks` against, and those bytes dequantized by the PyPI package `gguf` (llama.cpp's gguf-py),
which it checks the GGUF reader's `dequantize` against (Q6_K included: the reader loads Q4_K_M files).

    target-py/llama-venv/bin/python scripts/ggml_reference.py

Uses libggml-base from llama-cpp-python 0.3.36 (the venv scripts/gguf-llamacpp.sh builds) through ctypes:
`ggml_quantize_chunk(type, src, dst, 0, rows, n_per_row, NULL)`, which with no importance matrix is
`quantize_row_*_ref` (the reference quantizer `llama-quantize` runs). The matrix, 8 × 512, is seeded
Gaussian with the cases that decide llama.cpp's choices planted in it: an outlier, a tie of magnitude
between signs, an all-zero block, a constant block, a sub-block far smaller than its neighbours (its Q4_K
6-bit scale rounds to 0) and an all-positive sub-block.
"""
import ctypes
import json
import pathlib
import struct
import sys

import numpy as np
import llama_cpp
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

TYPES = {"q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q4_k": 12, "q6_k": 14}
BLOCK = {
    "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q4_k": (256, 144),
    "q6_k": (256, 210),
}

lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
lib.ggml_quantize_chunk.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
    ctypes.c_void_p,
]

rows, n = 8, 512
x = (np.random.default_rng(7).standard_normal((rows, n)) * 0.02).astype(np.float32)
x[0, 3] = 0.3
x[1, 32], x[1, 39] = -0.1, 0.1
x[2, 64:96] = 0.0
x[3, 96:128] = -0.05
x[4, 256:288] *= 1e-3
x[5, 288:320] = np.abs(x[5, 288:320]) + 0.01
x[6, :] *= np.repeat(np.arange(1, 17, dtype=np.float32), 32)
x = np.ascontiguousarray(x)

tensors = {"x": ("F32", [rows, n], x.tobytes())}
for name, t in TYPES.items():
    per, size = BLOCK[name]
    out = np.zeros(rows * (n // per) * size, dtype=np.uint8)
    wrote = lib.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert wrote == out.size, (name, wrote, out.size)
    tensors[name] = ("U8", [rows, n // per * size], out.tobytes())
    # gguf-py's dequantization (llama.cpp's Python reader) of those bytes, for the GGUF reader's test.
    deq = dequantize(out.reshape(rows, -1), GGMLQuantizationType(t)).astype(np.float32)
    tensors[f"{name}.dequantized"] = ("F32", [rows, n], np.ascontiguousarray(deq).tobytes())

header, offset = {"__metadata__": {"llama_cpp_python": llama_cpp.__version__}}, 0
for name, (dtype, shape, data) in tensors.items():
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "crates/yaqa-model/tests/data/ggml_reference.safetensors")
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for _, _, data in tensors.values():
        f.write(data)
print(f"wrote {path} ({path.stat().st_size} bytes)")
