//! The randomized Hadamard incoherence rotation (DESIGN.md §3.2) on the CPU backend at real shapes
//! (STYLE.md "Speed"): Llama-3-8B's MLP weights, 4096 × 14336 rotated along its 14336 columns and
//! 14336 × 4096 along its 14336 rows (14336 = 28·512, Paley I base over GF(27)); 4096 × 11008 (Llama-2-7B,
//! 11008 = 344·32, the largest base any supported model needs); SmolLM2's 576 × 1536 on both sides; and
//! the f64 factor rotation at SmolLM2's n = 1536. Throughput is the size of `W` in bytes (each iteration
//! reads and writes it once in place).
//!
//! Counts for 4096 × 14336 (either side: 4096 vectors of 14336): butterflies `n·log₂ 512 = 9n` adds, the
//! 28 × 28 mix `28n` multiply-adds, so 4096 · 14336 · (9 + 28) ≈ 2.2 G operations (1.6 G of them FMAs),
//! and 2 × 235 MB of memory traffic. On the 2 AVX2 cores of the development machine (≈ 96 G f32 FMA/s
//! peak, ≈ 15 GB/s) that predicts ≈ 20 ms of arithmetic against ≈ 30 ms of traffic: 40–60 ms, bound by
//! memory; the rows side pays extra in-cache strip copies. At 11008 the mix is 344 terms per entry:
//! 4096 · 11008 · 344 ≈ 15.5 G FMAs, ≈ 160 ms at peak.
//!
//! Measured 2026-11-23 on those 2 cores while other jobs kept the load average at 3–4 (so pessimistic):
//! cols 4096 × 14336 121 ms (scalar path 259 ms), rows 14336 × 4096 387 ms (scalar 529 ms), cols
//! 4096 × 11008 589 ms, SmolLM2 576 × 1536 1.2 ms (cols) / 2.1 ms (rows), factor n = 1536 27 ms. Against
//! the prediction: cols is 2–3× off (single-threaded it measured ≈ 180 ms, so the arithmetic, not memory,
//! is the limit: the mix runs near one FMA per cycle and the first three butterfly stages are scalar);
//! rows pays three in-cache copies per batch on top; 11008's 344-term mix overflows L1 per row, and would
//! be better done as a blocked GEMM over batches of rows.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use yaqa::core::hadamard::sign_vector;
use yaqa::core::{Backend, Mat, Rng, Side, SymMat};
use yaqa::cpu::Cpu;

/// Gaussian weights with a few outlier columns; the transform's speed does not depend on the values,
/// but finite, realistic magnitudes keep the repeated in-place rotation well scaled.
fn weights(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut rng = Rng::new(seed);
    Mat::from_fn(rows, cols, |_, j| {
        let outlier = if j % 101 == 7 { 10.0 } else { 1.0 };
        (outlier * rng.normal() * 0.02) as f32
    })
}

fn bench_rotate(c: &mut Criterion) {
    let mut group = c.benchmark_group("hadamard-rotate");
    group.sample_size(10);
    let cases: [(&str, usize, usize, Side, Cpu); 7] = [
        ("cols", 4096, 14336, Side::Cols, Cpu::default()),
        ("cols-scalar", 4096, 14336, Side::Cols, Cpu::scalar()),
        ("rows", 14336, 4096, Side::Rows, Cpu::default()),
        ("rows-scalar", 14336, 4096, Side::Rows, Cpu::scalar()),
        ("cols", 4096, 11008, Side::Cols, Cpu::default()),
        ("cols", 576, 1536, Side::Cols, Cpu::default()),
        ("rows", 576, 1536, Side::Rows, Cpu::default()),
    ];
    for (name, m, n, side, cpu) in cases {
        let mut w = weights(m, n, 1);
        let dim = if side == Side::Cols { n } else { m };
        let signs = sign_vector(0, "bench", dim);
        group.throughput(Throughput::Bytes((m * n * size_of::<f32>()) as u64));
        group.bench_function(BenchmarkId::new(name, format!("{m}x{n}")), |b| {
            b.iter(|| {
                cpu.hadamard_rotate(&mut w, side, &signs, false)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.finish();
}

fn bench_rotate_factor(c: &mut Criterion) {
    let mut group = c.benchmark_group("hadamard-rotate-factor");
    group.sample_size(10);
    let n = 1536;
    let mut rng = Rng::new(2);
    let mut h = SymMat::identity(n);
    for v in &mut h.data {
        *v += 0.01 * rng.normal();
    }
    let signs = sign_vector(0, "bench-factor", n);
    group.throughput(Throughput::Bytes((n * n * size_of::<f64>()) as u64));
    group.bench_function(BenchmarkId::new("f64", n), |b| {
        b.iter(|| {
            Cpu::default()
                .rotate_factor(&h, &signs)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_rotate, bench_rotate_factor);
criterion_main!(benches);
