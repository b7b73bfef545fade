//! Cross-crate checks of the randomized Hadamard incoherence transform (DESIGN.md §3.2): the CPU backend's
//! fast transform (SIMD and scalar paths) against the naive f64 reference and against the definition
//! `R[i, j] = (H_k ⊗ H_{2^p})[i, j] / √n`, at SmolLM2's real shapes (576 × 1536), on every model
//! dimension yaqa targets, and through the identity the method relies on: the proxy loss
//! `tr(Δ h_in Δᵀ h_out)` is unchanged when `Δ` and both factors are rotated.

use yaqa::core::hadamard::{HadamardPlan, sign_vector};
use yaqa::core::mat::rel_diff_fro;
use yaqa::core::reference::Reference;
use yaqa::core::{Backend, CoreError, Mat, Rng, Side, SymMat};
use yaqa::cpu::Cpu;

/// CPU f32 transform vs the f64 reference, normwise relative. The f32 path rounds once per butterfly
/// stage and once per mix term, so its error grows with `log₂ 2^p + k`. Measured (AMD EPYC, AVX2,
/// 2026-11-23): 1.4e-7 for 192 × 576 and 576 × 1536, 3.4e-7 at n = 11008 (k = 344); 1e-6 is 3× the worst.
const F32_VS_REFERENCE_TOL: f64 = 1e-6;
/// CPU f64 `rotate_factor` vs the reference's two dense products: both are f64 and differ only in the
/// order of summation. Measured 4.9e-16 (n = 48) and 1.1e-15 (n = 576), 2026-11-23.
const F64_VS_REFERENCE_TOL: f64 = 1e-13;
/// Round trips (forward then inverse) in f32, normwise. Measured 1.3e-7 to 1.7e-7 for k ≤ 36, 3.3e-7 at
/// 18944 (k = 148), 5.0e-7 at 11008 (k = 344), 2026-11-23; 2e-6 is 4× the worst.
const F32_ROUNDTRIP_TOL: f64 = 2e-6;

/// The model dimensions of DESIGN.md's families (SmolLM2, Llama 2/3, Mistral, Qwen2/2.5).
const MODEL_DIMS: [usize; 12] = [
    576, 1536, 2048, 3072, 4096, 5120, 8192, 11008, 13824, 14336, 18944, 28672,
];

fn backends() -> [Cpu; 2] {
    [Cpu::default(), Cpu::scalar()]
}

/// Structured weights: a decaying low-rank part, outlier input columns (what incoherence processing
/// spreads out), a row-dependent scale, and noise.
fn structured(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut rng = Rng::new(seed);
    let rank = 8;
    let u: Vec<f64> = (0..rows * rank).map(|_| rng.normal()).collect();
    let v: Vec<f64> = (0..cols * rank).map(|_| rng.normal()).collect();
    Mat::from_fn(rows, cols, |i, j| {
        let low: f64 = (0..rank)
            .map(|r| u[i * rank + r] * v[j * rank + r] * 0.6f64.powi(r as i32))
            .sum();
        let outlier = if j % 89 == 5 { 30.0 } else { 1.0 };
        let row_scale = 1.0 + (i % 7) as f64 * 0.25;
        (outlier * row_scale * (low + 0.05 * rng.normal())) as f32
    })
}

/// A structured positive definite factor `Xᵀ X / t + 0.01 I` with correlated features.
fn structured_factor(n: usize, seed: u64) -> SymMat {
    let t = n + 16;
    let x = structured(t, n, seed);
    let mut h = SymMat::zeros(n);
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..t).map(|r| x.at(r, i) as f64 * x.at(r, j) as f64).sum();
            *h.at_mut(i, j) = dot / t as f64 + if i == j { 0.01 } else { 0.0 };
        }
    }
    h
}

fn rel(a: &Mat<f32>, b: &Mat<f32>) -> f64 {
    rel_diff_fro(&a.to_f64().data, &b.to_f64().data)
}

