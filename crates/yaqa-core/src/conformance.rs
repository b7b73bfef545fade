//! The conformance suite: every backend operation against the f64 [`crate::reference`] on structured
//! synthetic data, with named tolerance budgets (STYLE.md: `check_<op>::<B>()`).
//!
//! Each `check_*` panics with a message naming the operation, the measured error and its budget, so a
//! backend's test file instantiates the whole suite in one line per backend (see [`check_all`]).
//! Matrices are compared normwise; codes by agreement rate and proxy error, since near-ties may flip.

use crate::backend::{Backend, RoundOrder, RoundParams};
use crate::ldl::LdlParams;
use crate::mat::{Mat, rel_diff_fro};
use crate::quant::int::IntSym;
use crate::reference::Reference;
use crate::sym::SymMat;
use crate::synthetic;

/// f32 GEMM products of ~100-term sums against f64 sums: measured ≤ 3e-7 on x86-64 (2026-11), budget 2e-5.
pub const SKETCH_REL: f64 = 2e-5;
/// f64 Cholesky against f64 Cholesky: measured ~1e-15, budget 1e-10.
pub const LDL_REL: f64 = 1e-10;
/// Proxy error: f32 GEMMs reduced in f64 (the CPU backend) against f64 throughout: measured ≤ 3.4e-7
/// relative on 96 × 160 structured data, 5 seeds (x86-64, 2026-11-23); budget 1e-5.
pub const PROXY_REL: f64 = 1e-5;
/// f32 rounding against f64 rounding: fraction of codes that may differ (near-ties flip and propagate).
pub const ROUND_CODE_DISAGREEMENT: f64 = 0.02;
/// f32 rounding against f64 rounding: relative difference of the two-sided proxy error.
pub const ROUND_PROXY_REL: f64 = 0.01;

fn assert_close(what: &str, backend: &dyn Backend, got: &[f64], want: &[f64], budget: f64) {
    let err = rel_diff_fro(got, want);
    assert!(
        err <= budget,
        "{}: {what}: relative error {err:.3e} exceeds budget {budget:.1e}",
        backend.name()
    );
}

/// Sketch B, `Σ x xᵀ` and both Sketch A half-steps against the reference.
pub fn check_sketch(backend: &dyn Backend) {
    let (t, m, n) = (96, 40, 56);
    let x = synthetic::activations(t, n, 0.7, 11);
    let g = synthetic::activations(t, m, 1.1, 12);
    let start_in = synthetic::factor(n, 0.8, 13);
    let start_out = synthetic::factor(m, 0.8, 14);

    let (mut a, mut b) = (start_in.clone(), start_in.clone());
    backend.accumulate_xtx(&mut a, &x).expect("backend xtx");
    Reference.accumulate_xtx(&mut b, &x).expect("reference xtx");
    assert_close("accumulate_xtx", backend, &a.data, &b.data, SKETCH_REL);

    // Sketch B on top of a factor, and alone: long sequences (t > m, n) and short ones (t < m, n), so a
    // backend that picks its formulation by shape is checked on both; the larger shapes exceed the CPU
    // backend's whole-block size (128) for its Gram triangles.
    for (t, m, n, on_top) in [
        (t, m, n, true),
        (24, m, n, false),
        (160, 300, 272, false),
        (600, 136, 200, false),
    ] {
        let x = synthetic::activations(t, n, 0.7, 21);
        let g = synthetic::activations(t, m, 1.1, 22);
        let (start_in, start_out) = if on_top {
            (start_in.clone(), start_out.clone())
        } else {
            (SymMat::zeros(n), SymMat::zeros(m))
        };
        let (mut ai, mut ao) = (start_in.clone(), start_out.clone());
        let (mut bi, mut bo) = (start_in, start_out);
        backend
            .accumulate_sketch_b(&mut ai, &mut ao, &x, &g)
            .expect("backend sketch B");
        Reference
            .accumulate_sketch_b(&mut bi, &mut bo, &x, &g)
            .expect("reference sketch B");
        let what = format!("sketch B ({t} tokens, {m} × {n})");
        assert_close(
            &format!("{what} h_in"),
            backend,
            &ai.data,
            &bi.data,
            SKETCH_REL,
        );
        assert_close(
            &format!("{what} h_out"),
            backend,
            &ao.data,
            &bo.data,
            SKETCH_REL,
        );
    }

    let scale = 1.0 / start_in.norm_fro().powi(2);
    let (mut a, mut b) = (start_out.clone(), start_out.clone());
    backend
        .accumulate_sketch_a_out(&mut a, &x, &g, &start_in, scale)
        .expect("backend A out");
    Reference
        .accumulate_sketch_a_out(&mut b, &x, &g, &start_in, scale)
        .expect("reference A out");
    assert_close("sketch A h_out", backend, &a.data, &b.data, SKETCH_REL);

    let scale = 1.0 / start_out.norm_fro().powi(2);
    let (mut a, mut b) = (start_in.clone(), start_in.clone());
    backend
        .accumulate_sketch_a_in(&mut a, &x, &g, &start_out, scale)
        .expect("backend A in");
    Reference
        .accumulate_sketch_a_in(&mut b, &x, &g, &start_out, scale)
        .expect("reference A in");
    assert_close("sketch A h_in", backend, &a.data, &b.data, SKETCH_REL);

    // Bad shapes are rejected, not mis-read.
    let mut wrong = SymMat::zeros(n + 1);
    assert!(
        backend.accumulate_xtx(&mut wrong, &x).is_err(),
        "{}: xtx accepted a wrong shape",
        backend.name()
    );
}

