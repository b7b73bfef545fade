#!/usr/bin/env bash
# KL of GGUF exports to their original as llama.cpp itself computes it, next to `yaqa eval`'s figure.
#
#   scripts/gguf-llamacpp.sh ORIGINAL.gguf EXPORTED.gguf...
#
# Installs llama-cpp-python from PyPI into target-py/llama-venv (it builds llama.cpp from source with
# CMake: about 9 minutes on two shared cores the first time; the build runs under nice -n 10), then runs the
# original and each export through llama.cpp on README's evaluation windows: prideprejudice.txt
# tokenized whole by the fixture's tokenizer.json (the `tokenizers` package, the tokenizer `yaqa eval`
# uses), the first 64 windows of 512 tokens, no BOS, every position of every window. Prints the mean
# KL(original ‖ export) per token. llama.cpp computes with its own kernels (on CPU it quantizes the
# activations to 8 bits for quantized weights, the original's Q4_1 included), so its figure is the
# deployed one and differs from `yaqa eval`'s f32 figure by that noise, for the original as well.
# SHARED=path overrides ../shared; N_WINDOWS and WINDOW override 64 and 512.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { sed -n '2,14p' "$0"; exit 2; }
shared=${SHARED:-../shared}
text="$shared/data/austen/prideprejudice.txt"
tokenizer="$shared/fixtures/smollm2-135m/tokenizer.json"
venv=target-py/llama-venv
python=${PYTHON:-python3}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
if ! "$venv/bin/python" -c 'import llama_cpp, tokenizers, numpy' 2>/dev/null; then
  echo "== building llama-cpp-python (llama.cpp from source) into $venv" >&2
  CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2} nice -n 10 "$venv/bin/python" -m pip install \
    --disable-pip-version-check llama-cpp-python==0.3.36 tokenizers==0.23.2 \
    "numpy==2.4.6; python_version >= '3.11'" "numpy==1.26.4; python_version < '3.11'"
fi
exec nice -n 10 "$venv/bin/python" - "$text" "$tokenizer" "${N_WINDOWS:-64}" "${WINDOW:-512}" "$@" <<'EOF'
import sys
import time

import numpy as np
from llama_cpp import Llama
from tokenizers import Tokenizer

text, tok, n_windows, window, original, *exports = sys.argv[1:]
n_windows, window = int(n_windows), int(window)
ids = Tokenizer.from_file(tok).encode(open(text, encoding="utf-8").read(), add_special_tokens=False).ids
assert len(ids) >= n_windows * window, f"{text}: {len(ids)} tokens"
windows = [ids[i * window:(i + 1) * window] for i in range(n_windows)]


def log_probs(path):
    llm = Llama(model_path=path, n_ctx=window, n_batch=window, logits_all=True, n_threads=2, verbose=False)
    out = []
    for w in windows:
        llm.reset()
        llm.eval(w)
        z = np.array(llm.scores[: len(w)], dtype=np.float64)
        z -= z.max(axis=1, keepdims=True)
        out.append(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))
    return out


t0 = time.time()
ref = log_probs(original)
print(f"original {original}: {n_windows} × {window} tokens in {time.time() - t0:.0f} s", flush=True)
for path in exports:
    t0 = time.time()
    lp = log_probs(path)
    per_window = [float((np.exp(a) * (a - b)).sum(axis=1).mean()) for a, b in zip(ref, lp)]
    kl = np.mean(per_window)
    se = np.std(per_window, ddof=1) / np.sqrt(len(per_window))
    print(f"{path}: llama.cpp KL {kl:.5f} ± {se:.5f} ({time.time() - t0:.0f} s)", flush=True)
EOF
