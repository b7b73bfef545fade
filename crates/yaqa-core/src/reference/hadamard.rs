//! Reference incoherence rotations (DESIGN.md §3.2): the dense `R_n = (H_k ⊗ H_{2^p}) / √n` built entry by
//! entry from [`crate::hadamard::HadamardPlan::entry`] and applied by plain dense products in f64.
//!
//! This is the oracle the fast backends are checked against, so it deliberately contains no butterflies,
//! no Kronecker tricks and no blocking: `O(n²)` per vector and `O(n³)` per factor. Use it on small shapes
//! (hundreds to a couple of thousand).

use crate::backend::{Side, check_rotate_inputs, check_signs};
use crate::error::{CoreError, Result};
use crate::hadamard::HadamardPlan;
use crate::mat::Mat;
use crate::sym::{SymMat, packed_len};

/// The dense orthogonal rotation `R_n` in f64, `R[i, j] = (H_k ⊗ H_{2^p})[i, j] / √n` (DESIGN.md §3.2).
///
/// **Shapes**: returns `n × n`. **Errors**: [`CoreError::UnsupportedDimension`] when `n` has no plan.
pub fn dense_rotation(n: usize) -> Result<Mat<f64>> {
    let plan = HadamardPlan::new(n)?;
    let scale = 1.0 / (n as f64).sqrt();
    Ok(Mat::from_fn(n, n, |i, j| plan.entry(i, j) as f64 * scale))
}

/// Reference for [`crate::Backend::hadamard_rotate`]. Forward: every row vector (`Side::Cols`,
/// `W ← W diag(s) R_nᵀ`) or column vector (`Side::Rows`, `W ← R_m diag(s) W`) becomes `v ← R (s ⊙ v)`;
/// `inverse` applies `v ← s ⊙ (Rᵀ v)`. Computed in f64, rounded to f32 once at the end.
///
/// **Shapes**: `w` is `m × n`; `signs` has length `n` (`Cols`) or `m` (`Rows`).
/// **Errors**: shape mismatch, a sign that is not ±1, a dimension with no Hadamard plan.
pub(super) fn rotate(w: &mut Mat<f32>, side: Side, signs: &[f32], inverse: bool) -> Result<()> {
    let (m, n) = (w.rows, w.cols);
    let dim = check_rotate_inputs(w, side, signs)?;
    let r = dense_rotation(dim)?;
    let s: Vec<f64> = signs.iter().map(|&v| v as f64).collect();

    // The vectors to rotate, each as an f64 column of `dim` entries: rows of W for Cols, columns for Rows.
    let count = if side == Side::Cols { m } else { n };
    let read = |w: &Mat<f32>, v: usize, t: usize| -> f64 {
        match side {
            Side::Cols => w.at(v, t) as f64,
            Side::Rows => w.at(t, v) as f64,
        }
    };
    let mut out = vec![0.0f64; count * dim];
    for v in 0..count {
        let x: Vec<f64> = (0..dim).map(|t| read(w, v, t)).collect();
        let y = &mut out[v * dim..(v + 1) * dim];
        if inverse {
            // y = s ⊙ (Rᵀ x): y_j = s_j Σ_i R[i, j] x_i, accumulated row by row of R.
            for i in 0..dim {
                for (j, yj) in y.iter_mut().enumerate() {
                    *yj += r.at(i, j) * x[i];
                }
            }
            for (yj, sj) in y.iter_mut().zip(&s) {
                *yj *= sj;
            }
        } else {
            // y = R (s ⊙ x): y_i = Σ_j R[i, j] s_j x_j.
            let sx: Vec<f64> = x.iter().zip(&s).map(|(a, b)| a * b).collect();
            for (i, yi) in y.iter_mut().enumerate() {
                *yi = (0..dim).map(|j| r.at(i, j) * sx[j]).sum();
            }
        }
    }
    for v in 0..count {
        for t in 0..dim {
            let value = out[v * dim + t] as f32;
            match side {
                Side::Cols => *w.at_mut(v, t) = value,
                Side::Rows => *w.at_mut(t, v) = value,
            }
        }
    }
    Ok(())
}

