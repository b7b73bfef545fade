#!/usr/bin/env bash
# Long fuzzing of every reader of outside files with cargo-fuzz (libFuzzer + AddressSanitizer), beside the
# seeded in-suite mutation fuzz that CI runs (`mutated_files_never_panic_a_reader` in
# crates/yaqa-model/tests/bad_files.rs). Usage:
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     # default 600 s, every target
#
# Targets (fuzz/fuzz_targets/): gguf hf_safetensors hf_config quantized factors calibration tokenizer.
# Seeds are the in-suite fuzz's valid files (written by that test with YAQA_FUZZ_SEEDS) and
# fuzz/seeds/; the corpus grows in fuzz/corpus/<target>/ and carries over between runs. Each target runs
# on one core. A crash is saved in fuzz/artifacts/<target>/ and the script exits non-zero; replay it with
# `cargo +nightly fuzz run <target> <file>` and make it a case in bad_files.rs.
#
# cargo-fuzz needs a nightly toolchain (sanitizer flags); without one, the stable toolchain is used with
# RUSTC_BOOTSTRAP=1. cargo-fuzz itself is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf hf_safetensors hf_config quantized factors calibration tokenizer)

if rustup run nightly rustc --version > /dev/null 2>&1; then
    cargo_fuzz=(cargo +nightly fuzz)
else
    echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
fi
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked

echo "== seeds"
YAQA_FUZZ_SEEDS="$PWD/fuzz/corpus" cargo test -q -p yaqa-model --test bad_files \
    mutated_files_never_panic_a_reader > /dev/null
for d in fuzz/seeds/*/; do
    mkdir -p "fuzz/corpus/$(basename "$d")"
    cp "$d"* "fuzz/corpus/$(basename "$d")/"
done

echo "== build"
"${cargo_fuzz[@]}" build -O 2>&1 | tail -1

mkdir -p fuzz/logs
status=0
printf '%-16s %12s %8s %10s %s\n' target executions seconds corpus result
for t in "${targets[@]}"; do
    log="fuzz/logs/$t.log"
    mkdir -p "fuzz/artifacts/$t"
    if "${cargo_fuzz[@]}" run -O "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log and fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "$secs")
    printf '%-16s %12s %8s %10s %s\n' "$t" "$runs" "$took" "$(ls "fuzz/corpus/$t" | wc -l)" "$result"
done
exit $status
