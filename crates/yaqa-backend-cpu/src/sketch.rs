//! CPU factor accumulation (DESIGN.md §2): per-sequence products in f32 on faer's GEMM, computing only the
//! lower triangle, added into f64 accumulators so that sums over many sequences keep f32-level accuracy.

use crate::gemm::{add_lower, gemm, lower_product, mat, view, view_mut};
use yaqa_core::{CoreError, Mat, Result, SymMat};

fn check_cols(what: &str, acc: &SymMat, v: &Mat<f32>) -> Result<()> {
    if acc.n != v.cols {
        return Err(CoreError::shape(
            what,
            format!("{} columns", acc.n),
            format!("{}×{}", v.rows, v.cols),
        ));
    }
    Ok(())
}

fn check_tokens(x: &Mat<f32>, g: &Mat<f32>) -> Result<()> {
    if x.rows != g.rows {
        return Err(CoreError::shape("tokens in x and g", x.rows, g.rows));
    }
    Ok(())
}

pub(crate) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
    check_cols("accumulate_xtx: x vs h_in", h_in, x)?;
    let n = x.cols;
    add_lower(h_in, &lower_product(n, mat(x).transpose(), mat(x)));
    Ok(())
}

pub(crate) fn accumulate_sketch_b(
    h_in: &mut SymMat,
    h_out: &mut SymMat,
    x: &Mat<f32>,
    g: &Mat<f32>,
) -> Result<()> {
    check_cols("accumulate_sketch_b: x vs h_in", h_in, x)?;
    check_cols("accumulate_sketch_b: g vs h_out", h_out, g)?;
    check_tokens(x, g)?;
    let (m, n) = (g.cols, x.cols);
    // G = gᵀ x, m × n.
    let mut grad = vec![0f32; m * n];
    gemm(
        view_mut(&mut grad, m, n, n),
        false,
        mat(g).transpose(),
        mat(x),
        1.0,
    );
    let gv = view(&grad, m, n, n);
    add_lower(h_in, &lower_product(n, gv.transpose(), gv));
    add_lower(h_out, &lower_product(m, gv, gv.transpose()));
    Ok(())
}

/// `acc += scale · Σ_t (u_tᵀ h u_t) v_t v_tᵀ`.
pub(crate) fn accumulate_weighted(
    acc: &mut SymMat,
    v: &Mat<f32>,
    u: &Mat<f32>,
    h: &SymMat,
    scale: f64,
) -> Result<()> {
    check_cols("sketch A: accumulated side", acc, v)?;
    check_cols("sketch A: weighting side", h, u)?;
    check_tokens(v, u)?;
    let (t, k) = (u.rows, u.cols);
    let h_dense: Vec<f32> = h.to_dense().data.iter().map(|&x| x as f32).collect();
    let mut uh = vec![0f32; t * k];
    gemm(
        view_mut(&mut uh, t, k, k),
        false,
        mat(u),
        view(&h_dense, k, k, k),
        1.0,
    );
    // Weighted copy of v: row t scaled by its quadratic form.
    let n = v.cols;
    let mut weighted = v.data.clone();
    for row in 0..t {
        let q: f64 = uh[row * k..(row + 1) * k]
            .iter()
            .zip(u.row(row))
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let wt = (q * scale) as f32;
        for x in &mut weighted[row * n..(row + 1) * n] {
            *x *= wt;
        }
    }
    add_lower(
        acc,
        &lower_product(n, view(&weighted, t, n, n).transpose(), mat(v)),
    );
    Ok(())
}
