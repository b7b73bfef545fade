//! Factor-accumulation and LDL benches (DESIGN.md §2, §3, §8): Sketch B for one 2048-token sequence at
//! 4096 × 4096 on the CPU backend, next to faer's plain f32 GEMM of the same shape, and the f64 block LDL at
//! n = 4096.
//!
//! Flops of Sketch B per sequence, counted as the textbook algorithm does them: `G = gᵀx` is `2·t·m·n`,
//! `GᵀG` and `GGᵀ` (lower triangles) are `m·n·(n+1)` and `n·m·(m+1)`: 206 GFLOP at t = 2048,
//! m = n = 4096. The CPU backend takes the cheaper exact route through the `t × t` token kernels there
//! (172 GFLOP executed). The target is ≥ 70% of the GEMM's throughput; criterion reports the
//! time, the ratios are computed in docs/BENCHMARKS.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use yaqa::core::backend::Backend;
use yaqa::core::{LdlParams, SymMat, synthetic};
use yaqa::cpu::Cpu;

fn bench(c: &mut Criterion) {
    let cpu = Cpu::default();
    let (t, m, n) = (2048, 4096, 4096);
    let x = synthetic::activations_rank(t, n, 64, 0.8, 1);
    let g = synthetic::activations_rank(t, m, 64, 1.0, 2);
    let mut group = c.benchmark_group("sketch");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30));

    let flops = 2 * t * m * n + m * n * (n + 1) + n * m * (m + 1);
    group.throughput(Throughput::Elements(flops as u64));
    // One more sequence added into factors that already exist, as in a calibration run (allocating the
    // two 64 MB f64 accumulators is not part of a step).
    let (mut h_in, mut h_out) = (SymMat::zeros(n), SymMat::zeros(m));
    group.bench_function("sketch_b 2048 tokens 4096x4096", |b| {
        b.iter(|| {
            cpu.accumulate_sketch_b(&mut h_in, &mut h_out, &x, &g)
                .expect("sketch");
        })
    });

    // faer's own f32 GEMM at the size of one of the three products, for the throughput ceiling.
    let a = faer::Mat::<f32>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let bm = faer::Mat::<f32>::from_fn(n, n, |i, j| ((i * 5 + j) % 13) as f32 - 6.0);
    let mut out = faer::Mat::<f32>::zeros(n, n);
    group.throughput(Throughput::Elements((2 * n * n * n) as u64));
    group.bench_function("faer f32 gemm 4096^3", |b| {
        b.iter(|| {
            faer::linalg::matmul::matmul(
                out.as_mut(),
                faer::Accum::Replace,
                a.as_ref(),
                bm.as_ref(),
                1.0,
                faer::Par::rayon(0),
            )
        })
    });

    let h = {
        let mut f = yaqa::core::sketch::Factors::xtx(n);
        f.add_sequence(
            &cpu,
            &synthetic::activations_rank(2 * n, n, 128, 1.0, 3),
            None,
        )
        .expect("factor");
        f.h_in
    };
    group.throughput(Throughput::Elements((n * n * n / 3) as u64));
    group.bench_function("block_ldl f64 4096", |b| {
        b.iter(|| cpu.block_ldl(&h, &LdlParams::default()).expect("ldl"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
