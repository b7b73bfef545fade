//! Coordinate descent on the proxy loss after a rounding run.
//!
//! Adaptive rounding (DESIGN.md §4) visits every weight once and never revisits a decision, so a weight
//! rounded early cannot react to the errors made after it. Coordinate descent fixes that: with
//! `Δ = W − Ŵ`, the proxy `f(Δ) = tr(Δ h_in Δᵀ h_out)` changes by `2t·(h_out Δ h_in)_ij + t²·h_out_ii·h_in_jj`
//! when `Δ_ij` moves by `t`, a one-dimensional convex quadratic whose best grid point is the nearest one to
//! its unconstrained minimum `Ŵ_ij + (h_out Δ h_in)_ij / (h_out_ii·h_in_jj)`. Each accepted move lowers
//! `f` strictly, so the sweeps never undo progress and stop when no weight moves.
//!
//! Rows are visited in order and a row's gradient `g = (h_out Δ)_i·h_in` is formed once per visit
//! (`O(n²)`), then kept current through the row's own moves (`O(n)` each); `P = h_out Δ`, stored by
//! columns, is kept current through every move (`O(m)` each, contiguous). One sweep is `O(mn²)` plus
//! `O(m + n)` per move, the order of one rounding pass, on one thread. With `h_out = I` the rows decouple
//! and this is the one-sided (LDLQ/GPTQ) proxy.
//!
//! Only scalar quantizers (one code per weight) can move a single weight; others are refused.

use crate::backend::Rounded;
use crate::error::{CoreError, Result};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;

/// What a refinement did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefineStats {
    /// Sweeps run (fewer than asked when a sweep moved nothing).
    pub sweeps: usize,
    /// Weights moved, over all sweeps.
    pub moves: usize,
}

/// Runs at most `sweeps` coordinate-descent sweeps on `tr(Δ h_in Δᵀ h_out)` (`h_out = None` is `I`),
/// updating `rounded.w_hat` and `rounded.codes` in place. The factors are the ones the rounding used
/// (normalised, rotated, damped).
///
/// **Shapes**: `w` and `rounded.w_hat` are `m × n`, `h_in` is `n × n`, `h_out` is `m × m`.
/// **Errors**: shape mismatches, a quantizer with more than one weight per code, a non-positive diagonal
/// entry of either factor.
pub fn refine_coordinate(
    w: &Mat<f32>,
    rounded: &mut Rounded,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
    quantizer: &dyn TileQuantizer,
    sweeps: usize,
) -> Result<RefineStats> {
    let (m, n) = w.shape();
    rounded.w_hat.expect_shape("refine: Ŵ", m, n)?;
    if !quantizer.is_scalar() {
        return Err(CoreError::InvalidParameter {
            name: "refine",
            value: quantizer.name(),
            why: "coordinate descent moves one weight at a time and needs a scalar quantizer"
                .into(),
        });
    }
    if rounded.codes.len() != m * n {
        return Err(CoreError::shape(
            "refine: codes",
            m * n,
            rounded.codes.len(),
        ));
    }
    if h_in.n != n {
        return Err(CoreError::shape("refine: h_in vs W columns", n, h_in.n));
    }
    if let Some(h) = h_out
        && h.n != m
    {
        return Err(CoreError::shape("refine: h_out vs W rows", m, h.n));
    }
    let hi = h_in.to_dense();
    let ho = h_out.map(SymMat::to_dense);
    for (what, d) in [
        ("h_in", h_in.diag()),
        ("h_out", h_out.map_or(vec![1.0], SymMat::diag)),
    ] {
        if let Some(k) = d.iter().position(|&v| !(v > 0.0 && v.is_finite())) {
            return Err(CoreError::InvalidParameter {
                name: "refine",
                value: format!("{what}[{k},{k}] = {}", d[k]),
                why: "coordinate descent divides by the factors' diagonals".into(),
            });
        }
    }

    // P = h_out Δ, stored transposed (`pt[j·m + i]`): a move updates one column of P, which is read once
    // per row visit. Row i is Σ_k h_out[i,k] Δ_k, formed in `pi` and scattered into its column slots.
    let delta: Vec<f64> = w
        .data
        .iter()
        .zip(&rounded.w_hat.data)
        .map(|(&a, &b)| a as f64 - b as f64)
        .collect();
    let mut pt = vec![0.0f64; m * n];
    let mut pi = vec![0.0f64; n];
    for i in 0..m {
        match &ho {
            None => pi.copy_from_slice(&delta[i * n..(i + 1) * n]),
            Some(ho) => {
                pi.fill(0.0);
                for (k, &hik) in ho.row(i).iter().enumerate() {
                    if hik != 0.0 {
                        axpy(&mut pi, hik, &delta[k * n..(k + 1) * n]);
                    }
                }
            }
        }
        for (j, &v) in pi.iter().enumerate() {
            pt[j * m + i] = v;
        }
    }
    drop(delta);

    let mut stats = RefineStats {
        sweeps: 0,
        moves: 0,
    };
    let mut g = vec![0.0f64; n];
    let mut code = [0u16; 1];
    for _ in 0..sweeps {
        stats.sweeps += 1;
        let mut moved = 0usize;
        for i in 0..m {
            let ho_ii = ho.as_ref().map_or(1.0, |h| h.at(i, i));
            for (j, v) in pi.iter_mut().enumerate() {
                *v = pt[j * m + i];
            }
            for (j, gj) in g.iter_mut().enumerate() {
                *gj = dot(&pi, hi.row(j));
            }
            for j in 0..n {
                let curv = ho_ii * hi.at(j, j);
                let old = rounded.w_hat.at(i, j);
                let mut v = [(old as f64 + g[j] / curv) as f32];
                quantizer.quantize_tile(i, j, 1, 1, &mut v, &mut code, None);
                if v[0] == old {
                    continue;
                }
                let t = old as f64 - v[0] as f64;
                if 2.0 * t * g[j] + t * t * curv >= 0.0 {
                    continue;
                }
                *rounded.w_hat.at_mut(i, j) = v[0];
                rounded.codes[i * n + j] = code[0];
                axpy(&mut g, t * ho_ii, hi.row(j));
                match &ho {
                    None => pt[j * m + i] += t,
                    Some(ho) => axpy(&mut pt[j * m..(j + 1) * m], t, ho.row(i)),
                }
                moved += 1;
            }
        }
        stats.moves += moved;
        if moved == 0 {
            break;
        }
    }
    Ok(stats)
}

