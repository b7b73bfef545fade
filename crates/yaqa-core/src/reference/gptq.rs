//! Reference GPTQ/OPTQ (Frantar et al., arXiv 2210.17323): column by column in f64 with the explicit upper
//! Cholesky factor of `H⁻¹`, no lazy blocking. It is the oracle the fast backends are checked against.
//!
//! With `H⁻¹ = UᵀU` (`U` upper triangular), column `t` (in processing order) is rounded as `q_t = Q(w_t)`,
//! its scaled error `e_t = (w_t − q_t)/U_tt` is pushed to the columns not yet rounded, `w_k −= e_t·U_tk`.
//! Then `w − q = Uᵀe` and, per row, `(w − q)ᵀ H (w − q) = Σ_t d_t ε_t²` with the LDL pivots
//! `d_t = 1/U_tt²` and the rounding errors `ε_t = w_t − q_t` of the updated weights (the OPTQ error
//! identity, arXiv 2508.04853; DESIGN.md §9). With `H = XᵀX + λI` the left side is
//! `‖X(w−q)‖² + λ‖w−q‖²`.
//!
//! The factorization is deliberately done the long way (Cholesky of `H`, triangular inverse, `H⁻¹`, then
//! the upper Cholesky of `H⁻¹`), unlike the CPU backend's reversed-Cholesky shortcut, so the two share no
//! algorithm.

use crate::backend::{GptqParams, Rounded};
use crate::error::{CoreError, Result};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::rng::Rng;
use crate::sym::SymMat;

/// What one reference run knows beyond its [`Rounded`] result. Only the identity tests read the extra
/// fields; the backend trait returns the [`Rounded`] part.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct GptqTrace {
    pub rounded: Rounded,
    /// The damping `λ` added to the diagonal: `params.damp` times the mean diagonal (after dead columns).
    pub damp_added: f64,
    /// Rounding errors `ε_t = w_t − q_t` of the updated weights, `m × n` in processing order.
    pub eps: Mat<f64>,
}

pub(super) fn gptq(
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<Rounded> {
    gptq_trace(w, h, quantizer, params).map(|trace| trace.rounded)
}

/// Lower Cholesky `A = L Lᵀ` by the textbook column recurrence; the error names the failing pivot.
pub(super) fn cholesky_lower(a: &Mat<f64>, what: &str, damp_added: f64) -> Result<Mat<f64>> {
    let n = a.rows;
    let mut l = Mat::<f64>::zeros(n, n);
    for j in 0..n {
        let d = a.at(j, j) - (0..j).map(|k| l.at(j, k) * l.at(j, k)).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return Err(CoreError::NotPositiveDefinite {
                what: what.to_string(),
                pivot: j,
                damp_added,
                tries: 1,
            });
        }
        let ljj = d.sqrt();
        *l.at_mut(j, j) = ljj;
        for i in j + 1..n {
            let s = a.at(i, j) - (0..j).map(|k| l.at(i, k) * l.at(j, k)).sum::<f64>();
            *l.at_mut(i, j) = s / ljj;
        }
    }
    Ok(l)
}

