"""llama.cpp's own quantization of a GGUF model, for comparison with yaqa's roundings on the same grids.

    llamacpp_quantize.py ORIGINAL.gguf OUT.gguf TYPE

TYPE is q4_0 or q4_k_s. Runs `llama_model_quantize` (the library behind `llama-quantize`) from
llama-cpp-python with `pure` (every linear layer gets TYPE, no k-quant mixture; llama.cpp itself falls
back to q5_0 for Q4_K tensors whose rows are not whole super-blocks of 256), no importance matrix, the
token embedding kept at q8_0 (the fixture's own type, which `yaqa export --format gguf` copies) and
`allow_requantize` (the fixture is itself quantized: llama.cpp dequantizes it to f32 first, as yaqa does).
Prints each tensor type's count in the result.
"""
import sys
from collections import Counter

import llama_cpp
from gguf import GGUFReader

original, out, kind = sys.argv[1:]
ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q4_k_s": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S}[kind]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.pure = True
p.allow_requantize = True
p.token_embedding_type = 8  # GGML_TYPE_Q8_0
p.nthread = 2
rc = llama_cpp.llama_model_quantize(original.encode(), out.encode(), p)
if rc != 0:
    sys.exit(f"llama_model_quantize failed: {rc}")
types = Counter(t.tensor_type.name for t in GGUFReader(out).tensors)
print(f"{out}: " + ", ".join(f"{v} {k}" for k, v in sorted(types.items())))
