//! CPU factor accumulation (DESIGN.md §2): per-sequence products in f32 on faer's GEMM, computing only the
//! lower triangle, added into f64 accumulators so that sums over many sequences keep f32-level accuracy.

use crate::gemm::{add_lower, gemm, gram_upper, mat, par, view, view_mut};
use faer::Accum;
use yaqa_core::backend::{check_factor_side as check_cols, check_same_tokens as check_tokens};
use yaqa_core::{Mat, Result, SymMat};

/// A column-major copy of a row-major matrix. faer's GEMM is fastest when the left operand's rows and the
/// right operand's columns are contiguous (measured 2026-11-23: `G Gᵀ` from one layout ran at 87 GFLOP/s,
/// from the other at 172); the `O(rows·cols)` copy buys that layout for the `O(rows·cols·k)` products.
fn columns(m: &Mat<f32>) -> faer::Mat<f32> {
    columns_of(mat(m))
}

fn columns_of(m: faer::MatRef<'_, f32>) -> faer::Mat<f32> {
    m.to_owned()
}

pub(crate) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
    check_cols("accumulate_xtx: x vs h_in", h_in, x)?;
    let n = x.cols;
    let xc = columns(x);
    add_lower(h_in, &gram_upper(n, xc.transpose(), xc.as_ref()));
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
    // G = gᵀ x (m × n), stored column-major; Gr holds Gᵀ column-major, i.e. G's rows contiguous.
    let (gc, xc) = (columns(g), columns(x));
    let mut grad = faer::Mat::<f32>::zeros(m, n);
    faer::linalg::matmul::matmul(
        grad.as_mut(),
        Accum::Replace,
        gc.transpose(),
        xc.as_ref(),
        1.0,
        par(),
    );
    add_lower(h_in, &gram_upper(n, grad.transpose(), grad.as_ref()));
    let grad_rows = grad.transpose().to_owned();
    add_lower(
        h_out,
        &gram_upper(m, grad_rows.transpose(), grad_rows.as_ref()),
    );
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
        &gram_upper(
            n,
            columns_of(view(&weighted, t, n, n)).transpose(),
            columns(v).as_ref(),
        ),
    );
    Ok(())
}