fn ok<T>(r: yaqa::core::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Rotates a copy of `w` with the reference and with both CPU paths, and compares.
fn check_against_reference(w: &Mat<f32>, side: Side, inverse: bool, seed: u64) {
    let dim = if side == Side::Cols { w.cols } else { w.rows };
    let signs = sign_vector(seed, "test", dim);
    let mut want = w.clone();
    ok(Reference.hadamard_rotate(&mut want, side, &signs, inverse));
    let mut results = Vec::new();
    for cpu in backends() {
        let mut got = w.clone();
        ok(cpu.hadamard_rotate(&mut got, side, &signs, inverse));
        let err = rel(&got, &want);
        assert!(
            err < F32_VS_REFERENCE_TOL,
            "{} {}×{} {side:?} inverse={inverse}: rel error {err:e}",
            cpu.name(),
            w.rows,
            w.cols
        );
        results.push(got);
    }
    // The SIMD and scalar paths perform the same additions in the same order (the mix multiplies by ±1,
    // which is exact whether or not the multiply-add is fused), so they agree bit for bit.
    assert!(results[0] == results[1], "SIMD and scalar paths differ");
}

#[test]
fn cpu_matches_reference_smollm2_mlp_cols() {
    // 576 × 1536 (SmolLM2's up/gate projections transposed: n = 1536 = 12·128).
    check_against_reference(&structured(576, 1536, 1), Side::Cols, false, 10);
}

#[test]
fn cpu_matches_reference_smollm2_mlp_rows() {
    // m = 576 = 36·16: the Paley II base and the strip path.
    let w = structured(576, 1536, 2);
    check_against_reference(&w, Side::Rows, false, 11);
    check_against_reference(&w, Side::Rows, true, 12);
}

#[test]
fn cpu_matches_reference_small_both_sides() {
    let w = structured(192, 576, 3);
    for side in [Side::Cols, Side::Rows] {
        for inverse in [false, true] {
            check_against_reference(&w, side, inverse, 13);
        }
    }
}

#[test]
fn cpu_matches_definition_at_11008() {
    // 11008 = 344·32 with Paley I over GF(7³): too large for the dense reference, so one vector per side
    // is compared with the definition R[i, j] = entry(i, j)/√n summed directly.
    let n = 11008;
    let plan = ok(HadamardPlan::new(n));
    assert!(plan.base().is_hadamard(), "344 × 344 base is not Hadamard");
    let signs = sign_vector(7, "11008", n);
    let x = structured(1, n, 4);
    let scale = plan.scale();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| plan.entry(i, j) as f64 * signs[j] as f64 * x.data[j] as f64)
                .sum::<f64>()
                * scale
        })
        .collect();
    for cpu in backends() {
        let mut row = x.clone();
        ok(cpu.hadamard_rotate(&mut row, Side::Cols, &signs, false));
        let got: Vec<f64> = row.data.iter().map(|&v| v as f64).collect();
        let err = rel_diff_fro(&got, &want);
        assert!(err < F32_VS_REFERENCE_TOL, "{} Cols: {err:e}", cpu.name());

        let mut col = x.transpose();
        ok(cpu.hadamard_rotate(&mut col, Side::Rows, &signs, false));
        let got: Vec<f64> = col.data.iter().map(|&v| v as f64).collect();
        let err = rel_diff_fro(&got, &want);
        assert!(err < F32_VS_REFERENCE_TOL, "{} Rows: {err:e}", cpu.name());
    }
}

#[test]
fn every_model_dimension_rotates_and_round_trips() {
    for n in MODEL_DIMS {
        let plan = ok(HadamardPlan::new(n));
        assert_eq!(plan.k() * plan.pow2(), n);
        let signs = sign_vector(1, "dims", n);
        let w0 = structured(3, n, n as u64);
        for cpu in backends() {
            // Along the columns (3 vectors of length n) and along the rows (the transpose).
            for (side, w_start) in [(Side::Cols, w0.clone()), (Side::Rows, w0.transpose())] {
                let mut w = w_start.clone();
                ok(cpu.hadamard_rotate(&mut w, side, &signs, false));
                let norm_change = (w.norm_fro() / w_start.norm_fro() - 1.0).abs();
                assert!(
                    norm_change < F32_ROUNDTRIP_TOL,
                    "n {n} {side:?}: norm changed by {norm_change:e}"
                );
                assert!(
                    rel(&w, &w_start) > 0.5,
                    "n {n} {side:?}: rotation did nothing"
                );
                ok(cpu.hadamard_rotate(&mut w, side, &signs, true));
                let err = rel(&w, &w_start);
                assert!(
                    err < F32_ROUNDTRIP_TOL,
                    "{} n {n} {side:?}: round trip {err:e}",
                    cpu.name()
                );
            }
        }
    }
}

#[test]
fn rotation_spreads_outliers() {
    // The point of incoherence processing: a weight with one huge input column becomes flat.
    let n = 1536;
    let mut w = Mat::from_fn(8, n, |i, j| {
        if j == 100 {
            100.0
        } else {
            ((i + j) % 5) as f32 * 0.01
        }
    });
    let max_before = w.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    ok(Cpu::default().hadamard_rotate(&mut w, Side::Cols, &sign_vector(2, "o", n), false));
    let max_after = w.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // A spike of 100 spreads to about 100/√1536 ≈ 2.6 per entry.
    assert!(
        max_after < max_before / 20.0,
        "max |W| {max_before} → {max_after}"
    );
}

