#!/usr/bin/env bash
# The whole test suite, as README.md gives it and as CI runs it (.ci/run): formatting, lints, the
# cargo-fuzz targets' lints, the tidy checks (no import cycles, a thin CLI), every test of the workspace
# (the SmolLM2 tests read ../shared/fixtures; with CI=true they fail if it is missing), the Python package
# built as a wheel and tested with pytest in its own venv, an exported GGUF file checked by llama.cpp's
# Python reader (scripts/gguf-check.sh, in the same venv), and the NVRTC compile check of every CUDA
# kernel (no GPU needed; NVRTC comes from its PyPI wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== fuzz targets: fmt and clippy (without linking libFuzzer; scripts/fuzz.sh runs them)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
(cd fuzz && CARGO_TARGET_DIR=../target cargo clippy --locked --no-default-features --all-targets -- -D warnings)

echo "== cargo xtask tidy"
cargo xtask tidy

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast

echo "== Python package (maturin wheel, pytest)"
bash scripts/python-tests.sh

echo "== GGUF export read by llama.cpp's gguf-py (PyPI gguf)"
bash scripts/gguf-check.sh

echo "== CUDA kernels compile with NVRTC"
cargo xtask nvrtc-check