#[inline]
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// A dot product with four independent sums, so the compiler can vectorise it.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ac, ar) = a.split_at(a.len() / 4 * 4);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(4).zip(bc.chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::round_to_nearest;
    use crate::quant::Exact;
    use crate::quant::int::IntSym;
    use crate::reference::Reference;
    use crate::synthetic;

    fn proxy(w: &Mat<f32>, w_hat: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> f64 {
        let d = Mat::from_fn(w.rows, w.cols, |i, j| w.at(i, j) - w_hat.at(i, j));
        Reference.weighted_error(&d, h_in, h_out).expect("proxy")
    }

    #[test]
    fn sweeps_reach_a_point_no_single_move_improves() {
        let (m, n) = (12, 16);
        let w = synthetic::weights(m, n, 3);
        let h_in = synthetic::factor(n, 0.8, 1);
        let h_out = synthetic::factor(m, 0.7, 2);
        for h_out in [None, Some(&h_out)] {
            let q = IntSym::for_multiplier(2, &w, 1.2).expect("grid");
            let mut r = round_to_nearest(&w, &q);
            let before = proxy(&w, &r.w_hat, &h_in, h_out);
            let stats = refine_coordinate(&w, &mut r, &h_in, h_out, &q, 100).expect("refine");
            let after = proxy(&w, &r.w_hat, &h_in, h_out);
            assert!(stats.sweeps < 100, "did not converge: {stats:?}");
            assert!(
                stats.moves > 0 && after < 0.9 * before,
                "{before} → {after}"
            );
            for (k, (&v, &c)) in r.w_hat.data.iter().zip(&r.codes).enumerate() {
                assert_eq!(v, q.level(c), "weight {k}: value and code disagree");
            }
            // Local optimality, checked by brute force on the reference proxy: no weight is better one
            // grid level up or down.
            for k in 0..m * n {
                for step in [-1i32, 1] {
                    let c = r.codes[k] as i32 + step;
                    if !(0..4).contains(&c) {
                        continue;
                    }
                    let mut moved = r.w_hat.clone();
                    moved.data[k] = q.level(c as u16);
                    let p = proxy(&w, &moved, &h_in, h_out);
                    assert!(
                        p >= after * (1.0 - 1e-9),
                        "weight {k} level {c}: {p} < {after}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_exact_quantizer_converges_to_w() {
        // With infinite precision every coordinate step is exact Gauss–Seidel on an SPD system, whose only
        // fixed point is Δ = 0.
        let (m, n) = (8, 12);
        let w = synthetic::weights(m, n, 5);
        // Damped as the rounding damps them, which bounds the condition number and so the sweeps needed.
        let mut h_in = synthetic::factor(n, 0.8, 6);
        h_in.add_diag(0.1 * h_in.mean_diag());
        let mut h_out = synthetic::factor(m, 0.8, 7);
        h_out.add_diag(0.1 * h_out.mean_diag());
        let grid = IntSym::for_multiplier(2, &w, 1.0).expect("grid");
        let mut r = round_to_nearest(&w, &grid);
        refine_coordinate(&w, &mut r, &h_in, Some(&h_out), &Exact, 500).expect("refine");
        let rel = proxy(&w, &r.w_hat, &h_in, Some(&h_out))
            / proxy(&w, &Mat::zeros(m, n), &h_in, Some(&h_out));
        assert!(rel < 1e-8, "relative proxy {rel}");
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let w = synthetic::weights(4, 8, 1);
        let q = IntSym::for_multiplier(3, &w, 1.0).expect("grid");
        let mut r = round_to_nearest(&w, &q);
        let h8 = synthetic::factor(8, 0.9, 1);
        let h5 = synthetic::factor(5, 0.9, 1);
        let e = refine_coordinate(&w, &mut r, &h5, None, &q, 1).unwrap_err();
        assert!(e.to_string().contains("h_in"), "{e}");
        let e = refine_coordinate(&w, &mut r, &h8, Some(&h5), &q, 1).unwrap_err();
        assert!(e.to_string().contains("h_out"), "{e}");
    }
}
