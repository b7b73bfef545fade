//! GPTQ INT4 on the CPU backend at real shapes (STYLE.md "Speed"): Llama's 4096 × 4096 and SmolLM2's
//! 576 × 1536 (out × in), with a structured SPD Hessian, next to DESIGN.md §8's anchor (0.83 s for
//! 4096² in PyTorch on an H100).
//!
//! Work for `m × n` with `n`-column `H`: the reversed Cholesky in f64 is `n³/3` multiply-adds (23 G at
//! n = 4096, 46 GFLOP; no inverse is formed, see `yaqa-backend-cpu/src/gptq.rs`), the lazy-block GEMMs
//! `m·n²` f32 multiply-adds (69 G at 4096², 137 GFLOP), the in-block rank-1 updates `m·n·B/2` (1 G for
//! B = 128). On 2 AVX2 cores (peak ≈ 190 GFLOP/s f32, 95 f64) at 60% of peak that predicts about
//! 0.8 s + 1.2 s ≈ 2 s for 4096². Measured with other jobs sharing the 2 cores (load 2–5): 3.5–4.4 s,
//! of which about 1.5 s Cholesky, 1.5 s GEMM, 0.35 s block phase and 0.5 s transposes.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use yaqa::core::quant::int::{IntSym, sym_grid_rms};
use yaqa::core::{Backend, GptqParams, Mat, SymMat, synthetic};
use yaqa::cpu::Cpu;

/// A structured SPD Hessian in `O(n²)`: per-feature gains `g` around a Kac–Murdock–Szegő correlation
/// `ρ^|i−j|` (positive definite for `|ρ| < 1`, decaying spectrum) plus a few low-rank spikes, as
/// activation Gram matrices have: `H = diag(g) (K + Σ_k a_k v_k v_kᵀ) diag(g)`.
fn structured_hessian(n: usize, seed: u64) -> SymMat {
    let mut rng = yaqa::core::Rng::new(seed);
    let rho: f64 = 0.9;
    let gains: Vec<f64> = (0..n).map(|_| 0.5 + rng.next_f64() * 1.5).collect();
    let spikes: Vec<(f64, Vec<f64>)> = (0..8)
        .map(|k| {
            (
                4.0 / (1.0 + k as f64),
                (0..n).map(|_| rng.normal()).collect(),
            )
        })
        .collect();
    let mut h = SymMat::zeros(n);
    for i in 0..n {
        let row = h.lower_row_mut(i);
        for (j, v) in row.iter_mut().enumerate() {
            let spike: f64 = spikes.iter().map(|(a, s)| a * s[i] * s[j]).sum();
            *v = gains[i] * gains[j] * (rho.powi((i - j) as i32) + spike);
        }
    }
    h
}

fn bench_gptq(c: &mut Criterion) {
    let mut group = c.benchmark_group("gptq-int4");
    group.sample_size(10);
    for &(m, n) in &[(576usize, 1536usize), (4096, 4096)] {
        let w: Mat<f32> = synthetic::weights(m, n, 1);
        let h = structured_hessian(n, 2);
        let rms = (w.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (m * n) as f64).sqrt();
        let grid = match IntSym::new(4, (1.2 * rms / sym_grid_rms(4)) as f32) {
            Ok(grid) => grid,
            Err(e) => panic!("bench grid: {e}"),
        };
        let params = GptqParams::default();
        group.throughput(Throughput::Elements((m * n) as u64));
        for cpu in [Cpu::default(), Cpu::scalar()] {
            group.bench_with_input(
                BenchmarkId::new(cpu.name(), format!("{m}x{n}")),
                &(),
                |b, _| {
                    b.iter(|| match cpu.gptq(&w, &h, &grid, &params) {
                        Ok(out) => out,
                        Err(e) => panic!("gptq failed: {e}"),
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gptq);
criterion_main!(benches);