/// Reference for [`crate::Backend::rotate_factor`]: `R diag(s) h diag(s) Rᵀ` (DESIGN.md §3.2) by two dense
/// `n³` products, keeping the lower triangle.
///
/// **Shapes**: `h` is `n × n` (packed), `signs` has length `n`.
/// **Errors**: shape mismatch, a sign that is not ±1, a dimension with no Hadamard plan.
pub(super) fn rotate_factor(h: &SymMat, signs: &[f32]) -> Result<SymMat> {
    let n = h.n;
    if h.data.len() != packed_len(n) {
        return Err(CoreError::shape(
            "rotate_factor: packed factor",
            packed_len(n),
            h.data.len(),
        ));
    }
    check_signs(signs, n)?;
    let r = dense_rotation(n)?;
    // B = R diag(s).
    let b = Mat::from_fn(n, n, |i, j| r.at(i, j) * signs[j] as f64);
    // C = B h.
    let mut c = Mat::<f64>::zeros(n, n);
    for i in 0..n {
        for t in 0..n {
            let bit = b.at(i, t);
            for j in 0..n {
                *c.at_mut(i, j) += bit * h.at(t, j);
            }
        }
    }
    // A = C Bᵀ, lower triangle only: A[i, j] = Σ_t C[i, t] B[j, t].
    let mut out = SymMat::zeros(n);
    for i in 0..n {
        for j in 0..=i {
            *out.at_mut(i, j) = (0..n).map(|t| c.at(i, t) * b.at(j, t)).sum();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::reference::Reference;
    use crate::rng::Rng;

    /// Orthogonality and round-trip errors of the f64 reference are a few ulps times √n; 1e-12 leaves
    /// room (measured ≤ 3e-15 for n ≤ 1536 on x86-64, 2026-11-23).
    const F64_TOL: f64 = 1e-12;
    /// The reference rounds its f64 result to f32 once: a round trip loses about 2⁻²⁴ relative per
    /// rounding, normwise (measured 6e-8 for 96×576, 2026-11-23).
    const F32_ROUNDTRIP_TOL: f64 = 3e-7;

    /// A structured test matrix: a few strong rank-one directions with a decaying spectrum, plus a
    /// couple of outlier columns (the heavy-tailed features incoherence processing exists for), plus noise.
    fn structured(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        let rank = 6;
        let u: Vec<f64> = (0..rows * rank).map(|_| rng.normal()).collect();
        let v: Vec<f64> = (0..cols * rank).map(|_| rng.normal()).collect();
        Mat::from_fn(rows, cols, |i, j| {
            let low: f64 = (0..rank)
                .map(|r| u[i * rank + r] * v[j * rank + r] / (1 << r) as f64)
                .sum();
            let outlier = if j % 97 == 3 { 20.0 } else { 1.0 };
            (outlier * (low + 0.1 * rng.normal())) as f32
        })
    }

    fn orthogonality_error(n: usize) -> f64 {
        let r = dense_rotation(n).unwrap_or_else(|e| panic!("{e}"));
        let mut worst = 0.0f64;
        for i in 0..n {
            for j in i..n {
                let dot: f64 = r.row(i).iter().zip(r.row(j)).map(|(a, b)| a * b).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        worst
    }

    #[test]
    fn dense_rotation_is_orthogonal() {
        // 1 (trivial), 64 (pure Sylvester), 48 = 12·4, 112 = 28·4, 576 = 36·16, 1536 = 12·128.
        for n in [1, 64, 48, 112, 576, 1536] {
            let err = orthogonality_error(n);
            assert!(err < F64_TOL, "n = {n}: max |R Rᵀ − I| = {err:e}");
        }
    }

    #[test]
    fn rotate_round_trips_on_both_sides() {
        let w0 = structured(96, 576, 1);
        let s_cols = crate::hadamard::sign_vector(5, "cols", 576);
        let s_rows = crate::hadamard::sign_vector(5, "rows", 96);
        for (side, s) in [(Side::Cols, &s_cols), (Side::Rows, &s_rows)] {
            let mut w = w0.clone();
            rotate(&mut w, side, s, false).unwrap_or_else(|e| panic!("{e}"));
            let moved = crate::mat::rel_diff_fro(&w.to_f64().data, &w0.to_f64().data);
            assert!(
                moved > 0.5,
                "{side:?}: rotation left W nearly unchanged ({moved})"
            );
            // Orthogonal: the Frobenius norm is preserved.
            let norm_ratio = w.norm_fro() / w0.norm_fro();
            assert!(
                (norm_ratio - 1.0).abs() < F32_ROUNDTRIP_TOL,
                "{side:?}: {norm_ratio}"
            );
            rotate(&mut w, side, s, true).unwrap_or_else(|e| panic!("{e}"));
            let err = crate::mat::rel_diff_fro(&w.to_f64().data, &w0.to_f64().data);
            assert!(
                err < F32_ROUNDTRIP_TOL,
                "{side:?}: round trip error {err:e}"
            );
        }
    }

    #[test]
    fn rows_side_is_the_transpose_of_cols_side() {
        let w0 = structured(48, 20, 2);
        let s = crate::hadamard::sign_vector(9, "x", 48);
        let mut by_rows = w0.clone();
        rotate(&mut by_rows, Side::Rows, &s, false).unwrap_or_else(|e| panic!("{e}"));
        let mut by_cols = w0.transpose();
        rotate(&mut by_cols, Side::Cols, &s, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(by_rows, by_cols.transpose());
    }

    #[test]
    fn rotate_factor_matches_rotated_data() {
        // h = Xᵀ X for tokens X (t × n); rotating X's rows gives X' = X diag(s) Rᵀ, whose Gram matrix must
        // be R diag(s) h diag(s) Rᵀ.
        let (t, n) = (40, 48);
        let x = structured(t, n, 3);
        let s = crate::hadamard::sign_vector(11, "h_in", n);
        let gram = |x: &Mat<f32>| {
            let mut h = SymMat::zeros(n);
            for i in 0..n {
                for j in 0..=i {
                    *h.at_mut(i, j) = (0..t).map(|r| x.at(r, i) as f64 * x.at(r, j) as f64).sum();
                }
            }
            h
        };
        let h = gram(&x);
        let rotated = rotate_factor(&h, &s).unwrap_or_else(|e| panic!("{e}"));
        // Rotate X by the reference and take its Gram matrix.
        let mut x_rot = x.clone();
        rotate(&mut x_rot, Side::Cols, &s, false).unwrap_or_else(|e| panic!("{e}"));
        let want = gram(&x_rot);
        let err = crate::mat::rel_diff_fro(&rotated.data, &want.data);
        // x_rot was rounded to f32 once, so agreement is at f32 level.
        assert!(
            err < F32_ROUNDTRIP_TOL,
            "rotate_factor vs Gram of rotated X: {err:e}"
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let backend = Reference;
        let mut w = structured(12, 48, 4);
        let good = crate::hadamard::sign_vector(1, "s", 48);
        assert!(matches!(
            backend.hadamard_rotate(&mut w, Side::Cols, &good[..47], false),
            Err(CoreError::ShapeMismatch { .. })
        ));
        // Rows side wants 12 signs, not 48.
        assert!(matches!(
            backend.hadamard_rotate(&mut w, Side::Rows, &good, false),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let mut half = good.clone();
        half[7] = 0.5;
        assert!(matches!(
            backend.hadamard_rotate(&mut w, Side::Cols, &half, false),
            Err(CoreError::InvalidParameter { .. })
        ));
        let mut odd = structured(4, 210, 5);
        let s210 = crate::hadamard::sign_vector(1, "s", 210);
        assert!(matches!(
            backend.hadamard_rotate(&mut odd, Side::Cols, &s210, false),
            Err(CoreError::UnsupportedDimension { dim: 210, .. })
        ));
        assert!(matches!(
            backend.rotate_factor(&SymMat::zeros(48), &good[..40]),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let broken = SymMat {
            n: 48,
            data: vec![0.0; 10],
        };
        assert!(matches!(
            backend.rotate_factor(&broken, &good),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let mut ragged = Mat {
            rows: 2,
            cols: 48,
            data: vec![0.0; 95],
        };
        assert!(matches!(
            backend.hadamard_rotate(&mut ragged, Side::Cols, &good, false),
            Err(CoreError::ShapeMismatch { .. })
        ));
    }
}