#[test]
fn rotate_factor_matches_reference() {
    for n in [48, 576] {
        let h = structured_factor(n, n as u64);
        let signs = sign_vector(3, "h_in", n);
        let want = ok(Reference.rotate_factor(&h, &signs));
        for cpu in backends() {
            let got = ok(cpu.rotate_factor(&h, &signs));
            let err = rel_diff_fro(&got.data, &want.data);
            assert!(err < F64_VS_REFERENCE_TOL, "{} n {n}: {err:e}", cpu.name());
        }
    }
}

/// `tr(Δ h_in Δᵀ h_out)` by plain loops: `Σ_{a,b,i,j} Δ[a,i] h_in[i,j] Δ[b,j] h_out[b,a]`, as
/// `Σ_a Σ_b h_out[a,b] (Δ h_in Δᵀ)[a,b]`.
fn proxy_loss(delta: &Mat<f32>, h_in: &SymMat, h_out: &SymMat) -> f64 {
    let (m, n) = delta.shape();
    let mut dh = vec![0.0f64; m * n];
    for a in 0..m {
        for j in 0..n {
            dh[a * n + j] = (0..n).map(|i| delta.at(a, i) as f64 * h_in.at(i, j)).sum();
        }
    }
    let mut total = 0.0;
    for a in 0..m {
        for b in 0..m {
            let dhd: f64 = (0..n).map(|j| dh[a * n + j] * delta.at(b, j) as f64).sum();
            total += h_out.at(a, b) * dhd;
        }
    }
    total
}

#[test]
fn proxy_loss_is_invariant_under_rotation() {
    let (m, n) = (96, 192);
    let delta = structured(m, n, 21);
    let h_in = structured_factor(n, 22);
    let h_out = structured_factor(m, 23);
    let before = proxy_loss(&delta, &h_in, &h_out);
    let s_in = sign_vector(5, "in", n);
    let s_out = sign_vector(5, "out", m);
    for cpu in backends() {
        let mut d = delta.clone();
        ok(cpu.hadamard_rotate(&mut d, Side::Rows, &s_out, false));
        ok(cpu.hadamard_rotate(&mut d, Side::Cols, &s_in, false));
        let h_in_r = ok(cpu.rotate_factor(&h_in, &s_in));
        let h_out_r = ok(cpu.rotate_factor(&h_out, &s_out));
        let after = proxy_loss(&d, &h_in_r, &h_out_r);
        let rel_change = (after - before).abs() / before.abs();
        // Δ is rounded to f32 after each rotation; the loss is quadratic in Δ, so twice the round-trip budget.
        assert!(
            rel_change < 2.0 * F32_ROUNDTRIP_TOL,
            "{}: {before} → {after}",
            cpu.name()
        );
        // Not trivially invariant: the rotated factors really differ from the originals.
        assert!(rel_diff_fro(&h_in_r.data, &h_in.data) > 0.1);
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    for cpu in backends() {
        let mut w = structured(12, 48, 30);
        let signs = sign_vector(1, "s", 48);
        assert!(matches!(
            cpu.hadamard_rotate(&mut w, Side::Cols, &signs[..40], false),
            Err(CoreError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            cpu.hadamard_rotate(&mut w, Side::Rows, &signs, false),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let mut zeroed = signs.clone();
        zeroed[3] = 0.0;
        assert!(matches!(
            cpu.hadamard_rotate(&mut w, Side::Cols, &zeroed, false),
            Err(CoreError::InvalidParameter { .. })
        ));
        // 210 = 2·3·5·7 has no Hadamard construction.
        let mut odd = structured(2, 210, 31);
        assert!(matches!(
            cpu.hadamard_rotate(&mut odd, Side::Cols, &sign_vector(1, "s", 210), false),
            Err(CoreError::UnsupportedDimension { dim: 210, .. })
        ));
        assert!(matches!(
            cpu.rotate_factor(&SymMat::zeros(210), &sign_vector(1, "s", 210)),
            Err(CoreError::UnsupportedDimension { dim: 210, .. })
        ));
        assert!(matches!(
            cpu.rotate_factor(
                &SymMat {
                    n: 48,
                    data: vec![0.0; 3]
                },
                &signs
            ),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let mut ragged = Mat {
            rows: 2,
            cols: 48,
            data: vec![0.0f32; 7],
        };
        assert!(matches!(
            cpu.hadamard_rotate(&mut ragged, Side::Cols, &signs, false),
            Err(CoreError::ShapeMismatch { .. })
        ));
        // A failed call leaves W untouched.
        let w0 = structured(12, 48, 30);
        assert_eq!(w, w0);
    }
}
