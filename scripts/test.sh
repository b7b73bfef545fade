#!/usr/bin/env bash
# The whole test suite, as README.md gives it and as CI runs it (.ci/run): formatting, lints, every test
# of the workspace (the SmolLM2 tests read ../shared/fixtures; with CI=true they fail if it is missing),
# and the NVRTC compile check of every CUDA kernel (no GPU needed; NVRTC comes from its PyPI wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast

echo "== CUDA kernels compile with NVRTC"
cargo xtask nvrtc-check
