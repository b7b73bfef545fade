#!/usr/bin/env bash
# scripts/nvrtc.sh: installs NVRTC (CUDA 12.9, from the PyPI wheel nvidia-cuda-nvrtc-cu12) into
# .yaqa-cache/nvrtc and prints the folder to put on LD_LIBRARY_PATH. NVRTC compiles CUDA C++ to PTX
# without a GPU or a driver, which is how CI checks the kernels in cuda/ (`cargo xtask nvrtc-check`).
# The wheel holds lib/libnvrtc.so.12 (found by cudarc under that name) and libnvrtc-builtins.so.12.9.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="$root/.yaqa-cache/nvrtc"
lib="$target/nvidia/cuda_nvrtc/lib"
if [[ ! -f "$lib/libnvrtc.so.12" ]]; then
    python3 -m pip install --disable-pip-version-check --quiet --no-deps --target "$target" \
        'nvidia-cuda-nvrtc-cu12==12.9.86' >&2
fi
for f in libnvrtc.so.12 libnvrtc-builtins.so.12.9; do
    [[ -f "$lib/$f" ]] || { echo "nvrtc.sh: $lib/$f missing after install" >&2; exit 1; }
done
echo "$lib"
