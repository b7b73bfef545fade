//! Identities of the adaptive rounding (DESIGN.md §4), on the f64 reference and the CPU backend:
//! tile orders agree bit for bit, the incremental feedback equals the formula recomputed from scratch,
//! YAQA with `h_out = I` is LDLQ, an exact quantizer returns `W`, and every tile's rounding residual
//! `L_outᵀ Δ L_in` stays within half a grid step.

use yaqa::core::backend::{Backend, RoundOrder, RoundParams};
use yaqa::core::conformance::synthetic_a;
use yaqa::core::quant::Exact;
use yaqa::core::quant::int::IntSym;
use yaqa::core::reference::Reference;
use yaqa::core::{Mat, TileQuantizer, synthetic};
use yaqa::cpu::Cpu;

fn params(tile_rows: usize, tile_cols: usize, order: RoundOrder) -> RoundParams {
    RoundParams {
        tile_rows,
        tile_cols,
        order,
    }
}

#[test]
fn wavefront_and_strips_give_identical_codes() {
    for seed in 0..3 {
        for (tr, tc) in [(16, 16), (4, 8), (1, 1)] {
            let (m, n) = (48, 64);
            let w = synthetic::weights(m, n, seed);
            let (_, a_in) = synthetic_a(n, tc, 1.0, 100 + seed);
            let (_, a_out) = synthetic_a(m, tr, 0.8, 200 + seed);
            let q = IntSym::new(2, 0.025).unwrap();
            let strips = Reference
                .round_adaptive(
                    &w,
                    &a_in,
                    Some(&a_out),
                    &q,
                    &params(tr, tc, RoundOrder::Strips),
                )
                .unwrap();
            let wave = Reference
                .round_adaptive(
                    &w,
                    &a_in,
                    Some(&a_out),
                    &q,
                    &params(tr, tc, RoundOrder::Wavefront),
                )
                .unwrap();
            assert_eq!(strips.codes, wave.codes, "seed {seed}, tiles {tr}×{tc}");
            assert_eq!(strips.w_hat, wave.w_hat);
        }
    }
}

/// DESIGN.md §4's feedback recomputed from scratch for every tile (the published code's `O(m²n²)` way).
fn round_direct(
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: &Mat<f32>,
    q: &dyn TileQuantizer,
    tr: usize,
    tc: usize,
) -> Vec<u16> {
    let (m, n) = w.shape();
    let mut e = Mat::<f64>::zeros(m, n);
    let mut codes = vec![0u16; m * n];
    for i in (0..m / tr).rev() {
        for j in (0..n / tc).rev() {
            let mut tile = vec![0f32; tr * tc];
            for r in 0..tr {
                for c in 0..tc {
                    let (row, col) = (i * tr + r, j * tc + c);
                    let mut f = 0.0;
                    for r2 in (i + 1) * tr..m {
                        f += a_out.at(r2, row) as f64 * e.at(r2, col);
                    }
                    for c2 in (j + 1) * tc..n {
                        f += e.at(row, c2) * a_in.at(c2, col) as f64;
                    }
                    for r2 in (i + 1) * tr..m {
                        for c2 in (j + 1) * tc..n {
                            f += a_out.at(r2, row) as f64 * e.at(r2, c2) * a_in.at(c2, col) as f64;
                        }
                    }
                    tile[r * tc + c] = (w.at(row, col) as f64 + f) as f32;
                }
            }
            let mut tile_codes = vec![0u16; tr * tc];
            q.quantize_tile(i * tr, j * tc, tr, tc, &mut tile, &mut tile_codes, None);
            for r in 0..tr {
                for c in 0..tc {
                    let (row, col) = (i * tr + r, j * tc + c);
                    *e.at_mut(row, col) = w.at(row, col) as f64 - tile[r * tc + c] as f64;
                    codes[row * n + col] = tile_codes[r * tc + c];
                }
            }
        }
    }
    codes
}

#[test]
fn incremental_feedback_equals_the_formula() {
    for (tr, tc) in [(8, 8), (2, 4)] {
        let (m, n) = (32, 40);
        let w = synthetic::weights(m, n, 7);
        let (_, a_in) = synthetic_a(n, tc, 1.0, 8);
        let (_, a_out) = synthetic_a(m, tr, 1.0, 9);
        let q = IntSym::new(3, 0.012).unwrap();
        let got = Reference
            .round_adaptive(
                &w,
                &a_in,
                Some(&a_out),
                &q,
                &params(tr, tc, RoundOrder::Wavefront),
            )
            .unwrap();
        assert_eq!(
            got.codes,
            round_direct(&w, &a_in, &a_out, &q, tr, tc),
            "tiles {tr}×{tc}"
        );
    }
}

