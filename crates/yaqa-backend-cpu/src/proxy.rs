//! CPU proxy error `tr(Δ h_in Δᵀ h_out)` (DESIGN.md §4): two GEMMs in f64 so that the small differences
//! between methods stay resolvable.

use faer::{Accum, Mat as FMat, Par};
use yaqa_core::backend::ProxyError;
use yaqa_core::{CoreError, Mat, Result, SymMat};

fn dense(h: &SymMat) -> FMat<f64> {
    FMat::from_fn(h.n, h.n, |i, j| h.at(i, j))
}

fn weighted(d: &FMat<f64>, h_in: &FMat<f64>, h_out: Option<&FMat<f64>>) -> f64 {
    let (m, n) = (d.nrows(), d.ncols());
    let mut t = FMat::<f64>::zeros(m, n);
    faer::linalg::matmul::matmul(
        t.as_mut(),
        Accum::Replace,
        d.as_ref(),
        h_in.as_ref(),
        1.0,
        Par::rayon(0),
    );
    match h_out {
        None => (0..m)
            .map(|i| (0..n).map(|j| t[(i, j)] * d[(i, j)]).sum::<f64>())
            .sum(),
        Some(h_out) => {
            // tr(T Δᵀ h_out) = Σ_{a,k} (h_out Δ)[a][k] · T[a][k].
            let mut s = FMat::<f64>::zeros(m, n);
            faer::linalg::matmul::matmul(
                s.as_mut(),
                Accum::Replace,
                h_out.as_ref(),
                d.as_ref(),
                1.0,
                Par::rayon(0),
            );
            (0..m)
                .map(|i| (0..n).map(|j| t[(i, j)] * s[(i, j)]).sum::<f64>())
                .sum()
        }
    }
}

pub(crate) fn proxy_error(
    w: &Mat<f32>,
    w_hat: &Mat<f32>,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
) -> Result<ProxyError> {
    w_hat.expect_shape("proxy_error: w_hat vs w", w.rows, w.cols)?;
    if h_in.n != w.cols {
        return Err(CoreError::shape(
            "proxy_error: h_in vs W columns",
            w.cols,
            h_in.n,
        ));
    }
    if let Some(h) = h_out
        && h.n != w.rows
    {
        return Err(CoreError::shape(
            "proxy_error: h_out vs W rows",
            w.rows,
            h.n,
        ));
    }
    let h_in = dense(h_in);
    let h_out = h_out.map(dense);
    let wd = FMat::from_fn(w.rows, w.cols, |i, j| w.at(i, j) as f64);
    let delta = FMat::from_fn(w.rows, w.cols, |i, j| {
        w.at(i, j) as f64 - w_hat.at(i, j) as f64
    });
    Ok(ProxyError {
        error: weighted(&delta, &h_in, h_out.as_ref()),
        baseline: weighted(&wd, &h_in, h_out.as_ref()),
    })
}