/// Runs reference GPTQ and keeps its internals. See the module documentation for the formulas.
pub(crate) fn gptq_trace(
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<GptqTrace> {
    crate::backend::check_gptq_inputs(w, h, quantizer, params)?;
    let (m, n) = w.shape();
    let mut hd = h.to_dense();
    let mut wd = w.to_f64();

    // Dead columns (no input ever reached them): GPTQ sets H_ii = 1 and zeroes the weights.
    for i in 0..n {
        if hd.at(i, i) == 0.0 {
            *hd.at_mut(i, i) = 1.0;
            for r in 0..m {
                *wd.at_mut(r, i) = 0.0;
            }
        }
    }
    let damp_added = params.damp * (0..n).map(|i| hd.at(i, i)).sum::<f64>() / n as f64;
    for i in 0..n {
        *hd.at_mut(i, i) += damp_added;
    }

    // Act-order: decreasing diag(H), ties by column index (a stable sort keeps it deterministic).
    let mut perm: Vec<usize> = (0..n).collect();
    if params.act_order {
        perm.sort_by(|&a, &b| hd.at(b, b).total_cmp(&hd.at(a, a)));
    }
    let hp = Mat::from_fn(n, n, |i, j| hd.at(perm[i], perm[j]));
    let mut wp = Mat::from_fn(m, n, |r, t| wd.at(r, perm[t]));

    // H = L Lᵀ, L⁻¹ by forward substitution, H⁻¹ = L⁻ᵀ L⁻¹.
    let what = format!("GPTQ Hessian + {damp_added:e}·I (pivot in processing order)");
    let l = cholesky_lower(&hp, &what, damp_added)?;
    let mut l_inv = Mat::<f64>::zeros(n, n);
    for c in 0..n {
        for i in c..n {
            let rhs = if i == c { 1.0 } else { 0.0 };
            let s = rhs - (c..i).map(|k| l.at(i, k) * l_inv.at(k, c)).sum::<f64>();
            *l_inv.at_mut(i, c) = s / l.at(i, i);
        }
    }
    let h_inv = Mat::from_fn(n, n, |i, j| {
        (i.max(j)..n)
            .map(|k| l_inv.at(k, i) * l_inv.at(k, j))
            .sum::<f64>()
    });
    // Upper Cholesky of H⁻¹ (H⁻¹ = UᵀU) is the transpose of its lower Cholesky.
    let what_inv =
        format!("inverse of the GPTQ Hessian + {damp_added:e}·I (pivot in processing order)");
    let u = cholesky_lower(&h_inv, &what_inv, damp_added)?.transpose();

    let mut rng = params.stochastic_seed.map(Rng::new);
    let mut w_hat = Mat::<f32>::zeros(m, n);
    let mut codes = vec![0u16; m * n];
    let mut eps = Mat::<f64>::zeros(m, n);
    let mut column = vec![0f32; m];
    let mut column_codes = vec![0u16; m];
    let mut pivots = Vec::with_capacity(n);
    let mut eps_at = Mat::<f32>::zeros(m, n);
    for t in 0..n {
        let original = perm[t];
        for r in 0..m {
            column[r] = wp.at(r, t) as f32;
        }
        quantizer.quantize_tile(
            0,
            original,
            m,
            1,
            &mut column,
            &mut column_codes,
            rng.as_mut(),
        );
        let u_tt = u.at(t, t);
        pivots.push(1.0 / (u_tt * u_tt));
        for r in 0..m {
            let e = wp.at(r, t) - column[r] as f64;
            *eps.at_mut(r, t) = e;
            *eps_at.at_mut(r, original) = e as f32;
            let scaled = e / u_tt;
            for k in t + 1..n {
                *wp.at_mut(r, k) -= scaled * u.at(t, k);
            }
            *w_hat.at_mut(r, original) = column[r];
            codes[r * n + original] = column_codes[r];
        }
    }
    // The drift of column t, w⁽ᵗ⁾_t − w_t = −Σ_{s<t} (U_st/U_ss)·ε_s, has gain ρ_t = ‖(U_st/U_ss)_{s<t}‖₂
    // ([`crate::optq`]).
    let drift_gains = if params.stochastic_seed.is_some() {
        (0..n)
            .map(|t| {
                (0..t)
                    .map(|s| (u.at(s, t) / u.at(s, s)).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(GptqTrace {
        rounded: Rounded {
            w_hat,
            codes,
            pivots,
            order: perm,
            eps: Some(eps_at),
            drift_gains,
        },
        damp_added,
        eps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Exact;
    use crate::quant::int::IntSym;

    /// Tokens with correlated features and a decaying spectrum: a few latent directions with decaying
    /// weights, a per-feature gain and a little noise. `t × n`.
    fn tokens(t: usize, n: usize, seed: u64) -> Mat<f64> {
        let mut rng = Rng::new(seed);
        let latent = 8;
        let dirs: Vec<Vec<f64>> = (0..latent)
            .map(|_| (0..n).map(|_| rng.normal()).collect())
            .collect();
        let gain: Vec<f64> = (0..n)
            .map(|j| 0.3 + 1.5 * ((j * 13) % 7) as f64 / 7.0)
            .collect();
        let mut x = Mat::<f64>::zeros(t, n);
        for r in 0..t {
            let coef: Vec<f64> = (0..latent)
                .map(|k| rng.normal() * 0.7f64.powi(k as i32))
                .collect();
            for j in 0..n {
                let v = (0..latent).map(|k| coef[k] * dirs[k][j]).sum::<f64>() + 0.2 * rng.normal();
                *x.at_mut(r, j) = gain[j] * v;
            }
        }
        x
    }

    fn gram(x: &Mat<f64>) -> SymMat {
        let n = x.cols;
        let mut h = SymMat::zeros(n);
        for r in 0..x.rows {
            let row = x.row(r);
            for i in 0..n {
                for j in 0..=i {
                    *h.at_mut(i, j) += row[i] * row[j];
                }
            }
        }
        h
    }

    fn weights(m: usize, n: usize, seed: u64) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        Mat::from_fn(m, n, |i, _| {
            ((0.3 + (i % 5) as f64 * 0.4) * rng.normal()) as f32
        })
    }

    /// OPTQ identity (DESIGN.md §9): per row, `‖X(w−q)‖² + λ‖w−q‖² = Σ_t d_t ε_t²` with the run's own pivots
    /// and rounding errors, for nearest and stochastic rounding, with and without act-order.
    #[test]
    fn optq_error_identity_holds_per_row() {
        let (m, n) = (6, 40);
        let x = tokens(120, n, 1);
        let h = gram(&x);
        let w = weights(m, n, 2);
        let grid = IntSym::new(3, 0.4).expect("valid");
        for act_order in [false, true] {
            for seed in [None, Some(9)] {
                let params = GptqParams {
                    act_order,
                    stochastic_seed: seed,
                    damp: 0.02,
                    ..Default::default()
                };
                let trace = gptq_trace(&w, &h, &grid, &params).expect("gptq");
                assert!(trace.damp_added > 0.0);
                for r in 0..m {
                    let delta: Vec<f64> = (0..n)
                        .map(|j| w.at(r, j) as f64 - trace.rounded.w_hat.at(r, j) as f64)
                        .collect();
                    let xd: f64 = (0..x.rows)
                        .map(|t| (0..n).map(|j| x.at(t, j) * delta[j]).sum::<f64>().powi(2))
                        .sum();
                    let lhs = xd + trace.damp_added * delta.iter().map(|d| d * d).sum::<f64>();
                    let rhs: f64 = (0..n)
                        .map(|t| trace.rounded.pivots[t] * trace.eps.at(r, t).powi(2))
                        .sum();
                    assert!(lhs > 0.0);
                    assert!(
                        (lhs - rhs).abs() <= 1e-9 * lhs,
                        "row {r}: {lhs} vs {rhs} (act {act_order}, seed {seed:?})"
                    );
                }
            }
        }
    }

    /// The pivots are those of the "upper-lower" factorization `H = U⁻¹U⁻ᵀ` in processing order: their
    /// product is `det H`, the first is `1/(H⁻¹)_00` and the last is `H_{n−1,n−1}` itself.
    #[test]
    fn pivots_are_ldl_pivots() {
        let n = 12;
        let h = gram(&tokens(40, n, 3));
        let w = weights(2, n, 4);
        let params = GptqParams {
            damp: 0.0,
            ..Default::default()
        };
        let trace =
            gptq_trace(&w, &h, &IntSym::new(4, 0.3).expect("valid"), &params).expect("gptq");
        let l = cholesky_lower(&h.to_dense(), "h", 0.0).expect("spd");
        let log_det: f64 = (0..n).map(|i| 2.0 * l.at(i, i).ln()).sum();
        let log_prod: f64 = trace.rounded.pivots.iter().map(|d| d.ln()).sum();
        assert!((log_det - log_prod).abs() < 1e-9 * log_det.abs().max(1.0));
        let last = trace.rounded.pivots[n - 1];
        assert!((last - h.at(n - 1, n - 1)).abs() < 1e-9 * last);
        let first_expected = 1.0 / {
            // (H⁻¹)_00 from a solve with the lower Cholesky factor.
            let mut y = vec![0.0; n];
            for i in 0..n {
                let rhs = if i == 0 { 1.0 } else { 0.0 };
                y[i] = (rhs - (0..i).map(|k| l.at(i, k) * y[k]).sum::<f64>()) / l.at(i, i);
            }
            y.iter().map(|v| v * v).sum::<f64>()
        };
        assert!((trace.rounded.pivots[0] - first_expected).abs() < 1e-9 * first_expected);
    }

    #[test]
    fn exact_quantizer_returns_w() {
        let n = 24;
        let h = gram(&tokens(60, n, 5));
        let w = weights(5, n, 6);
        for act_order in [false, true] {
            let params = GptqParams {
                act_order,
                ..Default::default()
            };
            let out = gptq(&w, &h, &Exact, &params).expect("gptq");
            assert_eq!(out.w_hat, w);
        }
    }

    #[test]
    fn identity_hessian_is_round_to_nearest() {
        let w = weights(7, 20, 7);
        let grid = IntSym::new(2, 0.5).expect("valid");
        let rtn = crate::backend::round_to_nearest(&w, &grid);
        let out = gptq(&w, &SymMat::identity(20), &grid, &GptqParams::default()).expect("gptq");
        assert_eq!(out.w_hat, rtn.w_hat);
        assert_eq!(out.codes, rtn.codes);
    }

    /// Dead columns (zero diagonal) are rounded as zero weights and do not break the factorization.
    #[test]
    fn dead_columns_are_zeroed() {
        let n = 16;
        let x = tokens(50, n, 8);
        let x = Mat::from_fn(
            x.rows,
            n,
            |t, j| if j == 3 || j == 11 { 0.0 } else { x.at(t, j) },
        );
        let h = gram(&x);
        let w = weights(4, n, 9);
        let grid = IntSym::new(4, 0.25).expect("valid");
        let out = gptq(
            &w,
            &h,
            &grid,
            &GptqParams {
                act_order: true,
                ..Default::default()
            },
        )
        .expect("gptq");
        let mut zero = [0.0f32; 4];
        grid.quantize_tile(0, 3, 4, 1, &mut zero, &mut [0u16; 4], None);
        for r in 0..4 {
            assert_eq!(out.w_hat.at(r, 3), zero[r]);
            assert_eq!(out.w_hat.at(r, 11), zero[r]);
        }
        assert!(out.pivots.iter().all(|d| d.is_finite() && *d > 0.0));
    }

    #[test]
    fn bad_input_is_reported() {
        let n = 8;
        let h = gram(&tokens(30, n, 10));
        let w = weights(3, n, 11);
        let grid = IntSym::new(4, 0.3).expect("valid");
        let params = GptqParams::default();
        let mut nan = w.clone();
        nan.data[4] = f32::NAN;
        assert!(matches!(
            gptq(&nan, &h, &grid, &params),
            Err(CoreError::NonFinite { first: 4, .. })
        ));
        assert!(matches!(
            gptq(&w, &SymMat::identity(9), &grid, &params),
            Err(CoreError::ShapeMismatch { .. })
        ));
        let mut indefinite = SymMat::identity(n);
        *indefinite.at_mut(5, 5) = -1.0;
        let no_damp = GptqParams {
            damp: 0.0,
            ..params
        };
        match gptq(&w, &indefinite, &grid, &no_damp) {
            Err(CoreError::NotPositiveDefinite { pivot, .. }) => assert_eq!(pivot, 5),
            other => panic!("expected NotPositiveDefinite, got {other:?}"),
        }
        assert!(
            gptq(
                &w,
                &h,
                &grid,
                &GptqParams {
                    damp: -1.0,
                    ..params
                }
            )
            .is_err()
        );
        assert!(
            gptq(
                &w,
                &h,
                &grid,
                &GptqParams {
                    block_size: 0,
                    ..params
                }
            )
            .is_err()
        );
    }
}
