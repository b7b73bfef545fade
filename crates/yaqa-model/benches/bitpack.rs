//! Bit-packing a 4096 × 14336 layer's codes (Llama-3-8B's `down_proj` shape, transposed for `up_proj`)
//! at 2, 3 and 4 bits, both ways: `pack_rows` (u16 codes to the quantized file's packed rows) and
//! `unpack_rows` (back to one `u16` per code).
//!
//! Cost model: 58.7M codes; packing reads 2 bytes and writes k/8 bytes per code, unpacking reads k/8 and
//! writes 2, so both move 60–150 MB and stay well under 0.1 s on one core at a few GB/s; the bench is
//! here to show that the packing never matters next to writing the file.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use yaqa_model::formats::bitpack::{pack_rows, unpack_rows};

const ROWS: usize = 4096;
const COLS: usize = 14336;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("bitpack 4096x14336");
    group.sample_size(10);
    group.throughput(Throughput::Elements((ROWS * COLS) as u64));
    for bits in [2u32, 3, 4] {
        let mut rng = yaqa_core::Rng::derive(u64::from(bits), "bitpack-bench");
        let codes: Vec<u16> = (0..ROWS * COLS)
            .map(|_| rng.below(1u64 << bits) as u16)
            .collect();
        let packed = pack_rows(&codes, ROWS, COLS, bits).unwrap();
        group.bench_function(format!("pack int{bits}"), |b| {
            b.iter(|| pack_rows(&codes, ROWS, COLS, bits).unwrap())
        });
        group.bench_function(format!("unpack int{bits}"), |b| {
            b.iter(|| unpack_rows(&packed, ROWS, COLS, bits).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