/// Block LDL with damping, block sizes 1 and 16, against the reference; and an indefinite input.
pub fn check_ldl(backend: &dyn Backend) {
    let h = synthetic::factor(64, 1.2, 21);
    for block in [1, 16] {
        let params = LdlParams {
            block,
            ..LdlParams::default()
        };
        let got = backend.block_ldl(&h, &params).expect("backend block_ldl");
        let want = Reference
            .block_ldl(&h, &params)
            .expect("reference block_ldl");
        assert_eq!(
            got.damp_added,
            want.damp_added,
            "{}: damping differs",
            backend.name()
        );
        assert_close(
            &format!("block_ldl L (block {block})"),
            backend,
            &got.l.data,
            &want.l.data,
            LDL_REL,
        );
        assert_close(
            &format!("block_ldl D (block {block})"),
            backend,
            &got.d,
            &want.d,
            LDL_REL,
        );
    }
    // An indefinite matrix needs more damping than σ: the loop must find it and report it.
    let mut indefinite = SymMat::identity(32);
    *indefinite.at_mut(5, 5) = -0.5;
    let got = backend
        .block_ldl(&indefinite, &LdlParams::default())
        .expect("damping loop");
    assert!(
        got.damp_added > 0.5 && got.tries > 1,
        "{}: damping loop did not escalate",
        backend.name()
    );
    let no_retry = LdlParams {
        max_tries: 1,
        ..LdlParams::default()
    };
    assert!(
        backend.block_ldl(&indefinite, &no_retry).is_err(),
        "{}: indefinite accepted",
        backend.name()
    );
}

/// Proxy errors, one- and two-sided.
pub fn check_proxy(backend: &dyn Backend) {
    let (m, n) = (24, 40);
    let w = synthetic::weights(m, n, 31);
    let w_hat = synthetic::weights(m, n, 32);
    let h_in = synthetic::factor(n, 1.0, 33);
    let h_out = synthetic::factor(m, 1.0, 34);
    for h_out in [None, Some(&h_out)] {
        let got = backend
            .proxy_error(&w, &w_hat, &h_in, h_out)
            .expect("backend proxy");
        let want = Reference
            .proxy_error(&w, &w_hat, &h_in, h_out)
            .expect("reference proxy");
        assert_close(
            "proxy error",
            backend,
            &[got.error, got.baseline],
            &[want.error, want.baseline],
            PROXY_REL,
        );
        let norm = backend
            .weighted_error(&w_hat, &h_in, h_out)
            .expect("backend weighted norm");
        let want = Reference
            .weighted_error(&w_hat, &h_in, h_out)
            .expect("reference weighted norm");
        assert_close("weighted norm", backend, &[norm], &[want], PROXY_REL);
    }
    let wide = synthetic::weights(m, n + 1, 35);
    assert!(
        backend.weighted_error(&wide, &h_in, None).is_err(),
        "{}: h_in of the wrong size accepted",
        backend.name()
    );
    assert!(
        backend.weighted_error(&w, &h_in, Some(&h_in)).is_err(),
        "{}: h_out of the wrong size accepted",
        backend.name()
    );
}

