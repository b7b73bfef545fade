//! Reference factor accumulation (DESIGN.md §2), written as the explicit sums in f64.

use crate::backend::check_factor_side as check;
use crate::error::{CoreError, Result};
use crate::mat::Mat;
use crate::sym::SymMat;

/// `h_in[i][j] += Σ_t x[t][i]·x[t][j]`.
pub(super) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
    check("accumulate_xtx: x vs h_in", h_in, x)?;
    for i in 0..h_in.n {
        for j in 0..=i {
            let mut s = 0.0;
            for t in 0..x.rows {
                s += x.at(t, i) as f64 * x.at(t, j) as f64;
            }
            *h_in.at_mut(i, j) += s;
        }
    }
    Ok(())
}

/// `G = gᵀ x`, then `h_in += Gᵀ G` and `h_out += G Gᵀ`.
pub(super) fn accumulate_sketch_b(
    h_in: &mut SymMat,
    h_out: &mut SymMat,
    x: &Mat<f32>,
    g: &Mat<f32>,
) -> Result<()> {
    check("accumulate_sketch_b: x vs h_in", h_in, x)?;
    check("accumulate_sketch_b: g vs h_out", h_out, g)?;
    if x.rows != g.rows {
        return Err(CoreError::shape(
            "accumulate_sketch_b: tokens in x and g",
            x.rows,
            g.rows,
        ));
    }
    let (m, n) = (g.cols, x.cols);
    let grad = Mat::from_fn(m, n, |a, b| {
        (0..x.rows)
            .map(|t| g.at(t, a) as f64 * x.at(t, b) as f64)
            .sum::<f64>()
    });
    for i in 0..n {
        for j in 0..=i {
            *h_in.at_mut(i, j) += (0..m).map(|a| grad.at(a, i) * grad.at(a, j)).sum::<f64>();
        }
    }
    for a in 0..m {
        for c in 0..=a {
            *h_out.at_mut(a, c) += (0..n).map(|b| grad.at(a, b) * grad.at(c, b)).sum::<f64>();
        }
    }
    Ok(())
}

/// `acc += scale · Σ_t (u_tᵀ h u_t) v_t v_tᵀ` (both Sketch A half-steps).
pub(super) fn accumulate_weighted(
    acc: &mut SymMat,
    v: &Mat<f32>,
    u: &Mat<f32>,
    h: &SymMat,
    scale: f64,
) -> Result<()> {
    check("sketch A: accumulated side", acc, v)?;
    check("sketch A: weighting side", h, u)?;
    if v.rows != u.rows {
        return Err(CoreError::shape(
            "sketch A: tokens in x and g",
            v.rows,
            u.rows,
        ));
    }
    for t in 0..v.rows {
        let mut weight = 0.0;
        for i in 0..h.n {
            for j in 0..h.n {
                weight += u.at(t, i) as f64 * h.at(i, j) * u.at(t, j) as f64;
            }
        }
        weight *= scale;
        for i in 0..acc.n {
            for j in 0..=i {
                *acc.at_mut(i, j) += weight * v.at(t, i) as f64 * v.at(t, j) as f64;
            }
        }
    }
    Ok(())
}
