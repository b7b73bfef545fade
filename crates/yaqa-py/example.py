import sys

import yaqa

model = sys.argv[1]  # a GGUF file or a Hugging Face folder, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
report = yaqa.quantize(model, "model-ldlq-int4.safetensors", method="ldlq", bits=4,
                       n_seqs=8, seq_len=64, eval_windows=2, eval_window=64)
print(report["eval"])  # KL(original ‖ quantized) per token, perplexity, original perplexity