#[test]
fn yaqa_with_identity_output_factor_is_ldlq() {
    let (m, n) = (64, 96);
    let w = synthetic::weights(m, n, 3);
    let (_, a_in) = synthetic_a(n, 16, 1.0, 4);
    let zero = Mat::<f32>::zeros(m, m);
    let q = IntSym::new(3, 0.012).unwrap();
    let p = RoundParams::default();
    let ldlq = Reference.round_adaptive(&w, &a_in, None, &q, &p).unwrap();
    let yaqa = Reference
        .round_adaptive(&w, &a_in, Some(&zero), &q, &p)
        .unwrap();
    assert_eq!(ldlq.codes, yaqa.codes);
    assert_eq!(ldlq.w_hat, yaqa.w_hat);
    // The CPU backend takes different code paths (one strip vs coupled strips): same codes up to near-ties.
    let cpu_ldlq = Cpu::default()
        .round_adaptive(&w, &a_in, None, &q, &p)
        .unwrap();
    let cpu_yaqa = Cpu::default()
        .round_adaptive(&w, &a_in, Some(&zero), &q, &p)
        .unwrap();
    let differ = cpu_ldlq
        .codes
        .iter()
        .zip(&cpu_yaqa.codes)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ * 200 <= cpu_ldlq.codes.len(),
        "{differ} codes differ"
    );
}

#[test]
fn exact_quantizer_returns_w() {
    let (m, n) = (64, 128);
    let w = synthetic::weights(m, n, 5);
    let (_, a_in) = synthetic_a(n, 16, 1.0, 6);
    let (_, a_out) = synthetic_a(m, 16, 1.0, 7);
    let backends: [&dyn Backend; 3] = [&Reference, &Cpu::default(), &Cpu::scalar()];
    for backend in backends {
        for a_out in [None, Some(&a_out)] {
            let r = backend
                .round_adaptive(&w, &a_in, a_out, &Exact, &RoundParams::default())
                .unwrap();
            assert_eq!(r.w_hat, w, "{}", backend.name());
        }
    }
}

/// `M = L_outᵀ Δ L_in` is, tile by tile, the quantizer's own rounding residual (DESIGN.md §4), so with a grid
/// that never clips every entry lies within half a step. Wrong feedback breaks this immediately.
#[test]
fn residuals_lie_within_half_a_step() {
    let (m, n) = (48, 64);
    let w = synthetic::weights(m, n, 11);
    for (tr, tc) in [(16, 16), (4, 8)] {
        let (h_in, _) = synthetic_a(n, tc, 1.0, 12);
        let (h_out, _) = synthetic_a(m, tr, 1.0, 13);
        let ldl_in = Reference
            .block_ldl(
                &h_in,
                &yaqa::core::LdlParams {
                    block: tc,
                    ..Default::default()
                },
            )
            .unwrap();
        let ldl_out = Reference
            .block_ldl(
                &h_out,
                &yaqa::core::LdlParams {
                    block: tr,
                    ..Default::default()
                },
            )
            .unwrap();
        let step = 0.01f32;
        // 8 bits at this step span ±1.28, far beyond these weights plus feedback: no clipping.
        let q = IntSym::new(8, step).unwrap();
        let backends: [&dyn Backend; 2] = [&Reference, &Cpu::default()];
        for backend in backends {
            let r = backend
                .round_adaptive(
                    &w,
                    &ldl_in.a_strict(),
                    Some(&ldl_out.a_strict()),
                    &q,
                    &params(tr, tc, RoundOrder::Strips),
                )
                .unwrap();
            let delta = Mat::from_fn(m, n, |i, j| w.at(i, j) as f64 - r.w_hat.at(i, j) as f64);
            let mut worst = 0.0f64;
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for a in i..m {
                        for b in j..n {
                            s += ldl_out.l.at(a, i) * delta.at(a, b) * ldl_in.l.at(b, j);
                        }
                    }
                    worst = worst.max(s.abs());
                }
            }
            // f32 feedback adds ~1e-6 of slack; a missing feedback term would show up at the size of W (~0.05).
            assert!(
                worst <= 0.5 * step as f64 + 1e-5,
                "{}: residual {worst} > half step {}",
                backend.name(),
                0.5 * step
            );
        }
    }
}

#[test]
fn ldl_reconstructs_the_damped_factor() {
    let (h, _) = synthetic_a(96, 16, 1.3, 17);
    let backends: [&dyn Backend; 2] = [&Reference, &Cpu::default()];
    for backend in backends {
        for block in [1, 8, 16] {
            let ldl = backend
                .block_ldl(
                    &h,
                    &yaqa::core::LdlParams {
                        block,
                        ..Default::default()
                    },
                )
                .unwrap();
            let mut want = h.to_dense();
            for i in 0..96 {
                *want.at_mut(i, i) += ldl.damp_added;
            }
            let err = yaqa::core::mat::rel_diff_fro(&ldl.reconstruct().data, &want.data);
            assert!(err < 1e-12, "{} block {block}: {err}", backend.name());
            // Unit diagonal blocks, zero above them.
            for i in 0..96 {
                for j in 0..96 {
                    let v = ldl.l.at(i, j);
                    if i / block == j / block {
                        assert_eq!(v, if i == j { 1.0 } else { v }, "diagonal");
                        if j > i {
                            assert_eq!(v, 0.0);
                        }
                    } else if j > i {
                        assert_eq!(v, 0.0);
                    }
                }
            }
        }
    }
}