/// The strictly block-lower `a` of a synthetic factor.
pub fn synthetic_a(n: usize, block: usize, decay: f64, seed: u64) -> (SymMat, Mat<f32>) {
    let mut h = synthetic::factor(n, decay, seed);
    crate::ldl::normalize_mean_diag("synthetic", &mut h).expect("synthetic factor has a diagonal");
    let ldl = Reference
        .block_ldl(
            &h,
            &LdlParams {
                block,
                ..LdlParams::default()
            },
        )
        .expect("synthetic factor is SPD after damping");
    (h, ldl.a_strict())
}

/// LDLQ and YAQA rounding against the reference: code agreement and proxy error.
pub fn check_round(backend: &dyn Backend) {
    let (m, n) = (96, 128);
    let w = synthetic::weights(m, n, 41);
    for (tile_rows, tile_cols) in [(16, 16), (4, 8)] {
        let (h_in, a_in) = synthetic_a(n, tile_cols, 1.0, 42);
        let (h_out, a_out) = synthetic_a(m, tile_rows, 1.0, 43);
        let q = IntSym::new(3, 0.02).expect("valid grid");
        for a_out in [None, Some(&a_out)] {
            let params = RoundParams {
                tile_rows,
                tile_cols,
                order: RoundOrder::Strips,
            };
            let got = backend
                .round_adaptive(&w, &a_in, a_out, &q, &params)
                .expect("backend round");
            let want = Reference
                .round_adaptive(&w, &a_in, a_out, &q, &params)
                .expect("reference round");
            let differ = got
                .codes
                .iter()
                .zip(&want.codes)
                .filter(|(a, b)| a != b)
                .count();
            let rate = differ as f64 / got.codes.len() as f64;
            let label = if a_out.is_some() { "YAQA" } else { "LDLQ" };
            assert!(
                rate <= ROUND_CODE_DISAGREEMENT,
                "{}: {label} {tile_rows}×{tile_cols}: {:.2}% of codes differ from the reference (budget {:.2}%)",
                backend.name(),
                100.0 * rate,
                100.0 * ROUND_CODE_DISAGREEMENT
            );
            let pg = Reference
                .proxy_error(&w, &got.w_hat, &h_in, Some(&h_out))
                .expect("proxy")
                .relative();
            let pw = Reference
                .proxy_error(&w, &want.w_hat, &h_in, Some(&h_out))
                .expect("proxy")
                .relative();
            assert!(
                (pg - pw).abs() <= ROUND_PROXY_REL * pw,
                "{}: {label} proxy error {pg:.6e} vs reference {pw:.6e}",
                backend.name()
            );
        }
    }
    // Inputs the rounding cannot take are rejected.
    let q = IntSym::new(3, 0.02).expect("valid grid");
    let (_, a_in) = synthetic_a(n, 16, 1.0, 42);
    let bad = RoundParams {
        tile_rows: 7,
        ..RoundParams::default()
    };
    assert!(
        backend.round_adaptive(&w, &a_in, None, &q, &bad).is_err(),
        "{}: tile 7 accepted",
        backend.name()
    );
    let mut nan = w.clone();
    nan.data[5] = f32::NAN;
    assert!(
        backend
            .round_adaptive(&nan, &a_in, None, &q, &RoundParams::default())
            .is_err(),
        "{}: NaN weights accepted",
        backend.name()
    );
}

/// Every check above.
pub fn check_all(backend: &dyn Backend) {
    check_sketch(backend);
    check_ldl(backend);
    check_proxy(backend);
    check_round(backend);
}
