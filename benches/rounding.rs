//! Rounding benches (DESIGN.md §4, §8): YAQA two-sided and LDLQ one-sided at 4096 × 4096 and SmolLM2's
//! 576 × 1536, with 1 × 1 tiles (scalar INT grids) and 16 × 16 tiles (vector codebooks), INT4, CPU backend;
//! and the E8P codebook: round-to-nearest alone (its nearest-point search) and LDLQ/YAQA at its 1 × 8 tiles;
//! and the QTIP trellis: one tile's tail-biting Viterbi encoding and RTN/LDLQ on a 256 × 4096 strip
//! (1/16 of a 4096² matrix, whose time is 16 times the strip's: the tiles are independent in RTN and in
//! LDLQ's column tiles).
//! Anchors: reference-style YAQA code took 14 s for 4096² on an H100; the CPU target is ≤ 5 s.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;
use yaqa::core::backend::round_to_nearest;
use yaqa::core::backend::{Backend, RoundParams};
use yaqa::core::quant::e8p::E8p;
use yaqa::core::quant::int::IntSym;
use yaqa::core::quant::trellis::{self, Trellis};
use yaqa::core::refine::refine_coordinate;
use yaqa::core::sketch::Factors;
use yaqa::core::{LdlParams, Mat, ldl::normalize_mean_diag, synthetic};
use yaqa::cpu::Cpu;

/// A structured factor of order `n` built with the CPU backend (rank-128 correlated activations).
pub fn factor(n: usize, seed: u64) -> yaqa::core::SymMat {
    let x = synthetic::activations_rank(2 * n, n, 128, 1.0, seed);
    let mut f = Factors::xtx(n);
    f.add_sequence(&Cpu::default(), &x, None).expect("factor");
    let mut h = f.h_in;
    normalize_mean_diag("bench", &mut h).expect("diagonal");
    h
}

fn a_strict(n: usize, block: usize, seed: u64) -> Mat<f32> {
    Cpu::default()
        .block_ldl(
            &factor(n, seed),
            &LdlParams {
                block,
                ..LdlParams::default()
            },
        )
        .expect("ldl")
        .a_strict()
}

/// A group for runs of a second or more: 10 samples over 20 s.
fn slow_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    group
}

fn bench(c: &mut Criterion) {
    let cpu = Cpu::default();
    let mut group = slow_group(c, "round");
    for (m, n) in [(576, 1536), (4096, 4096)] {
        let w = synthetic::weights(m, n, 1);
        let q = IntSym::new(4, 0.004).expect("grid");
        for tile in [1, 16] {
            let a_in = a_strict(n, tile, 2);
            let a_out = a_strict(m, tile, 3);
            let params = RoundParams {
                tile_rows: tile,
                tile_cols: tile,
                ..RoundParams::default()
            };
            group.bench_function(format!("yaqa {m}x{n} tile {tile}"), |b| {
                b.iter(|| {
                    cpu.round_adaptive(&w, &a_in, Some(&a_out), &q, &params)
                        .expect("round")
                })
            });
            group.bench_function(format!("ldlq {m}x{n} tile {tile}"), |b| {
                b.iter(|| {
                    cpu.round_adaptive(&w, &a_in, None, &q, &params)
                        .expect("round")
                })
            });
        }
    }
    group.finish();
}

/// One coordinate-descent sweep after round-to-nearest (`yaqa_core::refine`, single-threaded, `O(mn²)`),
/// two-sided and one-sided, at SmolLM2's largest shape and at 1024².
fn bench_refine(c: &mut Criterion) {
    let mut group = slow_group(c, "refine");
    for (m, n) in [(576, 1536), (1024, 1024)] {
        let w = synthetic::weights(m, n, 1);
        let q = IntSym::for_multiplier(2, &w, 1.2).expect("grid");
        let rtn = round_to_nearest(&w, &q);
        let mut h_in = factor(n, 2);
        h_in.add_diag(0.01);
        let mut h_out = factor(m, 3);
        h_out.add_diag(1.0);
        for (name, h_out) in [("two-sided", Some(&h_out)), ("one-sided", None)] {
            group.bench_function(format!("{name} {m}x{n} int2, 1 sweep"), |b| {
                b.iter(|| {
                    let mut r = rtn.clone();
                    refine_coordinate(&w, &mut r, &h_in, h_out, &q, 1).expect("refine")
                })
            });
        }
    }
    group.finish();
}

/// E8P at SmolLM2's largest shape and at 4096²: round-to-nearest (one nearest-point search per 8 weights;
/// the scale search runs it 14 times), and LDLQ and YAQA with the jobs' 1 × 8 tiles.
fn bench_e8p(c: &mut Criterion) {
    let cpu = Cpu::default();
    let mut group = slow_group(c, "e8p");
    for (m, n) in [(576, 1536), (4096, 4096)] {
        let w = synthetic::weights(m, n, 1);
        let q = E8p::for_multiplier(&w, 1.1).expect("scale");
        group.bench_function(format!("rtn {m}x{n}"), |b| {
            b.iter(|| round_to_nearest(&w, &q))
        });
        let a_in = a_strict(n, 8, 2);
        let a_out = a_strict(m, 1, 3);
        let params = RoundParams {
            tile_rows: 1,
            tile_cols: 8,
            ..RoundParams::default()
        };
        group.bench_function(format!("ldlq {m}x{n} tile 1x8"), |b| {
            b.iter(|| {
                cpu.round_adaptive(&w, &a_in, None, &q, &params)
                    .expect("round")
            })
        });
        group.bench_function(format!("yaqa {m}x{n} tile 1x8"), |b| {
            b.iter(|| {
                cpu.round_adaptive(&w, &a_in, Some(&a_out), &q, &params)
                    .expect("round")
            })
        });
    }
    group.finish();
}

/// The trellis: encoding one 16 × 16 tile (two Viterbi passes over 2^16 states, 256 steps) at 2, 3 and
/// 4 bits, and round-to-nearest and LDLQ (16 × 16 tiles) at 2 bits on 256 × 4096, a sixteenth of 4096²
/// (a full 4096² takes minutes per iteration on a few cores).
fn bench_trellis(c: &mut Criterion) {
    let cpu = Cpu::default();
    let mut group = slow_group(c, "trellis");
    let tile = synthetic::weights(16, 16, 1);
    for bits in trellis::SUPPORTED_BITS {
        group.bench_function(format!("encode tile 16x16 k{bits}"), |b| {
            b.iter(|| trellis::encode(&tile.data, trellis::values(), bits).expect("encode"))
        });
    }
    let (m, n) = (256, 4096);
    let w = synthetic::weights(m, n, 1);
    let q = Trellis::for_multiplier(2, &w, 1.0).expect("scale");
    group.bench_function(format!("rtn {m}x{n} k2"), |b| {
        b.iter(|| round_to_nearest(&w, &q))
    });
    let a_in = a_strict(n, 16, 2);
    group.bench_function(format!("ldlq {m}x{n} tile 16x16 k2"), |b| {
        b.iter(|| {
            cpu.round_adaptive(&w, &a_in, None, &q, &RoundParams::default())
                .expect("round")
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_refine, bench_e8p, bench_trellis);
criterion_main!(benches);
