//! CPU weighted norm `tr(D h_in Dᵀ h_out)` behind the proxy errors (DESIGN.md §4): one or two f32 GEMMs,
//! reduced in f64.
//!
//! The products dominate the scale search (one per candidate grid, 14 per matrix), so they run in f32 at
//! faer's full speed (about 4× its f64 rate here); the final reductions are f64. The relative error this
//! costs, measured against the f64 reference, is in `yaqa_core::conformance::PROXY_REL`.

use faer::{Accum, Mat as FMat, Par};
use yaqa_core::{Mat, Result, SymMat};

fn dense(h: &SymMat) -> FMat<f32> {
    FMat::from_fn(h.n, h.n, |i, j| h.at(i, j) as f32)
}

/// `Σ_{i,j} a[i][j]·b[i][j]` in f64, column by column.
fn dot(a: &FMat<f32>, b: &FMat<f32>) -> f64 {
    (0..a.ncols())
        .map(|j| {
            a.col_as_slice(j)
                .iter()
                .zip(b.col_as_slice(j))
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        })
        .sum()
}

fn weighted(d: &FMat<f32>, h_in: &FMat<f32>, h_out: Option<&FMat<f32>>) -> f64 {
    let (m, n) = (d.nrows(), d.ncols());
    let mut t = FMat::<f32>::zeros(m, n);
    crate::gemm::matmul(
        t.as_mut(),
        Accum::Replace,
        d.as_ref(),
        h_in.as_ref(),
        1.0,
        Par::rayon(0),
    );
    match h_out {
        None => dot(&t, d),
        Some(h_out) => {
            // tr(T Δᵀ h_out) = Σ_{a,k} (h_out Δ)[a][k] · T[a][k].
            let mut s = FMat::<f32>::zeros(m, n);
            crate::gemm::matmul(
                s.as_mut(),
                Accum::Replace,
                h_out.as_ref(),
                d.as_ref(),
                1.0,
                Par::rayon(0),
            );
            dot(&t, &s)
        }
    }
}

pub(crate) fn weighted_error(d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64> {
    yaqa_core::backend::check_weighted_inputs(d, h_in, h_out)?;
    let h_in = dense(h_in);
    let h_out = h_out.map(dense);
    let d = FMat::from_fn(d.rows, d.cols, |i, j| d.at(i, j));
    Ok(weighted(&d, &h_in, h_out.as_ref()))
}
